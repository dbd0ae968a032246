"""Bernoulli CUSUM charts for a change in the share of a binary outcome, and the detectors
built on them (the predicted class; with ``kubeloop.drift.indicators``, every input).

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

Both classes follow the slice of alibi-detect's online-detector interface that
``kubeloop.drift.detectors`` and the calibration use (``OnlineSlice``: ``score``,
``get_threshold``, ``t``, ``predict``, ``reset_state``), so they serve where an
alibi-detect detector does, and step a batch of rows at once (``run``).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections import Counter
from fractions import Fraction
from functools import lru_cache

import numpy as np

from kubeloop.drift.indicators import Indicators

MAX_DENOMINATOR = 512  # the reference value k/m: the chart lives on integers in steps of 1/m
ALTERNATIVE_DENOMINATOR = 64  # a second, closer reference value: no finer than this
MAX_STATES = 64 * MAX_DENOMINATOR  # a threshold beyond this is refused (an ERT far too long)
MAX_TARGET = 1e13  # a chart's run length beyond this is past what the solve resolves


def reference_value(p0: float, p1: float) -> float:
    """The CUSUM reference value ``gamma`` for a Bernoulli rate rising from ``p0`` to ``p1``:
    the log-likelihood ratio of a 0 over that of a 1, so that increments are 1 - gamma, -gamma."""
    return math.log((1 - p0) / (1 - p1)) / math.log(p1 * (1 - p0) / (p0 * (1 - p1)))


def reference_fractions(p0: float, p1: float, most: int = 1) -> list[Fraction]:
    """Up to ``most`` values of ``gamma`` as a fraction ``k/m`` strictly between ``p0`` and
    ``p1`` (so the chart drifts down in control and up out of control) and within a tenth
    of that interval of ``gamma``, the smallest denominator first (larger ones give finer
    steps, so a run length closer to a target, but cost more: the alternatives stop at
    ``ALTERNATIVE_DENOMINATOR``); at ``MAX_DENOMINATOR``, any fraction strictly between
    them."""
    gamma, out, limit = reference_value(p0, p1), [], 8
    # an alternative only up to ALTERNATIVE_DENOMINATOR: the chart's states grow with the
    # denominator and a banded solve with its square (a 1/127 step took 3 s to arm)
    while limit <= (ALTERNATIVE_DENOMINATOR if out else MAX_DENOMINATOR) and len(out) < most:
        fraction = Fraction(gamma).limit_denominator(limit)
        close = abs(fraction - gamma) <= 0.1 * (p1 - p0) or limit == MAX_DENOMINATOR
        if p0 < fraction < p1 and close and fraction not in out:
            out.append(fraction)
        limit *= 2
    if not out:
        raise ValueError(
            f"a rate of {p0:.4g} is too extreme for a CUSUM chart (no reference value between "
            f"{p0:.4g} and {p1:.4g} with a denominator up to {MAX_DENOMINATOR})"
        )
    return out


def reference_fraction(p0: float, p1: float) -> Fraction:
    """The admissible ``gamma`` with the smallest denominator (``reference_fractions``)."""
    return reference_fractions(p0, p1)[0]


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
    ones = np.ones(states)
    return float(solve_banded((down, up), bands, ones, overwrite_ab=True, check_finite=False)[0])


def chart_threshold(p: float, up: int, down: int, target: float) -> int:
    """The smallest number of states whose in-control run length is at least ``target``.

    The log of the run length is nearly linear in the states, so the search extrapolates
    and then interpolates on it (a bisection step whenever that stalls): about five
    solves instead of a doubling and a bisection's fifteen."""
    goal = math.log(target)
    lo, lo_v = 1, -math.log(p)  # one state: the first up-step alarms
    if lo_v >= goal:
        return 1
    hi, hi_v, s, width = 0, 0.0, 8, math.inf
    while not hi or hi - lo > 1:
        if hi:
            cut = lo + (goal - lo_v) * (hi - lo) / max(hi_v - lo_v, 1e-12)
            s = (lo + hi) // 2 if hi - lo > width / 2 else int(round(cut))
            s, width = min(max(s, lo + 1), hi - 1), hi - lo
        arl = run_length(p, up, down, s)
        v = math.log(arl) if 0 < arl < math.inf else math.inf  # beyond double precision: long
        if v >= goal:
            hi, hi_v = s, v
        elif s >= MAX_STATES:
            raise ValueError(
                f"a CUSUM at rate {p:.4g} cannot reach an expected run time of {target:.4g} "
                f"within {MAX_STATES} states"
            )
        else:
            slope = (v - lo_v) / (s - lo)
            lo, lo_v = s, v
            if not hi:  # extrapolate, a little past the goal, at most fourfold
                ahead = (goal - v) / slope if slope > 0 else math.inf
                s = int(min(s + 1.1 * ahead + 1, 4 * s, MAX_STATES))
    return hi


