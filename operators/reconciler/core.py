"""The reconciler core: (spec, status, observations) → (new status, actions). No I/O.

Level-triggered: every pass recomputes the desired serving state from the spec, the
status and what was observed, so replaying the same observations yields the same
actions, and every side effect it asks for is idempotent (a traffic split is a desired
state, a pipeline run has a deterministic name, the champion alias is a set).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from kubeloop.operators.crd import (
    HISTORY_LIMIT,
    AnalysisStatus,
    ApprovalMode,
    LabelShiftAction,
    LabelSplit,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    RetrainingStatus,
    StepTimeoutAction,
    VersionPolicy,
)
from kubeloop.operators.crd import Decision as HistoryEntry
from kubeloop.operators.reconciler.analysis import (
    analyse,
    closed_step,
    detectability,
    label_splits,
    watch_check,
)
from kubeloop.operators.reconciler.conditions import set_condition
from kubeloop.operators.reconciler.retraining import plan_retraining, track_run
from kubeloop.operators.reconciler.stats import Verdict
from kubeloop.operators.reconciler.types import (
    Action,
    Decision,
    Observations,
    Phase,
    Recalibrate,
    RecordDecision,
    RunState,
    SetChampion,
    SetTraffic,
    VersionMetrics,
    WatchDrift,
    flagged_detectors,
    iso,
    parse_time,
)

PENDING, STABLE, CANARY, WATCHING = Phase.PENDING, Phase.STABLE, Phase.CANARY, Phase.WATCHING

# The drift service resets a version's detectors when the pass that made it stable asks it
# to (WatchDrift), so a reset measured a little before that pass still belongs to it: the
# age is read from Prometheus a query later than ``obs.now``. A watch from before (the
# canary's, or the one before a rollback) is older by at least a canary step.
WATCH_SLACK_SECONDS = 2.0
# status.drift values that flag drift on the stable version (its scores moved with it)
DRIFTING = frozenset({"Detected", "Sustained", "LabelShift"})


@dataclass(frozen=True)
class Result:
    status: ModelDeploymentStatus
    actions: tuple[Action, ...]

    @property
    def decisions(self) -> list[RecordDecision]:
        return [a for a in self.actions if isinstance(a, RecordDecision)]


class _Pass:
    """The mutable scratch state of one reconcile pass."""

    def __init__(
        self,
        name: str,
        spec: ModelDeploymentSpec,
        status: ModelDeploymentStatus,
        obs: Observations,
        generation: int,
    ) -> None:
        self.name = name
        self.spec = spec
        self.s = status.model_copy(deep=True)
        self.obs = obs
        self.now = iso(obs.now)
        self.generation = generation
        self.actions: list[Action] = []
        self.progress: tuple[str, str, str] = ("False", "Idle", "no rollout in progress")
        self.stalled: tuple[str, str, str] = ("False", "Progressing", "")
        self.drift_unknown: tuple[str, str] = ("MetricsUnavailable", "no drift metrics")
        # Label shift alone under RetrainReweighted: the prior a retraining run re-weights to.
        self.reweight_to: float | None = None

    def decide(
        self,
        decision: Decision,
        reason: str,
        message: str,
        version: str | None,
        evidence: dict | None = None,
    ) -> None:
        evidence = evidence or {}
        # Drift notes interleave with rollout holds; they do not end a run of identical holds.
        last = next((h for h in reversed(self.s.history) if h.decision != Decision.DRIFT), None)
        # Holds repeat every poll; only a change of decision, reason or version is history.
        repeatable = decision in (Decision.HOLD, Decision.IGNORE)
        if (
            repeatable
            and last
            and (last.decision, last.reason, last.version) == (decision, reason, version)
        ):
            return
        entry = HistoryEntry(
            time=self.now,
            decision=decision,
            reason=reason,
            message=message,
            version=version,
            evidence=evidence,
        )
        self.s.history = [*self.s.history, entry][-HISTORY_LIMIT:]
        self.actions.append(RecordDecision(decision, reason, message, version, evidence))

    def elapsed(self, since: str | None) -> float:
        start = parse_time(since)
        return (self.obs.now - start).total_seconds() if start else 0.0

    def condition(self, type_: str, status: str, reason: str, message: str) -> None:
        self.s.conditions = set_condition(
            self.s.conditions,
            type_,
            status,
            reason,
            message,
            now=self.now,
            generation=self.generation,
        )


def reconcile(
    name: str,
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus | None,
    obs: Observations,
    *,
    generation: int = 1,
) -> Result:
    p = _Pass(name, spec, status or ModelDeploymentStatus(), obs, generation)
    p.s.observed_generation = generation
    if obs.storage_problem:
        # Any predictor created or changed now could not load its model: nothing is
        # deployed, stepped or rolled back (commands wait) until the storage is there.
        _storage_not_configured(p)
        _conditions(p)
        return Result(p.s, tuple(p.actions))
    _commands(p)
    if p.s.stable_version is None:
        _first_deploy(p)
    else:
        track_run(p)
        # A canary that starts in this pass is judged from the next pass on.
        if p.s.phase == STABLE and p.s.candidate_version is None:
            _start_canary(p)
        elif p.s.phase == STABLE:
            _candidate_waiting(p)
        elif p.s.phase == CANARY:
            _canary_step(p)
        elif p.s.phase == WATCHING:
            _watch(p)
        _drift(p)
        if p.s.phase == STABLE and p.s.candidate_version is None:
            plan_retraining(p)
    if p.s.stable_version:
        _drift_watches(p)
        p.actions.insert(0, _traffic(p))
    _conditions(p)
    return Result(p.s, tuple(p.actions))


# --- version selection -------------------------------------------------------------------
def _target_version(p: _Pass) -> str | None:
    model = p.spec.model
    if model.version_policy == VersionPolicy.PINNED:
        return model.version
    passed = [
        v
        for v in p.obs.registry_versions
        if v.gate_passed and v.version not in p.s.rejected_versions
    ]
    return max(passed, key=lambda v: v.number).version if passed else None


def _first_deploy(p: _Pass) -> None:
    if not p.obs.registry_ok:
        p.s.phase = PENDING
        p.progress = (
            "Unknown",
            "RegistryUnavailable",
            p.obs.registry_error or "registry unreachable",
        )
        return
    target = _target_version(p)
    known = {v.version for v in p.obs.registry_versions}
    if target is None or target not in known:
        p.s.phase = PENDING
        p.progress = (
            "False",
            "NoVersion",
            f"no servable version of {p.spec.model.name} in the registry",
        )
        return
    p.s.stable_version = target
    p.s.phase = STABLE
    p.s.canary_percent = 0
    # promotedAt: when the stable version took over; its drift evidence counts from then.
    p.s.promoted_at = p.now
    p.actions += [SetChampion(target), _watching(p, target)]
    p.decide(Decision.DEPLOY, "FirstDeployment", f"serving {target}", target)


def _next_candidate(p: _Pass) -> str | None:
    """The version to roll out next: the target when it is in the registry, not the stable
    version, not rejected and (LatestPassed) newer than the stable one."""
    if not p.obs.registry_ok:
        return None
    target = _target_version(p)
    stable = p.s.stable_version
    known = {v.version for v in p.obs.registry_versions}
    if not target or target == stable or target not in known or target in p.s.rejected_versions:
        return None
    if p.spec.model.version_policy == VersionPolicy.LATEST_PASSED and int(target[1:]) <= int(
        stable[1:]
    ):
        return None
    return target


def _start_canary(p: _Pass) -> None:
    target = _next_candidate(p)
    if target is None:
        return
    if not p.obs.serving_mode.splits_traffic:
        p.s.candidate_version = target
        _candidate_waiting(p)
        return
    p.s.candidate_version = target
    p.s.phase = CANARY
    p.s.step_index = 0
    p.s.canary_percent = p.spec.rollout.steps[0]
    p.s.step_started_at = p.now
    _new_window(p)
    # Watched from its first pass, so its delayed labels feed the live-accuracy analysis.
    p.actions.append(_watching(p, target))
    p.decide(Decision.CANARY, "NewCandidate", f"canary {target} at {p.s.canary_percent}%", target)


def _candidate_waiting(p: _Pass) -> None:
    """A candidate the serving runtime cannot canary (no traffic split, e.g. KServe's
    RawDeployment, where ``canaryTrafficPercent`` is ignored and the new version would take
    all traffic at once): it takes no traffic and waits for a manual promotion, which
    replaces the stable version at 100 % and is then watched like any promotion."""
    cand, stable, mode = p.s.candidate_version, p.s.stable_version, p.obs.serving_mode
    if mode.splits_traffic:  # the runtime splits now: the canary starts as usual
        p.s.candidate_version = None
        _start_canary(p)
        return
    p.s.phase, p.s.canary_percent, p.s.step_index = STABLE, 0, 0
    newer = _next_candidate(p)
    if newer and newer != cand:
        p.s.candidate_version = cand = newer  # a newer version supersedes the waiting one
    msg = (
        f"{mode.name} (from {mode.source}) cannot split traffic, so no canary runs: {cand} "
        f"takes no traffic until `kubeloop rollout promote {p.name}` replaces {stable} with "
        f"it at 100 % (then watched for {p.spec.rollout.watch_window_seconds}s)"
    )
    p.progress = ("False", "CanaryNotSupported", msg)
    p.decide(Decision.HOLD, "CanaryNotSupported", msg, cand)


# --- evidence windows --------------------------------------------------------------------
def _new_window(
    p: _Pass, *, keep_accuracy: bool = False, label_steps: list[LabelSplit] | None = None
) -> None:
    """A canary step or a post-promotion watch starts: its evidence starts now, the live
    accuracy's too unless ``keep_accuracy`` (the next step of the same canary), then with
    the earlier steps' labels ``label_steps``."""
    kept = p.s.analysis.accuracy_since if keep_accuracy else None
    p.s.analysis = AnalysisStatus(
        evidence_since=p.now,
        accuracy_since=kept or p.now,
        label_steps=(label_steps or []) if kept else [],
        last_observed_at=p.now if _blind(p) is None else None,
    )


