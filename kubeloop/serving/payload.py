"""Payload logging in the KServe logger's CloudEvents format, off the request path.

Each request/response pair becomes two binary-mode CloudEvents sharing ``Ce-Id`` (the
request id), with the same ``Ce-*`` headers the KServe agent sends
(``Ce-Inferenceservicename``, ``Ce-Namespace``, ``Ce-Component``, ``Ce-Endpoint``) plus
kubeloop's ``Ce-Modelversion``. ``log()`` only appends to a bounded queue; a background
task drains it in batches and POSTs them pipelined over a few keep-alive connections
with a short timeout. When the queue
is full or the receiver is slow or down, events are dropped and counted, never waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

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


class _PipelinedPoster:
    """POSTs many small bodies over a few keep-alive HTTP/1.1 connections, pipelined.

    Payload events are tiny and numerous; a general-purpose client spends more CPU per
    request than the model itself, on the predictor's own event loop. Writing a batch of
    requests back to back and then reading the answers in order keeps the cost per event
    to a few tens of microseconds.
    """

    def __init__(self, url: str, timeout_s: float) -> None:
        parsed = urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"logger URL must be http(s)://host[:port]/path, got {url!r}")
        self.host = parsed.hostname
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        self.ssl = parsed.scheme == "https"
        self.path = (parsed.path or "/") + (f"?{parsed.query}" if parsed.query else "")
        self.host_header = parsed.netloc
        self.timeout_s = timeout_s
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    def _request(self, headers: dict[str, str], body: bytes) -> bytes:
        lines = [
            f"POST {self.path} HTTP/1.1",
            f"Host: {self.host_header}",
            f"Content-Length: {len(body)}",
        ]
        lines += [f"{k}: {v}" for k, v in headers.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body

    async def post_many(self, requests: list[tuple[dict[str, str], bytes]]) -> list[bool]:
        """Sends every request on one connection; returns which got a 2xx."""
        ok = [False] * len(requests)
        conn = None
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = (
                    self._idle.pop()
                    if self._idle
                    else await asyncio.open_connection(self.host, self.port, ssl=self.ssl or None)
                )
                reader, writer = conn
                writer.write(b"".join(self._request(h, b) for h, b in requests))
                await writer.drain()
                for i in range(len(requests)):
                    ok[i], keep = await _read_response(reader)
                    if not keep:
                        raise ConnectionResetError("receiver closed the connection")
            self._idle.append(conn)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as exc:
            log.debug("payload events to %s:%s failed: %r", self.host, self.port, exc)
            if conn is not None:
                conn[1].close()
        return ok

    def close(self) -> None:
        for _, writer in self._idle:
            writer.close()
        self._idle.clear()


async def _read_response(reader: asyncio.StreamReader) -> tuple[bool, bool]:
    """Reads one response; returns (2xx, connection reusable)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip().lower()
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding") == "chunked":
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif status not in (204, 304) and not 100 <= status < 200:
        return 200 <= status < 300, False  # body runs to connection close
    return 200 <= status < 300, headers.get("connection") != "close"


class PayloadLogger:
    """Sends event pairs to ``url`` from a bounded queue; never blocks the caller."""

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 2048,
        batch_size: int = 64,
        timeout_s: float = 2.0,
        connections: int = 4,
    ) -> None:
        self.url = url
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.connections = connections
        self._poster = _PipelinedPoster(url, timeout_s)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

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
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.batch_size and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            # Split the batch over a few connections; each sends its share pipelined.
            shares = [
                batch[i :: self.connections] for i in range(min(self.connections, len(batch)))
            ]
            await asyncio.gather(*(self._send(share) for share in shares))

    async def _send(self, items: list) -> None:
        requests, owners = [], []
        for ctx, request_id, request_body, response_body, time in items:
            for event in build_events(ctx, request_id, request_body, response_body, time):
                requests.append(event)
                owners.append(ctx)
        results = await self._poster.post_many(requests)
        counts: dict[tuple[str, str, str], int] = {}
        for ctx, ok in zip(owners, results, strict=True):
            key = (ctx.model, ctx.version, "sent" if ok else "dropped")
            counts[key] = counts.get(key, 0) + 1
        for labels, n in counts.items():
            PAYLOAD_EVENTS.labels(*labels).inc(n)

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
        self._poster.close()
