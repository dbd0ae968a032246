"""Label shift alone (only the predicted_class detector flags): retraining by default, an
alert with the estimated prior under monitoring.labelShift.action Alert."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kubeloop.operators.crd import parse_spec
from kubeloop.operators.reconciler.core import label_shift_alone, reconcile
from kubeloop.operators.reconciler.types import (
    Observations,
    Recalibrate,
    RegistryVersion,
    SubmitRun,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RATES = {"reference": 0.033, "reference_predicted": 0.04, "predicted": 0.093, "estimated": 0.105}


def spec(action: str | None = None):
    monitoring = {"driftDurationSeconds": 5}
    if action:
        monitoring["labelShift"] = {"action": action}
    return parse_spec({"model": {"name": "fraud-detector"}, "monitoring": monitoring,
                       "retraining": {"cooldownSeconds": 0}})  # fmt: skip


def obs(t: float, **flags: float) -> Observations:
    return Observations(
        now=T0 + timedelta(seconds=t),
        registry_versions=(RegistryVersion("v1", True),),
        ready_versions=frozenset({"v1"}),
        drift_detected=any(v >= 1 for v in flags.values()),
        drift_detail={"detectors": {"error_rate": 0.0, **flags}, "positive_rate": RATES},
        drift_version="v1",
        watched_versions=frozenset({"v1"}),
        max_pass_gap_seconds=1e6,
    )


def run(sp, passes):
    status, decisions, actions = None, [], []
    for o in passes:
        result = reconcile("fd", sp, status, o)
        status = result.status
        decisions += result.decisions
        actions += result.actions
    return status, decisions, actions


@pytest.mark.parametrize(
    ("flags", "alone"),
    [
        ({"predicted_class": 1.0, "error_rate": 0.0}, True),
        ({"predicted_class": 1.0, "error_rate": 1.0}, False),
        ({"predicted_class": 0.0, "error_rate": 1.0}, False),
        ({}, False),
    ],
)
def test_label_shift_alone_means_only_the_predicted_class_detector(flags, alone):
    assert label_shift_alone({"detectors": flags}) is alone


def test_by_default_label_shift_is_drift_and_retrains_with_its_evidence():
    status, decisions, actions = run(
        spec(),
        [obs(0, predicted_class=0.0), obs(1, predicted_class=1.0), obs(7, predicted_class=1.0)],
    )
    drift = [d for d in decisions if d.decision == "drift"]
    assert [d.reason for d in drift] == ["LabelShiftDetected"]
    assert "9.3 %" in drift[0].message and "10.5 %" in drift[0].message  # predicted, prior
    assert drift[0].evidence["positive_rate"] == RATES
    assert status.drift == "Sustained"
    assert [a for a in actions if isinstance(a, SubmitRun)]


def test_alert_records_the_shift_once_and_starts_no_run():
    status, decisions, actions = run(
        spec("Alert"),
        [obs(0, predicted_class=0.0)] + [obs(t, predicted_class=1.0) for t in (1, 7, 30, 300)],
    )
    alerts = [d for d in decisions if d.decision == "alert"]
    assert [(d.reason, d.version) for d in alerts] == [("LabelShift", "v1")]
    assert "prior estimated 10.5 %" in alerts[0].message and "Alert" in alerts[0].message
    assert not [d for d in decisions if d.decision in ("drift", "retrain")]
    assert not [a for a in actions if isinstance(a, SubmitRun)]
    assert status.drift == "LabelShift"
    drifting = next(c for c in status.conditions if c.type == "Drifting")
    assert (drifting.status, drifting.reason) == ("True", "LabelShift")


def test_under_alert_another_detector_still_means_drift_and_retraining():
    status, decisions, actions = run(
        spec("Alert"),
        [obs(0, predicted_class=0.0), obs(1, predicted_class=1.0),
         obs(10, predicted_class=1.0, error_rate=1.0), obs(12, predicted_class=1.0, error_rate=1.0),
         obs(16, predicted_class=1.0, error_rate=1.0)],
    )  # fmt: skip
    assert [d.decision for d in decisions if d.decision in ("alert", "drift")] == ["alert", "drift"]
    # the drift episode starts when the other detector joins (t=10), not at the alert (t=1)
    assert status.drift_since.startswith("2026-01-01T00:00:10")
    assert status.drift == "Sustained"
    assert [a for a in actions if isinstance(a, SubmitRun)]


def test_the_alert_clears_with_the_flag():
    alerted, _, _ = run(spec("Alert"), [obs(0), obs(1, predicted_class=1.0)])
    assert alerted.drift == "LabelShift"
    status, _, _ = run(
        spec("Alert"), [obs(0), obs(1, predicted_class=1.0), obs(5, predicted_class=0.0)]
    )
    assert status.drift == "None" and status.drift_since is None


def test_an_unknown_action_is_refused_by_name():
    with pytest.raises(ValueError, match="monitoring.labelShift.action"):
        spec("Reweight")


def test_the_drift_decision_names_the_inputs_that_moved_most():
    moved = [{"feature": "amount", "p_value": 1e-9}, {"feature": "is_foreign", "p_value": 0.002}]
    o = obs(1, error_rate=1.0)
    o = type(o)(**{**o.__dict__, "drift_detail": {**o.drift_detail, "moved": moved}})
    _, decisions, _ = run(spec(), [obs(0), o])
    drift = [d for d in decisions if d.decision == "drift"]
    assert drift[0].message == (
        "drift on v1; inputs that moved most: amount (p 1e-09), is_foreign (p 0.002)"
    )
    assert drift[0].evidence["moved"] == moved


def test_recalibrate_publishes_the_stable_version_for_the_estimated_prior_once():
    passes = [obs(0, predicted_class=0.0), obs(1, predicted_class=1.0), obs(3, predicted_class=1.0)]
    passes += [obs(t, predicted_class=1.0) for t in (7, 30, 300)]
    status, decisions, actions = run(spec("Recalibrate"), passes)
    (action,) = [a for a in actions if isinstance(a, Recalibrate)]
    assert action == Recalibrate("v1", "fd-v1-recalibrate", RATES["reference"], RATES["estimated"])
    (made,) = [d for d in decisions if d.decision == "recalibrate"]
    assert made.reason == "LabelShiftSustained" and "10.5 %" in made.message
    assert made.evidence["recalibration"] == "fd-v1-recalibrate"
    # Recorded as label shift, not as drift: no retraining run, once per stable version.
    assert [d.reason for d in decisions if d.decision == "alert"] == ["LabelShift"]
    assert not [a for a in actions if isinstance(a, SubmitRun)]
    assert (status.drift, status.recalibrated_for) == ("LabelShift", "v1")


def test_recalibrate_waits_for_drift_duration_and_needs_a_prior():
    short = run(spec("Recalibrate"), [obs(0, predicted_class=0.0), obs(1, predicted_class=1.0),
                                      obs(4, predicted_class=1.0)])  # fmt: skip
    assert not [a for a in short[2] if isinstance(a, Recalibrate)]  # 3 s of the 5 s duration
    unknown = obs(7, predicted_class=1.0)
    unknown.drift_detail["positive_rate"] = {**RATES, "estimated": 0.0}
    status, decisions, actions = run(
        spec("Recalibrate"), [obs(0, predicted_class=0.0), obs(1, predicted_class=1.0), unknown]
    )
    assert not [a for a in actions if isinstance(a, Recalibrate)]
    assert [d.reason for d in decisions if d.decision == "hold"] == ["PriorUnknown"]
    assert status.recalibrated_for is None  # asked again once the service gives a prior


def test_under_recalibrate_another_detector_still_means_drift_and_retraining():
    status, _, actions = run(
        spec("Recalibrate"),
        [obs(0), obs(1, predicted_class=1.0, error_rate=1.0), obs(7, predicted_class=1.0, error_rate=1.0)],
    )  # fmt: skip
    assert status.drift == "Sustained" and [a for a in actions if isinstance(a, SubmitRun)]
    assert not [a for a in actions if isinstance(a, Recalibrate)]


def test_retrain_reweighted_submits_the_run_with_the_estimated_prior():
    status, decisions, actions = run(
        spec("RetrainReweighted"),
        [obs(0, predicted_class=0.0), obs(1, predicted_class=1.0), obs(7, predicted_class=1.0)],
    )
    [submit] = [a for a in actions if isinstance(a, SubmitRun)]
    assert submit.parameters["target_positive_rate"] == "0.105"
    [retrain] = [d for d in decisions if d.decision == "retrain"]
    assert "re-weighted to a positive prior of 10.50%" in retrain.message
    assert retrain.evidence["positive_rate"] == RATES
    # Parameters are strings on the wire; the local runner's coercion makes it a float.
    from kubeloop.local.operator.runjob import _coerce

    assert _coerce(submit.parameters["target_positive_rate"]) == pytest.approx(0.105)


@pytest.mark.parametrize(
    "flags",
    [
        {"predicted_class": 1.0, "error_rate": 1.0},  # not label shift alone: plain drift
        {"predicted_class": 1.0},  # alone, but no usable prior estimate (below)
    ],
)
def test_retrain_reweighted_without_label_shift_alone_or_a_prior_trains_unweighted(
    flags, monkeypatch
):
    if len(flags) == 1:
        monkeypatch.setitem(RATES, "estimated", None)
    _, _, actions = run(spec("RetrainReweighted"), [obs(0), obs(1, **flags), obs(7, **flags)])
    [submit] = [a for a in actions if isinstance(a, SubmitRun)]
    assert "target_positive_rate" not in submit.parameters
