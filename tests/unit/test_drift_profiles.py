"""Feature-view features read once per profile: the memory of profiles seen, the reference's
first rows, and the per-feature charts that step profile columns on new profiles only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kubeloop.drift.cusum import ChartDetector, ProfileSplitDetector
from kubeloop.drift.indicators import QuantileBins
from kubeloop.drift.profiles import ProfileMemory, first_rows, profile_ids
from kubeloop.drift.reference import FeatureSpec

SPEC = FeatureSpec(
    numeric=["amount", "count_24h"], categorical={}, label="y",
    keys={"account"}, profile=["count_24h"], entity="account",
)  # fmt: skip


def test_a_profile_is_new_once_per_entity_and_snapshot():
    memory = ProfileMemory(SPEC)
    rows = [
        {"account": 1, "amount": 5.0, "count_24h": 3.0},
        {"account": 1, "amount": 9.0, "count_24h": 3.0},  # same account, same snapshot
        {"account": 2, "amount": 5.0, "count_24h": 3.0},  # another account, same values
        {"account": 1, "amount": 5.0, "count_24h": 4.0},  # the account's next snapshot
    ]
    assert memory.new(rows).tolist() == [True, False, True, True]
    assert memory.new(rows[:1]).tolist() == [False]  # remembered across batches
    memory.clear()
    assert memory.new(rows[:1]).tolist() == [True]


def test_the_oldest_profiles_are_forgotten_first():
    memory = ProfileMemory(SPEC, kept=2)
    first, second, third = ({"account": a, "amount": 1.0, "count_24h": 0.0} for a in (1, 2, 3))
    assert memory.new([first, second]).tolist() == [True, True]
    assert memory.new([first]).tolist() == [False]  # seen again: now the latest
    assert memory.new([third]).tolist() == [True]  # forgets the second, the oldest
    assert memory.new([first, second]).tolist() == [False, True]


def test_a_schema_without_profile_features_has_no_memory():
    with pytest.raises(ValueError, match="no feature-view features"):
        ProfileMemory(FeatureSpec(numeric=["amount"], categorical={}, label="y"))


def test_first_rows_key_on_the_entity_when_the_frame_has_it():
    frame = pd.DataFrame({"account": [1, 1, 2, 1], "count_24h": [3.0, 3.0, 3.0, 4.0]})
    assert first_rows(frame, SPEC).tolist() == [True, False, True, True]
    ids = profile_ids(frame, SPEC)
    assert ids[0] == ids[1] and len(set(ids)) == 3
    # without the key (a sample that kept only features): the values alone
    assert first_rows(frame.drop(columns="account"), SPEC).tolist() == [True, False, False, True]


def split_detector(ert: float = 2000.0, share: float = 0.5) -> ProfileSplitDetector:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(4000, 2))
    return ProfileSplitDetector(
        QuantileBins.fit(reference[:, :1], 5), QuantileBins.fit(reference[:, 1:], 5),
        np.array([0]), np.array([1]), share, ert,
    )  # fmt: skip


def with_flag(x: np.ndarray, new: np.ndarray) -> np.ndarray:
    return np.column_stack([x, new]).astype(np.float32)


def test_profile_columns_step_on_new_profiles_only():
    rng = np.random.default_rng(1)
    x = np.column_stack([rng.normal(size=3000), np.full(3000, 5.0)])  # the profile moved
    repeated = split_detector()
    assert repeated.run(with_flag(x, np.arange(3000) == 0)) is None  # one profile, read once
    assert repeated.statistic()[0] < 1
    fresh = split_detector()
    alarm = fresh.run(with_flag(x, np.ones(3000)))  # 3,000 profiles, all in the top interval
    assert alarm is not None and alarm < 100
    assert fresh.statistic()[1] >= 1 and fresh.statistic()[0] < 1  # named: the profile column


def test_request_columns_step_on_every_row_and_alarms_map_back_to_rows():
    rng = np.random.default_rng(2)
    x = np.column_stack([np.full(600, 5.0), rng.normal(size=600)])  # the request feature moved
    det = split_detector()
    alarm = det.run(with_flag(x, np.zeros(600)))
    assert alarm is not None and det.statistic()[0] >= 1
    # a profile alarm is reported at the row that brought the alarming profile
    det = split_detector()
    x = np.column_stack([rng.normal(size=900), np.full(900, 5.0)])
    new = np.zeros(900)
    new[::3] = 1
    alarm = det.run(with_flag(x, new))
    assert alarm is not None and new[alarm] == 1 and det.t == 900


def test_bad_shapes_and_settings_are_named():
    with pytest.raises(ValueError, match="new-profile flag"):
        split_detector().run(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="profile_share"):
        split_detector(share=0.0)
    with pytest.raises(ValueError, match="no request or profile column"):
        ProfileSplitDetector(None, None, np.array([]), np.array([]), 0.5, 100.0)


def clustered_days(days: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A day's rows per account as the example data make them: an account with rate ``lam``
    sends Poisson(lam) rows a day, each carrying its profile, its count of the day before.
    Returns the profile value per row and whether the row is its profile's first."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(2.0, 1.0, 800)
    counts = rng.poisson(lam, (days + 1, len(lam)))
    values, first = [], []
    for d in range(1, days + 1):
        rows = np.repeat(counts[d - 1], counts[d]).astype(float)  # each row: yesterday's count
        is_first = np.zeros(len(rows), dtype=bool)
        is_first[np.cumsum(counts[d])[counts[d] > 0] - counts[d][counts[d] > 0]] = True
        order = rng.permutation(len(rows))  # the day's rows come in any order
        values.append(rows[order] + rng.uniform(-0.5, 0.5, len(rows)))  # jittered, as cvm
        first.append(is_first[order])
    return np.concatenate(values), np.concatenate(first)


def mean_run_length(det, x: np.ndarray) -> tuple[float, int]:
    """Alarm, reset, go on: the mean of the run lengths over ``x`` (a run cut off by its end
    is left out), and how many there were."""
    lengths, start, run, chunk = [], 0, 0, 2000
    det.reset_state()
    while start < len(x):
        alarm = det.run(x[start : start + chunk])
        if alarm is None:
            run += len(x[start : start + chunk])
            start += chunk
            continue
        lengths.append(run + alarm + 1)
        det.reset_state()
        start, run = start + alarm + 1, 0
    return (float(np.mean(lengths)) if lengths else float("inf")), len(lengths)


def test_busy_days_of_a_profile_feature_alarm_per_row_but_not_per_profile():
    """Rows of one account and day share its profile, so a day's share of rows in an interval
    varies far more than independent rows would: charts reading every row alarm at less than
    half their ERT; read once per profile, the run length is about the ERT (400 days of 800
    accounts, about 640,000 rows)."""
    ert = 10_000.0
    ref_values, ref_first = clustered_days(20, seed=10)
    values, first = clustered_days(400, seed=11)
    per_row = ChartDetector(QuantileBins.fit(ref_values[:, None], 5), ert=ert)
    row_mean, row_runs = mean_run_length(per_row, values[:, None])
    split = ProfileSplitDetector(
        None, QuantileBins.fit(ref_values[ref_first][:, None], 5), np.array([], dtype=int),
        np.array([0]), float(ref_first.mean()), ert,
    )  # fmt: skip
    split_mean, split_runs = mean_run_length(split, with_flag(values[:, None], first))
    # measured: 0.40 x ERT over 164 runs per row; 0.81 x ERT over 81 runs per profile (the
    # 95 % interval of a mean of 81 about geometric run lengths is +-22 %)
    assert row_runs >= 100 and row_mean < 0.55 * ert, (row_mean, row_runs)
    assert split_runs >= 60 and 0.65 * ert <= split_mean <= 1.5 * ert, (split_mean, split_runs)
