"""Payload logging in the KServe logger's CloudEvents format, off the request path.

Each request/response pair becomes two binary-mode CloudEvents sharing ``Ce-Id`` (the
request id), with the same ``Ce-*`` headers the KServe agent sends
(``Ce-Inferenceservicename``, ``Ce-Namespace``, ``Ce-Component``, ``Ce-Endpoint``) plus
kubeloop's ``Ce-Modelversion``. ``log()`` only appends the raw objects to a bounded
queue; a background task drains it in batches, JSON-encodes them and POSTs them
pipelined over a few keep-alive connections with a short timeout. When the queue is
full or the receiver is slow or down, events are dropped and counted, never waited on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
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


def event_headers(ctx: EventContext, request_id: str, event_type: str, at: str) -> dict[str, str]:
    return {
        "Ce-Specversion": "1.0",
        "Ce-Id": request_id,
        "Ce-Type": event_type,
        "Ce-Source": ctx.source,
        "Ce-Time": at,
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
    at: str | None = None,
) -> list[tuple[dict[str, str], bytes]]:
    """The request and response events of one inference, as (headers, body) pairs."""
    at = at or datetime.now(UTC).isoformat()
    return [
        (event_headers(ctx, request_id, REQUEST_TYPE, at), orjson.dumps(request_body)),
        (event_headers(ctx, request_id, RESPONSE_TYPE, at), orjson.dumps(response_body)),
    ]


class _PipelinedPoster:
    """POSTs many small bodies over a few keep-alive HTTP/1.1 connections, pipelined.

    Payload events are tiny and numerous; a general-purpose client spends more CPU per
    request than the model itself, on the predictor's own event loop. Writing a batch of
    requests back to back and then reading the answers in order keeps the cost per event
    to a few microseconds: the fixed part of each event's head (request line, ``Host``
    and the ``Ce-*`` headers of its model, version and type) is encoded once.
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
        self._heads: dict[tuple[EventContext, str], bytes] = {}

    def _head(self, ctx: EventContext, event_type: str) -> bytes:
        key = (ctx, event_type)
        head = self._heads.get(key)
        if head is None:
            headers = event_headers(ctx, "", event_type, "")
            del headers["Ce-Id"], headers["Ce-Time"]
            lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host_header}"]
            lines += [f"{k}: {v}" for k, v in headers.items()]
            head = self._heads[key] = ("\r\n".join(lines) + "\r\n").encode("latin-1")
        return head

    def encode(
        self, ctx: EventContext, event_type: str, request_id: bytes, at: bytes, body: bytes
    ) -> bytes:
        """One event as HTTP/1.1 request bytes."""
        return b"%sCe-Id: %s\r\nCe-Time: %s\r\nContent-Length: %d\r\n\r\n%s" % (
            self._head(ctx, event_type),
            request_id,
            at,
            len(body),
            body,
        )

    async def post_many(self, requests: list[bytes], settle_s: float = 0.0) -> int:
        """Sends encoded requests on one connection; returns how many got a 2xx.

        With ``settle_s``, reading pauses that long after the write: the answers gather
        in the socket buffer and are read in one go instead of waking the event loop once
        per answer, which would cost the serving process more than the events themselves.
        """
        ok = 0
        conn = None
        try:
            async with asyncio.timeout(self.timeout_s):
                conn = (
                    self._idle.pop()
                    if self._idle
                    else await asyncio.open_connection(self.host, self.port, ssl=self.ssl or None)
                )
                reader, writer = conn
                writer.write(b"".join(requests))
                await writer.drain()
                if settle_s:
                    writer.transport.pause_reading()
                    try:
                        await asyncio.sleep(settle_s)
                    finally:
                        writer.transport.resume_reading()
                for _ in range(len(requests)):
                    success, keep = await _read_response(reader)
                    ok += success
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


_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:[ \t]*chunked", re.IGNORECASE)
_CLOSE = re.compile(rb"\r\nconnection:[ \t]*close", re.IGNORECASE)


