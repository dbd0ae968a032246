"""Table-driven tests of the gate's pure decision: objectives, then the champion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kubeloop.evaluation.gate import PairedRows, decide, render_markdown
from kubeloop.settings import Objectives

OBJ = Objectives(min_roc_auc=0.8, min_pr_auc=0.2, max_ece=0.1, min_accuracy=0.0)
GOOD = {"roc_auc": 0.90, "pr_auc": 0.50, "ece": 0.02, "accuracy": 0.97}


@pytest.mark.parametrize(
    ("candidate", "champion", "tolerance", "passed", "failed_checks"),
    [
        (GOOD, None, 0.01, True, []),
        ({**GOOD, "roc_auc": 0.79}, None, 0.01, False, ["roc_auc"]),
        ({**GOOD, "pr_auc": 0.19}, None, 0.01, False, ["pr_auc"]),
        ({**GOOD, "ece": 0.11}, None, 0.01, False, ["ece"]),
        ({**GOOD, "roc_auc": 0.8, "ece": 0.1}, None, 0.01, True, []),  # bounds are inclusive
        ({**GOOD, "roc_auc": math.nan}, None, 0.01, False, ["roc_auc"]),
        ({k: v for k, v in GOOD.items() if k != "ece"}, None, 0.01, False, ["ece"]),
        (GOOD, {"roc_auc": 0.905}, 0.01, True, []),  # worse, but within tolerance
        (GOOD, {"roc_auc": 0.92}, 0.01, False, ["champion"]),  # worse beyond tolerance
        (GOOD, {"roc_auc": 0.91}, 0.0, False, ["champion"]),
        (GOOD, {"roc_auc": 0.80}, 0.0, True, []),  # better than the champion
        (GOOD, {"roc_auc": None}, 0.01, False, ["champion"]),  # champion metric undefined
        ({**GOOD, "roc_auc": 0.5}, {"roc_auc": 0.95}, 0.01, False, ["roc_auc", "champion"]),
    ],
)
def test_gate_table(candidate, champion, tolerance, passed, failed_checks):
    decision = decide(candidate, OBJ, champion, tolerance=tolerance, champion_version="v1",
                      compare_metric="roc_auc")  # fmt: skip
    assert decision.passed is passed
    assert [c.name for c in decision.checks if not c.passed] == failed_checks
    if passed:
        assert len(decision.reasons) == len(decision.checks)
    else:
        assert len(decision.reasons) == len(failed_checks)


def test_lower_is_better_metric_compares_the_other_way():
    better = decide(GOOD, OBJ, {"ece": 0.05}, compare_metric="ece", tolerance=0.0)
    worse = decide(GOOD, OBJ, {"ece": 0.001}, compare_metric="ece", tolerance=0.0)
    assert better.passed and not worse.passed


def test_reasons_name_the_numbers_and_report_renders():
    decision = decide({**GOOD, "roc_auc": 0.7}, OBJ, {"roc_auc": 0.93}, champion_version="v4",
                      compare_metric="roc_auc")  # fmt: skip
    text = "; ".join(decision.reasons)
    assert "roc_auc 0.7000 misses the objective >= 0.8" in text
    assert "champion v4 0.9300" in text
    assert decision.to_dict()["decision"] == "failed"
    md = render_markdown(decision, "fraud-detector")
    assert "FAILED" in md and "| champion | FAIL |" in md


def test_by_default_the_champion_is_judged_as_the_canary_judges_accuracy():
    """A candidate that ranks better but decides worse on the window fails, and the detail
    shows ROC-AUC and ECE of both beside the compared accuracy."""
    candidate = {**GOOD, "roc_auc": 0.95, "window_accuracy": 0.950}
    champion = {"roc_auc": 0.90, "ece": 0.03, "window_accuracy": 0.975}
    decision = decide(candidate, OBJ, champion, champion_version="v1")
    assert not decision.passed
    (detail,) = decision.reasons
    assert "window_accuracy 0.9500 vs champion v1 0.9750" in detail
    assert "roc_auc 0.9500 vs 0.9000" in detail and "ece 0.0200 vs 0.0300" in detail
    within = decide({**candidate, "window_accuracy": 0.968}, OBJ, champion)
    assert within.passed  # 0.007 worse: inside the default tolerance 0.01


def _pairs(rows, candidate_only, champion_only):
    """Correct-row vectors of two models on one window with the given disagreements."""
    mine = np.ones(rows, dtype=bool)
    theirs = np.ones(rows, dtype=bool)
    mine[:champion_only] = False
    theirs[champion_only : champion_only + candidate_only] = False
    return mine, theirs


def test_paired_rows_count_the_disagreements_and_test_them_exactly():
    paired = PairedRows.of(*_pairs(160, candidate_only=1, champion_only=4))
    assert (paired.rows, paired.candidate_only, paired.champion_only) == (160, 1, 4)
    # P(X >= 4) for X ~ Binomial(5, 1/2), summed by hand: (5 + 1) / 32
    assert paired.p_value == pytest.approx(6 / 32)
    assert PairedRows.of(*_pairs(50, 0, 0)).p_value == 1.0
    assert PairedRows.of(*_pairs(50, 3, 0)).p_value == 1.0
    with pytest.raises(ValueError, match="differ in length"):
        PairedRows.of(np.ones(3, dtype=bool), np.ones(4, dtype=bool))


@pytest.mark.parametrize(
    ("candidate_only", "champion_only", "passed"),
    [
        (0, 3, True),  # 0.0188 worse on 160 rows, but three disagreements prove nothing
        (2, 6, True),  # p = 0.145
        (0, 6, False),  # p = 1/64: the champion is better with confidence
        (1, 10, False),
    ],
)
def test_a_drop_refuses_only_when_the_champion_is_better_with_confidence(
    candidate_only, champion_only, passed
):
    rows = 160
    mine, theirs = _pairs(rows, candidate_only, champion_only)
    paired = PairedRows.of(mine, theirs)
    candidate = {**GOOD, "window_accuracy": float(mine.mean())}
    champion = {"roc_auc": 0.9, "ece": 0.03, "window_accuracy": float(theirs.mean())}
    assert champion["window_accuracy"] - candidate["window_accuracy"] > 0.01
    decision = decide(candidate, OBJ, champion, champion_version="v1", paired=paired)
    assert decision.passed is passed
    (check,) = [c for c in decision.checks if c.name == "champion"]
    assert f"the champion alone is right on {champion_only}" in check.detail
    assert f"the candidate alone on {candidate_only}" in check.detail
    assert "exact McNemar p = " in check.detail
    # Without the pairing the point comparison alone refuses every one of them.
    assert not decide(candidate, OBJ, champion, champion_version="v1").passed
    # alpha 1: the drop alone decides again.
    assert not decide(candidate, OBJ, champion, paired=paired, alpha=1.0).passed


def test_a_small_drop_passes_however_sure_the_pairing_is():
    """Within the tolerance the candidate passes even when the champion is surely better:
    the tolerance is how much worse a retrained model may be, the test how sure."""
    mine, theirs = _pairs(2000, candidate_only=0, champion_only=15)
    candidate = {**GOOD, "window_accuracy": float(mine.mean())}
    champion = {"window_accuracy": float(theirs.mean())}
    paired = PairedRows.of(mine, theirs)
    assert paired.p_value < 1e-4
    assert decide(candidate, OBJ, champion, paired=paired).passed