class OnlineSlice(ABC):
    """The slice of alibi-detect's online-detector interface that ``kubeloop.drift.detectors``
    and the calibration use, over a subclass's ``run`` (a batch of rows), ``statistic`` and
    ``get_threshold``: a row steps as a batch of one."""

    t: int

    @abstractmethod
    def run(self, x: np.ndarray) -> int | None:
        """Steps with a batch of rows; the index of the first alarming row, or ``None``."""

    @abstractmethod
    def statistic(self) -> np.ndarray:
        """The latest statistic per column."""

    @abstractmethod
    def get_threshold(self, t: int) -> np.ndarray:
        """Per column: a statistic above it alarms."""

    def score(self, x: np.ndarray) -> np.ndarray:
        """Steps with one row; returns the statistic after it."""
        self.run(np.atleast_2d(x))
        return self.statistic()

    def predict(self, x: np.ndarray, return_test_stat: bool = True) -> dict:
        """alibi-detect's result shape: ``{"data": {"is_drift", "test_stat", "threshold"}}``."""
        stat = self.score(x)
        threshold = self.get_threshold(self.t)
        data = {"is_drift": int((stat > threshold).any()), "time": self.t}
        if return_test_stat:
            data.update(test_stat=stat, threshold=threshold)
        return {"data": data}


