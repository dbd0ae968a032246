"""Kustomize base and overlays, the chart's generated copies, and ModelDeployment
samples validated against the CRD's openAPIV3Schema.

Needs kubectl (`kubectl kustomize` runs without a cluster) and helm in .venv-tools.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kubeloop"
HELM = ROOT / ".venv-tools" / "bin" / "helm"
OVERLAYS = sorted(
    p.parent.name for p in (ROOT / "manifests" / "overlays").glob("*/kustomization.yaml")
)
K8S_VERSION = "1.31.0"
CRD_KINDS = {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ClusterServingRuntime"}
CLUSTER_SCOPED = {
    "Namespace", "CustomResourceDefinition", "ClusterRole", "ClusterRoleBinding", "ClusterServingRuntime"
}  # fmt: skip


def _require(tool: Path | str | None, how: str) -> str:
    if tool and Path(tool).exists():
        return str(tool)
    if os.environ.get("CI"):
        pytest.fail(f"{how} is missing")
    pytest.skip(f"{how} is missing")


def kustomize(path: Path) -> list[dict]:
    kubectl = _require(shutil.which("kubectl"), "kubectl")
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, f"kubectl kustomize {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) → openAPIV3Schema of every CRD the chart ships."""
    schemas = {}
    for path in sorted((CHART / "crds").glob("*.yaml")):
        for crd in yaml.safe_load_all(path.read_text()):
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schemas[(f"{group}/{version['name']}", kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def validate_against_crd(doc: dict, schemas: dict[tuple[str, str], dict]) -> None:
    schema = schemas.get((doc["apiVersion"], doc["kind"]))
    assert schema is not None, (
        f"no CRD in charts/kubeloop/crds serves {doc['apiVersion']} {doc['kind']}"
    )
    # openAPIV3Schema follows JSON Schema draft 4 (boolean exclusiveMinimum and the like).
    jsonschema.Draft4Validator(schema).validate(doc)


def test_overlays_exist() -> None:
    assert {"local-kind", "production"} <= set(OVERLAYS)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_and_validates(overlay: str) -> None:
    docs = kustomize(ROOT / "manifests" / "overlays" / overlay)
    kinds = {d["kind"] for d in docs}
    assert {"CustomResourceDefinition", "Deployment", "StatefulSet", "ClusterRole"} <= kinds
    schemas = crd_schemas()
    for doc in docs:
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], f"{doc['kind']} is cluster-scoped"
        elif doc["metadata"]["name"].endswith("-kserve-config"):
            # The operator's read of KServe's ConfigMap: a Role in KServe's namespace.
            assert doc["metadata"].get("namespace") == "kserve", doc["metadata"]["name"]
        else:
            assert doc["metadata"].get("namespace") == "kubeloop", doc["metadata"]["name"]
        if doc["kind"] in CRD_KINDS:
            if (doc["apiVersion"], doc["kind"]) in schemas:
                validate_against_crd(doc, schemas)
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {exc.message}"
            ) from exc


