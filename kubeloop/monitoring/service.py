"""The drift service: KServe payload CloudEvents in, ``kubeloop_*`` drift metrics out.

Run: ``.venv-drift/bin/python -m kubeloop.monitoring.service --port 8090 --registry-uri var/registry``.

HTTP handlers validate and pair events on the event loop (cheap, and every refusal
is a 4xx with a counted reason before any state changes); a single worker thread
feeds paired rows to the detectors in micro-batches, so a slow detector step never
blocks the logger.
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
from collections import OrderedDict
from dataclasses import replace
from pathlib import Path
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from kubeloop.monitoring.config import DriftConfigError, ServiceSettings, check_alibi_license
from kubeloop.monitoring.events import (
    EventRejected,
    parse_cloudevent,
    parse_feedback,
    validate_instances,
    validate_predictions,
)
from kubeloop.monitoring.metrics import DriftMetrics
from kubeloop.monitoring.monitor import VersionMonitor
from kubeloop.monitoring.reference import ReferenceError, load_reference
from kubeloop.registry import RegistryError

log = logging.getLogger("kubeloop.monitoring.service")
BATCH_ITEMS = 512


class DriftService:
    """Watched versions, pairing of request/response events, feedback store, worker."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = DriftMetrics()
        self.monitors: dict[tuple[str, str], VersionMonitor] = {}
        self.pending: OrderedDict[str, tuple[VersionMonitor, list[dict[str, Any]]]] = OrderedDict()
        self.answered: OrderedDict[str, tuple[VersionMonitor, list[float], list[int]]] = (
            OrderedDict()
        )
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.enqueued = 0
        self.processed = 0
        self._watch_lock = threading.Lock()
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._run_worker, name="drift-worker", daemon=True)
        self._worker.start()

    # --- watching ------------------------------------------------------------------------
    def watch(
        self, model: str, version: str, registry_uri: str | None, overrides: dict | None
    ) -> VersionMonitor:
        settings = self.settings.detectors.with_overrides(overrides)
        reference = load_reference(registry_uri or self.settings.registry_uri, model, version)
        with self._watch_lock:  # one build at a time: detector set-up is CPU-bound
            mon = VersionMonitor.build(reference, settings, self.settings.cache_dir)
        key = (reference.model, reference.version)
        self.monitors[key] = mon
        self.metrics.watch(mon)
        log.info("watching %s/%s (set-up %.2fs)", *key, mon.setup_seconds)
        return mon

    # --- events (event loop) ---------------------------------------------------------------
    def reject(self, exc: EventRejected) -> JSONResponse:
        self.metrics.rejected.labels(reason=exc.reason).inc()
        return JSONResponse({"error": str(exc), "reason": exc.reason}, status_code=exc.status)

    def handle_event(self, headers: dict[str, str], body: bytes) -> dict[str, Any]:
        event = parse_cloudevent(headers, body)
        mon = self.monitors.get((event.model, event.version))
        if mon is None:
            raise EventRejected(
                "unwatched_model", f"{event.model}/{event.version} is not watched", 404
            )
        if event.kind == "request":
            if event.id in self.pending or event.id in self.answered:
                raise EventRejected(
                    "duplicate_event", f"request {event.id!r} was already received", 409
                )
            spec = mon.reference.spec
            instances = validate_instances(event.data, spec.numeric, spec.categorical, spec.keys)
            self.pending[event.id] = (mon, instances)
            if len(self.pending) > self.settings.pending_limit:
                self.pending.popitem(last=False)
            return {"accepted": "request", "id": event.id}
        waiting = self.pending.get(event.id)
        if waiting is None:
            reason = "duplicate_event" if event.id in self.answered else "unpaired_response"
            raise EventRejected(reason, f"response {event.id!r} has no pending request", 409)
        req_mon, instances = waiting
        if req_mon is not mon:
            raise EventRejected(
                "unpaired_response", f"response {event.id!r} names another model version", 409
            )
        scores, labels = validate_predictions(event.data, len(instances))
        del self.pending[event.id]
        self.answered[event.id] = (mon, scores, labels)
        if len(self.answered) > self.settings.feedback_limit:
            self.answered.popitem(last=False)
        self.enqueued += 1
        self.queue.put(("observe", mon, instances, scores))
        return {"accepted": "response", "id": event.id}

    def handle_feedback(self, body: bytes) -> dict[str, Any]:
        items = parse_feedback(body)
        resolved = []
        for request_id, labels in items:  # check all first: a bad item leaves no partial update
            found = self.answered.get(request_id)
            if found is None:
                raise EventRejected(
                    "unknown_request_id", f"no answered request with id {request_id!r}", 404
                )
            mon, scores, preds = found
            if len(labels) != len(preds):
                raise EventRejected(
                    "bad_feedback",
                    f"request {request_id!r} had {len(preds)} instance(s), got {len(labels)} label(s)",
                )
            if scores is None:
                raise EventRejected(
                    "duplicate_feedback", f"request {request_id!r} already has feedback", 409
                )
            resolved.append((request_id, mon, labels, scores, preds))
        if len({r[0] for r in resolved}) != len(resolved):
            raise EventRejected(
                "duplicate_feedback", "the same request_id appears twice in one feedback batch", 409
            )
        for request_id, mon, labels, scores, preds in resolved:
            self.answered[request_id] = (mon, None, preds)  # type: ignore[assignment] # marks "labelled"
            self.enqueued += 1
            self.queue.put(("feedback", mon, labels, scores, preds))
        return {"accepted": len(resolved)}

    # --- worker ----------------------------------------------------------------------------
    def _run_worker(self) -> None:
        while not self._stop.is_set():
            try:
                items = [self.queue.get(timeout=0.2)]
            except queue.Empty:
                continue
            while len(items) < BATCH_ITEMS:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._process(items)
            except Exception:  # a detector bug must not stop monitoring of every model
                log.exception("drift worker failed on a batch of %d items", len(items))
            self.processed += len(items)

    def _process(self, items: list[tuple]) -> None:
        # Micro-batch: one DataFrame and one encoding per monitor for the whole batch, then the
        # detectors step through the rows (alibi-detect's online detectors take one at a time).
        batches: dict[int, list] = {}
        for item in items:
            kind, mon = item[0], item[1]
            b = batches.setdefault(id(mon), [mon, [], [], [], [], []])
            if kind == "observe":
                b[1].extend(item[2])
                b[2].extend(item[3])
            else:
                b[3].extend(item[2])
                b[4].extend(item[3])
                b[5].extend(item[4])
        for mon, instances, scores, labels, fb_scores, preds in batches.values():
            if instances:
                mon.observe(instances, scores)
            correct = incorrect = 0
            if labels:
                mon.feedback(labels, fb_scores, preds)
                incorrect = sum(int(p != y) for p, y in zip(preds, labels, strict=True))
                correct = len(labels) - incorrect
            if self.monitors.get((mon.model, mon.version)) is mon:  # not replaced by a newer watch
                self.metrics.publish(mon, len(instances), correct, incorrect)

    def wait_idle(self, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while self.processed < self.enqueued and time.monotonic() < deadline:
            time.sleep(0.01)
        return self.processed >= self.enqueued

    def status(self) -> dict[str, Any]:
        return {
            "watched": [m.snapshot() for m in list(self.monitors.values())],
            "pending_requests": len(self.pending),
            "backlog": self.enqueued - self.processed,
            "processed": self.processed,
        }

    def stop(self) -> None:
        self._stop.set()


def _lifespan(svc: DriftService):  # noqa: ANN202
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):  # noqa: ANN202
        yield
        svc.stop()

    return lifespan