class BernoulliCusum(OnlineSlice):
    """CUSUM charts on 0/1 columns: each alarms when its column's odds rise ``odds_ratio``-fold.

    ``x_ref`` holds the reference rows (one 0/1 column per chart); each column's rate must
    lie strictly between 0 and 1 (and not so close to either that no reference value
    separates it from the shifted rate). The charts share the ERT: each targets ``ert``
    times the number of charts, so that the first alarm of any comes after about ``ert``
    steps (alarms of different charts are rare, brief excursions that do not coincide).
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
        self._arm(x.mean(axis=0), ert, odds_ratio)

    @classmethod
    def for_rates(
        cls, rates: np.ndarray, ert: float, odds_ratio: float = 2.0, counted_on: int = 0
    ) -> BernoulliCusum:
        """Charts for columns whose in-control rates were counted on ``counted_on`` reference
        rows (``kubeloop.drift.indicators``), their thresholds set so that the union of the
        charts alarms after ``ert`` steps on average over what those rates may truly be."""
        chart = cls.__new__(cls)
        chart._arm(np.asarray(rates, dtype=np.float64), ert, odds_ratio, True, counted_on)
        return chart

    def _arm(
        self,
        rates: np.ndarray,
        ert: float,
        odds_ratio: float,
        union: bool = False,
        counted_on: int = 0,
    ) -> None:
        if len(rates) == 0 or (rates <= 0).any() or (rates >= 1).any():
            raise ValueError(
                f"each column's reference rate must lie strictly between 0 and 1, got {rates.tolist()}"
            )
        if not odds_ratio > 1:
            raise ValueError(f"odds_ratio must exceed 1, got {odds_ratio}")
        self.ert, self.rates = float(ert), rates
        # Each chart targets ``share`` times the ERT, so that the first alarm of any comes
        # after about the ERT: as many times as there are charts if their run lengths were
        # exponential. With ``union``, corrected by the union's exact run length with the
        # charts taken as independent (all start at 0, so a short ERT needs a smaller share),
        # and by the alarm rate averaged over what each rate may truly be, given how many
        # reference rows it was counted on (a rate counted on few rows is known loosely,
        # and a chart tuned to a rate too low alarms far more often than one too high
        # alarms too rarely). A chart and its complement (predicted_class) are far from
        # independent: there each chart simply targets the ERT times the number of charts.
        ratios = [detectable_odds_ratio(float(p), odds_ratio, counted_on) for p in rates]
        share, best = float(len(rates)), None
        for _ in range(4 if union else 1):
            if share * self.ert > MAX_TARGET:
                raise ValueError(
                    f"no chart reaches an ERT of {self.ert:.4g} over {len(rates)} charts whose "
                    f"rates ({np.round(rates, 4).tolist()[:8]}) were counted on only "
                    f"{counted_on} reference rows: take a longer reference or a shorter ERT"
                )
            charts = [(float(p), *design(float(p), r, share * self.ert, union))
                      for p, r in zip(rates, ratios, strict=True)]  # fmt: skip
            if not union:
                best = (0.0, charts)
                break
            runs = union_run_length(charts) if len(rates) > 1 else run_length(*charts[0])
            if counted_on:
                plugged = sum(1 / run_length(*c) for c in charts)
                runs *= plugged / sum(alarm_rate(*c, counted_on) for c in charts)
            miss = abs(math.log(runs / self.ert))
            if best is None or miss < best[0]:
                best = (miss, charts)
            if miss < 0.05:  # the union's run length within 5 % of the ERT
                break
            share *= self.ert / runs
        self.odds_ratios = np.asarray(ratios)
        _, up, down, states = zip(*best[1], strict=True)
        self.up, self.down = np.asarray(up), np.asarray(down)
        self.states = np.asarray(states, dtype=np.int64)
        self.scale = (self.up + self.down).astype(np.float64)
        # a sum above it alarms: the sums move in steps of 1/m, one step below the first
        # alarming value
        self.threshold = (self.states - 1) / self.scale
        self.reset_state()

    def reset_state(self) -> None:
        self.t = 0
        self.sums = np.zeros(len(self.rates), dtype=np.int64)

    def statistic(self) -> np.ndarray:
        """Each chart's sum, in units of one 1."""
        return self.sums / self.scale

    def run(self, hits: np.ndarray) -> int | None:
        """Steps every chart through the rows of ``hits`` (rows x charts, 0/1) at once; returns
        the index of the first row after which some chart alarms (or ``None``).

        Page's recursion ``S_t = max(0, S_{t-1} + X_t)`` is ``C_t - min(-S_0, min_{s<=t} C_s)``
        with ``C`` the cumulative increments: a few array operations per batch."""
        if len(hits) == 0:
            return None
        hits = np.asarray(hits).reshape(len(hits), -1) >= 0.5
        c = np.cumsum(np.where(hits, self.up, -self.down), axis=0)
        floor = np.minimum(np.minimum.accumulate(c, axis=0), -self.sums)
        sums = c - floor
        alarms = np.flatnonzero((sums >= self.states).any(axis=1))
        self.sums = sums[-1]
        self.t += len(hits)
        return int(alarms[0]) if len(alarms) else None

    def get_threshold(self, t: int) -> np.ndarray:  # noqa: ARG002 - the same at every step
        """Per chart: a sum above it alarms."""
        return self.threshold


@lru_cache(maxsize=4096)
def design(p0: float, odds_ratio: float, target: float, closest: bool) -> tuple[int, int, int]:
    """``(up, down, states)`` of the chart for rate ``p0`` rising ``odds_ratio``-fold.

    Without ``closest``: the first admissible reference value and the smallest threshold
    whose in-control run length reaches ``target``. With it: the run length closest to
    ``target`` (in ratio, and at least 0.9 of it) over the admissible reference values
    and the two thresholds around the target; the steps are integers, so the run length
    moves in jumps, and one reference value alone can overshoot the target by half. One
    state short is taken only when nearly there: a rare rate's chart can jump from
    alarming on one hit (run length 1/p) to needing two (far beyond the target).
    """
    odds = odds_ratio * p0 / (1 - p0)
    best: tuple[float, int, int, int] | None = None
    for gamma in reference_fractions(p0, odds / (1 + odds), most=2 if closest else 1):
        up, down = gamma.denominator - gamma.numerator, gamma.numerator
        h = max(chart_threshold(p0, up, down, target), 2)
        for states in {h, max(h - 1, 2)} if closest else {h}:
            arl = run_length(p0, up, down, states)
            miss = abs(math.log(arl / target))
            if (best is None or miss < best[0]) and (arl >= 0.9 * target or states == h):
                best = (miss, up, down, states)
    assert best is not None
    return best[1:]


