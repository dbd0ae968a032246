"""The label-free accuracy estimate (recalibrated average confidence), pure logic."""

from __future__ import annotations

import numpy as np
import pytest

from kubeloop.drift.estimate import ConfidenceEstimator


def _world(rng: np.random.Generator, n: int, *, shift: float = 0.0, prior_logit: float = -3.0):
    """A world where the true P(y=1|x) is sigmoid(x + prior_logit); a model that knows it
    but scores it distorted (as a class-weighted model does): score = P(y|x) ** 0.3."""
    x = rng.normal(shift, 1.5, n)
    p_true = 1.0 / (1.0 + np.exp(-(x + prior_logit)))
    y = (rng.random(n) < p_true).astype(np.int64)
    score = p_true**0.3
    return score, y


def _fitted(rng: np.random.Generator) -> ConfidenceEstimator:
    score, y = _world(rng, 4000)
    threshold = 0.5
    return ConfidenceEstimator.fit(score, y, (score >= threshold).astype(np.int64))


def test_estimate_matches_accuracy_on_held_out_rows_of_the_reference_world():
    rng = np.random.default_rng(0)
    estimator = _fitted(rng)
    score, y = _world(rng, 20000)
    truth = float(((score >= estimator.threshold).astype(int) == y).mean())
    assert estimator.estimate(score) == pytest.approx(truth, abs=0.01)


def test_estimate_follows_accuracy_under_covariate_shift():
    """Inputs move towards the positive region, P(y|x) unchanged: accuracy falls and the
    estimate falls with it."""
    rng = np.random.default_rng(1)
    estimator = _fitted(rng)
    before, y_before = _world(rng, 20000)
    after, y_after = _world(rng, 20000, shift=2.5)
    acc_before = float(((before >= estimator.threshold) == y_before).mean())
    acc_after = float(((after >= estimator.threshold) == y_after).mean())
    assert acc_after < acc_before - 0.05  # the shift costs accuracy
    assert estimator.estimate(after) == pytest.approx(acc_after, abs=0.02)


def test_raw_distorted_scores_would_mislead_but_the_recalibrated_ones_do_not():
    rng = np.random.default_rng(2)
    estimator = _fitted(rng)
    score, y = _world(rng, 20000)
    truth = float(((score >= estimator.threshold) == y).mean())
    raw = float(np.where(score >= estimator.threshold, score, 1 - score).mean())
    assert abs(raw - truth) > 0.05  # why the reference recalibrates
    assert abs(estimator.estimate(score) - truth) < 0.01


def test_confidence_is_a_probability_and_uses_the_reference_threshold():
    estimator = ConfidenceEstimator.fit(
        np.array([0.1, 0.2, 0.6, 0.9]), np.array([0, 0, 1, 1]), np.array([0, 0, 1, 1])
    )
    assert estimator.threshold == 0.6
    assert estimator.reference_accuracy == 1.0
    c = estimator.confidence(np.array([0.0, 0.15, 0.6, 1.0]))
    assert ((c >= 0) & (c <= 1)).all()
    assert estimator.estimate(np.array([])) is None


def test_a_version_that_never_predicted_positive_calls_every_score_negative():
    estimator = ConfidenceEstimator.fit(
        np.array([0.1, 0.2, 0.3]), np.array([0, 0, 1]), np.array([0, 0, 0])
    )
    assert estimator.threshold == float("inf")
    assert estimator.estimate(np.array([0.1, 0.2, 0.3])) == pytest.approx(2 / 3, abs=1e-9)


@pytest.mark.parametrize(
    ("scores", "labels", "predictions", "message"),
    [
        ([], [], [], "no rows"),
        ([0.1, 0.2], [0], [0, 0], "differ in length"),
        ([0.1, 1.5], [0, 1], [0, 1], "probabilities"),
        ([0.1, float("nan")], [0, 1], [0, 1], "probabilities"),
        ([0.1, 0.9], [0, 2], [0, 1], "0 or 1"),
    ],
)
def test_a_reference_that_cannot_calibrate_is_named(scores, labels, predictions, message):
    with pytest.raises(ValueError, match=message):
        ConfidenceEstimator.fit(np.array(scores), np.array(labels), np.array(predictions))
