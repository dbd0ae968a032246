"""The drift service as a real process (its own venv) over HTTP: events, feedback, bad input,
threshold cache, reset on re-watch, batch report and metrics."""

from __future__ import annotations

import json

import httpx
import pandas as pd
import pytest
from cloudevents.http import CloudEvent, to_structured
from kubeloop.operators.crd import Monitoring

from kubeloop.contracts.payload_events import REJECT_REASONS
from kubeloop.local.drift import start_drift_service
from kubeloop.local.supervisor import Supervisor
from kubeloop.local.wait import wait_until
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version
from tests.support.events import payload_headers, payload_pair

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
# Small detector set-up so a cold watch takes seconds; the defaults are exercised by bench/drift.
FAST = {
    "ert": 100,
    "univariate_windows": [10, 30],
    "error_windows": [10, 30],
    "mmd_reference_rows": 200,
    "mmd_bootstraps": 200,
    "mmd_every": 1,
    "univariate_every": 1,
    "univariate_bootstraps": 300,
    "cvm_reference_rows": 100,
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    reg = ModelRegistry(str(root))
    publish_quick_version(reg, MODEL, seed=0, n_accounts=200, days=7)
    publish_quick_version(reg, MODEL, seed=1, n_accounts=200, days=7)
    return root


@pytest.fixture(scope="module")
def reference(registry):
    frame = pd.read_parquet(registry / MODEL / "versions" / "v1" / "reference.parquet")
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # i.i.d. order


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("drift-work")


@pytest.fixture(scope="module")
def supervisor(work):
    with Supervisor(work / "runtime") as sup:
        yield sup


def start(supervisor, registry, work, name: str = "drift"):
    """A drift service caching its thresholds in ``work/drift-cache``."""
    return start_drift_service(supervisor, registry, cache_dir=work / "drift-cache", name=name)


@pytest.fixture(scope="module")
def service(supervisor, registry, work):
    with start(supervisor, registry, work) as svc:
        yield svc


@pytest.fixture(scope="module")
def client(service):
    with httpx.Client(base_url=service.url, timeout=120) as c:
        yield c


def features(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in ("is_fraud", "prediction_score", "prediction")]


def send(client, frame, version="v1", start=0, n=50):
    ids = []
    for i in range(start, start + n):
        row = frame.iloc[i]
        rid, events = payload_pair(
            [{k: row[k].item() if hasattr(row[k], "item") else row[k] for k in features(frame)}],
            [float(row["prediction_score"])], [int(row["prediction"])], MODEL, version,
        )  # fmt: skip
        for headers, body in events:
            r = client.post("/", headers=headers, content=body)
            assert r.status_code == 202, r.text
        ids.append((rid, int(row["is_fraud"])))
    return ids


def watch(client, version="v1", detectors=None, **body) -> dict:
    """Watches ``version`` afresh (``reset``) and waits until its detectors are armed."""
    r = client.post(
        "/v1/watch",
        params={"wait": "armed", "timeout": "120"},
        json={"model": MODEL, "version": version, "detectors": detectors or FAST, "reset": True,
              **body},
    )  # fmt: skip
    assert r.status_code == 200 and r.json()["state"] == "armed", r.text
    return r.json()


def status(client, version="v1"):
    st = client.get("/v1/status", params={"wait": "idle"}).json()
    return next(w for w in st["watched"] if w["version"] == version)


def rejected(client) -> dict[str, float]:
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("kubeloop_events_rejected_total{"):
            reason = line.split('reason="')[1].split('"')[0]
            out[reason] = float(line.rsplit(" ", 1)[1])
    return out


def test_watch_builds_exact_detectors_without_a_cache(client, work):
    """The default method: CUSUM charts with exact thresholds, nothing simulated or cached."""
    armed = watch(client)["detectors"]
    assert set(armed) == {"mmd", "cvm", "fet", "prediction", "error_rate", "predicted_class"}
    assert not any(d["cache_hit"] for d in armed.values()), armed
    cache = work / "drift-cache"
    assert not cache.exists() or not any(cache.iterdir())


def test_a_deployments_detectors_arm_what_it_lists_at_its_erts(client):
    """What the operator sends for spec.monitoring.detectors: listed families only, each at
    its own ERT (the others at the service's)."""
    listed = Monitoring.model_validate(
        {
            "detectors": [
                {"name": "cvm", "ert": 300},
                {"name": "error_rate", "ert": 150},
                {"name": "predicted_class"},
            ]
        }
    )
    armed = watch(client, detectors={**FAST, **listed.drift_settings()})["detectors"]
    assert set(armed) == {"cvm", "error_rate", "predicted_class"}
    assert (armed["cvm"]["ert"], armed["error_rate"]["ert"]) == (300, 150)
    assert armed["predicted_class"]["ert"] == FAST["ert"] * FAST["univariate_every"]


def test_alibi_detectors_cache_their_thresholds(client, supervisor, registry, work):
    alibi = {**FAST, "method": "alibi"}
    first = watch(client, detectors=alibi)["detectors"]
    assert set(first) == {"mmd", "cvm", "fet", "prediction", "error_rate", "predicted_class"}
    # A second process with the same cache directory loads every threshold table instead.
    with (
        start(supervisor, registry, work, name="drift-2") as other,
        httpx.Client(base_url=other.url, timeout=120) as c2,
    ):
        again = watch(c2, detectors=alibi)["detectors"]
    # (the predicted-class CUSUM computes its exact thresholds each time: nothing to cache)
    assert all(d["cache_hit"] for n, d in again.items() if n != "predicted_class"), again
    assert sum(d["setup_seconds"] for d in again.values()) < sum(
        d["setup_seconds"] for d in first.values()
    )
    assert any(p.name.startswith("mmd-") for p in (work / "drift-cache").iterdir())


def test_events_feedback_and_metrics(client, reference):
    watch(client, "v1")
    ids = send(client, reference, n=80)
    st = status(client)
    assert st["samples"] == 80
    assert all(d["steps"] == 80 for n, d in st["detectors"].items() if n != "error_rate")
    # Before any label: no live accuracy, but an estimate from the 80 predictions' scores.
    assert st["live_accuracy"] is None
    assert st["estimate"]["predictions"] == 80 and st["estimate"]["error"] is None
    estimated = st["estimated_accuracy"]
    assert 0.8 <= estimated <= 1.0
    fb = client.post(
        "/v1/feedback",
        json={"feedback": [{"request_id": rid, "labels": [y]} for rid, y in ids[:60]]},
    )
    assert fb.status_code == 202, fb.text
    st = status(client)
    assert st["feedback"]["correct"] + st["feedback"]["incorrect"] == 60
    assert 0.8 <= st["live_accuracy"] <= 1.0
    assert abs(st["estimated_accuracy"] - st["live_accuracy"]) < 0.1
    metrics = client.get("/metrics").text
    for name in ("kubeloop_drift_statistic{", "kubeloop_drift_threshold{", "kubeloop_drift_detected{",
                 "kubeloop_drift_seconds_since_reset{", "kubeloop_drift_samples_total{", "kubeloop_feedback_total{",
                 "kubeloop_live_accuracy{", "kubeloop_estimated_accuracy{",
                 "kubeloop_events_rejected_total{"):  # fmt: skip
        assert name in metrics, name
    assert f'kubeloop_drift_samples_total{{model="{MODEL}",version="v1"}} 80.0' in metrics
    assert 'feature="amount"' in metrics and 'feature="merchant_category"' in metrics


def test_structured_mode_is_accepted(client, reference):
    watch(client, "v1")
    row = reference.iloc[0]
    inst = {k: row[k].item() if hasattr(row[k], "item") else row[k] for k in features(reference)}
    ext = {"inferenceservicename": MODEL, "modelversion": "v1", "endpoint": "default"}
    for kind, data in (
        ("request", {"instances": [inst]}),
        ("response", {"predictions": [{"score": 0.1, "label": 0}]}),
    ):
        event = CloudEvent({"id": "structured-1", "source": "test", "specversion": "1.0",
                            "type": f"org.kubeflow.serving.inference.{kind}", **ext}, data)  # fmt: skip
        headers, body = to_structured(event)
        assert client.post("/", headers=headers, content=body).status_code == 202
    assert status(client)["samples"] == 1


def test_bad_input_is_rejected_with_a_reason_and_state_is_kept(client, reference):
    watch(client, "v1")
    send(client, reference, n=5)
    before_samples, before = status(client)["samples"], rejected(client)
    row = reference.iloc[0]
    good = {k: row[k].item() if hasattr(row[k], "item") else row[k] for k in features(reference)}
    req = lambda rid, v="v1": payload_headers("request", rid, MODEL, v)  # noqa: E731
    cases = [
        ("malformed_event", {"Content-Type": "application/json"}, b'{"instances": []}'),
        ("invalid_json", req("a"), b"{not json"),
        ("unwatched_model", req("b", "v9"), json.dumps({"instances": [good]}).encode()),
        ("missing_field", req("c"), json.dumps({"instances": [{k: v for k, v in good.items() if k != "amount"}]}).encode()),
        ("extra_field", req("d"), json.dumps({"instances": [{**good, "surprise": 1}]}).encode()),
        ("wrong_dtype", req("e"), json.dumps({"instances": [{**good, "amount": "12.5"}]}).encode()),
        ("nan_value", req("f"), json.dumps({"instances": [{**good, "amount": float("nan")}]}).encode()),
        ("unknown_category", req("g"), json.dumps({"instances": [{**good, "merchant_category": "casino"}]}).encode()),
        ("unpaired_response", payload_headers("response", "nobody", MODEL, "v1"),
         json.dumps({"predictions": [{"score": 0.2, "label": 0}]}).encode()),
        ("unsupported_type", {**req("h"), "Ce-Type": "com.example.other"}, b"{}"),
        ("missing_attribute", {k: v for k, v in req("i").items() if k != "Ce-Modelversion"}, b"{}"),
    ]  # fmt: skip
    for reason, headers, body in cases:
        r = client.post("/", headers=headers, content=body)
        assert 400 <= r.status_code < 500, (reason, r.status_code, r.text)
        assert r.json()["reason"] == reason, (reason, r.text)
    # A request whose response is malformed stays pending: the bad response changes nothing.
    assert (
        client.post(
            "/", headers=req("j"), content=json.dumps({"instances": [good]}).encode()
        ).status_code
        == 202
    )
    bad = client.post("/", headers=payload_headers("response", "j", MODEL, "v1"),
                      content=json.dumps({"predictions": [{"score": 2.0, "label": 0}]}).encode())  # fmt: skip
    assert bad.status_code == 422 and bad.json()["reason"] == "bad_response"
    dup = client.post("/", headers=req("j"), content=json.dumps({"instances": [good]}).encode())
    assert dup.status_code == 409 and dup.json()["reason"] == "duplicate_event"
    for body, reason in (
        ({"request_id": "never-seen", "labels": [1]}, "unknown_request_id"),
        ({"request_id": "j", "labels": ["yes"]}, "bad_feedback"),
        ({"labels": [1]}, "bad_feedback"),
    ):
        r = client.post("/v1/feedback", json=body)
        assert 400 <= r.status_code < 500 and r.json()["reason"] == reason, r.text
    after = rejected(client)
    assert set(after) == set(REJECT_REASONS)
    for reason in [c[0] for c in cases] + [
        "bad_response",
        "duplicate_event",
        "unknown_request_id",
        "bad_feedback",
    ]:
        assert after[reason] > before.get(reason, 0), reason
    st = status(client)
    assert st["samples"] == before_samples
    assert client.get("/healthz").status_code == 200


def test_drift_is_flagged_and_a_new_watch_resets(client, reference):
    watch(client, "v1")
    shifted = reference.copy()
    shifted["amount"] *= 6.0
    shifted["distance_from_home_km"] += 400.0
    shifted["merchant_category"] = "electronics"
    shifted["prediction_score"] = 0.9
    send(client, shifted, n=120)
    st = status(client)
    assert st["detectors"]["mmd"]["detected"] and st["detectors"]["cvm"]["detected"], st[
        "detectors"
    ]
    assert st["detectors"]["fet"]["detected"] and st["detectors"]["prediction"]["detected"]
    flagged = {(f["detector"], f["feature"]) for f in st["features"] if f["detected"]}
    assert ("cvm", "amount") in flagged and ("fet", "merchant_category") in flagged
    # Drift explained without any detector: the batch tests of the latest instances.
    explained = {f["feature"]: f for f in st["explained"]["features"]}
    assert explained["amount"]["p_value"] < 1e-6, explained
    assert explained["merchant_category"]["p_value"] < 1e-6, explained
    assert explained["hour"]["p_value"] > 1e-3, explained  # left alone
    metrics = client.get("/metrics").text
    assert (
        'kubeloop_feature_drift_p_value{feature="amount",model="fraud-detector",version="v1"}'
        in metrics
    )
    report = client.get("/v1/report", params={"model": MODEL, "version": "v1"}).json()
    by_feature = {f["feature"]: f for f in report["features"]}
    assert (
        report["drift"] and by_feature["amount"]["drift"] and by_feature["amount"]["q_value"] < 0.05
    )
    strict = client.get("/v1/report", params={"model": MODEL, "version": "v1", "fdr": "1e-12"})
    strict = strict.json()
    assert strict["fdr"] == 1e-12
    assert all(f["drift"] == (f["q_value"] <= 1e-12) for f in strict["features"]), strict
    bad = client.get("/v1/report", params={"model": MODEL, "version": "v1", "fdr": "2"})
    assert bad.status_code == 400 and "fdr" in bad.json()["error"]
    # Watching again (as for a retrained version) starts from a clean slate.
    watch(client, "v1")
    st = status(client)
    assert st["samples"] == 0 and not any(d["detected"] for d in st["detectors"].values())
    assert (
        'kubeloop_drift_detected{detector="mmd",feature="_all",model="fraud-detector",version="v1"} 1.0'
        not in (client.get("/metrics").text)
    )


def test_two_versions_are_watched_independently(client, reference):
    for v in ("v1", "v2"):
        watch(client, v)
    send(client, reference, version="v2", n=10)
    assert status(client, "v2")["samples"] == 10 and status(client, "v1")["samples"] == 0


def test_watch_errors_are_clear(client):
    r = client.post("/v1/watch", json={"model": MODEL, "version": "v7"})
    assert r.status_code == 404 and "v7" in r.text
    r = client.post("/v1/watch", json={"model": MODEL, "version": "v1", "detectors": {"ert": -1}})
    assert r.status_code == 422 and "ert" in r.json()["error"]
    r = client.post("/v1/watch", json={"model": MODEL, "version": "v1", "detectors": {"bogus": 1}})
    assert r.status_code == 422 and "bogus" in r.json()["error"]


def metric(text: str, prefix: str) -> float:
    line = next(line for line in text.splitlines() if line.startswith(prefix))
    return float(line.rsplit(" ", 1)[1])


def test_a_crashed_detector_worker_is_reported_and_shutdown_is_clean(
    supervisor, registry, work, reference
):
    import os
    import signal

    with (
        start(supervisor, registry, work, name="drift-crash") as svc,
        httpx.Client(base_url=svc.url, timeout=120) as c,
    ):
        watch(c, "v1")
        send(c, reference, n=5)
        worker = c.get("/v1/status", params={"wait": "idle"}).json()["worker"]
        assert worker["alive"] and worker["pid"] != svc.pid
        assert metric(c.get("/metrics").text, "kubeloop_drift_worker_up ") == 1.0
        os.kill(worker["pid"], signal.SIGKILL)
        ready = wait_until(lambda: (r := c.get("/readyz")).status_code != 200 and r,
                           timeout=10, interval=0.1, what="/readyz to report the dead worker")  # fmt: skip
        assert ready.status_code == 503 and "exited" in ready.json()["error"], ready.text
        text = c.get("/metrics").text
        assert metric(text, "kubeloop_drift_worker_up ") == 0.0
        assert metric(text, 'kubeloop_drift_worker_errors_total{kind="exit"}') == 1.0
        # Events are refused loudly (the logger sees 503), not accepted and lost.
        _, [(h1, b1), (h2, b2)] = payload_pair(
            [{k: v.item() if hasattr(v, "item") else v for k, v in reference.iloc[0][features(reference)].items()}],
            [0.1], [0], MODEL, "v1",
        )  # fmt: skip
        assert c.post("/", headers=h1, content=b1).status_code == 202  # requests only wait
        r = c.post("/", headers=h2, content=b2)
        assert r.status_code == 503 and r.json()["reason"] == "worker_down", r.text
    assert not svc.running()


def gone(pid: int) -> bool:
    """Exited (a zombie has exited: nobody may be left to reap an orphan's)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_stopping_the_service_stops_its_worker(supervisor, registry, work):
    with (
        start(supervisor, registry, work, name="drift-stop") as svc,
        httpx.Client(base_url=svc.url) as c,
    ):
        pid = c.get("/v1/status").json()["worker"]["pid"]
    assert not svc.running() and gone(svc.pid)
    wait_until(lambda: gone(pid), timeout=10, interval=0.1, what=f"detector worker {pid} to exit")
