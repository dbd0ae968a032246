"""ASGI request bodies under a cap, shared by every server kubeloop runs (standard library
only: the drift service's own environment imports it too)."""

from __future__ import annotations

from typing import Any


class BodyTooLarge(Exception):
    """A request body over its cap; raised before the rest of it is read."""


def declared_length(scope: dict[str, Any]) -> int | None:
    """The request's Content-Length, when it declares a valid one."""
    for key, value in scope["headers"]:
        if key == b"content-length":
            return int(value) if value.isdigit() else None
    return None


async def read_body(receive: Any, limit: int | None = None) -> bytes:
    """The whole request body; past ``limit`` bytes (declared or streamed) raises
    :class:`BodyTooLarge` without reading on."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge(size)
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)