def _splits_known(a: AnalysisStatus) -> bool:
    """Whether the labels since ``accuracy_since`` are known per step: they start with this
    step, or every earlier step's are recorded (a status from before ``label_steps`` holds
    pooled labels of steps it did not record: a sequence per version judges those)."""
    return a.accuracy_since is None or a.accuracy_since == a.evidence_since or bool(a.label_steps)


def _blind(p: _Pass) -> tuple[str, str] | None:
    """Why this pass cannot observe the evidence (reason, message), or None."""
    if not p.obs.metrics_ok:
        return "MetricsUnavailable", p.obs.metrics_error or "Prometheus unreachable"
    if p.obs.watched_versions is None:
        return "DriftServiceUnavailable", "the drift service (labels, detectors) is unreachable"
    return None


def _observe(p: _Pass, *, restart_time: bool) -> tuple[str, str] | None:
    """Accounts this pass's time to the evidence window. Only time observed with evidence
    available and the operator running counts: after a blind pass, or a gap between passes
    longer than ``max_pass_gap_seconds`` (the operator was down), the window restarts (and,
    with ``restart_time``, its observed time too). Returns ``(reason, message)`` when the
    pass is blind or the window restarted in it (the metrics read cover the old window)."""
    a = p.s.analysis
    blind = _blind(p)
    if blind is not None:
        a.blind_since = a.blind_since or p.now
        a.last_observed_at = None
        return blind
    last = parse_time(a.last_observed_at)
    gap = (p.obs.now - last).total_seconds() if last else None
    a.last_observed_at = p.now
    if gap is not None and gap <= p.obs.max_pass_gap_seconds:
        a.observed_seconds += max(gap, 0.0)
        return None
    cause = (
        f"evidence was unavailable since {a.blind_since}"
        if a.blind_since
        else f"no pass for {gap:.0f}s (operator not running)"
        if gap is not None
        else "no observed pass yet"
    )
    a.evidence_since, a.accuracy_since, a.blind_since = p.now, p.now, None
    a.label_steps = []
    if restart_time:
        a.observed_seconds = 0.0
    return "EvidenceRestarted", f"{cause}; the evidence window restarts now"


