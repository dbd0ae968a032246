"""Drift-triggered retraining: one run at a time, deterministic names, cooldown and backoff."""

from __future__ import annotations

from typing import Any

from kubeloop.operators.reconciler.types import (
    Decision,
    RunState,
    SubmitRun,
    flagged_detectors,
    parse_time,
)

ACTIVE = (RunState.SUBMITTED, RunState.RUNNING)

# Detectors of the inputs and the scores: drift they see moved P(x), whatever P(y|x) did.
INPUT_DETECTORS = frozenset({"mmd", "cvm", "fet", "prediction"})
CONCEPT_DETECTOR = "error_rate"


def concept_drift_alone(detail: dict[str, Any]) -> bool:
    """The error rate of the delayed labels flags while no input or score detector does:
    P(x) held and P(y|x) moved (concept drift)."""
    flagged = flagged_detectors(detail)
    return CONCEPT_DETECTOR in flagged and not flagged & INPUT_DETECTORS


def run_name(deployment: str, stable_version: str, attempt: int) -> str:
    """Deterministic: the same drift episode on the same version never yields two runs."""
    return f"{deployment}-{stable_version}-retrain-{attempt}"


def concept_replay(retraining: Any, detail: dict[str, Any]) -> bool:
    """Whether a run replays ``conceptReplayFraction``: one is set and the evidence is
    concept drift alone (the stable version's labels partly teach the old concept)."""
    return retraining.concept_replay_fraction is not None and concept_drift_alone(detail)


def data_window(retraining: Any, detail: dict[str, Any]) -> str:
    """The window of labelled traffic a run learns from: ``conceptDataWindow`` on concept
    drift alone, when one is set (only the new concept's own labels teach it), else
    ``dataWindow``."""
    if retraining.concept_data_window is not None and concept_drift_alone(detail):
        return retraining.concept_data_window
    return retraining.data_window


def replay_fraction(retraining: Any, detail: dict[str, Any]) -> float:
    """The share of a run's training rows replayed from the stable version's data."""
    if concept_replay(retraining, detail):
        return retraining.concept_replay_fraction
    return retraining.replay_fraction


def distill_weight(retraining: Any, detail: dict[str, Any]) -> float:
    """The weight of the stable version's scores in a run's training targets: 0 on concept
    drift alone (its P(y|x) is the old concept), else ``distillWeight``."""
    return 0.0 if concept_drift_alone(detail) else retraining.distill_weight


def _submit_action(p: Any, name: str) -> SubmitRun:
    retraining = p.spec.retraining
    r, detail = p.s.retraining, p.obs.drift_detail
    # chosen at submission, so a resubmission keeps them; a run submitted before the status
    # recorded one gets it from the evidence now
    window = data_window(retraining, detail) if r.data_window is None else r.data_window
    fraction = (
        replay_fraction(retraining, detail) if r.replay_fraction is None else r.replay_fraction
    )
    weight = distill_weight(retraining, detail) if r.distill_weight is None else r.distill_weight
    parameters = {"model_name": p.spec.model.name, "data_window": window, **retraining.parameters}
    # the stable version's data (replay) and scores (distillation), each when asked for
    taken = {"replay_fraction": fraction, "distill_weight": weight}
    taken = {k: f"{v:.6g}" for k, v in taken.items() if v > 0} if p.s.stable_version else {}
    if taken:
        parameters.update(taken, replay_version=p.s.stable_version)
    if p.reweight_to is not None:  # label shift alone, monitoring.labelShift RetrainReweighted
        parameters["target_positive_rate"] = f"{p.reweight_to:.6g}"
    return SubmitRun(
        run_name=name,
        pipeline=retraining.pipeline.name,
        pipeline_version=retraining.pipeline.version,
        experiment=retraining.pipeline.experiment,
        parameters=parameters,
    )


