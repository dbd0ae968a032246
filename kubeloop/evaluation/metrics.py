"""Classification metrics of a scored evaluation window (pure functions, no I/O).

Threshold-free ranking quality (ROC-AUC, PR-AUC), decisions at the model's own
threshold (accuracy, precision, recall, F1, confusion matrix) and at the threshold
re-chosen on the window (``window_accuracy``, the gate's comparison), calibration (expected
calibration error over equal-width bins and the reliability curve behind it), and the
same metrics per slice (e.g. per merchant category) so a model that is good on average
but bad for one segment is visible.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd


class EvaluationError(ValueError):
    """The evaluation data cannot be scored; the message says why."""


@dataclass
class ReliabilityBin:
    lower: float
    upper: float
    count: int
    mean_score: float
    positive_rate: float


@dataclass
class Evaluation:
    rows: int
    positives: int
    threshold: float
    roc_auc: float
    pr_auc: float
    accuracy: float
    precision: float
    recall: float
    f1: float
    ece: float
    brier: float
    confusion_matrix: list[list[int]]  # rows = actual [0, 1], columns = predicted [0, 1]
    reliability: list[ReliabilityBin] = field(default_factory=list)
    roc_curve: dict[str, list[float]] = field(default_factory=dict)
    pr_curve: dict[str, list[float]] = field(default_factory=dict)
    slices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    # Accuracy at the decision threshold re-chosen on this window (the one that maximizes
    # accuracy here): what the canary's live-accuracy analysis compares, with the
    # threshold each model would be given for this window.
    window_accuracy: float = float("nan")
    window_threshold: float = float("nan")

    def headline(self) -> dict[str, float]:
        """The scalar metrics (what goes to KFP ``Metrics`` and the registry)."""
        keys = ("roc_auc", "pr_auc", "accuracy", "window_accuracy", "precision", "recall", "f1",
                "ece", "brier")  # fmt: skip
        out: dict[str, float] = {k: float(getattr(self, k)) for k in keys}
        out.update(threshold=self.threshold, eval_rows=self.rows, eval_positives=self.positives)
        return out

    def to_dict(self) -> dict[str, Any]:
        return _finite(asdict(self))


def _finite(value: Any) -> Any:
    """JSON has no NaN: undefined metrics (e.g. AUC of a one-class slice) become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def _check(labels: np.ndarray, scores: np.ndarray, ranked: bool = False) -> None:
    if len(labels) != len(scores):
        raise EvaluationError(f"{len(labels)} labels but {len(scores)} scores")
    if len(labels) == 0:
        raise EvaluationError("the evaluation set is empty")
    if not np.isin(labels, (0, 1)).all():
        raise EvaluationError(
            f"labels must be 0/1, found {sorted(set(np.unique(labels)) - {0, 1})[:5]}"
        )
    if not np.isfinite(scores).all() or scores.min() < 0 or scores.max() > 1:
        raise EvaluationError("scores must be finite probabilities in [0, 1]")
    if ranked and labels.sum() in (0, len(labels)):
        raise EvaluationError(
            f"the evaluation set needs both classes to rank; it has {int(labels.sum())} positives "
            f"in {len(labels)} rows"
        )


def expected_calibration_error(
    labels: np.ndarray, scores: np.ndarray, n_bins: int = 10
) -> tuple[float, list[ReliabilityBin]]:
    """ECE = sum over equal-width score bins of (bin share) * |mean score - positive rate|."""
    labels = np.asarray(labels, dtype=float)
    scores = np.asarray(scores, dtype=float)
    _check(labels, scores)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    index = np.clip(np.digitize(scores, edges[1:-1], right=False), 0, n_bins - 1)
    ece, bins = 0.0, []
    for b in range(n_bins):
        mask = index == b
        count = int(mask.sum())
        if count == 0:
            continue
        mean_score, rate = float(scores[mask].mean()), float(labels[mask].mean())
        ece += count / len(scores) * abs(mean_score - rate)
        bins.append(ReliabilityBin(float(edges[b]), float(edges[b + 1]), count, mean_score, rate))
    return float(ece), bins


