"""The closed loop on the local runtime, with real processes end to end.

Real: the registry, ``kubeloop.serving.predictor`` processes, ``kubeloop.serving.router``,
Debian's Prometheus, the operator as its own process (killed and restarted mid-canary),
and retraining runs as subprocesses that train and publish real model versions.
The drift signal comes from a small exporter that implements the drift service's
``POST /v1/watch`` contract and flags drift on the version the test names, because the
drift service itself needs minutes of traffic to calibrate; it is the one stand-in here.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import textwrap
import threading
import time

import httpx
import pytest
import yaml
from kubeloop.operators.local.prometheus import start_prometheus, write_targets

from kubeloop.data import fraud
from kubeloop.registry import ModelRegistry
from kubeloop.runtime import Supervisor
from kubeloop.testing import joined_frame, make_registry_version

pytestmark = pytest.mark.slow

DRIFT_SIGNAL = textwrap.dedent(
    """
    import json, sys
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from pathlib import Path
    from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Gauge, generate_latest
    port, trigger, log = int(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    watched = {}

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            watched[body["model"]] = body["version"]
            with log.open("a") as out:
                out.write(json.dumps(body) + "\\n")
            self.send_response(200); self.end_headers()

        def do_GET(self):
            reg = CollectorRegistry()
            g = Gauge("kubeloop_drift_detected", "d", ["model", "version", "detector", "feature"], registry=reg)
            drifting = trigger.read_text().strip() if trigger.exists() else ""
            for model, version in watched.items():
                g.labels(model, version, "mmd", "_all").set(1 if version == drifting else 0)
            data = generate_latest(reg)
            self.send_response(200)
            self.send_header("Content-Type", CONTENT_TYPE_LATEST)
            self.end_headers()
            self.wfile.write(data)

    ThreadingHTTPServer(("127.0.0.1", port), H).serve_forever()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, predicate, timeout: float, every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class Traffic:
    """Posts fraud transactions through the router from a background thread."""

    def __init__(self, url: str, instances: list[dict]) -> None:
        self.url, self.instances = url, instances
        self.stop = threading.Event()
        self.sent = self.failed = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        rng = random.Random(0)
        with httpx.Client(timeout=10) as client:
            while not self.stop.is_set():
                batch = rng.sample(self.instances, 10)
                try:
                    r = client.post(
                        f"{self.url}/v1/models/fraud-detector:predict",
                        json={"instances": batch},
                        headers={"X-Kubeloop-Key": str(rng.random())},
                    )
                    self.sent += 1
                    self.failed += r.status_code >= 500
                except httpx.HTTPError:
                    self.failed += 1
                    time.sleep(0.1)


@pytest.fixture
def loop_env(tmp_path):
    sup = Supervisor(tmp_path / "runtime")
    registry = ModelRegistry(str(tmp_path / "registry"))
    make_registry_version(registry, "fraud-detector", seed=0)
    prom_port, router_port, drift_port = free_port(), free_port(), free_port()
    prom_root = tmp_path / "prom"
    state_dir = tmp_path / "runtime" / "operator"
    env = {
        "KUBELOOP_HOME": str(tmp_path),
        "KUBELOOP_REGISTRY_URI": registry.uri,
        "KUBELOOP_OPERATOR_PROMETHEUS_URL": f"http://127.0.0.1:{prom_port}",
        "KUBELOOP_OPERATOR_ROUTER_URL": f"http://127.0.0.1:{router_port}",
        "KUBELOOP_OPERATOR_DRIFT_SERVICE_URL": f"http://127.0.0.1:{drift_port}",
        "KUBELOOP_OPERATOR_STATE_DIR": str(state_dir),
        "KUBELOOP_OPERATOR_POLL_INTERVAL_SECONDS": "1",
        "KUBELOOP_OPERATOR_MIN_WINDOW_SECONDS": "4",
        "KUBELOOP_OPERATOR_LOCAL_RUNNER": "kubeloop.operators.local.runjob:quick_train",
        "KUBELOOP_OPERATOR_PROMETHEUS_ROOT": str(prom_root),
        "KUBELOOP_OPERATOR_METRICS_PORT": "0",
    }
    deployment = {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fraud-detector"},
        "spec": {
            "model": {"name": "fraud-detector"},
            "rollout": {
                "steps": [50, 100],
                "minSamples": 150,
                "minStepSeconds": 8,
                "watchWindowSeconds": 4,
                "analysis": {
                    "maxErrorRateIncrease": 0.05,
                    "latencyP99Tolerance": 3.0,
                    "latencyP99SlackSeconds": 0.1,
                },
            },
            "monitoring": {"driftDurationSeconds": 2},
            "retraining": {"parameters": {"seed": "1", "quality": "good"}, "maxAttempts": 2},
        },
    }
    manifest = tmp_path / "fraud-detector.yaml"
    manifest.write_text(yaml.safe_dump(deployment))
    write_targets(prom_root, "drift", [f"127.0.0.1:{drift_port}"])
    start_prometheus(sup, prom_root, prom_port)
    sup.start(
        "router",
        [
            "-m",
            "kubeloop.serving.router",
            "--port",
            str(router_port),
            "--split-file",
            str(tmp_path / "split.json"),
        ],
        health_url=f"http://127.0.0.1:{router_port}/healthz",
    )
    sup.start(
        "drift",
        [
            "-c",
            DRIFT_SIGNAL,
            str(drift_port),
            str(tmp_path / "drift-trigger"),
            str(tmp_path / "watch.log"),
        ],
        health_url=f"http://127.0.0.1:{drift_port}/metrics",
    )
    for name in ("prometheus", "router", "drift"):
        sup.wait_healthy(name, 60)
    data = fraud.generate("stationary", days=2, n_accounts=100, seed=5)
    frame = joined_frame(data)[[*fraud.FRAUD_SCHEMA.feature_names, "account_id"]]
    instances = json.loads(frame.to_json(orient="records"))
    env_all = {**os.environ, **env}

    def start_operator():
        return sup.start(
            "operator", ["-m", "kubeloop.operators.local", "--apply", str(manifest)], env=env_all
        )

    traffic = Traffic(f"http://127.0.0.1:{router_port}", instances)
    try:
        yield {
            "sup": sup,
            "registry": registry,
            "start_operator": start_operator,
            "status": lambda: (
                json.loads((state_dir / "fraud-detector.status.json").read_text())["status"]
                if (state_dir / "fraud-detector.status.json").exists()
                else {}
            ),
            "events": lambda: (
                [
                    json.loads(x)
                    for x in (state_dir / "fraud-detector.events.jsonl").read_text().splitlines()
                ]
                if (state_dir / "fraud-detector.events.jsonl").exists()
                else []
            ),
            "runs": lambda: (
                sorted(p.name for p in (state_dir / "runs").glob("*"))
                if (state_dir / "runs").exists()
                else []
            ),
            "trigger": tmp_path / "drift-trigger",
            "watch_log": tmp_path / "watch.log",
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

    # v1 is deployed and the router serves it.
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
    env["traffic"].thread.start()

    # Drift on v1: sustained past 2 s, it starts exactly one retraining run.
    env["trigger"].write_text("v1")
    wait_for("a retraining run", lambda: env["runs"](), 60)
    assert env["runs"]() == ["fraud-detector-v1-retrain-1"]

    # The run registers v2, which becomes the canary at 50 %.
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
    assert env["registry"].get_alias("fraud-detector", "champion") == "v2"
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
    assert [json.loads(x)["version"] for x in env["watch_log"].read_text().splitlines()][-1] == "v2"

    # A deliberately worse candidate (one training step) is canaried and rolled back.
    from kubeloop.operators.local.runjob import quick_train

    bad = quick_train("fraud-detector", env["registry"].uri, seed=2, quality="bad")
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
    assert env["traffic"].sent > 0 and env["traffic"].failed / env["traffic"].sent < 0.05
