"""One reconcile pass, the same in both runtimes: observe → ``reconcile()`` → dispatch.

The drivers (``cluster/handlers.py`` over kopf and the API server, the local driver over
state files) read the resource and write its status; what they act on differs only in
their ``Actuators``. Registry and drift-service actions are the same everywhere and are
written once in ``SharedActuators``.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Protocol

from kubeloop.operators.crd import ModelDeploymentSpec, ModelDeploymentStatus
from kubeloop.operators.drift_service import DriftServiceClient
from kubeloop.operators.gather import gather
from kubeloop.operators.metrics import RolloutMetrics
from kubeloop.operators.observe import PrometheusObserver
from kubeloop.operators.reconciler.conditions import set_condition
from kubeloop.operators.reconciler.core import Result, reconcile
from kubeloop.operators.reconciler.types import (
    Action,
    Recalibrate,
    RecordDecision,
    RunObservation,
    ServingMode,
    SetChampion,
    SetTraffic,
    SubmitRun,
    WatchDrift,
    iso,
)

from kubeloop.registry.recalibration import publish_recalibrated

log = logging.getLogger(__name__)


class Actuators(Protocol):
    """What one pass observes of, and does to, the runtime serving one ModelDeployment."""

    def ready_versions(self, versions: frozenset[str]) -> frozenset[str]:
        """Which of ``versions`` can take traffic now."""
        ...

    def watched_versions(self) -> frozenset[str] | None:
        """The model's versions the drift service watches now (None: unknown)."""
        ...

    def serving_mode(self) -> ServingMode:
        """How the runtime serves this resource, and whether it can split traffic."""
        ...

    def storage_problem(self) -> str:
        """What predictors here lack to load a model version ("" when nothing)."""
        ...

    def run_status(self, run_name: str) -> RunObservation: ...

    def set_traffic(self, action: SetTraffic) -> None: ...

    def submit_run(self, action: SubmitRun) -> None:
        """Idempotent by ``action.run_name``."""
        ...

    def set_champion(self, version: str) -> None: ...

    def watch_drift(self, version: str, detectors: dict[str, Any]) -> None:
        """A failure is retried by a later pass, which still observes the version unwatched."""
        ...

    def record_decision(self, action: RecordDecision) -> None: ...

    def recalibrate(self, action: Recalibrate) -> None:
        """Idempotent by ``action.name``."""
        ...


class SharedActuators:
    """The champion alias in the model registry and the drift service's watches: the same
    clients in a cluster and locally."""

    def __init__(self, model: str, registry: Any, drift: DriftServiceClient) -> None:
        self.model, self.registry, self.drift = model, registry, drift

    def set_champion(self, version: str) -> None:
        self.registry.set_alias(self.model, "champion", version)

    def watch_drift(self, version: str, detectors: dict[str, Any]) -> None:
        # The core asks for a watch when a version takes over or its canary starts (its
        # detectors must start then: drift evidence counts from the reset after promotion)
        # and when the service does not watch it (arming counts as watched), so every
        # WatchDrift resets; the service does not restart an arming of the same reference.
        self.drift.watch(self.model, version, self.registry.uri, reset=True, detectors=detectors)

    def watched_versions(self) -> frozenset[str] | None:
        return self.drift.watched(self.model)

    def recalibrate(self, action: Recalibrate) -> None:
        version = publish_recalibrated(
            self.registry,
            self.model,
            action.version,
            name=action.name,
            reference_prior=action.reference_prior,
            target_prior=action.target_prior,
        )
        log.info(
            "%s: published %s (%s)", action.name, version.version, version.gate.get("recalibration")
        )


def dispatch(action: Action, actuators: Actuators) -> None:
    if isinstance(action, SetTraffic):
        actuators.set_traffic(action)
    elif isinstance(action, SubmitRun):
        actuators.submit_run(action)
    elif isinstance(action, SetChampion):
        actuators.set_champion(action.version)
    elif isinstance(action, WatchDrift):
        actuators.watch_drift(action.version, dict(action.detectors))
    elif isinstance(action, RecordDecision):
        actuators.record_decision(action)
    elif isinstance(action, Recalibrate):
        actuators.recalibrate(action)


class ReconcileLoop:
    """The operator's loop over one ModelDeployment per call: the observer and the metrics
    it keeps across passes, shared by every resource a driver reconciles."""

    def __init__(
        self, observer: PrometheusObserver, metrics: RolloutMetrics, *, poll_interval: float
    ) -> None:
        self.observer, self.metrics = observer, metrics
        # Passes further apart than this mean the operator was not running (a slow pass,
        # e.g. one that starts a predictor, stays well inside it).
        self.max_pass_gap = max(4.0 * poll_interval, 30.0)

    def run(
        self,
        name: str,
        spec: ModelDeploymentSpec,
        status: ModelDeploymentStatus,
        generation: int,
        now: datetime,
        commands: dict[str, str],
        registry: Any,
        actuators: Actuators,
    ) -> Result:
        """Observes, decides and acts once; returns the new status and the actions taken."""
        known = frozenset(
            v
            for v in (status.stable_version, status.candidate_version, status.previous_version)
            if v
        )
        obs = gather(
            now=now,
            spec=spec,
            status=status,
            registry=registry,
            observer=self.observer,
            run_status=actuators.run_status,
            ready=actuators.ready_versions(known),
            watched=actuators.watched_versions() if status.stable_version else None,
            commands=commands,
            max_pass_gap_seconds=self.max_pass_gap,
            serving_mode=actuators.serving_mode(),
            storage_problem=actuators.storage_problem(),
        )
        result = reconcile(name, spec, status, obs, generation=generation)
        for action in result.actions:
            dispatch(action, actuators)
            if isinstance(action, RecordDecision):
                self.metrics.record(name, action.decision, action.reason)
        self.metrics.canary_percent.labels(name).set(result.status.canary_percent)
        return result


def stalled_on_invalid_spec(
    status: ModelDeploymentStatus, error: Exception, *, now: datetime, generation: int
) -> ModelDeploymentStatus:
    """An invalid spec will not fix itself: the status says why (Stalled, InvalidSpec) and
    the driver stops there, without retries, until the spec changes."""
    status.observed_generation = generation
    status.conditions = set_condition(
        status.conditions,
        "Stalled",
        "True",
        "InvalidSpec",
        str(error),
        now=iso(now),
        generation=generation,
    )
    return status