# --- canary ------------------------------------------------------------------------------
def _canary_step(p: _Pass) -> None:
    rollout = p.spec.rollout
    cand, stable = p.s.candidate_version, p.s.stable_version
    if not p.obs.serving_mode.splits_traffic:
        # The runtime stopped splitting (its mode changed): the canary gets no traffic and
        # no verdict; it waits for a manual promotion instead.
        _candidate_waiting(p)
        return
    if rollout.paused:
        p.progress = ("False", "Paused", f"rollout of {cand} paused at {p.s.canary_percent}%")
        p.decide(Decision.HOLD, "Paused", p.progress[2], cand)
        return
    if cand not in p.obs.ready_versions:
        # Time in a step counts from when the candidate can take traffic.
        p.s.step_started_at = p.now
        _new_window(p)
        p.progress = ("True", "CandidateNotReady", f"waiting for {cand} to become ready")
        return
    held = _observe(p, restart_time=True)
    if held is not None:
        reason, message = held
        msg = f"hold: {message}"
        p.progress = ("Unknown" if reason != "EvidenceRestarted" else "True", reason, msg)
        p.decide(Decision.HOLD, reason, msg, cand)
        return
    if cand not in p.obs.versions or stable not in p.obs.versions:
        missing = [v for v in (cand, stable) if v not in p.obs.versions]
        msg = f"hold: no metrics for {', '.join(missing)}"
        p.progress = ("Unknown", "MetricsMissing", msg)
        p.decide(Decision.HOLD, "MetricsMissing", msg, cand)
        return
    a = p.s.analysis
    canary_m, stable_m = p.obs.versions[cand], p.obs.versions[stable]
    # Labels are randomized splits, one per step, as the step's requests are one.
    splits_known = _splits_known(a)
    result = analyse(
        canary_m,
        stable_m,
        rollout.analysis,
        min_samples=rollout.min_samples,
        elapsed_seconds=a.observed_seconds,
        # The metrics' shortest range must not reach back before the evidence window.
        min_seconds=max(rollout.min_step_seconds, int(math.ceil(p.obs.min_window_seconds))),
        stable_drifting=p.s.drift in DRIFTING,
        earlier_labels=label_splits(a.label_steps) if splits_known else None,
    )
    if result.reason not in ("NotEnoughEvidence", "StepTooYoung"):
        # Rates over the whole evidence window (past the gates it is the metrics' range).
        a.seconds_to_detect, a.detectability = detectability(
            canary_m, stable_m, rollout.analysis, a.observed_seconds, randomized=splits_known
        )
    evidence = {
        "step": p.s.canary_percent,
        "observed_seconds": round(a.observed_seconds, 1),
        "checks": result.evidence(),
    }
    if result.verdict == Verdict.FAIL:
        _reject_candidate(p, result.reason, result.message, evidence)
        return
    elapsed = p.elapsed(p.s.step_started_at)
    if elapsed > rollout.max_step_seconds:  # a verdict after the deadline does not count
        # Held by the score-based estimate alone: never a rollback on it.
        estimate_only = result.reason == "EstimatedAccuracyLower"
        _step_timed_out(p, elapsed, result.message, evidence, hold=estimate_only)
        return
    if result.verdict == Verdict.INCONCLUSIVE:
        p.progress = ("True", result.reason, result.message)
        p.decide(Decision.HOLD, result.reason, result.message, cand, evidence)
        _warn_if_undecidable(p, canary_m, stable_m)
        return
    next_index = p.s.step_index + 1
    if rollout.steps[next_index] < 100:
        closed = [
            *a.label_steps, closed_step(canary_m, stable_m, a.label_steps, p.s.canary_percent)
        ]  # fmt: skip
        p.s.step_index = next_index
        p.s.canary_percent = rollout.steps[next_index]
        p.s.step_started_at = p.now
        _new_window(p, keep_accuracy=True, label_steps=closed if splits_known else None)
        p.progress = ("True", "CanaryStep", f"canary {cand} at {p.s.canary_percent}%")
        p.decide(
            Decision.STEP,
            "AnalysisPassed",
            f"{cand} passed; canary to {p.s.canary_percent}%",
            cand,
            evidence,
        )
        return
    if rollout.approval == ApprovalMode.MANUAL:
        msg = f"{cand} passed every step; waiting for `kubeloop rollout promote {p.name}`"
        p.progress = ("True", "AwaitingApproval", msg)
        p.decide(Decision.HOLD, "AwaitingApproval", msg, cand, evidence)
        return
    _promote(p, "AnalysisPassed", f"{cand} passed every step", evidence)


