"""The operator's own metrics (docs/contracts.md): decisions, canary share, retraining runs."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.decisions = Counter(
            "kubeloop_rollout_decisions_total",
            "Rollout decisions by ModelDeployment and decision.",
            ["deployment", "decision"],
            registry=registry,
        )
        self.canary_percent = Gauge(
            "kubeloop_rollout_canary_percent",
            "Share of traffic on the canary version.",
            ["deployment"],
            registry=registry,
        )
        self.retraining_runs = Counter(
            "kubeloop_retraining_runs_total",
            "Retraining runs by ModelDeployment and outcome (submitted, succeeded, failed).",
            ["deployment", "outcome"],
            registry=registry,
        )

    def record(self, deployment: str, decision: str) -> None:
        self.decisions.labels(deployment, decision).inc()
        outcome = {
            "retrain": "submitted",
            "retrained": "succeeded",
            "retrain-failed": "failed",
        }.get(decision)
        if outcome:
            self.retraining_runs.labels(deployment, outcome).inc()
