"""Entity-key requests enriched from a real Feast online store (SQLite, materialized)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from kubeloop.data import fraud
from kubeloop.features.store import prepare_feature_store
from kubeloop.local.servers import start_predictor
from kubeloop.local.supervisor import Supervisor
from kubeloop.local.wait import wait_until
from kubeloop.model import ModelBundle
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version
from tests.support.sink import EventSink

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
REQUEST = {
    "amount": 300.0,
    "merchant_category": "travel",
    "hour": 3,
    "distance_from_home_km": 90.0,
    "is_foreign": 1,
    "txn_count_1h": 3,
}
VIEW = [c.name for c in fraud.FRAUD_SCHEMA.view_features]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    root = tmp_path_factory.mktemp("feast")
    start = (datetime.now(UTC) - timedelta(days=3)).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    data = fraud.generate("stationary", start=start, days=3, n_accounts=30, seed=5)
    prepare_feature_store(root / "store", data.accounts)
    registry = ModelRegistry(str(root / "registry"))
    publish_quick_version(registry, MODEL, seed=5)
    _, folder = registry.download(MODEL, "v1", root / "v1")
    with Supervisor(root / "runtime") as sup:
        server = start_predictor(sup, MODEL, "v1", registry.uri, feast_repo=root / "store")
        yield {
            "server": server, "accounts": data.accounts, "bundle": ModelBundle.load(folder),
            "supervisor": sup, "store": root / "store", "version_dir": folder,
        }  # fmt: skip


def _latest(accounts: pd.DataFrame, account_id: int) -> dict:
    row = accounts[accounts["account_id"] == account_id].sort_values("event_timestamp").iloc[-1]
    return {name: float(row[name]) for name in VIEW}


def test_entity_key_requests_are_enriched_in_one_lookup(stack):
    ids = [1000, 1007, 1000, 1013]
    instances = [{**REQUEST, "account_id": i} for i in ids]
    resp = httpx.post(
        f"{stack['server'].url}/v1/models/{MODEL}:predict", json={"instances": instances}
    )
    assert resp.status_code == 200, resp.text
    full = pd.DataFrame([{**REQUEST, **_latest(stack["accounts"], i)} for i in ids])
    scores, _ = stack["bundle"].predict(full)
    np.testing.assert_allclose([p["score"] for p in resp.json()["predictions"]], scores, rtol=1e-6)
    metrics = httpx.get(f"{stack['server'].url}/metrics").text
    assert (
        'kubeloop_feast_lookup_seconds_count{model="fraud-detector"} 1.0' in metrics
    )  # one call, 4 rows


def test_mixed_rows_and_unknown_entities(stack):
    full_row = {**REQUEST, "account_age_days": 10.0, "avg_amount_30d": 20.0, "txn_count_24h": 1.0}
    resp = httpx.post(
        f"{stack['server'].url}/v1/models/{MODEL}:predict",
        json={"instances": [full_row, {**REQUEST, "account_id": 1001}]},
    )
    assert resp.status_code == 200 and len(resp.json()["predictions"]) == 2
    resp = httpx.post(
        f"{stack['server'].url}/v1/models/{MODEL}:predict",
        json={"instances": [{**REQUEST, "account_id": 99999}]},
    )
    assert resp.status_code == 400 and "99999" in resp.json()["error"]


def test_a_cluster_predictor_reads_feature_store_yaml_alone_and_logs_what_the_model_saw(
    stack, tmp_path
):
    """As on a cluster: the version in a folder (KServe's /mnt/models), served under the
    InferenceService's name, and ``feature_store.yaml`` alone in a folder of its own (the
    chart's ConfigMap); the predictor's own payload events carry the looked-up profile, the
    registry's model name and the version, which KServe's logger would not."""
    config = yaml.safe_load((stack["store"] / "feature_store.yaml").read_text())
    config["registry"] = str(stack["store"] / config["registry"])
    config["online_store"]["path"] = str(stack["store"] / config["online_store"]["path"])
    mounted = tmp_path / "feast"
    mounted.mkdir()
    (mounted / "feature_store.yaml").write_text(yaml.safe_dump(config))
    served = "fraud-detector-pinned"
    with EventSink() as sink:
        server = start_predictor(
            stack["supervisor"], served, "v1", "unused", name="pinned",
            feast_repo=mounted, logger_url=sink.url,
            extra=["--model-dir", str(stack["version_dir"])],
        )  # fmt: skip
        resp = httpx.post(
            f"{server.url}/v1/models/{served}:predict",
            json={"instances": [{**REQUEST, "account_id": 1007}]},
        )
        assert resp.status_code == 200, resp.text
        wait_until(lambda: len(sink.events) >= 2, timeout=10, what="the predictor's events")
        server.stop()
    request = next(e for e in sink.events if e.headers["ce-type"].endswith("request"))
    assert request.headers["ce-inferenceservicename"] == MODEL
    assert request.headers["ce-modelversion"] == "v1"
    [logged] = yaml.safe_load(request.body)["instances"]
    assert {k: logged[k] for k in VIEW} == pytest.approx(_latest(stack["accounts"], 1007))
    assert sorted(p.name for p in mounted.iterdir()) == ["feature_store.yaml"]  # read only
