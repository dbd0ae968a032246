"""The demo's replay: days in order around a midnight onset; callers send request features
and the account, and the profile joined point-in-time is that day's snapshot."""

from __future__ import annotations

import pandas as pd

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.demo.stream import build_stream


def test_the_replay_goes_day_by_day_and_callers_send_only_what_they_know():
    stream = build_stream(
        "covariate", rate=40, onset_seconds=20, duration_seconds=120, seed=4, n_accounts=200
    )
    days = stream.days
    assert days.is_monotonic_increasing and len(days) == len(stream)
    # the onset is at midnight: the first post-onset row opens a day of its own
    assert days.iloc[stream.onset_index] > days.iloc[stream.onset_index - 1]
    # the days nearest the onset, not rows from anywhere on its side
    assert days.nunique() <= 2 + int(len(stream) / (2 * 200) * 1.5)
    sent = {c.name for c in FRAUD_SCHEMA.request_features} | {FRAUD_SCHEMA.entity}
    assert all(set(r) == sent for r in stream.requests)
    view = [c.name for c in FRAUD_SCHEMA.view_features]
    snapshots = stream.snapshots.set_index(["account_id", "event_timestamp"])
    for i in range(0, len(stream), 97):
        request, instance = stream.requests[i], stream.instances[i]
        assert {k: instance[k] for k in request if k in instance} == {
            k: v for k, v in request.items() if k != FRAUD_SCHEMA.entity
        }
        profile = snapshots.loc[(request[FRAUD_SCHEMA.entity], days.iloc[i]), view]
        assert {k: instance[k] for k in view} == profile.to_dict()


def test_within_a_day_the_hours_are_shuffled():
    stream = build_stream(
        "stationary", rate=40, onset_seconds=40, duration_seconds=80, seed=1, n_accounts=400
    )
    hours = pd.Series([r["hour"] for r in stream.requests])
    day = stream.days == stream.days.iloc[0]
    first_day = hours[day.to_numpy()]
    # a day replayed in event order would sweep the hours; shuffled, any tenth of it shows most
    assert first_day.iloc[: len(first_day) // 10].nunique() >= 18
