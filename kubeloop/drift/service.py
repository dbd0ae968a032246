"""The drift service: KServe payload CloudEvents in, ``kubeloop_*`` drift metrics out.

Run: ``.venv-drift/bin/python -m kubeloop.drift --port 8090 --registry-uri var/registry``.

HTTP handlers validate and pair events on the event loop (cheap, and every refusal
is a 4xx with a counted reason before any state changes); paired rows go in batches,
over a bounded queue, to a detector worker *process* (``kubeloop.drift.worker``),
so parsing and detector updates use a core each and a slow detector step never blocks
the logger. When the worker lags by more than the queue holds, batches are dropped and
counted (``kubeloop_drift_dropped_total``); when it dies, ``/healthz`` and ``/readyz``
answer 503, ``kubeloop_drift_worker_up`` drops to 0 and events are refused with 503.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kubeloop.contracts.payload_events import WORKER_DOWN
from kubeloop.drift.config import DriftConfigError, ServiceSettings, check_alibi_license
from kubeloop.drift.events import (
    EventRejected,
    clip,
    parse_cloudevent,
    parse_feedback,
    validate_instances,
    validate_predictions,
)
from kubeloop.drift.fastpath import PayloadEventsFastPath
from kubeloop.drift.metrics import DriftMetrics
from kubeloop.drift.params import BadRequest, wait_timeout, watch_request
from kubeloop.drift.reference import Reference, ReferenceError, load_reference
from kubeloop.drift.worker import DetectorWorker, WorkerDown
from kubeloop.registry import RegistryError

log = logging.getLogger("kubeloop.drift.service")
BATCH_ITEMS = 256  # paired rows per hand-off to the detector worker
FLUSH_SECONDS = 0.005  # a partial batch waits this long while the worker keeps up
QUEUE_BATCHES = 64  # batches the worker may lag behind before new ones are dropped


@dataclass
class Watched:
    """The HTTP side of one watched version: what validation needs and the last snapshot."""

    id: int
    reference: Reference
    snapshot: dict[str, Any]

    @property
    def model(self) -> str:
        return self.reference.model

    @property
    def version(self) -> str:
        return self.reference.version

    def view(self) -> dict[str, Any]:
        return {**self.snapshot, "seconds_since_reset": time.time() - self.snapshot["reset_at"]}


class DriftService:
    """Watched versions, pairing of request/response events, feedback store, worker hand-off."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = DriftMetrics()
        self.monitors: dict[tuple[str, str], Watched] = {}
        self._by_id: dict[int, Watched] = {}
        self._next_id = 0
        self.pending: OrderedDict[str, tuple[int, list[dict[str, Any]]]] = OrderedDict()
        self.answered: OrderedDict[str, tuple[int, list[float] | None, list[int]]] = OrderedDict()
        self.enqueued = 0
        self.processed = 0
        self.dropped = 0
        self._in_flight = 0  # batches handed over and not yet processed
        self._buffer: list[tuple] = []
        self._buffer_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._stop = threading.Event()
        self.worker = DetectorWorker(self._on_done, queue_batches=QUEUE_BATCHES)
        self.metrics.worker_up.set(1)
        self._flusher = threading.Thread(target=self._run_flusher, name="drift-flush", daemon=True)
        self._flusher.start()

    # --- watching ------------------------------------------------------------------------
    def watch(
        self, model: str, version: str, registry_uri: str | None, overrides: dict | None
    ) -> dict[str, Any]:
        settings = self.settings.detectors.with_overrides(overrides)
        reference = load_reference(registry_uri or self.settings.registry_uri, model, version)
        with self._watch_lock:
            self._next_id += 1
            mon_id = self._next_id
        snap = self.worker.call("watch", mon_id, reference, settings, self.settings.cache_dir)
        key = (reference.model, reference.version)
        watched = Watched(mon_id, reference, snap)
        old = self.monitors.get(key)
        self._by_id[mon_id] = watched
        self.monitors[key] = watched
        self.metrics.watch(*key, snap["reset_at"])
        if old is not None:
            self._by_id.pop(old.id, None)
            self.worker.forget(old.id)
        log.info("watching %s/%s (set-up %.2fs)", *key, snap["setup_seconds"])
        return snap

    # --- events (event loop) ---------------------------------------------------------------
    def reject(self, exc: EventRejected) -> JSONResponse:
        self.metrics.rejected.labels(reason=exc.reason).inc()
        return JSONResponse({"error": str(exc), "reason": exc.reason}, status_code=exc.status)

    def _check_worker(self) -> None:
        if not self.worker.alive:
            raise WorkerDown(self.worker.error or "detector worker is not running")

    def handle_event(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        event = parse_cloudevent(headers, body)
        mon = self.monitors.get((event.model, event.version))
        if mon is None:
            raise EventRejected(
                "unwatched_model", f"{clip(event.model)}/{clip(event.version)} is not watched", 404
            )
        if event.kind == "request":
            if event.id in self.pending or event.id in self.answered:
                raise EventRejected(
                    "duplicate_event", f"request {clip(event.id)} was already received", 409
                )
            spec = mon.reference.spec
            instances = validate_instances(event.data, spec.numeric, spec.categorical, spec.keys)
            self.pending[event.id] = (mon.id, instances)
            if len(self.pending) > self.settings.pending_limit:
                self.pending.popitem(last=False)
            return {"accepted": "request", "id": event.id}
        waiting = self.pending.get(event.id)
        if waiting is None:
            reason = "duplicate_event" if event.id in self.answered else "unpaired_response"
            raise EventRejected(reason, f"response {clip(event.id)} has no pending request", 409)
        req_id, instances = waiting
        if req_id != mon.id:
            raise EventRejected(
                "unpaired_response", f"response {clip(event.id)} names another model version", 409
            )
        scores, labels = validate_predictions(event.data, len(instances))
        self._check_worker()
        del self.pending[event.id]
        self.answered[event.id] = (mon.id, scores, labels)
        if len(self.answered) > self.settings.feedback_limit:
            self.answered.popitem(last=False)
        self._add(("observe", mon.id, instances, scores))
        return {"accepted": "response", "id": event.id}

    def handle_feedback(self, body: bytes) -> dict[str, Any]:
        items = parse_feedback(body)
        resolved = []
        for request_id, labels in items:  # check all first: a bad item leaves no partial update
            found = self.answered.get(request_id)
            if found is None:
                raise EventRejected(
                    "unknown_request_id", f"no answered request with id {clip(request_id)}", 404
                )
            mon_id, scores, preds = found
            if len(labels) != len(preds):
                raise EventRejected(
                    "bad_feedback",
                    f"request {clip(request_id)} had {len(preds)} instance(s), got {len(labels)} label(s)",
                )
            if scores is None:
                raise EventRejected(
                    "duplicate_feedback", f"request {clip(request_id)} already has feedback", 409
                )
            resolved.append((request_id, mon_id, labels, scores, preds))
        if len({r[0] for r in resolved}) != len(resolved):
            raise EventRejected(
                "duplicate_feedback", "the same request_id appears twice in one feedback batch", 409
            )
        self._check_worker()
        for request_id, mon_id, labels, scores, preds in resolved:
            self.answered[request_id] = (mon_id, None, preds)  # marks "labelled"
            self._add(("feedback", mon_id, labels, scores, preds))
        return {"accepted": len(resolved)}

    # --- hand-off to the detector worker ---------------------------------------------------
    def _add(self, item: tuple) -> None:
        with self._buffer_lock:
            self._buffer.append(item)
            full = len(self._buffer) >= BATCH_ITEMS
        if full:
            self.flush()

    def flush(self) -> None:
        """Sends the buffered items as one batch; a full queue drops the batch and counts it."""
        with self._buffer_lock:
            items, self._buffer = self._buffer, []
            if not items:
                return
            try:
                sent = self.worker.send_batch(items)
            except WorkerDown:
                sent = False
            if sent:
                self.enqueued += len(items)
                self._in_flight += 1
                return
            self.dropped += len(items)
        for mon_id, n in Counter(item[1] for item in items).items():
            if (w := self._by_id.get(mon_id)) is not None:
                self.metrics.dropped.labels(model=w.model, version=w.version).inc(n)

    def _run_flusher(self) -> None:
        # A partial batch goes out only while the worker has at most one batch ahead of it:
        # when it falls behind, batches grow to BATCH_ITEMS, so the queue's bound (in batches)
        # holds as many rows as it can and the worker pays its per-batch costs less often.
        while not self._stop.wait(FLUSH_SECONDS):
            if self._buffer and self._in_flight < 2:
                self.flush()

    def _on_done(self, n_items: int, updates: list[dict[str, Any]], failed: int) -> None:
        """Reader thread: a batch was processed (or the worker died, with n_items 0)."""
        for u in updates:
            watched = self._by_id.get(u["id"])
            if watched is None:  # replaced by a newer watch
                continue
            watched.snapshot = u["snapshot"]
            self.metrics.publish(u["snapshot"], u["samples"], u["correct"], u["incorrect"])
        if failed:
            self.metrics.worker_errors.labels(kind="update").inc(failed)
        if not self.worker.alive and not self._stop.is_set():
            self.metrics.worker_up.set(0)
            self.metrics.worker_errors.labels(kind="exit").inc()
        if n_items:
            self._in_flight -= 1
        self.processed += n_items

    def wait_idle(self, timeout: float = 30.0) -> bool:
        self.flush()
        deadline = time.monotonic() + timeout
        while self.processed < self.enqueued and self.worker.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.processed >= self.enqueued

    def report(self, key: tuple[str, str], p_val: float = 0.05) -> dict[str, Any]:
        watched = self.monitors[key]
        self.wait_idle()
        try:
            return self.worker.call("report", watched.id, p_val, timeout=300)
        except WorkerDown:
            raise
        except RuntimeError as exc:
            raise ValueError(str(exc)) from None

    def status(self) -> dict[str, Any]:
        return {
            "watched": [w.view() for w in list(self.monitors.values())],
            "pending_requests": len(self.pending),
            "backlog": self.enqueued - self.processed + len(self._buffer),
            "processed": self.processed,
            "dropped": self.dropped,
            "worker": {
                "pid": self.worker.process.pid,
                "alive": self.worker.alive,
                "error": self.worker.error,
            },
        }

    def stop(self) -> None:
        self._stop.set()
        self.worker.stop()


def _lifespan(svc: DriftService):  # noqa: ANN202
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        yield
        svc.stop()

    return lifespan


def create_app(settings: ServiceSettings) -> Starlette:
    svc = DriftService(settings)

    def unavailable(exc: WorkerDown) -> JSONResponse:
        return JSONResponse({"error": str(exc), "reason": WORKER_DOWN}, status_code=503)

    async def feedback(request: Request) -> Response:
        try:
            return JSONResponse(svc.handle_feedback(await request.body()), status_code=202)
        except EventRejected as exc:
            return svc.reject(exc)
        except WorkerDown as exc:
            return unavailable(exc)

    async def watch(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; too deeply nested
            return JSONResponse({"error": f"watch body is not JSON: {exc}"}, status_code=400)
        try:
            model, version, registry_uri, detectors = watch_request(body)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        try:
            snap = await run_in_threadpool(svc.watch, model, version, registry_uri, detectors)
        except DriftConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        except ReferenceError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        except RegistryError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except WorkerDown as exc:
            return unavailable(exc)
        except Exception as exc:
            log.exception("watching %s/%s failed", model, version)
            return JSONResponse({"error": f"detector set-up failed: {exc}"}, status_code=500)
        return JSONResponse(snap)

    async def status(request: Request) -> Response:
        try:
            timeout = wait_timeout(request.query_params)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        if timeout is not None:
            await run_in_threadpool(svc.wait_idle, timeout)
        return JSONResponse(svc.status())

    async def report(request: Request) -> Response:
        key = (request.query_params.get("model", ""), request.query_params.get("version", ""))
        if key not in svc.monitors:
            return JSONResponse(
                {"error": f"{clip(key[0])}/{clip(key[1])} is not watched"}, status_code=404
            )
        try:
            return JSONResponse(await run_in_threadpool(svc.report, key))
        except WorkerDown as exc:
            return unavailable(exc)
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def http_error(request: Request, exc: HTTPException) -> Response:
        # Starlette's own refusals (unknown path, wrong method) in the service's error shape.
        return JSONResponse(
            {"error": f"{request.method} {clip(request.url.path)}: {exc.detail}"},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    async def healthz(request: Request) -> Response:
        if svc.worker.alive:
            return JSONResponse({"ok": True})
        return JSONResponse({"ok": False, "error": svc.worker.error}, status_code=503)

    app = Starlette(
        routes=[
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/v1/watch", watch, methods=["POST"]),
            Route("/v1/status", status, methods=["GET"]),
            Route("/v1/report", report, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", healthz, methods=["GET"]),
        ],
        lifespan=_lifespan(svc),
        exception_handlers={HTTPException: http_error},
    )
    app.add_middleware(PayloadEventsFastPath, service=svc)  # serves POST /
    app.state.service = svc
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m kubeloop.drift", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--registry-uri", help="model registry (default: $KUBELOOP_HOME/registry)")
    parser.add_argument(
        "--cache-dir", help="detector threshold cache (default: $KUBELOOP_HOME/drift-cache)"
    )
    parser.add_argument(
        "--watch", action="append", default=[], metavar="MODEL:VERSION", help="watch at start"
    )
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    import alibi_detect
    import uvicorn

    try:
        settings = ServiceSettings.from_env(
            registry_uri=args.registry_uri, cache_dir=args.cache_dir
        )
        check_alibi_license(alibi_detect.__version__, settings.allow_bsl_alibi)
    except DriftConfigError as exc:
        parser.exit(2, f"error: {exc}\n")
    settings = replace(settings, cache_dir=Path(settings.cache_dir))
    app = create_app(settings)
    for spec in args.watch:
        model, _, version = spec.partition(":")
        app.state.service.watch(model, version or "latest", None, None)
    asyncio.run(
        uvicorn.Server(
            uvicorn.Config(
                app,
                host=args.host,
                port=args.port,
                log_level="warning",
                access_log=False,
                loop="uvloop",
                http="httptools",
            )  # fmt: skip
        ).serve()
    )


if __name__ == "__main__":
    main()
