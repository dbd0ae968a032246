"""A minimal CloudEvents receiver on 127.0.0.1 (for tests, the bench and local debugging).

It records each POST's ``Ce-*`` headers and body, can answer slowly to simulate a
struggling drift service, and stops cleanly.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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


def main(argv: list[str] | None = None) -> None:
    """``python -m kubeloop.serving.sink --port N``: count events until interrupted."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m kubeloop.serving.sink", description="a CloudEvents receiver"
    )
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds to wait before answering")
    args = parser.parse_args(argv)
    sink = EventSink(delay_s=args.delay, keep=False, port=args.port)
    with sink:
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
