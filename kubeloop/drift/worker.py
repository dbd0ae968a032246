"""The detector worker: a separate process that owns every watched version's detectors.

HTTP parsing and pairing (the service's event loop) and the detector updates each need
a core; in one process they share the GIL. So the service hands paired rows to this
process in batches over a bounded queue, and the worker answers with what the service
exports: processed counts and, per watched version, a snapshot (statistics, thresholds,
flags, live quality). Set-up of a new watch runs in a thread here, so the versions
already watched keep being monitored while a cold threshold calibration runs.

Messages to the worker (one ``multiprocessing`` queue, bounded in batches):
``("batch", items)``, ``("watch", req, mon_id, reference, settings, cache_dir)``,
``("report", req, mon_id, p_val)``, ``("forget", mon_id)``, ``("stop",)``.
Messages back: ``("done", n_items, updates, failed)``, ``("reply", req, ok, payload)``.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import queue
import signal
import threading
import time
import traceback
from typing import Any

log = logging.getLogger("kubeloop.drift.worker")
PUBLISH_EVERY_S = 0.05  # a busy worker sends snapshots at most this often (always when idle)


def _group(items: list[tuple]) -> dict[int, list]:
    """Per monitor id: [instances, scores, predicted classes, labels, feedback scores,
    feedback predictions]."""
    batches: dict[int, list] = {}
    for item in items:
        kind, mon_id = item[0], item[1]
        b = batches.setdefault(mon_id, [[], [], [], [], [], []])
        offset = 0 if kind == "observe" else 3
        for i, values in enumerate(item[2:5]):
            b[offset + i].extend(values)
    return batches


class _Worker:
    """State of the worker process (runs only there)."""

    def __init__(self, inbox: Any, outbox: Any) -> None:
        self.inbox, self.outbox = inbox, outbox
        self.monitors: dict[int, Any] = {}
        self.build_lock = threading.Lock()  # one set-up at a time: it is CPU-bound
        self.pending: dict[int, int] = {}  # mon_id -> instances observed since the last update
        self.last_publish = 0.0

    def build(self, req: int, mon_id: int, reference: Any, settings: Any, cache_dir: Any) -> None:
        from kubeloop.drift.monitor import VersionMonitor

        try:
            with self.build_lock:
                mon = VersionMonitor.build(reference, settings, cache_dir)
            self.monitors[mon_id] = mon
            self.outbox.put(("reply", req, True, mon.snapshot()))
        except Exception as exc:
            log.exception("detector set-up for %s/%s failed", reference.model, reference.version)
            self.outbox.put(("reply", req, False, f"{type(exc).__name__}: {exc}"))

    def process(self, items: list[tuple]) -> int:
        failed = 0
        for mon_id, batch in _group(items).items():
            instances, scores, classes, labels, fb_scores, preds = batch
            mon = self.monitors.get(mon_id)
            if mon is None:  # forgotten (watched again) while the batch was queued
                continue
            self.pending.setdefault(mon_id, 0)
            try:
                if instances:
                    mon.observe(instances, scores, classes)
                    self.pending[mon_id] += len(instances)
                if labels:
                    mon.feedback(labels, fb_scores, preds)
            except Exception:  # a detector bug must not stop monitoring of every model
                log.exception("detector update of %s/%s failed", mon.model, mon.version)
                failed += 1
        return failed

    def updates(self) -> list[dict[str, Any]]:
        out = []
        for mon_id, samples in self.pending.items():
            mon = self.monitors.get(mon_id)
            if mon is not None:
                out.append({"id": mon_id, "samples": samples, "snapshot": mon.snapshot()})
        self.pending.clear()
        self.last_publish = time.monotonic()
        return out

    def report(self, req: int, mon_id: int, p_val: float) -> None:
        mon = self.monitors.get(mon_id)
        try:
            if mon is None:
                raise ValueError("the version is no longer watched")
            self.outbox.put(("reply", req, True, mon.report(p_val)))
        except ValueError as exc:
            self.outbox.put(("reply", req, False, str(exc)))

    def run(self) -> None:
        parent = mp.parent_process()
        while True:
            try:
                msg = self.inbox.get(timeout=1.0)
            except queue.Empty:
                if parent is not None and not parent.is_alive():
                    return  # the service died without stopping us
                continue
            kind = msg[0]
            if kind == "batch":
                failed = self.process(msg[1])
                idle = self.inbox.empty()
                busy_due = time.monotonic() - self.last_publish >= PUBLISH_EVERY_S
                updates = self.updates() if idle or busy_due else []
                self.outbox.put(("done", len(msg[1]), updates, failed))
            elif kind == "watch":
                threading.Thread(target=self.build, args=msg[1:], daemon=True).start()
            elif kind == "report":
                self.report(*msg[1:])
            elif kind == "forget":
                self.monitors.pop(msg[1], None)
                self.pending.pop(msg[1], None)
            elif kind == "stop":
                return


def run_worker(inbox: Any, outbox: Any, log_level: int) -> None:
    """Entry point of the worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the service stops us; Ctrl-C goes to it
    logging.basicConfig(
        level=log_level, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s"
    )
    import torch

    torch.set_num_threads(1)  # one core for the detectors; the other serves HTTP
    from kubeloop.drift.detectors import _alibi

    _alibi()  # import alibi-detect (seconds) now, not in the first watch
    try:
        _Worker(inbox, outbox).run()
    except Exception:
        traceback.print_exc()
        raise


