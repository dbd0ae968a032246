"""Payload logging in the KServe logger's CloudEvents format, off the request path.

Each request/response pair becomes two binary-mode CloudEvents sharing ``Ce-Id`` (the
request id), with the same ``Ce-*`` headers the KServe agent sends
(``Ce-Inferenceservicename``, ``Ce-Namespace``, ``Ce-Component``, ``Ce-Endpoint``) plus
kubeloop's ``Ce-Modelversion``. ``log()`` only appends to a bounded queue; a background
task drains it in batches and POSTs concurrently with a short timeout. When the queue
is full or the receiver is slow or down, events are dropped and counted, never waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from kubeloop.serving.metrics import PAYLOAD_EVENTS

log = logging.getLogger(__name__)

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"


@dataclass(frozen=True)
class EventContext:
    """Who produced an event pair: the fixed ``Ce-*`` extension headers."""

    model: str
    version: str
    endpoint: str = "default"  # KServe's `endpoint` attribute: default or canary
    namespace: str = "default"
    component: str = "predictor"
    source: str = "http://localhost/kubeloop"


def event_headers(ctx: EventContext, request_id: str, event_type: str, time: str) -> dict[str, str]:
    return {
        "Ce-Specversion": "1.0",
        "Ce-Id": request_id,
        "Ce-Type": event_type,
        "Ce-Source": ctx.source,
        "Ce-Time": time,
        "Ce-Inferenceservicename": ctx.model,
        "Ce-Namespace": ctx.namespace,
        "Ce-Component": ctx.component,
        "Ce-Endpoint": ctx.endpoint,
        "Ce-Modelversion": ctx.version,
        "Content-Type": "application/json",
    }


def build_events(
    ctx: EventContext,
    request_id: str,
    request_body: Any,
    response_body: Any,
    time: str | None = None,
) -> list[tuple[dict[str, str], bytes]]:
    """The request and response events of one inference, as (headers, body) pairs."""
    time = time or datetime.now(UTC).isoformat()
    return [
        (event_headers(ctx, request_id, REQUEST_TYPE, time), orjson.dumps(request_body)),
        (event_headers(ctx, request_id, RESPONSE_TYPE, time), orjson.dumps(response_body)),
    ]


class PayloadLogger:
    """Sends event pairs to ``url`` from a bounded queue; never blocks the caller."""

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 2048,
        batch_size: int = 64,
        timeout_s: float = 2.0,
        concurrency: int = 16,
    ) -> None:
        self.url = url
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.timeout_s = timeout_s
        self.concurrency = concurrency
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._session = None

    def log(
        self, ctx: EventContext, request_id: str, request_body: Any, response_body: Any
    ) -> None:
        """Queues one request/response pair; drops it (counted) when the queue is full."""
        if self._queue is None:
            self._queue = asyncio.Queue(self.queue_size)
            self._task = asyncio.get_running_loop().create_task(self._run())
        item = (ctx, request_id, request_body, response_body, datetime.now(UTC).isoformat())
        try:
            self._queue.put_nowait(item)
        except asyncio.QueueFull:
            PAYLOAD_EVENTS.labels(ctx.model, ctx.version, "dropped").inc(2)

    async def _run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        connector = aiohttp.TCPConnector(limit=self.concurrency)
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self._session = session
            while True:
                batch = [await self._queue.get()]
                while len(batch) < self.batch_size and not self._queue.empty():
                    batch.append(self._queue.get_nowait())
                await asyncio.gather(*(self._send_pair(session, item) for item in batch))

    async def _send_pair(self, session, item) -> None:
        ctx, request_id, request_body, response_body, time = item
        for headers, body in build_events(ctx, request_id, request_body, response_body, time):
            ok = False
            try:
                async with session.post(self.url, data=body, headers=headers) as resp:
                    await resp.read()
                    ok = resp.status < 300
            except Exception as exc:  # noqa: BLE001 - any failure is a drop, never an inference error
                log.debug("payload event to %s failed: %s", self.url, exc)
            PAYLOAD_EVENTS.labels(ctx.model, ctx.version, "sent" if ok else "dropped").inc()

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Waits (bounded) until the queue is empty; for shutdown and tests."""
        if self._queue is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._queue.empty() and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None
        self._queue = None
