"""Canary analysis: the canary judged against the stable version on the model, not only HTTP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from kubeloop.operators.crd import Analysis, CheckName, LabelSplit
from kubeloop.operators.reconciler.stats import (
    CheckResult,
    Split,
    Verdict,
    latency_p99,
    rate_increase,
    score_shift,
    seconds_to_detect,
)
from kubeloop.operators.reconciler.types import VersionMetrics


@dataclass(frozen=True)
class AnalysisResult:
    verdict: Verdict
    reason: str  # CamelCase, used as the decision and condition reason
    message: str
    checks: tuple[CheckResult, ...] = ()
    open: tuple[str, ...] = ()  # the required checks that hold an inconclusive verdict

    def evidence(self) -> dict[str, object]:
        return {c.check: c.evidence() for c in self.checks}


def required_checks(spec: Analysis, stable_labels: float) -> frozenset[str]:
    """The checks a verdict needs: the spec's list, or every check by default, with live
    accuracy whenever labels flow for the stable version."""
    if spec.required_checks is not None:
        return frozenset(str(c) for c in spec.required_checks)
    required = {CheckName.ERROR_RATE, CheckName.LATENCY_P99, CheckName.SCORE_DISTRIBUTION}
    if stable_labels > 0:
        required.add(CheckName.LIVE_ACCURACY)
    return frozenset(str(c) for c in required)


def label_splits(steps: Sequence[LabelSplit]) -> tuple[Split, ...]:
    """The earlier steps' labels (``status.analysis.labelSteps``) as splits."""
    return tuple(
        Split(s.canary_incorrect, s.canary_labels, s.stable_incorrect, s.stable_labels)
        for s in steps
    )


def _labels(canary: VersionMetrics, stable: VersionMetrics) -> Split:
    return Split(
        canary.feedback_incorrect, canary.feedback, stable.feedback_incorrect, stable.feedback
    )


def closed_step(
    canary: VersionMetrics, stable: VersionMetrics, earlier: Sequence[LabelSplit], percent: int
) -> LabelSplit:
    """The labels of the step now closing at ``percent``: those counted since the canary's
    first step less the ``earlier`` steps'."""
    own = _labels(canary, stable).less(label_splits(earlier))
    return LabelSplit(
        percent=percent, canary_labels=own.canary_n, canary_incorrect=own.canary_events,
        stable_labels=own.stable_n, stable_incorrect=own.stable_events,
    )  # fmt: skip


def _live_accuracy(
    canary: VersionMetrics,
    stable: VersionMetrics,
    spec: Analysis,
    *,
    splits: Sequence[Split] | None = None,
) -> CheckResult:
    """``splits``: the labels are randomized splits, one per step, these the earlier
    steps' (empty: all from this step); None: a sequence per version judges them."""
    if canary.feedback >= spec.min_feedback and stable.feedback >= spec.min_feedback:
        return rate_increase(
            CheckName.LIVE_ACCURACY,
            canary.feedback_incorrect,
            canary.feedback,
            stable.feedback_incorrect,
            stable.feedback,
            tolerance=spec.max_accuracy_drop,
            alpha=spec.alpha,
            n_opt=spec.min_feedback,
            randomized=splits is not None,
            earlier=splits or (),
        )
    return CheckResult(
        CheckName.LIVE_ACCURACY,
        Verdict.SKIPPED,
        detail=f"labels for {int(canary.feedback)}/{int(stable.feedback)} predictions, "
        f"{spec.min_feedback} needed for each",
    )


def _estimated_accuracy(
    canary: VersionMetrics, stable: VersionMetrics, spec: Analysis
) -> CheckResult:
    """Early evidence: the accuracies estimated from scores alone. It passes or holds, and
    never fails: an estimate is biased under label shift and concept drift."""
    if canary.estimated_accuracy is None or stable.estimated_accuracy is None:
        missing = "canary" if canary.estimated_accuracy is None else "stable"
        return CheckResult(
            CheckName.ESTIMATED_ACCURACY, Verdict.SKIPPED, detail=f"no estimate for the {missing}"
        )
    drop = stable.estimated_accuracy - canary.estimated_accuracy
    lower = drop > spec.max_accuracy_drop
    return CheckResult(
        CheckName.ESTIMATED_ACCURACY,
        Verdict.INCONCLUSIVE if lower else Verdict.PASS,
        estimate=drop,
        threshold=spec.max_accuracy_drop,
        detail=f"estimated accuracy {canary.estimated_accuracy:.3f} against the stable's "
        f"{stable.estimated_accuracy:.3f}" + (": lower, labels must decide" if lower else ""),
    )