def _step_timed_out(
    p: _Pass, elapsed: float, why: str, evidence: dict, *, hold: bool = False
) -> None:
    """No verdict by ``maxStepSeconds``: the spec's ``onStepTimeout`` decides (``hold``:
    it holds whatever the spec says)."""
    rollout = p.spec.rollout
    cand = p.s.candidate_version
    msg = f"no verdict on {cand} after {elapsed:.0f}s at {p.s.canary_percent}% ({why})"
    if rollout.on_step_timeout == StepTimeoutAction.ROLLBACK and not hold:
        _reject_candidate(p, "StepTimedOut", msg, evidence)
        return
    p.stalled = ("True", "StepTimedOut", msg)
    waiting = f"{msg}; waiting for `kubeloop rollout promote|rollback {p.name}`"
    p.progress = ("False", "StepTimedOut", waiting)
    p.decide(Decision.HOLD, "StepTimedOut", waiting, cand, evidence)


def _warn_if_undecidable(p: _Pass, canary: VersionMetrics, stable: VersionMetrics) -> None:
    """Once per evidence window: the configured analysis cannot reach a verdict on an
    accuracy drop of the configured size before the step times out."""
    a, rollout = p.s.analysis, p.spec.rollout
    if a.warned or not a.detectability:
        return
    if min(canary.feedback, stable.feedback) < rollout.analysis.min_feedback:
        return
    if a.seconds_to_detect is not None and a.seconds_to_detect <= rollout.max_step_seconds:
        return
    a.warned = True
    msg = f"{a.detectability}; maxStepSeconds is {rollout.max_step_seconds}s"
    p.decide(
        Decision.HOLD,
        "CannotDecideInTime",
        msg,
        p.s.candidate_version,
        {"seconds_to_detect": a.seconds_to_detect, "step": p.s.canary_percent},
    )


