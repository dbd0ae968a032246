"""HTTP at the socket level, for what clients libraries will not send (a declared length
larger than the body, an upload cut short)."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit


def raw_request(url: str, request: str, head: str, chunks: list[bytes]) -> bytes:
    """Sends ``request`` (e.g. ``"POST /v1/feedback"``), the ``head`` header lines and the
    body chunks over a socket, then reads the answer: a server that waits for the whole
    declared body would time out here."""
    parts = urlsplit(url)
    with socket.create_connection((parts.hostname, parts.port), timeout=5) as sock:
        sock.sendall(f"{request} HTTP/1.1\r\nHost: {parts.netloc}\r\n{head}\r\n".encode())
        for chunk in chunks:
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break  # refused mid-upload: the answer is already on its way
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            answer += data
    return answer


def chunked(pieces: int, size: int = 1 << 20) -> list[bytes]:
    """``pieces`` chunks of ``size`` bytes in HTTP/1.1 chunked encoding (no final chunk)."""
    return [f"{size:x}\r\n".encode() + b"x" * size + b"\r\n"] * pieces
