"""The drift service's ASGI edge: the cap on request bodies (:class:`BodyLimit`) and the
hot path, ``POST /`` (payload events), as plain ASGI."""

from __future__ import annotations

import json
from typing import Any

from kubeloop.bodies import BodyTooLarge, declared_length, read_body
from kubeloop.contracts.payload_events import WORKER_DOWN
from kubeloop.drift.events import EventRejected
from kubeloop.drift.versions import LookUp
from kubeloop.drift.worker import WorkerDown


class PayloadEventsFastPath:
    """ASGI middleware answering ``POST /`` (payload events) without Starlette's routing,
    ``Request`` and ``JSONResponse`` objects: the logger posts two events per prediction,
    so this path is the service's hot loop. Same handler, same answers as the route."""

    def __init__(self, app: Any, service: Any) -> None:
        self.app, self.service = app, service

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/" or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = await read_body(receive)  # already capped by BodyLimit, outside
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            try:
                status, payload = 202, self.service.handle_event(headers, body)
            except LookUp as new:  # a version's first event: the registry is asked once
                await self.service.look_up(new.key)
                status, payload = 202, self.service.handle_event(headers, body, look_up=False)
        except EventRejected as exc:
            self.service.metrics.rejected.labels(reason=exc.reason).inc()
            status, payload = exc.status, {"error": str(exc), "reason": exc.reason}
        except WorkerDown as exc:
            status, payload = 503, {"error": str(exc), "reason": WORKER_DOWN}
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})


class BodyLimit:
    """ASGI middleware capping every request body at ``limit`` bytes, declared
    (``Content-Length``) or streamed: over it is a 413 ``{"error", "reason":
    "payload_too_large"}`` with ``Connection: close``, before the rest is read, counted
    by ``on_reject``. Outermost: it reads the body and hands it on whole."""

    def __init__(self, app: Any, limit: int, on_reject: Any) -> None:
        self.app, self.limit, self.on_reject = app, limit, on_reject

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = declared_length(scope)
        try:
            if declared is not None and declared > self.limit:
                raise BodyTooLarge(declared)
            body = await read_body(receive, self.limit)
        except BodyTooLarge:
            await self._refuse(send)
            return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        self.on_reject("payload_too_large")
        body = json.dumps(
            {"error": f"request body is larger than {self.limit} bytes",
             "reason": "payload_too_large"}
        ).encode()  # fmt: skip
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})  # fmt: skip
        await send({"type": "http.response.body", "body": body})