def test_production_sizes_up_and_ships_no_credentials() -> None:
    docs = kustomize(ROOT / "manifests" / "overlays" / "production")
    drift = next(
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "kubeloop-drift"
    )
    assert (
        drift["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] == "4Gi"
    )
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    assert (
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
        == "100Gi"
    )
    # Two operator replicas elect a leader; the PDB selects exactly the operator's pods.
    operator = next(
        d
        for d in docs
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "kubeloop-operator"
    )
    assert operator["spec"]["replicas"] == 2
    assert operator["spec"]["strategy"]["type"] == "RollingUpdate"
    pdb = next(d for d in docs if d["kind"] == "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == operator["spec"]["selector"]["matchLabels"]
    assert any(d["kind"] == "Role" and "leader-election" in d["metadata"]["name"] for d in docs)
    # Production ships no credentials: the MinIO Secret is created out of band.
    assert not [d for d in docs if d["kind"] == "Secret"]
    assert all(d["metadata"]["labels"]["kubeloop.io/environment"] == "production" for d in docs)


def test_local_kind_generates_its_minio_secret() -> None:
    docs = kustomize(ROOT / "manifests" / "overlays" / "local-kind")
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert secret["metadata"]["name"].startswith("kubeloop-minio-root-")
    sts = next(d for d in docs if d["kind"] == "StatefulSet")
    refs = {
        e["valueFrom"]["secretKeyRef"]["name"]
        for e in sts["spec"]["template"]["spec"]["containers"][0]["env"]
        if "valueFrom" in e
    }
    assert refs == {secret["metadata"]["name"]}, "kustomize must rewrite the Secret reference"
    # The storage ServiceAccount predictors download with names the same (renamed) Secret.
    storage_sa = next(
        d for d in docs if d["kind"] == "ServiceAccount" and d["metadata"]["name"] == "kubeloop-s3"
    )
    assert [s["name"] for s in storage_sa["secrets"]] == [secret["metadata"]["name"]]


def _secret_references(doc: dict) -> set[str]:
    """Names of the Secrets an object refers to (env, envFrom, volumes, ServiceAccount)."""
    names: set[str] = set()
    if doc["kind"] == "ServiceAccount":
        names |= {s["name"] for s in doc.get("secrets", [])}

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("secretKeyRef", "secretRef"):
                if isinstance(node.get(key), dict) and "name" in node[key]:
                    names.add(node[key]["name"])
            if isinstance(node.get("secret"), dict) and "secretName" in node["secret"]:
                names.add(node["secret"]["secretName"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc.get("spec", {}))
    return names


def test_local_kind_secret_references_all_resolve() -> None:
    """Every Secret the local-kind overlay's objects name is one the overlay ships."""
    docs = kustomize(ROOT / "manifests" / "overlays" / "local-kind")
    shipped = {d["metadata"]["name"] for d in docs if d["kind"] == "Secret"}
    referenced = set().union(*(_secret_references(d) for d in docs))
    assert referenced, "the overlay's workloads name no Secret at all"
    assert referenced <= shipped, f"dangling Secret references: {sorted(referenced - shipped)}"


def test_base_is_the_current_chart_rendering() -> None:
    helm = _require(HELM, "helm (`make helm`)")
    base = ROOT / "manifests" / "base"
    proc = subprocess.run(
        [
            helm, "template", "kubeloop", str(CHART), "--namespace", "kubeloop",
            "--kube-version", K8S_VERSION, "--api-versions", "monitoring.coreos.com/v1",
            "--api-versions", "serving.kserve.io/v1alpha1",
            "-f", str(base / "values.yaml"),
        ],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    on_disk = (base / "kubeloop.yaml").read_text().split("\n", 1)[1]
    # helm prints the chart path as given; the Makefile renders with the relative path.
    rendered = proc.stdout.replace(str(CHART), "charts/kubeloop")
    assert on_disk == rendered, "manifests/base/kubeloop.yaml is stale: run `make manifests-base`"


def test_chart_and_base_carry_the_generated_crds_rules_and_dashboards() -> None:
    from kubeloop.generated import GENERATORS, deployment_copies

    assert "kubeloop.generated:deployment_copies" in GENERATORS
    copies = deployment_copies()
    for rel in (
        "charts/kubeloop/crds/modeldeployments.kubeloop.io.yaml",
        "manifests/base/crds/modeldeployments.kubeloop.io.yaml",
        "charts/kubeloop/files/prometheusrule.yaml",
        "manifests/base/monitoring/prometheusrule.yaml",
    ):
        assert rel in copies, rel
    for rel, text in copies.items():
        assert (ROOT / rel).read_text() == text, f"{rel} is stale: run `make compile`"
    # The copies are byte-equal to the generated sources in manifests/.
    assert (
        copies["charts/kubeloop/crds/modeldeployments.kubeloop.io.yaml"]
        == (ROOT / "manifests/crds/modeldeployments.kubeloop.io.yaml").read_text()
    )


def test_base_dashboards_configmap_lists_every_generated_dashboard() -> None:
    generated = sorted(
        p.name for p in (ROOT / "manifests/base/monitoring/dashboards").glob("*.json")
    )
    kustomization = yaml.safe_load(
        (ROOT / "manifests/base/monitoring/kustomization.yaml").read_text()
    )
    listed = sorted(Path(f).name for f in kustomization["configMapGenerator"][0]["files"])
    assert listed == generated, (
        "list the dashboards in manifests/base/monitoring/kustomization.yaml"
    )
    docs = kustomize(ROOT / "manifests" / "base")
    cm = next(
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kubeloop-dashboards"
    )
    assert sorted(cm["data"]) == generated
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"


@pytest.mark.parametrize(
    "sample", sorted((ROOT / "manifests" / "samples").glob("*.yaml")), ids=lambda p: p.name
)
def test_samples_validate_against_the_chart_crd(sample: Path) -> None:
    schemas = crd_schemas()
    docs = [d for d in yaml.safe_load_all(sample.read_text()) if d]
    assert docs
    for doc in docs:
        validate_against_crd(doc, schemas)


@pytest.mark.parametrize(
    "sample", sorted((ROOT / "manifests" / "samples").glob("*.yaml")), ids=lambda p: p.name
)
def test_samples_name_no_release(sample: Path) -> None:
    """Samples apply to any release: no namespace, bucket, drift service or S3 endpoint of
    one; the operator fills registryUri and loggerUrl in from the release."""
    text = "\n".join(
        line for line in sample.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    for doc in yaml.safe_load_all(text):
        if not doc:
            continue
        assert "namespace" not in doc["metadata"]
        assert "registryUri" not in doc["spec"]["model"]
        assert "loggerUrl" not in doc["spec"].get("serving", {})
    for release_specific in ("kubeloop-registry", "svc.cluster.local", "s3://", "kubeloop-drift"):
        assert release_specific not in text, release_specific


def test_crd_schema_rejects_a_bad_sample() -> None:
    schemas = crd_schemas()
    sample = yaml.safe_load((ROOT / "manifests" / "samples" / "fraud-detector.yaml").read_text())
    sample["spec"]["rollout"]["steps"] = ["ten"]
    with pytest.raises(jsonschema.ValidationError, match="'ten' is not of type 'integer'"):
        validate_against_crd(sample, schemas)
