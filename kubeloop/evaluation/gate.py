"""The promotion gate's decision: objectives first, then the champion on the same window.

Pure logic: metrics of the candidate, the objectives from settings and (when a
champion exists) the champion's metrics on the *same* evaluation window go in; a
decision with one line per check comes out. The gate component does the I/O.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from kubeloop.settings import Objectives

# Metrics where smaller is better; every other compared metric is larger-is-better.
LOWER_IS_BETTER = frozenset({"ece", "brier", "log_loss"})


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class PairedRows:
    """Candidate and champion decided on the same rows: where exactly one of them is right.

    Rows both get right or both get wrong say nothing about which is better; under "equally
    accurate" each disagreement goes either way with probability one half (McNemar)."""

    rows: int
    candidate_only: int  # the candidate right, the champion wrong
    champion_only: int  # the champion right, the candidate wrong

    @classmethod
    def of(cls, candidate_correct: Any, champion_correct: Any) -> PairedRows:
        mine = np.asarray(candidate_correct, dtype=bool)
        theirs = np.asarray(champion_correct, dtype=bool)
        if mine.shape != theirs.shape:
            raise ValueError(f"paired rows differ in length: {mine.shape} vs {theirs.shape}")
        return cls(len(mine), int((mine & ~theirs).sum()), int((theirs & ~mine).sum()))

    @property
    def p_value(self) -> float:
        """One-sided exact McNemar test: how likely the champion wins at least this many of
        the disagreements if both models were equally accurate (1.0 when none disagree)."""
        from scipy.stats import binomtest

        disagreements = self.candidate_only + self.champion_only
        if disagreements == 0:
            return 1.0
        return float(binomtest(self.champion_only, disagreements, 0.5, "greater").pvalue)


@dataclass
class GateDecision:
    passed: bool
    checks: list[Check] = field(default_factory=list)
    champion_version: str | None = None

    @property
    def reasons(self) -> list[str]:
        """Why it failed (failed checks only), or every check when it passed."""
        failed = [c.detail for c in self.checks if not c.passed]
        return failed if failed else [c.detail for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["reasons"] = self.reasons
        data["decision"] = "passed" if self.passed else "failed"
        return data


def _value(metrics: dict[str, Any], name: str) -> float | None:
    value = metrics.get(name)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _fmt(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.4f}"


def _threshold_check(name: str, value: float | None, bound: float, minimum: bool) -> Check:
    op = ">=" if minimum else "<="
    if value is None:
        return Check(name, False, f"{name} is missing or undefined (needs {op} {bound:g})")
    ok = value >= bound if minimum else value <= bound
    verdict = "meets" if ok else "misses"
    return Check(name, ok, f"{name} {value:.4f} {verdict} the objective {op} {bound:g}")


def decide(
    candidate: dict[str, Any],
    objectives: Objectives,
    champion: dict[str, Any] | None = None,
    *,
    tolerance: float = 0.01,
    compare_metric: str = "window_accuracy",
    champion_version: str | None = None,
    paired: PairedRows | None = None,
    alpha: float = 0.05,
) -> GateDecision:
    """Passes only when every objective holds and the candidate is not worse than the
    champion (on the same window) by more than ``tolerance`` in ``compare_metric`` (by
    default ``window_accuracy``: accuracy, each model at the threshold re-chosen on the
    window, as the canary judges live accuracy). ROC-AUC and ECE of both are shown beside.

    With ``paired`` (both models' decisions on the window's rows, for ``window_accuracy``)
    a drop beyond the tolerance refuses the candidate only when the champion is better
    with confidence: the one-sided exact McNemar test rejects "equally accurate" at
    ``alpha``. A few errors on a small window then do not refuse a candidate that the
    canary would judge on far more labels."""
    checks = [
        _threshold_check("roc_auc", _value(candidate, "roc_auc"), objectives.min_roc_auc, True),
        _threshold_check("pr_auc", _value(candidate, "pr_auc"), objectives.min_pr_auc, True),
        _threshold_check("ece", _value(candidate, "ece"), objectives.max_ece, False),
        _threshold_check("accuracy", _value(candidate, "accuracy"), objectives.min_accuracy, True),
    ]
    if champion is not None:
        checks.append(
            _champion_check(
                candidate, champion, tolerance, compare_metric, champion_version, paired, alpha
            )
        )
    return GateDecision(
        passed=all(c.passed for c in checks), checks=checks, champion_version=champion_version
    )


def _champion_check(
    candidate: dict[str, Any],
    champion: dict[str, Any],
    tolerance: float,
    compare_metric: str,
    champion_version: str | None,
    paired: PairedRows | None,
    alpha: float,
) -> Check:
    mine, theirs = _value(candidate, compare_metric), _value(champion, compare_metric)
    who = f"champion {champion_version}" if champion_version else "champion"
    if mine is None or theirs is None:
        missing = "candidate" if mine is None else who
        return Check("champion", False, f"{compare_metric} of the {missing} is undefined")
    lower = compare_metric in LOWER_IS_BETTER
    delta = (theirs - mine) if lower else (mine - theirs)  # > 0: candidate better
    ok = delta >= -tolerance
    test = ""
    if paired is not None and compare_metric == "window_accuracy":
        p_value = paired.p_value
        ok = ok or p_value >= alpha
        test = (
            f"; on the {paired.rows} rows the champion alone is right on "
            f"{paired.champion_only}, the candidate alone on {paired.candidate_only}: "
            f"exact McNemar p = {p_value:.3g} ({'<' if p_value < alpha else '>='} alpha {alpha:g})"
        )
    beside = [
        f"{name} {_fmt(_value(candidate, name))} vs {_fmt(_value(champion, name))}"
        for name in ("roc_auc", "ece")
        if name != compare_metric
    ]
    return Check(
        "champion",
        ok,
        f"{compare_metric} {mine:.4f} vs {who} {theirs:.4f} on the same window "
        f"({'better by' if delta >= 0 else 'worse by'} {abs(delta):.4f}; "
        f"tolerance {tolerance:g}{test}); beside: {', '.join(beside)}",
    )


def render_markdown(decision: GateDecision, model_name: str) -> str:
    verdict = "PASSED" if decision.passed else "FAILED"
    lines = [
        f"# Gate for {model_name}: {verdict}",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    for c in decision.checks:
        lines.append(f"| {c.name} | {'pass' if c.passed else 'FAIL'} | {c.detail} |")
    if decision.champion_version is None:
        lines += ["", "No champion in the registry: judged on the objectives alone."]
    return "\n".join(lines) + "\n"
