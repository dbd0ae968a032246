"""Distillation toward the stable version: the soft targets, and the arrays training sees."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kubeloop.data.fraud import FRAUD_SCHEMA, generate
from kubeloop.features.join import point_in_time_join
from kubeloop.training.loop import CHAMPION_SCORE, TrainingDataError, distilled_targets
from kubeloop.training.ray_train import TrainParams, prepare_arrays


def test_targets_move_from_the_labels_toward_the_champion_by_the_weight():
    labels = np.array([0, 1, 1, 0])
    champion = np.array([0.1, 0.9, 0.2, 0.6])
    assert np.allclose(distilled_targets(labels, champion, 0.0), labels)
    assert np.allclose(distilled_targets(labels, champion, 0.3), [0.03, 0.97, 0.76, 0.18])
    assert distilled_targets(labels, champion, 0.3).dtype == np.float32


@pytest.mark.parametrize(
    ("champion", "weight", "message"),
    [
        ([0.1, 0.2, 0.3, 0.4], 1.0, r"distill weight must be in \[0, 1\)"),
        ([0.1, 0.2, 0.3, 0.4], -0.1, r"distill weight must be in \[0, 1\)"),
        ([0.1, 0.2, 0.3], 0.3, "3 champion scores for 4 training rows"),
        ([0.1, np.nan, 0.3, 0.4], 0.3, "must hold probabilities"),
        ([0.1, 1.2, 0.3, 0.4], 0.3, "must hold probabilities"),
    ],
)
def test_bad_champion_scores_or_weights_are_refused(champion, weight, message):
    with pytest.raises(TrainingDataError, match=message):
        distilled_targets(np.array([0, 1, 1, 0]), np.array(champion), weight)


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    data = point_in_time_join(generate("stationary", days=3, n_accounts=300, seed=3))
    return data.assign(**{CHAMPION_SCORE: np.random.default_rng(0).uniform(size=len(data))})


def test_training_rows_are_distilled_and_validation_keeps_its_labels(frame):
    _, valid, plain = prepare_arrays(frame, FRAUD_SCHEMA, 0.2)
    _, _, distilled = prepare_arrays(frame, FRAUD_SCHEMA, 0.2, distill_weight=0.4)
    train = frame.sort_values(FRAUD_SCHEMA.timestamp, kind="stable").iloc[: len(plain["y_train"])]
    expected = 0.6 * train[FRAUD_SCHEMA.label].to_numpy() + 0.4 * train[CHAMPION_SCORE].to_numpy()
    assert np.allclose(distilled["y_train"], expected, atol=1e-6)
    assert np.array_equal(distilled["y_val"], plain["y_val"])  # epochs and threshold: labels
    assert set(np.unique(distilled["y_val"])) == {0.0, 1.0}
    assert np.array_equal(distilled["x_train"], plain["x_train"])


def test_distilling_without_the_champions_scores_names_the_column(frame):
    with pytest.raises(TrainingDataError, match=f"needs the '{CHAMPION_SCORE}' column"):
        prepare_arrays(frame.drop(columns=[CHAMPION_SCORE]), FRAUD_SCHEMA, 0.2, 0.3)
    with pytest.raises(ValueError, match=r"distill_weight must be in \[0, 1\)"):
        TrainParams(distill_weight=1.0)
