"""The closed loop on the local runtime, with real processes end to end.

Real: the registry, ``kubeloop.serving.predictor`` processes, ``kubeloop.router``
whose payload logger posts CloudEvents to kubeloop's drift service (its own venv, the
prediction detector only), Debian's Prometheus scraping it, the
operator as its own process (killed and restarted mid-canary), and retraining runs as
subprocesses that train and publish real model versions. Drift is injected by sending
the example generator's ``covariate`` traffic; the operator reacts to the drift gauge.
Thresholds are calibrated once per reference sample and kept in pytest's cache folder.
"""

from __future__ import annotations

import json
import os
import signal
import time
from datetime import datetime

import httpx
import pytest
import yaml

from kubeloop.local.drift import (
    PREDICTION_ONLY_DETECTORS as DRIFT_DETECTORS,
)
from kubeloop.local.drift import start_drift_service
from kubeloop.local.ports import free_port
from kubeloop.local.prometheus import start_prometheus, write_targets
from kubeloop.local.supervisor import Supervisor
from kubeloop.registry import ModelRegistry
from kubeloop.training.quick import publish_quick_version
from tests.support.fixtures import RouterTraffic, covariate_pools

pytestmark = pytest.mark.slow

MODEL = "fraud-detector"
SEED = 5  # v1 learns this seed's stationary data; traffic and v2 come from its covariate run


