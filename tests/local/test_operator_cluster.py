"""The kopf adapter at the client boundary: the exact creates, patches, runs and Events it sends.

The kubernetes client, kfp.Client and httpx talk to a local HTTP server that records every
request and keeps the objects it was sent; Prometheus is the real binary scraping a real
exporter process; the registry is a real local registry.
"""

from __future__ import annotations

import json
import re
import textwrap
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest
from kubeloop.operators.cluster.handlers import ClusterDeps, reconcile_resource
from kubeloop.operators.cluster.main import build_registry
from kubeloop.operators.drift_service import DriftServiceClient
from kubeloop.operators.metrics import RolloutMetrics
from kubeloop.operators.observe import PrometheusObserver
from kubeloop.operators.runs import KfpRunSubmitter
from kubeloop.operators.settings import load_operator_settings
from prometheus_client import CollectorRegistry

from kubeloop.local.ports import free_port
from kubeloop.local.prometheus import start_prometheus, write_targets
from kubeloop.local.supervisor import Supervisor
from kubeloop.registry import ModelRegistry

ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/ml/inferenceservices"
LEASE_PATH = "/apis/coordination.k8s.io/v1/namespaces/ml/leases"
SA_PATH = "/api/v1/namespaces/ml/serviceaccounts/team-a-kubeloop-s3"
KSERVE_CONFIG_PATH = "/api/v1/namespaces/kserve/configmaps/inferenceservice-config"


def kserve_config(mode: str) -> dict:
    """KServe's inferenceservice-config ConfigMap with ``mode`` as the default."""
    return {
        "metadata": {"name": "inferenceservice-config", "namespace": "kserve"},
        "data": {"deploy": json.dumps({"defaultDeploymentMode": mode})},
    }


EXPORTER = textwrap.dedent(
    """
    import sys, time
    from prometheus_client import Gauge, start_http_server
    g = Gauge("kubeloop_drift_detected", "d", ["model", "version", "detector", "feature"])
    g.labels("fraud-detector", "v1", "mmd", "_all").set(1)
    start_http_server(int(sys.argv[1]), addr="127.0.0.1")
    while True:
        time.sleep(1)
    """
)


