"""The indicators of raw inputs (quantile bins, categories, distance) and the CUSUM charts
that watch them: the union design, its run length and the chart detector (pure numpy)."""

from __future__ import annotations

import numpy as np
import pytest

from kubeloop.drift.cusum import (
    BernoulliCusum,
    ChartDetector,
    alarm_rate,
    design,
    run_length,
    survival,
    union_run_length,
)
from kubeloop.drift.indicators import Categories, Distance, QuantileBins


def chart_tuples(chart: BernoulliCusum) -> list[tuple[float, int, int, int]]:
    """The ``(p, up, down, states)`` of every chart, as ``union_run_length`` reads them."""
    return [
        (float(p), int(u), int(d), int(s))
        for p, u, d, s in zip(chart.rates, chart.up, chart.down, chart.states, strict=True)
    ]


def simulate_union(
    charts: list[tuple[float, int, int, int]], streams: int, seed: int
) -> np.ndarray:
    """First-alarm times of ``streams`` independent copies of the charts, all from 0."""
    rng = np.random.default_rng(seed)
    p, up, down, states = (np.array(v) for v in zip(*charts, strict=True))
    sums = np.zeros((streams, len(charts)), dtype=np.int64)
    first, alive, t = np.zeros(streams, dtype=np.int64), np.arange(streams), 0
    while len(alive):
        t += 1
        hits = rng.random(sums.shape) < p
        sums = np.maximum(sums + np.where(hits, up, -down), 0)
        alarm = (sums >= states).any(axis=1)
        first[alive[alarm]] = t
        alive, sums = alive[~alarm], sums[~alarm]
    return first


def page_loop(chart: BernoulliCusum, hits: np.ndarray) -> tuple[int | None, np.ndarray]:
    """Page's recursion step by step in plain Python: the first alarm row and the last sums."""
    sums = [int(s) for s in chart.sums]
    first = None
    for t, row in enumerate(hits):
        for j, hit in enumerate(row):
            sums[j] = max(0, sums[j] + int(chart.up[j]) if hit else sums[j] - int(chart.down[j]))
        if first is None and any(s >= int(n) for s, n in zip(sums, chart.states, strict=True)):
            first = t
    return first, np.asarray(sums)


# --- QuantileBins ------------------------------------------------------------------------


def test_quantile_bins_of_continuous_columns_are_equal_shares():
    rng = np.random.default_rng(0)
    x = np.column_stack([rng.normal(size=5000), rng.exponential(size=5000), rng.random(5000)])
    q = QuantileBins.fit(x, bins=10)
    assert q.n_inputs == 3 and q.counted_on == 5000 and q.dropped == {}
    np.testing.assert_array_equal(q.owner, np.repeat([0, 1, 2], 10))
    np.testing.assert_allclose(q.rates, 0.1, atol=0.002)
    for col in range(3):
        assert q.rates[q.owner == col].sum() == pytest.approx(1.0, abs=1e-12)
    # the rates are the reference's own transform, counted
    np.testing.assert_array_equal(q.transform(x).mean(axis=0), q.rates)
    # any row, inside or far outside the reference's range, is in exactly one bin per column
    live = rng.normal(scale=5.0, size=(300, 3))
    hits = q.transform(live)
    assert hits.shape == (300, 30) and hits.dtype == bool
    for col in range(3):
        np.testing.assert_array_equal(hits[:, q.owner == col].sum(axis=1), 1)


def test_quantile_bins_count_the_rates_of_tied_values():
    rng = np.random.default_rng(1)
    n = 5000
    counts = np.where(rng.random(n) < 0.7, 0, rng.poisson(3, n) + 1)  # 70 % zeros
    constant = np.where(rng.random(n) < 0.998, 5.0, rng.normal(size=n))  # 99.8 % one value
    scores = np.where(rng.random(n) < 0.3, 1.0, rng.random(n))  # saturated at 1.0
    x = np.column_stack([counts, constant, scores]).astype(float)
    q = QuantileBins.fit(x, bins=10)
    np.testing.assert_array_equal(q.transform(x).mean(axis=0), q.rates)  # counted, not assumed

    zeros = q.rates[q.owner == 0]
    assert 2 <= len(zeros) < 10  # the ties merge intervals
    assert zeros[0] == (counts == 0).mean()  # all zeros share the first interval
    assert zeros.sum() == pytest.approx(1.0) and (zeros >= 0.005).all()

    assert "near-constant" in q.dropped[1] and set(q.dropped) == {1}
    assert not (q.owner == 1).any()
    assert q.transform(x).shape[1] == len(q.rates)  # the dropped column adds no indicator

    top = q.rates[q.owner == 2]
    # the top interval holds the saturated scores (and the few just below them)
    assert top[-1] == (scores > q.edges[2][-1]).mean()
    assert (scores == 1.0).mean() <= top[-1] < (scores == 1.0).mean() + 0.005
    np.testing.assert_allclose(top[:-1], 0.1, atol=0.002)  # the rest still cut evenly
    row = q.transform(np.array([[0.0, 5.0, 1.0]]))[0, q.owner == 2]
    assert row[-1] and row.sum() == 1


