"""``python -m kubeloop.local.watchdog --home HOME``: keeps the local runtime's parts running.

``LocalRuntime.start()`` (``kubeloop up``, ``kubeloop demo``) starts it last, under the
same supervisor (``procs/watchdog.json``, ``logs/watchdog.log``); ``LocalRuntime.stop()``
(``kubeloop down``) stops it first. Every ``--interval`` seconds it looks at Prometheus,
the drift service, the router and the operator (a pid counts while its command line
matches, via psutil); one that is gone is restarted through the runtime's own launcher
(``LocalRuntime.start_part``) after the back-off of ``restarts.py``, and given up after
the policy's restarts in a row. Each exit, restart and give-up is a log line; the
counts are written to ``<home>/runtime/watchdog.json`` for ``kubeloop up`` to report.
The operator keeps its state on disk, so a restarted operator resumes where it was; it
restarts its own predictors.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from collections.abc import Callable

from kubeloop.local.restarts import PartPhase, PartRestarts
from kubeloop.local.runtime import LocalRuntime

log = logging.getLogger("kubeloop.local.watchdog")


def _why(runtime: LocalRuntime, name: str, pid: int | None) -> str:
    """How the part ended: its exit status when known, and its log's last line."""
    status = runtime.supervisor.exit_status(pid) if pid else None
    lines = runtime.supervisor.log_tail(name, 500).strip().splitlines()
    why = "exited" if status is None else f"exited with status {status}"
    return f"{why}; last log line: {lines[-1][:200]}" if lines else why


def check_part(runtime: LocalRuntime, name: str, part: PartRestarts, now: float) -> PartRestarts:
    """One look at one part: note it running, back off after an exit, restart when due."""
    policy = runtime.restarts
    record = runtime.supervisor.running(name)
    if record is not None:
        if part.phase is PartPhase.GAVE_UP:
            log.info("%s runs again (pid %d, started elsewhere); watching it", name, record.pid)
        return part.seen_running(record.pid, now)
    if part.phase is PartPhase.RUNNING:
        part = part.exited(policy, now, _why(runtime, name, part.pid))
        if part.phase is PartPhase.GAVE_UP:
            log.error(
                "%s gave up after %d restart(s) in a row (%s); `kubeloop up` starts it again",
                name, part.exits_in_a_row - 1, part.last_exit,
            )  # fmt: skip
        else:
            log.warning(
                "%s %s; restarting in %.1fs (exit %d in a row)",
                name, part.last_exit, part.restart_at - now, part.exits_in_a_row,
            )  # fmt: skip
        return part
    if not part.restart_due(now):
        return part
    try:
        service = runtime.start_part(name)
    except Exception as exc:  # a launcher error (a binary gone, a bad config) counts as an exit
        part = part.restart_failed(policy, now, f"restart failed: {exc}")
        log.error("%s %s (restart %d)", name, part.last_exit, part.restarts)
        return part
    part = part.restarted(service.pid, now)
    log.info("%s restarted (pid %d, restart %d)", name, service.pid, part.restarts)
    return part


def watch(
    runtime: LocalRuntime,
    stop: threading.Event,
    *,
    interval: float = 0.5,
    clock: Callable[[], float] = time.time,
) -> None:
    """Checks every part each ``interval`` seconds until ``stop`` is set."""
    parts = {name: PartRestarts() for name in runtime.parts}
    written = None
    while not stop.is_set():
        for name in runtime.parts:
            parts[name] = check_part(runtime, name, parts[name], clock())
        state = {"parts": {name: part.to_dict() for name, part in parts.items()}}
        if state != written:
            tmp = runtime.watchdog_state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(state, indent=2))
            tmp.replace(runtime.watchdog_state_path)
            written = state
        stop.wait(interval)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kubeloop.local.watchdog", description=__doc__)
    parser.add_argument("--home", required=True, help="the runtime's KUBELOOP_HOME")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds between looks")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    runtime = LocalRuntime.load(args.home)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("watching %s under %s", ", ".join(runtime.parts), runtime.root)
    watch(runtime, stop, interval=args.interval)


if __name__ == "__main__":
    main()