def merge(base, patch):
    if not isinstance(patch, dict):
        return patch
    out = dict(base) if isinstance(base, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge(out.get(k), v)
    return out


class ApiRecorder(BaseHTTPRequestHandler):
    """Kubernetes, KFP and drift-service endpoints, recording each request."""

    state: dict

    def log_message(self, *args):
        pass

    def _send(self, code, body):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _handle(self, method):
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length)) if length else None
        st = self.state
        st["requests"].append((method, url.path, body))
        query = parse_qs(url.query)
        if url.path == f"{ISVC_PATH}/fraud-detector":
            if method == "GET":
                return (
                    self._send(200, st["isvc"])
                    if st["isvc"]
                    else self._send(404, {"kind": "Status", "code": 404})
                )
            if method == "PATCH":
                st["isvc"] = merge(st["isvc"], body)
                return self._send(200, st["isvc"])
        if method == "GET" and url.path in st["objects"]:
            # ServiceAccounts and ConfigMaps the test put there (404 otherwise), or the
            # status code it set for that path (403: RBAC refuses).
            found = st["objects"][url.path]
            if isinstance(found, int):
                return self._send(found, {"kind": "Status", "code": found})
            return self._send(200, found)
        if url.path == "/apis/kubeloop.io/v1alpha1/namespaces/ml/modeldeployments/fd":
            md = {
                "metadata": {"name": "fd"},
                "status": {"stableVersion": "v1", "candidateVersion": "v2"},
            }
            return self._send(200, md)
        if url.path == ISVC_PATH and method == "POST":
            st["isvc"] = body
            return self._send(201, body)
        if url.path == "/api/v1/namespaces/ml/events" and method == "POST":
            return self._send(201, body)
        if url.path == "/v1/watch":
            st["watched"].add((body["model"], body["version"]))
            return self._send(200, {"watching": body})
        if url.path == "/v1/status":
            watched = [{"model": m, "version": v} for m, v in sorted(st["watched"])]
            return self._send(200, {"watched": watched})
        if url.path.startswith(LEASE_PATH):
            return self._lease(method, url.path[len(LEASE_PATH) :].strip("/"), body)
        if url.path == "/apis/v2beta1/healthz":
            return self._send(200, {"multi_user": False})
        if url.path == "/apis/v2beta1/pipelines":
            return self._send(
                200,
                {
                    "pipelines": [{"pipeline_id": "pipe-1", "display_name": "kubeloop-training"}],
                    "total_size": 1,
                },
            )
        if url.path == "/apis/v2beta1/experiments" and method == "GET":
            return self._send(
                200,
                {
                    "experiments": [{"experiment_id": "exp-1", "display_name": "kubeloop"}],
                    "total_size": 1,
                },
            )
        if url.path == "/apis/v2beta1/runs" and method == "GET":
            wanted = json.loads(query["filter"][0])["predicates"][0][
                "string_value" if "string_value" in query["filter"][0] else "stringValue"
            ]
            runs = [r for r in st["runs"] if r["display_name"] == wanted]
            return self._send(200, {"runs": runs, "total_size": len(runs)})
        if url.path == "/apis/v2beta1/runs" and method == "POST":
            run = {**body, "run_id": f"run-{len(st['runs']) + 1}", "state": "RUNNING"}
            st["runs"].append(run)
            return self._send(200, run)
        return self._send(404, {"error": f"unexpected {method} {url.path}"})

    def _lease(self, method, name, body):
        """Leases with the API server's optimistic concurrency: a create of an existing
        name or a replace with a stale resourceVersion is 409 Conflict."""
        leases = self.state.setdefault("leases", {})
        with self.state.setdefault("lease_lock", threading.Lock()):
            if method == "GET":
                if name not in leases:
                    return self._send(404, {"kind": "Status", "code": 404, "reason": "NotFound"})
                return self._send(200, leases[name])
            key = body["metadata"]["name"]
            if method == "POST" and key in leases:
                return self._send(409, {"kind": "Status", "code": 409, "reason": "AlreadyExists"})
            if method == "PUT":
                have = leases.get(name)
                if have is None:
                    return self._send(404, {"kind": "Status", "code": 404})
                if body["metadata"].get("resourceVersion") != have["metadata"]["resourceVersion"]:
                    return self._send(409, {"kind": "Status", "code": 409, "reason": "Conflict"})
            self.state["lease_version"] = self.state.get("lease_version", 0) + 1
            stored = json.loads(json.dumps(body))
            stored["metadata"]["resourceVersion"] = str(self.state["lease_version"])
            leases[key] = stored
            return self._send(201 if method == "POST" else 200, stored)

    def do_GET(self):
        self._handle("GET")

    def do_PUT(self):
        self._handle("PUT")

    def do_POST(self):
        self._handle("POST")

    def do_PATCH(self):
        self._handle("PATCH")