def test_a_constant_or_empty_column_is_dropped_not_charted():
    x = np.column_stack([np.full(500, 3.0), np.full(500, np.nan), np.arange(500.0)])
    q = QuantileBins.fit(x, bins=4)
    assert set(q.dropped) == {0, 1}
    np.testing.assert_array_equal(q.owner, [2, 2, 2, 2])


# --- Categories --------------------------------------------------------------------------


def test_categories_chart_common_columns_pool_rare_ones_and_complement_binaries():
    rng = np.random.default_rng(2)
    n = 6000
    color = rng.choice(6, size=n, p=[0.5, 0.3, 0.188, 0.004, 0.004, 0.004])
    flag = (rng.random(n) < 0.2).astype(float)
    mostly = rng.choice(2, size=n, p=[0.997, 0.003])
    x = np.column_stack([np.eye(6)[color], flag, np.eye(2)[mostly]])
    groups = ["color"] * 6 + ["flag"] + ["mostly"] * 2
    c = Categories.fit(x, groups, binary={"flag"})
    assert c.n_inputs == 9 and c.counted_on == n

    # color: three common categories and one "other" for the three rare ones (owned by the
    # first of them); flag: the column and its complement; mostly: nothing
    assert [cols.tolist() for cols in c.columns] == [[0], [1], [2], [3, 4, 5], [6], [6]]
    np.testing.assert_array_equal(c.owner, [0, 1, 2, 3, 6, 6])
    np.testing.assert_array_equal(c.complement, [False] * 5 + [True])
    assert c.rates[3] == pytest.approx(np.isin(color, [3, 4, 5]).mean())
    assert c.rates[3] >= 0.005 > max(np.mean(color == k) for k in (3, 4, 5))
    assert c.rates[4] + c.rates[5] == pytest.approx(1.0)
    np.testing.assert_array_equal(c.transform(x).mean(axis=0), c.rates)

    # a feature whose only common category is above 1 - min_rate is dropped, named
    assert set(c.dropped) == {7, 8} and all("mostly" in why for why in c.dropped.values())

    rows = np.zeros((3, 9))
    rows[0, [4, 6]] = 1  # a rare color, flag set
    rows[1, [0]] = 1  # the commonest color, flag clear
    hits = c.transform(rows)
    np.testing.assert_array_equal(hits[0], [0, 0, 0, 1, 1, 0])
    np.testing.assert_array_equal(hits[1], [1, 0, 0, 0, 0, 1])  # the complement flips
    np.testing.assert_array_equal(hits[2], [0, 0, 0, 0, 0, 1])


# --- Distance ----------------------------------------------------------------------------


def test_distance_rates_are_counted_on_the_half_it_was_not_fitted_on():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(20, 20))
    cov = a @ a.T / 20 + np.eye(20)
    x = rng.multivariate_normal(np.zeros(20), cov, size=401)
    d = Distance.fit(x, bins=5)
    assert d.counted_on == 200 and d.n_inputs == 1 and d.dropped == {}
    np.testing.assert_array_equal(d.owner, 0)
    np.testing.assert_array_equal(d.transform(x[1::2]).mean(axis=0), d.rates)
    np.testing.assert_allclose(d.rates, 0.2)
    # the half the fit saw lies closer to its mean: counted there the top bin would be
    # too rare, and the chart would alarm on every live batch
    assert d.transform(x[0::2]).mean(axis=0)[-1] < 0.5 * d.rates[-1]
    # rows far from the reference mean land in the top bin, and in it alone
    far = d.transform(np.full((4, 20), 8.0))
    assert far[:, -1].all() and not far[:, :-1].any()


def test_distance_needs_twenty_rows():
    with pytest.raises(ValueError, match="at least 20 reference rows, got 19"):
        Distance.fit(np.random.default_rng(0).normal(size=(19, 3)), bins=5)


# --- union design and its run length -----------------------------------------------------


