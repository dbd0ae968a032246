"""A real Prometheus, started by the test, scraping the drift service, a predictor (with a
Feast online store for entity-key requests), the router and a snapshot feeder: the drift alert fires in the rules API once drift is injected, every dashboard
panel's PromQL returns data, and the drift-service-down alert fires when it stops."""

from __future__ import annotations

import json

import httpx
import pandas as pd
import pytest
from prometheus_client import start_http_server

from kubeloop.data import fraud
from kubeloop.features.feeder import SnapshotFeeder
from kubeloop.features.store import prepare_feature_store
from kubeloop.local.drift import start_drift_service
from kubeloop.local.ports import free_port
from kubeloop.local.prometheus import PrometheusClient, start_prometheus
from kubeloop.local.servers import start_predictor, start_router
from kubeloop.local.supervisor import Supervisor
from kubeloop.local.wait import wait_until
from kubeloop.monitoring import dashboards
from kubeloop.monitoring.rules import DRIFT_JOB, PREDICTOR_JOB, ROUTER_JOB, AlertTimings, rules_file
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
PROFILE = {c.name for c in fraud.FRAUD_SCHEMA.view_features}
FAST = {"ert": 100, "univariate_windows": [10, 30], "error_windows": [10, 30], "mmd_reference_rows": 200,
        "mmd_bootstraps": 200, "mmd_every": 1, "univariate_every": 1, "univariate_bootstraps": 300,
        "cvm_reference_rows": 100}  # fmt: skip