def analyse(
    canary: VersionMetrics,
    stable: VersionMetrics,
    spec: Analysis,
    *,
    min_samples: int,
    elapsed_seconds: float,
    min_seconds: int,
    stable_drifting: bool = False,
    earlier_labels: Sequence[Split] | None = None,
) -> AnalysisResult:
    """Judges one canary step on the evidence window. Below the minimum-sample gate, or
    while a required check is skipped or inconclusive, the answer is "hold".

    The step's requests are one randomized split (the router's weight is constant within
    it). Its labels count from the canary's first step: with ``earlier_labels`` (the earlier
    steps' labels, empty in the first step) they are judged as one randomized split per
    step; with None (the earlier steps' were not recorded) by a sequence per version.

    ``stable_drifting``: drift is flagged on the stable version, so its own scores moved
    with the inputs and are no reference for the canary's (:func:`labels_decide_scores`).
    """
    counts = {"canary_requests": canary.requests, "stable_requests": stable.requests}
    if canary.requests < min_samples or stable.requests < min_samples:
        return AnalysisResult(
            Verdict.INCONCLUSIVE,
            "NotEnoughEvidence",
            f"hold (not enough evidence): {int(canary.requests)} canary and {int(stable.requests)} "
            f"stable requests, {min_samples} needed for each",
            (CheckResult("samples", Verdict.INCONCLUSIVE, detail=str(counts)),),
        )
    if elapsed_seconds < min_seconds:
        return AnalysisResult(
            Verdict.INCONCLUSIVE,
            "StepTooYoung",
            f"hold (not enough evidence): step observed {elapsed_seconds:.0f}s of {min_seconds}s",
        )
    checks = [
        rate_increase(
            CheckName.ERROR_RATE,
            canary.server_errors,
            canary.requests,
            stable.server_errors,
            stable.requests,
            tolerance=spec.max_error_rate_increase,
            alpha=spec.alpha,
            n_opt=min_samples,
            randomized=True,
        ),
        latency_p99(
            canary.latency_p99,
            stable.latency_p99,
            tolerance=spec.latency_p99_tolerance,
            slack=spec.latency_p99_slack_seconds,
        ),
    ]
    # A scrape can land between two series of one histogram: compare the shared buckets.
    shared = set(canary.score_buckets) & set(stable.score_buckets)
    if shared:
        checks.append(
            score_shift(
                {le: canary.score_buckets[le] for le in shared},
                {le: stable.score_buckets[le] for le in shared},
                tolerance=spec.max_score_shift,
                alpha=spec.alpha,
            )
        )
    else:
        checks.append(
            CheckResult(
                CheckName.SCORE_DISTRIBUTION, Verdict.INCONCLUSIVE, detail="no score histogram"
            )
        )
    live = _live_accuracy(canary, stable, spec, splits=earlier_labels)
    checks.append(live)
    required = required_checks(spec, stable.feedback)
    if stable_drifting and CheckName.LIVE_ACCURACY in required:
        checks, required = labels_decide_scores(checks, live, required)
    if spec.early_evidence or CheckName.ESTIMATED_ACCURACY in required:
        estimated = _estimated_accuracy(canary, stable, spec)
        checks.append(estimated)
        if live.verdict in (Verdict.PASS, Verdict.FAIL):  # the labels decided
            required -= {CheckName.ESTIMATED_ACCURACY}
        elif estimated.verdict != Verdict.SKIPPED:
            required |= {CheckName.ESTIMATED_ACCURACY}
    result = combine(tuple(checks), required)
    if result.verdict == Verdict.INCONCLUSIVE and result.open == (CheckName.ESTIMATED_ACCURACY,):
        return AnalysisResult(
            Verdict.INCONCLUSIVE, "EstimatedAccuracyLower", result.message, result.checks,
            result.open,
        )  # fmt: skip
    return result


def labels_decide_scores(
    checks: list[CheckResult], live: CheckResult, required: frozenset[str]
) -> tuple[list[CheckResult], frozenset[str]]:
    """The score-distribution check while the stable version drifts and labels flow.

    Under drift the stable version's scores move with its inputs (on covariate drift a
    model far from its training data spreads its scores out), and a version retrained for
    the new inputs scores them differently by design: a large distance between the two
    is no evidence against the canary. So the shift cannot fail the step on its own: it
    holds until live accuracy decides, and once live accuracy passes it is not required.
    """
    out = []
    for check in checks:
        if check.check == CheckName.SCORE_DISTRIBUTION and check.verdict == Verdict.FAIL:
            check = replace(
                check,
                verdict=Verdict.INCONCLUSIVE,
                detail=f"{check.detail}; the stable version is drifting, so its scores are no "
                "reference: live accuracy decides",
            )
        out.append(check)
    if live.verdict == Verdict.PASS:
        required = required - {str(CheckName.SCORE_DISTRIBUTION)}
    return out, required


