"""The Helm chart: lint, render every ci/ scenario, validate each manifest against the
Kubernetes schemas (kubernetes-validate, strict) and kubeloop's CRD, and check the
secure defaults and the values schema.

Needs helm in .venv-tools/bin (``make helm``); no cluster.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeloop"
HELM = ROOT / ".venv-tools" / "bin" / "helm"
SCENARIOS = sorted(p.name for p in (CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "kubeloop"
K8S_VERSION = "1.31.0"
# Kinds served by CRDs, checked by the functions below rather than kubernetes-validate.
CRD_KINDS = {
    "ServiceMonitor", "PodMonitor", "PrometheusRule", "ClusterServingRuntime", "RayCluster"
}  # fmt: skip
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job", "Pod"}


def _helm() -> str:
    if HELM.exists():
        return str(HELM)
    if os.environ.get("CI"):
        pytest.fail(f"helm not found at {HELM}: `make helm` installs it")
    pytest.skip(f"helm not found at {HELM}: run `make helm`")


def helm(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([_helm(), *args], capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def render(
    *extra: str,
    api_versions: tuple[str, ...] = ("monitoring.coreos.com/v1", "serving.kserve.io/v1alpha1"),
) -> list[dict]:
    args = ["template", "kl", str(CHART), "--namespace", NAMESPACE, "--kube-version", K8S_VERSION]
    for api in api_versions:
        args += ["--api-versions", api]
    out = helm(*args, *extra).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render("-f", str(CHART / "ci" / name)) for name in SCENARIOS}


def pod_spec(obj: dict) -> dict:
    if obj["kind"] == "Pod":
        return obj["spec"]
    return obj["spec"]["template"]["spec"]


def test_scenarios_exist() -> None:
    assert {"default-values.yaml", "external-s3-values.yaml", "namespaced-values.yaml"} <= set(
        SCENARIOS
    )


@pytest.mark.parametrize("scenario", [None, *SCENARIOS])
def test_helm_lint(scenario: str | None) -> None:
    args = ["lint", "--strict", str(CHART)]
    if scenario:
        args += ["-f", str(CHART / "ci" / scenario)]
    helm(*args)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_manifests_validate_against_kubernetes_schemas(rendered, scenario: str) -> None:
    docs = rendered[scenario]
    assert docs, f"{scenario} rendered nothing"
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{scenario}: {doc['kind']}/{doc['metadata']['name']}: {exc.message} at {list(exc.path)}"
            ) from exc


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_monitoring_objects_are_well_formed(rendered, scenario: str) -> None:
    for doc in rendered[scenario]:
        if doc["kind"] == "ServiceMonitor":
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            assert doc["spec"]["selector"]["matchLabels"]
            assert all(ep["path"] == "/metrics" and ep["port"] for ep in doc["spec"]["endpoints"])
        elif doc["kind"] == "PodMonitor":
            assert doc["spec"]["podMetricsEndpoints"][0]["port"]
        elif doc["kind"] == "PrometheusRule":
            groups = doc["spec"]["groups"]
            assert groups and all(g["rules"] for g in groups)
            for group in groups:
                for rule in group["rules"]:
                    assert ("alert" in rule) != ("record" in rule), rule
                    assert "kubeloop_" in rule["expr"] or "kubeloop-" in rule["expr"], rule
            jobs = set(re.findall(r'job="([^"]+)"', json.dumps(groups)))
            monitored = {
                r["replacement"]
                for d in rendered[scenario]
                if d["kind"] in ("ServiceMonitor", "PodMonitor")
                for ep in d["spec"].get("endpoints", d["spec"].get("podMetricsEndpoints", []))
                for r in ep.get("relabelings", [])
                if r.get("targetLabel") == "job"
            }
            assert jobs <= monitored, f"rules name jobs no monitor produces: {jobs - monitored}"


def test_prometheus_rule_and_dashboards_come_from_the_generated_files(rendered) -> None:
    docs = rendered["default-values.yaml"]
    generated = yaml.safe_load((CHART / "files" / "prometheusrule.yaml").read_text())
    source = yaml.safe_load((ROOT / "manifests" / "monitoring" / "prometheusrule.yaml").read_text())
    assert generated == source
    rule = next(d for d in docs if d["kind"] == "PrometheusRule")
    assert rule["spec"] == source["spec"]
    dashboards = sorted(p.name for p in (CHART / "files" / "dashboards").glob("*.json"))
    assert dashboards
    maps = [d for d in docs if d["kind"] == "ConfigMap" and "-dashboard-" in d["metadata"]["name"]]
    assert sorted(k for m in maps for k in m["data"]) == dashboards
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        ((name, text),) = m["data"].items()
        assert json.loads(text) == json.loads(
            (ROOT / "manifests/monitoring/dashboards" / name).read_text()
        )
    minimal = {d["kind"] for d in rendered["minimal-values.yaml"]}
    assert "PrometheusRule" not in minimal and "ConfigMap" not in minimal


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_standard_labels_and_name_lengths(rendered, scenario: str) -> None:
    for doc in rendered[scenario]:
        meta = doc["metadata"]
        assert len(meta["name"]) <= 63, meta["name"]
        labels = meta.get("labels", {})
        for key in (
            "app.kubernetes.io/name",
            "app.kubernetes.io/instance",
            "app.kubernetes.io/version",
            "app.kubernetes.io/managed-by",
            "helm.sh/chart",
        ):
            assert key in labels, f"{doc['kind']}/{meta['name']} lacks label {key}"
        if doc["kind"] not in {"ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime"}:
            assert meta.get("namespace"), f"{doc['kind']}/{meta['name']} has no namespace"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_secure_defaults_on_every_container(rendered, scenario: str) -> None:
    workloads = [d for d in rendered[scenario] if d["kind"] in WORKLOAD_KINDS]
    assert workloads
    for doc in workloads:
        spec = pod_spec(doc)
        where = f"{scenario}: {doc['kind']}/{doc['metadata']['name']}"
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        assert spec["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert not spec.get("hostNetwork") and not spec.get("hostPID"), where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True, where
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] >= 1000, where
            assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
            assert sc["seccompProfile"]["type"] == "RuntimeDefault", where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"
            image = c["image"]
            assert ":" in image.rsplit("/", 1)[-1] or "@sha256:" in image, f"{where}: {image}"
            assert not image.endswith(":latest"), where
        if doc["kind"] != "Deployment" or "operator" not in doc["metadata"]["name"]:
            # Only the operator talks to the API server.
            assert spec.get("automountServiceAccountToken") is False, where


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_plain_text_credentials(rendered, scenario: str) -> None:
    for doc in rendered[scenario]:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        for c in pod_spec(doc)["containers"]:
            for env in c.get("env", []):
                name = env["name"].upper()
                if any(word in name for word in ("PASSWORD", "SECRET", "ACCESS_KEY", "TOKEN")):
                    assert "secretKeyRef" in env.get("valueFrom", {}), (
                        f"{doc['metadata']['name']}: {env['name']} must come from a Secret"
                    )


def test_minio_secret_is_generated_not_from_values(rendered) -> None:
    secrets = [d for d in rendered["default-values.yaml"] if d["kind"] == "Secret"]
    assert len(secrets) == 1
    password = secrets[0]["data"]["AWS_SECRET_ACCESS_KEY"]
    assert password and password not in (CHART / "values.yaml").read_text()
    # The existing-Secret scenario creates none and references the user's Secret.
    ha = rendered["namespaced-values.yaml"]
    assert not [d for d in ha if d["kind"] == "Secret"]
    sts = next(d for d in ha if d["kind"] == "StatefulSet")
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in pod_spec(sts)["containers"][0]["env"]
        if "valueFrom" in e
    }
    assert refs == {"kubeloop-minio-root"}


def test_external_s3_replaces_minio(rendered) -> None:
    docs = rendered["external-s3-values.yaml"]
    assert not [d for d in docs if d["kind"] == "StatefulSet"]
    drift = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("drift")
    )
    env = {e["name"]: e for e in pod_spec(drift)["containers"][0]["env"]}
    assert env["KUBELOOP_S3__ENDPOINT"]["value"] == "s3.eu-west-1.amazonaws.com"
    assert env["KUBELOOP_S3__SECURE"]["value"] == "true"
    assert env["KUBELOOP_REGISTRY_URI"]["value"] == "s3://ml-models/kubeloop"
    assert (
        env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"]
        == "kubeloop-s3-credentials"
    )


def test_namespaced_operator_gets_a_role_and_no_cluster_wide_grant(rendered) -> None:
    docs = rendered["namespaced-values.yaml"]

    def watch_grants(kind: str) -> set[str]:
        return {
            d["metadata"]["namespace"]
            for d in docs
            if d["kind"] == kind
            and not d["metadata"]["name"].endswith(("-leader-election", "-kserve-config"))
        }

    assert watch_grants("Role") == watch_grants("RoleBinding") == {"ml-team-a", "ml-team-b"}
    cluster_role = next(d for d in docs if d["kind"] == "ClusterRole")
    granted = {g for rule in cluster_role["rules"] for g in rule["apiGroups"]}
    assert granted == {"apiextensions.k8s.io"}, "namespaced operator gets only CRD discovery"
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")
    )
    env = {e["name"]: e.get("value") for e in pod_spec(operator)["containers"][0]["env"]}
    assert json.loads(env["KUBELOOP_OPERATOR_NAMESPACES"]) == ["ml-team-a", "ml-team-b"]
    assert "KUBELOOP_OPERATOR_ALL_NAMESPACES" not in env
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"]["type"] == "RollingUpdate"


def _operator(docs: list[dict]) -> dict:
    return next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")
    )


def test_operator_replicas_elect_a_leader_on_a_lease(rendered) -> None:
    docs = rendered["ha-operator-values.yaml"]
    operator = _operator(docs)
    assert operator["spec"]["replicas"] == 2
    assert operator["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    env = {e["name"]: e for e in pod_spec(operator)["containers"][0]["env"]}
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert env["KUBELOOP_LEADER_ENABLED"]["value"] == "true"
    assert [env[f"KUBELOOP_LEADER_{k}_SECONDS"]["value"] for k in ("LEASE_DURATION", "RENEW_DEADLINE", "RETRY_PERIOD")] == ["20", "12", "3"]  # fmt: skip
    lease = env["KUBELOOP_LEADER_LEASE_NAME"]["value"]
    # The settings the operator loads from this env agree with the chart's schema.
    from kubeloop.operators.cluster.election import ElectionSettings

    loaded = ElectionSettings(
        POD_NAME="p",
        POD_NAMESPACE=NAMESPACE,
        **{k[len("KUBELOOP_LEADER_") :].lower(): e["value"] for k, e in env.items() if k.startswith("KUBELOOP_LEADER_")},
    )  # fmt: skip
    assert loaded.lease_name == lease and loaded.timing().renew_deadline == 12
    role = next(
        d
        for d in docs
        if d["kind"] == "Role" and d["metadata"]["name"].endswith("-leader-election")
    )
    assert role["metadata"]["namespace"] == NAMESPACE
    by_verbs = {tuple(r["verbs"]): r.get("resourceNames") for r in role["rules"]}
    assert by_verbs == {("create",): None, ("get", "update"): [lease]}
    assert {g for r in role["rules"] for g in r["apiGroups"]} == {"coordination.k8s.io"}
    binding = next(
        d
        for d in docs
        if d["kind"] == "RoleBinding" and d["metadata"]["name"] == role["metadata"]["name"]
    )
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == pod_spec(operator)["serviceAccountName"]
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    assert not any(d["kind"] == "PodDisruptionBudget" for d in rendered["default-values.yaml"])


def test_operator_without_leader_election_recreates_and_has_no_lease_role() -> None:
    docs = render("--set", "operator.leaderElection.enabled=false")
    assert _operator(docs)["spec"]["strategy"] == {"type": "Recreate"}
    assert not [d for d in docs if d["metadata"]["name"].endswith("-leader-election")]


def test_drift_logger_url_is_the_drift_service(rendered) -> None:
    docs = rendered["default-values.yaml"]
    svc = next(
        d for d in docs if d["kind"] == "Service" and d["metadata"]["name"].endswith("drift")
    )
    url = svc["metadata"]["annotations"]["kubeloop.io/logger-url"]
    assert url == f"http://{svc['metadata']['name']}.{NAMESPACE}.svc.cluster.local"
    assert svc["spec"]["ports"][0]["port"] == 80
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")
    )
    env = {e["name"]: e.get("value") for e in pod_spec(operator)["containers"][0]["env"]}
    assert url in env.values()


def test_every_pod_is_covered_by_a_network_policy(rendered) -> None:
    docs = rendered["namespaced-values.yaml"]
    policies = [d["spec"]["podSelector"] for d in docs if d["kind"] == "NetworkPolicy"]

    def covered(labels: dict) -> bool:
        for sel in policies:
            if not all(labels.get(k) == v for k, v in sel.get("matchLabels", {}).items()):
                continue
            if all(labels.get(e["key"]) in e["values"] for e in sel.get("matchExpressions", [])):
                return True
        return False

    for doc in docs:
        if doc["kind"] in WORKLOAD_KINDS:
            labels = (
                doc["metadata"]["labels"]
                if doc["kind"] == "Pod"
                else doc["spec"]["template"]["metadata"]["labels"]
            )
            assert covered(labels), f"{doc['kind']}/{doc['metadata']['name']} has no NetworkPolicy"


def _notes(release: str, namespace: str, *args: str) -> str:
    """The NOTES ``helm install --dry-run`` prints for the release (an empty string when
    it prints none)."""
    out = helm("install", release, str(CHART), "--dry-run=client", "-n", namespace, *args)
    return out.stdout.split("NOTES:", 1)[-1] if "NOTES:" in out.stdout else ""


def _upload_env(docs: list[dict]) -> dict[str, str | None]:
    """The pipeline upload Job's environment (name -> value)."""
    job = next(
        d for d in docs if d["kind"] == "Job" and d["metadata"]["name"].endswith("pipeline-upload")
    )
    return {e["name"]: e.get("value") for e in pod_spec(job)["containers"][0]["env"]}


