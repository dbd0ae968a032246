"""A version's events and labels count before its detectors are armed, and watching never
blocks the operator: the real drift service (its own venv) over a real registry, with the
operator's own client."""

from __future__ import annotations

import time

import httpx
import pandas as pd
import pytest
from kubeloop.operators.drift_service import WATCH_TIMEOUT_SECONDS, DriftServiceClient
from kubeloop.operators.loop import SharedActuators

from kubeloop.local.drift import start_drift_service
from kubeloop.local.supervisor import Supervisor
from kubeloop.local.wait import wait_until
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version
from tests.support.events import payload_headers, payload_pair

pytestmark = pytest.mark.slow
MODEL = "fraud-detector"
# The service's own detector settings (KUBELOOP_DRIFT_*): small, so arming takes seconds
# from a cold threshold cache; every labelled instance steps the error-rate detector.
SMALL = {
    "ert": "100",
    "mmd": "false",
    "univariate_windows": "[10, 30]",
    "univariate_every": "1",
    "univariate_bootstraps": "2000",
    "cvm_reference_rows": "100",
    "error_windows": "[10, 30]",
}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    reg = ModelRegistry(str(tmp_path_factory.mktemp("registry")))
    for seed in range(3):  # v1, v2, v3
        publish_quick_version(reg, MODEL, seed=seed, n_accounts=200, days=7)
    return reg


@pytest.fixture(scope="module")
def reference(registry):
    frame = pd.read_parquet(f"{registry.uri}/{MODEL}/versions/v2/reference.parquet")
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)


@pytest.fixture(scope="module")
def supervisor(tmp_path_factory):
    with Supervisor(tmp_path_factory.mktemp("runtime")) as sup:
        yield sup


def serve(supervisor, registry, name: str, **env: str):
    return start_drift_service(
        supervisor, registry.uri, name=name, detectors=SMALL,
        cache_dir=supervisor.root / f"{name}-cache", env=env,
    )  # fmt: skip


@pytest.fixture(scope="module")
def client(supervisor, registry):
    with serve(supervisor, registry, "drift") as svc, httpx.Client(base_url=svc.url) as c:
        yield c


def instance(row: pd.Series) -> dict:
    skip = ("is_fraud", "prediction_score", "prediction")
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items() if k not in skip}


def predict(client, frame, version, rows) -> list[tuple[str, int, int]]:
    """Request and response events of ``rows``; returns (request id, label, prediction)."""
    out = []
    for i in rows:
        row = frame.iloc[i]
        rid, events = payload_pair(
            [instance(row)], [float(row["prediction_score"])], [int(row["prediction"])], MODEL, version
        )  # fmt: skip
        for headers, body in events:
            r = client.post("/", headers=headers, content=body)
            assert r.status_code == 202, r.text
        out.append((rid, int(row["is_fraud"]), int(row["prediction"])))
    return out


def label(client, answered) -> None:
    body = {"feedback": [{"request_id": rid, "labels": [y]} for rid, y, _ in answered]}
    r = client.post("/v1/feedback", json=body)
    assert r.status_code == 202, r.text


def series(client, name: str, **labels: str) -> dict[tuple, float]:
    """Samples of one metric whose labels include ``labels``: {label values: value}."""
    out = {}
    for line in client.get("/metrics").text.splitlines():
        if not line.startswith(name + "{"):
            continue
        body, value = line.rsplit(" ", 1)
        found = dict(p.split("=", 1) for p in body[len(name) + 1 : -1].split(","))
        found = {k: v.strip('"') for k, v in found.items()}
        if all(found.get(k) == v for k, v in labels.items()):
            out[tuple(sorted(found.items()))] = float(value)
    return out


def feedback_total(client, version: str) -> float:
    return sum(series(client, "kubeloop_feedback_total", model=MODEL, version=version).values())


def rejected(client, reason: str) -> float:
    return sum(series(client, "kubeloop_events_rejected_total", reason=reason).values())


def entry(client, version: str, listing: str = "watched") -> dict | None:
    body = client.get("/v1/status").json()
    return next((w for w in body[listing] if w["version"] == version), None)


def armed(client, version: str, timeout: float = 120) -> dict:
    def ready():
        found = entry(client, version)
        assert found is None or found["state"] != "failed", found
        return found if found and found["state"] == "armed" else None

    wait_until(ready, timeout=timeout, interval=0.1, what=f"{version} to be armed")
    client.get("/v1/status", params={"wait": "idle"})  # the backlog has reached the detectors
    return entry(client, version)