def create_app(settings: ServiceSettings) -> Starlette:
    svc = DriftService(settings)

    async def events(request: Request) -> Response:
        body = await request.body()
        try:
            return JSONResponse(svc.handle_event(dict(request.headers), body), status_code=202)
        except EventRejected as exc:
            return svc.reject(exc)

    async def feedback(request: Request) -> Response:
        try:
            return JSONResponse(svc.handle_feedback(await request.body()), status_code=202)
        except EventRejected as exc:
            return svc.reject(exc)

    async def watch(request: Request) -> Response:
        try:
            body = json.loads(await request.body())
        except json.JSONDecodeError as exc:
            return JSONResponse({"error": f"watch body is not JSON: {exc}"}, status_code=400)
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("model"), str)
            or not body.get("version")
        ):
            return JSONResponse(
                {"error": "watch needs string 'model' and 'version'"}, status_code=422
            )
        try:
            mon = await run_in_threadpool(
                svc.watch,
                body["model"],
                str(body["version"]),
                body.get("registry_uri"),
                body.get("detectors"),
            )
        except DriftConfigError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        except ReferenceError as exc:
            return JSONResponse({"error": str(exc)}, status_code=422)
        except RegistryError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        except Exception as exc:
            log.exception("watching %s/%s failed", body["model"], body["version"])
            return JSONResponse({"error": f"detector set-up failed: {exc}"}, status_code=500)
        return JSONResponse(mon.snapshot())

    async def status(request: Request) -> Response:
        if request.query_params.get("wait") == "idle":
            await run_in_threadpool(svc.wait_idle, float(request.query_params.get("timeout", "30")))
        return JSONResponse(svc.status())

    async def report(request: Request) -> Response:
        key = (request.query_params.get("model", ""), request.query_params.get("version", ""))
        mon = svc.monitors.get(key)
        if mon is None:
            return JSONResponse({"error": f"{key[0]}/{key[1]} is not watched"}, status_code=404)
        await run_in_threadpool(svc.wait_idle)
        try:
            return JSONResponse(await run_in_threadpool(mon.report))
        except ValueError as exc:
            return JSONResponse({"error": str(exc)}, status_code=409)

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(svc.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        ok = svc._worker.is_alive()  # noqa: SLF001
        return JSONResponse({"ok": ok}, status_code=200 if ok else 503)

    app = Starlette(
        routes=[
            Route("/", events, methods=["POST"]),
            Route("/v1/feedback", feedback, methods=["POST"]),
            Route("/v1/watch", watch, methods=["POST"]),
            Route("/v1/status", status, methods=["GET"]),
            Route("/v1/report", report, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", healthz, methods=["GET"]),
        ],
        lifespan=_lifespan(svc),
    )
    app.state.service = svc
    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="kubeloop.monitoring.service", description=__doc__.splitlines()[0]
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
