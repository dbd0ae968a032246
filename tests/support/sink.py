"""Minimal CloudEvents receivers on 127.0.0.1 (for tests, the bench and local debugging).

:class:`EventSink` records each POST's ``Ce-*`` headers and body, can answer slowly to
simulate a struggling drift service, and stops cleanly. ``python -m
tests.support.sink`` only counts and answers (asyncio, pipelined): the benchmark's
receiver, which must not take CPU from the load generator.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from kubeloop.serving.payload import CONTENT_LENGTH


@dataclass
class ReceivedEvent:
    headers: dict[str, str]
    body: bytes


class EventSink:
    def __init__(self, delay_s: float = 0.0, keep: bool = True, port: int = 0) -> None:
        self.events: list[ReceivedEvent] = []
        self.count = 0
        self.delay_s = delay_s
        self.keep = keep
        self._lock = threading.Lock()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if sink.delay_s:
                    time.sleep(sink.delay_s)
                with sink._lock:
                    sink.count += 1
                    if sink.keep:
                        sink.events.append(
                            ReceivedEvent({k.lower(): v for k, v in self.headers.items()}, body)
                        )
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EventSink:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def by_id(self, request_id: str) -> list[ReceivedEvent]:
        with self._lock:
            return [e for e in self.events if e.headers.get("ce-id") == request_id]


_OK = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"


class _CountingProtocol(asyncio.Protocol):
    """Answers pipelined POSTs (with Content-Length) 200 in one write per read: a receiver
    cheap enough not to steal CPU from the load generator it shares a core with."""

    def __init__(self, counter: list[int], delay_s: float) -> None:
        self.counter = counter
        self.delay_s = delay_s
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buffer, answered = self.buffer + data, 0
        while (end := buffer.find(b"\r\n\r\n")) >= 0:
            match = CONTENT_LENGTH.search(buffer, 0, end + 2)
            total = end + 4 + (int(match.group(1)) if match else 0)
            if len(buffer) < total:
                break
            buffer, answered = buffer[total:], answered + 1
        self.buffer = buffer
        if answered:
            self.counter[0] += answered
            if self.delay_s:
                asyncio.get_running_loop().call_later(self.delay_s, self._answer, answered)
            else:
                self._answer(answered)

    def _answer(self, n: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_OK * n)


async def serve_counting(port: int, delay_s: float = 0.0) -> None:
    """Counts events on 127.0.0.1:``port`` until cancelled (the bench's receiver)."""
    counter = [0]
    server = await asyncio.get_running_loop().create_server(
        lambda: _CountingProtocol(counter, delay_s), "127.0.0.1", port
    )
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """``python -m tests.support.sink --port N``: count events until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m tests.support.sink", description="a CloudEvents receiver"
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_counting(args.port, args.delay))


if __name__ == "__main__":
    main()
