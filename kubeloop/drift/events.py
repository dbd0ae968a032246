"""Parsing and validation of the KServe logger's CloudEvents (pure logic, no I/O).

A request event carries the model input after feature enrichment (V1 ``instances``);
its response event carries ``predictions``; both share ``Ce-Id``. Every problem raises
:class:`EventRejected` with a reason from :data:`kubeloop.contracts.payload_events.REJECT_REASONS`,
before any state is touched. Only CloudEvents spec 1.0 is read, attribute values are
bounded (:data:`~kubeloop.contracts.payload_events.MAX_ATTRIBUTE_CHARS`, printable), and
an error message never echoes more than :data:`ECHO_CHARS` characters of any input.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from cloudevents.http import from_http

from kubeloop.contracts.payload_events import (
    CONTENT_TYPE,
    DEFAULT_ENDPOINT,
    ENDPOINT,
    HEADER_PREFIX,
    ID,
    INFERENCE_SERVICE,
    MAX_ATTRIBUTE_CHARS,
    MODEL_VERSION,
    REQUEST_TYPE,
    RESPONSE_TYPE,
    SOURCE,
    SPEC_VERSION,
    SPECVERSION,
    TYPE,
    header,
)

ECHO_CHARS = 64
"""The most characters of one input value (an id, a field name, a category) an error echoes."""
MAX_MESSAGE_CHARS = 512
"""The longest error message: a last bound, whatever a message is built from."""


def clip(value: Any, limit: int = ECHO_CHARS) -> str:
    """``repr(value)`` cut to ``limit`` characters: how error messages quote client input."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class EventRejected(ValueError):
    """A payload event or feedback that the service refuses; ``reason`` is a fixed enum."""

    def __init__(self, reason: str, message: str, status: int = 422) -> None:
        if len(message) > MAX_MESSAGE_CHARS:
            message = message[: MAX_MESSAGE_CHARS - 3] + "..."
        super().__init__(message)
        self.reason = reason
        self.status = status


@dataclass(frozen=True)
class PayloadEvent:
    id: str
    kind: str  # "request" | "response"
    model: str
    version: str
    endpoint: str
    data: Any


# Header names as the receiver compares them (lower case; HTTP names are case-insensitive).
_PREFIX = HEADER_PREFIX.lower()
_CE_SPECVERSION = header(SPECVERSION).lower()
_REQUIRED_BINARY = tuple(header(a).lower() for a in (ID, SOURCE, TYPE))


def _binary_attributes(h: dict[str, str]) -> dict[str, str] | None:
    """The attributes of a well-formed binary-mode event with a JSON body, else None.

    The KServe logger sends binary mode; reading its ``ce-*`` headers directly costs a
    fraction of ``cloudevents.http.from_http`` (which builds and validates an event
    object), the largest part of the service's per-event cost. Anything else, and every
    malformed event, goes through ``from_http`` so its errors stay the library's.
    """
    if h.get(_CE_SPECVERSION) != SPEC_VERSION or not all(h.get(k) for k in _REQUIRED_BINARY):
        return None
    content_type = h.get("content-type", CONTENT_TYPE)
    if not content_type.startswith(CONTENT_TYPE):
        return None
    return {k[len(_PREFIX) :]: v for k, v in h.items() if k.startswith(_PREFIX)}


def _finite(number: int | float) -> bool:
    """Finite as a float: a JSON integer past float range is not (detectors read floats)."""
    try:
        return math.isfinite(number)
    except OverflowError:
        return False


def _check_specversion(value: Any) -> None:
    if value is not None and value != SPEC_VERSION:
        raise EventRejected(
            "unsupported_specversion",
            f"CloudEvents specversion {clip(value)} is not supported; send {SPEC_VERSION}",
            400,
        )


def _check_attributes(attrs: dict[str, Any]) -> None:
    """Every attribute value short and printable (they are echoed, logged and used as keys)."""
    for name, value in attrs.items():
        text = value if isinstance(value, str) else str(value)
        if len(name) > MAX_ATTRIBUTE_CHARS or len(text) > MAX_ATTRIBUTE_CHARS:
            raise EventRejected(
                "attribute_too_long",
                f"CloudEvent attribute {clip(name)} is longer than {MAX_ATTRIBUTE_CHARS} characters",
                400,
            )
        if not text.isprintable():
            raise EventRejected(
                "malformed_event",
                f"CloudEvent attribute {clip(name)} has non-printable characters",
                400,
            )