def _promote(p: _Pass, reason: str, message: str, evidence: dict) -> None:
    cand, stable = p.s.candidate_version, p.s.stable_version
    baseline = p.obs.versions.get(stable)
    p.s.watch_baseline = (
        {
            "requests": baseline.requests,
            "server_errors": baseline.server_errors,
            "feedback": baseline.feedback,
            "feedback_incorrect": baseline.feedback_incorrect,
        }
        if baseline
        else {}
    )
    p.s.previous_version, p.s.stable_version, p.s.candidate_version = stable, cand, None
    p.s.canary_percent, p.s.step_index = 0, 0
    p.s.promoted_at = p.s.step_started_at = p.now
    p.s.phase = WATCHING if p.spec.rollout.watch_window_seconds > 0 else STABLE
    _new_window(p)
    p.s.drift_since, p.s.drift = None, "None"
    p.actions += [SetChampion(cand), _watching(p, cand)]
    p.progress = ("True", "Watching", f"watching {cand} for {p.spec.rollout.watch_window_seconds}s")
    p.decide(Decision.PROMOTE, reason, message, cand, evidence)


def _reject_candidate(p: _Pass, reason: str, message: str, evidence: dict) -> None:
    cand = p.s.candidate_version
    p.s.rejected_versions = [*p.s.rejected_versions, cand][-HISTORY_LIMIT:]
    p.s.candidate_version, p.s.canary_percent, p.s.step_index = None, 0, 0
    p.s.phase = STABLE
    p.progress = ("False", "RolledBack", f"{cand} rolled back: {message}")
    p.decide(Decision.ROLLBACK, reason, f"{cand} rolled back: {message}", cand, evidence)


def _rollback_promotion(p: _Pass, reason: str, message: str, evidence: dict) -> None:
    bad, previous = p.s.stable_version, p.s.previous_version
    p.s.rejected_versions = [*p.s.rejected_versions, bad][-HISTORY_LIMIT:]
    p.s.stable_version, p.s.previous_version = previous, None
    # promotedAt: when the stable version took over, here again (see _first_deploy).
    p.s.phase, p.s.promoted_at, p.s.watch_baseline = STABLE, p.now, {}
    p.s.drift_since, p.s.drift = None, "None"
    p.actions += [SetChampion(previous), _watching(p, previous)]
    p.progress = ("False", "RolledBack", f"{bad} rolled back to {previous}: {message}")
    p.decide(
        Decision.ROLLBACK, reason, f"{bad} rolled back to {previous}: {message}", bad, evidence
    )


def _watch(p: _Pass) -> None:
    """After promotion: confirmed once the window was observed (time with evidence
    available) and the required checks passed on the evidence window; rolled back when
    the promoted version is worse than the previous stable was in its last step."""
    stable, rollout = p.s.stable_version, p.spec.rollout
    window = rollout.watch_window_seconds
    a = p.s.analysis
    held = _observe(p, restart_time=False)
    observed = f"{a.observed_seconds:.0f}s of {window}s observed"
    if held is not None:
        reason, message = held
        msg = f"watching {stable}: {message} ({observed})"
        p.progress = ("Unknown" if reason != "EvidenceRestarted" else "True", reason, msg)
        p.decide(Decision.HOLD, reason, msg, stable)
        return
    if stable not in p.obs.versions:
        msg = f"watching {stable}: no metrics for it ({observed})"
        p.progress = ("Unknown", "MetricsMissing", msg)
        p.decide(Decision.HOLD, "MetricsMissing", msg, stable)
        return
    result = watch_check(
        p.obs.versions[stable],
        p.s.watch_baseline,
        rollout.analysis,
        min_samples=rollout.min_samples,
    )
    evidence = {"observed_seconds": round(a.observed_seconds, 1), "checks": result.evidence()}
    if result.verdict == Verdict.FAIL:
        _rollback_promotion(p, result.reason, result.message, evidence)
        return
    if a.observed_seconds >= window and result.verdict == Verdict.PASS:
        p.s.phase = STABLE
        p.decide(
            Decision.CONFIRM,
            "WatchWindowPassed",
            f"{stable} held up for {window}s observed",
            stable,
            evidence,
        )
        return
    elapsed = p.elapsed(p.s.promoted_at)
    if elapsed > window + rollout.max_step_seconds:
        msg = f"no verdict on {stable} {elapsed:.0f}s after its promotion ({result.message})"
        if rollout.on_step_timeout == StepTimeoutAction.ROLLBACK:
            _rollback_promotion(p, "WatchTimedOut", msg, evidence)
            return
        p.stalled = ("True", "WatchTimedOut", msg)
    p.progress = (
        "True",
        "Watching",
        f"watching {stable} after promotion: {observed}; {result.message}",
    )