def track_run(p: Any) -> None:
    """Follows the active run to its end; a run the backend lost is resubmitted (same name)."""
    r = p.s.retraining
    if not r.run_name or r.state not in ACTIVE:
        return
    run = p.obs.run
    if run is None or run.name != r.run_name:
        return
    if run.state == RunState.NOT_FOUND:
        p.actions.append(_submit_action(p, r.run_name))
    elif run.state in (RunState.PENDING, RunState.RUNNING):
        r.state = RunState.RUNNING
    elif run.state == RunState.SUCCEEDED:
        r.state, r.finished_at = RunState.SUCCEEDED, p.now
        r.registered_version = run.registered_version
        registered = run.registered_version or (
            f"no version ({run.message})" if run.message else "no version (gate failed)"
        )
        p.decide(
            Decision.RETRAINED,
            "RunSucceeded",
            f"{r.run_name} registered {registered}",
            run.registered_version,
            {"run": r.run_name},
        )
    elif run.state == RunState.FAILED:
        r.state, r.finished_at = RunState.FAILED, p.now
        r.failures += 1
        p.decide(
            Decision.RETRAIN_FAILED,
            "RunFailed",
            f"{r.run_name} failed: {run.message}",
            r.for_version,
            {"run": r.run_name},
        )


def plan_retraining(p: Any) -> None:
    spec = p.spec.retraining
    r = p.s.retraining
    stable = p.s.stable_version
    if not spec.enabled or p.s.drift != "Sustained" or r.state in ACTIVE:
        return
    same_episode = r.for_version == stable
    attempts = r.attempts if same_episode else 0
    failures = r.failures if same_episode else 0
    if attempts >= spec.max_attempts:
        msg = f"drift on {stable} persists after {attempts} retraining runs (maxAttempts {spec.max_attempts})"
        p.stalled = ("True", "RetrainingExhausted", msg)
        p.decide(Decision.HOLD, "RetrainingExhausted", msg, stable)
        return
    last = parse_time(r.submitted_at)
    if last is not None and (p.obs.now - last).total_seconds() < spec.cooldown_seconds:
        msg = f"drift on {stable}; retraining cooldown until {spec.cooldown_seconds}s after {r.submitted_at}"
        p.decide(Decision.HOLD, "RetrainingCooldown", msg, stable)
        return
    finished = parse_time(r.finished_at)
    if same_episode and r.state == RunState.FAILED and failures and finished is not None:
        delay = spec.backoff_seconds * 2 ** (failures - 1)
        if (p.obs.now - finished).total_seconds() < delay:
            p.decide(
                Decision.HOLD,
                "RetrainingBackoff",
                f"last run failed; retrying {delay}s after {r.finished_at}",
                stable,
            )
            return
    attempt = attempts + 1
    name = run_name(p.name, stable, attempt)
    r.run_name, r.state, r.for_version = name, RunState.SUBMITTED, stable
    r.attempts, r.failures = attempt, failures
    r.submitted_at, r.finished_at, r.registered_version = p.now, None, None
    concept = concept_replay(spec, p.obs.drift_detail)
    r.data_window = data_window(spec, p.obs.drift_detail)
    r.replay_fraction = replay_fraction(spec, p.obs.drift_detail)
    r.distill_weight = distill_weight(spec, p.obs.drift_detail)
    p.actions.append(_submit_action(p, name))
    reweighted = (
        f", its classes re-weighted to a positive prior of {p.reweight_to:.2%}"
        if p.reweight_to is not None
        else ""
    )
    replayed = (
        f", {r.replay_fraction:.0%} of its training rows replayed from {stable}'s data"
        + (
            " (concept drift: the error rate flagged, no input or score detector)"
            if concept
            else ""
        )
        if r.replay_fraction > 0
        else ""
    )
    windowed = (
        f", learning from {r.data_window} of labelled traffic (concept drift alone)"
        if r.data_window != spec.data_window
        else ""
    )
    distilled = (
        f", its targets distilled toward {stable}'s scores (weight {r.distill_weight:g})"
        if r.distill_weight > 0
        else ""
    )
    p.decide(
        Decision.RETRAIN,
        "DriftSustained",
        f"drift on {stable} sustained; submitted {name}{windowed}{reweighted}{replayed}{distilled}",
        stable,
        {"run": name, **p.obs.drift_detail},
    )
