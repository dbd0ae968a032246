"""Canary analysis: the canary judged against the stable version on the model, not only HTTP."""

from __future__ import annotations

from dataclasses import dataclass

from kubeloop.operators.crd import Analysis
from kubeloop.operators.reconciler.stats import (
    CheckResult,
    Verdict,
    latency_p99,
    rate_increase,
    score_shift,
)
from kubeloop.operators.reconciler.types import VersionMetrics


@dataclass(frozen=True)
class AnalysisResult:
    verdict: Verdict
    reason: str  # CamelCase, used as the decision and condition reason
    message: str
    checks: tuple[CheckResult, ...] = ()

    def evidence(self) -> dict[str, object]:
        return {c.check: c.evidence() for c in self.checks}


def analyse(
    canary: VersionMetrics,
    stable: VersionMetrics,
    spec: Analysis,
    *,
    min_samples: int,
    elapsed_seconds: float,
    min_seconds: int,
) -> AnalysisResult:
    """Judges one canary step. Below the minimum-sample gate the answer is always "hold"."""
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
            f"hold (not enough evidence): step running {elapsed_seconds:.0f}s of {min_seconds}s",
        )
    checks = [
        rate_increase(
            "error_rate",
            canary.server_errors,
            canary.requests,
            stable.server_errors,
            stable.requests,
            tolerance=spec.max_error_rate_increase,
            alpha=spec.alpha,
            n_opt=min_samples,
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
            CheckResult("score_distribution", Verdict.INCONCLUSIVE, detail="no score histogram")
        )
    if canary.feedback >= spec.min_feedback and stable.feedback >= spec.min_feedback:
        checks.append(
            rate_increase(
                "live_accuracy",
                canary.feedback_incorrect,
                canary.feedback,
                stable.feedback_incorrect,
                stable.feedback,
                tolerance=spec.max_accuracy_drop,
                alpha=spec.alpha,
                n_opt=spec.min_feedback,
            )
        )
    else:
        checks.append(
            CheckResult(
                "live_accuracy",
                Verdict.SKIPPED,
                detail=f"labels for {int(canary.feedback)}/{int(stable.feedback)} predictions, "
                f"{spec.min_feedback} needed",
            )
        )
    return combine(tuple(checks))


def combine(checks: tuple[CheckResult, ...]) -> AnalysisResult:
    failed = [c for c in checks if c.verdict == Verdict.FAIL]
    if failed:
        names = ", ".join(c.check for c in failed)
        return AnalysisResult(
            Verdict.FAIL, "AnalysisFailed", f"canary worse than stable on {names}", checks
        )
    open_ = [c for c in checks if c.verdict == Verdict.INCONCLUSIVE]
    if open_:
        names = ", ".join(c.check for c in open_)
        return AnalysisResult(
            Verdict.INCONCLUSIVE, "Inconclusive", f"hold (not enough evidence) on {names}", checks
        )
    return AnalysisResult(Verdict.PASS, "AnalysisPassed", "every check passed", checks)


def watch_check(
    promoted: VersionMetrics, baseline: dict[str, float], spec: Analysis, *, min_samples: int
) -> AnalysisResult:
    """After promotion: the new stable against what the previous stable did in the last step."""
    if promoted.requests < min_samples or baseline.get("requests", 0) < min_samples:
        return AnalysisResult(
            Verdict.INCONCLUSIVE, "NotEnoughEvidence", "watching: not enough evidence yet"
        )
    checks = [
        rate_increase(
            "error_rate",
            promoted.server_errors,
            promoted.requests,
            baseline.get("server_errors", 0.0),
            baseline["requests"],
            tolerance=spec.max_error_rate_increase,
            alpha=spec.alpha,
            n_opt=min_samples,
        )
    ]
    if promoted.feedback >= spec.min_feedback and baseline.get("feedback", 0) >= spec.min_feedback:
        checks.append(
            rate_increase(
                "live_accuracy",
                promoted.feedback_incorrect,
                promoted.feedback,
                baseline.get("feedback_incorrect", 0.0),
                baseline["feedback"],
                tolerance=spec.max_accuracy_drop,
                alpha=spec.alpha,
                n_opt=spec.min_feedback,
            )
        )
    result = combine(tuple(checks))
    if result.verdict == Verdict.FAIL:
        return AnalysisResult(
            Verdict.FAIL, "PromotedVersionDegraded", result.message, result.checks
        )
    return result
