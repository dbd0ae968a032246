"""Payload events as the KServe logger (and kubeloop's router) send them: binary-mode
CloudEvents for the drift service's tests and benchmark."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from kubeloop.contracts import payload_events as pe


def payload_headers(
    kind: str, request_id: str, model: str, version: str, endpoint: str = pe.DEFAULT_ENDPOINT
) -> dict[str, str]:
    """Binary-mode CloudEvent headers of a ``request`` or ``response`` event."""
    return {
        "Content-Type": pe.CONTENT_TYPE,
        pe.CE_SPECVERSION: pe.SPEC_VERSION,
        pe.CE_ID: request_id,
        pe.CE_TYPE: pe.REQUEST_TYPE if kind == "request" else pe.RESPONSE_TYPE,
        pe.CE_SOURCE: f"http://localhost/{model}/{endpoint}",
        pe.CE_TIME: datetime.now(UTC).isoformat(),
        pe.CE_INFERENCE_SERVICE: model,
        pe.CE_NAMESPACE: "default",
        pe.CE_COMPONENT: pe.COMPONENT_PREDICTOR,
        pe.CE_ENDPOINT: endpoint,
        pe.CE_MODEL_VERSION: version,
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
