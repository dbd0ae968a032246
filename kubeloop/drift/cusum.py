"""Bernoulli CUSUM charts for a change in the share of a binary outcome (the predicted class).

One chart per indicator column watches for that column's odds rising by ``odds_ratio``
(two columns, positive and negative, cover both directions). The chart is Page's CUSUM
on the Bernoulli log-likelihood ratio, scaled so that a 1 adds ``1 - gamma`` and a 0
subtracts ``gamma`` (``gamma``: the reference value, between the in-control and the
out-of-control rate). With ``gamma`` rounded to ``k/m`` the chart lives on the integers
``0..H`` in steps of ``1/m``, so its in-control average run length is exact: the
expected absorption time of a Markov chain (Brook and Evans, 1972), one linear solve.
The threshold ``H`` is the smallest whose run length reaches the target, so arming
takes milliseconds and needs no simulation; the run length holds exactly when the live
rate equals the reference's.

The class follows the slice of alibi-detect's online-detector interface that
``kubeloop.drift.detectors`` and the calibration use (``score``, ``get_threshold``, ``t``,
``predict``, ``reset_state``), so it serves where an alibi-detect detector does.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

MAX_DENOMINATOR = 64  # the reference value's rounding: gamma ~ k/m with m <= 64
MAX_STATES = 4096  # a threshold beyond this many states is refused (an ERT far too long)


def reference_value(p0: float, p1: float) -> float:
    """The CUSUM reference value ``gamma`` for a Bernoulli rate rising from ``p0`` to ``p1``:
    the log-likelihood ratio of a 0 over that of a 1, so that increments are 1 - gamma, -gamma."""
    return math.log((1 - p0) / (1 - p1)) / math.log(p1 * (1 - p0) / (p0 * (1 - p1)))


def run_length(p: float, up: int, down: int, states: int) -> float:
    """Average run length from 0 of the integer chart ``S = max(0, S + up)`` w.p. ``p`` and
    ``max(0, S - down)`` otherwise, alarming when ``S >= states``."""
    q = np.zeros((states, states))
    idx = np.arange(states)
    rise = idx + up
    inside = rise < states
    q[idx[inside], rise[inside]] += p
    q[idx, np.maximum(idx - down, 0)] += 1 - p
    return float(np.linalg.solve(np.eye(states) - q, np.ones(states))[0])


def chart_threshold(p: float, up: int, down: int, target: float) -> int:
    """The smallest number of states whose in-control run length is at least ``target``."""
    hi = 8
    while run_length(p, up, down, hi) < target:  # run_length grows with the states
        if hi >= MAX_STATES:
            raise ValueError(
                f"a CUSUM at rate {p:.4g} cannot reach an expected run time of {target:.4g} "
                f"within {MAX_STATES} states"
            )
        hi = min(2 * hi, MAX_STATES)
    lo = hi // 2 if hi > 8 else 1
    while lo < hi:
        mid = (lo + hi) // 2
        if run_length(p, up, down, mid) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo


class BernoulliCusum:
    """CUSUM charts on 0/1 columns: each alarms when its column's odds rise ``odds_ratio``-fold.

    ``x_ref`` holds the reference rows (one 0/1 column per chart); each column's rate must
    lie strictly between 0 and 1. The charts share the ERT: each targets ``ert`` times
    the number of charts, so that the first alarm of any comes after about ``ert`` steps.
    """

    def __init__(self, x_ref: np.ndarray, ert: float, odds_ratio: float = 2.0) -> None:
        x = np.asarray(x_ref, dtype=np.float64)
        if x.size == 0:
            raise ValueError(
                "the reference has no rows: each column's rate must lie strictly between 0 and 1"
            )
        x = x.reshape(len(x), -1)
        if not np.isin(x, (0.0, 1.0)).all():
            raise ValueError("a Bernoulli CUSUM reads 0/1 columns only")
        rates = x.mean(axis=0)
        if (rates <= 0).any() or (rates >= 1).any():
            raise ValueError(
                f"each column's reference rate must lie strictly between 0 and 1, got {rates.tolist()}"
            )
        if not odds_ratio > 1:
            raise ValueError(f"odds_ratio must exceed 1, got {odds_ratio}")
        self.ert, self.odds_ratio, self.rates = float(ert), float(odds_ratio), rates
        self.up, self.down, self.states, self.gamma = [], [], [], []
        for p0 in rates:
            odds = odds_ratio * p0 / (1 - p0)
            gamma = Fraction(reference_value(p0, odds / (1 + odds))).limit_denominator(
                MAX_DENOMINATOR
            )
            k, m = max(gamma.numerator, 1), gamma.denominator
            if k >= m:  # gamma rounded up to 1: the chart could never rise
                k, m = MAX_DENOMINATOR - 1, MAX_DENOMINATOR
            self.gamma.append(k / m)
            self.up.append(m - k)
            self.down.append(k)
            self.states.append(chart_threshold(p0, m - k, k, self.ert * len(rates)))
        self.scale = np.asarray([u + d for u, d in zip(self.up, self.down, strict=True)], float)
        self.reset_state()

    def reset_state(self) -> None:
        self.t = 0
        self.sums = np.zeros(len(self.rates), dtype=np.int64)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Steps every chart with one row; returns each chart's sum (in units of one 1)."""
        row = np.asarray(x, dtype=np.float64).ravel()
        hit = row >= 0.5
        step = np.where(hit, self.up, -np.asarray(self.down))
        self.sums = np.maximum(self.sums + step, 0)
        self.t += 1
        return self.sums / self.scale

    def get_threshold(self, t: int) -> np.ndarray:  # noqa: ARG002 - the same at every step
        """Per chart: a sum above it alarms (the sums move in steps of ``1/m``, so this is
        one step below the first alarming value)."""
        return (np.asarray(self.states, dtype=np.float64) - 1) / self.scale

    def predict(self, x: np.ndarray, return_test_stat: bool = True) -> dict:
        """alibi-detect's result shape: ``{"data": {"is_drift", "test_stat", "threshold"}}``."""
        stat = self.score(x)
        threshold = self.get_threshold(self.t)
        data = {"is_drift": int((stat > threshold).any()), "time": self.t}
        if return_test_stat:
            data.update(test_stat=stat, threshold=threshold)
        return {"data": data}
