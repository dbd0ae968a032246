"""Monitoring: the drift service (alibi-detect), Prometheus config and rules, dashboards.

The drift service runs in its own environment (``.venv-drift`` locally, its own image
in a cluster) because alibi-detect 0.11.4 needs numpy<2, Pillow<10 and pydantic<2.
Modules here that the service imports (``events``, ``reference``, ``detectors``,
``monitor``, ``service``) use only numpy/pandas/alibi-detect and kubeloop's registry;
the generators (``rules``, ``dashboards``) and ``prometheus`` run in the main
environment. Nothing heavy is imported here.
"""

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
)
"""The fixed set of ``reason`` label values of ``kubeloop_events_rejected_total``."""

DETECTORS: tuple[str, ...] = ("mmd", "cvm", "fet", "prediction", "error_rate")