def test_notes_and_sample_follow_the_release() -> None:
    """NOTES print the release's namespace, bucket and drift service, and the sample's
    InferenceService logs to the drift service of the release that runs the operator."""
    from kubeloop.operators.cluster.handlers import predictor_options
    from kubeloop.operators.crd import parse_spec

    notes = _notes("ml", "team-a", "--set", "registry.bucket=team-a-models")
    assert "kubectl -n team-a apply -f manifests/samples/fraud-detector.yaml" in notes
    assert "s3://team-a-models/" in notes
    assert "http://ml-kubeloop-drift.team-a.svc.cluster.local" in notes
    assert "kubeloop-registry" not in notes and " -n kubeloop" not in notes
    watched = _notes("ml", "team-a", "--set", "operator.watchNamespaces={models}")
    assert "kubectl -n models apply" in watched

    docs = render("-f", str(CHART / "ci" / "default-values.yaml"))
    operator = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("-operator")
    )
    env = {
        e["name"]: e.get("value")
        for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    sample = yaml.safe_load((ROOT / "manifests/samples/fraud-detector.yaml").read_text())
    options = predictor_options(
        parse_spec(sample["spec"]), "kubeloop-s3", env["KUBELOOP_OPERATOR_DRIFT_SERVICE_URL"]
    )
    assert options["logger_url"] == f"http://kl-kubeloop-drift.{NAMESPACE}.svc.cluster.local"
    # A spec's own loggerUrl still wins.
    sample["spec"]["serving"]["loggerUrl"] = "http://elsewhere"
    assert predictor_options(parse_spec(sample["spec"]), "sa", "http://drift")["logger_url"] == (
        "http://elsewhere"
    )


def test_monitoring_is_skipped_when_the_api_is_absent() -> None:
    docs = render(api_versions=())
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ServiceMonitor", "PodMonitor", "PrometheusRule"}
    notes = helm("install", "kl", str(CHART), "--dry-run=client", "-n", NAMESPACE).stdout
    assert "does not serve monitoring.coreos.com/v1" in notes


def test_helm_test_pod_checks_operator_and_drift(rendered) -> None:
    pod = next(d for d in rendered["default-values.yaml"] if d["kind"] == "Pod")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    urls = next(
        e["value"] for e in pod["spec"]["containers"][0]["env"] if e["name"] == "CHECK_URLS"
    )
    assert "operator" in urls and "/healthz" in urls and "drift" in urls and "/readyz" in urls


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--set", "operator.bogus=1"], "additional properties 'bogus' not allowed"),
        (["--set", "operator.replicas=-1"], "/operator/replicas"),
        (
            ["--set", "containerSecurityContext.allowPrivilegeEscalation=true"],
            "allowPrivilegeEscalation",
        ),
        (["--set", "podSecurityContext.runAsNonRoot=false"], "runAsNonRoot"),
        (["--set", "operator.image.pullPolicy=Sometimes"], "/operator/image/pullPolicy"),
        (["--set", "operator.watchNamespaces={Bad_NS}"], "/operator/watchNamespaces/0"),
        (["--set", "operator.watchNamespaces={a,a}"], "/operator/watchNamespaces"),
        (["--set", "operator.watchNamespace=ml"], "additional properties 'watchNamespace'"),
        (["--set", "operator.watchAllNamespaces=yes"], "/operator/watchAllNamespaces"),
        (["--set", "operator.replicas=11"], "/operator/replicas"),
        (
            ["--set", "operator.replicas=2", "--set", "operator.leaderElection.enabled=false"],
            "/operator/leaderElection/enabled",
        ),
        (
            ["--set", "operator.leaderElection.renewDeadlineSeconds=15"],
            "need retryPeriodSeconds < renewDeadlineSeconds < leaseDurationSeconds",
        ),
        (["--set", "operator.metricsPort=8080"], "/operator/metricsPort"),
        (["--set", "drift.port=70000"], "/drift/port"),
        (["--set", "drift.resources.limits=null"], "missing property 'limits'"),
        (["--set", "ray.cluster.enabled=yes"], "/ray/cluster/enabled"),
        (
            ["--set", "ray.cluster.enabled=true", "--set", "ray.cluster.worker.replicas=9"],
            "need minReplicas <= replicas <= maxReplicas, got 0, 9, 4",
        ),
        (["--set", "ray.cluster.worker.maxReplicas=0"], "/ray/cluster/worker/maxReplicas"),
        (
            [
                "--set",
                "ray.cluster.enabled=true",
                "--set",
                "ray.cluster.worker.resources.requests.nvidia\\.com/gpu=2",
            ],
            "ray.cluster.worker.resources: nvidia.com/gpu in requests must equal the one in limits",
        ),
        (
            [
                "--set",
                "servingRuntime.enabled=true",
                "--set",
                "servingRuntime.resources.requests.nvidia\\.com/gpu=1",
            ],
            "servingRuntime.resources: nvidia.com/gpu in requests must equal the one in limits (Kubernetes does not overcommit GPUs), got 1 and none",
        ),
        (["--set", "ray.cluster.clientPort=6379"], "/ray/cluster/clientPort"),
        (["--set", "ray.cluster.head.bogus=1"], "additional properties 'bogus' not allowed"),
        (
            ["--set", "servingRuntime.resources.limits.nvidia\\.com/gpu=-1"],
            "/servingRuntime/resources/limits/nvidia.com~1gpu",
        ),
        (
            ["--set", "servingRuntime.resources.limits.amd\\.com/gpu=1"],
            "additional properties 'amd.com/gpu' not allowed",
        ),
        (
            ["--set", "servingRuntime.tolerations[0].operator=Sometimes"],
            "/servingRuntime/tolerations/0/operator",
        ),
        (
            [
                "--set",
                "servingRuntime.tolerations[0].operator=Exists",
                "--set",
                "servingRuntime.tolerations[0].value=x",
            ],
            "/servingRuntime/tolerations/0/value",
        ),
        (["--set", "servingRuntime.tolerations[0].value=x"], "/servingRuntime/tolerations/0"),
        (["--set", "servingRuntime.nodeSelector.bad key=x"], "/servingRuntime/nodeSelector"),
        (["--set", "servingRuntime.affinity.nodeAfinity.x=1"], "'nodeAfinity' not allowed"),
        (["--set", "servingRuntime.runtimeClassName=NVIDIA"], "/servingRuntime/runtimeClassName"),
        (
            ["--set", "ray.cluster.worker.priorityClassName=Hi"],
            "/ray/cluster/worker/priorityClassName",
        ),
        (["--set", "minio.enabled=false"], "registry.external.endpoint is required"),
        (
            ["--set", "minio.enabled=false", "--set", "registry.external.endpoint=s3.example.com"],
            "registry.external.existingSecret is required",
        ),
    ],
)
def test_invalid_values_are_rejected_with_a_clear_message(args: list[str], message: str) -> None:
    proc = helm("template", "kl", str(CHART), *args, check=False)
    assert proc.returncode != 0, f"{args} was accepted"
    assert message in proc.stderr, proc.stderr


