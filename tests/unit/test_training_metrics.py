"""The training loop's validation metrics agree with scikit-learn's, ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from kubeloop.training.loop import average_precision, roc_auc


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("decimals", [None, 1, 2])
def test_roc_auc_and_average_precision_equal_scikit_learn(seed, decimals):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 400))
    labels = (rng.random(n) < rng.uniform(0.02, 0.6)).astype(np.float32)
    labels[:2] = [0.0, 1.0]  # both classes
    scores = rng.normal(size=n) + labels * rng.uniform(0, 2)
    if decimals is not None:  # many tied scores, across the classes
        scores = np.round(scores, decimals)
    scores = scores.astype(np.float32)
    assert roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert average_precision(labels, scores) == pytest.approx(
        average_precision_score(labels, scores), abs=1e-9
    )


def test_perfect_reversed_and_constant_scores():
    labels = np.array([0, 0, 1, 1])
    assert roc_auc(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(labels, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(labels, np.zeros(4)) == 0.5
    assert average_precision(labels, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert average_precision(labels, np.zeros(4)) == 0.5  # the positive rate


def test_one_class_is_an_error_not_a_number():
    with pytest.raises(ValueError, match="both classes"):
        roc_auc(np.zeros(5), np.arange(5.0))
    with pytest.raises(ValueError, match="positive labels"):
        average_precision(np.zeros(5), np.arange(5.0))
