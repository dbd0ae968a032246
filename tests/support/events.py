"""Payload events as the KServe logger (and kubeloop's router) send them: binary-mode
CloudEvents for the drift service's tests and benchmark."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from typing import Any

from kubeloop.serving.payload import REQUEST_TYPE, RESPONSE_TYPE


def payload_headers(
    kind: str, request_id: str, model: str, version: str, endpoint: str = "default"
) -> dict[str, str]:
    """Binary-mode CloudEvent headers of a ``request`` or ``response`` event."""
    return {
        "Content-Type": "application/json",
        "Ce-Specversion": "1.0",
        "Ce-Id": request_id,
        "Ce-Type": REQUEST_TYPE if kind == "request" else RESPONSE_TYPE,
        "Ce-Source": f"http://localhost/{model}/{endpoint}",
        "Ce-Time": datetime.now(UTC).isoformat(),
        "Ce-Inferenceservicename": model,
        "Ce-Namespace": "default",
        "Ce-Component": "predictor",
        "Ce-Endpoint": endpoint,
        "Ce-Modelversion": version,
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