def detectable_odds_ratio(
    p: float, odds_ratio: float, counted_on: int, margin: float = 4.0
) -> float:
    """``odds_ratio``, or more for a rate counted on few rows. A chart drifts down in
    control only while the true rate stays below its reference value (about midway, in
    log-odds, between the rate and the shifted one), and its run length grows the faster
    with the threshold the further below it stays. The reference value is therefore put
    ``margin`` times as far above the rate as the rate's 90th posterior percentile: a
    shift smaller than what the reference can tell apart is not detectable anyway."""
    if not counted_on:
        return odds_ratio
    from scipy.stats import beta

    hits = p * counted_on
    high = float(beta.ppf(0.9, hits + 0.5, counted_on - hits + 0.5))
    spread = math.log(high / (1 - high)) - math.log(p / (1 - p))
    return max(odds_ratio, round(math.exp(2 * margin * spread), 2))


@lru_cache(maxsize=4096)
def alarm_rate(p: float, up: int, down: int, states: int, counted_on: int) -> float:
    """The in-control alarm rate (1 / run length) of a chart, averaged over the rate's
    posterior given ``p`` counted on ``counted_on`` rows (Jeffreys prior, five nodes at
    equally likely quantiles)."""
    from scipy.stats import beta

    hits = p * counted_on
    nodes = beta.ppf((np.arange(5) + 0.5) / 5, hits + 0.5, counted_on - hits + 0.5)
    return float(np.mean([1 / run_length(float(q), up, down, states) for q in nodes]))


def survival(p: float, up: int, down: int, states: int) -> tuple[np.ndarray, float]:
    """``P(run length > t)`` for ``t = 0, 1, ...`` from a chart at 0 in control, until the
    ratio of successive values settles (the chart's quasi-stationary regime), and that
    ratio: beyond the array, the survival falls geometrically by it."""
    v = np.zeros(states)
    v[0] = 1.0
    out, ratio = [1.0], 0.0
    for t in range(1, 1_000_000):
        moved = np.zeros(states)
        moved[up:] += p * v[: states - up] if states > up else 0.0
        moved[0] += (1 - p) * v[: down + 1].sum()
        moved[1 : max(states - down, 1)] += (1 - p) * v[down + 1 :]
        v = moved
        out.append(float(v.sum()))
        if t % 64 == 0 and out[-2] < 1.0:  # not before any alarm was possible
            now = out[-1] / out[-2] if out[-2] > 0 else 0.0
            if out[-1] < 1e-300 or abs(now - ratio) <= 1e-6 * (1 - now):
                ratio = now
                break
            ratio = now
    return np.asarray(out), ratio


def union_run_length(charts: list[tuple[float, int, int, int]]) -> float:
    """Average run length until the first of several charts ``(p, up, down, states)``
    alarms, all starting at 0, their steps taken as independent: the sum over ``t`` of
    the product of their survivals (exact for the past, geometric beyond)."""
    parts = [(survival(*c), n) for c, n in Counter(charts).items()]
    horizon = max(len(s) for (s, _), _ in parts)
    log_u, log_ratio = np.zeros(horizon), 0.0
    for (s, ratio), n in parts:
        tail = np.log(max(s[-1], 1e-300)) + np.log(max(ratio, 1e-300)) * np.arange(
            1, horizon - len(s) + 1
        )
        log_u += n * np.concatenate([np.log(np.maximum(s, 1e-300)), tail])
        log_ratio += n * np.log(max(ratio, 1e-300))
    u, last = np.exp(log_u), math.exp(log_ratio)
    return float(u.sum() + u[-1] * last / (1 - last)) if last < 1 else math.inf


class ChartDetector(OnlineSlice):
    """A detector of raw inputs: their indicators (fitted on the reference) under CUSUM charts.

    Per input column it reports the largest of its charts' sums as a fraction of that
    chart's alarm level, so the threshold is 1 for every column: above it, an alarm.
    """

    def __init__(self, indicators: Indicators, ert: float, odds_ratio: float = 2.0) -> None:
        if len(indicators.rates) == 0:
            raise ValueError(
                "no input has a value or category common enough to chart: "
                + "; ".join(sorted(set(indicators.dropped.values())))
            )
        self.indicators = indicators
        self.charts = BernoulliCusum.for_rates(
            indicators.rates, ert, odds_ratio, indicators.counted_on
        )
        self.ert = float(ert)
        self._ones = np.ones(indicators.n_inputs)

    @property
    def t(self) -> int:
        return self.charts.t

    def reset_state(self) -> None:
        self.charts.reset_state()

    def _per_input(self, fraction: np.ndarray) -> np.ndarray:
        out = np.zeros(self.indicators.n_inputs)
        np.maximum.at(out, self.indicators.owner, fraction)
        return out

    def run(self, x: np.ndarray) -> int | None:
        """Rows of raw inputs at once: the index of the first row after which some chart
        alarms, or ``None``."""
        return self.charts.run(self.indicators.transform(x))

    def statistic(self) -> np.ndarray:
        """Per input column: its charts' largest sum as a fraction of their alarm levels."""
        return self._per_input(self.charts.sums / (self.charts.states - 1))

    def get_threshold(self, t: int) -> np.ndarray:  # noqa: ARG002 - the same at every step
        return self._ones