class WorkerDown(RuntimeError):
    """The detector worker process has exited."""


class DetectorWorker:
    """The service's handle on the worker process: send batches and commands, read results.

    ``on_done(n_items, updates, failed)`` runs on a reader thread for every processed batch.
    """

    def __init__(self, on_done: Any, queue_batches: int = 64) -> None:
        ctx = mp.get_context("spawn")  # no fork: the parent runs uvloop and threads
        self.inbox = ctx.Queue(maxsize=queue_batches)
        self.outbox = ctx.Queue()
        self.process = ctx.Process(
            target=run_worker,
            args=(self.inbox, self.outbox, logging.getLogger().level or logging.INFO),
            name="kubeloop-drift-detectors",
            daemon=True,
        )
        self.on_done = on_done
        self.error: str | None = None
        self._replies: dict[int, tuple[threading.Event, list]] = {}
        self._next_req = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.process.start()
        self._reader = threading.Thread(target=self._read, name="drift-worker-reader", daemon=True)
        self._reader.start()

    @property
    def alive(self) -> bool:
        if self.error is None and not self.process.is_alive() and not self._stopping.is_set():
            self._died()  # noticed here before the reader thread's next poll
        return self.error is None and self.process.is_alive()

    def _read(self) -> None:
        while not self._stopping.is_set():
            try:
                msg = self.outbox.get(timeout=0.2)
            except queue.Empty:
                if not self.process.is_alive():
                    self._died()
                    return
                continue
            except (EOFError, OSError):
                self._died()
                return
            if msg[0] == "done":
                self.on_done(*msg[1:])
            elif msg[0] == "reply":
                with self._lock:
                    waiting = self._replies.pop(msg[1], None)
                if waiting is not None:
                    waiting[1][:] = [msg[2], msg[3]]
                    waiting[0].set()

    def _died(self) -> None:
        with self._lock:
            if self._stopping.is_set() or self.error is not None:
                return
            self.error = f"detector worker exited with code {self.process.exitcode}"
        log.error("%s; drift detection stopped", self.error)
        with self._lock:
            waiting, self._replies = list(self._replies.values()), {}
        for event, box in waiting:
            box[:] = [False, self.error]
            event.set()
        self.on_done(0, [], 0)  # lets the service notice (metrics, readiness)

    def send_batch(self, items: list[tuple]) -> bool:
        """Hands a batch over without blocking; False when the queue is full (drop it)."""
        if not self.alive:
            raise WorkerDown(self.error or "detector worker is not running")
        try:
            self.inbox.put_nowait(("batch", items))
        except queue.Full:
            return False
        return True

    def call(self, kind: str, *args: Any, timeout: float = 3600.0) -> Any:
        """Sends a command and waits for its reply; raises RuntimeError with the worker's error."""
        if not self.alive:
            raise WorkerDown(self.error or "detector worker is not running")
        event, box = threading.Event(), []
        with self._lock:
            self._next_req += 1
            req = self._next_req
            self._replies[req] = (event, box)
        self.inbox.put((kind, req, *args), timeout=timeout)
        if not event.wait(timeout):
            raise TimeoutError(f"detector worker did not answer {kind!r} in {timeout:.0f}s")
        ok, payload = box
        if not ok:
            if self.error is not None:
                raise WorkerDown(payload)
            raise RuntimeError(payload)
        return payload

    def forget(self, mon_id: int) -> None:
        if self.alive:
            self.inbox.put(("forget", mon_id), timeout=60)

    def stop(self, timeout: float = 10.0) -> None:
        self._stopping.set()
        if self.process.is_alive():
            with contextlib.suppress(queue.Full):
                self.inbox.put(("stop",), timeout=timeout)
            self.process.join(timeout)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        self.inbox.cancel_join_thread()  # never block interpreter exit on unsent batches
        self._reader.join(2)


__all__ = ["DetectorWorker", "WorkerDown"]
