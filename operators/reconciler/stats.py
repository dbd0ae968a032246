"""Sequential statistics for canary analysis: valid at every look, so polling often is safe.

A canary is judged again on every poll. A fixed-sample test repeated at each poll
inflates its error rate without bound; these checks use *time-uniform* bounds instead,
so the chance that any look ever gives a wrong verdict stays below ``alpha``:

* rates (server errors, live misclassifications): Gaussian-mixture asymptotic
  confidence sequences (Waudby-Smith, Arnold, Wu, Wang, Ramdas, "Time-uniform central
  limit theory and asymptotic confidence sequences", 2024). Two samples from one
  randomized split (a canary step: the router sends each request to the canary by a
  hash of its key, blind to the outcome, which acts as a random draw with the step's
  weight) get one sequence on canary-minus-stable itself, the form for randomized
  experiments: every observation (a request, a labelled prediction) is one draw of an
  inverse-propensity-weighted difference whose mean is the difference of the rates
  (:func:`rate_difference`). Labels pooled over steps of different weights are a
  sequence of such splits: each observation's propensity is its step's weight, the mean
  of ψ is the same difference in every step, and the sequence runs over all of them with
  the steps' variances averaged (the martingale form of the same theorem). Any other two
  samples (a promoted version against what its predecessor did before) get one sequence
  per version, joined by a union bound;
* predicted-score histograms: the multinomial L1 concentration bound (Weissman et al.
  2003) made time-uniform by a union bound over sample sizes (δ/n(n+1)), giving a bound
  on the total-variation distance between the two versions' score distributions;
* latency p99: a tolerance check, judged only past the minimum-sample gate.

Each check answers pass, fail or inconclusive; inconclusive means "hold". The rate checks
are sequential tests with an indifference zone: *fail* once the canary is worse than
stable with confidence ``1 - alpha``, *pass* once it is at most ``tolerance`` worse. A
canary ``tolerance`` worse is rejected once the bound is narrower than ``tolerance``; an
equal one passes then; either way a verdict comes once it is narrower than half of it.
:func:`seconds_to_detect` turns that into the time a step needs at given traffic.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, astuple, dataclass
from enum import StrEnum
from statistics import NormalDist


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    INCONCLUSIVE = "inconclusive"
    SKIPPED = "skipped"


@dataclass(frozen=True)
class CheckResult:
    check: str
    verdict: Verdict
    estimate: float | None = None
    lower: float | None = None
    upper: float | None = None
    threshold: float | None = None
    detail: str = ""

    def evidence(self) -> dict[str, object]:
        out = {k: v for k, v in asdict(self).items() if v is not None and v != ""}
        out["verdict"] = str(self.verdict)
        for key in ("estimate", "lower", "upper", "threshold"):
            if key in out:
                out[key] = round(float(out[key]), 6)
        return out


def asymptotic_cs_halfwidth(n: int, variance: float, alpha: float, n_opt: int) -> float:
    """Half-width of a two-sided asymptotic confidence sequence for a mean after ``n`` samples.

    ``n_opt`` is the sample size where the sequence is tightest (the minimum-sample gate).
    """
    if n <= 0:
        return math.inf
    log_a = -2.0 * math.log(alpha)
    rho2 = (log_a + math.log(log_a + 1.0)) / max(n_opt, 1)
    t = n * rho2 + 1.0
    return math.sqrt(variance) * math.sqrt(
        2.0 * t / (n * n * rho2) * math.log(math.sqrt(t) / alpha)
    )


def _smoothed_rate(k: float, n: float) -> float:
    # Smoothed so that zero observed errors does not claim zero variance.
    return (k + 0.5) / (n + 1.0)


def _bernoulli_variance(k: float, n: float) -> float:
    p = _smoothed_rate(k, n)
    return p * (1.0 - p)


def difference_variance(canary_rate: float, stable_rate: float, canary_share: float) -> float:
    """Variance of one observation of ψ = Y·(A/π − (1−A)/(1−π)) (Y the event, A whether
    the canary answered, π = ``canary_share``): E[ψ²] − E[ψ]², with E[Y²] = the rate."""
    diff = canary_rate - stable_rate
    return max(canary_rate / canary_share + stable_rate / (1.0 - canary_share) - diff * diff, 1e-12)


def _total_opt(n_opt: int, canary_share: float) -> int:
    """The total sample size at which the smaller version reaches ``n_opt``."""
    return max(round(n_opt / min(canary_share, 1.0 - canary_share)), 1)


@dataclass(frozen=True)
class Split:
    """One randomized split's counts: the events and samples of each version while the
    router's weight stayed constant (one canary step)."""

    canary_events: float
    canary_n: float
    stable_events: float
    stable_n: float

    def less(self, earlier: Sequence[Split]) -> Split:
        """These counts less ``earlier`` splits' (the current step's part of counts pooled
        since an earlier step), each floored at zero: Prometheus' increase() extrapolates,
        so a later pooled count can come out a fraction below the sum of earlier ones."""
        columns = zip(astuple(self), *(astuple(e) for e in earlier), strict=True)
        events_c, n_c, events_s, n_s = (max(own - sum(past), 0.0) for own, *past in columns)
        return Split(min(events_c, n_c), n_c, min(events_s, n_s), n_s)