# --- serving and drift watches -----------------------------------------------------------
def _traffic(p: _Pass) -> SetTraffic:
    canary = p.s.candidate_version if p.s.phase == CANARY else None
    # The previous version stays warm while the promotion is watched: rolling back to it
    # must not wait for a predictor to start.
    warm = p.s.phase == WATCHING and p.s.previous_version
    return SetTraffic(
        p.s.stable_version,
        canary,
        p.s.canary_percent if canary else 0,
        frozenset({p.s.previous_version}) if warm else frozenset(),
    )


def _drift_watches(p: _Pass) -> None:
    """The drift service watches the stable version (its drift is what retraining acts on)
    and the canary (its detectors; its labels are counted from its first request, watched or
    not, as the live-accuracy evidence). A version it does not watch now (never
    watched, a watch that failed, or forgotten by a restart) is watched again; while the
    watched set is unknown, only the watches a transition asks for are sent. The stable
    version is also watched again when spec.monitoring.detectors changed since its watch."""
    stable, settings = p.s.stable_version, _detector_key(p)
    asked = {a.version for a in p.actions if isinstance(a, WatchDrift)}
    if stable in asked:
        p.s.watched_detectors = settings
    watched = p.obs.watched_versions
    if watched is None:
        return
    wanted = [stable]
    if p.s.phase == CANARY and p.s.candidate_version:
        wanted.append(p.s.candidate_version)
    for version in wanted:
        if version not in asked and (version not in watched or (
            version == stable and p.s.watched_detectors != settings
        )):  # fmt: skip
            p.actions.append(_watching(p, version))
            if version == stable:
                p.s.watched_detectors = settings


def _detector_key(p: _Pass) -> str | None:
    """The detector settings as the status records them (None: the service's own)."""
    settings = p.spec.monitoring.drift_settings()
    return json.dumps(settings, sort_keys=True) if settings else None


def _watching(p: _Pass, version: str) -> WatchDrift:
    """A watch of ``version`` with the detectors the spec asks for."""
    return WatchDrift(version, tuple(sorted(p.spec.monitoring.drift_settings().items())))


# --- manual commands ---------------------------------------------------------------------
def _commands(p: _Pass) -> None:
    for command in ("promote", "rollback"):
        version = p.obs.commands.get(command)
        key = f"{command}:{version}"
        if not version or key in p.s.handled_commands:
            continue
        p.s.handled_commands = [*p.s.handled_commands, key][-10:]
        # A candidate waiting without a traffic split (phase Stable) is promoted or dropped
        # the same way as a canary.
        is_candidate = p.s.phase in (CANARY, STABLE) and p.s.candidate_version == version
        if command == "promote" and is_candidate:
            _promote(p, "ManualPromotion", f"{version} promoted by an operator", {"manual": True})
        elif command == "rollback" and is_candidate:
            _reject_candidate(p, "ManualRollback", "by an operator", {"manual": True})
        elif command == "rollback" and p.s.stable_version == version and p.s.previous_version:
            _rollback_promotion(p, "ManualRollback", "by an operator", {"manual": True})
        else:
            p.decide(
                Decision.IGNORE,
                "CommandNotApplicable",
                f"{command} {version}: not the candidate or stable version",
                version,
            )


