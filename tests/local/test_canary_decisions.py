"""Canary decisions on candidates of known quality, on a running local runtime.

Real processes: Prometheus, the drift service, the router, predictors and the operator,
started by ``LocalRuntime`` as ``kubeloop up`` starts them. Candidates 2, 3 and 5 accuracy
points worse than the stable version (measured on a held-out sample of the traffic's
distribution) and one equal are published one after another while labelled traffic flows;
Prometheus is killed during the equal candidate's first step and again in its watch
window after promotion (see ``tests/support/canary.py``).
"""

from __future__ import annotations

import pytest

from tests.support.canary import ScenarioConfig, ScenarioResult, event_time, run_scenario

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scenario(tmp_path_factory, request) -> ScenarioResult:
    cache = request.config.cache
    drift_cache = (
        cache.mkdir("kubeloop-drift-thresholds")
        if cache is not None  # None: -p no:cacheprovider
        else tmp_path_factory.mktemp("drift-cache")
    )
    return run_scenario(
        ScenarioConfig(), tmp_path_factory.mktemp("canary"), drift_cache=drift_cache
    )


def _checks(event: dict) -> dict:
    return event.get("evidence", {}).get("checks", {})


def test_each_worse_candidate_is_rolled_back_on_live_accuracy_before_half_the_traffic(scenario):
    worse = [r for r in scenario.runs if r.candidate.gap > 0]
    assert [r.candidate.gap for r in worse] == [0.02, 0.03, 0.05]
    for run in worse:
        decision = run.decision
        assert decision["decision"] == "rollback", (run.candidate.label, decision)
        assert decision["evidence"]["step"] < 50, decision
        assert not scenario.for_version(run.version, "step", "promote"), run.version
        # the labels said so: the candidates' scores equal the stable version's
        assert _checks(decision)["live_accuracy"]["verdict"] == "fail", decision
        assert run.labelled > 0


def test_the_equal_candidate_is_promoted_and_confirmed(scenario):
    run = next(r for r in scenario.runs if r.candidate.gap == 0)
    assert run.decision["decision"] == "promote", run.decision
    assert [e["evidence"]["step"] for e in scenario.for_version(run.version, "step")] == [25]
    assert scenario.for_version(run.version, "confirm")
    assert not scenario.for_version(run.version, "rollback")


def test_no_decision_while_prometheus_is_down_during_a_step(scenario):
    outage = next(o for o in scenario.outages if o.phase == "step")
    assert scenario.verdicts_between(outage.down_at, outage.up_at) == []
    holds = [
        e
        for e in scenario.for_version(outage.version, "hold")
        if outage.down_at <= event_time(e) <= outage.up_at
    ]
    assert holds, "the operator did not record a hold while Prometheus was down"
    # After the outage the step's evidence window starts again: no verdict on the version
    # before a whole minimum step of observed time has passed since Prometheus came back.
    after = [e for e in scenario.for_version(outage.version) if event_time(e) > outage.up_at]
    verdicts = [e for e in after if e["decision"] in ("step", "promote", "rollback")]
    assert verdicts, "no verdict after the outage"
    assert event_time(verdicts[0]) - outage.up_at >= scenario.config.min_step_seconds


def test_no_confirmation_in_a_blind_watch_window(scenario):
    outage = next(o for o in scenario.outages if o.phase == "watch")
    promoted = scenario.for_version(outage.version, "promote")[0]
    confirm = scenario.for_version(outage.version, "confirm")[0]
    # Prometheus was down for longer than the watch window, yet the window is confirmed
    # only after it has been observed with metrics up for its whole length.
    assert outage.up_at - outage.down_at > scenario.config.watch_window_seconds
    assert event_time(confirm) > outage.up_at
    observed = (outage.down_at - event_time(promoted)) + (event_time(confirm) - outage.up_at)
    # one operator pass (1 s) may still count before the outage is seen
    assert observed >= scenario.config.watch_window_seconds - 1.5, (promoted, confirm, outage)
