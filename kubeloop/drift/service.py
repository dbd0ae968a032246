"""The drift service: KServe payload CloudEvents in, ``kubeloop_*`` drift metrics out.

Run: ``.venv-drift/bin/python -m kubeloop.drift --port 8090 --registry-uri var/registry``.

HTTP handlers validate and pair events on the event loop (cheap, and every refusal
is a 4xx with a counted reason before any state changes); paired rows go in batches,
over a bounded queue, to a detector worker *process* (``kubeloop.drift.worker``),
so parsing and detector updates use a core each and a slow detector step never blocks
the logger. When the worker lags by more than the queue holds, batches are dropped and
counted (``kubeloop_drift_dropped_total``); when it dies, ``/healthz`` and ``/readyz``
answer 503, ``kubeloop_drift_worker_up`` drops to 0 and events are refused with 503.

Watching is asynchronous: ``POST /v1/watch`` answers 202 while the worker arms the
version's detectors. Events of a version are accepted from its first request, before
it is armed, when the registry holds it (``kubeloop.drift.versions``): labels count in
``kubeloop_feedback_total`` at once and what the detectors read waits, bounded, until
they are armed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import queue
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import replace
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
from kubeloop.drift.fastpath import BodyLimit, PayloadEventsFastPath
from kubeloop.drift.metrics import DriftMetrics
from kubeloop.drift.params import BadRequest, report_fdr, wait_timeout, watch_request
from kubeloop.drift.reference import Reference, ReferenceError, load_reference
from kubeloop.drift.versions import (
    ARMED,
    ARMING,
    FAILED,
    UNWATCHED,
    LookUp,
    TrackedVersion,
    VersionTable,
    trackable,
)
from kubeloop.drift.worker import DetectorWorker, WorkerDown
from kubeloop.registry import RegistryError

log = logging.getLogger("kubeloop.drift.service")
BATCH_ITEMS = 256  # paired rows per hand-off to the detector worker
FLUSH_SECONDS = 0.005  # a partial batch waits this long while the worker keeps up
QUEUE_BATCHES = 64  # batches the worker may lag behind before new ones are dropped


class DriftService:
    """Tracked versions and their watches, pairing of request/response events, feedback
    store, worker hand-off. Version state changes on the event loop only (arming runs in
    the worker; its result is applied on the loop)."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = DriftMetrics()
        self.versions = VersionTable(
            unwatched_limit=settings.unwatched_limit,
            backlog_rows=settings.backlog_rows,
            absent_ttl_seconds=settings.absent_ttl_seconds,
        )
        self._by_id: dict[int, TrackedVersion] = {}  # the worker's monitor id -> its version
        self._next_id = 0
        # By request id: the version's (key, serial) and what pairing and labels need.
        self.pending: OrderedDict[str, tuple[tuple, int, list[dict[str, Any]]]] = OrderedDict()
        self.answered: OrderedDict[str, tuple[tuple, int, list[float] | None, list[int]]] = (
            OrderedDict()
        )
        self.enqueued = 0
        self.processed = 0
        self.dropped = 0
        self._in_flight = 0  # batches handed over and not yet processed
        self._buffer: list[tuple] = []
        self._buffer_lock = threading.Lock()
        self._lookup_lock: asyncio.Lock | None = None  # one registry look-up at a time
        self._arming: set[asyncio.Task] = set()
        self._stop = threading.Event()
        self.worker = DetectorWorker(self._on_done, queue_batches=QUEUE_BATCHES)
        self.metrics.worker_up.set(1)
        self._flusher = threading.Thread(target=self._run_flusher, name="drift-flush", daemon=True)
        self._flusher.start()

    # --- tracking (event loop) ------------------------------------------------------------
    def _load_trackable(self, key: tuple[str, str]) -> Reference | str:
        """Thread pool: the version's reference from the service's registry, or why not."""
        if why := trackable(*key):
            return why
        try:
            return load_reference(self.settings.registry_uri, *key, self.settings.s3)
        except RegistryError as exc:  # VersionNotFound among them
            return f"the registry has no such version ({clip(str(exc))})"
        except ReferenceError as exc:
            return f"it has no usable reference sample ({clip(str(exc))})"
        except Exception as exc:  # an unreadable sample; the registry itself failing
            log.warning("looking up %s/%s failed: %s", *key, exc)
            return f"its reference sample could not be read ({clip(str(exc))})"

    async def look_up(self, key: tuple[str, str]) -> None:
        """Tracks a version named by an event once the registry shows it exists; else
        remembers it as absent for ``absent_ttl_seconds`` (cheap refusals after that)."""
        if self._lookup_lock is None:
            self._lookup_lock = asyncio.Lock()
        async with self._lookup_lock:  # serial: a flood of made-up names costs one at a time
            now = time.time()
            if self.versions.peek(key) is not None or self.versions.absent(key, now):
                return
            found = await run_in_threadpool(self._load_trackable, key)
            now = time.time()
            if isinstance(found, str):
                self.versions.mark_absent(key, found, now)
                return
            if self.versions.peek(key) is not None:  # a watch tracked it meanwhile
                return
            tracked, evicted = self.versions.track(found, now)
            self.metrics.track(*tracked.key)
            log.info("tracking %s/%s from its events (not watched yet)", *key)
            if evicted is not None:
                self.metrics.forget(*evicted.key, counters=True)
                log.warning("stopped tracking unwatched %s/%s (more than %d unwatched versions)",
                            *evicted.key, self.settings.unwatched_limit)  # fmt: skip

    def _tracked(self, model: str, version: str, look_up: bool) -> TrackedVersion:
        key = (model, version)
        tracked = self.versions.get(key)
        if tracked is not None:
            return tracked
        why = trackable(model, version) or self.versions.absent(key, time.time())
        if why is None and look_up:
            raise LookUp(model, version)
        raise EventRejected(
            "unwatched_model",
            f"{clip(model)}/{clip(version)} is not watched and not tracked: "
            f"{why or 'more versions are tracked than the service keeps'}",
            404,
        )

    def _feed(self, tracked: TrackedVersion, kind: str, *payload: Any) -> None:
        """To the version's detectors when armed, else into its bounded backlog."""
        if tracked.state == ARMED:
            self._add((kind, tracked.mon_id, *payload))
            return
        if dropped := tracked.backlog.hold(kind, payload, len(payload[0])):
            self._count_dropped(tracked, dropped)

    def _count_dropped(self, tracked: TrackedVersion, n: int) -> None:
        self.dropped += n
        self.metrics.dropped.labels(model=tracked.model, version=tracked.version).inc(n)

    # --- watching (event loop) ------------------------------------------------------------
    async def watch(
        self, model: str, version: str, registry_uri: str | None, overrides: dict | None,
        reset: bool = False,
    ) -> tuple[TrackedVersion, bool]:  # fmt: skip
        """Starts arming the version's detectors in the worker and returns at once:
        ``(tracked, started)``. A watch of the same reference and settings that is armed
        or arming already changes nothing, unless ``reset`` asks for fresh detectors of an
        armed version (a version being armed gets fresh detectors anyway)."""
        settings = self.settings.detectors.with_overrides(overrides)
        reference = await run_in_threadpool(
            load_reference,
            registry_uri or self.settings.registry_uri,
            model,
            version,
            self.settings.s3,
        )
        now = time.time()
        tracked = self.versions.watch(reference, now)
        watch_key = (reference.digest, settings)
        if tracked.same_watch(watch_key) and not (reset and tracked.state == ARMED):
            return tracked, False
        if dropped := tracked.start_arming(reference, watch_key, now):
            self._count_dropped(tracked, dropped)
        self.metrics.track(*tracked.key)
        self._next_id += 1
        task = asyncio.ensure_future(self._arm(tracked, tracked.attempt, self._next_id, settings))
        self._arming.add(task)
        task.add_done_callback(self._arming.discard)
        log.info("arming %s/%s (attempt %d)", *tracked.key, tracked.attempt)
        return tracked, True

    async def _arm(self, tracked: TrackedVersion, attempt: int, mon_id: int, settings: Any) -> None:
        reference = tracked.reference
        try:
            snap = await run_in_threadpool(
                self.worker.call, "watch", mon_id, reference, settings, self.settings.cache_dir
            )
        except Exception as exc:  # WorkerDown, a detector set-up error, a timeout
            log.error("arming %s/%s failed: %s", *tracked.key, exc)
            if tracked.attempt == attempt and not tracked.evicted:
                old = tracked.failed(f"detector set-up failed: {exc}", time.time())
                self.metrics.forget(*tracked.key)
                await self._retire(old)
            return
        if tracked.attempt != attempt:  # a newer watch is arming this version
            await run_in_threadpool(self.worker.forget, mon_id)
            return
        # One step on the loop, no await: the backlog reaches the worker before any event
        # that arrives after the version is armed.
        old = tracked.armed(mon_id, snap, time.time())
        self._by_id[mon_id] = tracked
        self.metrics.watch(*tracked.key, snap["reset_at"])
        for kind, payload in tracked.backlog.drain():
            self._add((kind, mon_id, *payload))
        self.flush()
        log.info("watching %s/%s (set-up %.2fs)", *tracked.key, snap["setup_seconds"])
        await self._retire(old)

    async def _retire(self, mon_id: int | None) -> None:
        """The worker drops a monitor no longer fed (off the loop: the queue may be full)."""
        if mon_id is not None:
            self._by_id.pop(mon_id, None)
            with contextlib.suppress(WorkerDown, queue.Full):
                await run_in_threadpool(self.worker.forget, mon_id)

    async def wait_armed(self, tracked: TrackedVersion, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while tracked.state == ARMING and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    # --- events (event loop) ---------------------------------------------------------------
    def reject(self, exc: EventRejected) -> JSONResponse:
        self.metrics.rejected.labels(reason=exc.reason).inc()
        return JSONResponse({"error": str(exc), "reason": exc.reason}, status_code=exc.status)

    def _check_worker(self) -> None:
        if not self.worker.alive:
            raise WorkerDown(self.worker.error or "detector worker is not running")

    def handle_event(
        self, headers: dict[str, str], body: bytes, look_up: bool = True
    ) -> dict[str, Any]:
        """One payload event. Raises :class:`LookUp` (only when ``look_up``) for a version
        the service has not looked up yet: the caller awaits :meth:`look_up` and retries."""
        event = parse_cloudevent(headers, body)
        tracked = self._tracked(event.model, event.version, look_up)
        if event.kind == "request":
            if event.id in self.pending or event.id in self.answered:
                raise EventRejected(
                    "duplicate_event", f"request {clip(event.id)} was already received", 409
                )
            spec = tracked.reference.spec
            instances = validate_instances(event.data, spec.numeric, spec.categorical, spec.keys)
            self.pending[event.id] = (tracked.key, tracked.serial, instances)
            if len(self.pending) > self.settings.pending_limit:
                self.pending.popitem(last=False)
            return {"accepted": "request", "id": event.id}
        waiting = self.pending.get(event.id)
        if waiting is None:
            reason = "duplicate_event" if event.id in self.answered else "unpaired_response"
            raise EventRejected(reason, f"response {clip(event.id)} has no pending request", 409)
        req_key, req_serial, instances = waiting
        if (req_key, req_serial) != (tracked.key, tracked.serial):
            raise EventRejected(
                "unpaired_response",
                f"response {clip(event.id)} names another model version, or its request's "
                "version is no longer tracked",
                409,
            )
        scores, labels = validate_predictions(event.data, len(instances))
        self._check_worker()
        del self.pending[event.id]
        self.answered[event.id] = (tracked.key, tracked.serial, scores, labels)
        if len(self.answered) > self.settings.feedback_limit:
            self.answered.popitem(last=False)
        self._feed(tracked, "observe", instances, scores, labels)
        return {"accepted": "response", "id": event.id}

    def handle_feedback(self, body: bytes) -> dict[str, Any]:
        """Labels for answered requests: counted in ``kubeloop_feedback_total`` at once
        (the rollout analysis reads it), then fed to the error-rate detector (or held)."""
        items = parse_feedback(body)
        resolved = []
        for request_id, labels in items:  # check all first: a bad item leaves no partial update
            found = self.answered.get(request_id)
            if found is None:
                raise EventRejected(
                    "unknown_request_id", f"no answered request with id {clip(request_id)}", 404
                )
            key, serial, scores, preds = found
            if len(labels) != len(preds):
                raise EventRejected(
                    "bad_feedback",
                    f"request {clip(request_id)} had {len(preds)} instance(s), got {len(labels)} label(s)",
                )
            if scores is None:
                raise EventRejected(
                    "duplicate_feedback", f"request {clip(request_id)} already has feedback", 409
                )
            tracked = self.versions.current(key, serial)
            if tracked is None:
                raise EventRejected(
                    "unwatched_model",
                    f"request {clip(request_id)} was for {clip(key[0])}/{clip(key[1])}, "
                    "which is no longer tracked",
                    404,
                )
            resolved.append((request_id, tracked, labels, scores, preds))
        if len({r[0] for r in resolved}) != len(resolved):
            raise EventRejected(
                "duplicate_feedback", "the same request_id appears twice in one feedback batch", 409
            )
        self._check_worker()
        for request_id, tracked, labels, scores, preds in resolved:
            self.answered[request_id] = (tracked.key, tracked.serial, None, preds)  # "labelled"
            incorrect = sum(int(p != y) for p, y in zip(preds, labels, strict=True))
            self.metrics.label(*tracked.key, len(labels) - incorrect, incorrect)
            self._feed(tracked, "feedback", labels, scores, preds)
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
            if (tracked := self._by_id.get(mon_id)) is not None:
                self.metrics.dropped.labels(model=tracked.model, version=tracked.version).inc(n)

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
            tracked = self._by_id.get(u["id"])
            if tracked is None or tracked.mon_id != u["id"]:  # replaced by a newer watch
                continue
            tracked.snapshot = u["snapshot"]
            self.metrics.publish(u["snapshot"], u["samples"])
        if failed:
            self.metrics.worker_errors.labels(kind="update").inc(failed)
        if not self.worker.alive and not self._stop.is_set():
            self.metrics.worker_up.set(0)
            self.metrics.worker_errors.labels(kind="exit").inc()
        if n_items:
            self._in_flight -= 1
        self.processed += n_items

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Waits (thread pool) until no version is arming and the detector queue is drained."""
        deadline = time.monotonic() + timeout
        while self.versions.arming() and self.worker.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        self.flush()
        while self.processed < self.enqueued and self.worker.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.processed >= self.enqueued and not self.versions.arming()

    def report(self, tracked: TrackedVersion, p_val: float = 0.05) -> dict[str, Any]:
        self.wait_idle()
        try:
            return self.worker.call("report", tracked.mon_id, p_val, timeout=300)
        except WorkerDown:
            raise
        except RuntimeError as exc:
            raise ValueError(str(exc)) from None

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "watched": [t.view(now) for t in self.versions.watched()],
            "unwatched": [t.view(now) for t in self.versions.unwatched()],
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


def _lifespan(svc: DriftService, watch: list[tuple[str, str]]):  # noqa: ANN202
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        for model, version in watch:  # armed in the background, like any watch
            await svc.watch(model, version, None, None)
        yield
        svc.stop()

    return lifespan


def create_app(
    settings: ServiceSettings, watch_at_start: list[tuple[str, str]] | None = None
) -> Starlette:
    """The service's ASGI app; ``watch_at_start`` lists (model, version) to watch."""
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
            wait = wait_timeout(request.query_params, "armed")
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        try:
            body = json.loads(await request.body())
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; too deeply nested
            return JSONResponse({"error": f"watch body is not JSON: {exc}"}, status_code=400)
        try:
            model, version, registry_uri, detectors, reset = watch_request(body)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        if not svc.worker.alive:
            return unavailable(WorkerDown(svc.worker.error or "detector worker is not running"))
        try:
            tracked, started = await svc.watch(model, version, registry_uri, detectors, reset)
        except (DriftConfigError, ReferenceError) as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        except RegistryError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except Exception as exc:
            log.exception("watching %s/%s failed", model, version)
            return JSONResponse({"error": f"watching failed: {exc}"}, status_code=500)
        if wait is not None:
            await svc.wait_armed(tracked, wait)
        view = {**tracked.view(time.time()), "started": started}
        if tracked.state == FAILED:
            return JSONResponse({**view, "error": tracked.error}, status_code=500)
        # 202: arming in the background (GET /v1/status shows when it is armed).
        return JSONResponse(view, status_code=200 if tracked.state == ARMED else 202)

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
        try:
            fdr = report_fdr(request.query_params)
        except BadRequest as exc:
            return JSONResponse({"error": str(exc)}, status_code=400)
        tracked = svc.versions.peek(key)
        if tracked is None or tracked.state == UNWATCHED:
            return JSONResponse(
                {"error": f"{clip(key[0])}/{clip(key[1])} is not watched"}, status_code=404
            )
        if tracked.state != ARMED:
            return JSONResponse(
                {"error": f"{clip(key[0])}/{clip(key[1])} is {tracked.state}, not armed"},
                status_code=409,
            )
        try:
            return JSONResponse(await run_in_threadpool(svc.report, tracked, fdr))
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
        lifespan=_lifespan(svc, watch_at_start or []),
        exception_handlers={HTTPException: http_error},
    )
    app.add_middleware(PayloadEventsFastPath, service=svc)  # serves POST /
    app.add_middleware(  # outermost: every route's body is capped
        BodyLimit,
        limit=settings.max_body_bytes,
        on_reject=lambda reason: svc.metrics.rejected.labels(reason=reason).inc(),
    )
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
    watch = [(model, version or "latest") for model, _, version in
             (spec.partition(":") for spec in args.watch)]  # fmt: skip
    app = create_app(settings, watch)
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