def rate_difference(splits: Sequence[Split], *, alpha: float, n_opt: int) -> tuple[float, float]:
    """Canary-minus-stable event rate and the half-width of its confidence sequence.

    One sequence on the inverse-propensity-weighted difference ψ (see
    :func:`difference_variance`) of every observation of every split, π the canary's
    observed share in its own split. Within a split the mean of ψ is the difference of
    the two rates; over splits it is their sample-weighted mean, and ψ's variance the
    sample-weighted mean of the splits' variances, each from the versions' rates over all
    splits (one rate per version: neither's depends on the weight) at the split's share.
    A split lacking one version's samples holds no difference and is left out.

    For one split the width is √(v_c/n_c + v_s/n_s) times the sequence's factor, where a
    union of one sequence per version at α/2 each gives √(v_c/n_c) + √(v_s/n_s) times a
    larger factor: at a 25 % step about half the samples reach the same width. ``n_opt``
    (per version) becomes the total at which the smaller version reaches it.
    """
    used = [s for s in splits if s.canary_n > 0 and s.stable_n > 0]
    if not used:
        return math.nan, math.inf
    events_c, n_c = sum(s.canary_events for s in used), sum(s.canary_n for s in used)
    events_s, n_s = sum(s.stable_events for s in used), sum(s.stable_n for s in used)
    rate_c, rate_s = _smoothed_rate(events_c, n_c), _smoothed_rate(events_s, n_s)
    n = n_c + n_s
    diff = variance = 0.0
    for s in used:
        size = s.canary_n + s.stable_n
        diff += size * (s.canary_events / s.canary_n - s.stable_events / s.stable_n) / n
        variance += size * difference_variance(rate_c, rate_s, s.canary_n / size) / n
    return diff, asymptotic_cs_halfwidth(int(n), variance, alpha, _total_opt(n_opt, n_c / n))


