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
import collections
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import httptools
import orjson

from kubeloop.contracts.payload_events import (
    CE_COMPONENT,
    CE_ENDPOINT,
    CE_ID,
    CE_INFERENCE_SERVICE,
    CE_MODEL_VERSION,
    CE_NAMESPACE,
    CE_SOURCE,
    CE_SPECVERSION,
    CE_TIME,
    CE_TYPE,
    COMPONENT_PREDICTOR,
    CONTENT_TYPE,
    DEFAULT_ENDPOINT,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    SPEC_VERSION,
)
from kubeloop.serving.metrics import PAYLOAD_EVENTS

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EventContext:
    """Who produced an event pair: the fixed ``Ce-*`` extension headers."""

    model: str
    version: str
    endpoint: str = DEFAULT_ENDPOINT  # KServe's `endpoint` attribute: default or canary
    namespace: str = "default"
    component: str = COMPONENT_PREDICTOR
    source: str = "http://localhost/kubeloop"


def event_headers(ctx: EventContext, request_id: str, event_type: str, at: str) -> dict[str, str]:
    return {
        CE_SPECVERSION: SPEC_VERSION,
        CE_ID: request_id,
        CE_TYPE: event_type,
        CE_SOURCE: ctx.source,
        CE_TIME: at,
        CE_INFERENCE_SERVICE: ctx.model,
        CE_NAMESPACE: ctx.namespace,
        CE_COMPONENT: ctx.component,
        CE_ENDPOINT: ctx.endpoint,
        CE_MODEL_VERSION: ctx.version,
        "Content-Type": CONTENT_TYPE,
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


# The Content-Length header inside an HTTP/1.x head: how the test receivers frame the
# pipelined requests this module writes.
CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
# One event's head after its fixed part: the per-pair Ce-Id and Ce-Time, then the body.
_EVENT = b"%%s%s: %%s\r\n%s: %%s\r\nContent-Length: %%d\r\n\r\n%%s" % (
    CE_ID.encode(),
    CE_TIME.encode(),
)
_PAIR = _EVENT * 2


class ResponseCounter:
    """Counts the final answers in a stream of pipelined HTTP/1.x responses.

    Bytes are fed as the socket delivers them, split anywhere. httptools' incremental
    parser (llhttp) frames each response (Content-Length; chunked, with trailers; no body
    after 1xx, 204 and 304) and calls back when one is complete. ``answers`` counts the
    final responses, ``ok`` the 2xx among them; interim (1xx) responses are not answers.
    ``closing`` turns true once the connection is over for this stream: an answer ended
    it (``Connection: close``, HTTP/1.0 without keep-alive) or bytes were not HTTP;
    nothing after that is parsed. An answer whose body runs to the close (neither a
    length nor chunked) completes at :meth:`eof`.
    """

    def __init__(self) -> None:
        self.answers = 0
        self.ok = 0
        self.closing = False
        self._status = 0  # the status of a response whose head arrived and body has not ended
        self._parser = httptools.HttpResponseParser(self)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Counts the answers ``data`` completes; ``ValueError`` if it is not HTTP/1.x."""
        if self.closing:
            return
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            # HttpParserUpgrade (a 101) is not an HttpParserError; bytes after an answer
            # that ended the connection ("Data after `Connection: close`") are not news.
            if not self.closing:
                self.closing = True
                raise ValueError(f"not an HTTP/1.x response ({exc})") from None

    def eof(self) -> None:
        """The peer closed the connection: an answer that ran to the close is complete.

        That is an answer whose head arrived and said the connection ends with it; its
        status counts even when the close cut its body short: the receiver did answer.
        """
        if self._status and not self.closing and not self._parser.should_keep_alive():
            self._count(self._status)
        self._status = 0
        self.closing = True

    def on_headers_complete(self) -> None:  # httptools callback
        self._status = self._parser.get_status_code()

    def on_message_complete(self) -> None:  # httptools callback
        status, self._status = self._status, 0
        if status >= 200:
            self._count(status)
            if not self._parser.should_keep_alive():
                self.closing = True

    def _count(self, status: int) -> None:
        self.answers += 1
        if status < 300:
            self.ok += 1


class _Connection(asyncio.Protocol):
    """One keep-alive connection to the receiver; counts the answers to a written batch.

    Answers are counted in ``data_received`` straight from the socket's bytes, with no
    stream reader or coroutine per answer. Bytes that are not HTTP, or more answers than
    requests, mean a receiver out of step: the connection is closed, and the events
    still owed are not counted as sent.
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.counter = ResponseCounter()
        self.owed = 0
        self.ok = 0
        self.reusable = True
        self.waiter: asyncio.Future | None = None
        self._asked = 0
        self._before = (0, 0)  # the counter's (answers, ok) when the batch was written

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.owed <= 0 and data:  # bytes nobody asked for: not a receiver to keep
            self._finish(reusable=False)
            return
        try:
            self.counter.feed(data)
        except ValueError as exc:
            log.debug("payload receiver answered with %s", exc)
        self._tally()

    def connection_lost(self, exc) -> None:
        self.counter.eof()
        self._tally()
        self._finish(reusable=False)

    def _tally(self) -> None:
        counter = self.counter
        answers, ok = self._before
        answers, ok = counter.answers - answers, counter.ok - ok
        self.owed, self.ok = self._asked - answers, min(ok, self._asked)
        if counter.closing or self.owed < 0:
            self.owed = max(self.owed, 0)
            self._finish(reusable=False)
        elif not self.owed:
            self._finish(reusable=True)

    def expect(self, n: int) -> None:
        """Starts counting the answers to a batch of ``n`` requests."""
        self._asked = self.owed = n
        self.ok = 0
        self._before = (self.counter.answers, self.counter.ok)

    def _finish(self, reusable: bool) -> None:
        if not reusable:
            self.reusable = False
            if self.transport is not None:
                self.transport.close()
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def exchange(self, data: bytes, n: int, settle_s: float) -> None:
        """Writes ``n`` requests and waits until all are answered or the connection ends.

        With ``settle_s``, reading pauses that long after the write: the answers gather
        in the socket buffer and arrive in one callback instead of one per answer.
        """
        self.expect(n)
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        if settle_s:
            self.transport.pause_reading()
            try:
                await asyncio.sleep(settle_s)
            finally:
                if not self.transport.is_closing():
                    self.transport.resume_reading()
        if self.owed and self.reusable:
            await self.waiter


class _PipelinedPoster:
    """POSTs many small bodies over a few keep-alive HTTP/1.1 connections, pipelined.

    Payload events are tiny and numerous; a general-purpose client spends more CPU per
    request than the model itself, on the predictor's own event loop. Writing a batch of
    requests back to back and counting the answers as the socket delivers them keeps the
    cost per event to a few microseconds: the fixed part of each event's head (request
    line, ``Host`` and the ``Ce-*`` headers of its model, version and type) is encoded
    once, and both events of a pair are formatted in one operation.
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
        self._idle: list[_Connection] = []
        self._heads: dict[EventContext, tuple[bytes, bytes]] = {}
        self._last: tuple[EventContext | None, tuple[bytes, bytes]] = (None, (b"", b""))
        self._second = -1
        self._second_text = b""

    def heads(self, ctx: EventContext) -> tuple[bytes, bytes]:
        """The fixed heads of a pair's request and response events."""
        last, heads = self._last
        if ctx is last:
            return heads
        heads = self._heads.get(ctx)
        if heads is None:
            encoded = []
            for event_type in (REQUEST_TYPE, RESPONSE_TYPE):
                headers = event_headers(ctx, "", event_type, "")
                del headers[CE_ID], headers[CE_TIME]
                lines = [f"POST {self.path} HTTP/1.1", f"Host: {self.host_header}"]
                lines += [f"{k}: {v}" for k, v in headers.items()]
                encoded.append(("\r\n".join(lines) + "\r\n").encode("latin-1"))
            heads = self._heads[ctx] = (encoded[0], encoded[1])
        self._last = (ctx, heads)
        return heads

    def stamp(self, at: float) -> bytes:
        """``at`` (epoch seconds) as RFC 3339 UTC with microseconds."""
        second = int(at)
        if second != self._second:  # the date and time of day, formatted once a second
            self._second = second
            text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            self._second_text = text.encode()
        return b"%s.%06d+00:00" % (self._second_text, int((at - second) * 1e6))

    def encode_pair(
        self, ctx: EventContext, request_id: bytes, at: bytes, request: bytes, response: bytes
    ) -> bytes:
        """A pair's request and response events as HTTP/1.1 request bytes."""
        req_head, resp_head = self.heads(ctx)
        return _PAIR % (
            req_head, request_id, at, len(request), request,
            resp_head, request_id, at, len(response), response,
        )  # fmt: skip

    async def post_many(self, data: bytes, n: int, settle_s: float = 0.0) -> int:
        """Sends ``n`` encoded requests on one connection; returns how many got a 2xx."""
        conn = None
        try:
            async with asyncio.timeout(self.timeout_s):
                while self._idle and conn is None:
                    conn = self._idle.pop()
                    if not conn.reusable or conn.transport.is_closing():
                        conn = None  # the receiver closed it while idle
                if conn is None:
                    _, conn = await asyncio.get_running_loop().create_connection(
                        _Connection, self.host, self.port, ssl=self.ssl or None
                    )
                await conn.exchange(data, n, settle_s)
        except (OSError, TimeoutError) as exc:
            log.debug("payload events to %s:%s failed: %r", self.host, self.port, exc)
            if conn is not None:
                conn._finish(reusable=False)
        if conn is None:
            return 0
        if conn.reusable and not conn.owed:
            self._idle.append(conn)
        else:
            conn._finish(reusable=False)
        return conn.ok

    def close(self) -> None:
        for conn in self._idle:
            conn.transport.close()
        self._idle.clear()


class PayloadLogger:
    """Sends event pairs to ``url`` from a bounded queue; never blocks the caller.

    ``log()`` only appends the objects to a bounded deque (no encoding on the request
    path). The sender task waits up to ``linger_s`` for a batch to fill, so at low
    request rates a batch still carries several pairs, then encodes them (orjson), posts
    them pipelined and counts the answers ``settle_s`` later in one go. Events reach the
    receiver within tens of milliseconds, which drift detection does not notice; the
    serving process saves the event-loop wake-ups that small batches would cost on every
    request.
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
        self._pending: collections.deque = collections.deque()
        self._wakeup: asyncio.Future | None = None
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
        pending = self._pending
        if len(pending) >= self.queue_size:
            self._count(ctx, "dropped", 2)
            return
        pending.append((ctx, request_id, request_body, response_body, time.time()))
        if self._wakeup is not None:
            if not self._wakeup.done():
                self._wakeup.set_result(None)
            self._wakeup = None
        elif self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        pending, loop = self._pending, asyncio.get_running_loop()
        while True:
            if not pending:
                self._wakeup = loop.create_future()
                await self._wakeup
            if len(pending) < self.batch_size and self.linger_s:
                await asyncio.sleep(self.linger_s)
            batch = [pending.popleft() for _ in range(min(self.batch_size, len(pending)))]
            if not batch:
                continue
            self._in_flight = len(batch)
            # Large batches are split over a few connections, each share sent pipelined.
            n_shares = min(self.connections, 1 + len(batch) // 64)
            if n_shares == 1:
                await self._send(batch)
            else:
                await asyncio.gather(*(self._send(batch[i::n_shares]) for i in range(n_shares)))
            self._in_flight = 0

    async def _send(self, items: list) -> None:
        poster = self._poster
        encode, stamp, dumps = poster.encode_pair, poster.stamp, orjson.dumps
        pairs = []
        for ctx, request_id, request_body, response_body, at in items:
            rid = request_id.encode("latin-1", "replace")
            if b"\r" in rid or b"\n" in rid:  # never let an id end the header block
                rid = rid.replace(b"\r", b" ").replace(b"\n", b" ")
            pairs.append(encode(ctx, rid, stamp(at), dumps(request_body), dumps(response_body)))
        n = 2 * len(items)
        sent = await poster.post_many(b"".join(pairs), n, self.settle_s)
        ctx = items[0][0]
        if all(item[0] == ctx for item in items):
            if sent:
                self._count(ctx, "sent", sent)
            if n - sent:
                self._count(ctx, "dropped", n - sent)
        else:  # one process logs for several versions (the router): attribute per pair
            results = iter([True] * sent + [False] * (n - sent))
            for item in items:
                for _ in range(2):
                    self._count(item[0], "sent" if next(results) else "dropped", 1)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Waits (bounded) until every queued pair is sent or dropped; for shutdown and tests."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (self._pending or self._in_flight) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._task = None
        self._wakeup = None
        self._pending.clear()
        self._poster.close()
