"""The local process supervisor: start, health-check and stop child processes under one folder.

Layout under ``root`` (``$KUBELOOP_HOME/runtime`` by default)::

    logs/<name>.log      stdout and stderr of the child
    procs/<name>.json    argv, pid, start time, health URL, ports (the state file)
    procs/<name>.exit    a one-shot job's exit status, once it ended

Long-running services are healthy while they run and answer their health URL; a
one-shot job (``job=True``, a retraining run) is running, finished (exit status 0) or
failed. A job's exit status is written by a ``sh`` wrapper that is its parent, so it
is known to every later reader, whoever started the job and whether or not that
process still runs (:meth:`Supervisor.state`).

Children run in their own session, so they outlive the process that started them:
a restarted operator (or ``kubeloop up`` run twice) adopts what is already running
instead of starting duplicates. A pid is only trusted while its command line still
matches the recorded one (pids are reused). ``with Supervisor(root) as sup:`` stops
what it started on the way out (tests, benchmarks, ``kubeloop monitoring``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path

import httpx
import psutil

from kubeloop.local.wait import wait_until


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
    launcher: list[str] = field(default_factory=list)  # e.g. taskset -c 0; it execs argv
    job: bool = False  # one-shot: ends by itself, its exit status is its result


class ProcessState(StrEnum):
    HEALTHY = "healthy"  # a service that runs and answers its health URL
    UNHEALTHY = "unhealthy"  # a service that runs but does not answer
    DOWN = "down"  # a service that does not run
    RUNNING = "running"  # a job still at work
    FINISHED = "finished"  # a job that exited with status 0
    FAILED = "failed"  # a job that exited otherwise, or ended without an exit status

    @property
    def ok(self) -> bool:
        return self in (ProcessState.HEALTHY, ProcessState.RUNNING, ProcessState.FINISHED)


def process_state(job: bool, running: bool, healthy: bool, exit_status: int | None) -> ProcessState:
    """What a process's record, liveness, health check and (for a job) exit status mean."""
    if job:
        if running:
            return ProcessState.RUNNING
        return ProcessState.FINISHED if exit_status == 0 else ProcessState.FAILED
    if not running:
        return ProcessState.DOWN
    return ProcessState.HEALTHY if healthy else ProcessState.UNHEALTHY


# A job's parent: runs the job, then writes its exit status to "$0" (atomically) and exits
# with it. A signal to the process group ends both before anything is written.
_JOB_WRAPPER = '"$@"; s=$?; echo $s > "$0.tmp" && mv "$0.tmp" "$0"; exit $s'


@dataclass(frozen=True)
class Service:
    """A process started under a :class:`Supervisor`: where it answers, its log, how to stop it."""

    supervisor: Supervisor
    name: str
    pid: int
    ports: dict[str, int]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

    @property
    def log_path(self) -> Path:
        return self.supervisor.log_path(self.name)

    def log(self) -> str:
        return self.supervisor.log_tail(self.name, n=None)

    def log_tail(self, n: int = 2000) -> str:
        return self.supervisor.log_tail(self.name, n)

    def running(self) -> bool:
        record = self.supervisor.running(self.name)
        return record is not None and record.pid == self.pid

    def exit_status(self) -> int | None:
        """The exit status once it ended (known for children of this supervisor only)."""
        return self.supervisor.exit_status(self.pid)

    def wait_healthy(self, timeout: float = 60.0) -> Service:
        self.supervisor.wait_healthy(self.name, timeout)
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        return self.supervisor.stop(self.name, timeout)

    def __enter__(self) -> Service:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _live_cmdline(pid: int) -> list[str] | None:
    """The command line of a live process; None when gone, a zombie, or not readable."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None


def _process_runs(proc: psutil.Process) -> bool:
    """Whether ``proc`` still runs (a zombie does not; a reused pid is another process)."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def _group_members(leader: int) -> list[psutil.Process]:
    """The leader's descendants that are still in its process group."""
    try:
        descendants = psutil.Process(leader).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    members = []
    for proc in descendants:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == leader:
                members.append(proc)
    return members


