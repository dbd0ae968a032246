"""The window retrainer's plain-torch training re-weights the classes to a target prior
(monitoring.labelShift.action RetrainReweighted) the way the pipeline's train stage does."""

from __future__ import annotations

import numpy as np
import pytest

from kubeloop.data import fraud
from kubeloop.features.join import point_in_time_join
from kubeloop.training.quick import train_bundle


def test_reweighted_scores_move_by_the_odds_ratio_and_rank_alike():
    data = fraud.generate("stationary", days=4, n_accounts=150, seed=2)
    frame = point_in_time_join(data)
    base = float(frame["is_fraud"].mean())
    plain = train_bundle(frame, seed=1, steps=150).predict_proba(frame)
    target = min(0.5, 4 * base)
    shifted = train_bundle(frame, seed=1, steps=150, target_positive_rate=target)
    scores = shifted.predict_proba(frame)
    ratio = (target / (1 - target)) / (base / (1 - base))
    # Same network, bias moved by log(ratio): every unsaturated score's log-odds moves alike.
    inside = (plain > 1e-5) & (plain < 1 - 1e-5) & (scores > 1e-5) & (scores < 1 - 1e-5)
    assert inside.sum() > 100
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    np.testing.assert_allclose(
        logit(scores[inside]) - logit(plain[inside]), np.log(ratio), atol=1e-2
    )
    with pytest.raises(ValueError, match="target_positive_rate"):
        train_bundle(frame, steps=1, target_positive_rate=1.5)
