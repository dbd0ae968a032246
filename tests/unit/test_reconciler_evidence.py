"""No decision without evidence: required checks, blind periods, timeouts, detectability."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from kubeloop.operators.crd import Analysis, ModelDeploymentStatus, parse_spec
from kubeloop.operators.reconciler.analysis import detectability
from kubeloop.operators.reconciler.core import reconcile
from kubeloop.operators.reconciler.stats import (
    Verdict,
    rate_increase,
    score_shift,
    seconds_to_detect,
)
from kubeloop.operators.reconciler.types import (
    Observations,
    RecordDecision,
    RegistryVersion,
    VersionMetrics,
)

from kubeloop.demo.config import LoopConfig
from kubeloop.serving.metrics import SCORE_BUCKETS

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EDGES = (*SCORE_BUCKETS, float("inf"))


def spec(analysis=None, **rollout):
    base = {
        "steps": [25, 50, 100],
        "minSamples": 100,
        "minStepSeconds": 20,
        "maxStepSeconds": 600,
        "watchWindowSeconds": 30,
        **rollout,
    }
    if analysis:
        base["analysis"] = analysis
    return parse_spec({"model": {"name": "fraud-detector"}, "rollout": base})


def cumulative(scores: np.ndarray) -> dict[float, float]:
    return {le: float((scores <= le).sum()) for le in EDGES}


def version(n=2000, errors=0, labels=0, wrong=0, scores=None, p99=0.02) -> VersionMetrics:
    rng = np.random.default_rng(n + labels)
    scores = scores if scores is not None else rng.beta(0.3, 6.0, size=n)
    return VersionMetrics(
        requests=n,
        server_errors=errors,
        latency_p99=p99,
        score_buckets=cumulative(scores),
        feedback_correct=labels - wrong,
        feedback_incorrect=wrong,
    )


def obs(t, versions=None, *, metrics_ok=True, watched=frozenset({"v1", "v2"})) -> Observations:
    return Observations(
        now=T0 + timedelta(seconds=t),
        metrics_ok=metrics_ok,
        metrics_error="" if metrics_ok else "Prometheus at http://127.0.0.1:9 unreachable",
        versions=versions or {},
        registry_versions=(RegistryVersion("v1", True), RegistryVersion("v2", True)),
        ready_versions=frozenset({"v1", "v2"}),
        drift_detected=False,
        watched_versions=watched,
        max_pass_gap_seconds=15.0,
    )


def canary(sp) -> ModelDeploymentStatus:
    status = reconcile(
        "fd", sp, None, Observations(now=T0, registry_versions=(RegistryVersion("v1", True),))
    ).status
    status = reconcile("fd", sp, status, obs(0)).status
    assert (status.phase, status.canary_percent) == ("Canary", sp.rollout.steps[0])
    return status


def run(sp, status, passes):
    """Feeds passes (t, observations kwargs) and returns the final result and all decisions."""
    made, result = [], None
    for t, kw in passes:
        result = reconcile("fd", sp, status, obs(t, **kw))
        status = result.status
        made += [(t, a) for a in result.actions if isinstance(a, RecordDecision)]
    return result, made


def kinds(made) -> list[str]:
    return [a.decision for _, a in made if a.decision != "hold"]


HEALTHY = {"v1": version(6000, labels=3000, wrong=30), "v2": version(2000, labels=1000, wrong=10)}


def test_a_skipped_live_accuracy_holds_while_labels_flow_for_stable():
    sp = spec()
    unlabelled = {"v1": version(6000, labels=3000, wrong=30), "v2": version(2000)}
    result, made = run(sp, canary(sp), [(t, {"versions": unlabelled}) for t in range(5, 200, 5)])
    assert result.status.canary_percent == 25 and not kinds(made)
    assert "live_accuracy" in result.status.conditions[1].message
    # With labels for the canary too, the same step passes.
    result, made = run(sp, result.status, [(205, {"versions": HEALTHY})])
    assert kinds(made) == ["step"]


def test_live_accuracy_is_not_required_when_no_labels_flow_or_the_spec_says_so():
    sp = spec()
    unlabelled = {"v1": version(6000), "v2": version(2000)}
    _, made = run(sp, canary(sp), [(t, {"versions": unlabelled}) for t in range(5, 30, 5)])
    assert kinds(made) == ["step"]
    only_errors = spec(analysis={"requiredChecks": ["error_rate"]})
    no_latency = {v: VersionMetrics(requests=m.requests) for v, m in HEALTHY.items()}
    _, made = run(only_errors, canary(only_errors), [(t, {"versions": no_latency}) for t in range(5, 30, 5)])  # fmt: skip
    assert kinds(made) == ["step"]


def test_a_worse_canary_is_rolled_back_and_an_equal_one_passes():
    sp = spec()
    worse = {"v1": version(6000, labels=3000, wrong=30), "v2": version(2000, labels=1000, wrong=40)}
    _, made = run(sp, canary(sp), [(t, {"versions": worse}) for t in range(5, 30, 5)])
    assert kinds(made) == ["rollback"]
    checks = next(a for _, a in made if a.decision == "rollback").evidence["checks"]
    assert checks["live_accuracy"]["verdict"] == "fail"
    _, made = run(sp, canary(sp), [(t, {"versions": HEALTHY}) for t in range(5, 30, 5)])
    assert kinds(made) == ["step"]


def test_live_accuracy_counts_the_canary_labels_from_its_first_step():
    sp = spec()
    result, made = run(sp, canary(sp), [(t, {"versions": HEALTHY}) for t in range(5, 30, 5)])
    assert kinds(made) == ["step"] and result.status.canary_percent == 50
    a = result.status.analysis
    # The 50 % step's traffic, errors and scores count from its start (20 s); its labels
    # from the canary's (0 s), so the labels that passed 25 % still count.
    assert a.evidence_since == "2026-01-01T00:00:20Z"
    assert a.accuracy_since == "2026-01-01T00:00:00Z"
    # A blind period restarts the labels' window too.
    result, _ = run(sp, result.status, [(25, {"metrics_ok": False}), (30, {"versions": HEALTHY})])
    assert result.status.analysis.accuracy_since == "2026-01-01T00:00:30Z"
    # A new canary starts its own.
    assert canary(sp).analysis.accuracy_since == "2026-01-01T00:00:00Z"


def test_a_canary_worse_at_its_second_step_still_fails_on_all_its_labels():
    sp = spec()
    result, made = run(sp, canary(sp), [(t, {"versions": HEALTHY}) for t in range(5, 30, 5)])
    assert kinds(made) == ["step"]
    # Labels since the first step: at 50 % the canary turned worse (90 wrong of 1000 more).
    worse = {
        "v1": version(9000, labels=4500, wrong=45),
        "v2": version(2000, labels=2000, wrong=100),
    }
    _, made = run(sp, result.status, [(t, {"versions": worse}) for t in range(25, 60, 5)])
    assert kinds(made) == ["rollback"]


def test_detectability_reads_labels_per_request_over_the_labels_window():
    analysis = spec().rollout.analysis
    step = {"v1": version(3000, labels=1500, wrong=15), "v2": version(1000, labels=500, wrong=5)}
    # The same rates with the labels counted over three times the step's window.
    longer = {
        v: replace(m, feedback_correct=3 * m.feedback_correct,
                   feedback_incorrect=3 * m.feedback_incorrect, feedback_requests=3 * m.requests)
        for v, m in step.items()
    }  # fmt: skip
    same = detectability(step["v2"], step["v1"], analysis, 30.0)
    assert same[0] is not None
    assert detectability(longer["v2"], longer["v1"], analysis, 30.0) == same


def _mix(rng, n, parts) -> np.ndarray:
    """Scores from a mixture: ``parts`` is [(share, low, high)] of uniform pieces."""
    pieces = [rng.uniform(lo, hi, int(round(share * n))) for share, lo, hi in parts]
    return np.concatenate(pieces)


# (stable, shifted canary) per scoring shape; every shift moves 0.4 of the mass.
SHAPES = {
    # 90 % of scores below 0.001 (rare positives), the canary's pile moved up a decade
    "piled-near-0": ([(0.9, 0, 0.001), (0.1, 0.001, 1)],
                     [(0.5, 0, 0.001), (0.4, 0.001, 0.01), (0.1, 0.01, 1)]),
    "piled-near-1": ([(0.9, 0.999, 1), (0.1, 0, 0.999)],
                     [(0.5, 0.999, 1), (0.4, 0.99, 0.999), (0.1, 0, 0.99)]),
    "uniform": ([(1.0, 0, 1)], [(0.1, 0, 0.5), (0.9, 0.5, 1)]),
    "bimodal": ([(0.9, 0, 0.01), (0.1, 0.99, 1)], [(0.5, 0, 0.01), (0.5, 0.99, 1)]),
}  # fmt: skip


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_the_score_check_fails_a_shifted_canary_for_every_shape(shape):
    rng = np.random.default_rng(7)
    stable, moved = SHAPES[shape]
    n = 10_000
    a, b = _mix(rng, n, stable), _mix(rng, n, stable)
    same = score_shift(cumulative(a), cumulative(b), tolerance=0.25, alpha=0.05)
    assert same.verdict == Verdict.PASS, same
    shifted = score_shift(
        cumulative(_mix(rng, n, moved)), cumulative(b), tolerance=0.25, alpha=0.05
    )
    assert shifted.verdict == Verdict.FAIL, shifted


def test_a_histogram_with_one_bucket_cannot_pass():
    scores = np.full(5000, 0.0001)
    result = score_shift(cumulative(scores), cumulative(scores), tolerance=0.25, alpha=0.05)
    assert result.verdict == Verdict.INCONCLUSIVE and "one histogram bucket" in result.detail


def test_no_decision_while_prometheus_is_down_and_the_step_restarts_after():
    sp = spec()
    down = [(t, {"metrics_ok": False}) for t in range(5, 120, 5)]
    back = [(t, {"versions": HEALTHY}) for t in range(120, 160, 5)]
    result, made = run(sp, canary(sp), [*down, *back])
    holds = [(t, a.reason) for t, a in made if a.decision == "hold"]
    assert holds[0] == (5, "MetricsUnavailable")
    assert (120, "EvidenceRestarted") in holds
    # The step's 20 s minimum counts from 120 s, not from its start at 0 s.
    steps = [t for t, a in made if a.decision == "step"]
    assert steps == [140], made
    assert result.status.analysis.evidence_since == "2026-01-01T00:02:20Z"  # the new step's


def test_an_unreachable_drift_service_holds():
    sp = spec()
    result, made = run(sp, canary(sp), [(t, {"versions": HEALTHY, "watched": None}) for t in range(5, 60, 5)])  # fmt: skip
    assert not kinds(made)
    assert {a.reason for _, a in made} == {"DriftServiceUnavailable"}
    assert result.status.conditions[1].status == "Unknown"


def test_time_while_the_operator_was_down_is_not_observed():
    sp = spec()
    # Passes at 5 s, then nothing until 100 s (the operator was down), then every 5 s.
    result, made = run(sp, canary(sp), [(5, {"versions": HEALTHY}), *[(t, {"versions": HEALTHY}) for t in range(100, 125, 5)]])  # fmt: skip
    assert [(t, a.reason) for t, a in made][:2] == [(5, "StepTooYoung"), (100, "EvidenceRestarted")]
    assert [t for t, a in made if a.decision == "step"] == [120]


def test_no_confirmation_in_a_blind_watch_window():
    sp = spec(steps=[50, 100])
    status = canary(sp)
    result, made = run(sp, status, [(t, {"versions": HEALTHY}) for t in range(5, 30, 5)])
    assert kinds(made) == ["promote"] and result.status.phase == "Watching"
    promoted = {"v2": version(6000, labels=3000, wrong=30)}
    blind = [(t, {"metrics_ok": False}) for t in range(30, 200, 5)]
    result, made = run(sp, result.status, blind)
    assert not kinds(made) and result.status.phase == "Watching"
    assert "MetricsUnavailable" in {a.reason for _, a in made}
    result, made = run(sp, result.status, [(t, {"versions": promoted}) for t in range(200, 240, 5)])
    # 5 s observed before Prometheus went down (25-30 s), 25 s after it came back (200 s).
    assert [(t, a.decision) for t, a in made if a.decision == "confirm"] == [(225, "confirm")]


def test_a_step_without_a_verdict_by_max_step_seconds_ends_as_the_spec_says():
    unlabelled = {"v1": version(6000, labels=3000, wrong=30), "v2": version(2000)}
    passes = [(t, {"versions": unlabelled}) for t in range(5, 700, 5)]
    sp = spec()
    result, made = run(sp, canary(sp), passes)
    assert [(t, a.reason) for t, a in made if a.decision != "hold"] == [(605, "StepTimedOut")]
    assert result.status.candidate_version is None and "v2" in result.status.rejected_versions
    held = spec(onStepTimeout="Hold")
    result, made = run(held, canary(held), passes)
    assert not kinds(made) and result.status.candidate_version == "v2"
    stalled = next(c for c in result.status.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason) == ("True", "StepTimedOut")


def test_the_analysis_warns_when_it_cannot_decide_in_time():
    sp = spec(maxStepSeconds=60)
    # 2 canary labels per second: an accuracy drop of 0.03 needs minutes, not 60 s.
    slow = {"v1": version(600, labels=300, wrong=3), "v2": version(200, labels=100, wrong=1)}
    result, made = run(sp, canary(sp), [(t, {"versions": slow}) for t in range(5, 55, 5)])
    warnings = [a for _, a in made if a.reason == "CannotDecideInTime"]
    assert len(warnings) == 1 and warnings[0].evidence["seconds_to_detect"] > 60
    assert result.status.analysis.seconds_to_detect > 60
    assert "maxStepSeconds is 60s" in warnings[0].message


@pytest.mark.parametrize("randomized", [False, True])
def test_seconds_to_detect_matches_the_sequential_test_by_simulation(randomized):
    """At the estimated time, about ``power`` of simulated worse canaries have failed."""
    p_s, drop, rate_c, rate_s = 0.02, 0.03, 10.0, 30.0
    kw = {"alpha": 0.05, "n_opt": 100, "randomized": randomized}
    t_star = seconds_to_detect(drop=drop, stable_rate=p_s, canary_per_second=rate_c,
                               stable_per_second=rate_s, power=0.8, **kw)  # fmt: skip
    assert t_star is not None
    rng = np.random.default_rng(3)
    horizon = int(t_star)
    caught_by = {1.0: 0, 0.5: 0}
    runs = 300
    for _ in range(runs):
        wrong_c = rng.binomial(int(rate_c), p_s + drop, size=horizon).cumsum()
        wrong_s = rng.binomial(int(rate_s), p_s, size=horizon).cumsum()
        first = next(
            (
                t
                for t in range(10, horizon, 2)
                if rate_increase(
                    "a",
                    wrong_c[t - 1],
                    rate_c * t,
                    wrong_s[t - 1],
                    rate_s * t,
                    tolerance=drop,
                    **kw,
                ).verdict
                == Verdict.FAIL  # fmt: skip
            ),
            None,
        )
        for share in caught_by:
            caught_by[share] += first is not None and first <= share * horizon
    assert caught_by[1.0] / runs >= 0.72
    assert caught_by[0.5] / runs < 0.8


def test_defaults_catch_a_three_point_drop_at_25_percent_of_the_demo_traffic():
    demo = LoopConfig()
    crd = Analysis()
    per_second = demo.rate  # every transaction is labelled
    for max_step, analysis in ((3600, crd), (demo.max_step_seconds, crd.model_copy(update={"min_feedback": demo.min_feedback}))):  # fmt: skip
        seconds = seconds_to_detect(
            drop=0.03,
            stable_rate=0.02,
            canary_per_second=0.25 * per_second,
            stable_per_second=0.75 * per_second,
            alpha=analysis.alpha,
            power=analysis.power,
            n_opt=analysis.min_feedback,
        )
        assert seconds is not None and seconds <= max_step


def estimated(m: VersionMetrics, accuracy: float | None) -> VersionMetrics:
    return replace(m, estimated_accuracy=accuracy)


EARLY = {"earlyEvidence": True, "maxAccuracyDrop": 0.03}


def test_early_evidence_holds_a_canary_whose_estimate_is_lower_until_labels_decide():
    sp = spec(analysis=EARLY)
    lower = {"v1": estimated(version(6000), 0.97), "v2": estimated(version(2000), 0.90)}
    result, made = run(sp, canary(sp), [(t, {"versions": lower}) for t in range(5, 60, 5)])
    assert not kinds(made) and result.status.canary_percent == 25
    held = [a for _, a in made if a.reason == "EstimatedAccuracyLower"]
    assert held and held[-1].evidence["checks"]["estimated_accuracy"]["verdict"] == "inconclusive"
    # Labels arrive and say the canary is as good: they decide, the estimate no longer holds.
    labelled = {
        "v1": estimated(version(6000, labels=3000, wrong=30), 0.97),
        "v2": estimated(version(2000, labels=1000, wrong=10), 0.90),
    }
    _, made = run(sp, result.status, [(65, {"versions": labelled})])
    assert kinds(made) == ["step"]


@pytest.mark.parametrize(
    ("analysis", "canary_estimate"),
    [
        (EARLY, 0.95),  # within maxAccuracyDrop of the stable's 0.97
        (EARLY, None),  # no estimate for the canary: nothing to hold on
        ({"maxAccuracyDrop": 0.03}, 0.80),  # early evidence off (the default)
    ],
)
def test_early_evidence_steps_when_the_estimate_is_close_missing_or_off(analysis, canary_estimate):
    sp = spec(analysis=analysis)
    versions = {
        "v1": estimated(version(6000), 0.97),
        "v2": estimated(version(2000), canary_estimate),
    }
    _, made = run(sp, canary(sp), [(t, {"versions": versions}) for t in range(5, 30, 5)])
    assert kinds(made) == ["step"]


def test_the_estimate_alone_never_rolls_back_even_at_the_step_deadline():
    sp = spec(analysis=EARLY)  # onStepTimeout: Rollback (the default)
    lower = {"v1": estimated(version(6000), 0.97), "v2": estimated(version(2000), 0.80)}
    result, made = run(sp, canary(sp), [(t, {"versions": lower}) for t in range(5, 700, 5)])
    assert not kinds(made) and result.status.candidate_version == "v2"
    stalled = next(c for c in result.status.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason) == ("True", "StepTimedOut")
    # Labels showing it worse still roll it back: the estimate never stands in their way.
    worse = {
        "v1": estimated(version(6000, labels=3000, wrong=30), 0.97),
        "v2": estimated(version(2000, labels=1000, wrong=40), 0.80),
    }
    _, made = run(sp, result.status, [(705, {"versions": worse})])
    assert kinds(made) == ["rollback"]


def test_labels_of_recorded_steps_are_judged_as_randomized_splits():
    """Labels from the canary's steps, each step's recorded: one sequence on the
    difference. Labels of steps not recorded (a status from before labelSteps), and a
    promoted version against its predecessor's last step: a sequence per version (their
    samples come from different periods)."""
    from kubeloop.operators.reconciler.analysis import analyse, watch_check

    # 12 s at a 25 % step of 40 labels/s: canary 3 % wrong, stable 6.5 %
    canary = version(n=120, labels=120, wrong=4)
    stable = version(n=360, labels=360, wrong=23)
    spec_ = Analysis(min_feedback=60, max_accuracy_drop=0.04, required_checks=["live_accuracy"])
    kw = {"min_samples": 40, "elapsed_seconds": 12, "min_seconds": 8}
    in_step = analyse(canary, stable, spec_, earlier_labels=(), **kw)
    pooled = analyse(canary, stable, spec_, earlier_labels=None, **kw)
    assert in_step.verdict == Verdict.PASS
    assert pooled.verdict == Verdict.INCONCLUSIVE and pooled.open == ("live_accuracy",)
    baseline = {"requests": 360, "server_errors": 0, "feedback": 360, "feedback_incorrect": 23}
    watched = watch_check(canary, baseline, spec_, min_samples=40)
    assert watched.verdict == Verdict.INCONCLUSIVE
    live = {c.check: c for c in watched.checks}["live_accuracy"]
    assert live.upper == pytest.approx({c.check: c for c in pooled.checks}["live_accuracy"].upper)


def test_each_closed_step_records_its_labels_and_a_blind_period_clears_them():
    sp = spec()
    result, made = run(sp, canary(sp), [(t, {"versions": HEALTHY}) for t in range(5, 30, 5)])
    assert kinds(made) == ["step"] and result.status.canary_percent == 50
    (step,) = result.status.analysis.label_steps
    assert (step.percent, step.canary_labels, step.canary_incorrect) == (25, 1000, 10)
    assert (step.stable_labels, step.stable_incorrect) == (3000, 30)
    # At 50 %: 1000 more canary labels (20 wrong), 1000 more stable (10 wrong).
    more = {"v1": version(8000, labels=4000, wrong=40), "v2": version(4000, labels=2000, wrong=30)}
    result, made = run(sp, result.status, [(t, {"versions": more}) for t in range(25, 50, 5)])
    assert kinds(made) == ["promote"]
    # A blind period restarts the labels and forgets the steps recorded before it.
    result, _ = run(sp, canary(sp), [(t, {"versions": HEALTHY}) for t in range(5, 30, 5)])
    result, _ = run(sp, result.status, [(25, {"metrics_ok": False}), (30, {"versions": HEALTHY})])
    assert result.status.analysis.label_steps == []
    # A status written before labelSteps existed (labels pooled, no steps recorded) keeps
    # the per-version sequences and records nothing at the next step.
    old = canary(sp)
    old.analysis.accuracy_since = "2025-12-31T23:59:00Z"
    result, made = run(sp, old, [(t, {"versions": HEALTHY}) for t in range(5, 30, 5)])
    assert kinds(made) == ["step"] and result.status.analysis.label_steps == []


def test_the_status_schema_keeps_label_steps():
    status = ModelDeploymentStatus.model_validate(
        {"analysis": {"labelSteps": [{"percent": 25, "canaryLabels": 10, "canaryIncorrect": 1,
                                      "stableLabels": 30, "stableIncorrect": 2}]}}
    )  # fmt: skip
    assert status.analysis.label_steps[0].stable_incorrect == 2
    dumped = status.model_dump(by_alias=True, exclude_none=True)
    assert dumped["analysis"]["labelSteps"][0]["canaryLabels"] == 10