# The generated rules with hold times cut to seconds: the expressions are the ones shipped.
SHORT = AlertTimings(
    drift="3s", errors="3s", latency="3s", accuracy="3s", dropped="3s", down="3s", rate_window="30s"
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("monitoring-stack")
    registry = work / "registry"
    publish_quick_version(ModelRegistry(str(registry)), MODEL, seed=0, n_accounts=200, days=7)
    accounts = fraud.generate("stationary", days=3, n_accounts=20, seed=2).accounts
    days = sorted(accounts["event_timestamp"].unique())
    prepare_feature_store(work / "feast", accounts, materialize_until=days[1])
    feeder = SnapshotFeeder(
        work / "feast", accounts, feature_view="account_profile", written_until=days[1]
    )
    feeder_port = free_port()
    feeder_server, _ = start_http_server(feeder_port, "127.0.0.1", feeder.metrics.registry)
    with Supervisor(work / "runtime") as sup:
        drift = start_drift_service(sup, registry)
        httpx.post(drift.url + "/v1/watch", json={"model": MODEL, "version": "v1", "detectors": FAST},
                   params={"wait": "armed", "timeout": "300"}, timeout=330).raise_for_status()  # fmt: skip
        predictor = start_predictor(sup, MODEL, "v1", str(registry), feast_repo=work / "feast")
        split = work / "split.json"
        split.write_text(json.dumps({"model": MODEL, "stable": {"version": "v1", "url": predictor.url},
                                     "canary": None, "canary_percent": 0, "shadow": False}))  # fmt: skip
        router = start_router(sup, split, logger_url=drift.url)
        rules = work / "rules.yaml"
        rules.write_text(rules_file(SHORT))
        hostport = lambda url: url.removeprefix("http://")  # noqa: E731
        prom = start_prometheus(
            sup,
            work / "prometheus",
            targets={
                DRIFT_JOB: [hostport(drift.url)],
                PREDICTOR_JOB: [hostport(predictor.url)],
                ROUTER_JOB: [hostport(router.url)],
                "kubeloop-features": [f"127.0.0.1:{feeder_port}"],
            },  # fmt: skip
            rule_files=[rules],
            scrape_interval="1s",
        )
        feeder.advance(days[2])  # the next day's snapshots, written while the stack runs
        with PrometheusClient(prom.url) as client:
            yield {"drift": drift, "router": router, "prom": client, "registry": registry,
                   "predictor": predictor, "account": int(accounts["account_id"].iloc[0])}  # fmt: skip
    feeder.close()
    feeder_server.shutdown()


def predict(router_url: str, frame: pd.DataFrame, prefix: str) -> list[tuple[str, int]]:
    feats = [c for c in frame.columns if c not in ("is_fraud", "prediction_score", "prediction")]
    sent = []
    with httpx.Client(base_url=router_url, timeout=30) as c:
        for i, row in enumerate(frame[feats].to_dict("records")):
            rid = f"{prefix}-{i}"
            r = c.post(
                f"/v1/models/{MODEL}:predict",
                json={"instances": [row]},
                headers={"X-Request-Id": rid},
            )
            assert r.status_code == 200, r.text
            sent.append((rid, int(frame["is_fraud"].iloc[i])))
        # Client mistakes, so the error panels have series.
        assert (
            c.post(f"/v1/models/{MODEL}:predict", json={"instances": [{"amount": 1.0}]}).status_code
            == 400
        )
    return sent


def test_alerts_fire_and_every_dashboard_panel_has_data(stack):
    prom, drift = stack["prom"], stack["drift"]
    wait_until(
        lambda: set(prom.targets_up().values()) == {"up"} and prom.targets_up(),
        timeout=30,
        what="all targets up",
        detail=lambda: str(prom.targets_up()),
    )
    ref = pd.read_parquet(stack["registry"] / MODEL / "versions" / "v1" / "reference.parquet")
    ref = ref.sample(frac=1.0, random_state=1).reset_index(drop=True)
    sent = predict(stack["router"].url, ref.head(60), "calm")
    # An entity-key request straight to the predictor, which looks the profile up in Feast
    # (the router's payload events carry bodies as sent: the drift service would refuse
    # one without the profile, so the drift samples below stay the router's).
    first = ref.head(1).drop(columns=[*PROFILE, "is_fraud", "prediction_score", "prediction"])
    r = httpx.post(f"{stack['predictor'].url}/v1/models/{MODEL}:predict",
                   json={"instances": [{**first.to_dict("records")[0], "account_id": stack["account"]}]})  # fmt: skip
    assert r.status_code == 200, r.text
    # Covariate drift: bigger amounts, far from home, electronics.
    shifted = ref.iloc[60:260].copy()
    shifted["amount"] *= 5.0
    shifted["distance_from_home_km"] += 300.0
    shifted["merchant_category"] = "electronics"
    sent += predict(stack["router"].url, shifted, "drift")
    with httpx.Client(base_url=drift.url, timeout=30) as c:

        def watched() -> dict:
            return c.get("/v1/status", params={"wait": "idle"}).json()["watched"][0]

        # every routed request reaches the drift service (the router sends its payload
        # events after answering: the last may still be on its way)
        wait_until(lambda: watched()["samples"] == len(sent), timeout=15, interval=0.5,
                   what=f"{len(sent)} samples at the drift service", detail=lambda: str(watched()))  # fmt: skip
        fb = [{"request_id": rid, "labels": [y]} for rid, y in sent]
        assert c.post("/v1/feedback", json={"feedback": fb}).status_code == 202

    def firing():
        return [a["labels"] for a in prom.alerts()
                if a["labels"]["alertname"] == "KubeloopDriftSustained" and a["state"] == "firing"]  # fmt: skip

    # Each detector's alarm becomes an alert on its own evaluation; wait for both, not the first.
    alerts = wait_until(
        lambda: (a := firing()) and {x["detector"] for x in a} >= {"mmd", "cvm"} and a,
        timeout=60,
        interval=1,
        what="KubeloopDriftSustained firing for mmd and cvm",
        detail=lambda: str(firing()),
    )
    assert all(a["model"] == MODEL and a["version"] == "v1" for a in alerts)

    for name, build in dashboards.DASHBOARDS.items():
        for title, expr in dashboards.panel_queries(build()):
            promql = expr.replace("$model", MODEL).replace("$__rate_interval", "1m")
            wait_until(lambda q=promql: prom.query(q), timeout=20, interval=1,
                       what=f"data for {name}/{title}: {promql}")  # fmt: skip

    drift.stop()
    wait_until(
        lambda: [
            a
            for a in prom.alerts()
            if a["labels"]["alertname"] == "KubeloopDriftServiceDown" and a["state"] == "firing"
        ],  # fmt: skip
        timeout=40,
        interval=1,
        what="KubeloopDriftServiceDown firing",
    )
