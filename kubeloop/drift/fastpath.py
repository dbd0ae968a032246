"""The drift service's hot path: ``POST /`` (payload events) as plain ASGI."""

from __future__ import annotations

import json
from typing import Any

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
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = b"".join(chunks)
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
