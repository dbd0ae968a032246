"""The local process supervisor: start, health-check and stop child processes under one folder.

Layout under ``root`` (``$KUBELOOP_HOME/runtime`` by default)::

    logs/<name>.log      stdout and stderr of the child
    procs/<name>.json    argv, pid, start time, health URL, ports (the state file)

Children run in their own session, so they outlive the process that started them:
a restarted operator (or ``kubeloop up`` run twice) adopts what is already running
instead of starting duplicates. A pid is only trusted while its command line still
matches the recorded one (pids are reused).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx


class SupervisorError(RuntimeError):
    """A child failed to start, become healthy, or stop."""


@dataclass
class ProcessRecord:
    name: str
    argv: list[str]
    pid: int
    started_at: float
    health_url: str | None = None
    ports: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


def _cmdline(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return None
    return [part.decode() for part in raw.split(b"\0") if part]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


class Supervisor:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.logs = self.root / "logs"
        self.procs = self.root / "procs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs.mkdir(parents=True, exist_ok=True)
        self._children: dict[int, subprocess.Popen] = {}
        self._http = httpx.Client(timeout=1.0)  # pooled: health checks run every pass

    # --- state -------------------------------------------------------------------------
    def _record_path(self, name: str) -> Path:
        if not name or "/" in name or name.startswith("."):
            raise SupervisorError(f"invalid process name {name!r}")
        return self.procs / f"{name}.json"

    def get(self, name: str) -> ProcessRecord | None:
        path = self._record_path(name)
        if not path.exists():
            return None
        return ProcessRecord(**json.loads(path.read_text()))

    def running(self, name: str) -> ProcessRecord | None:
        """The record if its process is alive and still runs the recorded command."""
        record = self.get(name)
        if record is None:
            return None
        child = self._children.get(record.pid)
        if child is not None:  # our own child: its exit status is authoritative
            return record if child.poll() is None else None
        if not _alive(record.pid):
            return None
        if _cmdline(record.pid) != record.argv:
            return None
        return record

    def list(self) -> list[ProcessRecord]:
        return [
            ProcessRecord(**json.loads(p.read_text())) for p in sorted(self.procs.glob("*.json"))
        ]

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def log_tail(self, name: str, n: int = 2000) -> str:
        try:
            return self.log_path(name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    # --- lifecycle ---------------------------------------------------------------------
    def start(
        self,
        name: str,
        args: list[str],
        *,
        health_url: str | None = None,
        ports: dict[str, int] | None = None,
        labels: dict[str, str] | None = None,
        env: dict[str, str] | None = None,
        python: bool = True,
    ) -> ProcessRecord:
        """Starts ``name`` unless it already runs (then returns the running record)."""
        existing = self.running(name)
        if existing is not None:
            return existing
        argv = [sys.executable, *args] if python else list(args)
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **(env or {})},
                start_new_session=True,
            )
        self._children[proc.pid] = proc
        record = ProcessRecord(
            name, argv, proc.pid, time.time(), health_url, ports or {}, labels or {}
        )
        tmp = self._record_path(name).with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(record), indent=2))
        tmp.replace(self._record_path(name))
        return record

    def healthy(self, name: str) -> bool:
        record = self.running(name)
        if record is None:
            return False
        if not record.health_url:
            return True
        try:
            return self._http.get(record.health_url).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_healthy(self, name: str, timeout: float = 60.0) -> ProcessRecord:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.get(name)
            if record is None:
                raise SupervisorError(f"{name} was never started")
            if self.running(name) is None:
                child = self._children.get(record.pid)
                code = child.poll() if child is not None else None
                self._reap(record.pid)
                raise SupervisorError(f"{name} exited (status {code}): {self.log_tail(name)}")
            if self.healthy(name):
                return record
            time.sleep(0.2)
        raise SupervisorError(f"{name} not healthy at {self.get(name).health_url} after {timeout}s")

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        """SIGTERM the process group, SIGKILL after ``timeout``; removes the state file."""
        record = self.running(name)
        stopped = False
        if record is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(record.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while _alive(record.pid) and time.monotonic() < deadline:
                self._reap(record.pid)
                time.sleep(0.05)
            if _alive(record.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(record.pid, signal.SIGKILL)
                self._reap(record.pid, block=True)
            stopped = True
        self._record_path(name).unlink(missing_ok=True)
        return stopped

    def stop_all(self, timeout: float = 10.0) -> list[str]:
        return [r.name for r in self.list() if self.stop(r.name, timeout)]

    def _reap(self, pid: int, block: bool = False) -> None:
        proc = self._children.get(pid)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5 if block else 0)