# --- drift -------------------------------------------------------------------------------
def drift_evidence(
    status: ModelDeploymentStatus, obs: Observations
) -> tuple[bool | None, str, str]:
    """The drift flag as evidence about the stable version since it became stable.

    Returns ``(flag, reason, message)``; ``flag`` is ``None`` when there is no such
    evidence: no data, a flag about another version (the pass that promotes still holds
    the previous stable version's), or detectors last reset before the stable version
    took over (a latched alarm from its canary, or from a watch before this deployment,
    until the drift service's reset shows in Prometheus).
    """
    if not obs.metrics_ok or obs.drift_detected is None:
        return None, "MetricsUnavailable", obs.metrics_error or "no drift metrics"
    stable = status.stable_version
    if obs.drift_version is not None and obs.drift_version != stable:
        return (
            None,
            "EvidenceForAnotherVersion",
            f"drift evidence is about {obs.drift_version}, not the stable version {stable}",
        )
    took_over = parse_time(status.promoted_at)
    age = obs.drift_reset_age_seconds
    if took_over is not None and age is not None:
        since = (obs.now - took_over).total_seconds()
        if age > since + WATCH_SLACK_SECONDS:
            return (
                None,
                "EvidenceBeforeTakeover",
                f"{stable}'s drift detectors were reset {age:.0f}s ago, before it became "
                f"stable {since:.0f}s ago; waiting for the drift service to watch it again",
            )
    return obs.drift_detected, "", ""


LABEL_SHIFT_DETECTOR = "predicted_class"


def label_shift_alone(detail: dict[str, Any]) -> bool:
    """Only the predicted-class detector flags: the share of positive predictions moved
    while no input, score or error-rate detector saw a change."""
    return flagged_detectors(detail) == {LABEL_SHIFT_DETECTOR}


def label_shift_message(version: str, detail: dict[str, Any]) -> str:
    """The label-shift evidence in words: predicted positives and estimated prior against
    the reference's (from the drift service's kubeloop_positive_rate)."""
    rates = detail.get("positive_rate") or {}

    def pct(key: str) -> str:
        return percent(rates.get(key))

    return (
        f"the share of positive predictions moved on {version} (label shift, or drift the "
        f"other detectors have not seen yet): positive predictions {pct('predicted')} "
        f"(reference {pct('reference_predicted')}), positive class prior estimated "
        f"{pct('estimated')} (reference {pct('reference')})"
    )


def percent(value: float | None) -> str:
    return "?" if value is None else f"{100 * value:.1f} %"


def moved_inputs(detail: dict[str, Any]) -> str:
    """The inputs that moved most (the drift service's batch tests), in words; empty when
    none did."""
    return ", ".join(f"{m['feature']} (p {m['p_value']:.2g})" for m in detail.get("moved") or [])


def moved_message(detail: dict[str, Any]) -> str:
    named = moved_inputs(detail)
    return f"; inputs that moved most: {named}" if named else ""


def _drift(p: _Pass) -> None:
    detected, reason, message = drift_evidence(p.s, p.obs)
    if detected is None:
        p.s.drift = "Unknown"
        p.drift_unknown = (reason, message)
        return
    if not detected:
        p.s.drift_since, p.s.drift = None, "None"
        return
    detail = p.obs.drift_detail
    alone = label_shift_alone(detail)
    action = p.spec.monitoring.label_shift.action
    if alone and action in (LabelShiftAction.ALERT, LabelShiftAction.RECALIBRATE):
        if p.s.drift != "LabelShift":
            p.s.drift_since = p.now
            then = (
                "no retraining"
                if action == LabelShiftAction.ALERT
                else "the threshold is recalibrated once it persists, no retraining"
            )
            p.decide(
                Decision.ALERT,
                "LabelShift",
                f"{label_shift_message(p.s.stable_version, detail)}; monitoring.labelShift."
                f"action is {action}: {then}",
                p.s.stable_version,
                detail,
            )
        p.s.drift = "LabelShift"
        if action == LabelShiftAction.RECALIBRATE:
            _recalibrate(p, detail)
        return
    if alone and action == LabelShiftAction.RETRAIN_REWEIGHTED:
        p.reweight_to = _prior(detail, "estimated")
    if p.s.drift_since is None or p.s.drift == "LabelShift":
        p.s.drift_since = p.now
        p.decide(
            Decision.DRIFT,
            "LabelShiftDetected" if alone else "DriftDetected",
            (
                label_shift_message(p.s.stable_version, detail)
                if alone
                else f"drift on {p.s.stable_version}"
            )
            + moved_message(detail),  # fmt: skip
            p.s.stable_version,
            detail,
        )
    sustained = p.elapsed(p.s.drift_since) >= p.spec.monitoring.drift_duration_seconds
    p.s.drift = "Sustained" if sustained else "Detected"