def test_kubectl_is_available_for_kustomize() -> None:
    assert shutil.which("kubectl"), "kubectl is needed for `kubectl kustomize`"


def test_every_value_is_documented() -> None:
    """Each leaf in values.yaml has its own comment, or sits in a block documented as a
    whole (a commented key none of whose children carry comments, e.g. `resources`)."""
    nodes: list[dict] = []
    stack: list[dict] = []
    previous = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        stripped = line.strip()
        m = re.match(r"^(\s*)([A-Za-z0-9_.\-/]+):(.*)$", line)
        if m and not stripped.startswith("#"):
            indent = len(m.group(1))
            while stack and stack[-1]["indent"] >= indent:
                stack.pop()
            node = {
                "key": f"{stack[-1]['key']}.{m.group(2)}" if stack else m.group(2),
                "indent": indent,
                "commented": previous.startswith("#"),
                "parents": list(stack),
                "children": [],
            }
            if stack:
                stack[-1]["children"].append(node)
            nodes.append(node)
            stack.append(node)
        if stripped:
            previous = stripped

    def whole_block(node: dict) -> bool:
        return node["commented"] and not any(c["commented"] for c in node["children"])

    undocumented = [
        n["key"]
        for n in nodes
        if not n["children"]
        and not n["commented"]
        and not any(whole_block(p) for p in n["parents"])
    ]
    assert len(nodes) > 50
    assert not undocumented, f"values without a comment: {undocumented}"


