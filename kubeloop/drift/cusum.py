"""Bernoulli CUSUM charts for a change in the share of a binary outcome (the predicted class).

One chart per indicator column watches for that column's odds rising by ``odds_ratio``
(two columns, positive and negative, cover both directions). The chart is Page's CUSUM
on the Bernoulli log-likelihood ratio, scaled so that a 1 adds ``1 - gamma`` and a 0
subtracts ``gamma`` (``gamma``: the reference value, between the in-control and the
out-of-control rate). With ``gamma`` rounded to ``k/m`` the chart lives on the integers
``0..H`` in steps of ``1/m``, so its in-control average run length is exact: the
expected absorption time of a Markov chain (Brook and Evans, 1972), one banded linear
solve. The threshold ``H`` is the smallest whose run length reaches the target (a
dozen solves), so arming takes milliseconds for common rates (seconds for rates within
a few per thousand of 0 or 1, whose charts need more states) and needs no simulation;
the run length holds exactly when the live rate equals the reference's.

The class follows the slice of alibi-detect's online-detector interface that
``kubeloop.drift.detectors`` and the calibration use (``score``, ``get_threshold``, ``t``,
``predict``, ``reset_state``), so it serves where an alibi-detect detector does.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

MAX_DENOMINATOR = 512  # the reference value k/m: the chart lives on integers in steps of 1/m
MAX_STATES = 64 * MAX_DENOMINATOR  # a threshold beyond this is refused (an ERT far too long)


def reference_value(p0: float, p1: float) -> float:
    """The CUSUM reference value ``gamma`` for a Bernoulli rate rising from ``p0`` to ``p1``:
    the log-likelihood ratio of a 0 over that of a 1, so that increments are 1 - gamma, -gamma."""
    return math.log((1 - p0) / (1 - p1)) / math.log(p1 * (1 - p0) / (p0 * (1 - p1)))


def reference_fraction(p0: float, p1: float) -> Fraction:
    """``gamma`` as a fraction ``k/m`` strictly between ``p0`` and ``p1`` (so the chart
    drifts down in control and up out of control) and within a tenth of that interval of
    ``gamma``, with the smallest denominator that allows it; at ``MAX_DENOMINATOR``, any
    fraction strictly between them."""
    gamma = reference_value(p0, p1)
    limit = 8
    while limit <= MAX_DENOMINATOR:
        fraction = Fraction(gamma).limit_denominator(limit)
        close = abs(fraction - gamma) <= 0.1 * (p1 - p0) or limit == MAX_DENOMINATOR
        if p0 < fraction < p1 and close:
            return fraction
        limit *= 2
    raise ValueError(
        f"a rate of {p0:.4g} is too extreme for a CUSUM chart (no reference value between "
        f"{p0:.4g} and {p1:.4g} with a denominator up to {MAX_DENOMINATOR})"
    )


def run_length(p: float, up: int, down: int, states: int) -> float:
    """Average run length from 0 of the integer chart ``S = max(0, S + up)`` w.p. ``p`` and
    ``max(0, S - down)`` otherwise, alarming when ``S >= states``: one banded solve of
    ``(I - Q) L = 1`` (the transitions reach ``up`` states above and ``down`` below)."""
    from scipy.linalg import solve_banded

    idx = np.arange(states)
    bands = np.zeros((down + up + 1, states))  # bands[up + i - j, j] = (I - Q)[i, j]
    bands[up] = 1.0
    rise = idx + up < states
    bands[0, idx[rise] + up] -= p  # i -> i + up, the upper band's top row
    fall = np.maximum(idx - down, 0)  # i -> max(i - down, 0)
    bands[up + idx - fall, fall] -= 1 - p
    return float(solve_banded((down, up), bands, np.ones(states))[0])


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
    lie strictly between 0 and 1 (and not so close to either that no reference value
    separates it from the shifted rate). The charts share the ERT: each targets ``ert``
    times the number of charts, so that the first alarm of any comes after about ``ert``
    steps.
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
        self.ert, self.rates = float(ert), rates
        up, down, states = [], [], []
        for p0 in rates:
            odds = odds_ratio * p0 / (1 - p0)
            gamma = reference_fraction(p0, odds / (1 + odds))
            k, m = gamma.numerator, gamma.denominator
            up.append(m - k)
            down.append(k)
            states.append(chart_threshold(p0, m - k, k, self.ert * len(rates)))
        self.up, self.down = np.asarray(up), np.asarray(down)
        self.scale = (self.up + self.down).astype(np.float64)
        # a sum above it alarms: the sums move in steps of 1/m, one step below the first
        # alarming value
        self.threshold = (np.asarray(states, dtype=np.float64) - 1) / self.scale
        self.reset_state()

    def reset_state(self) -> None:
        self.t = 0
        self.sums = np.zeros(len(self.rates), dtype=np.int64)

    def score(self, x: np.ndarray) -> np.ndarray:
        """Steps every chart with one row; returns each chart's sum (in units of one 1)."""
        row = np.asarray(x, dtype=np.float64).ravel()
        hit = row >= 0.5
        step = np.where(hit, self.up, -self.down)
        self.sums = np.maximum(self.sums + step, 0)
        self.t += 1
        return self.sums / self.scale

    def get_threshold(self, t: int) -> np.ndarray:  # noqa: ARG002 - the same at every step
        """Per chart: a sum above it alarms."""
        return self.threshold

    def predict(self, x: np.ndarray, return_test_stat: bool = True) -> dict:
        """alibi-detect's result shape: ``{"data": {"is_drift", "test_stat", "threshold"}}``."""
        stat = self.score(x)
        threshold = self.get_threshold(self.t)
        data = {"is_drift": int((stat > threshold).any()), "time": self.t}
        if return_test_stat:
            data.update(test_stat=stat, threshold=threshold)
        return {"data": data}
