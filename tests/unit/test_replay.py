"""Replay of the champion's data beside a retraining window: how many rows, which, and the
run parameters the operator sends for spec.retraining.replayFraction and distillWeight."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
from kubeloop.operators.crd import parse_spec
from kubeloop.operators.reconciler.core import reconcile
from kubeloop.operators.reconciler.types import (
    Observations,
    RegistryVersion,
    RunObservation,
    RunState,
    SubmitRun,
)

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.data.replay import ReplayError, draw, replay_count, replay_rows

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("window", "fraction", "expected"),
    [(560, 0.0, 0), (560, 0.5, 560), (300, 0.6, 450), (0, 0.5, 0)],
)
def test_replay_rows_make_up_the_fraction_of_the_training_rows(window, fraction, expected):
    count = replay_count(window, fraction)
    assert count == expected
    if window:
        assert count / (count + window) == pytest.approx(fraction, abs=1e-3)


@pytest.mark.parametrize("fraction", [-0.1, 1.0, 1.5])
def test_a_fraction_outside_zero_to_one_is_refused(fraction):
    with pytest.raises(ReplayError, match="replay fraction must be in"):
        replay_count(100, fraction)


def reference(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({name: rng.normal(size=n) for name in FRAUD_SCHEMA.feature_names})
    frame[FRAUD_SCHEMA.label] = (np.arange(n) % 10 == 0).astype(int)
    frame["prediction_score"] = rng.uniform(size=n)
    frame["row"] = np.arange(n)
    return frame


def test_draw_is_seeded_without_replacement_in_order_and_capped_by_the_sample():
    sample = reference(100)
    a, b, c = draw(sample, 30, seed=1), draw(sample, 30, seed=1), draw(sample, 30, seed=2)
    assert a.equals(b) and not a.equals(c)
    assert a["row"].is_unique and a["row"].is_monotonic_increasing and len(a) == 30
    assert len(draw(sample, 500, seed=1)) == 100


def test_replay_rows_keep_the_features_and_label_only():
    rows = replay_rows(reference(1000), FRAUD_SCHEMA, window_rows=200, fraction=0.5, seed=0)
    assert list(rows.columns) == [*FRAUD_SCHEMA.feature_names, FRAUD_SCHEMA.label]
    assert len(rows) == 200
    with pytest.raises(ReplayError, match=r"lacks column\(s\) \['amount'\]"):
        replay_rows(reference(10).drop(columns=["amount"]), FRAUD_SCHEMA, 10, 0.5, 0)


def spec(
    fraction: float | None,
    concept: float | None = None,
    distill: float | None = None,
    concept_window: str | None = None,
):
    retraining = {"cooldownSeconds": 0, "parameters": {"window": "fresh"}, "dataWindow": "20s"}
    if concept_window is not None:
        retraining["conceptDataWindow"] = concept_window
    if fraction is not None:
        retraining["replayFraction"] = fraction
    if concept is not None:
        retraining["conceptReplayFraction"] = concept
    if distill is not None:
        retraining["distillWeight"] = distill
    return parse_spec({"model": {"name": "fraud-detector"},
                       "monitoring": {"driftDurationSeconds": 5}, "retraining": retraining})  # fmt: skip


def obs(
    t: float, drifted: bool, flagged: tuple[str, ...] = ("error_rate",), run=None
) -> Observations:
    return Observations(
        now=T0 + timedelta(seconds=t),
        registry_versions=(RegistryVersion("v1", True),),
        ready_versions=frozenset({"v1"}),
        drift_detected=drifted,
        drift_detail={"detectors": dict.fromkeys(flagged, float(drifted))},
        drift_version="v1",
        watched_versions=frozenset({"v1"}),
        max_pass_gap_seconds=1e6,
        run=run,
    )


def submitted(sp, flagged: tuple[str, ...] = ("error_rate",), history: list | None = None):
    status, actions = None, []
    for o in (obs(0, False, flagged), obs(1, True, flagged), obs(7, True, flagged)):
        result = reconcile("fd", sp, status, o)
        status, actions = result.status, [*actions, *result.actions]
    [submit] = [a for a in actions if isinstance(a, SubmitRun)]
    if history is not None:
        history.extend(status.history)
    return submit


def test_the_run_gets_the_fraction_and_the_stable_version_to_replay():
    parameters = submitted(spec(0.6)).parameters
    assert parameters["replay_fraction"] == "0.6"
    assert parameters["replay_version"] == "v1"
    assert parameters["window"] == "fresh"  # the spec's own parameters still travel


@pytest.mark.parametrize("fraction", [None, 0.0])
def test_without_a_fraction_the_run_learns_from_the_window_alone(fraction):
    parameters = submitted(spec(fraction)).parameters
    assert "replay_fraction" not in parameters and "replay_version" not in parameters


@pytest.mark.parametrize("fraction", [-0.2, 1.0])
def test_the_crd_refuses_a_fraction_outside_zero_to_one(fraction):
    with pytest.raises(ValueError, match="spec.retraining.replayFraction"):
        spec(fraction)


@pytest.mark.parametrize(
    ("flagged", "expected"),
    [
        (("error_rate",), "0.2"),  # concept drift: only the labels' error rate moved
        (("error_rate", "predicted_class"), "0.2"),
        (("error_rate", "cvm"), "0.6"),  # an input moved: covariate drift, the usual share
        (("mmd",), "0.6"),
        (("predicted_class",), "0.6"),  # label shift alone
    ],
)
def test_concept_drift_replays_the_concept_share(flagged, expected):
    history: list = []
    parameters = submitted(spec(0.6, concept=0.2), flagged, history).parameters
    assert parameters["replay_fraction"] == expected
    [retrain] = [d for d in history if d.decision == "retrain"]
    assert f"{float(expected):.0%} of its training rows replayed from v1" in retrain.message
    assert ("concept drift" in retrain.message) is (expected == "0.2")


def test_concept_replay_zero_learns_from_the_window_alone():
    parameters = submitted(spec(0.6, concept=0.0)).parameters
    assert "replay_fraction" not in parameters and "replay_version" not in parameters
    # unset: concept drift replays replayFraction like any other
    assert submitted(spec(0.6)).parameters["replay_fraction"] == "0.6"


@pytest.mark.parametrize("fraction", [-0.1, 1.0])
def test_the_crd_refuses_a_concept_fraction_outside_zero_to_one(fraction):
    with pytest.raises(ValueError, match="spec.retraining.conceptReplayFraction"):
        spec(0.6, concept=fraction)


@pytest.mark.parametrize(
    ("flagged", "expected"),
    [
        (("error_rate",), "40s"),  # concept drift alone: the longer window
        (("error_rate", "predicted_class"), "40s"),
        (("error_rate", "cvm"), "20s"),  # an input moved too: dataWindow
        (("mmd",), "20s"),
        (("predicted_class",), "20s"),  # label shift alone
    ],
)
def test_concept_drift_learns_from_the_concept_window(flagged, expected):
    history: list = []
    parameters = submitted(spec(0.6, concept_window="40s"), flagged, history).parameters
    assert parameters["data_window"] == expected
    [retrain] = [d for d in history if d.decision == "retrain"]
    assert ("learning from 40s of labelled traffic" in retrain.message) is (expected == "40s")


def test_without_a_concept_window_concept_drift_learns_from_the_data_window():
    assert submitted(spec(0.6)).parameters["data_window"] == "20s"


@pytest.mark.parametrize("window", ["40", "40 s", "-1m", "1w"])
def test_the_crd_refuses_a_concept_window_it_cannot_read(window):
    with pytest.raises(ValueError, match="spec.retraining.conceptDataWindow"):
        spec(0.6, concept_window=window)


def test_a_resubmitted_run_keeps_the_share_it_was_submitted_with():
    sp, status, submits = spec(0.6, concept=0.2, concept_window="40s"), None, []
    for o in (obs(0, False), obs(1, True), obs(7, True)):  # concept drift: 20 %, 40 s
        result = reconcile("fd", sp, status, o)
        status, submits = result.status, [*submits, *result.actions]
    [first] = [a for a in submits if isinstance(a, SubmitRun)]
    assert status.retraining.replay_fraction == 0.2
    # the backend lost the run while an input detector flagged too: same run, same share
    lost = RunObservation(first.run_name, RunState.NOT_FOUND)
    result = reconcile("fd", sp, status, obs(9, True, ("error_rate", "cvm"), run=lost))
    [again] = [a for a in result.actions if isinstance(a, SubmitRun)]
    assert again.run_name == first.run_name
    assert again.parameters["replay_fraction"] == "0.2"
    assert status.retraining.data_window == "40s" and again.parameters["data_window"] == "40s"


@pytest.mark.parametrize(
    ("flagged", "expected"),
    [
        (("error_rate", "cvm"), "0.3"),  # an input moved: P(y|x) held, v1 still teaches
        (("predicted_class",), "0.3"),  # label shift alone
        (("error_rate",), None),  # concept drift alone: v1's scores are the old concept
        (("error_rate", "predicted_class"), None),
    ],
)
def test_the_run_distils_toward_the_stable_version_unless_the_concept_moved(flagged, expected):
    history: list = []
    parameters = submitted(spec(None, distill=0.3), flagged, history).parameters
    assert parameters.get("distill_weight") == expected
    assert "replay_fraction" not in parameters  # distillation alone: no rows replayed
    assert ("replay_version" in parameters) is (expected is not None)
    if expected:
        assert parameters["replay_version"] == "v1"
    [retrain] = [d for d in history if d.decision == "retrain"]
    assert ("distilled toward v1's scores (weight 0.3)" in retrain.message) is (
        expected is not None
    )


def test_a_resubmitted_run_keeps_its_distillation_weight():
    sp, status, submits = spec(0.6, distill=0.3), None, []
    for o in (obs(0, False), obs(1, True), obs(7, True)):  # concept drift alone: none
        result = reconcile("fd", sp, status, o)
        status, submits = result.status, [*submits, *result.actions]
    [first] = [a for a in submits if isinstance(a, SubmitRun)]
    assert status.retraining.distill_weight == 0.0 and "distill_weight" not in first.parameters
    lost = RunObservation(first.run_name, RunState.NOT_FOUND)
    result = reconcile("fd", sp, status, obs(9, True, ("error_rate", "cvm"), run=lost))
    [again] = [a for a in result.actions if isinstance(a, SubmitRun)]
    assert again.run_name == first.run_name and "distill_weight" not in again.parameters


@pytest.mark.parametrize("weight", [-0.1, 1.0])
def test_the_crd_refuses_a_distillation_weight_outside_zero_to_one(weight):
    with pytest.raises(ValueError, match="spec.retraining.distillWeight"):
        spec(0.6, distill=weight)