def test_labels_before_arming_count_at_once_and_reach_the_error_rate_detector(client, reference):
    # v2 is not watched: its events are kept (the registry holds v2) and its labels count.
    before = predict(client, reference, "v2", range(0, 60))
    label(client, before)
    assert feedback_total(client, "v2") == 60
    wrong = sum(int(y != p) for _, y, p in before)
    assert series(client, "kubeloop_feedback_total", version="v2", outcome="incorrect") == {
        (("model", MODEL), ("outcome", "incorrect"), ("version", "v2")): float(wrong)
    }
    held = entry(client, "v2", "unwatched")
    assert held["state"] == "unwatched" and held["backlog"] == {"instances": 60, "labels": 60}

    # The watch answers at once; the detectors are armed in the background.
    start = time.monotonic()
    r = client.post("/v1/watch", json={"model": MODEL, "version": "v2"})
    took = time.monotonic() - start
    assert r.status_code == 202 and r.json()["state"] == "arming" and r.json()["started"], r.text
    assert took < 1.0, took
    # Asked again while arming: nothing restarts, not even when asked to reset.
    for body in ({}, {"reset": True}):
        again = client.post("/v1/watch", json={"model": MODEL, "version": "v2", **body})
        assert again.status_code in (200, 202) and not again.json()["started"], again.text
        assert again.json()["attempt"] == 1
    # Events and labels while arming: counted now, read by the detectors once armed.
    during = predict(client, reference, "v2", range(60, 80))
    label(client, during)
    assert feedback_total(client, "v2") == 80

    st = armed(client, "v2")
    assert st["attempt"] == 1 and st["backlog"] == {"instances": 0, "labels": 0}
    assert st["samples"] == 80
    assert st["feedback"]["correct"] + st["feedback"]["incorrect"] == 80
    assert st["detectors"]["error_rate"]["steps"] == 80  # every label, in order
    assert st["detectors"]["prediction"]["steps"] == 80
    # Arming does not reset the label counter the rollout analysis reads.
    assert feedback_total(client, "v2") == 80
    after = predict(client, reference, "v2", range(80, 90))
    label(client, after)
    st = client.get("/v1/status", params={"wait": "idle"}).json()
    st = next(w for w in st["watched"] if w["version"] == "v2")
    assert st["detectors"]["error_rate"]["steps"] == 90 and feedback_total(client, "v2") == 90


def test_a_repeated_watch_changes_nothing_and_a_reset_rebuilds(client, reference):
    client.post("/v1/watch", json={"model": MODEL, "version": "v2"})
    first = armed(client, "v2")
    same = client.post("/v1/watch", json={"model": MODEL, "version": "v2"})
    assert same.status_code == 200 and not same.json()["started"], same.text
    assert same.json()["reset_at"] == first["reset_at"]
    # After a promotion the operator resets the new stable version's detectors.
    reset = client.post("/v1/watch", json={"model": MODEL, "version": "v2", "reset": True})
    assert reset.status_code == 202 and reset.json()["started"], reset.text
    st = armed(client, "v2")
    assert st["attempt"] == first["attempt"] + 1 and st["reset_at"] > first["reset_at"]
    assert st["samples"] == 0 and feedback_total(client, "v2") >= 80  # labels keep counting


def test_an_unknown_version_is_rejected_and_counted(client, reference):
    before = rejected(client, "unwatched_model")
    row = instance(reference.iloc[0])
    for model, version in (
        (MODEL, "v9"), (MODEL, "latest"), (MODEL, "champion"), ("other-model", "v1"),
        (MODEL, "v9"),  # again: answered from the service's memory of absent versions
    ):  # fmt: skip
        r = client.post("/", headers=payload_headers("request", f"r-{model}-{version}", model, version),
                        json={"instances": [row]})  # fmt: skip
        assert r.status_code == 404 and r.json()["reason"] == "unwatched_model", r.text
        assert version in r.json()["error"]
    assert rejected(client, "unwatched_model") == before + 5
    versions = {w["version"] for w in client.get("/v1/status").json()["unwatched"]}
    assert not versions & {"v9", "latest", "champion"}
    assert not series(client, "kubeloop_feedback_total", version="v9")


def test_unwatched_versions_are_capped(supervisor, registry, reference):
    with (
        serve(supervisor, registry, "drift-capped", KUBELOOP_DRIFT_UNWATCHED_LIMIT="1") as svc,
        httpx.Client(base_url=svc.url) as c,
    ):
        label(c, predict(c, reference, "v2", range(5)))
        rid, [(request, body), (response, answer)] = payload_pair(
            [instance(reference.iloc[5])], [0.1], [0], MODEL, "v2"
        )
        assert c.post("/", headers=request, content=body).status_code == 202
        assert feedback_total(c, "v2") == 5
        label(c, predict(c, reference, "v3", range(3)))  # v3 takes the only unwatched slot
        assert [w["version"] for w in c.get("/v1/status").json()["unwatched"]] == ["v3"]
        assert not series(c, "kubeloop_feedback_total", version="v2")  # no series left behind
        # v2's pending request went with it: its response pairs with nothing now.
        r = c.post("/", headers=response, content=answer)
        assert r.status_code == 409 and r.json()["reason"] == "unpaired_response", r.text
        # A watched version is the operator's choice and never evicted.
        assert c.post("/v1/watch", json={"model": MODEL, "version": "v1"}).status_code == 202
        label(c, predict(c, reference, "v2", range(10, 12)))
        assert entry(c, "v1")["state"] in ("arming", "armed") and feedback_total(c, "v2") == 2


def test_the_operators_watch_does_not_block_and_arming_counts_as_watched(supervisor, registry):
    with serve(supervisor, registry, "drift-operator") as svc:
        drift = DriftServiceClient(svc.url, status_ttl_seconds=0)
        actuators = SharedActuators(MODEL, registry, drift)
        assert drift.watched(MODEL) == frozenset()
        start = time.monotonic()
        actuators.watch_drift("v3", {})  # as the pass that starts a canary of v3
        assert time.monotonic() - start < WATCH_TIMEOUT_SECONDS
        with httpx.Client(base_url=svc.url) as c:
            assert entry(c, "v3")["state"] == "arming"
            # The next pass sees v3 watched while it is armed: the core asks no more.
            assert drift.watched(MODEL) == frozenset({"v3"})
            first = armed(c, "v3")
            assert drift.watched(MODEL) == frozenset({"v3"})
            # A promotion's WatchDrift resets the armed version (its drift evidence starts
            # at the reset), without blocking the pass either.
            start = time.monotonic()
            actuators.watch_drift("v3", {})
            assert time.monotonic() - start < WATCH_TIMEOUT_SECONDS
            again = armed(c, "v3")
            assert again["attempt"] == first["attempt"] + 1
            assert again["reset_at"] > first["reset_at"]
