"""kubeloop's serving metrics (names and labels as docs/contracts.md lists them).

They live in prometheus-client's default registry, which kserve's ``/metrics`` serves,
so one scrape returns kserve's own metrics and these. The four the predictor updates on
every request are lock-free families (:mod:`kubeloop.serving.loopmetrics`), updated
from its event loop only. Every label is bounded: model
and version name what this process serves, ``predicted_class`` is the label set,
``reason``/``status``/``outcome`` are fixed enums.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from kubeloop.serving.loopmetrics import LoopCounterFamily, LoopHistogramFamily

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Fine near 0 and 1, where most scores of a classifier pile up: the canary analysis can only
# tell score distributions apart at the resolution of these edges.
SCORE_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05),
    *(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9),
    *(0.95, 0.975, 0.99, 0.995, 0.999, 1.0),
)

# Updated on every request from the predictor's event loop: lock-free families.
INFERENCE_REQUESTS = LoopCounterFamily(
    "kubeloop_inference_requests",
    "Inference requests by outcome (ok, client_error, server_error).",
    ["model", "version", "status"],
)
INFERENCE_DURATION = LoopHistogramFamily(
    "kubeloop_inference_duration_seconds",
    "Time from decoded request to response inside the predictor.",
    ["model", "version"],
    buckets=LATENCY_BUCKETS,
)
PREDICTIONS = LoopCounterFamily(
    "kubeloop_predictions",
    "Predictions by predicted class.",
    ["model", "version", "predicted_class"],
)
PREDICTION_SCORE = LoopHistogramFamily(
    "kubeloop_prediction_score",
    "Positive-class probability of each prediction.",
    ["model", "version"],
    buckets=SCORE_BUCKETS,
)
REQUEST_ERRORS = Counter(
    "kubeloop_request_errors_total",
    "Rejected requests by reason (client mistakes; see kubeloop.serving.inputs.REASONS).",
    ["model", "version", "reason"],
)
FEAST_LOOKUP = Histogram(
    "kubeloop_feast_lookup_seconds",
    "Latency of the batched Feast online-store lookup, one per request.",
    ["model"],
    buckets=LATENCY_BUCKETS,
)
PAYLOAD_EVENTS = Counter(
    "kubeloop_payload_events_total",
    "CloudEvents payload events by outcome (sent, dropped).",
    ["model", "version", "outcome"],
)
