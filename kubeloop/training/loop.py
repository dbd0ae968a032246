"""Pure training pieces shared by the Ray Train loop and the plain-torch baseline.

- ``time_split``: the validation part is the latest slice of time (no look-ahead);
- ``positive_weight``: BCE ``pos_weight`` = negatives / positives, so rare fraud counts;
- ``prior_correction``: weighting positives by ``w`` multiplies the learnt odds by ``w``;
  subtracting ``log w`` from the output bias restores calibrated probabilities;
- ``reweighting``: class weights that make the training prior look like another one
  (label shift: the class prior moved, P(x|y) did not);
- ``distilled_targets``: training targets pulled toward the stable version's scores
  (distillation: what it learnt from far more data is not forgotten on a small window);
- ``best_threshold``: the decision threshold maximising accuracy on validation;
- ``decision_threshold``: the served threshold, from a Platt fit on validation (the most
  accurate cut when the fit gives none);
- ``BestMembers``: each ensemble member's weights at its own best validation epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from kubeloop.data.schema import DatasetSchema

# The stable version's score of each training row, written beside the label by the features
# stage when a run distils toward it (TrainParams.distill_weight).
CHAMPION_SCORE = "champion_score"


class TrainingDataError(ValueError):
    """The training set cannot be trained on; the message says what is wrong."""


def time_split(
    frame: pd.DataFrame, schema: DatasetSchema, validation_fraction: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Splits by event time: the last ``validation_fraction`` of the timeline validates."""
    if not 0.0 < validation_fraction < 1.0:
        raise TrainingDataError(f"validation_fraction must be in (0, 1), got {validation_fraction}")
    missing = [c for c in [schema.timestamp, schema.label, *schema.feature_names] if c not in frame]
    if missing:
        raise TrainingDataError(f"training set lacks columns {missing}")
    ordered = frame.sort_values(schema.timestamp, kind="stable").reset_index(drop=True)
    cut = int(round(len(ordered) * (1.0 - validation_fraction)))
    train, valid = ordered.iloc[:cut], ordered.iloc[cut:]
    for name, part in (("training", train), ("validation", valid)):
        labels = part[schema.label]
        if len(part) == 0 or labels.nunique() < 2:
            raise TrainingDataError(
                f"the {name} part ({len(part)} rows, {int(labels.sum())} positives) needs both "
                f"classes; use more data or another validation_fraction"
            )
    return train.reset_index(drop=True), valid.reset_index(drop=True)


def distilled_targets(labels: np.ndarray, champion: np.ndarray, weight: float) -> np.ndarray:
    """Soft targets ``(1 - weight) * label + weight * champion score`` (knowledge
    distillation toward the stable version). The stable version learnt P(y|x) from far more
    rows than a retraining window holds; where drift left P(y|x) as it was (covariate
    drift, label shift) its scores are a second, less noisy teacher. The loss (binary
    cross-entropy) takes soft targets as they are."""
    if not 0.0 <= weight < 1.0:
        raise TrainingDataError(f"distill weight must be in [0, 1), got {weight}")
    champion = np.asarray(champion, dtype=np.float64)
    if champion.shape != np.shape(labels):
        raise TrainingDataError(f"{len(champion)} champion scores for {len(labels)} training rows")
    if not np.all((champion >= 0.0) & (champion <= 1.0)):  # NaN fails too
        raise TrainingDataError(f"{CHAMPION_SCORE} must hold probabilities in [0, 1]")
    return ((1.0 - weight) * np.asarray(labels, dtype=np.float64) + weight * champion).astype(
        np.float32
    )


def positive_weight(y: np.ndarray) -> float:
    positives = float(np.sum(y))
    if positives == 0:
        raise TrainingDataError("the training part has no positive labels")
    return max((len(y) - positives) / positives, 1.0)


def prior_correction(pos_weight: float) -> float:
    """The logit offset that undoes ``pos_weight``'s inflation of the odds."""
    return -math.log(pos_weight)


