"""Payload events as the KServe logger (and kubeloop's router) send them: binary-mode
CloudEvents for the drift service's tests and benchmark."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

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


def payload_headers(
    kind: str, request_id: str, model: str, version: str, endpoint: str = DEFAULT_ENDPOINT
) -> dict[str, str]:
    """Binary-mode CloudEvent headers of a ``request`` or ``response`` event."""
    return {
        "Content-Type": CONTENT_TYPE,
        CE_SPECVERSION: SPEC_VERSION,
        CE_ID: request_id,
        CE_TYPE: REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        CE_SOURCE: f"http://localhost/{model}/{endpoint}",
        CE_TIME: datetime.now(UTC).isoformat(),
        CE_INFERENCE_SERVICE: model,
        CE_NAMESPACE: "default",
        CE_COMPONENT: COMPONENT_PREDICTOR,
        CE_ENDPOINT: endpoint,
        CE_MODEL_VERSION: version,
    }


def payload_pair(
    instances: list[dict[str, Any]], scores: list[float], labels: list[int], model: str, version: str,
    request_id: str | None = None,
) -> tuple[str, list[tuple[dict[str, str], bytes]]]:  # fmt: skip
    """The request and response events of one prediction, sharing ``Ce-Id``."""
    rid = request_id or uuid.uuid4().hex
    request = json.dumps({"instances": instances}).encode()
    response = json.dumps(
        {
            "predictions": [{"score": s, "label": y} for s, y in zip(scores, labels, strict=True)],
            "model_version": version,
        }  # fmt: skip
    ).encode()
    return rid, [
        (payload_headers("request", rid, model, version), request),
        (payload_headers("response", rid, model, version), response),
    ]