def _prior(detail: dict[str, Any], source: str) -> float | None:
    """A positive class prior of the drift evidence (``kubeloop_positive_rate`` by
    source) that a threshold or a re-weighting can use: strictly between 0 and 1."""
    value = (detail.get("positive_rate") or {}).get(source)
    return float(value) if isinstance(value, float | int) and 0 < value < 1 else None


def _recalibrate(p: _Pass, detail: dict[str, Any]) -> None:
    """Label shift alone, sustained: the stable version is published again with its
    threshold moved for the estimated prior, once per stable version (the new version then
    rolls out as a canary, judged like any other)."""
    stable = p.s.stable_version
    if p.s.recalibrated_for == stable:
        return
    if p.elapsed(p.s.drift_since) < p.spec.monitoring.drift_duration_seconds:
        return
    reference, estimated = _prior(detail, "reference"), _prior(detail, "estimated")
    if reference is None or estimated is None:
        p.decide(
            Decision.HOLD,
            "PriorUnknown",
            f"label shift on {stable} persists, but the drift service gives no prior to "
            "recalibrate for (reference or estimate missing, 0 or 1)",
            stable,
            detail,
        )
        return
    name = f"{p.name}-{stable}-recalibrate"
    p.s.recalibrated_for = stable
    p.actions.append(Recalibrate(stable, name, float(reference), float(estimated)))
    p.decide(
        Decision.RECALIBRATE,
        "LabelShiftSustained",
        f"label shift on {stable} sustained: publishing {stable} again with its threshold "
        f"moved for a positive prior of {percent(estimated)} (reference {percent(reference)}) "
        f"as {name}",
        stable,
        {"recalibration": name, **detail},
    )


# --- storage -----------------------------------------------------------------------------
def _storage_not_configured(p: _Pass) -> None:
    """The namespace lacks what predictors download model versions with: an administrator
    has to add it, so the resource is Stalled until a pass sees it there."""
    msg = p.obs.storage_problem
    if p.s.stable_version is None:
        p.s.phase = PENDING
    p.progress = ("False", "StorageNotConfigured", msg)
    p.stalled = ("True", "StorageNotConfigured", msg)
    p.decide(
        Decision.HOLD,
        "StorageNotConfigured",
        msg,
        p.s.candidate_version or p.s.stable_version,
    )


# --- conditions --------------------------------------------------------------------------
def _conditions(p: _Pass) -> None:
    s = p.s
    if s.stable_version is None:
        reason = "StorageNotConfigured" if p.obs.storage_problem else "NoVersion"
        p.condition("Ready", "False", reason, p.progress[2])
    elif s.stable_version in p.obs.ready_versions:
        p.condition("Ready", "True", "Serving", f"{s.stable_version} serving")
    else:
        p.condition("Ready", "False", "NotReady", f"{s.stable_version} not ready yet")
    p.condition("Progressing", *p.progress)
    last_rollback = next(
        (d for d in reversed(s.history) if d.decision in (Decision.ROLLBACK, Decision.PROMOTE)),
        None,
    )
    if last_rollback and last_rollback.decision == Decision.ROLLBACK:
        p.condition("Degraded", "True", last_rollback.reason, last_rollback.message)
    else:
        p.condition("Degraded", "False", "Healthy", "no rollback since the last promotion")
    if s.drift == "Unknown":
        p.condition("Drifting", "Unknown", *p.drift_unknown)
    elif s.drift == "None":
        p.condition("Drifting", "False", "NoDrift", "no drift on the stable version")
    else:
        reason = {"Sustained": "DriftSustained", "LabelShift": "LabelShift"}.get(
            s.drift, "DriftDetected"
        )
        kind = "label shift (alert only)" if s.drift == "LabelShift" else "drift"
        p.condition(
            "Drifting", "True", reason, f"{kind} on {s.stable_version} since {s.drift_since}"
        )
    r = s.retraining
    active = r.state in (RunState.SUBMITTED, RunState.RUNNING)
    p.condition(
        "Retraining",
        "True" if active else "False",
        {
            RunState.SUBMITTED: "RunSubmitted",
            RunState.RUNNING: "RunRunning",
            RunState.SUCCEEDED: "RunSucceeded",
            RunState.FAILED: "RunFailed",
        }.get(r.state or "", "Idle"),
        f"{r.run_name} {r.state.lower()}" if r.run_name and r.state else "no retraining run",
    )
    p.condition("Stalled", *p.stalled)


def new_retraining_status() -> RetrainingStatus:
    return RetrainingStatus()
