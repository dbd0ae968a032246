"""Observations from Prometheus's HTTP API (``/api/v1/query``), named as docs/contracts.md lists.

Counts are taken over the current analysis window (since the step started) with
``increase()``, so an operator restart or a counter reset in a new predictor does not
skew the comparison. Any failure is reported, never papered over: the core then holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import httpx
from kubeloop.operators.reconciler.types import VersionMetrics

MOVED_FEATURES = 3
MOVED_P_VALUE = 0.01  # a feature "moved" when its batch test's p-value is below this


class PrometheusError(RuntimeError):
    """Prometheus could not be reached or refused a query."""


@dataclass(frozen=True)
class MetricsSnapshot:
    ok: bool
    error: str
    versions: dict[str, VersionMetrics]


def _sel(model: str, **labels: str) -> str:
    pairs = [f'model="{model}"', *(f'{k}="{v}"' for k, v in labels.items())]
    return "{" + ",".join(pairs) + "}"


class PrometheusObserver:
    def __init__(self, url: str, *, timeout: float = 5.0, min_window_seconds: int = 30) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.min_window = min_window_seconds
        # One pooled client: a fresh httpx.get builds a TLS context per call (~8 ms).
        self.http = httpx.Client(timeout=timeout)

    def query(self, promql: str) -> list[dict[str, Any]]:
        try:
            response = self.http.get(f"{self.url}/api/v1/query", params={"query": promql})
        except httpx.HTTPError as exc:
            raise PrometheusError(f"Prometheus at {self.url} unreachable: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(
                f"Prometheus answered {response.status_code} without JSON"
            ) from None
        if response.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(
                f"query {promql!r} failed: {body.get('error', response.status_code)}"
            )
        return body["data"]["result"]

    def window(self, seconds: float) -> str:
        return f"{max(int(math.ceil(seconds)), self.min_window)}s"

    def version_metrics(
        self, model: str, window_seconds: float, feedback_seconds: float | None = None
    ) -> MetricsSnapshot:
        """Per-version traffic, errors, p99 latency and score histogram over the window, and
        feedback (delayed labels) over ``feedback_seconds`` (default: the same window)."""
        w = self.window(window_seconds)
        fw = self.window(max(window_seconds, feedback_seconds or 0.0))
        m = _sel(model)
        try:
            requests = self.query(
                f"sum by (version) (increase(kubeloop_inference_requests_total{m}[{w}]))"
            )
            errors = self.query(
                f"sum by (version) (increase(kubeloop_inference_requests_total{_sel(model, status='server_error')}[{w}]))"
            )
            p99 = self.query(
                "histogram_quantile(0.99, sum by (version, le) "
                f"(rate(kubeloop_inference_duration_seconds_bucket{m}[{w}])))"
            )
            scores = self.query(
                f"sum by (version, le) (increase(kubeloop_prediction_score_bucket{m}[{w}]))"
            )
            feedback = self.query(
                f"sum by (version, outcome) (increase(kubeloop_feedback_total{m}[{fw}]))"
            )
            estimated = self.query(f"max by (version) (kubeloop_estimated_accuracy{m})")
            labelled_over = (
                self.query(
                    f"sum by (version) (increase(kubeloop_inference_requests_total{m}[{fw}]))"
                )
                if fw != w
                else ()
            )
        except PrometheusError as exc:
            return MetricsSnapshot(False, str(exc), {})
        return MetricsSnapshot(
            True, "", assemble(requests, errors, p99, scores, feedback, estimated, labelled_over)
        )

    def drift(self, model: str, version: str) -> tuple[bool | None, dict[str, Any]]:
        """Whether any detector flags drift on ``version``; ``None`` when there is no signal."""
        result = self.query(
            f"max by (detector) (kubeloop_drift_detected{_sel(model, version=version)})"
        )
        if not result:
            return None, {}
        flags = {r["metric"].get("detector", "_"): float(r["value"][1]) for r in result}
        detail: dict[str, Any] = {"detectors": flags}
        detected = any(v >= 1 for v in flags.values())
        if not detected:  # the evidence below is read only for a drift decision
            return False, detail
        # Label-shift evidence: the positive class's share in the reference, in the latest
        # predictions, and the prior estimated from them.
        rates = self.query(f"kubeloop_positive_rate{_sel(model, version=version)}")
        if rates:
            detail["positive_rate"] = {
                r["metric"].get("source", "_"): round(float(r["value"][1]), 4) for r in rates
            }
        # Drift explained: the inputs whose batch test against the reference is significant,
        # most significant first (at most MOVED_FEATURES).
        tests = self.query(f"kubeloop_feature_drift_p_value{_sel(model, version=version)}")
        moved = sorted((float(r["value"][1]), r["metric"].get("feature", "_")) for r in tests)
        detail["moved"] = [
            {"feature": f, "p_value": float(f"{p:.3g}")}
            for p, f in moved[:MOVED_FEATURES]
            if p < MOVED_P_VALUE
        ]
        return True, detail

    def drift_reset_age(self, model: str, version: str) -> float | None:
        """Seconds since the drift service last reset ``version``'s detectors, as of now.

        ``kubeloop_drift_seconds_since_reset`` at its last scrape plus the scrape's age:
        durations on Prometheus's own clock, so no clock is compared with another.
        """
        s = f"kubeloop_drift_seconds_since_reset{_sel(model, version=version)}"
        result = self.query(f"max((time() - timestamp({s})) + {s})")
        if not result:
            return None
        value = _value(result[0])
        return None if math.isnan(value) else value


def _value(sample: dict[str, Any]) -> float:
    return float(sample["value"][1])


def assemble(
    requests, errors, p99, scores, feedback, estimated=(), feedback_requests=()
) -> dict[str, VersionMetrics]:
    """Turns instant-vector results into per-version metrics (pure, for testing);
    ``feedback_requests``: requests over the feedback's window when it is longer."""
    out: dict[str, dict[str, Any]] = {}
    for r in requests:
        out.setdefault(r["metric"].get("version", ""), {})["requests"] = _value(r)
    for r in errors:
        out.setdefault(r["metric"].get("version", ""), {})["server_errors"] = _value(r)
    for r in p99:
        value = _value(r)
        if not math.isnan(value):
            out.setdefault(r["metric"].get("version", ""), {})["latency_p99"] = value
    for r in scores:
        le = float(r["metric"]["le"])
        out.setdefault(r["metric"].get("version", ""), {}).setdefault("score_buckets", {})[le] = (
            _value(r)
        )
    for r in feedback:
        key = (
            "feedback_correct" if r["metric"].get("outcome") == "correct" else "feedback_incorrect"
        )
        out.setdefault(r["metric"].get("version", ""), {})[key] = _value(r)
    for r in estimated:
        value = _value(r)
        if math.isfinite(value):
            out.setdefault(r["metric"].get("version", ""), {})["estimated_accuracy"] = value
    for r in feedback_requests:
        out.setdefault(r["metric"].get("version", ""), {})["feedback_requests"] = _value(r)
    snapshot = {}
    for version, fields in out.items():
        if not version or "requests" not in fields:
            continue
        # increase() extrapolates each series separately; errors cannot exceed requests.
        fields["server_errors"] = min(fields.get("server_errors", 0.0), fields["requests"])
        snapshot[version] = VersionMetrics(**fields)
    return snapshot