def rate_increase(
    check: str,
    canary_events: float,
    canary_n: float,
    stable_events: float,
    stable_n: float,
    *,
    tolerance: float,
    alpha: float,
    n_opt: int,
    randomized: bool = False,
    earlier: Sequence[Split] = (),
) -> CheckResult:
    """Is the canary's event rate (errors, misclassifications) at most ``tolerance`` above stable's?

    ``randomized``: the samples come from randomized splits at constant weights: the
    counts less ``earlier`` splits (earlier canary steps, whose counts they include) are
    the current step's, and one sequence bounds the difference over all of them
    (:func:`rate_difference`); otherwise a sequence per version, joined by a union bound
    (valid for any two independent samples).

    Fails when the whole confidence interval of canary-minus-stable lies above zero (the
    canary is worse), passes when it lies at or below the tolerance, and is inconclusive
    otherwise.
    """
    if min(canary_events, canary_n, stable_events, stable_n) < 0:
        raise ValueError(f"{check}: counts must be non-negative")
    if canary_events > canary_n or stable_events > stable_n:
        raise ValueError(f"{check}: more events than samples")
    if canary_n == 0 or stable_n == 0:
        return CheckResult(check, Verdict.INCONCLUSIVE, threshold=tolerance, detail="no samples")
    if randomized:
        total = Split(canary_events, canary_n, stable_events, stable_n)
        splits = [*earlier, total.less(earlier)]
        diff, width = rate_difference(splits, alpha=alpha, n_opt=n_opt)
        if math.isnan(diff):
            return CheckResult(
                check, Verdict.INCONCLUSIVE, threshold=tolerance,
                detail="no step holds samples of both versions",
            )  # fmt: skip
    else:
        diff = canary_events / canary_n - stable_events / stable_n
        width = sum(
            asymptotic_cs_halfwidth(int(n), _bernoulli_variance(k, n), alpha / 2, n_opt)
            for k, n in ((canary_events, canary_n), (stable_events, stable_n))
        )
    lower, upper = diff - width, diff + width
    if lower > 0:
        verdict = Verdict.FAIL
    elif upper <= tolerance:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    return CheckResult(check, verdict, diff, lower, upper, tolerance)


def seconds_to_detect(
    *,
    drop: float,
    stable_rate: float,
    canary_per_second: float,
    stable_per_second: float,
    alpha: float,
    power: float,
    n_opt: int,
    horizon: float = 7 * 86400.0,
    randomized: bool = False,
) -> float | None:
    """Seconds until :func:`rate_increase` (with ``randomized``) fails, with probability
    ``power``, a canary whose true event rate is ``drop`` above stable's, observing
    ``canary_per_second`` and ``stable_per_second`` samples (labels) per second; ``None``
    beyond ``horizon`` or with no samples. Normal approximation of the estimate around its
    true value."""
    if canary_per_second <= 0 or stable_per_second <= 0 or drop <= 0:
        return None
    p_s = min(max(stable_rate, 1e-4), 1.0 - 1e-4)
    p_c = min(p_s + drop, 1.0 - 1e-4)
    var_c, var_s = p_c * (1.0 - p_c), p_s * (1.0 - p_s)
    share = canary_per_second / (canary_per_second + stable_per_second)
    variance = difference_variance(p_c, p_s, share)
    total_opt = _total_opt(n_opt, share)
    z = NormalDist().inv_cdf(power)

    def detected(t: float) -> bool:
        n_c, n_s = canary_per_second * t, stable_per_second * t
        if n_c < max(n_opt, 1) or n_s < max(n_opt, 1):  # below the minimum-sample gate
            return False
        if randomized:
            width = asymptotic_cs_halfwidth(int(n_c + n_s), variance, alpha, total_opt)
        else:
            width = asymptotic_cs_halfwidth(int(n_c), var_c, alpha / 2, n_opt)
            width += asymptotic_cs_halfwidth(int(n_s), var_s, alpha / 2, n_opt)
        return drop - width >= z * math.sqrt(var_c / n_c + var_s / n_s)

    if not detected(horizon):
        return None
    lo, hi = 0.0, horizon
    while hi - lo > max(0.01 * hi, 0.1):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if detected(mid) else (mid, hi)
    return hi


def bucket_counts(cumulative: Mapping[float, float]) -> list[float]:
    """Prometheus histogram buckets (``le`` → cumulative count) to per-bin counts."""
    edges = sorted(cumulative)
    counts, previous = [], 0.0
    for edge in edges:
        value = cumulative[edge]
        if value < previous - 1e-9:
            raise ValueError(f"histogram buckets must be cumulative; le={edge} drops to {value}")
        counts.append(max(value - previous, 0.0))
        previous = value
    return counts