class ProfileSplitDetector(OnlineSlice):
    """Per-feature charts that read request features per row and entity profiles per profile.

    A feature-view feature (an account's profile: its age, its 30-day mean, its count of
    yesterday's transactions) is a property of the account at one snapshot, the same on
    every transaction the account makes until the next snapshot. Read per row, a busy
    account's profile counts once per transaction, and the rows of a day share values:
    the share of a day's rows in an interval of such a feature varies from day to day two
    to five times as much as independent rows would, and charts tuned to independent rows
    take a busy day for drift. Read once per profile (the first row of each account and
    snapshot), the observations are independent again.

    ``run`` reads the input columns and, last, a 0/1 column: whether the row's profile is
    new (``kubeloop.drift.monitor`` keeps the profiles seen). Request columns step on every
    row; profile columns only on rows whose profile is new. The ERT is shared: each part
    targets twice it in rows, the profile part in its own steps scaled by
    ``profile_share`` (new profiles per row, counted on the reference), so the first alarm
    of either comes after about ``ert`` rows.
    """

    def __init__(
        self,
        rows: Indicators | None,
        profiles: Indicators | None,
        row_columns: np.ndarray,
        profile_columns: np.ndarray,
        profile_share: float,
        ert: float,
        odds_ratio: float = 2.0,
    ) -> None:
        if rows is None and profiles is None:
            raise ValueError("no request or profile column to chart")
        if not 0.0 < profile_share <= 1.0:
            raise ValueError(f"profile_share must be in (0, 1], got {profile_share}")
        both = rows is not None and profiles is not None
        self.row_charts = (
            None if rows is None else ChartDetector(rows, ert * (2 if both else 1), odds_ratio)
        )
        self.profile_charts = (
            None
            if profiles is None
            else ChartDetector(profiles, ert * (2 if both else 1) * profile_share, odds_ratio)
        )
        self.row_columns = np.asarray(row_columns, dtype=np.int64)
        self.profile_columns = np.asarray(profile_columns, dtype=np.int64)
        self.n_inputs = len(self.row_columns) + len(self.profile_columns)
        self.ert = float(ert)
        self.t = 0
        self._ones = np.ones(self.n_inputs)

    def reset_state(self) -> None:
        self.t = 0
        for part in (self.row_charts, self.profile_charts):
            if part is not None:
                part.reset_state()

    def run(self, x: np.ndarray) -> int | None:
        x = np.asarray(x).reshape(len(x), -1)
        if x.shape[1] != self.n_inputs + 1:
            raise ValueError(
                f"expected {self.n_inputs} inputs and the new-profile flag, got {x.shape[1]} columns"
            )
        first: list[int] = []
        if self.row_charts is not None and len(x):
            alarm = self.row_charts.run(x[:, self.row_columns])
            first += [] if alarm is None else [alarm]
        new = np.flatnonzero(x[:, -1] >= 0.5)
        if self.profile_charts is not None and len(new):
            alarm = self.profile_charts.run(x[np.ix_(new, self.profile_columns)])
            first += [] if alarm is None else [int(new[alarm])]
        self.t += len(x)
        return min(first) if first else None

    def statistic(self) -> np.ndarray:
        """Per input column (in the order ``run`` reads them): its charts' largest sum as a
        fraction of their alarm levels."""
        out = np.zeros(self.n_inputs)
        for part, cols in (
            (self.row_charts, self.row_columns),
            (self.profile_charts, self.profile_columns),
        ):
            if part is not None:
                out[cols] = part.statistic()
        return out

    def get_threshold(self, t: int) -> np.ndarray:  # noqa: ARG002 - the same at every step
        return self._ones