def combine(checks: tuple[CheckResult, ...], required: frozenset[str]) -> AnalysisResult:
    """Any failed check fails; a required check that is skipped or inconclusive holds; the
    verdict passes only when every required check passed."""
    failed = [c for c in checks if c.verdict == Verdict.FAIL]
    if failed:
        names = ", ".join(c.check for c in failed)
        return AnalysisResult(
            Verdict.FAIL, "AnalysisFailed", f"canary worse than stable on {names}", checks
        )
    by_name = {str(c.check): c for c in checks}
    open_ = sorted(n for n in required if n not in by_name or by_name[n].verdict != Verdict.PASS)
    if open_:
        details = "; ".join(
            f"{n}: {by_name[n].detail or by_name[n].verdict}"
            if n in by_name
            else f"{n}: not measured"
            for n in open_
        )
        return AnalysisResult(
            Verdict.INCONCLUSIVE,
            "Inconclusive",
            f"hold (not enough evidence) on {', '.join(open_)} ({details})",
            checks,
            tuple(open_),
        )
    return AnalysisResult(
        Verdict.PASS,
        "AnalysisPassed",
        f"every required check passed ({', '.join(sorted(required))})",
        checks,
    )


def watch_check(
    promoted: VersionMetrics, baseline: dict[str, float], spec: Analysis, *, min_samples: int
) -> AnalysisResult:
    """After promotion: the new stable against what the previous stable did in the last step.
    It passes only when every required check (error rate; live accuracy when labels flowed
    for the previous stable) reached its minimum sample and passed."""
    if promoted.requests < min_samples or baseline.get("requests", 0) < min_samples:
        return AnalysisResult(
            Verdict.INCONCLUSIVE,
            "NotEnoughEvidence",
            f"watching: {int(promoted.requests)} requests since the watch started, "
            f"{min_samples} needed",
        )
    before = VersionMetrics(
        requests=baseline["requests"],
        server_errors=baseline.get("server_errors", 0.0),
        feedback_correct=baseline.get("feedback", 0.0) - baseline.get("feedback_incorrect", 0.0),
        feedback_incorrect=baseline.get("feedback_incorrect", 0.0),
    )
    checks = (
        rate_increase(
            CheckName.ERROR_RATE,
            promoted.server_errors,
            promoted.requests,
            before.server_errors,
            before.requests,
            tolerance=spec.max_error_rate_increase,
            alpha=spec.alpha,
            n_opt=min_samples,
        ),
        _live_accuracy(promoted, before, spec),
    )
    required = required_checks(spec, before.feedback) & {
        CheckName.ERROR_RATE,
        CheckName.LIVE_ACCURACY,
    }
    result = combine(checks, frozenset(str(c) for c in required))
    if result.verdict == Verdict.FAIL:
        return AnalysisResult(
            Verdict.FAIL, "PromotedVersionDegraded", result.message, result.checks
        )
    return result


def detectability(
    canary: VersionMetrics,
    stable: VersionMetrics,
    spec: Analysis,
    observed_seconds: float,
    *,
    randomized: bool = False,
) -> tuple[float | None, str]:
    """How long this step needs to catch an accuracy drop of ``maxAccuracyDrop`` at the
    spec's power, from the traffic and label rates observed in the evidence window."""
    if observed_seconds <= 0 or stable.requests <= 0 or stable.feedback <= 0:
        return None, "no labels flow for the stable version: live accuracy is not judged"
    # Labels per request so far (instances per request times the share labelled yet; late
    # labels make it low early on), from the stable version, applied to both.
    per_request = stable.feedback / (stable.feedback_requests or stable.requests)
    canary_rate = canary.requests * per_request / observed_seconds
    stable_rate = stable.requests * per_request / observed_seconds
    if canary_rate <= 0:
        return None, "no canary traffic yet"
    seconds = seconds_to_detect(
        drop=spec.max_accuracy_drop,
        stable_rate=stable.feedback_incorrect / stable.feedback,
        canary_per_second=canary_rate,
        stable_per_second=stable_rate,
        alpha=spec.alpha,
        power=spec.power,
        n_opt=spec.min_feedback,
        randomized=randomized,
    )
    drop = f"an accuracy drop of {spec.max_accuracy_drop:g}"
    rates = f"{canary_rate:.1f} canary and {stable_rate:.1f} stable labels/s"
    if seconds is None:
        return None, f"{drop} cannot be detected at {rates}"
    return seconds, f"{drop} is detected with power {spec.power:g} after ~{seconds:.0f}s at {rates}"