def test_serving_runtime_is_the_one_the_operator_names(rendered) -> None:
    from kserve.models import V1alpha1ServingRuntimeSpec, V1alpha1SupportedModelFormat
    from kubeloop.operators.cluster.handlers import predictor_options
    from kubeloop.operators.crd import parse_spec

    from kubeloop.serving.inference_service import inference_service

    runtime = next(
        d for d in rendered["default-values.yaml"] if d["kind"] == "ClusterServingRuntime"
    )
    sample = yaml.safe_load((ROOT / "manifests/samples/fraud-detector.yaml").read_text())
    isvc = inference_service(
        "fraud-detector",
        "v1",
        "s3://b/models",
        namespace="ml",
        **predictor_options(parse_spec(sample["spec"]), "kubeloop-s3"),
    )
    model = isvc["spec"]["predictor"]["model"]
    assert runtime["metadata"]["name"] == model["runtime"]
    formats = runtime["spec"]["supportedModelFormats"]
    assert model["modelFormat"]["name"] in {f["name"] for f in formats}
    # Field names as KServe's own API models know them.
    assert set(runtime["spec"]) <= set(V1alpha1ServingRuntimeSpec.attribute_map.values())
    for f in formats:
        assert set(f) <= set(V1alpha1SupportedModelFormat.attribute_map.values())
    assert set(runtime["spec"]["protocolVersions"]) <= {"v1", "v2", "grpc-v1", "grpc-v2"}
    # Each container is a valid core/v1 Container with the secure defaults.
    for c in runtime["spec"]["containers"]:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "x"},
            "spec": {"containers": [c]},
        }
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert "--model_name={{.Name}}" in c["args"]
    pod_monitor = next(d for d in rendered["default-values.yaml"] if d["kind"] == "PodMonitor")
    port_names = {p["name"] for c in runtime["spec"]["containers"] for p in c.get("ports", [])}
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in port_names


def test_serving_runtime_is_skipped_without_kserve() -> None:
    docs = render(api_versions=("monitoring.coreos.com/v1",))
    assert "ClusterServingRuntime" not in {d["kind"] for d in docs}


OPTIONAL_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ClusterServingRuntime"}
FORCE_OPTIONAL = (
    "--set", "monitoring.serviceMonitor.enabled=true",
    "--set", "monitoring.prometheusRule.enabled=true",
    "--set", "servingRuntime.enabled=true",
)  # fmt: skip


def test_forced_optional_objects_render_offline() -> None:
    """`enabled: true` renders the CRD-served objects with no --api-versions (GitOps tools
    render offline); `auto` (the default) leaves them out there; false leaves them out even
    where the APIs are served."""
    forced = render(*FORCE_OPTIONAL, api_versions=())
    kinds = [d["kind"] for d in forced]
    assert set(kinds) >= OPTIONAL_KINDS
    assert kinds.count("ServiceMonitor") == 2
    detected = render(*FORCE_OPTIONAL)
    assert [d for d in forced if d["kind"] in OPTIONAL_KINDS] == [
        d for d in detected if d["kind"] in OPTIONAL_KINDS
    ], "forcing renders what detection would render"
    assert not OPTIONAL_KINDS & {d["kind"] for d in render(api_versions=())}
    off = render(
        "--set", "monitoring.serviceMonitor.enabled=false",
        "--set", "monitoring.prometheusRule.enabled=false",
        "--set", "servingRuntime.enabled=false",
    )  # fmt: skip
    assert not OPTIONAL_KINDS & {d["kind"] for d in off}
    proc = helm("template", "kl", str(CHART), "--set", "servingRuntime.enabled=yes", check=False)
    assert proc.returncode != 0 and "/servingRuntime/enabled" in proc.stderr


