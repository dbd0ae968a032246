"""The train stage called directly: pure pieces, then a real (small) Ray Train run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from kubeloop.components.train.impl import StageInputError, read_split, run_train

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.model import ModelBundle
from kubeloop.training import TrainingDataError, TrainParams
from kubeloop.training.loop import (
    best_threshold,
    decision_threshold,
    positive_weight,
    prior_correction,
    reweighting,
    time_split,
)
from tests.support.training import split_frames, write_split  # noqa: F401


def test_time_split_keeps_the_latest_events_for_validation():
    train, _ = split_frames(days=3, n_accounts=150)
    fit, valid = time_split(train, FRAUD_SCHEMA, 0.2)
    assert fit["event_timestamp"].max() <= valid["event_timestamp"].min()
    assert len(valid) == pytest.approx(0.2 * len(train), abs=1)


def test_time_split_names_a_one_class_part():
    train, _ = split_frames(days=3, n_accounts=150)
    with pytest.raises(TrainingDataError, match="needs both classes"):
        time_split(train.assign(is_fraud=0), FRAUD_SCHEMA, 0.2)
    with pytest.raises(TrainingDataError, match="validation_fraction"):
        time_split(train, FRAUD_SCHEMA, 1.5)


def test_weights_and_threshold():
    assert positive_weight(np.array([1, 0, 0, 0])) == 3.0
    assert prior_correction(3.0) == pytest.approx(-np.log(3.0))
    # Halfway between the lowest score called positive and the highest called negative.
    y = np.array([0, 0, 0, 1, 1])
    assert best_threshold(y, np.array([0.1, 0.2, 0.3, 0.8, 0.9])) == pytest.approx(0.55)


def test_threshold_maximises_accuracy_not_f1():
    # Cutting at 0.35 finds every fraud with three false alarms (F1 10/13, 8 of 11 right);
    # cutting at 0.825 misses two frauds and raises no alarm (F1 0.75, 9 of 11 right).
    y = np.array([0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95])
    threshold = best_threshold(y, scores)
    assert threshold == pytest.approx(0.825)
    assert np.mean((scores >= threshold) == y) == pytest.approx(9 / 11)
    # Ties between cuts as accurate as each other: the higher threshold (fewer alarms).
    assert best_threshold(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(
        0.35
    )
    # Tied scores are never split; nothing or everything positive lies past the extremes.
    assert best_threshold(np.array([0, 1, 1]), np.array([0.5, 0.5, 0.5])) < 0.5
    assert best_threshold(np.array([0, 0]), np.array([0.2, 0.3])) > 0.3
    with pytest.raises(TrainingDataError, match="as many labels, scores and weights"):
        best_threshold(np.array([0, 1]), np.array([0.5]))


def _scored_rows(rng, n, slope=2.0, shift=1.0, rate=0.006):
    """Labels drawn from P(y | z) = sigmoid(z) (about 5 % positive, as fraud), scored
    sigmoid(slope * z + shift): a model that ranks perfectly by P(y) but is miscalibrated,
    so the most accurate cut on plenty of rows is at the score sigmoid(shift)."""
    z = rng.normal(np.log(rate / (1 - rate)), 2.5, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(int)
    return y, 1 / (1 + np.exp(-(slope * z + shift)))


def test_the_served_threshold_is_where_a_platt_fit_says_one_half():
    rng = np.random.default_rng(7)
    y, scores = _scored_rows(rng, 200_000)
    threshold, how = decision_threshold(y, scores)
    assert how == "platt"
    assert threshold == pytest.approx(1 / (1 + np.exp(-1.0)), abs=0.01)  # sigmoid(shift)
    # weighted rows: positives counted 9 times move P(positive) = 0.5 to 10 % unweighted,
    # i.e. z = -log 9, the score sigmoid(1 - 2 log 9)
    weighted, _ = decision_threshold(y, scores, np.where(y == 1, 9.0, 1.0))
    assert weighted == pytest.approx(1 / (1 + np.exp(-(1 - 2 * np.log(9)))), abs=0.01)


def test_the_platt_threshold_costs_less_accuracy_than_the_most_accurate_cut_on_small_windows():
    """320 validation rows with about a dozen positives, as a retraining window has: over
    many draws the Platt point stays nearer the threshold plenty of rows would give, and
    loses less accuracy on later rows."""
    rng = np.random.default_rng(11)
    later_y, later_scores = _scored_rows(rng, 200_000)

    def accuracy(threshold):
        return np.mean((later_scores >= threshold) == later_y)

    ideal = 1 / (1 + np.exp(-1.0))
    platt, best = [], []
    for _ in range(60):
        y, scores = _scored_rows(rng, 320)
        platt.append(decision_threshold(y, scores)[0])
        best.append(best_threshold(y, scores))
    assert np.std(platt) < 0.8 * np.std(best)
    assert np.mean(np.abs(np.array(platt) - ideal)) < 0.8 * np.mean(np.abs(np.array(best) - ideal))
    regret = {name: accuracy(ideal) - np.mean([accuracy(t) for t in cuts])
              for name, cuts in (("platt", platt), ("best", best))}  # fmt: skip
    assert regret["platt"] < 0.8 * regret["best"]


def test_without_a_platt_cut_the_most_accurate_one_is_served():
    # higher scores less often positive: the fit's slope is negative, no Platt cut
    y = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert decision_threshold(y, scores) == (best_threshold(y, scores), "accuracy")
    # one class only: nothing to fit
    assert decision_threshold(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4]))[1] == "accuracy"
    with pytest.raises(TrainingDataError, match="as many labels, scores and weights"):
        decision_threshold(np.array([0, 1]), np.array([0.5]))


def test_reweighting_to_another_class_prior():
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0, 0, 0], dtype=np.float32)  # p = 0.1
    shift = reweighting(y, 0.5)
    assert (shift.positive, shift.negative) == pytest.approx((5.0, 0.5 / 0.9))
    assert shift.ratio == pytest.approx(9.0)  # the odds 1/9 become 1/1
    # Re-weighted, the labels have the target rate.
    weights = shift.weights(y)
    assert float(np.sum(weights * y) / np.sum(weights)) == pytest.approx(0.5)
    assert reweighting(y, 0.0) is None
    with pytest.raises(TrainingDataError, match=r"target_positive_rate must be in \(0, 1\)"):
        reweighting(y, 1.0)
    with pytest.raises(TrainingDataError, match="both classes"):
        reweighting(np.zeros(4), 0.3)
    assert shift.logit_offset == pytest.approx(np.log(9.0))
    # A threshold chosen on validation re-weighted to a higher prior is lower: positives
    # count more, so catching the fraud at 0.5 is worth the false alarm at 0.6.
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.9])
    assert best_threshold(y, scores) == pytest.approx(0.65)
    assert best_threshold(y, scores, reweighting(y, 0.7).weights(y)) == pytest.approx(0.45)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(StageInputError, match="data.parquet does not exist"):
        read_split(tmp_path, "train_set")
    train, _ = split_frames(days=2, n_accounts=100)
    write_split(train.drop(columns=["amount"]), tmp_path / "t")
    with pytest.raises(StageInputError, match="lacks columns \\['amount'\\]"):
        read_split(tmp_path / "t", "train_set")
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        TrainParams(epochs=0)


@pytest.mark.slow
def test_ray_train_writes_a_bundle_that_ranks_fraud(ray_head, tmp_path):
    train, evaluation = split_frames()
    outcome = run_train(
        write_split(train, tmp_path / "train"), tmp_path / "model", TrainParams(epochs=3, seed=3)
    )
    assert [row["epoch"] for row in outcome.history] == [1, 2, 3]
    assert 1 <= outcome.metrics["best_epoch"] <= 3
    assert outcome.metrics["val_roc_auc"] > 0.85
    bundle = ModelBundle.load(tmp_path / "model")
    assert bundle.config.threshold == pytest.approx(outcome.metrics["threshold"])
    scores, _ = bundle.predict(evaluation)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(evaluation["is_fraud"], scores) > 0.85
    # The prior correction keeps scores near the base rate rather than pos_weight-inflated.
    assert abs(scores.mean() - evaluation["is_fraud"].mean()) < 0.05
    assert len(json.loads((tmp_path / "model" / "history.json").read_text())) == 3


@pytest.mark.slow
def test_ray_train_reweighted_to_a_shifted_prior(ray_head, tmp_path):
    """Label shift: trained with the classes re-weighted to a prior several times the
    data's, the model ranks as well and scores as if positives were that common."""
    train, evaluation = split_frames()
    base = float(train["is_fraud"].mean())
    target = min(0.5, 5 * base)
    outcome = run_train(
        write_split(train, tmp_path / "train"),
        tmp_path / "model",
        TrainParams(epochs=3, seed=3, target_positive_rate=target),
    )
    assert outcome.metrics["target_positive_rate"] == pytest.approx(target)
    p = float(outcome.bundle.config.threshold)  # chosen on re-weighted validation
    assert 0 < p < 1
    scores, _ = ModelBundle.load(tmp_path / "model").predict(evaluation)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(evaluation["is_fraud"], scores) > 0.85
    # Unweighted, the mean score stays near the base rate (the test above); re-weighted
    # it is near the target prior.
    assert scores.mean() > 2 * evaluation["is_fraud"].mean()
    assert scores.mean() == pytest.approx(target, abs=0.5 * target)


