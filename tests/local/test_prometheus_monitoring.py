"""A real Prometheus, started by the test, scraping the drift service, a predictor and the
router: the drift alert fires in the rules API once drift is injected, every dashboard
panel's PromQL returns data, and the drift-service-down alert fires when it stops."""

from __future__ import annotations

import json
import time

import httpx
import pandas as pd
import pytest

from kubeloop.local.drift import start_drift_service
from kubeloop.local.prometheus import start_prometheus
from kubeloop.local.servers import start_predictor, start_router
from kubeloop.monitoring import dashboards
from kubeloop.monitoring.rules import DRIFT_JOB, PREDICTOR_JOB, ROUTER_JOB, AlertTimings, rules_file
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
FAST = {"ert": 100, "univariate_windows": [10, 30], "error_windows": [10, 30], "mmd_reference_rows": 200,
        "mmd_bootstraps": 200, "mmd_every": 1, "univariate_every": 1, "univariate_bootstraps": 300,
        "cvm_reference_rows": 100}  # fmt: skip
# The generated rules with hold times cut to seconds: the expressions are the ones shipped.
SHORT = AlertTimings(
    drift="3s", errors="3s", latency="3s", accuracy="3s", dropped="3s", down="3s", rate_window="30s"
)


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    work = tmp_path_factory.mktemp("monitoring-stack")
    registry = work / "registry"
    publish_quick_version(ModelRegistry(str(registry)), MODEL, seed=0, n_accounts=200, days=7)
    started = []
    try:
        drift = start_drift_service(registry, work / "drift")
        started.append(drift)
        httpx.post(drift.url + "/v1/watch", json={"model": MODEL, "version": "v1", "detectors": FAST},
                   timeout=300).raise_for_status()  # fmt: skip
        predictor = start_predictor(MODEL, "v1", str(registry), work / "logs")
        started.append(predictor)
        split = work / "split.json"
        split.write_text(json.dumps({"model": MODEL, "stable": {"version": "v1", "url": predictor.url},
                                     "canary": None, "canary_percent": 0, "shadow": False}))  # fmt: skip
        router = start_router(split, work / "logs", logger_url=drift.url)
        started.append(router)
        rules = work / "rules.yaml"
        rules.write_text(rules_file(SHORT))
        hostport = lambda url: url.removeprefix("http://")  # noqa: E731
        prom = start_prometheus(
            work / "prometheus",
            {
                DRIFT_JOB: [hostport(drift.url)],
                PREDICTOR_JOB: [hostport(predictor.url)],
                ROUTER_JOB: [hostport(router.url)],
            },  # fmt: skip
            rule_files=[rules],
            scrape_interval="1s",
            evaluation_interval="1s",
        )
        started.append(prom)
        yield {"drift": drift, "router": router, "prom": prom, "registry": registry}
    finally:
        for proc in reversed(started):
            proc.stop()


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
    wait_for(
        lambda: set(prom.targets_up().values()) == {"up"} and prom.targets_up(),
        30,
        "all targets up",
    )
    ref = pd.read_parquet(stack["registry"] / MODEL / "versions" / "v1" / "reference.parquet")
    ref = ref.sample(frac=1.0, random_state=1).reset_index(drop=True)
    sent = predict(stack["router"].url, ref.head(60), "calm")
    # Covariate drift: bigger amounts, far from home, electronics.
    shifted = ref.iloc[60:260].copy()
    shifted["amount"] *= 5.0
    shifted["distance_from_home_km"] += 300.0
    shifted["merchant_category"] = "electronics"
    sent += predict(stack["router"].url, shifted, "drift")
    with httpx.Client(base_url=drift.url, timeout=30) as c:
        status = c.get("/v1/status", params={"wait": "idle"}).json()["watched"][0]
        assert status["samples"] == len(sent), (
            status
        )  # every routed request reached the drift service
        fb = [{"request_id": rid, "labels": [y]} for rid, y in sent]
        assert c.post("/v1/feedback", json={"feedback": fb}).status_code == 202

    def firing():
        return [a["labels"] for a in prom.alerts()
                if a["labels"]["alertname"] == "KubeloopDriftSustained" and a["state"] == "firing"]  # fmt: skip

    # Each detector's alarm becomes an alert on its own evaluation; wait for both, not the first.
    alerts = wait_for(
        lambda: (a := firing()) and {x["detector"] for x in a} >= {"mmd", "cvm"} and a,
        60,
        "KubeloopDriftSustained firing for mmd and cvm",
    )
    assert all(a["model"] == MODEL and a["version"] == "v1" for a in alerts)

    missing = []
    for name, build in dashboards.DASHBOARDS.items():
        for title, expr in dashboards.panel_queries(build()):
            promql = expr.replace("$model", MODEL).replace("$__rate_interval", "1m")
            result = (
                wait_for(lambda q=promql: prom.query(q), 20, f"data for {name}/{title}: {promql}")
                or []
            )
            if not result:
                missing.append((name, title))
    assert not missing

    drift.stop()
    wait_for(
        lambda: [
            a
            for a in prom.alerts()
            if a["labels"]["alertname"] == "KubeloopDriftServiceDown" and a["state"] == "firing"
        ],  # fmt: skip
        40,
        "KubeloopDriftServiceDown firing",
    )
