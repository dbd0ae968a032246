"""The reconciler core: table-driven scenarios and hypothesis properties (no I/O)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubeloop.operators.crd import ModelDeploymentStatus, parse_spec
from kubeloop.operators.reconciler.core import reconcile
from kubeloop.operators.reconciler.types import (
    Observations,
    RecordDecision,
    RegistryVersion,
    RunObservation,
    SetChampion,
    SetTraffic,
    SubmitRun,
    VersionMetrics,
    WatchDrift,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EDGES = [0.05 * i for i in range(1, 21)]


def spec(**rollout):
    base = {"minSamples": 200, "minStepSeconds": 30, "watchWindowSeconds": 300, **rollout}
    return parse_spec(
        {
            "model": {"name": "fraud-detector"},
            "rollout": base,
            "monitoring": {"driftDurationSeconds": 60},
            "retraining": {"cooldownSeconds": 600, "maxAttempts": 2, "backoffSeconds": 60},
        }
    )


def hist(n: float, shift: float = 0.0) -> dict[float, float]:
    # Most scores near 0 (fraud is rare), a tail towards 1; `shift` moves mass up.
    weights = [max(0.5**i + shift * (i / 20), 1e-6) for i in range(20)]
    total = sum(weights)
    out, acc = {}, 0.0
    for edge, w in zip(EDGES, weights, strict=True):
        acc += n * w / total
        out[round(edge, 2)] = acc
    return out


def healthy(n: float, errors: float = 0.0, p99: float = 0.02, shift: float = 0.0) -> VersionMetrics:
    return VersionMetrics(
        requests=n, server_errors=errors, latency_p99=p99, score_buckets=hist(n, shift)
    )


def obs(t: float = 0, versions=None, reg=("v1",), ready=("v1", "v2"), **kw) -> Observations:
    # Scenarios jump between passes: a long pass gap here is not an operator outage
    # (the tests of blind periods set their own).
    kw.setdefault("max_pass_gap_seconds", 1e6)
    kw.setdefault("watched_versions", frozenset(ready))
    return Observations(
        now=T0 + timedelta(seconds=t),
        versions=versions or {},
        registry_versions=tuple(RegistryVersion(v, True) for v in reg),
        ready_versions=frozenset(ready),
        drift_detected=kw.pop("drift", False),
        **kw,
    )


def deployed(sp=None) -> ModelDeploymentStatus:
    return reconcile("fd", sp or spec(), None, obs()).status


def in_canary(sp=None) -> ModelDeploymentStatus:
    sp = sp or spec()
    status = deployed(sp)
    return reconcile("fd", sp, status, obs(1, reg=("v1", "v2"))).status


def decisions(result) -> list[str]:
    return [a.decision for a in result.actions if isinstance(a, RecordDecision)]


def test_first_deployment_serves_latest_passed_version():
    result = reconcile("fd", spec(), None, obs(reg=("v1", "v2")))
    assert result.status.stable_version == "v2"
    assert SetTraffic("v2", None, 0) in result.actions
    assert SetChampion("v2") in result.actions
    assert decisions(result) == ["deploy"]


def test_no_version_stays_pending_with_reason():
    result = reconcile("fd", spec(), None, obs(reg=()))
    assert result.status.phase == "Pending"
    ready = next(c for c in result.status.conditions if c.type == "Ready")
    assert (ready.status, ready.reason) == ("False", "NoVersion")
    assert not [a for a in result.actions if isinstance(a, SetTraffic)]


def test_new_candidate_starts_canary_at_first_step():
    status = in_canary()
    assert (status.phase, status.candidate_version, status.canary_percent) == ("Canary", "v2", 10)


@pytest.mark.parametrize(
    ("canary", "stable", "t", "expected_decision", "reason"),
    [
        (healthy(50), healthy(50), 100, "hold", "NotEnoughEvidence"),
        (healthy(5000), healthy(5000), 5, "hold", "StepTooYoung"),
        (healthy(5000), healthy(5000), 100, "step", "AnalysisPassed"),
        (healthy(5000, errors=1000), healthy(5000), 100, "rollback", "AnalysisFailed"),
        (healthy(5000, p99=0.5), healthy(5000), 100, "rollback", "AnalysisFailed"),
        (healthy(5000, shift=3.0), healthy(5000), 100, "rollback", "AnalysisFailed"),
        (healthy(300, errors=6), healthy(300), 100, "hold", "Inconclusive"),
    ],
    ids=["low-traffic", "too-young", "pass", "errors", "latency", "score-shift", "inconclusive"],
)
def test_canary_step_verdicts(canary, stable, t, expected_decision, reason):
    result = reconcile(
        "fd", spec(), in_canary(), obs(t, {"v2": canary, "v1": stable}, reg=("v1", "v2"))
    )
    last = result.status.history[-1]
    assert (last.decision, last.reason) == (expected_decision, reason)
    if expected_decision == "rollback":
        assert result.status.candidate_version is None
        assert "v2" in result.status.rejected_versions
        assert SetTraffic("v1", None, 0) in result.actions
    if expected_decision == "hold":
        assert result.status.canary_percent == 10


def test_full_rollout_steps_then_promotes_then_watch_confirms():
    sp = spec()
    status = in_canary(sp)
    t = 0
    seen = []
    for _ in range(3):
        t += 100
        result = reconcile(
            "fd", sp, status, obs(t, {"v2": healthy(5000), "v1": healthy(5000)}, reg=("v1", "v2"))
        )
        status = result.status
        seen += decisions(result)
    assert seen == ["step", "step", "promote"]
    assert (status.stable_version, status.previous_version, status.phase) == (
        "v2",
        "v1",
        "Watching",
    )
    result = reconcile("fd", sp, status, obs(t + 400, {"v2": healthy(5000)}, reg=("v1", "v2")))
    assert decisions(result) == ["confirm"]
    assert result.status.phase == "Stable"


def test_watch_rolls_back_degraded_promotion():
    sp = spec(steps=[50, 100])
    status = in_canary(sp)
    status = reconcile(
        "fd", sp, status, obs(100, {"v2": healthy(5000), "v1": healthy(5000)}, reg=("v1", "v2"))
    ).status
    assert status.stable_version == "v2"
    result = reconcile(
        "fd", sp, status, obs(150, {"v2": healthy(5000, errors=900)}, reg=("v1", "v2"))
    )
    assert (result.status.stable_version, result.status.phase) == ("v1", "Stable")
    assert SetChampion("v1") in result.actions and SetTraffic("v1", None, 0) in result.actions
    degraded = next(c for c in result.status.conditions if c.type == "Degraded")
    assert (degraded.status, degraded.reason) == ("True", "PromotedVersionDegraded")
    # v2 is never canaried again.
    again = reconcile("fd", sp, result.status, obs(500, {"v1": healthy(100)}, reg=("v1", "v2")))
    assert again.status.candidate_version is None


def promoted(sp=None) -> ModelDeploymentStatus:
    sp = sp or spec(steps=[50, 100])
    metrics = {"v2": healthy(5000), "v1": healthy(5000)}
    return reconcile("fd", sp, in_canary(sp), obs(100, metrics, reg=("v1", "v2"))).status


def confirmed(sp=None) -> ModelDeploymentStatus:
    sp = sp or spec(steps=[50, 100])
    status = reconcile("fd", sp, promoted(sp), obs(400, {"v2": healthy(5000)}, reg=("v1", "v2")))
    assert status.status.phase == "Stable", status.status.history[-1]
    return status.status


def watches(result) -> list[str]:
    return [a.version for a in result.actions if isinstance(a, WatchDrift)]


@pytest.mark.parametrize(
    ("before", "reg", "watched", "expected"),
    [
        (lambda: None, ("v1",), None, ["v1"]),
        (deployed, ("v1",), None, []),
        (deployed, ("v1",), frozenset({"v1"}), []),
        (deployed, ("v1",), frozenset(), ["v1"]),
        (deployed, ("v1", "v2"), None, ["v2"]),
        (deployed, ("v1", "v2"), frozenset({"v1"}), ["v2"]),
        (in_canary, ("v1", "v2"), frozenset({"v1"}), ["v2"]),
        (in_canary, ("v1", "v2"), frozenset({"v1", "v2"}), []),
        (in_canary, ("v1", "v2"), frozenset({"v2"}), ["v1"]),
        (in_canary, ("v1", "v2"), None, []),
        (promoted, ("v1", "v2"), frozenset({"v2"}), []),
        (promoted, ("v1", "v2"), frozenset({"v1"}), ["v2"]),
    ],
    ids=[
        "first-deployment",
        "stable-unknown-watched-set",
        "stable-watched",
        "stable-lost-after-restart",
        "canary-starts-unknown-watched-set",
        "canary-starts-once",
        "canary-not-watched",
        "canary-watched",
        "stable-lost-during-canary",
        "canary-unknown-watched-set",
        "watching-previous-not-watched",
        "promoted-lost-while-watching",
    ],
)
def test_drift_service_watches_stable_and_canary(before, reg, watched, expected):
    """The drift service watches the stable version and the canary; what it does not watch
    now (a failed watch, a restart) is asked for again, and an unknown watched set sends
    only the watches of a transition (deploy, canary start, promotion, rollback)."""
    status = before()
    result = reconcile(
        "fd", spec(), status, obs(5, reg=reg, watched_versions=watched, ready=("v1", "v2"))
    )
    assert watches(result) == expected


def test_promotion_watches_the_new_stable_version_once():
    sp = spec(steps=[50, 100])
    metrics = {"v2": healthy(5000), "v1": healthy(5000)}
    result = reconcile(
        "fd", sp, in_canary(sp), obs(100, metrics, reg=("v1", "v2"), watched_versions=frozenset())
    )
    assert result.status.phase == "Watching"
    assert watches(result) == ["v2"]


@pytest.mark.parametrize(
    ("before", "t", "reg", "expected"),
    [
        (deployed, 5, ("v1",), SetTraffic("v1", None, 0)),
        (in_canary, 5, ("v1", "v2"), SetTraffic("v1", "v2", 50)),
        (promoted, 110, ("v1", "v2"), SetTraffic("v2", None, 0, frozenset({"v1"}))),
        (confirmed, 1000, ("v1", "v2"), SetTraffic("v2", None, 0)),
    ],
    ids=["stable", "canary", "watching-keeps-previous-warm", "confirmed-lets-previous-go"],
)
def test_traffic_keeps_the_previous_version_warm_while_watching(before, t, reg, expected):
    sp = spec(steps=[50, 100])
    result = reconcile("fd", sp, before(sp), obs(t, reg=reg))
    assert result.actions[0] == expected


def test_manual_approval_waits_for_promote_command():
    sp = spec(steps=[50, 100], approval="Manual")
    status = in_canary(sp)
    metrics = {"v2": healthy(5000), "v1": healthy(5000)}
    result = reconcile("fd", sp, status, obs(100, metrics, reg=("v1", "v2")))
    assert result.status.history[-1].reason == "AwaitingApproval"
    assert result.status.stable_version == "v1"
    result = reconcile(
        "fd", sp, result.status, obs(110, metrics, reg=("v1", "v2"), commands={"promote": "v2"})
    )
    assert result.status.stable_version == "v2"
    assert result.status.history[-1].reason == "ManualPromotion"


def test_manual_rollback_of_promoted_version_is_idempotent():
    sp = spec(steps=[50, 100])
    status = in_canary(sp)
    status = reconcile(
        "fd", sp, status, obs(100, {"v2": healthy(5000), "v1": healthy(5000)}, reg=("v1", "v2"))
    ).status
    once = reconcile("fd", sp, status, obs(120, reg=("v1", "v2"), commands={"rollback": "v2"}))
    assert once.status.stable_version == "v1"
    twice = reconcile(
        "fd", sp, once.status, obs(130, reg=("v1", "v2"), commands={"rollback": "v2"})
    )
    assert twice.status.stable_version == "v1"
    assert "rollback" not in decisions(twice)


def test_paused_rollout_holds():
    sp = spec(paused=True)
    result = reconcile(
        "fd",
        sp,
        in_canary(sp),
        obs(100, {"v2": healthy(5000), "v1": healthy(5000)}, reg=("v1", "v2")),
    )
    assert result.status.canary_percent == 10
    assert result.status.history[-1].reason == "Paused"


def test_prometheus_down_holds_and_says_so():
    result = reconcile(
        "fd",
        spec(),
        in_canary(),
        obs(100, reg=("v1", "v2"), metrics_ok=False, metrics_error="connection refused"),
    )
    assert result.status.canary_percent == 10 and result.status.candidate_version == "v2"
    progressing = next(c for c in result.status.conditions if c.type == "Progressing")
    assert (progressing.status, progressing.reason) == ("Unknown", "MetricsUnavailable")
    assert "connection refused" in progressing.message


def drifting(sp, status, t, **kw):
    return reconcile("fd", sp, status, obs(t, {"v1": healthy(100)}, drift=True, **kw))


def test_sustained_drift_submits_one_deterministic_run():
    sp = spec()
    status = deployed(sp)
    first = drifting(sp, status, 10)
    assert first.status.drift == "Detected" and not [
        a for a in first.actions if isinstance(a, SubmitRun)
    ]
    second = drifting(sp, first.status, 80)
    runs = [a for a in second.actions if isinstance(a, SubmitRun)]
    assert [r.run_name for r in runs] == ["fd-v1-retrain-1"]
    assert runs[0].parameters["model_name"] == "fraud-detector"
    third = drifting(sp, second.status, 90, run=RunObservation("fd-v1-retrain-1", "Running"))
    assert not [a for a in third.actions if isinstance(a, SubmitRun)]
    assert next(c for c in third.status.conditions if c.type == "Retraining").status == "True"
    # The run registers v2, which becomes the candidate.
    done = drifting(
        sp,
        third.status,
        200,
        reg=("v1", "v2"),
        run=RunObservation("fd-v1-retrain-1", "Succeeded", "v2"),
    )
    assert done.status.candidate_version == "v2" and done.status.phase == "Canary"


def test_failed_run_backs_off_then_gives_up_after_max_attempts():
    sp = spec()
    status = drifting(sp, drifting(sp, deployed(sp), 10).status, 80).status
    failed = drifting(
        sp, status, 100, run=RunObservation("fd-v1-retrain-1", "Failed", message="OOM")
    )
    assert failed.status.retraining.failures == 1
    cooldown = drifting(sp, failed.status, 200)
    assert cooldown.status.history[-1].reason == "RetrainingCooldown"
    retry = drifting(sp, cooldown.status, 700)
    assert [a.run_name for a in retry.actions if isinstance(a, SubmitRun)] == ["fd-v1-retrain-2"]
    failed2 = drifting(sp, retry.status, 710, run=RunObservation("fd-v1-retrain-2", "Failed"))
    exhausted = drifting(sp, failed2.status, 5000)
    assert not [a for a in exhausted.actions if isinstance(a, SubmitRun)]
    stalled = next(c for c in exhausted.status.conditions if c.type == "Stalled")
    assert (stalled.status, stalled.reason) == ("True", "RetrainingExhausted")


def test_a_run_the_gate_stopped_says_why_and_waits_for_the_cooldown():
    sp = spec()
    status = drifting(sp, drifting(sp, deployed(sp), 10).status, 80).status
    why = "the gate refused the candidate: window_accuracy 0.9400 vs champion v1 0.9700 ..."
    kept = drifting(sp, status, 100, run=RunObservation("fd-v1-retrain-1", "Succeeded",
                                                        message=why))  # fmt: skip
    retrained = [d for d in kept.decisions if d.decision == "retrained"]
    assert retrained[0].message == f"fd-v1-retrain-1 registered no version ({why})"
    assert kept.status.phase == "Stable" and kept.status.candidate_version is None
    # the drift persists: no new run before the cooldown (no retry storm)
    soon = drifting(sp, kept.status, 200)
    assert not [a for a in soon.actions if isinstance(a, SubmitRun)]
    assert soon.status.history[-1].reason == "RetrainingCooldown"


def test_lost_run_is_resubmitted_under_the_same_name():
    sp = spec()
    status = drifting(sp, drifting(sp, deployed(sp), 10).status, 80).status
    again = drifting(sp, status, 90, run=RunObservation("fd-v1-retrain-1", "NotFound"))
    assert [a.run_name for a in again.actions if isinstance(a, SubmitRun)] == ["fd-v1-retrain-1"]


def test_drift_unknown_when_prometheus_down_never_retrains():
    sp = spec()
    status = drifting(sp, deployed(sp), 10).status
    result = reconcile("fd", sp, status, obs(1000, metrics_ok=False, drift=None))
    assert not [a for a in result.actions if isinstance(a, SubmitRun)]
    assert next(c for c in result.status.conditions if c.type == "Drifting").status == "Unknown"


def test_history_is_bounded_and_holds_are_not_repeated():
    sp = spec()
    status = in_canary(sp)
    for t in range(10, 400, 10):
        status = reconcile(
            "fd", sp, status, obs(t, {"v2": healthy(10), "v1": healthy(10)}, reg=("v1", "v2"))
        ).status
    holds = [h for h in status.history if h.decision == "hold"]
    assert len(holds) == 1
    assert len(status.history) <= 20


# --- properties ----------------------------------------------------------------------------
counts = st.floats(min_value=0, max_value=20000, allow_nan=False)


@st.composite
def version_metrics(draw):
    n = draw(counts)
    errors = draw(st.floats(min_value=0, max_value=1)) * n
    fb = draw(st.floats(min_value=0, max_value=1)) * n
    wrong = draw(st.floats(min_value=0, max_value=1)) * fb
    p99 = draw(st.one_of(st.none(), st.floats(min_value=0.001, max_value=2)))
    shift = draw(st.floats(min_value=0, max_value=5))
    return VersionMetrics(n, errors, p99, hist(n, shift) if n else {}, fb - wrong, wrong)


@st.composite
def canary_observations(draw):
    t = draw(st.floats(min_value=0, max_value=10000))
    versions = {}
    if draw(st.booleans()):
        versions["v2"] = draw(version_metrics())
    if draw(st.booleans()):
        versions["v1"] = draw(version_metrics())
    return obs(
        t,
        versions,
        reg=("v1", "v2"),
        metrics_ok=draw(st.booleans()),
        drift=draw(st.sampled_from([None, False, True])),
    )


FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(canary_observations())
def test_property_never_promotes_or_steps_without_passing_analysis(o):
    sp = spec()
    result = reconcile("fd", sp, in_canary(sp), o)
    made = decisions(result)
    if "promote" in made or "step" in made:
        entry = next(h for h in result.status.history if h.decision in ("promote", "step"))
        checks = entry.evidence["checks"]
        assert all(c["verdict"] in ("pass", "skipped") for c in checks.values())
        assert o.metrics_ok
        assert min(o.versions["v2"].requests, o.versions["v1"].requests) >= sp.rollout.min_samples


@FAST
@given(canary_observations())
def test_property_low_traffic_or_prometheus_down_holds(o):
    sp = spec()
    start = in_canary(sp)
    result = reconcile("fd", sp, start, o)
    low = (
        any(v.requests < sp.rollout.min_samples for v in o.versions.values()) or len(o.versions) < 2
    )
    timed_out = (o.now - T0).total_seconds() - 1 > sp.rollout.max_step_seconds
    if (low and not timed_out) or not o.metrics_ok:
        assert result.status.candidate_version == "v2"
        assert result.status.canary_percent == start.canary_percent
        assert result.status.stable_version == "v1"


@FAST
@given(canary_observations())
def test_property_replaying_observations_is_idempotent(o):
    sp = spec()
    start = in_canary(sp)
    a = reconcile("fd", sp, start, o)
    b = reconcile("fd", sp, start, o)
    assert a.actions == b.actions and a.status == b.status
    # Feeding the same observations again moves nothing further: they were already acted on.
    again = reconcile("fd", sp, a.status, o)
    assert not set(decisions(again)) & {"step", "promote", "rollback", "retrain", "canary"}
    assert again.status.stable_version == a.status.stable_version
    assert [x for x in again.actions if isinstance(x, SetTraffic)] == [
        x for x in a.actions if isinstance(x, SetTraffic)
    ]


@FAST
@given(
    canary_observations(),
    st.one_of(st.none(), st.sets(st.sampled_from(["v1", "v2", "v3"])).map(frozenset)),
)
def test_property_watches_only_serving_versions_once_each(o, watched):
    """Each pass asks at most once per version, only for the versions serving after it,
    and, with the watched set known, leaves none of them unwatched."""
    sp = spec()
    o = replace(o, watched_versions=watched)
    result = reconcile("fd", sp, in_canary(sp), o)
    asked = watches(result)
    serving = {result.status.stable_version}
    if result.status.phase == "Canary":
        serving.add(result.status.candidate_version)
    assert len(asked) == len(set(asked)) and set(asked) <= serving
    if watched is not None:
        assert serving <= watched | set(asked)


@FAST
@given(
    st.lists(
        st.tuples(
            st.booleans(), st.sampled_from(["Running", "Succeeded", "Failed", "NotFound", None])
        ),
        max_size=25,
    )
)
def test_property_never_two_concurrent_retraining_runs(steps):
    sp = spec()
    status = deployed(sp)
    active: str | None = None
    t = 0
    for drift, run_state in steps:
        t += 45
        run = (
            RunObservation(status.retraining.run_name, run_state)
            if run_state and status.retraining.run_name
            else None
        )
        result = reconcile("fd", sp, status, obs(t, {"v1": healthy(100)}, drift=drift, run=run))
        for action in result.actions:
            if isinstance(action, SubmitRun):
                assert active in (None, action.run_name), "a second run while one is active"
                active = action.run_name
        status = result.status
        if status.retraining.state not in ("Submitted", "Running"):
            active = None
    names = [h.evidence.get("run") for h in status.history if h.decision == "retrain"]
    assert len(names) == len(set(names))


def test_histograms_with_a_missing_bucket_are_compared_on_shared_buckets():
    canary = healthy(5000)
    partial = VersionMetrics(5000, 0, 0.02, {le: c for le, c in hist(5000).items() if le != 0.5})
    result = reconcile(
        "fd", spec(), in_canary(), obs(100, {"v2": canary, "v1": partial}, reg=("v1", "v2"))
    )
    assert result.status.history[-1].decision == "step"


def labelled(n: float, wrong: float, shift: float = 0.0, labels: float = 5000) -> VersionMetrics:
    return replace(
        healthy(n, shift=shift), feedback_correct=labels - wrong, feedback_incorrect=wrong
    )


@pytest.mark.parametrize(
    ("canary", "drifting", "expected"),
    [
        # scores far from the stable's, accuracy no worse (here: better)
        (labelled(5000, 50, shift=3.0), False, ("rollback", "AnalysisFailed")),
        (labelled(5000, 50, shift=3.0), True, ("step", "AnalysisPassed")),
        # the labels have not decided yet: the shift holds instead of failing
        (labelled(5000, 8, shift=3.0, labels=110), True, ("hold", "Inconclusive")),
        # worse on the labels: fails under drift too
        (labelled(5000, 900, shift=3.0), True, ("rollback", "AnalysisFailed")),
    ],
    ids=["no-drift", "drift-labels-pass", "drift-labels-open", "drift-labels-fail"],
)
def test_under_drift_on_the_stable_labels_decide_a_score_shift(canary, drifting, expected):
    status = in_canary()
    if drifting:
        status = status.model_copy(
            update={"drift": "Sustained", "drift_since": "2026-01-01T00:00:00Z"}
        )
    stable = labelled(5000, 350)
    result = reconcile(
        "fd", spec(), status, obs(100, {"v2": canary, "v1": stable}, reg=("v1", "v2"),
                                  drift=drifting, drift_version="v1"),
    )  # fmt: skip
    last = [h for h in result.status.history if h.version == "v2"][-1]
    assert (last.decision, last.reason) == expected
    score = last.evidence["checks"]["score_distribution"]
    if drifting and expected[0] != "rollback":
        assert score["verdict"] == "inconclusive" and "live accuracy decides" in score["detail"]
