"""Start predictors and the router as local subprocesses (local runtime, CLI, tests, bench)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from kubeloop.local.ports import free_port


@dataclass
class ServerProcess:
    """A started server; ``stop()`` ends it (SIGTERM, then SIGKILL)."""

    name: str
    process: subprocess.Popen
    url: str
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)

    def wait_ready(self, path: str, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.process.returncode}: {self.log_tail()}"
                )
            try:
                if httpx.get(self.url + path, timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(
            f"{self.name} not ready at {self.url}{path} after {timeout_s}s: {self.log_tail()}"
        )

    def log_tail(self, n: int = 2000) -> str:
        try:
            return self.log_path.read_text()[-n:]
        except OSError:
            return ""

    def stop(self, timeout_s: float = 10.0) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def spawn_python(
    name: str,
    args: list[str],
    log_dir: Path,
    env: dict | None = None,
    launcher: Sequence[str] = (),
) -> tuple[subprocess.Popen, Path]:
    """Runs ``python ARGS`` (prefixed by ``launcher``, e.g. ``taskset -c 0``), output to
    ``log_dir/NAME.log``; returns the process and the log's path."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
    proc = subprocess.Popen(
        [*launcher, sys.executable, *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    log.close()
    return proc, log_path


def start_predictor(
    model_name: str,
    version: str,
    registry_uri: str,
    log_dir: Path,
    *,
    http_port: int | None = None,
    grpc_port: int | None = None,
    logger_url: str | None = None,
    feast_repo: str | None = None,
    endpoint: str = "default",
    extra: list[str] | None = None,
    env: dict | None = None,
    wait: bool = True,
    launcher: Sequence[str] = (),
) -> ServerProcess:
    """Starts a predictor; ``launcher`` prefixes the command (e.g. ``taskset -c 0``)."""
    http_port = http_port or free_port()
    grpc_port = grpc_port or free_port()
    args = [
        "-m",
        "kubeloop.serving.predictor",
        "--model_name",
        model_name,
        "--version",
        version,
        "--registry-uri",
        str(registry_uri),
        "--http_port",
        str(http_port),
        "--grpc_port",
        str(grpc_port),
        "--endpoint",
        endpoint,
        "--configure_logging",
        "false",
    ]
    if logger_url:
        args += ["--logger-url", logger_url]
    if feast_repo:
        args += ["--feast-repo", str(feast_repo)]
    args += extra or []
    proc, log_path = spawn_python(
        f"predictor-{model_name}-{version}-{http_port}", args, Path(log_dir), env, launcher
    )
    server = ServerProcess(
        f"predictor {model_name}/{version}",
        proc,
        f"http://127.0.0.1:{http_port}",
        log_path,
        {"http": http_port, "grpc": grpc_port},
    )
    if wait:
        server.wait_ready(f"/v1/models/{model_name}")
    return server


def start_router(
    split_file: Path,
    log_dir: Path,
    *,
    port: int | None = None,
    logger_url: str | None = None,
    env: dict | None = None,
    wait: bool = True,
    launcher: Sequence[str] = (),
) -> ServerProcess:
    port = port or free_port()
    args = ["-m", "kubeloop.router", "--port", str(port), "--split-file", str(split_file)]
    if logger_url:
        args += ["--logger-url", logger_url]
    proc, log_path = spawn_python(f"router-{port}", args, Path(log_dir), env, launcher)
    server = ServerProcess("router", proc, f"http://127.0.0.1:{port}", log_path, {"http": port})
    if wait:
        server.wait_ready("/healthz")
    return server