def _coarsen(a: Sequence[float], b: Sequence[float], min_share: float = 0.05) -> tuple[list, list]:
    """Merges adjacent bins until each holds at least ``min_share`` of the pooled mass
    (quantile bins of the pooled distribution, at the histogram's resolution).

    Fewer bins tighten the multinomial bound; merging only loses resolution, never validity.
    A remainder below ``min_share`` joins the last bin, unless that would leave one bin:
    with one bin the distance is always 0, a check that cannot fail.
    """
    total = sum(a) + sum(b)
    out_a, out_b, acc_a, acc_b = [], [], 0.0, 0.0
    for x, y in zip(a, b, strict=True):
        acc_a, acc_b = acc_a + x, acc_b + y
        if acc_a + acc_b >= min_share * total:
            out_a.append(acc_a)
            out_b.append(acc_b)
            acc_a = acc_b = 0.0
    if acc_a + acc_b > 0:
        if len(out_a) >= 2:
            out_a[-1] += acc_a
            out_b[-1] += acc_b
        else:
            out_a.append(acc_a)
            out_b.append(acc_b)
    return out_a, out_b


def l1_halfwidth(n: float, bins: int, alpha: float) -> float:
    """Time-uniform bound on ‖p̂ − p‖₁ for a multinomial with ``bins`` cells after ``n`` draws."""
    if n <= 0:
        return math.inf
    delta = alpha / (n * (n + 1.0))
    cells = math.log(max(2.0**bins - 2.0, 1.0))
    return math.sqrt(2.0 / n * (cells + math.log(1.0 / delta)))


def score_shift(
    canary_cumulative: Mapping[float, float],
    stable_cumulative: Mapping[float, float],
    *,
    tolerance: float,
    alpha: float,
) -> CheckResult:
    """Total-variation distance between the two versions' predicted-score histograms."""
    if set(canary_cumulative) != set(stable_cumulative):
        raise ValueError("score histograms must share bucket boundaries")
    a, b = _coarsen(bucket_counts(canary_cumulative), bucket_counts(stable_cumulative))
    na, nb = sum(a), sum(b)
    if na == 0 or nb == 0:
        return CheckResult(
            "score_distribution", Verdict.INCONCLUSIVE, threshold=tolerance, detail="no samples"
        )
    if len(a) < 2:
        return CheckResult(
            "score_distribution",
            Verdict.INCONCLUSIVE,
            threshold=tolerance,
            detail="every score in one histogram bucket: the histogram cannot show a shift",
        )
    tv = 0.5 * sum(abs(x / na - y / nb) for x, y in zip(a, b, strict=True))
    width = 0.5 * (l1_halfwidth(na, len(a), alpha / 2) + l1_halfwidth(nb, len(b), alpha / 2))
    lower, upper = max(tv - width, 0.0), min(tv + width, 1.0)
    if lower > tolerance:
        verdict = Verdict.FAIL
    elif upper <= tolerance:
        verdict = Verdict.PASS
    else:
        verdict = Verdict.INCONCLUSIVE
    return CheckResult("score_distribution", verdict, tv, lower, upper, tolerance, f"{len(a)} bins")


def latency_p99(
    canary_p99: float | None, stable_p99: float | None, *, tolerance: float, slack: float
) -> CheckResult:
    """Canary p99 must stay within ``stable × (1 + tolerance) + slack`` seconds."""
    if canary_p99 is None or stable_p99 is None or math.isnan(canary_p99) or math.isnan(stable_p99):
        return CheckResult("latency_p99", Verdict.INCONCLUSIVE, detail="no latency data")
    limit = stable_p99 * (1.0 + tolerance) + slack
    verdict = Verdict.PASS if canary_p99 <= limit else Verdict.FAIL
    return CheckResult(
        "latency_p99", verdict, canary_p99, threshold=limit, detail=f"stable p99 {stable_p99:.4f}s"
    )