@pytest.mark.parametrize("scenario", ["default-values.yaml", "namespaced-values.yaml"])
def test_operator_environment_loads_into_its_settings(rendered, scenario: str, monkeypatch) -> None:
    from kubeloop.operators.settings import OperatorSettings, load_operator_settings

    operator = next(
        d
        for d in rendered[scenario]
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("operator")
    )
    env = {
        e["name"]: e["value"] for e in pod_spec(operator)["containers"][0]["env"] if "value" in e
    }
    prefix = "KUBELOOP_OPERATOR_"
    ours = {k: v for k, v in env.items() if k.startswith(prefix)}
    fields = {name.upper() for name in OperatorSettings.model_fields}
    assert {k.removeprefix(prefix) for k in ours} <= fields
    for key, value in ours.items():
        monkeypatch.setenv(key, value)
    settings = load_operator_settings()
    assert settings.drift_service_url == ours["KUBELOOP_OPERATOR_DRIFT_SERVICE_URL"]
    assert settings.metrics_port == 8081 and settings.kfp_host.startswith("http://ml-pipeline.")
    namespaced = scenario.startswith("namespaced")
    assert settings.watched_namespaces() == (
        ["ml-team-a", "ml-team-b"] if namespaced else [NAMESPACE]
    )
    assert settings.kserve_namespace == "kserve"
    # feast.enabled (the namespaced scenario): predictors mount the release's Feast config.
    assert settings.feast_config_map == ("kl-kubeloop-feast" if namespaced else None)


def test_predictors_in_every_served_namespace_read_the_feast_config(rendered) -> None:
    """With feast.enabled each served namespace has the feature_store.yaml ConfigMap the
    operator mounts into its InferenceServices, and the serving runtime carries what reading
    it takes: the S3 endpoint of Feast's registry (FEAST_S3_ENDPOINT_URL) and credentials
    from Secrets named as in the release (copied into served namespaces, as for storage)."""
    from kubeloop.operators.cluster.handlers import predictor_options
    from kubeloop.operators.crd import parse_spec

    from kubeloop.serving.inference_service import inference_service

    docs = rendered["namespaced-values.yaml"]
    maps = {
        d["metadata"]["namespace"]: d["data"]["feature_store.yaml"]
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kl-kubeloop-feast"
    }
    assert set(maps) == {NAMESPACE, "ml-team-a", "ml-team-b"} and len(set(maps.values())) == 1
    server = next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "kl-kubeloop-feast"
    )
    runtime = next(d for d in docs if d["kind"] == "ClusterServingRuntime")
    envs = [pod_spec(server)["containers"][0]["env"], runtime["spec"]["containers"][0]["env"]]
    for env in envs:
        named = {e["name"]: e for e in env}
        assert named["FEAST_S3_ENDPOINT_URL"]["value"] == (
            f"http://kl-kubeloop-minio.{NAMESPACE}.svc.cluster.local:9000"
        )
        assert (
            named["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == "kubeloop-minio-root"
        )
    sample = yaml.safe_load((ROOT / "manifests/samples/fraud-detector.yaml").read_text())
    options = predictor_options(
        parse_spec(sample["spec"]), "kubeloop-s3", "http://drift/", None, "kl-kubeloop-feast"
    )
    isvc = inference_service("fraud-detector", "v1", "s3://r/m", namespace="ml-team-a", **options)
    model = isvc["spec"]["predictor"]["model"]
    assert model["args"] == ["--logger-url", "http://drift/", "--feast-repo", "/etc/kubeloop/feast"]
    assert isvc["spec"]["predictor"]["volumes"] == [
        {"name": "feast-config", "configMap": {"name": "kl-kubeloop-feast"}}
    ]


def test_drift_service_accepts_the_chart_arguments(rendered) -> None:
    import ast

    source = (ROOT / "kubeloop" / "drift" / "service.py").read_text()
    flags = {
        arg.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_argument"
        for arg in node.args
        if isinstance(arg, ast.Constant) and str(arg.value).startswith("--")
    }
    drift = next(
        d
        for d in rendered["default-values.yaml"]
        if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("drift")
    )
    args = pod_spec(drift)["containers"][0]["args"]
    assert args
    for arg in args:
        assert arg.split("=", 1)[0] in flags, f"the drift service has no {arg} flag"


def test_predictor_accepts_the_serving_runtime_arguments(rendered) -> None:
    from kubeloop.serving.server import predictor_parser

    runtime = next(
        d for d in rendered["default-values.yaml"] if d["kind"] == "ClusterServingRuntime"
    )
    args = [
        a.replace("{{.Name}}", "fraud-detector") for a in runtime["spec"]["containers"][0]["args"]
    ]
    parsed = predictor_parser().parse_args([*args, "--bind_host", "0.0.0.0"])
    assert parsed.model_name == "fraud-detector" and parsed.model_dir == "/mnt/models"
    assert parsed.http_port == 8080


def test_drift_threshold_cache_persists_when_asked(rendered) -> None:
    def drift_of(scenario: str) -> tuple[dict, list[dict]]:
        docs = rendered[scenario]
        dep = next(
            d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("drift")
        )
        return dep, [d for d in docs if d["kind"] == "PersistentVolumeClaim"]

    dep, pvcs = drift_of("default-values.yaml")
    home = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "home")
    assert "emptyDir" in home and not pvcs
    dep, pvcs = drift_of("namespaced-values.yaml")
    home = next(v for v in pod_spec(dep)["volumes"] if v["name"] == "home")
    assert home["persistentVolumeClaim"]["claimName"] == pvcs[0]["metadata"]["name"]
    assert pvcs[0]["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert dep["spec"]["strategy"]["type"] == "Recreate"
    args = pod_spec(dep)["containers"][0]["args"]
    assert "--cache-dir=/var/lib/kubeloop/drift-cache" in args


@pytest.mark.parametrize("scenario", ["default-values.yaml", "external-s3-values.yaml"])
def test_predictor_storage_account_uses_the_registry_credentials(rendered, scenario: str) -> None:
    docs = rendered[scenario]
    sa = next(
        d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "kubeloop-s3"
    )
    drift = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("drift")
    )
    env = {e["name"]: e for e in pod_spec(drift)["containers"][0]["env"]}
    assert (
        sa["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"]
        == env["KUBELOOP_S3__ENDPOINT"]["value"]
    )
    ref = env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]
    # KServe's storage initializer reads AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY from it.
    assert sa["secrets"] == [{"name": ref["name"]}] and ref["key"] == "AWS_ACCESS_KEY_ID"