def parse_cloudevent(headers: dict[str, str], body: bytes) -> PayloadEvent:
    """Reads a binary- or structured-mode CloudEvent into a :class:`PayloadEvent`."""
    headers = {k.lower(): v for k, v in headers.items()}
    _check_specversion(headers.get(_CE_SPECVERSION))  # binary mode, before the library reads it
    attrs = _binary_attributes(headers)
    if attrs is not None:
        data: Any = body
    else:
        try:
            event = from_http(headers, body)
        except Exception as exc:  # cloudevents raises several unrelated types
            raise EventRejected(
                "malformed_event", f"not a valid CloudEvent: {str(exc)[:200]}", 400
            ) from None
        attrs = event.get_attributes()
        data = event.get_data()
        _check_specversion(attrs.get(SPECVERSION))  # structured mode
    _check_attributes(attrs)
    ce_type = attrs.get(TYPE)
    if ce_type == REQUEST_TYPE:
        kind = "request"
    elif ce_type == RESPONSE_TYPE:
        kind = "response"
    else:
        raise EventRejected("unsupported_type", f"unsupported CloudEvent type {clip(ce_type)}", 400)
    model = attrs.get(INFERENCE_SERVICE)
    version = attrs.get(MODEL_VERSION)
    if not model or not version:
        missing = [n for n, v in ((INFERENCE_SERVICE, model), (MODEL_VERSION, version)) if not v]
        raise EventRejected(
            "missing_attribute", f"CloudEvent lacks extension attribute(s) {missing}", 400
        )
    if isinstance(data, (bytes, bytearray, str)):
        try:
            data = json.loads(data) if data else None
        except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; too deeply nested
            raise EventRejected("invalid_json", f"event data is not JSON: {exc}", 400) from None
    return PayloadEvent(
        id=str(attrs[ID]),
        kind=kind,
        model=str(model),
        version=str(version),
        endpoint=str(attrs.get(ENDPOINT) or DEFAULT_ENDPOINT),
        data=data,
    )


def validate_instances(
    data: Any,
    numeric: list[str],
    categorical: dict[str, list[str]],
    keys: set[str] | frozenset[str] = frozenset(),
) -> list[dict[str, Any]]:
    """Checks a V1 request body against the watched version's feature list.

    Each instance must hold exactly the schema's features (after enrichment): numbers
    for numeric features (bool is not a number here), a known category string for
    categorical ones, no NaN or infinity.
    """
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("instances"), list)
        or not data["instances"]
    ):
        raise EventRejected("missing_field", "request body needs a non-empty 'instances' list")
    expected = set(numeric) | set(categorical)
    allowed_keys = set(keys)  # entity key / request id travel with enriched rows
    for i, inst in enumerate(data["instances"]):
        if not isinstance(inst, dict):
            raise EventRejected(
                "wrong_dtype", f"instance {i} is {type(inst).__name__}, not an object"
            )
        keys = set(inst)
        if missing := expected - keys:
            raise EventRejected("missing_field", f"instance {i} lacks feature(s) {sorted(missing)}")
        if extra := keys - expected - allowed_keys:
            named = ", ".join(clip(k) for k in sorted(extra)[:5])
            more = f" and {len(extra) - 5} more" if len(extra) > 5 else ""
            raise EventRejected("extra_field", f"instance {i} has unknown field(s) {named}{more}")
        for name in numeric:
            value = inst[name]
            if value is None:
                raise EventRejected("nan_value", f"instance {i} feature {name!r} is null")
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise EventRejected(
                    "wrong_dtype",
                    f"instance {i} feature {name!r} must be a number, got {type(value).__name__}",
                )
            if not _finite(value):
                raise EventRejected("nan_value", f"instance {i} feature {name!r} is {clip(value)}")
        for name, cats in categorical.items():
            value = inst[name]
            if not isinstance(value, str):
                raise EventRejected(
                    "wrong_dtype",
                    f"instance {i} feature {name!r} must be a string, got {type(value).__name__}",
                )
            if value not in cats:
                raise EventRejected(
                    "unknown_category",
                    f"instance {i} feature {name!r} has unknown value {clip(value)}",
                )
    return data["instances"]


def validate_predictions(data: Any, n_instances: int) -> tuple[list[float], list[int]]:
    """Checks a V1 response body: one ``{"score", "label"}`` per instance of its request."""
    preds = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(preds, list) or len(preds) != n_instances:
        got = len(preds) if isinstance(preds, list) else type(preds).__name__
        raise EventRejected("bad_response", f"response needs {n_instances} predictions, got {got}")
    scores, labels = [], []
    for i, p in enumerate(preds):
        if not isinstance(p, dict) or "score" not in p or "label" not in p:
            raise EventRejected(
                "bad_response", f"prediction {i} must be an object with 'score' and 'label'"
            )
        score, label = p["score"], p["label"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not _finite(score):
            raise EventRejected(
                "bad_response", f"prediction {i} score {clip(score)} is not a finite number"
            )
        if not 0.0 <= score <= 1.0:
            raise EventRejected(
                "bad_response", f"prediction {i} score {clip(score)} is outside [0, 1]"
            )
        if isinstance(label, bool) or label not in (0, 1):
            raise EventRejected("bad_response", f"prediction {i} label {clip(label)} is not 0 or 1")
        scores.append(float(score))
        labels.append(int(label))
    return scores, labels


def parse_feedback(body: bytes) -> list[tuple[str, list[int]]]:
    """``{"request_id", "labels"}`` or ``{"feedback": [...]}`` → ``[(request_id, labels)]``."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # bad JSON or UTF-8; too deeply nested
        raise EventRejected("invalid_json", f"feedback is not JSON: {exc}", 400) from None
    items = data.get("feedback") if isinstance(data, dict) and "feedback" in data else [data]
    if not isinstance(items, list) or not items:
        raise EventRejected("bad_feedback", "'feedback' must be a non-empty list")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("request_id"), str):
            raise EventRejected("bad_feedback", f"feedback {i} needs a string 'request_id'")
        labels = item.get("labels")
        if (
            not isinstance(labels, list)
            or not labels
            or any(isinstance(v, bool) or v not in (0, 1) for v in labels)
        ):
            raise EventRejected(
                "bad_feedback", f"feedback {i} 'labels' must be a non-empty list of 0/1"
            )
        out.append((item["request_id"], [int(v) for v in labels]))
    return out