@dataclass(frozen=True)
class Reweighting:
    """Importance weights ``q/p`` (positives) and ``(1-q)/(1-p)`` (negatives) that make a
    training set with positive rate ``p`` count as one with rate ``q``. Under label shift
    (P(x|y) fixed) a model fitted with them estimates P(y|x) at the prior ``q``."""

    training_rate: float
    target_rate: float

    @property
    def positive(self) -> float:
        return self.target_rate / self.training_rate

    @property
    def negative(self) -> float:
        return (1.0 - self.target_rate) / (1.0 - self.training_rate)

    @property
    def ratio(self) -> float:
        """Positive over negative weight: the factor on the odds."""
        return self.positive / self.negative

    @property
    def logit_offset(self) -> float:
        """What the weighted fit adds to the output bias: ``log(ratio)``. Weighting the
        classes changes a logistic output's optimum by exactly this offset on its bias (the
        same way ``pos_weight`` does, which ``prior_correction`` undoes), so the network is
        fitted once with the usual weights and the offset applied after: gradient steps
        at pos_weight × ratio (×150 and more for rare fraud) had not moved the bias there
        after a few epochs."""
        return math.log(self.ratio)

    def weights(self, y: np.ndarray) -> np.ndarray:
        return np.where(y > 0.5, self.positive, self.negative)


def reweighting(y: np.ndarray, target_rate: float | None) -> Reweighting | None:
    """The re-weighting of the labels ``y`` to the positive rate ``target_rate``; None
    when no target is given (0 or None)."""
    if not target_rate:
        return None
    if not 0.0 < target_rate < 1.0:
        raise TrainingDataError(f"target_positive_rate must be in (0, 1), got {target_rate}")
    rate = float(np.mean(y))
    if not 0.0 < rate < 1.0:
        raise TrainingDataError("re-weighting to a class prior needs both classes in training")
    return Reweighting(rate, float(target_rate))


def best_threshold(y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The decision threshold with the highest accuracy on these rows, each counted
    ``weights`` times (e.g. re-weighted to another class prior): accuracy is what the gate
    and the canary judge a served model by. Halfway between the nearest scores on either
    side of the cut (:func:`~kubeloop.evaluation.metrics.margin_threshold`); ties: the
    higher threshold (fewer alarms)."""
    from kubeloop.evaluation.metrics import margin_threshold

    _check_threshold_inputs("best_threshold", y, scores, weights)
    return margin_threshold(y, scores, weights)


def _check_threshold_inputs(
    caller: str, y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None
) -> None:
    lengths = [len(y), len(scores), len(y) if weights is None else len(weights)]
    if lengths[0] == 0 or len(set(lengths)) > 1:
        raise TrainingDataError(
            f"{caller} needs as many labels, scores and weights (got "
            f"{', '.join(map(str, lengths))}), at least one"
        )


def decision_threshold(
    y: np.ndarray, scores: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, str]:
    """``(threshold, how)``: the threshold a version serves, chosen on validation rows.

    The score at which a Platt fit on them says P(positive) = 0.5
    (:func:`~kubeloop.evaluation.metrics.platt_threshold`), ``how`` = "platt"; the most
    accurate cut (:func:`best_threshold`), ``how`` = "accuracy", when the fit gives none.
    A retraining window validates on a few hundred rows holding a dozen positives: there
    the most accurate cut moves with single rows near it (bench/retrain_window, 16 covariate
    seeds of one 20 s window: served thresholds 0.53-0.84), while both Platt parameters come from
    every row (0.64-0.76), and accuracy on later traffic is closer to the oracle's."""
    from kubeloop.evaluation.metrics import platt_threshold

    _check_threshold_inputs("decision_threshold", y, scores, weights)
    platt = platt_threshold(y, scores, weights)
    return (best_threshold(y, scores, weights), "accuracy") if platt is None else (platt, "platt")


@dataclass
class EpochResult:
    train_loss: float
    val_loss: float
    val_roc_auc: float
    val_pr_auc: float


def run_epoch(
    model: torch.nn.Module,
    optimiser: torch.optim.Optimizer,
    loss_fn: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    generator: torch.Generator,
) -> float:
    """One pass over ``(x, y)`` in shuffled mini-batches; returns the mean loss."""
    model.train()
    order = torch.randperm(len(x), generator=generator).to(x.device)
    total, count = 0.0, 0
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        optimiser.zero_grad()
        logits = model(x[idx])  # [rows], or [members, rows] for an ensemble
        loss = loss_fn(logits, y[idx].expand_as(logits))
        loss.backward()
        optimiser.step()
        total += float(loss.detach()) * len(idx)
        count += len(idx)
    return total / max(count, 1)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC-AUC as the Mann-Whitney statistic (tied scores count half), as scikit-learn's
    ``roc_auc_score`` computes it for binary labels.

    Each training run's worker is a new process, and importing ``sklearn.metrics`` there
    cost about 1 s of every retraining run's Ray Train fit() (docs/benchmarks.md, pipeline
    section); these few lines of numpy cost nothing to import.
    """
    positive = np.asarray(labels) > 0.5
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("ROC-AUC needs both classes among the labels")
    _, index, counts = np.unique(np.asarray(scores), return_inverse=True, return_counts=True)
    # 1-based ranks, a tie group sharing its average rank
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[index]
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision (PR-AUC): precision at each distinct score, weighted by the recall
    it adds, highest scores first; what scikit-learn's ``average_precision_score`` gives."""
    positive = np.asarray(labels) > 0.5
    n_pos = int(positive.sum())
    if n_pos == 0:
        raise ValueError("average precision needs positive labels")
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    ordered, hits = np.asarray(scores)[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(ordered)), ordered.size - 1]  # end of each tie group
    true_pos = np.cumsum(hits)[last]
    precision = true_pos / (last + 1)
    recall_gain = np.diff(np.r_[0, true_pos]) / n_pos
    return float((recall_gain * precision).sum())


