"""Starting the drift service as a local process (its own venv) and talking to it.

Used by the local runtime, the tests and the benchmark; runs in the main environment.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubeloop.generated import REPO_ROOT
from kubeloop.local.ports import free_port
from kubeloop.local.supervisor import ProcessRecord, Supervisor

DRIFT_VENV = REPO_ROOT / ".venv-drift"
REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"


def drift_python() -> Path:
    """The drift environment's interpreter (``make drift-env`` creates it)."""
    python = Path(os.environ.get("KUBELOOP_DRIFT_PYTHON", DRIFT_VENV / "bin" / "python"))
    if not python.exists():
        raise FileNotFoundError(f"drift environment not found at {python}; run `make drift-env`")
    return python


def stop_process(process: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL if the process has not exited after ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class DriftServiceProcess:
    process: subprocess.Popen
    url: str
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        stop_process(self.process, timeout)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> DriftServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_drift_service(
    registry_uri: str | Path,
    work_dir: str | Path,
    *,
    port: int | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> DriftServiceProcess:
    """Starts ``python -m kubeloop.monitoring.service`` from the drift venv; waits for /healthz."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = work_dir / f"drift-service-{port}.log"
    cmd = [str(drift_python()), "-m", "kubeloop.monitoring.service", "--port", str(port),
           "--registry-uri", str(registry_uri), "--cache-dir", str(work_dir / "drift-cache")]  # fmt: skip
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    with log_path.open("ab") as log:
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=REPO_ROOT
        )
    svc = DriftServiceProcess(proc, f"http://127.0.0.1:{port}", log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"drift service exited with {proc.returncode}:\n{svc.log()[-3000:]}")
        try:
            with urllib.request.urlopen(svc.url + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    return svc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    svc.stop()
    raise TimeoutError(f"drift service not healthy after {timeout}s:\n{svc.log()[-3000:]}")


# The detector set for short local runs: the prediction (score distribution) detector only,
# reading one instance in 20 over a 40-step window; its expected run time between false
# alarms (2000 steps, about 7 minutes at 100 instances/s) is long against the run. Its
# thresholds are calibrated once per reference sample and cached.
PREDICTION_ONLY_DETECTORS = {
    "ert": "2000",
    "mmd": "false",
    "univariate": "false",
    "error_rate": "false",
    "prediction": "true",
    "univariate_windows": "[40]",
    "univariate_every": "20",
    "univariate_bootstraps": "4000",
    "cvm_reference_rows": "300",
}


def supervise_drift_service(
    supervisor: Supervisor,
    port: int,
    registry_uri: str | Path,
    cache_dir: str | Path,
    detectors: dict[str, str],
    *,
    env: dict[str, str] | None = None,
    name: str = "drift",
) -> ProcessRecord:
    """Starts the drift service under a ``Supervisor`` (health-checked on /healthz);
    ``detectors`` become ``KUBELOOP_DRIFT_<KEY>`` settings."""
    return supervisor.start(
        name,
        [
            str(drift_python()), "-m", "kubeloop.monitoring.service", "--port", str(port),
            "--registry-uri", str(registry_uri), "--cache-dir", str(cache_dir),
        ],
        health_url=f"http://127.0.0.1:{port}/healthz",
        ports={"http": port},
        env={
            "PYTHONPATH": str(REPO_ROOT),
            **(env or {}),
            **{f"KUBELOOP_DRIFT_{k.upper()}": v for k, v in detectors.items()},
        },
        python=False,
    )  # fmt: skip


def payload_headers(
    kind: str, request_id: str, model: str, version: str, endpoint: str = "default"
) -> dict[str, str]:
    """Binary-mode CloudEvent headers as the KServe logger (and kubeloop's router) send them."""
    return {
        "Content-Type": "application/json",
        "Ce-Specversion": "1.0",
        "Ce-Id": request_id,
        "Ce-Type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "Ce-Source": f"http://localhost/{model}/{endpoint}",
        "Ce-Time": datetime.now(UTC).isoformat(),
        "Ce-Inferenceservicename": model,
        "Ce-Namespace": "default",
        "Ce-Component": "predictor",
        "Ce-Endpoint": endpoint,
        "Ce-Modelversion": version,
    }


def payload_pair(
    instances: list[dict[str, Any]], scores: list[float], labels: list[int], model: str, version: str,
    request_id: str | None = None,
) -> tuple[str, list[tuple[dict[str, str], bytes]]]:  # fmt: skip
    """The request and response events of one prediction, sharing ``Ce-Id``."""
    rid = request_id or uuid.uuid4().hex
    request = json.dumps({"instances": instances}).encode()
    response = json.dumps(
        {
            "predictions": [{"score": s, "label": y} for s, y in zip(scores, labels, strict=True)],
            "model_version": version,
        }  # fmt: skip
    ).encode()
    return rid, [
        (payload_headers("request", rid, model, version), request),
        (payload_headers("response", rid, model, version), response),
    ]


__all__ = [
    "PREDICTION_ONLY_DETECTORS",
    "DriftServiceProcess",
    "drift_python",
    "payload_pair",
    "start_drift_service",
    "supervise_drift_service",
]