def _ranking(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    if 0 < labels.sum() < len(labels):
        return float(roc_auc_score(labels, scores)), float(average_precision_score(labels, scores))
    return float("nan"), float("nan")


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC, NaN when the labels hold one class only."""
    return _ranking(np.asarray(labels), np.asarray(scores))[0]


def _decisions(labels: np.ndarray, predicted: np.ndarray) -> dict[str, Any]:
    tp = int(((predicted == 1) & (labels == 1)).sum())
    fp = int(((predicted == 1) & (labels == 0)).sum())
    fn = int(((predicted == 0) & (labels == 1)).sum())
    tn = int(((predicted == 0) & (labels == 0)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (tp + tn) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "confusion_matrix": [[tn, fp], [fn, tp]],
    }


def best_accuracy(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """``(accuracy, threshold)``: the highest accuracy any threshold reaches on the window
    (predicting positive at scores >= threshold), and that threshold."""
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels).astype(int)
    fpr, tpr, thresholds = roc_curve(labels, np.asarray(scores, dtype=float))
    accuracy, best = _best_on_roc(fpr, tpr, float(labels.sum()), float(len(labels) - labels.sum()))
    return accuracy, float(thresholds[best])


def margin_threshold(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> float:
    """The most accurate cut's threshold, each row counted ``weights`` times, placed halfway
    between the lowest score it calls positive and the highest it calls negative (not on a
    row's own score, so new rows near the boundary split as these did); 1 past the extreme
    score when it calls nothing or everything positive."""
    import warnings

    from sklearn.exceptions import UndefinedMetricWarning
    from sklearn.metrics import roc_curve

    labels = np.asarray(labels).astype(int)
    w = np.ones(len(labels)) if weights is None else np.asarray(weights, dtype=float)
    with warnings.catch_warnings():  # one class only: its rate is NaN, handled below
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        # every distinct score a point (no vertex dropped): the next is the highest negative
        fpr, tpr, thresholds = roc_curve(
            labels, np.asarray(scores, dtype=float), sample_weight=w, drop_intermediate=False
        )
    _, best = _best_on_roc(fpr, tpr, float(w @ labels), float(w @ (1 - labels)))
    if best == 0:  # thresholds[0] is +inf: nothing positive
        return float(thresholds[1] + 1.0)
    if best == len(thresholds) - 1:
        return float(thresholds[-1] - 1.0)
    return float((thresholds[best] + thresholds[best + 1]) / 2)


def platt_threshold(
    labels: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> float | None:
    """The score at which a Platt fit on these rows (logistic regression of the label on the
    score's logit, each row counted ``weights`` times, L2 as scikit-learn's default) gives
    P(positive) = 0.5: where accuracy is highest for scores calibrated that way. Both
    parameters are fit on every row, so the cut moves little when one row near it changes,
    where the most accurate cut on a few hundred rows with a dozen positives jumps. None
    when no cut follows from the fit (one class only; a slope that is not positive: higher
    scores are not more often positive; a cut at 0 or 1)."""
    from scipy.special import expit, logit
    from sklearn.linear_model import LogisticRegression

    labels = np.asarray(labels).astype(int)
    if len(np.unique(labels)) < 2:
        return None
    z = logit(np.clip(np.asarray(scores, dtype=float), 1e-7, 1 - 1e-7))[:, None]
    fit = LogisticRegression(C=1.0).fit(z, labels, sample_weight=weights)
    slope, intercept = float(fit.coef_[0][0]), float(fit.intercept_[0])
    if not slope > 0:
        return None
    threshold = float(expit(-intercept / slope))  # the score whose fitted logit is 0
    return threshold if 0.0 < threshold < 1.0 else None


def _best_on_roc(
    fpr: np.ndarray, tpr: np.ndarray, positives: float, negatives: float
) -> tuple[float, int]:
    """The best accuracy along a ROC curve (a linear function of its points, so a vertex
    kept by ``drop_intermediate`` holds it) and its point's index (0: all negative; of
    equal points the first, the fewest positives). ``positives``/``negatives``: the class
    totals, counted or weighted; a class that is absent leaves its rate NaN, which adds 0."""
    correct = np.nan_to_num(tpr) * positives + (1 - np.nan_to_num(fpr)) * negatives
    # the first of the best: rates times totals differ in the last bits where counts tie
    best = int(np.argmax(correct >= correct.max() - 1e-9 * (positives + negatives)))
    return float(correct[best] / (positives + negatives)), best


def correct_at_window_threshold(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per row, whether the decision at the window's own best threshold is right: the rows
    whose mean is ``window_accuracy``, for a paired comparison of two models on one window."""
    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    _check(labels, scores, ranked=True)
    _, threshold = best_accuracy(labels, scores)
    return (scores >= threshold).astype(int) == labels


def _downsample(
    xs: np.ndarray, ys: np.ndarray, limit: int = 200
) -> tuple[list[float], list[float]]:
    if len(xs) > limit:
        keep = np.unique(np.linspace(0, len(xs) - 1, limit).round().astype(int))
        xs, ys = xs[keep], ys[keep]
    return [float(v) for v in xs], [float(v) for v in ys]


def slice_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float, groups: pd.Series
) -> list[dict[str, Any]]:
    """Rows, positives, ROC-AUC, PR-AUC, accuracy, recall per value of ``groups``."""
    out = []
    groups = pd.Series(np.asarray(groups)).astype(str)
    for value in sorted(groups.unique()):
        mask = (groups == value).to_numpy()
        y, s = labels[mask], scores[mask]
        auc, ap = _ranking(y, s)
        dec = _decisions(y, (s >= threshold).astype(int))
        out.append(
            {
                "slice": value,
                "rows": int(mask.sum()),
                "positives": int(y.sum()),
                "roc_auc": auc,
                "pr_auc": ap,
                "accuracy": dec["accuracy"],
                "recall": dec["recall"] if y.sum() else float("nan"),
            }
        )
    return out


