"""The operator's own metrics (docs/contracts.md): decisions, canary share, retraining runs."""

from __future__ import annotations

from kubeloop.operators.reconciler.types import Decision
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge


class RolloutMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.decisions = Counter(
            "kubeloop_rollout_decisions_total",
            "Rollout decisions by ModelDeployment, decision and reason (e.g. hold StepTimedOut).",
            ["deployment", "decision", "reason"],
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

    def record(self, deployment: str, decision: Decision, reason: str) -> None:
        self.decisions.labels(deployment, str(decision), reason).inc()
        outcome = {
            Decision.RETRAIN: "submitted",
            Decision.RETRAINED: "succeeded",
            Decision.RETRAIN_FAILED: "failed",
        }.get(decision)
        if outcome:
            self.retraining_runs.labels(deployment, outcome).inc()