def test_unplaceable_workers_are_refused_not_waited_for():
    from kubeloop.training.ray_train import TrainingResourceError, _check_resources

    _check_resources(TrainParams(num_workers=2), {"CPU": 2.0})
    with pytest.raises(TrainingResourceError, match="needs 3 CPUs but the Ray cluster has 2"):
        _check_resources(TrainParams(num_workers=3), {"CPU": 2.0})
    with pytest.raises(TrainingResourceError, match="use_gpu needs 1 GPUs .* has 0"):
        _check_resources(TrainParams(use_gpu=True), {"CPU": 2.0})


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 2])
def test_an_unreachable_ray_cluster_falls_back_to_this_pod_and_records_it(
    ray_head, tmp_path, tmp_path_factory, monkeypatch, capsys, workers
):
    """No KubeRay cluster answers at the configured address: the run trains in this pod
    instead, says so in its log, and records it in its metrics and in the model folder the
    register stage copies into the version's lineage. One CPU worker trains in this
    process (Ray Train's local mode, no Ray joined); two train data-parallel on this
    machine's Ray head."""
    import ray
    from kubeloop.components.train.impl import RAY_FILE

    from kubeloop.settings import get_settings

    unreachable = "ray://kl-kubeloop-ray-head-svc.invalid:10001"
    ray.shutdown()  # this process may have joined Ray before; connect() decides afresh
    monkeypatch.setenv("KUBELOOP_RAY_ADDRESS", unreachable)
    # The session's local head (the ray_head fixture) is the fallback, not a new one.
    monkeypatch.setenv(
        "KUBELOOP_HOME", str(tmp_path_factory.getbasetemp() / "kubeloop-ray-session")
    )
    get_settings.cache_clear()
    try:
        train, _ = split_frames(days=3, n_accounts=150)
        outcome = run_train(
            write_split(train, tmp_path / "train"),
            tmp_path / "model",
            TrainParams(epochs=2, num_workers=workers),
        )
    finally:
        get_settings.cache_clear()
    reason = f"the Ray cluster at {unreachable} is not reachable"
    assert outcome.ray.remote is False and outcome.ray.fallback == reason
    assert [row["epoch"] for row in outcome.history] == [1, 2]
    log = capsys.readouterr().out
    assert outcome.metrics["ray_cluster"] == 0.0
    recorded = json.loads((tmp_path / "model" / RAY_FILE).read_text())
    if workers == 1:
        assert outcome.ray.in_process and not ray.is_initialized()
        assert (
            f"[train] training in this process, Ray Train's local mode (one CPU worker) ({reason})"
            in log
        )
        assert outcome.metrics["ray_in_process"] == 1.0
        assert recorded == {"address": "", "remote": False, "fallback": reason, "in_process": True}
    else:
        assert outcome.ray.address == ray_head and not outcome.ray.in_process
        assert f"[train] training in this pod on its own Ray at {ray_head} ({reason})" in log
        assert outcome.metrics["ray_in_process"] == 0.0
        assert recorded == {
            "address": ray_head,
            "remote": False,
            "fallback": reason,
            "in_process": False,
        }


@pytest.mark.slow
def test_ray_train_fits_a_deep_ensemble_data_parallel(ray_head, tmp_path, capsys):
    """Three members on two Ray Train workers (DDP): each member is kept at its own best
    epoch, the bundle scores their mean logit, and it ranks fraud like one network."""
    train, evaluation = split_frames()
    outcome = run_train(
        write_split(train, tmp_path / "train"),
        tmp_path / "model",
        TrainParams(epochs=3, seed=3, members=3, num_workers=2),
    )
    assert outcome.metrics["members"] == 3 and 1 <= outcome.metrics["best_epoch"] <= 3
    assert "[train] members' best epochs [" in capsys.readouterr().out
    bundle = ModelBundle.load(tmp_path / "model")
    assert bundle.config.members == 3
    scores, _ = bundle.predict(evaluation)
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(evaluation["is_fraud"], scores) > 0.85
    assert abs(scores.mean() - evaluation["is_fraud"].mean()) < 0.05  # prior-corrected
    with pytest.raises(ValueError, match="members must be at least 1"):
        TrainParams(members=0)
