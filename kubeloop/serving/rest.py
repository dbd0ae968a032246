"""The REST edge in front of kserve's FastAPI app: one ASGI middleware, ``RequestGuard``.

It answers what kserve would get wrong or not check, before kserve decodes anything,
always with ``{"error": "<message naming the problem>"}``:

- size: a body over ``max_payload_bytes`` (declared or streamed) gets 413;
- time: a body that does not arrive whole within ``body_timeout_s`` gets 408 and the
  connection is closed (a stalled upload would otherwise hold it forever; the deadlines
  are kept by :class:`BodyDeadlines`);
- headers: an ``X-Request-Id`` longer than ``max_request_id_chars`` or not printable
  ASCII, and an ``Inference-Header-Content-Length`` that is not a length inside the
  body, get 400;
- media type: JSON routes take ``application/json`` (or ``+json``); a missing
  Content-Type means JSON (what Open Inference Protocol clients send); anything else is
  415, except V2's binary tensor extension (``Inference-Header-Content-Length``);
- JSON: a UTF-8 byte order mark (RFC 8259 §8.1) gets 400 on V1 and V2 alike; V2 bodies
  are checked for shape and unknown keys (:func:`kubeloop.serving.inputs.check_v2_body`);
- versions: ``/v2/models/{m}/versions/{v}[/ready|/infer]`` is the unversioned route for
  the served version and 404 for any other; an unknown route (404) or method (405) is
  answered ``{"error"}`` as well (:func:`http_error_handler`);
- outcomes: every inference request is counted by status, whoever answered it (the
  model, kserve, FastAPI or this guard), through ``on_outcome(status, reason)``;
  ``reason`` is set when the model already counted its own rejection reason.

Given the served ``model``, the guard also answers V1 predict (``POST
/v1/models/{model}:predict`` with a JSON body) itself, the way kserve's V1 route does
(readiness, ``orjson`` decoding, ``model(body, headers)``, its response headers, an
``orjson`` body; errors through the app's own exception handlers, so the answers are
kserve's) but without the FastAPI router, request object and dependency solving in
between: those cost more CPU per request than the predictor's validation, metrics and
payload events together (docs/benchmarks.md, serving). V1 bodies that are binary-mode
CloudEvents (``Ce-*`` headers), V2 and everything else go through the app.

An exception that escapes the app becomes a 500 here, so Starlette does not re-raise it
to uvicorn, which would drop the keep-alive connection without ``Connection: close``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.errors import InvalidInput, ModelNotReady
from starlette.exceptions import HTTPException

from kubeloop.bodies import declared_length
from kubeloop.serving.inputs import Limits, RequestRejected, check_v2_body

log = logging.getLogger(__name__)

BOM = b"\xef\xbb\xbf"
_V1_PREDICT = re.compile(r"^/v1/models/([^/:]+):predict$")
_V2_INFER = re.compile(r"^/v2/models/([^/]+)/infer$")
_V2_VERSIONED = re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)(/ready|/infer)?$")
_PRINTABLE_ASCII = re.compile(rb"^[\x20-\x7e]+$")
_STATUS_REASONS = {
    400: "malformed_body",
    404: "unknown_model",
    408: "body_timeout",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


@dataclass(slots=True)
class Outcome:
    """Shared with the model for one HTTP request: it records the reason it counted."""

    reason: str | None = None
    counted: bool = False  # the model counted ``reason`` in kubeloop_request_errors_total
    status: int = 500  # the answer's status once it started (500 until then)
    started: bool = False


CURRENT = contextvars.ContextVar[Outcome | None]("kubeloop_http_outcome", default=None)


class _Answer(Exception):
    """The guard answers the request itself."""

    def __init__(self, status: int, reason: str, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.close = status, reason, message, close


def _json_type(content_type: bytes) -> bool:
    media = content_type.split(b";", 1)[0].strip().lower()
    return media == b"application/json" or (
        media.startswith(b"application/") and media.endswith(b"+json")
    )


class BodyDeadlines:
    """The deadlines of the request bodies being read, enforced by one sweeper task.

    ``asyncio.timeout`` around every read arms and cancels a timer on every request,
    about half of the guard's own time; here a read only records its deadline, and one
    task, running while reads are pending, wakes every quarter of the limit and cancels
    the reads past theirs. A stalled body is therefore answered between 1 and 1.25 times
    the limit after its read began.
    """

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._reading: dict[asyncio.Task, float] = {}
        self._expired: set[asyncio.Task] = set()
        self._sweeper: asyncio.Task | None = None
        self._armed = False  # a read began since the sweeper last woke

    def arm(self, task: asyncio.Task) -> None:
        loop = task.get_loop()
        self._reading[task] = loop.time() + self.timeout_s
        self._armed = True
        sweeper = self._sweeper
        if sweeper is None or sweeper.done() or sweeper.get_loop() is not loop:
            self._sweeper = loop.create_task(self._sweep(loop))

    def disarm(self, task: asyncio.Task) -> bool:
        """Forgets the task's read; True when the sweeper cancelled it (the cancellation
        is then withdrawn: the read timed out, the request goes on to its 408)."""
        self._reading.pop(task, None)
        if task in self._expired:
            self._expired.discard(task)
            task.uncancel()
            return True
        return False

    async def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        # Sleeps first: a read is usually over before the sweeper first runs. It ends
        # after an interval in which nothing was read, and the next read starts it again.
        interval = self.timeout_s / 4
        while True:
            self._armed = False
            await asyncio.sleep(interval)
            now = loop.time()
            for task, deadline in list(self._reading.items()):
                if deadline <= now and task not in self._expired:
                    self._expired.add(task)
                    task.cancel()
            if not self._reading and not self._armed:
                return


class RequestGuard:
    """ASGI middleware guarding the predictor's inference routes (see the module doc)."""

    def __init__(
        self,
        app,
        *,
        model_name: str,
        version: str,
        limits: Limits,
        on_outcome: Callable[[int, Outcome], None] | None = None,
        model=None,
        exception_handlers: dict | None = None,
    ) -> None:
        self.app = app
        self.model_name = model_name
        self.version = version
        self.limits = limits
        self.on_outcome = on_outcome
        self._deadlines = BodyDeadlines(limits.body_timeout_s)
        # The served kserve Model (V1 predict answered here) and the app's exception
        # handlers (a live view: kserve registers its own when its server starts).
        self.model = model
        self.exception_handlers = exception_handlers if exception_handlers is not None else {}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope["path"], scope["method"]
        infer = None
        if versioned := _V2_VERSIONED.match(path):
            name, version, tail = versioned.groups()
            if tail == "/infer" and method == "POST":
                infer = "v2", name
            if name != self.model_name or version != self.version:
                if infer is None:
                    return await _respond(send, 404, {"error": self._unknown(name, version)})
                return await self._counted(scope, receive, send, infer, (name, version))
            path = f"/v2/models/{name}{tail or ''}"
            scope = {**scope, "path": path, "raw_path": path.encode()}
        elif method == "POST":
            if match := _V1_PREDICT.match(path):
                infer = "v1", match.group(1)
            elif match := _V2_INFER.match(path):
                infer = "v2", match.group(1)
        if infer is not None:
            return await self._counted(scope, receive, send, infer, None)
        if method in ("POST", "PUT", "PATCH"):
            return await self._guarded(scope, receive, send, None, None)
        return await self.app(scope, receive, send)

    def _unknown(self, name: str, version: str) -> str:
        if name == self.model_name:
            return (
                f"model {name!r} has no version {version!r} here; this predictor serves "
                f"{self.model_name} {self.version}"
            )
        return f"model {name!r} is not served here"

    async def _counted(self, scope, receive, send, infer, unknown) -> None:
        """An inference request: answered (by whoever) and counted by its status."""
        outcome = Outcome()
        token = CURRENT.set(outcome)
        try:
            if unknown is not None:
                outcome.reason, outcome.status = "unknown_model", 404
                return await _respond(send, 404, {"error": self._unknown(*unknown)})
            await self._guarded(scope, receive, send, infer, outcome)
        finally:
            CURRENT.reset(token)
            status = outcome.status
            if outcome.reason is None and 400 <= status < 500:
                outcome.reason = _STATUS_REASONS.get(status, "malformed_body")
            if self.on_outcome is not None:
                self.on_outcome(status, outcome)

    async def _guarded(self, scope, receive, send, infer, outcome: Outcome | None) -> None:
        # One send wrapper per request: it records the status the counting reads.
        outcome = outcome if outcome is not None else Outcome()
        try:
            headers, binary = self._checked_headers(scope, infer)
            declared = declared_length(scope)
            if declared is not None and declared > self.limits.max_payload_bytes:
                raise _Answer(
                    413,
                    "payload_too_large",
                    f"{declared} bytes exceeds the payload limit of "
                    f"{self.limits.max_payload_bytes} bytes",
                    close=True,
                )
            body = await self._read_body(receive)
            if infer is not None:
                self._check_body(body, binary, infer[0])
        except _Answer as answer:
            outcome.reason, outcome.status = answer.reason, answer.status
            extra = [(b"connection", b"close")] if answer.close else []
            return await _respond(send, answer.status, {"error": answer.message}, extra)
        if infer is not None and self.model is not None and self._direct(infer, headers):
            try:
                return await self._predict_v1(scope, body, headers, send, outcome)
            except Exception as exc:  # noqa: BLE001 - answered as a 500, keep-alive kept
                return await _internal_error(scope, exc, outcome, send)
        if headers is not scope["headers"]:
            scope = {**scope, "headers": headers}
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        async def send_tracked(message) -> None:
            if message["type"] == "http.response.start":
                outcome.status, outcome.started = message["status"], True
            await send(message)

        try:
            await self.app(scope, replay, send_tracked)
        except Exception as exc:  # noqa: BLE001 - answered as a 500, keep-alive kept
            await _internal_error(scope, exc, outcome, send)

    def _direct(self, infer, headers: list) -> bool:
        """V1 predict of the served model, not a binary-mode CloudEvent: answered here."""
        if infer[0] != "v1" or infer[1] != self.model.name:
            return False
        return not any(key.startswith(b"ce-") for key, _ in headers)

    async def _predict_v1(self, scope, body: bytes, headers: list, send, outcome) -> None:
        """kserve's V1 predict route, without the router in between (see the module doc)."""
        model = self.model
        text = {key.decode("latin-1"): value.decode("latin-1") for key, value in headers}
        try:
            if not model.ready:
                raise ModelNotReady(model.name)
            try:
                payload = orjson.loads(body)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"Unrecognized request format: {exc}") from None
            result, response_headers = await model(payload, text)
            content = orjson.dumps(result)
        except Exception as exc:
            handler = self._handler(exc)
            if handler is None:
                raise
            response = await handler(None, exc)
            outcome.status, outcome.started = response.status_code, True
            return await response(scope, None, send)
        raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in response_headers.items()]
        raw += [
            (b"content-length", b"%d" % len(content)),
            (b"content-type", b"application/json"),
        ]
        outcome.status, outcome.started = 200, True
        await send({"type": "http.response.start", "status": 200, "headers": raw})
        await send({"type": "http.response.body", "body": content})

    def _handler(self, exc: Exception):
        """The app's handler for ``exc`` (its closest class), as its exception middleware
        would pick it; None for what only a 500 answers (``Exception`` itself)."""
        for cls in type(exc).__mro__:
            if cls is Exception:
                return None
            if (handler := self.exception_handlers.get(cls)) is not None:
                return handler
        return None

    def _checked_headers(self, scope, infer) -> tuple[list, int | None]:
        """The headers kserve gets and, on V2, the binary tensor extension's
        Inference-Header-Content-Length (the length of the JSON part)."""
        headers = scope["headers"]
        content_type = length = None
        for key, value in headers:
            if key == b"content-type":
                content_type = value
            elif key == b"x-request-id" and infer is not None:
                if len(value) > self.limits.max_request_id_chars or not _PRINTABLE_ASCII.match(
                    value
                ):
                    raise _Answer(
                        400,
                        "malformed_body",
                        f"X-Request-Id must be 1 to {self.limits.max_request_id_chars} printable "
                        "ASCII characters",
                    )
            elif key == b"inference-header-content-length" and length is None:
                length = value
        if infer is None:
            return headers, None
        if infer[0] == "v2" and length is not None:
            if not length.isdigit():
                raise _Answer(
                    400,
                    "malformed_body",
                    "Inference-Header-Content-Length must be a byte count, got "
                    f"{length[:32].decode('latin-1')!r}",
                )
            return headers, int(length)  # the binary extension: any content type
        if content_type is None:
            # No Content-Type: the body is JSON (kserve would take V2 bytes as binary).
            return [*headers, (b"content-type", b"application/json")], None
        if not _json_type(content_type):
            raise _Answer(
                415,
                "unsupported_media_type",
                f"Content-Type {content_type[:64].decode('latin-1')!r} is not JSON; "
                "send application/json",
            )
        return headers, None

    async def _read_body(self, receive) -> bytes:
        task = asyncio.current_task()
        self._deadlines.arm(task)
        try:
            return await self._receive_body(receive)
        except asyncio.CancelledError:
            if not self._deadlines.disarm(task):
                raise  # cancelled by someone else (shutdown, a client gone)
            raise _Answer(
                408,
                "body_timeout",
                f"the request body did not arrive within {self.limits.body_timeout_s:g} s",
                close=True,
            ) from None
        finally:
            self._deadlines.disarm(task)

    async def _receive_body(self, receive) -> bytes:
        chunks, size, limit = [], 0, self.limits.max_payload_bytes
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise _Answer(400, "malformed_body", "the client went away", close=True)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _Answer(
                    413,
                    "payload_too_large",
                    f"the request body exceeds the payload limit of {limit} bytes",
                    close=True,
                )
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def _check_body(self, body: bytes, binary: int | None, protocol: str) -> None:
        if binary is not None:  # V2 with binary tensors: only the JSON header is checked
            if binary > len(body):
                raise _Answer(
                    400,
                    "malformed_body",
                    f"Inference-Header-Content-Length {binary} exceeds the body's "
                    f"{len(body)} bytes",
                )
            body = body[:binary]  # the JSON header; binary tensors follow
        if body.startswith(BOM):
            raise _Answer(
                400, "malformed_body", "request body starts with a byte order mark; send plain JSON"
            )
        if protocol == "v2":
            try:
                check_v2_body(orjson.loads(body))
            except orjson.JSONDecodeError as exc:
                raise _Answer(
                    400, "malformed_body", f"request body is not valid JSON: {exc}"
                ) from None
            except RequestRejected as exc:
                raise _Answer(400, exc.kind, str(exc)) from None


async def _internal_error(scope, exc: Exception, outcome: Outcome, send) -> None:
    """An exception that escaped the app or the model: a 500 ``{"error"}``, unless the
    answer had started (then it is re-raised: the connection cannot be saved)."""
    log.exception("unhandled error answering %s %s", scope["method"], scope["path"])
    if outcome.started:
        raise exc
    outcome.status = 500
    await _respond(send, 500, {"error": f"internal error ({type(exc).__name__})"})


async def _respond(send, status: int, content: dict, extra: list | None = None) -> None:
    body = orjson.dumps(content)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(extra or []),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def validation_error_handler(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a body it could not parse, as the documented 400 ``{"error"}``."""
    problems = []
    for error in exc.errors()[:3]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        problems.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return JSONResponse(status_code=400, content={"error": "; ".join(problems) or "invalid body"})


async def http_error_handler(_request: Request, exc: HTTPException) -> JSONResponse:
    """Starlette's own answers (404 no such route, 405 wrong method) as ``{"error"}`` too,
    keeping their headers (``Allow`` on a 405)."""
    return JSONResponse(
        status_code=exc.status_code,
        content={"error": f"{exc.detail}"},
        headers=getattr(exc, "headers", None),
    )