def test_private_ca_bundle_reaches_every_s3_client(rendered) -> None:
    """registry.caBundle mounts the bundle into each pod that reads S3 (and the upload Job
    and the serving runtime), with SSL_CERT_FILE and AWS_CA_BUNDLE naming the mounted file."""
    docs = rendered["private-ca-values.yaml"]
    path = "/etc/kubeloop/ca/ca-bundle.pem"
    pods = [d for d in docs if d["kind"] in WORKLOAD_KINDS and d["kind"] != "Pod"]
    runtime = next(d for d in docs if d["kind"] == "ClusterServingRuntime")
    specs = {f"{d['kind']}/{d['metadata']['name']}": pod_spec(d) for d in pods}
    specs["ClusterServingRuntime"] = runtime["spec"]
    names = {n.split("/", 1)[1].removeprefix("kl-kubeloop-") for n in specs if "/" in n}
    assert {"operator", "drift", "feast", "pipeline-upload"} <= names, names
    for name, spec in specs.items():
        volume = next(v for v in spec["volumes"] if v["name"] == "s3-ca-bundle")
        assert volume["configMap"] == {
            "name": "corp-ca-bundle",
            "items": [{"key": "ca-bundle.pem", "path": "ca-bundle.pem"}],
        }, name
        for c in spec["containers"]:
            env = {e["name"]: e.get("value") for e in c.get("env", [])}
            assert env.get("SSL_CERT_FILE") == env.get("AWS_CA_BUNDLE") == path, (name, c["name"])
            mount = next(m for m in c["volumeMounts"] if m["name"] == "s3-ca-bundle")
            assert path.startswith(mount["mountPath"] + "/") and mount["readOnly"], name
    # A Secret works the same way; without caBundle nothing is mounted; not both at once.
    with_secret = render("--set", "registry.caBundle.secretName=corp-ca")
    operator = next(
        d
        for d in with_secret
        if d["metadata"]["name"] == "kl-kubeloop-operator" and d["kind"] == "Deployment"
    )
    assert {"secretName": "corp-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]} in [
        v.get("secret") for v in pod_spec(operator)["volumes"]
    ]
    assert "s3-ca-bundle" not in json.dumps(rendered["default-values.yaml"])
    both = helm(
        "template", "kl", str(CHART),
        "--set", "registry.caBundle.secretName=a", "--set", "registry.caBundle.configMapName=b",
        check=False,
    )  # fmt: skip
    assert both.returncode != 0 and "/registry/caBundle" in both.stderr


def _storage_accounts(docs: list[dict]) -> dict[str, dict]:
    return {
        d["metadata"]["namespace"]: d
        for d in docs
        if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "kubeloop-s3"
    }


def test_every_served_namespace_gets_the_storage_account_and_its_secret() -> None:
    """The operator checks for the storage ServiceAccount where it deploys: the chart puts it
    in each served namespace, naming a Secret that exists there (the generated MinIO
    credentials are copied, byte for byte)."""
    docs = render("--set", "operator.watchNamespaces={ml-a,ml-b}")
    accounts = _storage_accounts(docs)
    assert set(accounts) == {"ml-a", "ml-b"}  # the release namespace is not served
    secrets = {
        d["metadata"]["namespace"]: d
        for d in docs
        if d["kind"] == "Secret" and d["metadata"]["name"] == "kl-kubeloop-minio"
    }
    assert set(secrets) == {NAMESPACE, "ml-a", "ml-b"}
    for ns, account in accounts.items():
        assert account["secrets"] == [{"name": "kl-kubeloop-minio"}]
        assert secrets[ns]["data"] == secrets[NAMESPACE]["data"]
        assert account["metadata"]["annotations"]["serving.kserve.io/s3-endpoint"] == (
            f"kl-kubeloop-minio.{NAMESPACE}.svc.cluster.local:9000"
        )
    # Only the release namespace's Secret is kept on uninstall (it holds MinIO's password).
    assert [ns for ns, d in secrets.items() if d["metadata"].get("annotations")] == [NAMESPACE]
    podmonitor = next(d for d in docs if d["kind"] == "PodMonitor")
    assert podmonitor["spec"]["namespaceSelector"] == {"matchNames": ["ml-a", "ml-b"]}
    minio_policy = next(
        d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("minio")
    )
    peers = [
        p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for p in minio_policy["spec"]["ingress"][0]["from"]
        if p.get("namespaceSelector", {}).get("matchLabels")
    ]
    assert {"ml-a", "ml-b"} <= set(peers)


def test_an_existing_secret_is_named_never_copied(rendered) -> None:
    docs = rendered["namespaced-values.yaml"]
    assert {ns: a["secrets"] for ns, a in _storage_accounts(docs).items()} == {
        "ml-team-a": [{"name": "kubeloop-minio-root"}],
        "ml-team-b": [{"name": "kubeloop-minio-root"}],
    }
    assert not [d for d in docs if d["kind"] == "Secret"]
    notes = _notes("ml", "kubeloop", "-f", str(CHART / "ci" / "namespaced-values.yaml"))
    assert "reconciles ModelDeployments only in: ml-team-a, ml-team-b" in notes
    assert 'Secret "kubeloop-minio-root"' in notes and "ml-team-a, ml-team-b too" in notes


def test_all_namespaces_is_an_explicit_opt_in_with_storage_where_listed() -> None:
    default = render()
    assert set(_storage_accounts(default)) == {NAMESPACE}
    assert not any(
        e.get("name") == "KUBELOOP_OPERATOR_ALL_NAMESPACES"
        for e in pod_spec(_operator(default))["containers"][0]["env"]
    )
    docs = render(
        "--set", "operator.watchAllNamespaces=true", "--set", "operator.watchNamespaces={ml-a}"
    )  # fmt: skip
    env = {e["name"]: e.get("value") for e in pod_spec(_operator(docs))["containers"][0]["env"]}
    assert env["KUBELOOP_OPERATOR_ALL_NAMESPACES"] == "true"
    assert "KUBELOOP_OPERATOR_NAMESPACES" not in env
    assert set(_storage_accounts(docs)) == {"ml-a"}
    assert not [
        d
        for d in docs
        if d["kind"] == "Role"
        and not d["metadata"]["name"].endswith(("-leader-election", "-kserve-config"))
    ]
    podmonitor = next(d for d in docs if d["kind"] == "PodMonitor")
    assert podmonitor["spec"]["namespaceSelector"] == {"any": True}
    notes = _notes("ml", "kubeloop", "--set", "operator.watchAllNamespaces=true")
    assert "every namespace" in notes and "StorageNotConfigured" in notes


