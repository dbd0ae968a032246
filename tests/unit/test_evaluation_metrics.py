"""Metrics, calibration, slices and the HTML report of the evaluation stage."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kubeloop.evaluation.metrics import (
    EvaluationError,
    best_accuracy,
    correct_at_window_threshold,
    evaluate_scores,
    expected_calibration_error,
    margin_threshold,
)
from kubeloop.evaluation.report import render_html


def test_ece_zero_when_rates_match_scores():
    # 10 rows at 0.2 with 2 positives and 10 rows at 0.7 with 7 positives: perfectly calibrated.
    scores = np.array([0.2] * 10 + [0.7] * 10)
    labels = np.array([1, 1] + [0] * 8 + [1] * 7 + [0] * 3)
    ece, bins = expected_calibration_error(labels, scores)
    assert ece == pytest.approx(0.0)
    assert [b.count for b in bins] == [10, 10]


def test_ece_measures_overconfidence():
    scores = np.full(100, 0.9)
    labels = np.array([1] * 50 + [0] * 50)
    ece, _ = expected_calibration_error(labels, scores)
    assert ece == pytest.approx(0.4)


def test_metrics_at_threshold_and_confusion_matrix():
    labels = np.array([0, 0, 0, 1, 1, 0, 1, 0])
    scores = np.array([0.1, 0.2, 0.6, 0.7, 0.9, 0.3, 0.4, 0.05])
    ev = evaluate_scores(labels, scores, threshold=0.5)
    # predicted: 0 0 1 1 1 0 0 0 -> tp=2 fp=1 fn=1 tn=4
    assert ev.confusion_matrix == [[4, 1], [1, 2]]
    assert ev.precision == pytest.approx(2 / 3)
    assert ev.recall == pytest.approx(2 / 3)
    assert ev.accuracy == pytest.approx(6 / 8)
    assert 0.5 < ev.roc_auc <= 1.0
    assert ev.roc_curve["fpr"][0] == 0.0 and ev.roc_curve["tpr"][-1] == 1.0
    assert all(0 <= t <= 1 for t in ev.roc_curve["threshold"])


def test_a_better_ranking_scores_higher():
    rng = np.random.default_rng(0)
    labels = (rng.uniform(size=2000) < 0.1).astype(int)
    good = np.clip(labels * 0.5 + rng.uniform(0, 0.5, 2000), 0, 1)
    noisy = np.clip(labels * 0.1 + rng.uniform(0, 0.9, 2000), 0, 1)
    assert evaluate_scores(labels, good, 0.5).roc_auc > evaluate_scores(labels, noisy, 0.5).roc_auc


def test_slices_and_json_have_no_nan():
    labels = np.array([0, 1, 0, 1, 0, 0])
    scores = np.array([0.1, 0.8, 0.3, 0.6, 0.2, 0.4])
    groups = pd.Series(["a", "a", "a", "a", "b", "b"])  # slice b has no positives
    ev = evaluate_scores(labels, scores, 0.5, {"merchant_category": groups})
    rows = {r["slice"]: r for r in ev.slices["merchant_category"]}
    assert rows["a"]["rows"] == 4 and rows["a"]["roc_auc"] == 1.0
    assert np.isnan(rows["b"]["roc_auc"])
    assert ev.to_dict()["slices"]["merchant_category"][1]["roc_auc"] is None


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([], [], "empty"),
        ([0, 1], [0.1], "2 labels but 1 scores"),
        ([0, 2], [0.1, 0.2], "labels must be 0/1"),
        ([0, 1], [0.1, 1.5], "probabilities"),
        ([0, 0], [0.1, 0.2], "both classes"),
    ],
)
def test_bad_input_is_named(labels, scores, message):
    with pytest.raises(EvaluationError, match=message):
        evaluate_scores(np.array(labels), np.array(scores, dtype=float), 0.5)


def test_report_embeds_every_plot():
    rng = np.random.default_rng(1)
    labels = (rng.uniform(size=300) < 0.2).astype(int)
    scores = np.clip(labels * 0.4 + rng.uniform(0, 0.6, 300), 0, 1)
    groups = pd.Series(rng.choice(["grocery", "travel"], 300))
    html = render_html(evaluate_scores(labels, scores, 0.5, {"merchant_category": groups}))
    assert html.count("data:image/png;base64,") == 4  # ROC, PR, reliability, slices
    assert "Slices by merchant_category" in html and "Confusion matrix" in html


def _brute_best(labels, scores):
    best = 0.0
    for t in [*sorted(set(scores)), max(scores) + 1]:
        best = max(best, float(((np.asarray(scores) >= t).astype(int) == labels).mean()))
    return best


@pytest.mark.parametrize("seed", range(5))
def test_window_accuracy_is_the_best_any_threshold_reaches(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(300) < 0.1).astype(int)
    scores = np.round(np.clip(0.3 * labels + rng.normal(0.3, 0.2, 300), 0, 1), 2)  # with ties
    acc, threshold = best_accuracy(labels, scores)
    assert acc == pytest.approx(_brute_best(labels, scores))
    assert float(((scores >= threshold).astype(int) == labels).mean()) == pytest.approx(acc)
    ev = evaluate_scores(labels, scores, threshold=0.9)
    assert ev.window_accuracy == pytest.approx(acc) and ev.window_accuracy >= ev.accuracy
    assert ev.headline()["window_accuracy"] == pytest.approx(acc)


@pytest.mark.parametrize("seed", range(3))
def test_correct_rows_at_the_window_threshold_average_to_window_accuracy(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(400) < 0.08).astype(int)
    scores = np.round(np.clip(0.4 * labels + rng.normal(0.2, 0.2, 400), 0, 1), 2)  # with ties
    correct = correct_at_window_threshold(labels, scores)
    assert correct.dtype == bool and correct.shape == labels.shape
    assert correct.mean() == pytest.approx(evaluate_scores(labels, scores, 0.5).window_accuracy)
    with pytest.raises(EvaluationError, match="both classes"):
        correct_at_window_threshold(np.zeros(5, dtype=int), np.full(5, 0.3))


def test_window_accuracy_when_calling_everything_negative_is_best():
    acc, threshold = best_accuracy(np.array([0, 0, 0, 1]), np.array([0.9, 0.8, 0.7, 0.1]))
    assert acc == 0.75 and threshold > 0.9


def test_equally_accurate_cuts_take_the_fewest_positives_despite_rounding():
    # Five negatives above five frauds above ten negatives: calling the top ten positive is
    # right on 15 of 20, as is calling nothing positive; as rates times class totals the
    # first comes out a hair above 15 (5/5 * 5 + (1 - 5/15) * 15).
    labels = np.array([0] * 5 + [1] * 5 + [0] * 10)
    scores = np.concatenate([np.linspace(0.95, 0.91, 5), np.linspace(0.9, 0.86, 5),
                             np.linspace(0.5, 0.05, 10)])  # fmt: skip
    acc, threshold = best_accuracy(labels, scores)
    assert acc == pytest.approx(0.75) and threshold > 0.95
    assert margin_threshold(labels, scores) > 0.95
