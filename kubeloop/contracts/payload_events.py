"""The payload-event contract: the KServe logger's CloudEvents, as kubeloop sends and reads them.

Each inference becomes two CloudEvents (spec 1.0) sharing ``Ce-Id`` = the request id: a
request event (the V1 ``instances`` the model saw, after feature enrichment) and a
response event (the V1 ``predictions``). Senders are the predictor's and the router's
payload logger (``kubeloop.serving.payload``) and the KServe agent in a cluster; the
receiver is the drift service (``kubeloop.drift``). Both read their names from here, so
standard library only: this module is imported in both environments.

Attribute names are CloudEvents context attributes as structured mode (and
``cloudevents.http``) spells them; binary mode carries each as the header
:func:`header` names (``Ce-`` + capitalised attribute, which is how the KServe agent
writes them; HTTP header names are case-insensitive, receivers compare lower case).
"""

from __future__ import annotations

SPEC_VERSION = "1.0"
"""The CloudEvents ``specversion`` every payload event carries."""

REQUEST_TYPE = "org.kubeflow.serving.inference.request"
RESPONSE_TYPE = "org.kubeflow.serving.inference.response"
EVENT_TYPES: tuple[str, ...] = (REQUEST_TYPE, RESPONSE_TYPE)
"""The KServe logger's event types; kubeloop sends no other (feedback is plain JSON)."""

HEADER_PREFIX = "Ce-"
"""Binary mode: each attribute travels as a header with this prefix."""

# CloudEvents required attributes, and ``time``.
ID = "id"
SOURCE = "source"
TYPE = "type"
SPECVERSION = "specversion"
TIME = "time"
# The KServe logger's extension attributes, plus kubeloop's ``modelversion``.
INFERENCE_SERVICE = "inferenceservicename"  # the model (InferenceService) name
NAMESPACE = "namespace"
COMPONENT = "component"  # "predictor"
ENDPOINT = "endpoint"  # "default" (stable) or "canary"
MODEL_VERSION = "modelversion"  # kubeloop's extension: the registry version, e.g. "v3"

REQUIRED_ATTRIBUTES: tuple[str, ...] = (ID, SOURCE, TYPE, SPECVERSION)
"""What the CloudEvents spec requires of every event."""
ROUTING_ATTRIBUTES: tuple[str, ...] = (INFERENCE_SERVICE, MODEL_VERSION)
"""What the drift service needs beyond the spec to file an event under a model version: one
it watches, or, before any watch, one its registry holds (named ``v<N>``, never an alias);
an event naming neither is refused as ``unwatched_model``."""

COMPONENT_PREDICTOR = "predictor"
DEFAULT_ENDPOINT = "default"
CANARY_ENDPOINT = "canary"
ENDPOINTS: tuple[str, ...] = (DEFAULT_ENDPOINT, CANARY_ENDPOINT)

CONTENT_TYPE = "application/json"
"""Binary mode's ``Content-Type`` (the event data is JSON)."""

MAX_ATTRIBUTE_CHARS = 256
"""The longest attribute value (``id`` included: the request id) the receiver accepts; every
attribute value must also be printable. Longer is refused as ``attribute_too_long``."""


def header(attribute: str) -> str:
    """The binary-mode header of a CloudEvents attribute: ``modelversion`` → ``Ce-Modelversion``."""
    return HEADER_PREFIX + attribute.capitalize()


CE_ID = header(ID)
CE_SOURCE = header(SOURCE)
CE_TYPE = header(TYPE)
CE_SPECVERSION = header(SPECVERSION)
CE_TIME = header(TIME)
CE_INFERENCE_SERVICE = header(INFERENCE_SERVICE)
CE_NAMESPACE = header(NAMESPACE)
CE_COMPONENT = header(COMPONENT)
CE_ENDPOINT = header(ENDPOINT)
CE_MODEL_VERSION = header(MODEL_VERSION)

# What the drift service answers: every refusal is a 4xx ``{"error", "reason"}`` whose
# reason is one of these and is counted in ``kubeloop_events_rejected_total{reason}``.
REJECT_REASONS: tuple[str, ...] = (
    "malformed_event",
    "unsupported_type",
    "missing_attribute",
    "unwatched_model",
    "invalid_json",
    "missing_field",
    "extra_field",
    "wrong_dtype",
    "nan_value",
    "unknown_category",
    "bad_response",
    "unpaired_response",
    "duplicate_event",
    "bad_feedback",
    "unknown_request_id",
    "duplicate_feedback",
    "unsupported_specversion",
    "attribute_too_long",
    "payload_too_large",
)
"""The fixed set of ``reason`` label values of ``kubeloop_events_rejected_total``."""

WORKER_DOWN = "worker_down"
"""The reason of a 503 when the detector worker has died (the service's fault: not counted)."""

DETECTORS: tuple[str, ...] = ("mmd", "cvm", "fet", "prediction", "error_rate", "predicted_class")
"""The ``detector`` label values of the ``kubeloop_drift_*`` series."""

__all__ = [
    "CANARY_ENDPOINT",
    "CE_COMPONENT",
    "CE_ENDPOINT",
    "CE_ID",
    "CE_INFERENCE_SERVICE",
    "CE_MODEL_VERSION",
    "CE_NAMESPACE",
    "CE_SOURCE",
    "CE_SPECVERSION",
    "CE_TIME",
    "CE_TYPE",
    "COMPONENT",
    "COMPONENT_PREDICTOR",
    "CONTENT_TYPE",
    "DEFAULT_ENDPOINT",
    "DETECTORS",
    "ENDPOINT",
    "ENDPOINTS",
    "EVENT_TYPES",
    "HEADER_PREFIX",
    "ID",
    "INFERENCE_SERVICE",
    "MAX_ATTRIBUTE_CHARS",
    "MODEL_VERSION",
    "NAMESPACE",
    "REJECT_REASONS",
    "REQUEST_TYPE",
    "REQUIRED_ATTRIBUTES",
    "RESPONSE_TYPE",
    "ROUTING_ATTRIBUTES",
    "SOURCE",
    "SPECVERSION",
    "SPEC_VERSION",
    "TIME",
    "TYPE",
    "WORKER_DOWN",
    "header",
]
