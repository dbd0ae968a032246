"""Real Feast (local provider, SQLite online store, file offline store): the training
set is point-in-time correct and online lookups return the latest snapshot.

Snapshot values encode their own timestamps, so any value from after an event's time
is visible as such.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from kubeloop.features.online import OnlineFeatures
from kubeloop.features.store import prepare_feature_store, training_frame

pytestmark = pytest.mark.slow

T0 = pd.Timestamp("2026-02-01", tz="UTC")
ACCOUNTS = [7, 8, 9]


def _hours(ts: pd.Series | pd.Timestamp):
    return (ts - T0) / pd.Timedelta(hours=1)


@pytest.fixture(scope="module")
def snapshots() -> pd.DataFrame:
    # Every 6 hours for 3 days; account 9's snapshots stop after the first day.
    times = pd.date_range(T0, periods=13, freq="6h", tz="UTC")
    rows = [
        {"account_id": a, "event_timestamp": t}
        for a in ACCOUNTS
        for t in times
        if not (a == 9 and t > T0 + pd.Timedelta(days=1))
    ]
    snap = pd.DataFrame(rows)
    snap["event_timestamp"] = snap["event_timestamp"].astype("datetime64[us, UTC]")
    snap["account_age_days"] = _hours(snap["event_timestamp"])  # encodes the snapshot time
    snap["avg_amount_30d"] = snap["account_id"].astype(float)
    snap["txn_count_24h"] = np.arange(len(snap), dtype=float)
    snap["created"] = snap["event_timestamp"]
    return snap


@pytest.fixture(scope="module")
def store(snapshots, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("feast")
    return prepare_feature_store(workdir, snapshots), workdir


def _events() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    offsets = rng.uniform(0, 3 * 24 * 3600, 120)
    events = pd.DataFrame(
        {
            "account_id": rng.choice(ACCOUNTS, 120),
            "event_timestamp": T0 + pd.to_timedelta(offsets, unit="s"),
            "transaction_id": [f"t{i}" for i in range(120)],
        }
    )
    exact = pd.DataFrame(
        {
            "account_id": [7],
            "event_timestamp": [T0 + pd.Timedelta(hours=30)],
            "transaction_id": ["exact"],
        }
    )
    before_any = pd.DataFrame(
        {
            "account_id": [8],
            "event_timestamp": [T0 - pd.Timedelta(minutes=1)],
            "transaction_id": ["early"],
        }
    )
    events = pd.concat([events, exact, before_any], ignore_index=True)
    events["event_timestamp"] = events["event_timestamp"].astype("datetime64[us, UTC]")
    return events


def test_training_set_never_sees_the_future(store, snapshots):
    fs, _ = store
    events = _events()
    joined = training_frame(fs, events, "fraud_model_v1")
    assert list(joined["transaction_id"]) == list(events["transaction_id"])  # order kept
    has = joined["account_age_days"].notna()
    snapshot_time = T0 + pd.to_timedelta(joined.loc[has, "account_age_days"], unit="h")
    # The heart of it: no feature value from after the event's own time.
    assert (snapshot_time <= joined.loc[has, "event_timestamp"]).all()
    # And it is the latest snapshot at or before the event, within the 2-day TTL.
    expected = pd.merge_asof(
        events.sort_values("event_timestamp"),
        snapshots[["account_id", "event_timestamp", "account_age_days"]].sort_values(
            "event_timestamp"
        ),
        on="event_timestamp",
        by="account_id",
        direction="backward",
        tolerance=pd.Timedelta(days=2),
    ).set_index("transaction_id")["account_age_days"]
    got = joined.set_index("transaction_id")["account_age_days"]
    pd.testing.assert_series_equal(got.sort_index(), expected.sort_index(), check_names=False)
    # An event exactly at a snapshot's time sees that snapshot; one before any sees none.
    assert got["exact"] == 30.0
    assert np.isnan(got["early"])
    # Account 9's last snapshot is at 24h: events after 24h + TTL (72h) get nothing, none exist;
    # events within TTL get the 24h snapshot, never a later invented one.
    late9 = joined[
        (joined["account_id"] == 9) & (joined["event_timestamp"] > T0 + pd.Timedelta(days=1))
    ]
    assert (late9["account_age_days"] == 24.0).all()


def test_ttl_expires_stale_snapshots(store):
    fs, _ = store
    events = pd.DataFrame(
        {
            "account_id": [9, 9],
            "event_timestamp": pd.to_datetime(
                [T0 + pd.Timedelta(hours=24 + 47), T0 + pd.Timedelta(hours=24 + 49)]
            ).astype("datetime64[us, UTC]"),
        }
    )
    joined = training_frame(fs, events, "fraud_model_v1").sort_values("event_timestamp")
    assert joined["account_age_days"].iloc[0] == 24.0
    assert np.isnan(joined["account_age_days"].iloc[1])


def test_online_lookup_returns_latest_materialized_snapshot(store, snapshots):
    _, workdir = store
    online = OnlineFeatures(workdir)
    got = online.get([9, 7, 12345])
    assert [row["account_id"] for row in got] == [9, 7, 12345]
    latest = snapshots.sort_values("event_timestamp").groupby("account_id").last()
    assert got[0]["account_age_days"] == latest.loc[9, "account_age_days"] == 24.0
    assert got[1]["account_age_days"] == latest.loc[7, "account_age_days"] == 72.0
    assert got[1]["avg_amount_30d"] == 7.0
    assert all(got[2][k] is None for k in ("account_age_days", "avg_amount_30d", "txn_count_24h"))
    assert online.get([]) == []


def test_online_lookup_of_a_folder_without_a_store(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a Feast repository"):
        OnlineFeatures(tmp_path)
