"""The Bernoulli CUSUM charts of the predicted-class detector and the prior estimate (pure)."""

from __future__ import annotations

import numpy as np
import pytest

from kubeloop.drift.cusum import BernoulliCusum, chart_threshold, run_length
from kubeloop.drift.estimate import PriorShift


def columns(rate: float, n: int = 2000) -> np.ndarray:
    positive = np.zeros(n)
    positive[: int(round(rate * n))] = 1
    return np.stack([positive, 1 - positive], axis=1)


def simulate(chart: BernoulliCusum, rate: float, runs: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    lengths = []
    for _ in range(runs):
        chart.reset_state()
        while True:
            hit = rng.random() < rate
            if chart.predict(np.array([hit, not hit], dtype=float), False)["data"]["is_drift"]:
                lengths.append(chart.t)
                break
    return np.asarray(lengths)


def test_the_markov_chain_run_length_matches_a_simulation():
    # up 3, down 1 at p = 0.2: drift -0.2 per step, so alarms are rare but reachable
    exact = run_length(0.2, 3, 1, 12)
    rng = np.random.default_rng(1)
    lengths = []
    for _ in range(4000):
        s, t = 0, 0
        while s < 12:
            t += 1
            s = s + 3 if rng.random() < 0.2 else max(s - 1, 0)
        lengths.append(t)
    assert np.mean(lengths) == pytest.approx(exact, rel=0.05)


def test_the_threshold_is_the_smallest_reaching_the_target():
    h = chart_threshold(0.05, 19, 1, 5000)
    assert run_length(0.05, 19, 1, h) >= 5000 > run_length(0.05, 19, 1, h - 1)


@pytest.mark.parametrize("rate", [0.005, 0.04, 0.5, 0.985])
def test_stationary_run_length_is_the_ert(rate):
    chart = BernoulliCusum(columns(rate), ert=200)
    lengths = simulate(chart, rate, runs=1500)
    # exact thresholds round the run length up by at most one state's worth
    assert 0.9 * 200 <= lengths.mean() <= 1.25 * 200


def test_a_shift_either_way_alarms_long_before_the_ert():
    chart = BernoulliCusum(columns(0.04), ert=1e6)
    assert simulate(chart, 0.093, runs=50).mean() < 1000  # the label-shift scenario's rise
    assert simulate(chart, 0.005, runs=50).mean() < 3000  # positives nearly vanish


@pytest.mark.parametrize("rate", [0.002, 0.005, 0.04, 0.5, 0.96, 0.985, 0.998])
def test_each_chart_drifts_down_in_control_and_up_after_the_shift(rate):
    """The reference value lies strictly between the in-control rate and the shifted one,
    for rare and common classes alike (rounded carelessly it flips sides near 0 and 1)."""
    chart = BernoulliCusum(columns(rate, n=20000), ert=1000)
    for column, p0 in enumerate(chart.rates):
        odds = 2 * p0 / (1 - p0)
        gamma = chart.down[column] / chart.scale[column]
        assert p0 < gamma < odds / (1 + odds), (rate, column, gamma)


def test_a_rate_too_extreme_for_a_chart_is_named():
    with pytest.raises(ValueError, match="too extreme"):
        BernoulliCusum(columns(0.0001, n=20000), ert=1000)


def test_the_markov_chain_matches_a_dense_solve():
    def dense(p, up, down, states):
        q = np.zeros((states, states))
        idx = np.arange(states)
        inside = idx + up < states
        q[idx[inside], idx[inside] + up] += p
        q[idx, np.maximum(idx - down, 0)] += 1 - p
        return float(np.linalg.solve(np.eye(states) - q, np.ones(states))[0])

    for args in [(0.04, 50, 3, 101), (0.96, 1, 33, 56), (0.5, 1, 1, 30), (0.01, 99, 1, 400)]:
        assert run_length(*args) == pytest.approx(dense(*args), rel=1e-9)


def test_statistics_and_thresholds_are_per_column():
    chart = BernoulliCusum(columns(0.1), ert=500)
    stat = chart.score(np.array([1.0, 0.0]))
    assert stat.shape == (2,) and stat[0] > 0 and stat[1] == 0
    assert chart.get_threshold(chart.t).shape == (2,)
    chart.reset_state()
    assert chart.t == 0 and not chart.sums.any()


@pytest.mark.parametrize(
    ("x_ref", "message"),
    [
        (np.zeros((10, 2)), "strictly between 0 and 1"),
        (np.full((10, 1), 0.5), "0/1 columns"),
        (np.zeros((0, 2)), "strictly between 0 and 1"),
    ],
)
def test_an_unusable_reference_is_named(x_ref, message):
    with pytest.raises(ValueError, match=message):
        BernoulliCusum(x_ref, ert=100)


def test_prior_shift_recovers_the_prior_from_the_predicted_rate():
    rng = np.random.default_rng(0)
    y = (rng.random(20000) < 0.03).astype(int)
    # a classifier with tpr 0.7 and fpr 0.01
    pred = np.where(y == 1, rng.random(len(y)) < 0.7, rng.random(len(y)) < 0.01).astype(int)
    shift = PriorShift.fit(y, pred)
    assert shift.reference_prior == pytest.approx(0.03, abs=0.005)
    y2 = (rng.random(20000) < 0.105).astype(int)  # the prior x3.5, P(prediction | y) kept
    pred2 = np.where(y2 == 1, rng.random(len(y2)) < 0.7, rng.random(len(y2)) < 0.01)
    assert shift.prior(float(pred2.mean())) == pytest.approx(0.105, abs=0.01)
    assert shift.prior(0.0) == 0.0  # clipped


def test_prior_shift_without_separation_says_nothing():
    y = np.array([0, 1, 0, 1])
    assert PriorShift.fit(y, np.array([1, 1, 1, 1])).prior(0.5) is None  # tpr == fpr
    assert PriorShift.fit(np.array([0, 0]), np.array([0, 1])).prior(0.5) is None  # no positives
    with pytest.raises(ValueError, match="equal, non-zero"):
        PriorShift.fit(np.array([0, 1]), np.array([0]))