@pytest.mark.parametrize(
    ("args", "steps"), [((0.2, 3, 1, 12), 4), ((0.04, 50, 3, 101), 3), ((0.9, 1, 13, 60), 60)]
)
def test_survival_sums_to_the_run_length(args, steps):
    s, ratio = survival(*args)
    assert s[0] == 1.0 and (np.diff(s) <= 1e-15).all() and 0 < ratio < 1
    np.testing.assert_allclose(s[:steps], 1.0, rtol=1e-12)  # no alarm before ``steps`` rises
    assert s[steps] < 1 - 1e-6
    total = s.sum() + s[-1] * ratio / (1 - ratio)  # P(RL > t) summed: E[RL]
    assert total == pytest.approx(run_length(*args), rel=1e-6)
    assert union_run_length([args]) == pytest.approx(run_length(*args), rel=1e-6)
    assert union_run_length([args, args]) < 0.75 * run_length(*args)


def test_survival_of_a_chart_that_cannot_alarm_for_many_steps():
    # up 2, 284 states: 142 rises before the first alarm is possible
    _, ratio = survival(0.9, 2, 25, 284)
    assert ratio < 1
    assert union_run_length([(0.9, 2, 25, 284)]) == pytest.approx(
        run_length(0.9, 2, 25, 284), rel=1e-3
    )


@pytest.mark.parametrize("target", [300.0, 5000.0])
@pytest.mark.parametrize("p", [0.03, 0.2, 0.7])
def test_design_reaches_the_target_or_comes_closest(p, target):
    up, down, states = design(p, 2.0, target, False)
    arl = run_length(p, up, down, states)
    assert arl >= target  # the smallest threshold that reaches it
    assert states == 2 or run_length(p, up, down, states - 1) < target
    near = design(p, 2.0, target, True)
    near_arl = run_length(p, *near)
    assert near_arl >= 0.9 * target
    assert abs(np.log(near_arl / target)) <= abs(np.log(arl / target))


@pytest.mark.parametrize("ert", [200.0, 5000.0])
@pytest.mark.parametrize(("rate", "charts"), [(0.05, 5), (0.1, 5), (0.3, 5), (0.1, 20)])
def test_the_union_of_charts_of_equal_rate_reaches_the_ert(rate, charts, ert):
    chart = BernoulliCusum.for_rates(np.full(charts, rate), ert)
    assert union_run_length(chart_tuples(chart)) == pytest.approx(ert, rel=0.05)
    # each chart alone runs far longer than the union (but not ``charts`` times: they all
    # start at 0, and the short ERT has no time to forget that)
    assert run_length(*chart_tuples(chart)[0]) > 2 * ert


def test_the_union_run_length_matches_a_simulation_of_independent_charts():
    chart = BernoulliCusum.for_rates(np.array([0.05, 0.1, 0.3, 0.5, 0.8]), 200)
    charts = chart_tuples(chart)
    lengths = simulate_union(charts, streams=2000, seed=4)
    assert lengths.mean() == pytest.approx(union_run_length(charts), rel=0.1)
    assert union_run_length(charts) == pytest.approx(200, rel=0.05)


def test_a_loosely_counted_rate_prices_in_more_alarms():
    up, down, states = design(0.1, 2.0, 1000.0, True)
    plug_in = 1 / run_length(0.1, up, down, states)
    assert alarm_rate(0.1, up, down, states, 10_000_000) == pytest.approx(plug_in, rel=1e-3)
    loose = [alarm_rate(0.1, up, down, states, n) for n in (100_000, 2000, 200)]
    assert plug_in < loose[0] < loose[1] < loose[2]
    assert loose[2] > 1.2 * plug_in  # a rate counted on 200 rows: far from exact


def test_charts_for_loosely_counted_rates_run_longer_at_the_plug_in_rates():
    """Rates counted on 200 rows may truly be higher: at the counted rates their charts
    alarm more rarely than those for rates counted on 100 000 rows, the rarest rate (four
    hits on the reference) the most so."""
    rates = np.array([0.02, 0.1, 0.3])
    loose = chart_tuples(BernoulliCusum.for_rates(rates, 1000, counted_on=200))
    tight = chart_tuples(BernoulliCusum.for_rates(rates, 1000, counted_on=100_000))
    longer = [run_length(*a) / run_length(*b) for a, b in zip(loose, tight, strict=True)]
    assert min(longer) > 0.9 and longer[0] == max(longer) and longer[0] > 2
    plug_in = [sum(1 / run_length(*c) for c in charts) for charts in (loose, tight)]
    assert plug_in[0] < 0.8 * plug_in[1]
    # at the plug-in rates the loose charts' union runs past the ERT, by what the
    # posterior average takes back; well-counted rates hit it
    assert union_run_length(loose) > 1.2 * 1000
    assert union_run_length(tight) == pytest.approx(1000, rel=0.05)


@pytest.mark.parametrize("rates", [[], [0.1, 0.0], [1.0]])
def test_rates_outside_the_open_interval_are_refused(rates):
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        BernoulliCusum.for_rates(np.asarray(rates), 500)