def wait_for(what: str, predicate, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def loop_env(tmp_path, request):
    sup = Supervisor(tmp_path / "runtime")
    registry = ModelRegistry(str(tmp_path / "registry"))
    publish_quick_version(registry, MODEL, seed=SEED)
    prom_port, router_port, drift_port = free_port(), free_port(), free_port()
    prom_root = tmp_path / "prom"
    state_dir = tmp_path / "runtime" / "operator"
    drift_url = f"http://127.0.0.1:{drift_port}"
    # Thresholds depend only on the reference sample and the detector settings.
    cache = (
        request.config.cache.mkdir("kubeloop-drift-thresholds")
        if getattr(request.config, "cache", None) is not None  # None: -p no:cacheprovider
        else tmp_path / "drift-cache"
    )
    env = {
        "KUBELOOP_HOME": str(tmp_path),
        "KUBELOOP_REGISTRY_URI": registry.uri,
        "KUBELOOP_OPERATOR_PROMETHEUS_URL": f"http://127.0.0.1:{prom_port}",
        "KUBELOOP_OPERATOR_ROUTER_URL": f"http://127.0.0.1:{router_port}",
        "KUBELOOP_OPERATOR_DRIFT_SERVICE_URL": drift_url,
        "KUBELOOP_OPERATOR_STATE_DIR": str(state_dir),
        "KUBELOOP_OPERATOR_POLL_INTERVAL_SECONDS": "1",
        "KUBELOOP_OPERATOR_MIN_WINDOW_SECONDS": "4",
        "KUBELOOP_OPERATOR_LOCAL_RUNNER": "kubeloop.local.operator.runjob:quick_train",
        "KUBELOOP_OPERATOR_PROMETHEUS_ROOT": str(prom_root),
        "KUBELOOP_OPERATOR_METRICS_PORT": "0",
    }
    deployment = {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": MODEL},
        "spec": {
            "model": {"name": MODEL},
            "rollout": {
                "steps": [50, 100],
                "minSamples": 100,
                "minStepSeconds": 8,
                "watchWindowSeconds": 4,
                "analysis": {
                    "maxErrorRateIncrease": 0.05,
                    "latencyP99Tolerance": 3.0,
                    "latencyP99SlackSeconds": 0.1,
                    # v2 learnt the shifted inputs, so its scores differ from v1's by design
                    "maxScoreShift": 0.4,
                },
            },
            "monitoring": {"driftDurationSeconds": 2},
            "retraining": {
                "parameters": {"seed": str(SEED), "quality": "good", "scenario": "covariate"},
                "maxAttempts": 2,
                "cooldownSeconds": 600,
            },
        },
    }
    manifest = tmp_path / f"{MODEL}.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    write_targets(prom_root, "drift", [f"127.0.0.1:{drift_port}"])
    start_prometheus(sup, prom_root, prom_port, wait=False)

    def start_drift():
        return start_drift_service(sup, registry.uri, drift_port, cache_dir=cache,
                                   detectors=DRIFT_DETECTORS, wait=False)  # fmt: skip

    start_drift()
    sup.start(
        "router",
        [
            "-m", "kubeloop.router", "--port", str(router_port),
            "--split-file", str(tmp_path / "split.json"), "--logger-url", drift_url,
        ],
        health_url=f"http://127.0.0.1:{router_port}/healthz",
    )  # fmt: skip
    stationary, drifted = covariate_pools(SEED)
    for name in ("prometheus", "router", "drift"):
        sup.wait_healthy(name, 90)
    # Calibrate v1's thresholds now (cached, so the operator's own watch takes a moment).
    warm = httpx.post(f"{drift_url}/v1/watch", json={"model": MODEL, "version": "v1"},
                      params={"wait": "armed", "timeout": "300"}, timeout=330)  # fmt: skip
    assert warm.status_code == 200, warm.text
    env_all = {**os.environ, **env}

    def start_operator():
        return sup.start(
            "operator", ["-m", "kubeloop.local.operator", "--apply", str(manifest)], env=env_all
        )

    def read_status():
        path = state_dir / f"{MODEL}.status.json"
        return json.loads(path.read_text())["status"] if path.exists() else {}

    def read_events():
        path = state_dir / f"{MODEL}.events.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def watched() -> dict[str, dict]:
        """Versions whose detectors are armed (arming ones have no detector state yet)."""
        body = httpx.get(f"{drift_url}/v1/status", timeout=10).json()
        return {m["version"]: m for m in body["watched"] if m["state"] == "armed"}

    traffic = RouterTraffic(f"http://127.0.0.1:{router_port}", stationary, drifted, rate=20)
    try:
        yield {
            "sup": sup,
            "registry": registry,
            "start_operator": start_operator,
            "status": read_status,
            "events": read_events,
            "runs": lambda: (
                sorted(p.name for p in (state_dir / "runs").glob("*"))
                if (state_dir / "runs").exists()
                else []
            ),
            "watched": watched,
            "start_drift": start_drift,
            "traffic": traffic,
            "router": f"http://127.0.0.1:{router_port}",
        }
    finally:
        traffic.stop.set()
        if traffic.thread.is_alive():
            traffic.thread.join(10)
        sup.stop("operator")
        sup.stop_all()


def test_drift_retrains_once_canaries_promotes_survives_restart_and_rolls_back_worse(loop_env):
    env = loop_env
    status, events, sup = env["status"], env["events"], env["sup"]
    env["start_operator"]()

    # v1 is deployed, the router serves it and the drift service watches it.
    wait_for(
        "v1 serving",
        lambda: (
            status().get("stableVersion") == "v1"
            and any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in status().get("conditions", [])
            )
        ),
        90,
    )
    split = httpx.get(f"{env['router']}/admin/split").json()
    assert split["stable"]["version"] == "v1" and split["canary"] is None
    wait_for("the drift service watching v1", lambda: "v1" in env["watched"](), 90)
    env["traffic"].thread.start()
    # The router's payload events reach the detectors, and v1 is judged on them: no drift.
    wait_for("v1's detector statistic", lambda: status().get("drift") == "None", 60)
    assert not env["runs"]()

    # Covariate traffic: the drift service's prediction detector alarms on v1, the
    # operator reads the gauge through Prometheus, and after 2 s submits one run.
    env["traffic"].drifted = True
    wait_for("a retraining run", lambda: env["runs"](), 60)
    assert env["runs"]() == ["fraud-detector-v1-retrain-1"]
    drift = next(e for e in events() if e["decision"] == "drift")
    assert drift["version"] == "v1" and drift["evidence"]["detectors"]["prediction"] == 1.0
    assert env["watched"]()["v1"]["detectors"]["prediction"]["detected"] is True

    # The run registers v2 (trained on covariate data), which becomes the canary at 50 %.
    wait_for(
        "v2 canary",
        lambda: status().get("phase") == "Canary" and status().get("candidateVersion") == "v2",
        120,
    )
    wait_for(
        "router split to v2",
        lambda: (
            (httpx.get(f"{env['router']}/admin/split").json().get("canary") or {}).get("version")
            == "v2"
        ),
        60,
    )

    # Kill the operator mid-canary (SIGKILL: no clean shutdown), then start it again.
    record = sup.running("operator")
    os.killpg(record.pid, signal.SIGKILL)
    wait_for("operator gone", lambda: sup.running("operator") is None, 10)
    assert status()["phase"] == "Canary"
    env["start_operator"]()

    # It resumes: the canary is judged on real traffic and promoted, then the watch passes.
    wait_for("v2 promoted", lambda: status().get("stableVersion") == "v2", 120)
    wait_for("watch window passed", lambda: status().get("phase") == "Stable", 60)
    assert env["registry"].get_alias(MODEL, "champion") == "v2"
    assert env["runs"]() == ["fraud-detector-v1-retrain-1"], (
        "a restart must not submit a second run"
    )
    decisions = [e["decision"] for e in events()]
    assert decisions.count("retrain") == 1
    promote = next(e for e in events() if e["decision"] == "promote")
    checks = promote["evidence"]["checks"]
    assert (
        checks["error_rate"]["verdict"] == "pass"
        and checks["score_distribution"]["verdict"] == "pass"
    )
    # v1's drift is not v2's: no drift decision names v2 between promotion and confirmation.
    confirm = next(e for e in events() if e["decision"] == "confirm" and e["version"] == "v2")
    spurious = [
        e
        for e in events()
        if e["decision"] == "drift"
        and e["version"] == "v2"
        and promote["time"] <= e["time"] <= confirm["time"]
    ]
    assert not spurious, spurious
    # The drift service watches v2 again since its promotion, on v2's own reference.
    promoted_at = datetime.fromisoformat(promote["time"].replace("Z", "+00:00")).timestamp()
    assert env["watched"]()["v2"]["seconds_since_reset"] < time.time() - promoted_at

    # A deliberately worse candidate (one training step) is canaried and rolled back.
    from kubeloop.local.operator.runjob import quick_train

    bad = quick_train(MODEL, env["registry"].uri, seed=2, quality="bad")
    assert bad.version == "v3"
    wait_for("v3 rolled back", lambda: "v3" in status().get("rejectedVersions", []), 120)
    final = status()
    assert final["stableVersion"] == "v2" and final["candidateVersion"] is None
    rollback = next(e for e in events() if e["decision"] == "rollback")
    assert rollback["version"] == "v3"
    assert rollback["evidence"]["checks"]["score_distribution"]["verdict"] == "fail"
    degraded = next(c for c in final["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True"
    wait_for(
        "router back on v2 only",
        lambda: httpx.get(f"{env['router']}/admin/split").json()["canary"] is None,
        30,
    )
    assert env["runs"]() == ["fraud-detector-v1-retrain-1"]
    assert env["traffic"].sent > 0 and env["traffic"].failed / env["traffic"].sent < 0.05

    # A restarted drift service has forgotten its watches; the operator watches v2 again.
    sup.stop("drift")
    env["start_drift"]()
    sup.wait_healthy("drift", 90)
    wait_for("the drift service watching v2 again", lambda: "v2" in env["watched"](), 60)
    assert env["runs"]() == ["fraud-detector-v1-retrain-1"]