@pytest.mark.parametrize("scenario", ["default-values.yaml", "external-s3-values.yaml"])
def test_bucket_job_runs_the_preflight_against_the_release_endpoint(
    rendered, scenario: str, monkeypatch
) -> None:
    """The bucket Job runs for MinIO and for an external endpoint alike: the kubeloop CLI's
    ensure-bucket with the release's endpoint, credentials and bucket, which it reads back
    through kubeloop's settings."""
    from typer.testing import CliRunner

    from kubeloop.cli.main import _register, app
    from kubeloop.settings import get_settings

    docs = rendered[scenario]
    job = next(
        d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "kl-kubeloop-bucket"
    )
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    container = pod_spec(job)["containers"][0]
    assert container["command"] == [
        "python", "-m", "kubeloop.cli.main", "registry", "ensure-bucket",
    ]  # fmt: skip
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    env = {e["name"]: e for e in container["env"]}
    external = scenario.startswith("external")
    secret = "kubeloop-s3-credentials" if external else "kl-kubeloop-minio"
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}
    values = {k: e["value"] for k, e in env.items() if "value" in e}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.registry_uri == (
            "s3://ml-models/kubeloop" if external else "s3://kubeloop-registry/models"
        )
        assert settings.s3.endpoint == (
            "s3.eu-west-1.amazonaws.com"
            if external
            else f"kl-kubeloop-minio.{NAMESPACE}.svc.cluster.local:9000"
        )
        assert (settings.s3.secure, settings.s3.region) == (
            (True, "eu-west-1") if external else (False, None)
        )
    finally:
        get_settings.cache_clear()
    _register()
    assert CliRunner().invoke(app, ["registry", "ensure-bucket", "--help"]).exit_code == 0
    assert job["spec"]["backoffLimit"] == (2 if external else 10)
    off = render("--set", "registry.bucketJob.enabled=false")
    assert not [d for d in off if d["kind"] == "Job" and d["metadata"]["name"].endswith("bucket")]


# KubeRay's RayCluster API (ray.io/v1, ray-project/kuberay ray-operator/apis/ray/v1/
# raycluster_types.go): the fields the chart may set, and those the API requires.
RAYCLUSTER_SPEC_FIELDS = {
    "suspend", "managedBy", "autoscalerOptions", "headServiceAnnotations",
    "enableInTreeAutoscaling", "gcsFaultToleranceOptions", "headGroupSpec", "rayVersion",
    "workerGroupSpecs",
}  # fmt: skip
RAY_HEAD_FIELDS = {"template", "headService", "enableIngress", "rayStartParams", "serviceType"}
RAY_WORKER_FIELDS = {
    "suspend", "groupName", "replicas", "minReplicas", "maxReplicas", "idleTimeoutSeconds",
    "rayStartParams", "template", "scaleStrategy", "numOfHosts",
}  # fmt: skip
RAY_AUTOSCALER_FIELDS = {
    "resources", "image", "imagePullPolicy", "securityContext", "idleTimeoutSeconds",
    "upscalingMode", "env", "envFrom", "volumeMounts",
}  # fmt: skip
PLACEMENT_KEYS = (
    "nodeSelector",
    "tolerations",
    "affinity",
    "runtimeClassName",
    "priorityClassName",
)


