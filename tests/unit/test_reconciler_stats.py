"""Sequential statistics: error control under repeated looks, power, and input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from kubeloop.operators.reconciler.stats import (
    Split,
    Verdict,
    asymptotic_cs_halfwidth,
    bucket_counts,
    latency_p99,
    rate_increase,
    score_shift,
)

EDGES = [round(0.05 * i, 2) for i in range(1, 21)]


def looks(p_canary: float, p_stable: float, rng, tolerance=0.0, n_max=6000, every=200):
    """Runs one sequential experiment, judging after every `every` requests per arm."""
    c = rng.random(n_max) < p_canary
    s = rng.random(n_max) < p_stable
    verdicts = []
    for n in range(every, n_max + 1, every):
        r = rate_increase(
            "e", c[:n].sum(), n, s[:n].sum(), n, tolerance=tolerance, alpha=0.05, n_opt=500
        )
        verdicts.append(r.verdict)
        if r.verdict != Verdict.INCONCLUSIVE:
            break
    return verdicts


def stepped_looks(p_canary, p_stable, shares, rng, tolerance=0.0, per_step=3000, every=100):
    """One experiment as the router and the operator run it: through steps of the given
    canary shares (``per_step`` labels each; each request goes to the canary with the
    step's share), judged after every ``every`` labels once each version has the
    analysis's minimum (``n_opt``, its ``minFeedback``), on the labels pooled since the
    first step: the earlier steps' counts recorded, the current step's the rest."""
    verdicts, earlier, totals = [], [], np.zeros(4)
    for share in shares:
        canary = rng.random(per_step) < share
        event = np.where(canary, rng.random(per_step) < p_canary, rng.random(per_step) < p_stable)
        step = np.zeros(4)
        for n in range(every, per_step + 1, every):
            c, e = canary[n - every : n], event[n - every : n]
            step += [(e & c).sum(), c.sum(), (e & ~c).sum(), (~c).sum()]
            k_c, n_c, k_s, n_s = totals + step
            if min(n_c, n_s) < 60:  # the minimum-sample gate
                continue
            r = rate_increase("e", k_c, n_c, k_s, n_s, tolerance=tolerance, alpha=0.05,
                              n_opt=60, randomized=True, earlier=earlier)  # fmt: skip
            verdicts.append(r.verdict)
            if r.verdict != Verdict.INCONCLUSIVE:
                return verdicts
        earlier.append(Split(*step))
        totals += step
    return verdicts


@pytest.mark.parametrize(
    ("shares", "per_step"),
    [
        ((0.1,), 8000),
        ((0.25,), 8000),
        ((0.5,), 8000),
        ((0.1, 0.5), 3000),
        ((0.25, 0.5, 0.75), 3000),
    ],
)
def test_a_routed_canary_keeps_both_errors_below_alpha_at_every_look(shares, per_step):
    """80 looks at one 10-50 % step, or up to 90 through steps of different weights (the
    steps' splits judged as one sequence): an equal canary is rarely failed, and one worse
    than stable by more than the tolerance is rarely passed."""
    rng = np.random.default_rng(int(shares[0] * 100) + len(shares))
    runs = 300
    kw = {"per_step": per_step}
    fails = sum(Verdict.FAIL in stepped_looks(0.05, 0.05, shares, rng, **kw) for _ in range(runs))
    passes = sum(
        Verdict.PASS in stepped_looks(0.09, 0.04, shares, rng, tolerance=0.04, **kw)
        for _ in range(runs)
    )
    assert fails / runs <= 0.05 and passes / runs <= 0.05


def test_a_split_per_step_is_narrower_than_a_sequence_per_version():
    """Labels of a 25 % step and a 50 % step: the steps' splits bound the difference
    tighter than the union, and their estimate weighs each step's own difference."""
    earlier = [Split(2, 50, 10, 150)]
    totals = (2 + 2, 50 + 100, 10 + 6, 150 + 100)
    split = rate_increase("a", *totals, tolerance=0.04, alpha=0.05, n_opt=60,
                          randomized=True, earlier=earlier)  # fmt: skip
    union = rate_increase("a", *totals, tolerance=0.04, alpha=0.05, n_opt=60)
    assert split.estimate == pytest.approx((200 * (2 / 50 - 10 / 150) + 200 * (0.02 - 0.06)) / 400)
    assert split.upper - split.estimate < 0.8 * (union.upper - union.estimate)
    assert split.verdict == Verdict.PASS and union.verdict == Verdict.INCONCLUSIVE


def test_a_step_count_below_the_earlier_steps_is_floored_at_zero():
    """increase() extrapolates: a pooled count can come out below the earlier steps' sum."""
    current = Split(5, 99.6, 20, 300).less([Split(5.2, 100, 20, 290)])
    assert current == Split(0.0, 0.0, 0.0, 10)
    # canary labels in the earlier step only, stable ones in this step only: no split
    # compares the two, so no verdict
    check = rate_increase("a", 5, 99.6, 20, 300, tolerance=0.04, alpha=0.05, n_opt=60,
                          randomized=True, earlier=[Split(5.2, 100, 0, 0)])  # fmt: skip
    assert check.verdict == Verdict.INCONCLUSIVE
    assert check.detail == "no step holds samples of both versions"


def test_equal_rates_rarely_fail_despite_30_looks():
    rng = np.random.default_rng(7)
    fails = sum(Verdict.FAIL in looks(0.05, 0.05, rng) for _ in range(300))
    assert fails / 300 <= 0.05


def test_a_better_canary_passes_sooner_within_one_randomized_split():
    """At a 25 % step with stable 6.5 % and canary 3 % wrong (a retrained model on drift),
    the difference's own sequence is narrower than one per version at alpha/2 each, the
    form any other two samples (a promoted version against its predecessor's last step)
    keep."""
    n_c, n_s, k_c, k_s = 120, 360, 3.6, 23.4  # 12 s of labels at 40/s
    split = rate_increase("a", k_c, n_c, k_s, n_s, tolerance=0.04, alpha=0.05, n_opt=60,
                          randomized=True)  # fmt: skip
    union = rate_increase("a", k_c, n_c, k_s, n_s, tolerance=0.04, alpha=0.05, n_opt=60)
    assert split.estimate == union.estimate
    assert split.upper - split.estimate < 0.8 * (union.upper - union.estimate)
    expected = sum(
        asymptotic_cs_halfwidth(n, p * (1 - p), 0.025, 60)
        for n, p in (((n_c, (k_c + 0.5) / (n_c + 1)), (n_s, (k_s + 0.5) / (n_s + 1))))
    )
    assert union.upper - union.estimate == pytest.approx(expected)
    # the split passes; the union holds until about 22 s
    assert split.verdict == Verdict.PASS and union.verdict == Verdict.INCONCLUSIVE


def test_clearly_worse_canary_fails_and_equal_canary_passes_with_tolerance():
    rng = np.random.default_rng(11)
    assert sum(looks(0.15, 0.02, rng)[-1] == Verdict.FAIL for _ in range(50)) >= 48
    assert sum(looks(0.02, 0.02, rng, tolerance=0.02)[-1] == Verdict.PASS for _ in range(50)) >= 45


def test_confidence_sequence_shrinks_with_samples():
    widths = [asymptotic_cs_halfwidth(n, 0.25, 0.05, 500) for n in (100, 1000, 10000, 100000)]
    assert widths == sorted(widths, reverse=True) and widths[-1] < 0.02
    assert math.isinf(asymptotic_cs_halfwidth(0, 0.25, 0.05, 500))


def test_rate_increase_rejects_impossible_counts():
    with pytest.raises(ValueError, match="more events than samples"):
        rate_increase("error_rate", 5, 3, 0, 10, tolerance=0.01, alpha=0.05, n_opt=100)
    with pytest.raises(ValueError, match="non-negative"):
        rate_increase("error_rate", -1, 3, 0, 10, tolerance=0.01, alpha=0.05, n_opt=100)


def cumulative(samples) -> dict[float, float]:
    counts = np.histogram(np.clip(samples, 0, 1), bins=[0, *EDGES])[0]
    return dict(zip(EDGES, np.cumsum(counts).astype(float), strict=True))


def test_score_shift_same_distribution_never_fails_and_shifted_fails():
    rng = np.random.default_rng(3)
    same = [
        score_shift(
            cumulative(rng.beta(1, 8, 3000)),
            cumulative(rng.beta(1, 8, 3000)),
            tolerance=0.25,
            alpha=0.05,
        )
        for _ in range(50)
    ]
    assert all(r.verdict != Verdict.FAIL for r in same)
    assert sum(r.verdict == Verdict.PASS for r in same) >= 45
    shifted = score_shift(
        cumulative(rng.beta(4, 2, 3000)),
        cumulative(rng.beta(1, 8, 3000)),
        tolerance=0.25,
        alpha=0.05,
    )
    assert shifted.verdict == Verdict.FAIL and shifted.lower > 0.25


def test_score_shift_needs_matching_buckets_and_cumulative_counts():
    with pytest.raises(ValueError, match="bucket boundaries"):
        score_shift({0.5: 1, 1.0: 2}, {1.0: 2}, tolerance=0.1, alpha=0.05)
    with pytest.raises(ValueError, match="cumulative"):
        bucket_counts({0.5: 5, 1.0: 2})


def test_latency_p99_tolerance():
    assert latency_p99(0.029, 0.02, tolerance=0.5, slack=0.0).verdict == Verdict.PASS
    assert latency_p99(0.031, 0.02, tolerance=0.5, slack=0.0).verdict == Verdict.FAIL
    assert latency_p99(None, 0.02, tolerance=0.5, slack=0.0).verdict == Verdict.INCONCLUSIVE


@given(
    st.integers(0, 5000),
    st.integers(1, 5000),
    st.integers(0, 5000),
    st.integers(1, 5000),
    st.floats(0, 0.2),
)
def test_property_interval_contains_estimate_and_verdict_matches(kc, nc, ks, ns, tol):
    kc, ks = min(kc, nc), min(ks, ns)
    r = rate_increase("e", kc, nc, ks, ns, tolerance=tol, alpha=0.05, n_opt=200)
    assert r.lower <= r.estimate <= r.upper
    if r.verdict == Verdict.PASS:
        assert r.upper <= tol
    if r.verdict == Verdict.FAIL:  # worse with confidence, whatever the tolerance
        assert r.lower > 0