# --- run: Page's recursion on a batch ----------------------------------------------------


def test_run_on_a_batch_is_pages_recursion_row_by_row():
    rng = np.random.default_rng(5)
    rates = np.array([0.05, 0.2, 0.5, 0.7])
    chart = BernoulliCusum.for_rates(rates, 20_000)
    odds = 2 * rates / (1 - rates)
    hits = np.vstack([rng.random((200, 4)) < rates, rng.random((600, 4)) < odds / (1 + odds)])
    expected, sums = page_loop(chart, hits)
    assert expected is not None and expected >= 200  # the shift, not a false alarm
    assert chart.run(hits) == expected
    np.testing.assert_array_equal(chart.sums, sums)
    assert chart.t == 800

    # in uneven chunks: the sums carried from one batch start the next
    chart.reset_state()
    found, start = [], 0
    for stop in (1, 137, 201, 650, 800):
        first = chart.run(hits[start:stop])
        if first is not None:
            found.append(start + first)
        start = stop
    assert found[0] == expected
    np.testing.assert_array_equal(chart.sums, sums)
    assert chart.t == 800


def test_an_empty_batch_steps_nothing():
    chart = BernoulliCusum.for_rates(np.array([0.2, 0.4]), 500)
    assert chart.run(np.zeros((0, 2))) is None and chart.t == 0


def test_run_alarms_when_score_and_predict_would():
    rng = np.random.default_rng(6)
    chart = BernoulliCusum.for_rates(np.array([0.1, 0.9]), 200)
    positive = rng.random(600) < np.where(np.arange(600) < 300, 0.1, 0.25)
    hits = np.column_stack([positive, ~positive]).astype(float)
    first = chart.run(hits)
    chart.reset_state()
    steps = [chart.predict(row)["data"]["is_drift"] for row in hits]
    assert first == steps.index(1)
    assert chart.score(hits[0]).shape == (2,)


# --- ChartDetector -----------------------------------------------------------------------


def test_the_chart_detector_reports_per_input_and_alarms_on_the_shifted_one():
    rng = np.random.default_rng(7)
    x_ref = rng.normal(size=(4000, 3))
    detector = ChartDetector(QuantileBins.fit(x_ref, bins=5), ert=20_000)
    assert detector.get_threshold(0).tolist() == [1.0, 1.0, 1.0]
    live = rng.normal(size=(900, 3))
    live[100:, 1] += 1.0  # column 1 shifts after 100 rows
    first = detector.run(live)
    assert first is not None and 100 <= first < 400
    batch_sums, batch_t = detector.charts.sums.copy(), detector.t

    detector.reset_state()
    assert detector.t == 0 and not detector.statistic().any()
    alarms = []
    for i, row in enumerate(live):
        result = detector.predict(row)["data"]
        assert result["test_stat"].shape == (3,) and result["time"] == i + 1
        if result["is_drift"]:
            alarms.append(i)
            if len(alarms) == 1:
                stat = result["test_stat"]
                assert stat.argmax() == 1 and stat[1] > 1 >= max(stat[0], stat[2])
    assert alarms[0] == first
    np.testing.assert_array_equal(detector.charts.sums, batch_sums)
    assert detector.t == batch_t == 900


def test_the_chart_detector_statistic_is_the_fraction_of_the_alarm_level():
    rng = np.random.default_rng(8)
    x_ref = np.column_stack([rng.random(2000) < 0.3, rng.random(2000) < 0.5]).astype(float)
    detector = ChartDetector(Categories.fit(x_ref, ["a", "b"], {"a", "b"}), ert=500)
    charts = detector.charts
    assert len(charts.rates) == 4 and detector.indicators.owner.tolist() == [0, 0, 1, 1]
    detector.run(np.tile([1.0, 0.0], (4, 1)))
    fraction = charts.sums / (charts.states - 1)
    expected = [fraction[:2].max(), fraction[2:].max()]
    np.testing.assert_allclose(detector.statistic(), expected)
    assert detector.statistic()[0] > 0 and detector.statistic()[1] > 0  # a rise of b's complement


def test_a_chart_detector_without_indicators_says_why():
    x_ref = np.column_stack([np.full(1000, 2.0), np.full(1000, 7.0)])
    with pytest.raises(
        ValueError, match="no input has a value or category common enough.*near-constant"
    ):
        ChartDetector(QuantileBins.fit(x_ref, bins=5), ert=500)
    onehot = np.zeros((1000, 2))
    onehot[:, 0] = 1
    with pytest.raises(ValueError, match="kind: near-constant"):
        ChartDetector(Categories.fit(onehot, ["kind", "kind"], set()), ert=500)
