"""The online store kept at the day: each day's snapshots written while a predictor serves."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from kubeloop.data import fraud
from kubeloop.features.feeder import SnapshotFeeder
from kubeloop.features.online import OnlineFeatures
from kubeloop.features.store import prepare_feature_store
from kubeloop.local.servers import start_predictor
from kubeloop.local.supervisor import Supervisor
from kubeloop.local.wait import wait_until
from kubeloop.model import ModelBundle
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
VIEW = [c.name for c in fraud.FRAUD_SCHEMA.view_features]
REQUEST = {
    "amount": 120.0,
    "merchant_category": "online",
    "hour": 14,
    "distance_from_home_km": 5.0,
    "is_foreign": 0,
    "txn_count_1h": 1,
}


def _profile(snapshots: pd.DataFrame, account: int, day: pd.Timestamp) -> dict:
    row = snapshots[(snapshots["account_id"] == account) & (snapshots["event_timestamp"] == day)]
    return {name: float(row[name].iloc[0]) for name in VIEW}


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("feeder")
    start = datetime(2026, 3, 1, tzinfo=UTC)
    data = fraud.generate("covariate", start=start, days=6, n_accounts=40, seed=3)
    days = sorted(data.accounts["event_timestamp"].unique())
    first = pd.Timestamp(days[2])
    prepare_feature_store(root / "store", data.accounts, materialize_until=first)
    return {"root": root, "snapshots": data.accounts, "days": days, "first": first}


def test_the_store_holds_the_first_day_then_each_day_as_it_comes(store):
    snapshots, first = store["snapshots"], store["first"]
    online = OnlineFeatures(store["root"] / "store")
    account = int(snapshots["account_id"].iloc[0])
    assert {k: online.get([account])[0][k] for k in VIEW} == _profile(snapshots, account, first)

    registry = ModelRegistry(str(store["root"] / "registry"))
    publish_quick_version(registry, MODEL, seed=3)
    _, folder = registry.download(MODEL, "v1", store["root"] / "v1")
    bundle = ModelBundle.load(folder)
    feeder = SnapshotFeeder(
        store["root"] / "store", snapshots, feature_view="account_profile", written_until=first
    )
    with Supervisor(store["root"] / "runtime") as sup:
        server = start_predictor(sup, MODEL, "v1", registry.uri, feast_repo=store["root"] / "store")
        for day in map(pd.Timestamp, store["days"][3:5]):
            feeder.advance(day)  # returns at once; the worker writes
            wait_until(lambda day=day: feeder.written_until == day, timeout=30, what=f"{day}")
            resp = httpx.post(
                f"{server.url}/v1/models/{MODEL}:predict",
                json={"instances": [{**REQUEST, "account_id": account}]},
            )
            assert resp.status_code == 200, resp.text
            profile = _profile(snapshots, account, day)
            expected, _ = bundle.predict(pd.DataFrame([{**REQUEST, **profile}]))
            # the predictor reads the store per request: the new day's profile, no restart
            np.testing.assert_allclose(
                resp.json()["predictions"][0]["score"], expected[0], rtol=1e-6
            )
    feeder.advance(store["days"][3])  # a day already written: nothing to do
    feeder.close()
    assert feeder.errors == [] and feeder.writes == 2
    samples = _samples(feeder)
    assert samples[("kubeloop_online_store_writes_total", "ok")] == 2
    assert samples[("kubeloop_online_store_rows_written_total", None)] == 2 * 40
    last = pd.Timestamp(store["days"][4]).timestamp()
    assert samples[("kubeloop_online_store_snapshot_timestamp_seconds", None)] == last
    assert 0 <= samples[("kubeloop_online_store_age_seconds", None)] < 60


def test_a_failed_write_is_counted_and_leaves_the_store_as_it_was(store):
    snapshots, first = store["snapshots"], store["first"]
    root = store["root"]
    prepare_feature_store(root / "broken", snapshots, materialize_until=first)
    account = int(snapshots["account_id"].iloc[0])
    bad = snapshots.drop(columns=["avg_amount_30d"])  # a snapshot job that lost a column
    feeder = SnapshotFeeder(
        root / "broken", bad, feature_view="account_profile", written_until=first
    )
    feeder.advance(store["days"][3])
    feeder.close()
    assert feeder.writes == 0 and len(feeder.errors) == 1, feeder.errors
    assert feeder.written_until == first  # the next advance retries the same day
    assert _samples(feeder)[("kubeloop_online_store_writes_total", "error")] == 1
    online = OnlineFeatures(root / "broken")
    assert {k: online.get([account])[0][k] for k in VIEW} == _profile(snapshots, account, first)


def _samples(feeder: SnapshotFeeder) -> dict:
    text = generate_latest(feeder.metrics.registry).decode()
    return {
        (s.name, s.labels.get("outcome")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if not s.name.endswith("_created")
    }