def validate(
    model: torch.nn.Module, loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> tuple[float, float, float]:
    """Validation loss (the training objective), ROC-AUC and PR-AUC."""
    model.eval()
    with torch.inference_mode():
        logits = model(x)
        loss = float(loss_fn(logits, y))
    scores = logits.float().cpu().numpy()
    labels = y.cpu().numpy()
    return loss, roc_auc(labels, scores), average_precision(labels, scores)


def member_losses(
    network: torch.nn.Module, loss_fn: torch.nn.Module, x: torch.Tensor, y: torch.Tensor
) -> np.ndarray:
    """Each ensemble member's validation loss (one value for a single network)."""
    network.eval()
    with torch.inference_mode():
        logits = network.member_logits(x)
        return np.array([float(loss_fn(member, y)) for member in logits])


class BestMembers:
    """Keeps each member's weights from the epoch of its lowest validation loss, so every
    member stops early on its own (an ensemble's mean loss would stop all of them at
    once). A member's parameters are the slice at its index of every parameter's first
    dimension (``MemberLinear``); a single network's are all of them. A member whose loss
    was never finite keeps its last epoch's weights."""

    def __init__(self, members: int) -> None:
        self.members = members
        self.losses = np.full(members, np.inf)
        self.epochs = np.zeros(members, dtype=np.int64)
        self.state: dict[str, np.ndarray] | None = None

    def offer(
        self,
        epoch: int,
        losses: np.ndarray,
        state: Callable[[], dict[str, np.ndarray]],
        last: bool,
    ) -> None:
        """Takes the weights ``state()`` copies (called only when a member improved at
        ``epoch``, or never had a finite loss by the ``last`` one)."""
        taken = losses < self.losses  # NaN never improves
        if last:
            taken |= self.epochs == 0
        if not taken.any():
            return
        self.losses[taken], self.epochs[taken] = losses[taken], epoch
        state = state()
        if self.state is None or self.members == 1:
            self.state = state
            return
        for name, value in state.items():
            self.state[name][taken] = value[taken]
