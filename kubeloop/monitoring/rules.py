"""The one source of kubeloop's alert rules and ServiceMonitors.

Generates (see ``kubeloop.generated``):

- ``manifests/monitoring/rules.yaml``: plain Prometheus rule groups (promtool tests
  and the local Prometheus read this file);
- ``manifests/monitoring/prometheusrule.yaml``: the same groups as a Prometheus
  Operator ``PrometheusRule``;
- ``manifests/monitoring/servicemonitors.yaml``: scraping of the drift service and
  the KServe predictors.

Expressions use only the ``kubeloop_*`` names of docs/contracts.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import yaml

from kubeloop.generated import GENERATED_HEADER

SOURCE = "kubeloop/monitoring/rules.py"
RULES_PATH = "manifests/monitoring/rules.yaml"
DRIFT_JOB = "kubeloop-drift"
PREDICTOR_JOB = "kubeloop-predictor"
ROUTER_JOB = "kubeloop-router"
NAMESPACE = "kubeloop"


@dataclass(frozen=True)
class AlertTimings:
    """How long a condition must hold before the alert fires (shortened in local tests)."""

    drift: str = "10m"
    errors: str = "5m"
    latency: str = "10m"
    accuracy: str = "15m"
    dropped: str = "5m"
    down: str = "2m"
    rate_window: str = "5m"


@dataclass(frozen=True)
class Objectives:
    canary_error_ratio: float = 0.05
    latency_p99_seconds: float = 0.5
    min_live_accuracy: float = 0.90
    min_feedback_in_window: int = 50
    dropped_ratio: float = 0.01


def _alert(
    name: str, expr: str, duration: str, severity: str, summary: str, description: str
) -> dict:
    return {
        "alert": name,
        "expr": expr,
        "for": duration,
        "labels": {"severity": severity, "team": "kubeloop"},
        "annotations": {"summary": summary, "description": description},
    }


def rule_groups(t: AlertTimings = AlertTimings(), o: Objectives = Objectives()) -> list[dict]:
    w = t.rate_window
    alerts = [
        _alert(
            "KubeloopDriftSustained",
            'max by (model, version, detector) (kubeloop_drift_detected{feature="_all"}) == 1',
            t.drift, "warning",
            "Drift detector {{ $labels.detector }} flags {{ $labels.model }}/{{ $labels.version }}",
            "The {{ $labels.detector }} detector has flagged drift for " + t.drift + "; the operator may retrain.",
        ),
        _alert(
            "KubeloopCanaryErrorRate",
            f'sum by (model, version) (rate(kubeloop_router_requests_total{{role="canary",code=~"5.."}}[{w}]))'
            f' / sum by (model, version) (rate(kubeloop_router_requests_total{{role="canary"}}[{w}]))'
            f" > {o.canary_error_ratio}",
            t.errors, "critical",
            "Canary {{ $labels.model }}/{{ $labels.version }} fails {{ $value | humanizePercentage }} of requests",
            f"More than {o.canary_error_ratio:.0%} of canary requests end in a server error.",
        ),
        _alert(
            "KubeloopHighLatency",
            f"histogram_quantile(0.99, sum by (model, version, le)"
            f" (rate(kubeloop_inference_duration_seconds_bucket[{w}]))) > {o.latency_p99_seconds}",
            t.latency, "warning",
            "p99 latency of {{ $labels.model }}/{{ $labels.version }} is {{ $value | humanizeDuration }}",
            f"The 99th percentile of inference time exceeds {o.latency_p99_seconds}s.",
        ),
        _alert(
            "KubeloopLiveAccuracyBelowObjective",
            f"kubeloop_live_accuracy < {o.min_live_accuracy}"
            f" and on (model, version) sum by (model, version) (kubeloop_feedback_total)"
            f" >= {o.min_feedback_in_window}",
            t.accuracy, "critical",
            "Live accuracy of {{ $labels.model }}/{{ $labels.version }} is {{ $value | humanizePercentage }}",
            f"Accuracy over the feedback window is below the objective {o.min_live_accuracy:.0%}.",
        ),
        _alert(
            "KubeloopPayloadEventsDropped",
            f'sum by (model) (rate(kubeloop_payload_events_total{{outcome="dropped"}}[{w}]))'
            f" / sum by (model) (rate(kubeloop_payload_events_total[{w}])) > {o.dropped_ratio}",
            t.dropped, "warning",
            "{{ $labels.model }} drops {{ $value | humanizePercentage }} of payload events",
            "Payload events are not reaching the drift service, so monitoring is partly blind.",
        ),
        _alert(
            "KubeloopDriftServiceDown",
            f'up{{job="{DRIFT_JOB}"}} == 0 or absent(up{{job="{DRIFT_JOB}"}})',
            t.down, "critical",
            "The kubeloop drift service is down",
            "Prometheus cannot scrape the drift service; drift and live accuracy are not being measured.",
        ),
    ]  # fmt: skip
    return [{"name": "kubeloop.rules", "rules": alerts}]


def _dump(doc: object) -> str:
    return yaml.safe_dump(doc, sort_keys=False, width=120)


def rules_file(t: AlertTimings = AlertTimings()) -> str:
    return _dump({"groups": rule_groups(t)})


def _labels() -> dict:
    return {"app.kubernetes.io/part-of": "kubeloop", "app.kubernetes.io/component": "monitoring"}


def prometheus_rule() -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "kubeloop",
            "namespace": NAMESPACE,
            "labels": {**_labels(), "release": "prometheus"},
        },
        "spec": {"groups": rule_groups()},
    }


def service_monitors() -> list[dict]:
    drift = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {
            "name": DRIFT_JOB,
            "namespace": NAMESPACE,
            "labels": {**_labels(), "release": "prometheus"},
        },
        "spec": {
            "jobLabel": "app.kubernetes.io/name",  # job="kubeloop-drift", as the alert rules expect
            "selector": {"matchLabels": {"app.kubernetes.io/name": DRIFT_JOB}},
            "endpoints": [{"port": "http", "path": "/metrics", "interval": "15s"}],
        },
    }
    predictor = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {
            "name": PREDICTOR_JOB,
            "namespace": NAMESPACE,
            "labels": {**_labels(), "release": "prometheus"},
        },
        "spec": {
            "selector": {
                "matchLabels": {"app.kubernetes.io/part-of": "kubeloop"},
                "matchExpressions": [
                    {"key": "serving.kserve.io/inferenceservice", "operator": "Exists"}
                ],
            },
            "namespaceSelector": {"any": True},
            "endpoints": [
                {
                    "port": "http",
                    "path": "/metrics",
                    "interval": "15s",
                    "relabelings": [{"targetLabel": "job", "replacement": PREDICTOR_JOB}],
                }
            ],  # fmt: skip
        },
    }
    return [drift, predictor]


def generate() -> dict[str, str]:
    header = GENERATED_HEADER.format(source=SOURCE) + "\n"
    return {
        RULES_PATH: header + rules_file(),
        "manifests/monitoring/prometheusrule.yaml": header + _dump(prometheus_rule()),
        "manifests/monitoring/servicemonitors.yaml": header
        + "---\n".join(_dump(m) for m in service_monitors()),
    }