@pytest.fixture
def api():
    state = {
        "requests": [],
        "isvc": None,
        "runs": [],
        "watched": set(),
        "objects": {
            SA_PATH: {"metadata": {"name": "team-a-kubeloop-s3"}, "secrets": [{"name": "s3"}]},
            KSERVE_CONFIG_PATH: kserve_config("Serverless"),
        },
    }
    handler = type("Recorder", (ApiRecorder,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_address[1]}"
    yield state
    server.shutdown()
    server.server_close()


@pytest.fixture
def prometheus(tmp_path):
    sup = Supervisor(tmp_path / "runtime")
    exporter, prom = free_port(), free_port()
    try:
        sup.start(
            "exporter", ["-c", EXPORTER, str(exporter)], health_url=f"http://127.0.0.1:{exporter}/"
        )
        write_targets(tmp_path / "prom", "exporter", [f"127.0.0.1:{exporter}"])
        start_prometheus(sup, tmp_path / "prom", prom, wait=False)
        sup.wait_healthy("exporter", 20)
        sup.wait_healthy("prometheus", 30)
        observer = PrometheusObserver(f"http://127.0.0.1:{prom}", min_window_seconds=5)
        deadline = time.monotonic() + 30
        while observer.drift("fraud-detector", "v1")[0] is not True:
            assert time.monotonic() < deadline, "Prometheus never scraped the exporter"
            time.sleep(0.5)
        yield observer
    finally:
        sup.stop_all()


def publish(registry: ModelRegistry, folder, run_id: str) -> str:
    folder.mkdir(exist_ok=True)
    (folder / "model.json").write_text(json.dumps({"run": run_id}))
    return registry.publish(
        "fraud-detector", folder, lineage={"pipeline_run_id": run_id}, gate={"passed": True}
    ).version


SPEC = {
    "model": {"name": "fraud-detector"},
    "serving": {
        "resources": {"cpu": "1", "memory": "2Gi", "gpu": 1},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
    "monitoring": {"driftDurationSeconds": 60},
    "retraining": {
        "pipeline": {"name": "kubeloop-training", "version": "pv-7"},
        "parameters": {"epochs": "3"},
    },
}


@pytest.mark.slow
def test_cluster_pass_sends_exact_creates_patches_runs_and_events(api, prometheus, tmp_path):
    prom_registry = CollectorRegistry()
    registry, status, run_pass = _cluster_pass_runner(
        api, tmp_path, observer=prometheus, metrics=prom_registry,
        # The release's placement (the chart's servingRuntime values), under the spec's.
        predictor_placement={
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "tolerations": [{"key": "dedicated", "value": "ml"}],
        },
    )  # fmt: skip

    def one_pass(at: float, annotations=None):
        return run_pass(annotations, at=at)

    # 1. First deployment: the InferenceService is created, the drift service told, an Event posted.
    sent = one_pass(0)
    assert [(m, p) for m, p, _ in sent] == [
        ("POST", ISVC_PATH),
        ("POST", "/v1/watch"),
        ("POST", "/api/v1/namespaces/ml/events"),
    ]
    body = sent[0][2]
    predictor = body["spec"]["predictor"]
    assert predictor["model"]["storageUri"] == f"{registry.uri}/fraud-detector/versions/v1"
    assert predictor["labels"] == {"kubeloop.io/model-version": "v1"}
    # The storage initializer downloads with this ServiceAccount's S3 credentials.
    assert predictor["serviceAccountName"] == "team-a-kubeloop-s3"
    assert predictor["model"]["resources"]["limits"] == {
        "cpu": "1",
        "memory": "2Gi",
        "nvidia.com/gpu": "1",
    }
    assert predictor["nodeSelector"] == {"nvidia.com/gpu.present": "true"}  # the release's
    assert predictor["tolerations"] == SPEC["serving"]["tolerations"]  # the spec's wins
    assert body["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    # A first deployment resets the version's detectors: its drift evidence starts there.
    assert sent[1][2] == {
        "model": "fraud-detector",
        "version": "v1",
        "registry_uri": registry.uri,
        "reset": True,
    }
    event = sent[2][2]
    assert (event["reason"], event["type"], event["action"]) == (
        "FirstDeployment",
        "Normal",
        "deploy",
    )
    assert (
        event["involvedObject"]["kind"] == "ModelDeployment"
        and event["involvedObject"]["uid"] == "uid-1"
    )
    assert registry.get_alias("fraud-detector", "champion") == "v1"
    assert status["stableVersion"] == "v1" and status["candidateVersion"] is None

    # KServe reports the service Ready.
    api["isvc"]["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}

    # 2. Drift seen: noted, not yet sustained; nothing sent but the Event.
    sent = one_pass(10)
    assert [(m, p, b["reason"]) for m, p, b in sent] == [
        ("POST", "/api/v1/namespaces/ml/events", "DriftDetected")
    ]
    assert status["drift"] == "Detected"

    # 3. Sustained past 60 s: exactly one run of the pinned pipeline version.
    sent = one_pass(100)
    runs = [b for m, p, b in sent if p == "/apis/v2beta1/runs"]
    assert len(runs) == 1
    assert runs[0]["display_name"] == "fraud-detector-v1-retrain-1"
    assert runs[0]["experiment_id"] == "exp-1"
    assert runs[0]["pipeline_version_reference"] == {
        "pipeline_id": "pipe-1",
        "pipeline_version_id": "pv-7",
    }
    # spec.retraining.dataWindow (7d) as the bounds the compiled pipeline declares
    end = datetime(2026, 3, 1, tzinfo=UTC) + timedelta(seconds=100)
    assert runs[0]["runtime_config"]["parameters"] == {
        "model_name": "fraud-detector",
        "window_start": (end - timedelta(days=7)).isoformat(),
        "window_end": end.isoformat(),
        "epochs": "3",
    }
    assert [b["reason"] for m, p, b in sent if p.endswith("/events")] == ["DriftSustained"]
    assert status["retraining"]["state"] == "Submitted"

    # 4. Replaying the pass (a restart, a timer tick): no second run.
    for at in (110, 120):
        sent = one_pass(at)
        assert not [p for m, p, b in sent if p == "/apis/v2beta1/runs"]
    assert status["retraining"]["state"] == "Running"

    # 5. The run succeeds and registers v2: the InferenceService is patched to canary v2 at 10 %.
    api["runs"][0]["state"] = "SUCCEEDED"
    publish(registry, tmp_path / "v2", api["runs"][0]["run_id"])
    sent = one_pass(400)
    patches = [b for m, p, b in sent if m == "PATCH"]
    assert len(patches) == 1
    assert patches[0]["spec"]["predictor"]["canaryTrafficPercent"] == 10
    assert patches[0]["spec"]["predictor"]["serviceAccountName"] == "team-a-kubeloop-s3"
    assert patches[0]["spec"]["predictor"]["model"]["storageUri"].endswith(
        "/fraud-detector/versions/v2"
    )
    # The placement travels with every patch; an unset field is removed (merge-patch null).
    assert patches[0]["spec"]["predictor"]["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert patches[0]["spec"]["predictor"]["affinity"] is None
    assert [b["reason"] for m, p, b in sent if p.endswith("/events")] == [
        "RunSucceeded",
        "NewCandidate",
    ]
    # The canary is watched too: its delayed labels are the live-accuracy evidence.
    assert [b["version"] for m, p, b in sent if p == "/v1/watch"] == ["v2"]
    assert (status["candidateVersion"], status["canaryPercent"], status["phase"]) == (
        "v2",
        10,
        "Canary",
    )

    # 6. The same pass again: the InferenceService already matches, so no patch, and the
    # drift service already watches both versions.
    sent = one_pass(401)
    assert not [b for m, p, b in sent if m == "PATCH"]
    assert not [p for m, p, b in sent if p == "/v1/watch"]

    # A restarted drift service has forgotten its watches: both versions are watched again.
    api["watched"].clear()
    sent = one_pass(401.5)
    assert [b["version"] for m, p, b in sent if p == "/v1/watch"] == ["v1", "v2"]

    # 7. `kubeloop rollout rollback` (an annotation): the canary is dropped, traffic back to v1.
    sent = one_pass(402, {"kubeloop.io/rollback": "v2"})
    patches = [b for m, p, b in sent if m == "PATCH"]
    assert patches[0]["spec"]["predictor"]["canaryTrafficPercent"] == 100
    assert patches[0]["spec"]["predictor"]["model"]["storageUri"].endswith("/versions/v1")
    events = [b for m, p, b in sent if p.endswith("/events")]
    # v1 still drifts, but the retraining cooldown holds a second run back.
    assert [(e["reason"], e["type"]) for e in events] == [
        ("ManualRollback", "Warning"),
        ("RetrainingCooldown", "Normal"),
    ]
    assert not [p for m, p, b in sent if p == "/apis/v2beta1/runs"]

    # The decision metrics the dashboards and alert rules read.
    def sample(name, **labels):
        return prom_registry.get_sample_value(name, {"deployment": "fraud-detector", **labels})

    decided = "kubeloop_rollout_decisions_total"
    assert sample(decided, decision="retrain", reason="DriftSustained") == 1
    assert sample(decided, decision="rollback", reason="ManualRollback") == 1
    assert sample("kubeloop_retraining_runs_total", outcome="submitted") == 1
    assert sample("kubeloop_retraining_runs_total", outcome="succeeded") == 1
    assert sample("kubeloop_rollout_canary_percent") == 0


def test_invalid_spec_reports_stalled_without_touching_the_cluster(api, tmp_path):
    from kubernetes import client as k8s

    api_client = k8s.ApiClient(k8s.Configuration(host=api["url"]))
    deps = ClusterDeps(
        settings=load_operator_settings(),
        custom=k8s.CustomObjectsApi(api_client),
        core=k8s.CoreV1Api(api_client),
        observer=PrometheusObserver(f"http://127.0.0.1:{free_port()}"),
        submitter=None,
        registry_for=lambda uri: ModelRegistry(str(tmp_path)),
        metrics=RolloutMetrics(CollectorRegistry()),
    )
    status = reconcile_resource(
        name="fd",
        namespace="ml",
        uid="u",
        generation=3,
        spec={"model": {"name": "fd"}, "rollout": {"steps": [50, 10]}},
        status=None,
        annotations=None,
        deps=deps,
    )
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "InvalidSpec" and "spec.rollout.steps" in stalled["message"]
    assert status["observedGeneration"] == 3
    assert api["requests"] == []


def _cluster_pass_runner(
    api, tmp_path, annotations=None, *, observer=None, metrics=None, monotonic=None, **settings
):
    """One ModelDeployment ``fraud-detector`` in namespace ``ml`` against the recording
    server and a local registry with v1. Prometheus is down unless an ``observer`` is given;
    ``settings`` are operator settings. Returns the registry, the resource's status and
    ``one_pass(commands=None, at=None)``, which reconciles once (``at`` seconds after the
    start) and returns the writes the pass sent."""
    import kfp
    from kubernetes import client as k8s

    registry = ModelRegistry(str(tmp_path / "registry"))
    publish(registry, tmp_path / "v1", "seed")
    api_client = k8s.ApiClient(k8s.Configuration(host=api["url"]))
    t0 = datetime(2026, 3, 1, tzinfo=UTC)
    clock = {"now": t0}
    deps = ClusterDeps(
        settings=load_operator_settings(drift_service_url=api["url"], **settings),
        custom=k8s.CustomObjectsApi(api_client),
        core=k8s.CoreV1Api(api_client),
        observer=observer or PrometheusObserver(f"http://127.0.0.1:{free_port()}", timeout=0.5),
        submitter=KfpRunSubmitter(kfp.Client(host=api["url"]), now=lambda: clock["now"]),
        registry_for=lambda uri: registry,
        metrics=RolloutMetrics(metrics or CollectorRegistry()),
        now=lambda: clock["now"],
        storage_service_account="team-a-kubeloop-s3",
        # Asked every pass here (the operator caches the watched set for a few seconds).
        drift=DriftServiceClient(api["url"], status_ttl_seconds=0),
        clock=monotonic or time.monotonic,
    )
    status: dict = {}

    def one_pass(commands=None, at=None):
        if at is not None:
            clock["now"] = t0 + timedelta(seconds=at)
        api["requests"].clear()
        new = reconcile_resource(
            name="fraud-detector",
            namespace="ml",
            uid="uid-1",
            generation=1,
            spec=SPEC,
            status=status,
            annotations={**(annotations or {}), **(commands or {})},
            deps=deps,
        )
        status.clear()
        status.update(new)
        return [(m, p, b) for m, p, b in api["requests"] if m != "GET"]

    return registry, status, one_pass


def _condition(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.mark.parametrize(
    ("stored", "missing"),
    [
        (None, "ServiceAccount team-a-kubeloop-s3 not found in namespace ml"),
        (
            {"metadata": {"name": "team-a-kubeloop-s3"}},
            "ServiceAccount ml/team-a-kubeloop-s3 names no Secret",
        ),
        (403, "may not read ServiceAccount team-a-kubeloop-s3 in namespace ml"),
    ],
)
def test_namespace_without_storage_gets_no_inference_service(api, tmp_path, stored, missing):
    if stored is None:
        del api["objects"][SA_PATH]
    else:
        api["objects"][SA_PATH] = stored
    _, status, one_pass = _cluster_pass_runner(api, tmp_path)
    sent = one_pass()
    assert not [p for m, p, b in sent if p.startswith(ISVC_PATH)]
    assert [(p, b["reason"]) for m, p, b in sent] == [
        ("/api/v1/namespaces/ml/events", "StorageNotConfigured")
    ]
    for type_ in ("Ready", "Stalled"):
        cond = _condition(status, type_)
        assert cond["reason"] == "StorageNotConfigured" and missing in cond["message"]
    # The ServiceAccount is created (the chart, an administrator): the next pass deploys.
    api["objects"][SA_PATH] = {
        "metadata": {"name": "team-a-kubeloop-s3"},
        "secrets": [{"name": "s3"}],
    }
    sent = one_pass()
    assert [(m, p) for m, p, b in sent][:1] == [("POST", ISVC_PATH)]
    assert _condition(status, "Stalled")["status"] == "False"


def test_found_storage_is_read_again_only_after_its_ttl(api, tmp_path):
    """A namespace whose storage ServiceAccount was found is not asked again every pass."""
    from kubeloop.operators.cluster.handlers import STORAGE_TTL_SECONDS

    clock = {"t": 0.0}
    _, _, one_pass = _cluster_pass_runner(api, tmp_path, monotonic=lambda: clock["t"])

    def reads() -> int:
        return sum(1 for m, p, b in api["requests"] if (m, p) == ("GET", SA_PATH))

    one_pass()
    assert reads() == 1
    clock["t"] = STORAGE_TTL_SECONDS - 1
    one_pass()
    assert reads() == 0
    clock["t"] = STORAGE_TTL_SECONDS + 1
    one_pass()
    assert reads() == 1


@pytest.mark.parametrize(
    ("config", "isvc_mode", "annotation", "splits"),
    [
        (kserve_config("Serverless"), None, None, True),
        (kserve_config("RawDeployment"), None, None, False),
        (kserve_config("Standard"), None, None, False),
        (kserve_config("Knative"), None, None, True),
        # KServe records the mode on the InferenceService: that wins over the ConfigMap.
        (kserve_config("Serverless"), "RawDeployment", None, False),
        (kserve_config("RawDeployment"), "Serverless", None, True),
        # The ModelDeployment's annotation is put on the InferenceService it creates.
        (kserve_config("Serverless"), None, "RawDeployment", False),
        # Unreadable or malformed ConfigMap: no canary on an unknown mode.
        (403, None, None, False),
        ({"metadata": {}, "data": {"deploy": "{not json"}}, None, None, False),
    ],
)
def test_canary_follows_the_kserve_deployment_mode(
    api, tmp_path, config, isvc_mode, annotation, splits
):
    api["objects"][KSERVE_CONFIG_PATH] = config
    md_annotations = {"serving.kserve.io/deploymentMode": annotation} if annotation else None
    registry, status, one_pass = _cluster_pass_runner(api, tmp_path, md_annotations)
    sent = one_pass()
    created = next(b for m, p, b in sent if (m, p) == ("POST", ISVC_PATH))
    assert (created["metadata"].get("annotations") or {}).get(
        "serving.kserve.io/deploymentMode"
    ) == annotation
    api["isvc"]["status"] = {"conditions": [{"type": "Ready", "status": "True"}]}
    if isvc_mode:
        api["isvc"]["status"]["deploymentMode"] = isvc_mode
    publish(registry, tmp_path / "v2", "run-2")
    sent = one_pass()
    patches = [b for m, p, b in sent if m == "PATCH"]
    if splits:
        assert [b["spec"]["predictor"]["canaryTrafficPercent"] for b in patches] == [10]
        assert (status["phase"], status["canaryPercent"]) == ("Canary", 10)
        return
    # No canary: v2 never reaches the InferenceService (in RawDeployment KServe would ignore
    # canaryTrafficPercent and send it all the traffic), and the status says why.
    assert patches == []
    assert (status["phase"], status["candidateVersion"], status["canaryPercent"]) == (
        "Stable",
        "v2",
        0,
    )
    progressing = _condition(status, "Progressing")
    assert progressing["reason"] == "CanaryNotSupported", progressing
    # A manual promotion replaces v1 with v2 at 100 %.
    sent = one_pass({"kubeloop.io/promote": "v2"})
    patches = [b for m, p, b in sent if m == "PATCH"]
    assert len(patches) == 1
    predictor = patches[0]["spec"]["predictor"]
    assert predictor["model"]["storageUri"].endswith("/versions/v2")
    assert predictor["canaryTrafficPercent"] == 100
    assert status["stableVersion"] == "v2" and status["phase"] == "Watching"


def test_kserve_config_is_read_once_per_ttl(api):
    """Every resource's pass asks for the mode; the ConfigMap is read once per TTL."""
    from kubeloop.operators.cluster.kserve import KServeConfig
    from kubernetes import client as k8s

    core = k8s.CoreV1Api(k8s.ApiClient(k8s.Configuration(host=api["url"])))
    clock = {"now": 0.0}
    config = KServeConfig(core, "kserve", ttl_seconds=60, clock=lambda: clock["now"])

    def reads():
        return sum(1 for m, p, b in api["requests"] if p == KSERVE_CONFIG_PATH)

    assert config.default_mode()[0] == "Serverless"
    api["objects"][KSERVE_CONFIG_PATH] = kserve_config("RawDeployment")
    clock["now"] = 59.0
    assert config.default_mode()[0] == "Serverless" and reads() == 1
    clock["now"] = 61.0
    assert config.default_mode()[0] == "RawDeployment" and reads() == 2
    api["objects"][KSERVE_CONFIG_PATH] = 403
    clock["now"] = 200.0
    mode, why = config.default_mode()
    assert mode is None and "cannot read ConfigMap kserve/inferenceservice-config: 403" in why


def test_kopf_registry_registers_thin_handlers_with_timer_from_settings():
    settings = load_operator_settings(poll_interval_seconds=7)
    registry = build_registry(settings, deps=None)
    timers = registry._spawning.get_all_handlers()
    assert [(t.id, t.interval) for t in timers] == [("analysis", 7)]
    changing = registry._changing.get_all_handlers()
    # Command annotations are watched key by key, so kopf's own annotations trigger nothing.
    assert [(h.id.split("/")[0], h.field) for h in changing] == [
        ("resume", None),
        ("create", None),
        ("spec", ("spec",)),
        ("promote", ("metadata", "annotations", "kubeloop.io/promote")),
        ("rollback", ("metadata", "annotations", "kubeloop.io/rollback")),
    ]


def test_rollout_cli_patches_the_resource_in_a_cluster(api, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from kubeloop.cli.main import _register, app

    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": api["url"]}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
    _register()
    runner = CliRunner()
    for args in (
        ["promote", "fd"],
        ["rollback", "fd", "--version", "v2"],
        ["pause", "fd"],
        ["resume", "fd"],
    ):
        result = runner.invoke(app, ["rollout", *args, "--cluster", "-n", "ml"])
        assert result.exit_code == 0, result.output
    patches = [b for m, p, b in api["requests"] if m == "PATCH"]
    assert patches == [
        {"metadata": {"annotations": {"kubeloop.io/promote": "v2"}}},
        {"metadata": {"annotations": {"kubeloop.io/rollback": "v2"}}},
        {"spec": {"rollout": {"paused": True}}},
        {"spec": {"rollout": {"paused": False}}},
    ]
    assert {p for m, p, b in api["requests"] if m == "PATCH"} == {
        "/apis/kubeloop.io/v1alpha1/namespaces/ml/modeldeployments/fd"
    }


def test_two_replicas_elect_one_leader_over_http(api):
    """Two electors with the real kubernetes client against the recording server: one
    leads at a time, renewals carry the resourceVersion read, MicroTimes have six digits,
    and a leader that stops hands the Lease to the other at once."""
    from kubeloop.operators.cluster.election import LeaderElector, LeaseLock
    from kubeloop.operators.cluster.leader import ElectionTiming
    from kubernetes import client as k8s

    timing = ElectionTiming(lease_duration=1.5, renew_deadline=1.0, retry_period=0.1)
    coordination = k8s.CoordinationV1Api(k8s.ApiClient(k8s.Configuration(host=api["url"])))
    active: list[str] = []
    overlaps: list[list[str]] = []
    log: list[tuple[str, str, float]] = []
    guard = threading.Lock()

    def replica(identity):
        elector = LeaderElector(
            LeaseLock(coordination, "kubeloop-operator", "ml", 1.0), identity, timing
        )
        stop = threading.Event()

        def started():
            with guard:
                active.append(identity)
                if len(active) > 1:
                    overlaps.append(list(active))
                log.append(("started", identity, time.monotonic()))

        def stopped():
            with guard:
                active.remove(identity)
                log.append(("stopped", identity, time.monotonic()))

        thread = threading.Thread(target=elector.run, args=(started, stopped, stop), daemon=True)
        thread.start()
        return stop, thread

    stop_a, thread_a = replica("operator-a")
    deadline = time.monotonic() + 5
    while not active and time.monotonic() < deadline:
        time.sleep(0.02)
    assert active == ["operator-a"]
    stop_b, thread_b = replica("operator-b")
    try:
        time.sleep(1.0)  # several rounds: a renews, b follows
        assert active == ["operator-a"]
        stop_a.set()
        thread_a.join(5)
        deadline = time.monotonic() + 5
        while active != ["operator-b"] and time.monotonic() < deadline:
            time.sleep(0.02)
        assert active == ["operator-b"]
    finally:
        stop_b.set()
        thread_b.join(5)
        stop_a.set()
    assert not overlaps, f"two leaders at once: {overlaps}"
    handover = next(t for e, who, t in log if (e, who) == ("started", "operator-b"))
    released = next(t for e, who, t in log if (e, who) == ("stopped", "operator-a"))
    assert handover - released < timing.lease_duration  # released, not waited out
    writes = [(m, b) for m, p, b in api["requests"] if p.startswith(LEASE_PATH) and m != "GET"]
    assert writes[0][0] == "POST" and writes[0][1]["spec"]["holderIdentity"] == "operator-a"
    stamp = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
    for method, body in writes:
        if method == "PUT":
            assert body["metadata"]["resourceVersion"]
        for key in ("acquireTime", "renewTime"):
            if body["spec"].get(key):
                assert stamp.match(body["spec"][key]), body["spec"][key]
    final = api["leases"]["kubeloop-operator"]["spec"]
    assert final.get("holderIdentity") is None  # b released it on stop too
    assert final["leaseTransitions"] >= 1


class DiscoveryOnly(BaseHTTPRequestHandler):
    """Enough of the API server for kopf to log in and start: discovery, the CRD list,
    and watch streams that end at once."""

    protocol_version = "HTTP/1.1"
    paths: list

    def log_message(self, *args):
        pass

    def _send(self, code, obj=None):
        body = json.dumps(obj).encode() if obj is not None else b""
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        from kubeloop.operators.crd_manifest import crd_manifest

        path = self.path.split("?")[0]
        self.paths.append(path)
        ext = "apiextensions.k8s.io/v1"
        if "watch=true" in self.path:
            time.sleep(0.2)
            return self._send(200)
        answers = {
            "/api": {"kind": "APIVersions", "versions": ["v1"]},
            "/api/v1": {"kind": "APIResourceList", "groupVersion": "v1", "resources": []},
            "/apis": {
                "kind": "APIGroupList",
                "groups": [
                    {
                        "name": "apiextensions.k8s.io",
                        "versions": [{"groupVersion": ext, "version": "v1"}],
                        "preferredVersion": {"groupVersion": ext, "version": "v1"},
                    }
                ],
            },
            f"/apis/{ext}": {
                "kind": "APIResourceList",
                "groupVersion": ext,
                "resources": [
                    {
                        "name": "customresourcedefinitions",
                        "singularName": "customresourcedefinition",
                        "namespaced": False,
                        "kind": "CustomResourceDefinition",
                        "verbs": ["list", "watch"],
                    }
                ],
            },
            f"/apis/{ext}/customresourcedefinitions": {
                "kind": "CustomResourceDefinitionList",
                "apiVersion": ext,
                "metadata": {"resourceVersion": "1"},
                "items": [crd_manifest()],
            },
        }
        if path in answers:
            return self._send(200, answers[path])
        return self._send(404, {"kind": "Status", "code": 404})


def test_kopf_runs_in_a_thread_and_stops_on_its_flag(tmp_path, monkeypatch):
    from kubeloop.operators.cluster.main import KopfThread, kopf_runner

    paths: list[str] = []
    handler = type("Discovery", (DiscoveryOnly,), {"paths": paths})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    # The registry's own login (kopf.login_via_client) reads this kubeconfig.
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    import kubernetes.config.kube_config as kube_config
    from kubernetes import client as k8s

    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
    default_configuration = k8s.Configuration.get_default_copy()
    registry = build_registry(load_operator_settings(), deps=None)

    kopf_thread = KopfThread(kopf_runner(registry, []), stop_timeout=10)
    try:
        for _ in range(2):  # leadership acquired, lost, acquired again
            seen = len(paths)
            kopf_thread.start()
            deadline = time.monotonic() + 10
            while "/apis/apiextensions.k8s.io/v1/customresourcedefinitions" not in paths[seen:]:
                assert time.monotonic() < deadline, f"kopf never scanned the API: {paths}"
                time.sleep(0.05)
            assert kopf_thread.running()
            started = time.monotonic()
            kopf_thread.stop()
            assert not kopf_thread.running()
            assert time.monotonic() - started < 5
    finally:
        kopf_thread.stop()
        server.shutdown()
        server.server_close()
        k8s.Configuration.set_default(default_configuration)  # login_via_client set it
