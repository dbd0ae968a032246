"""Raw detector inputs as 0/1 indicator columns with known reference rates (pure numpy).

The CUSUM detectors (``kubeloop.drift.cusum.ChartDetector``) watch the rate of each
indicator; their thresholds depend on nothing but those rates, so they are exact and
cost milliseconds. Each indicator belongs to one input column (its ``owner``), which is
how a chart's alarm is reported per feature.

- ``QuantileBins`` (numbers: features, scores): each column cut at its reference
  quantiles into up to ``bins`` intervals, one indicator per interval. Ties (integer
  values, scores saturated at 0 or 1) only make the intervals uneven: each interval's
  rate is counted on the reference, never assumed. A shift of location, scale or shape
  moves mass between intervals, and some interval's rate rises.
- ``Categories`` (0/1 features and one-hot categories): the columns as they are; a 0/1
  feature also gets its complement, so either direction shows as a rise. Categories
  rarer than ``min_rate`` are pooled per feature into one "other" indicator.
- ``Distance`` (all inputs at once): Hotelling's T² distance of a row from the
  reference mean, cut into quantile bins like a number. The mean and covariance are
  fitted on one half of the reference and the bin rates counted on the other, so the
  rates are those of rows the fit never saw, as live rows are.

An indicator whose rate is below ``min_rate`` or above ``1 - min_rate`` is not charted: a
rate that extreme needs a long reference to be known and many states to be charted. A
column left without indicators is named in ``dropped``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MIN_RATE = 0.005


@dataclass
class Indicators:
    """What every kind has: the reference rate and input column of each indicator."""

    rates: np.ndarray  # per indicator
    owner: np.ndarray  # per indicator: the input column it belongs to
    n_inputs: int
    counted_on: int  # reference rows the rates were counted on: how well they are known
    dropped: dict[int, str] = field(default_factory=dict)  # input column -> why not charted

    def transform(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError


def _usable(rates: np.ndarray, min_rate: float) -> np.ndarray:
    return (rates >= min_rate) & (rates <= 1 - min_rate)


@dataclass
class QuantileBins(Indicators):
    edges: list[np.ndarray] = field(default_factory=list)  # per input column: upper bin edges
    keep: list[np.ndarray] = field(default_factory=list)  # per input column: charted bins

    @classmethod
    def fit(cls, x_ref: np.ndarray, bins: int, min_rate: float = MIN_RATE) -> QuantileBins:
        x = _matrix(x_ref)
        rates, owner, edges, keep, dropped = [], [], [], [], {}
        for col in range(x.shape[1]):
            values = x[:, col]
            e, r = _merged_edges(values, bins, min_rate)
            ok = _usable(r, min_rate) if len(e) else np.zeros(1, dtype=bool)
            edges.append(e)
            keep.append(np.flatnonzero(ok))
            if not ok.any():
                dropped[col] = "near-constant: no interval of its values between the rate limits"
            rates += r[ok].tolist()
            owner += [col] * int(ok.sum())
        return cls(np.asarray(rates), np.asarray(owner, dtype=np.int64), x.shape[1], len(x),
                   dropped, edges, keep)  # fmt: skip

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = _matrix(x)
        blocks = []
        for col, (e, k) in enumerate(zip(self.edges, self.keep, strict=True)):
            if len(k):
                b = np.searchsorted(e, x[:, col], side="left")
                blocks.append(b[:, None] == k[None, :])
        return _concat(blocks, len(x))


def _merged_edges(values: np.ndarray, bins: int, min_rate: float) -> tuple[np.ndarray, np.ndarray]:
    """Upper edges of up to ``bins`` intervals at the reference quantiles, and each
    interval's rate; an interval rarer than ``min_rate`` (ties crowd the others) is merged
    into its neighbour."""
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return np.zeros(0), np.ones(1)
    edges = np.unique(np.quantile(finite, np.arange(1, bins) / bins, method="inverted_cdf"))
    edges = edges[edges < finite.max()]  # the top interval is what lies above the last edge
    while True:
        counts = np.bincount(np.searchsorted(edges, values, side="left"), minlength=len(edges) + 1)
        small = np.flatnonzero(counts / len(values) < min_rate)
        if not len(edges) or not len(small):
            return edges, counts / len(values)
        i = small[np.argmin(counts[small])]
        # drop the edge between the small interval and its smaller neighbour
        left = counts[i - 1] if i > 0 else np.inf
        right = counts[i + 1] if i < len(edges) else np.inf
        edges = np.delete(edges, i - 1 if left <= right else i)


@dataclass
class Categories(Indicators):
    columns: list[np.ndarray] = field(default_factory=list)  # per indicator: input columns ORed
    complement: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))

    @classmethod
    def fit(
        cls, x_ref: np.ndarray, groups: list[str], binary: set[str], min_rate: float = MIN_RATE
    ) -> Categories:
        """``groups``: the feature of each 0/1 input column (a categorical feature owns one
        column per category; a name in ``binary`` is a 0/1 feature of its own)."""
        x = _matrix(x_ref) >= 0.5
        rate = x.mean(axis=0) if len(x) else np.zeros(x.shape[1])
        rates, owner, columns, complement, dropped = [], [], [], [], {}

        def add(cols: list[int], inverse: bool = False) -> None:
            r = (x[:, cols].any(axis=1)).mean() if len(x) else 0.0
            r = 1 - r if inverse else r
            if _usable(np.asarray([r]), min_rate)[0]:
                rates.append(float(r))
                owner.append(cols[0])
                columns.append(np.asarray(cols))
                complement.append(inverse)

        for feature in dict.fromkeys(groups):
            cols = [i for i, g in enumerate(groups) if g == feature]
            before = len(rates)
            if feature in binary:
                for c in cols:
                    add([c])
                    add([c], inverse=True)
            else:
                common = [c for c in cols if rate[c] >= min_rate]
                rare = [c for c in cols if rate[c] < min_rate]
                for c in common:
                    add([c])
                if rare:
                    add(rare)  # the rare categories pooled: "other"
            if len(rates) == before:
                for c in cols:
                    dropped[c] = f"{feature}: near-constant (no category between the rate limits)"
        return cls(np.asarray(rates), np.asarray(owner, dtype=np.int64), x.shape[1], len(x),
                   dropped, columns, np.asarray(complement, dtype=bool))  # fmt: skip

    def transform(self, x: np.ndarray) -> np.ndarray:
        x = _matrix(x) >= 0.5
        hits = _concat([x[:, cols].any(axis=1, keepdims=True) for cols in self.columns], len(x))
        return hits ^ self.complement[None, :]


@dataclass
class Distance(Indicators):
    mean: np.ndarray = field(default_factory=lambda: np.zeros(0))
    whiten: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    bins: QuantileBins | None = None

    RIDGE = 1e-3  # relative to the mean variance: one-hot columns make the covariance singular

    @classmethod
    def fit(cls, x_ref: np.ndarray, bins: int, min_rate: float = MIN_RATE) -> Distance:
        x = _matrix(x_ref)
        if len(x) < 20:
            raise ValueError(f"the distance needs at least 20 reference rows, got {len(x)}")
        fit_half, rate_half = x[0::2], x[1::2]
        mean = fit_half.mean(axis=0)
        cov = np.atleast_2d(np.cov(fit_half, rowvar=False))
        cov += np.eye(len(cov)) * cls.RIDGE * max(float(np.trace(cov)) / len(cov), 1e-12)
        whiten = np.linalg.cholesky(np.linalg.inv(cov))
        d = _distance(rate_half, mean, whiten)
        q = QuantileBins.fit(d[:, None], bins, min_rate)
        dropped = {0: q.dropped[0]} if q.dropped else {}
        return cls(q.rates, np.zeros(len(q.rates), dtype=np.int64), 1, len(rate_half), dropped,
                   mean, whiten, q)  # fmt: skip

    def transform(self, x: np.ndarray) -> np.ndarray:
        assert self.bins is not None
        return self.bins.transform(_distance(_matrix(x), self.mean, self.whiten)[:, None])


def _distance(x: np.ndarray, mean: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """T² per row, rounded to 9 decimals: rows with equal inputs (an atom of the distance,
    often a bin edge) must get equal distances whether they come one by one or in a batch,
    and matrix products of different shapes round differently in the last bit."""
    z = (x - mean) @ whiten
    return np.round(np.einsum("ij,ij->i", z, z), 9)


def _matrix(x: np.ndarray) -> np.ndarray:
    """Rows x columns; a 1-D array is one row (what ``score`` steps with)."""
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        return x[None, :]
    return x if x.ndim == 2 else x.reshape(len(x), -1)


def _concat(blocks: list[np.ndarray], n: int) -> np.ndarray:
    return np.concatenate(blocks, axis=1) if blocks else np.zeros((n, 0), dtype=bool)