class Supervisor:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.logs = self.root / "logs"
        self.procs = self.root / "procs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.procs.mkdir(parents=True, exist_ok=True)
        self._children: dict[int, subprocess.Popen] = {}
        self._started: dict[str, None] = {}  # names this instance started or adopted, in order
        self._http = httpx.Client(timeout=1.0)  # pooled: health checks run every pass

    def __enter__(self) -> Supervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        """Stops what this instance started, last first."""
        for name in reversed(self._started):
            self.stop(name)
        self._http.close()

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
        # A launcher execs the command; until it has, the launcher's own line shows.
        cmdline = _live_cmdline(record.pid)
        if cmdline not in (record.argv, [*record.launcher, *record.argv]):
            return None
        return record

    def list(self) -> list[ProcessRecord]:
        return [
            ProcessRecord(**json.loads(p.read_text())) for p in sorted(self.procs.glob("*.json"))
        ]

    def log_path(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def log_tail(self, name: str, n: int | None = 2000) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return text if n is None else text[-n:]

    def exit_status(self, pid: int) -> int | None:
        child = self._children.get(pid)
        return child.poll() if child is not None else None

    def _exit_path(self, name: str) -> Path:
        return self._record_path(name).with_suffix(".exit")

    def job_exit_status(self, name: str) -> int | None:
        """A job's exit status once it ended (from ``procs/<name>.exit``), else None."""
        try:
            return int(self._exit_path(name).read_text().strip())
        except (OSError, ValueError):
            return None

    def state(self, name: str) -> ProcessState | None:
        """The state of ``name``: a service's health, a job's progress or result."""
        record = self.get(name)
        if record is None:
            return None
        running = self.running(name) is not None
        healthy = running and not record.job and self.healthy(name)
        exit_status = self.job_exit_status(name) if record.job and not running else None
        return process_state(record.job, running, healthy, exit_status)

    def service(self, record: ProcessRecord) -> Service:
        return Service(self, record.name, record.pid, dict(record.ports))

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
        launcher: Sequence[str] = (),
        job: bool = False,
        wait: bool = False,
        timeout: float = 60.0,
    ) -> Service:
        """Starts ``name`` unless it already runs (then adopts the running process).

        ``python`` runs ``args`` with this interpreter; ``launcher`` prefixes the command
        (``taskset -c 0``). ``job`` marks a one-shot process whose exit status is kept.
        With ``wait``, returns once healthy; a child that exits or stays unhealthy for
        ``timeout`` seconds is stopped and the error raised.
        """
        self._started.setdefault(name, None)
        existing = self.running(name)
        if existing is not None:
            service = self.service(existing)
        else:
            argv = [sys.executable, *args] if python else list(args)
            launcher = list(launcher)
            if job:
                self._exit_path(name).unlink(missing_ok=True)
                launcher = ["/bin/sh", "-c", _JOB_WRAPPER, str(self._exit_path(name)), *launcher]
            with open(self.log_path(name), "ab") as log:
                proc = subprocess.Popen(
                    [*launcher, *argv],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env={**os.environ, **(env or {})},
                    start_new_session=True,
                )
            self._children[proc.pid] = proc
            record = ProcessRecord(name, argv, proc.pid, time.time(), health_url,
                                   ports or {}, labels or {}, launcher, job)  # fmt: skip
            tmp = self._record_path(name).with_suffix(".tmp")
            tmp.write_text(json.dumps(asdict(record), indent=2))
            tmp.replace(self._record_path(name))
            service = self.service(record)
        if wait:
            try:
                self.wait_healthy(name, timeout)
            except BaseException:
                self.stop(name)
                raise
        return service

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
        """Waits until ``name`` answers its health URL; raises at once if it exited."""
        record = self.get(name)
        if record is None:
            raise SupervisorError(f"{name} was never started")

        def check() -> ProcessRecord | None:
            if self.running(name) is None:
                code = self.exit_status(record.pid)
                raise SupervisorError(f"{name} exited (status {code}): {self.log_tail(name)}")
            return record if self.healthy(name) else None

        return wait_until(
            check,
            timeout=timeout,
            what=f"{name} healthy at {record.health_url}",
            detail=lambda: self.log_tail(name),
        )

    def stop(self, name: str, timeout: float = 10.0) -> bool:
        """SIGTERM the process group, SIGKILL after ``timeout``; removes the state files."""
        record = self.running(name)
        if record is not None:
            # The rest of its group (a job under its wrapper, a run's own subprocesses) is
            # waited for too; other sessions it started (the operator's predictors) are not.
            members = _group_members(record.pid)
            self._signal_group(record.pid, signal.SIGTERM)
            try:
                self._wait_gone(record, members, timeout)
            except TimeoutError:
                self._signal_group(record.pid, signal.SIGKILL)
                self._wait_gone(record, members, 5.0)
        self._exit_path(name).unlink(missing_ok=True)
        self._record_path(name).unlink(missing_ok=True)
        return record is not None

    def stop_all(self, timeout: float = 10.0) -> list[str]:
        return [r.name for r in self.list() if self.stop(r.name, timeout)]

    def _alive(self, pid: int) -> bool:
        """Our child until reaped, any other process until it exits (a zombie counts as gone:
        an adopted child's zombie is its former parent's to reap, or nobody's)."""
        if pid in self._children:
            return self._children[pid].poll() is None
        return psutil.pid_exists(pid) and _live_cmdline(pid) is not None

    def _wait_gone(
        self, record: ProcessRecord, members: list[psutil.Process], timeout: float
    ) -> None:
        wait_until(
            lambda: not self._alive(record.pid) and not any(map(_process_runs, members)),
            timeout=timeout,
            interval=0.05,
            what=f"{record.name} (pid {record.pid}) to exit",
        )

    @staticmethod
    def _signal_group(pid: int, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
