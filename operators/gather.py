"""Gathering observations for one pass (shared by both adapters): registry, Prometheus, runs."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime

from kubeloop.operators.crd import (
    PROMOTE_ANNOTATION,
    ROLLBACK_ANNOTATION,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
)
from kubeloop.operators.observe import PrometheusError, PrometheusObserver
from kubeloop.operators.reconciler.types import (
    Observations,
    Phase,
    RegistryVersion,
    RunObservation,
    RunState,
    ServingMode,
    parse_time,
)

log = logging.getLogger(__name__)


def registry_versions(registry, model: str) -> tuple[bool, str, tuple[RegistryVersion, ...]]:
    try:
        versions = registry.list_versions(model)
    except Exception as exc:  # any store failure means "registry unknown", never "no versions"
        return False, f"registry {getattr(registry, 'uri', '?')}: {exc}", ()
    return (
        True,
        "",
        tuple(
            RegistryVersion(v.version, v.gate_passed, v.lineage.get("pipeline_run_id"))
            for v in versions
        ),
    )


def commands_from_annotations(annotations: dict[str, str] | None) -> dict[str, str]:
    annotations = annotations or {}
    out = {}
    if annotations.get(PROMOTE_ANNOTATION):
        out["promote"] = annotations[PROMOTE_ANNOTATION]
    if annotations.get(ROLLBACK_ANNOTATION):
        out["rollback"] = annotations[ROLLBACK_ANNOTATION]
    return out


def gather(
    *,
    now: datetime,
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    registry,
    observer: PrometheusObserver,
    run_status: Callable[[str], RunObservation],
    ready: frozenset[str],
    watched: frozenset[str] | None,
    commands: dict[str, str],
    max_pass_gap_seconds: float = 60.0,
    serving_mode: ServingMode | None = None,
    storage_problem: str = "",
) -> Observations:
    ok, reg_error, versions = registry_versions(registry, spec.model.name)
    # The analysis window: the canary step's or the watch's evidence (from its start, or
    # from the first observed pass after a blind period). A stable version's metrics judge
    # nothing, so they are read over a short fixed range rather than one growing since the
    # deployment (increase() over days on every poll).
    start = {
        Phase.CANARY: status.analysis.evidence_since or status.step_started_at,
        Phase.WATCHING: status.analysis.evidence_since or status.promoted_at,
    }.get(status.phase)
    started = parse_time(start)
    window = (now - started).total_seconds() if started else 300.0
    # A canary's labels count from its first step (AnalysisStatus.accuracy_since).
    labelled = parse_time(status.analysis.accuracy_since) if status.phase == Phase.CANARY else None
    feedback = (now - labelled).total_seconds() if labelled else None
    snapshot = observer.version_metrics(spec.model.name, window, feedback)
    drift, detail, reset_age = None, {}, None
    if snapshot.ok and status.stable_version:
        try:
            drift, detail = observer.drift(spec.model.name, status.stable_version)
            reset_age = observer.drift_reset_age(spec.model.name, status.stable_version)
            if drift is not None:
                detail = {**detail, "version": status.stable_version}
                if reset_age is not None:
                    detail["seconds_since_reset"] = round(reset_age, 1)
        except PrometheusError as exc:
            snapshot = type(snapshot)(False, str(exc), {})
    run = None
    active = (RunState.SUBMITTED, RunState.RUNNING)
    if status.retraining.run_name and status.retraining.state in active:
        try:
            run = run_status(status.retraining.run_name)
            if run.state == RunState.SUCCEEDED and run.registered_version is None and run.run_id:
                found = next((v for v in versions if v.run_id == run.run_id), None)
                run = replace(run, registered_version=found.version if found else None)
        except Exception as exc:  # the run backend being down is transient: no verdict this pass
            log.warning("cannot read run %s: %s", status.retraining.run_name, exc)
    return Observations(
        now=now,
        metrics_ok=snapshot.ok,
        metrics_error=snapshot.error,
        versions=snapshot.versions,
        registry_ok=ok,
        registry_error=reg_error,
        registry_versions=versions,
        drift_detected=drift,
        drift_detail=detail,
        drift_version=status.stable_version,
        drift_reset_age_seconds=reset_age,
        run=run,
        ready_versions=ready,
        watched_versions=watched,
        commands=commands,
        max_pass_gap_seconds=max_pass_gap_seconds,
        min_window_seconds=observer.min_window,
        serving_mode=serving_mode or ServingMode(),
        storage_problem=storage_problem,
    )