async def _read_response(reader: asyncio.StreamReader) -> tuple[bool, bool]:
    """Reads one response; returns (2xx, connection reusable)."""
    head = await reader.readuntil(b"\r\n\r\n")
    try:
        status = int(head[9:12])
    except ValueError:
        raise ValueError(f"not an HTTP/1.x status line: {head[:40]!r}") from None
    ok = 200 <= status < 300
    if (length := _CONTENT_LENGTH.search(head)) is not None:
        if n := int(length.group(1)):
            await reader.readexactly(n)
    elif _CHUNKED.search(head):
        while True:
            size = int((await reader.readline()).split(b";")[0].strip() or b"0", 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif status not in (204, 304) and not 100 <= status < 200:
        return ok, False  # body runs to connection close
    return ok, _CLOSE.search(head) is None


class PayloadLogger:
    """Sends event pairs to ``url`` from a bounded queue; never blocks the caller.

    ``log()`` only queues the objects (no encoding on the request path). The sender task
    waits up to ``linger_s`` for a batch to fill, so at low request rates a batch still
    carries several pairs, then encodes them (orjson), posts them pipelined and reads the
    answers ``settle_s`` later in one go. Events reach the receiver within tens of
    milliseconds, which drift detection does not notice; the serving process saves the
    event-loop wake-ups that small batches would cost on every request.
    """

    def __init__(
        self,
        url: str,
        *,
        queue_size: int = 2048,
        batch_size: int = 128,
        timeout_s: float = 2.0,
        connections: int = 4,
        linger_s: float = 0.02,
        settle_s: float = 0.005,
    ) -> None:
        self.url = url
        self.queue_size = queue_size
        self.batch_size = batch_size
        self.connections = connections
        self.linger_s = linger_s
        self.settle_s = settle_s
        self._poster = _PipelinedPoster(url, timeout_s)
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._in_flight = 0
        self._counters: dict[tuple[str, str, str], Any] = {}

    def _count(self, ctx: EventContext, outcome: str, n: int) -> None:
        key = (ctx.model, ctx.version, outcome)
        counter = self._counters.get(key)
        if counter is None:
            counter = self._counters[key] = PAYLOAD_EVENTS.labels(*key)
        counter.inc(n)

    def log(
        self, ctx: EventContext, request_id: str, request_body: Any, response_body: Any
    ) -> None:
        """Queues one request/response pair; drops it (counted) when the queue is full."""
        if self._queue is None:
            self._queue = asyncio.Queue(self.queue_size)
            self._task = asyncio.get_running_loop().create_task(self._run())
        try:
            self._queue.put_nowait((ctx, request_id, request_body, response_body, time.time()))
        except asyncio.QueueFull:
            self._count(ctx, "dropped", 2)

    async def _run(self) -> None:
        queue = self._queue
        while True:
            batch = [await queue.get()]
            if queue.qsize() < self.batch_size and self.linger_s:
                await asyncio.sleep(self.linger_s)
            while len(batch) < self.batch_size and not queue.empty():
                batch.append(queue.get_nowait())
            self._in_flight = len(batch)
            # Large batches are split over a few connections, each share sent pipelined.
            n_shares = min(self.connections, 1 + len(batch) // 64)
            if n_shares == 1:
                await self._send(batch)
            else:
                await asyncio.gather(*(self._send(batch[i::n_shares]) for i in range(n_shares)))
            self._in_flight = 0

    async def _send(self, items: list) -> None:
        encode = self._poster.encode
        requests = []
        for ctx, request_id, request_body, response_body, at in items:
            rid = request_id.encode("latin-1", "replace")
            if b"\r" in rid or b"\n" in rid:  # never let an id end the header block
                rid = rid.replace(b"\r", b" ").replace(b"\n", b" ")
            stamp = datetime.fromtimestamp(at, UTC).isoformat().encode()
            requests.append(encode(ctx, REQUEST_TYPE, rid, stamp, orjson.dumps(request_body)))
            requests.append(encode(ctx, RESPONSE_TYPE, rid, stamp, orjson.dumps(response_body)))
        sent = await self._poster.post_many(requests, self.settle_s)
        ctx = items[0][0]
        if all(item[0] == ctx for item in items):
            if sent:
                self._count(ctx, "sent", sent)
            if len(requests) - sent:
                self._count(ctx, "dropped", len(requests) - sent)
        else:  # one process logs for several versions (the router): attribute per pair
            results = iter([True] * sent + [False] * (len(requests) - sent))
            for item in items:
                for _ in range(2):
                    self._count(item[0], "sent" if next(results) else "dropped", 1)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Waits (bounded) until every queued pair is sent or dropped; for shutdown and tests."""
        if self._queue is None:
            return
        deadline = asyncio.get_running_loop().time() + timeout_s
        while (not self._queue.empty() or self._in_flight) and (
            asyncio.get_running_loop().time() < deadline
        ):
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None
        self._queue = None
        self._poster.close()