def evaluate_scores(
    labels: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    slices: dict[str, pd.Series] | None = None,
    n_bins: int = 10,
) -> Evaluation:
    """Every metric of one scored window; ``slices`` maps a column name to its values."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    labels = np.asarray(labels).astype(int)
    scores = np.asarray(scores, dtype=float)
    _check(labels, scores, ranked=True)
    roc_auc, pr_auc = _ranking(labels, scores)
    ece, bins = expected_calibration_error(labels, scores, n_bins)
    fpr, tpr, thresholds = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    fpr_l, tpr_l = _downsample(fpr, tpr)
    _, thr_l = _downsample(fpr, np.minimum(thresholds, 1.0))  # sklearn starts at +inf
    rec_l, prec_l = _downsample(recall[::-1], precision[::-1])
    dec = _decisions(labels, (scores >= threshold).astype(int))
    positives = float(labels.sum())
    window_accuracy, best = _best_on_roc(fpr, tpr, positives, len(labels) - positives)
    window_threshold = float(thresholds[best])
    return Evaluation(
        rows=len(labels),
        positives=int(labels.sum()),
        threshold=float(threshold),
        roc_auc=roc_auc,
        pr_auc=pr_auc,
        accuracy=dec["accuracy"],
        precision=dec["precision"],
        recall=dec["recall"],
        f1=dec["f1"],
        ece=ece,
        brier=float(np.mean((scores - labels) ** 2)),
        confusion_matrix=dec["confusion_matrix"],
        reliability=bins,
        roc_curve={"fpr": fpr_l, "tpr": tpr_l, "threshold": thr_l},
        pr_curve={"recall": rec_l, "precision": prec_l},
        slices={
            name: slice_metrics(labels, scores, threshold, values)
            for name, values in (slices or {}).items()
        },
        window_accuracy=window_accuracy,
        window_threshold=window_threshold,
    )
