"""Accuracy estimated from prediction scores alone, before any label arrives.

Average confidence after recalibration: on the version's reference sample (held-out
rows with their scores, predicted classes and labels) an isotonic map turns a score into
the probability that the row is positive; the decision threshold is the one the version
used there (the lowest score it called positive). For a live score ``s`` the chance that
the prediction is right is ``p(s)`` when ``s`` is at or above the threshold and
``1 - p(s)`` below it; their mean over the recent window estimates the window's accuracy.

The recalibration matters: a model trained with class weights (as kubeloop's are) scores
positives high on purpose, and its raw scores would overstate the errors. What the
estimate can and cannot see: input shift with P(y|x) unchanged (covariate drift) moves
it with the accuracy; a change of the class prior or of P(y|x) itself (label shift,
concept drift) does not show in the scores, so there it is biased and the delayed labels
are the evidence. Its measured error per scenario is in docs/benchmarks.md (``estimate``).

``PriorShift`` estimates the class prior of the live traffic from the share of positive
predictions (black-box shift estimation): the evidence the label-shift detector reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ConfidenceEstimator:
    """Score → probability that the predicted class is right, fitted on a reference sample."""

    knots: np.ndarray  # increasing scores where the calibration map changes
    values: np.ndarray  # P(y = 1 | score) at each knot (non-decreasing)
    threshold: float  # scores at or above it are predicted positive
    reference_accuracy: float

    @classmethod
    def fit(
        cls, scores: np.ndarray, labels: np.ndarray, predictions: np.ndarray
    ) -> ConfidenceEstimator:
        """Isotonic recalibration of ``scores`` against ``labels`` (pool adjacent violators).

        Raises ``ValueError`` naming the problem when the sample cannot support it: no rows,
        lengths that differ, scores outside [0, 1] or not finite, labels other than 0/1.
        """
        s = np.asarray(scores, dtype=np.float64).ravel()
        y = np.asarray(labels, dtype=np.float64).ravel()
        pred = np.asarray(predictions, dtype=np.int64).ravel()
        if not (len(s) == len(y) == len(pred)):
            raise ValueError(
                f"scores, labels and predictions differ in length: {len(s)}, {len(y)}, {len(pred)}"
            )
        if len(s) == 0:
            raise ValueError("the reference sample has no rows to calibrate on")
        if not np.all(np.isfinite(s)) or s.min() < 0.0 or s.max() > 1.0:
            raise ValueError("reference scores must be finite probabilities in [0, 1]")
        if not np.isin(y, (0.0, 1.0)).all():
            raise ValueError("reference labels must be 0 or 1")
        from sklearn.isotonic import IsotonicRegression

        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(s, y)
        positive = s[pred == 1]
        threshold = float(positive.min()) if len(positive) else float("inf")
        return cls(
            knots=np.asarray(iso.X_thresholds_, dtype=np.float64),
            values=np.asarray(iso.y_thresholds_, dtype=np.float64),
            threshold=threshold,
            reference_accuracy=float((pred == y).mean()),
        )

    def positive_probability(self, scores: np.ndarray) -> np.ndarray:
        """The recalibrated P(y = 1 | score), linear between knots, flat beyond them."""
        return np.interp(np.asarray(scores, dtype=np.float64).ravel(), self.knots, self.values)

    def confidence(self, scores: np.ndarray) -> np.ndarray:
        """Per score, the probability that the version's prediction for it is right."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        p = self.positive_probability(s)
        return np.where(s >= self.threshold, p, 1.0 - p)

    def estimate(self, scores: np.ndarray) -> float | None:
        """Estimated accuracy over ``scores`` (``None`` for none)."""
        s = np.asarray(scores, dtype=np.float64).ravel()
        return float(self.confidence(s).mean()) if len(s) else None


@dataclass(frozen=True)
class PriorShift:
    """Black-box shift estimation for two classes: the positive-class prior of the live
    traffic from the share of predictions that are positive, through the reference's
    confusion matrix (under label shift P(prediction | y) does not change, so the live
    predicted-positive rate is ``tpr * prior + fpr * (1 - prior)``)."""

    reference_prior: float  # share of positive labels in the reference sample
    reference_predicted: float  # share of positive predictions there
    tpr: float | None  # P(predicted positive | positive), None without positives
    fpr: float | None  # P(predicted positive | negative), None without negatives

    @classmethod
    def fit(cls, labels: np.ndarray, predictions: np.ndarray) -> PriorShift:
        y = np.asarray(labels, dtype=np.int64).ravel()
        pred = np.asarray(predictions, dtype=np.int64).ravel()
        if len(y) == 0 or len(y) != len(pred):
            raise ValueError(
                f"labels and predictions need equal, non-zero lengths: {len(y)}, {len(pred)}"
            )
        pos, neg = y == 1, y == 0
        return cls(
            reference_prior=float(pos.mean()),
            reference_predicted=float((pred == 1).mean()),
            tpr=float((pred[pos] == 1).mean()) if pos.any() else None,
            fpr=float((pred[neg] == 1).mean()) if neg.any() else None,
        )

    def prior(self, predicted_rate: float) -> float | None:
        """The positive prior that explains ``predicted_rate`` (clipped to [0, 1]); ``None``
        when the reference cannot tell the classes apart (tpr - fpr < 0.05)."""
        if self.tpr is None or self.fpr is None or self.tpr - self.fpr < 0.05:
            return None
        return float(np.clip((predicted_rate - self.fpr) / (self.tpr - self.fpr), 0.0, 1.0))