def _as_pod(template: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ray", **template.get("metadata", {})}, "spec": template["spec"]}  # fmt: skip


def _check_secure_container(c: dict, where: str) -> None:
    sc = c["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False, where
    assert sc["runAsNonRoot"] is True and sc["capabilities"]["drop"] == ["ALL"], where
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(c["resources"][kind]), f"{where}: {kind}"


def test_gpu_ray_scenario_places_predictors_and_trains_on_a_ray_cluster(
    rendered, monkeypatch
) -> None:
    """The production-shaped scenario (ci/gpu-ray-values.yaml): external S3, GPU predictors
    on the GPU node pool, a RayCluster with a GPU worker group that the train task joins,
    three operator replicas, NetworkPolicies. Everything Kubernetes knows is validated by
    test_manifests_validate_against_kubernetes_schemas; the RayCluster is checked here
    against KubeRay's API, its pod templates against core/v1."""
    from kubeloop.operators.cluster.handlers import predictor_options
    from kubeloop.operators.crd import parse_spec
    from kubeloop.operators.settings import load_operator_settings
    from kubeloop.pipelines.cluster import PipelineCluster

    from kubeloop.images import image
    from kubeloop.serving.inference_service import inference_service

    docs = rendered["gpu-ray-values.yaml"]
    values = yaml.safe_load((CHART / "ci" / "gpu-ray-values.yaml").read_text())
    kinds = [d["kind"] for d in docs]
    assert "StatefulSet" not in kinds  # external S3, no MinIO
    operator = _operator(docs)
    assert operator["spec"]["replicas"] == 3
    assert any(d["kind"] == "PodDisruptionBudget" for d in docs)
    policies = {d["metadata"]["name"]: d for d in docs if d["kind"] == "NetworkPolicy"}
    assert {"kl-kubeloop-operator", "kl-kubeloop-drift", "kl-kubeloop-ray"} <= set(policies)

    # GPU predictors: the serving runtime's container asks for the GPU; the operator reads
    # the node placement from its environment and puts it on the InferenceService.
    runtime = next(d for d in docs if d["kind"] == "ClusterServingRuntime")
    limits = runtime["spec"]["containers"][0]["resources"]["limits"]
    assert limits["nvidia.com/gpu"] == 1
    env = {e["name"]: e.get("value") for e in pod_spec(operator)["containers"][0]["env"]}
    monkeypatch.setenv(
        "KUBELOOP_OPERATOR_PREDICTOR_PLACEMENT", env["KUBELOOP_OPERATOR_PREDICTOR_PLACEMENT"]
    )
    settings = load_operator_settings()
    sample = yaml.safe_load((ROOT / "manifests/samples/fraud-detector.yaml").read_text())
    isvc = inference_service(
        "fraud-detector", "v1", "s3://ml-models/kubeloop", namespace="ml",
        **predictor_options(parse_spec(sample["spec"]), "kubeloop-s3", None, settings.predictor_placement),
    )  # fmt: skip
    predictor = isvc["spec"]["predictor"]
    for key in PLACEMENT_KEYS:
        assert predictor[key] == values["servingRuntime"][key], key
    placed = {k: predictor[k] for k in PLACEMENT_KEYS}
    kubernetes_validate.validate(
        _as_pod({"spec": {"containers": [{"name": "c", "image": "i:1"}], **placed}}),
        K8S_VERSION,
        strict=True,
    )

    # The RayCluster, against KubeRay's v1 API.
    (ray,) = [d for d in docs if d["kind"] == "RayCluster"]
    assert ray["apiVersion"] == "ray.io/v1"
    spec = ray["spec"]
    assert set(spec) <= RAYCLUSTER_SPEC_FIELDS and "headGroupSpec" in spec
    assert spec["rayVersion"] == "2.60.0"
    import importlib.metadata

    assert spec["rayVersion"] == importlib.metadata.version("ray"), "the image's Ray"
    assert spec["enableInTreeAutoscaling"] is True
    assert set(spec["autoscalerOptions"]) <= RAY_AUTOSCALER_FIELDS
    assert spec["autoscalerOptions"]["idleTimeoutSeconds"] == 600
    assert spec["autoscalerOptions"]["upscalingMode"] in {"Default", "Aggressive", "Conservative"}
    _check_secure_container(spec["autoscalerOptions"], "autoscaler")
    head = spec["headGroupSpec"]
    assert set(head) <= RAY_HEAD_FIELDS and {"template", "rayStartParams"} <= set(head)
    assert head["rayStartParams"]["num-cpus"] == "0"  # no training work on the head
    (worker,) = spec["workerGroupSpecs"]
    assert set(worker) <= RAY_WORKER_FIELDS
    assert {"groupName", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(worker)
    assert worker["groupName"] == "gpu"
    assert worker["minReplicas"] <= worker["replicas"] <= worker["maxReplicas"] == 8
    train_image = image("train", "ghcr.io/kubeloop", "0.1.0")
    for group, template in (("head", head["template"]), ("worker", worker["template"])):
        params = (head if group == "head" else worker)["rayStartParams"]
        assert all(isinstance(v, str) for v in params.values()), (
            f"{group}: rayStartParams are strings"
        )
        kubernetes_validate.validate(_as_pod(template), K8S_VERSION, strict=True)
        pod = template["spec"]
        ray_container = pod["containers"][0]  # KubeRay runs Ray in the first container
        assert ray_container["image"] == train_image, group
        _check_secure_container(ray_container, group)
        assert pod["securityContext"]["runAsNonRoot"] is True
        mounts = {m["mountPath"] for m in ray_container["volumeMounts"]}
        assert {"/tmp", "/dev/shm"} <= mounts, group  # Ray's files and object store
        ray_env = {e["name"]: e for e in ray_container["env"]}
        assert ray_env["KUBELOOP_S3__ENDPOINT"]["value"] == "s3.eu-west-1.amazonaws.com"
        assert ray_env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "kubeloop-s3-credentials"  # fmt: skip
        assert template["metadata"]["labels"]["app.kubernetes.io/component"] == "ray"
        gpus = ray_container["resources"]["limits"].get("nvidia.com/gpu")
        if group == "head":
            assert gpus is None and pod["nodeSelector"] == {"node-pool": "cpu"}
        else:
            assert gpus == 1 == ray_container["resources"]["requests"]["nvidia.com/gpu"]
            for key in ("nodeSelector", "tolerations", "runtimeClassName", "priorityClassName"):
                assert pod[key] == values["ray"]["cluster"]["worker"][key], key
            assert pod["automountServiceAccountToken"] is False

    # The train task joins the head's Ray Client port through KubeRay's head Service.
    job_env = _upload_env(docs)
    client_port = next(
        p["containerPort"] for p in head["template"]["spec"]["containers"][0]["ports"] if p["name"] == "client"
    )  # fmt: skip
    address = (
        f"ray://{ray['metadata']['name']}-head-svc.{NAMESPACE}.svc.cluster.local:{client_port}"
    )
    assert job_env["KUBELOOP_PIPELINE_RAY_ADDRESS"] == address
    assert len(f"{ray['metadata']['name']}-head-svc") <= 63
    compiled_with = PipelineCluster.from_env({k: v for k, v in job_env.items() if v})
    assert compiled_with.ray_address == address
    # The Ray pods run the image the train task runs (Ray Client needs the same Ray and Python).
    assert compiled_with.image("train") == train_image

    # Its NetworkPolicy: Ray pods reach each other; the run namespace reaches only the client port.
    policy = policies["kl-kubeloop-ray"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for template in (head["template"], worker["template"]):
        assert selector.items() <= template["metadata"]["labels"].items()
    peers, client = policy["spec"]["ingress"]
    assert peers["from"] == [{"podSelector": {"matchLabels": selector}}] and "ports" not in peers
    assert client["ports"] == [{"port": client_port, "protocol": "TCP"}]
    assert client["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "kubeflow"
    }


def test_a_gpu_limit_alone_renders_without_a_request() -> None:
    # Kubernetes defaults an extended resource's request to its limit, so the GPU check
    # accepts a limit alone, and the chart adds no request of its own.
    docs = render("--set", "servingRuntime.resources.limits.nvidia\\.com/gpu=1")
    runtime = next(d for d in docs if d["kind"] == "ClusterServingRuntime")
    resources = runtime["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in resources.get("requests", {})


def test_ray_cluster_runs_the_train_task_image() -> None:
    from kubeloop.pipelines.cluster import PipelineCluster

    docs = render(
        "--set", "pipelineUpload.enabled=true", "--set", "ray.cluster.enabled=true",
        "--set", "pipelineUpload.imageTag=0.1.1", "--set", "global.imageRegistry=registry.example.com/ml",
    )  # fmt: skip
    (ray,) = [d for d in docs if d["kind"] == "RayCluster"]
    env = _upload_env(docs)
    train = PipelineCluster.from_env({k: v for k, v in env.items() if v}).image("train")
    assert train == "registry.example.com/ml/kubeloop-train:0.1.1"
    head = ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    (worker,) = ray["spec"]["workerGroupSpecs"]
    assert head["image"] == worker["template"]["spec"]["containers"][0]["image"] == train
    pinned = render("--set", "ray.cluster.enabled=true", "--set", "ray.cluster.image.tag=0.2.0")
    (ray,) = [d for d in pinned if d["kind"] == "RayCluster"]
    assert ray["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["image"].endswith(
        ":0.2.0"
    )


def test_ray_cluster_is_off_by_default_and_auto_follows_kuberay() -> None:
    """Off by default: no RayCluster, no address for the train task (it trains in its pod).
    auto renders it where ray.io/v1 is served; true renders it offline too."""

    def ray_parts(docs: list[dict]) -> tuple[list[dict], str | None]:
        clusters = [d for d in docs if d["kind"] == "RayCluster"]
        return clusters, _upload_env(docs).get("KUBELOOP_PIPELINE_RAY_ADDRESS")

    upload = ("--set", "pipelineUpload.enabled=true")
    assert ray_parts(render(*upload)) == ([], None)
    assert ray_parts(render(*upload, "--set", "ray.cluster.enabled=auto")) == ([], None)
    (cluster,), address = ray_parts(
        render(*upload, "--set", "ray.cluster.enabled=auto", api_versions=("ray.io/v1",))
    )
    assert address.startswith(f"ray://{cluster['metadata']['name']}-head-svc.")
    (forced,), _ = ray_parts(render(*upload, "--set", "ray.cluster.enabled=true", api_versions=()))
    assert forced == cluster
    notes = _notes("kl", NAMESPACE, "--set", "ray.cluster.enabled=auto")
    assert "no RayCluster was created" in notes and "ray.cluster.enabled=true" in notes
    enabled = _notes("kl", NAMESPACE, "--set", "ray.cluster.enabled=true")
    assert f"ray://kl-kubeloop-ray-head-svc.{NAMESPACE}.svc.cluster.local:10001" in enabled
    assert "--ray-address" in enabled  # without the upload Job, the user compiles it in
