"""Table-driven tests of the gate's pure decision: objectives, then the champion."""

from __future__ import annotations

import math

import pytest

from kubeloop.evaluation.gate import decide, render_markdown
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
