"""The ModelDeployment CRD: generated schema, samples, and clear errors for bad specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubeloop.operators.crd import GROUP, PLURAL, crd_manifest, parse_spec, render_crds

from kubeloop.generated import REPO_ROOT

SAMPLES = sorted((REPO_ROOT / "manifests" / "samples").glob("*.yaml"))


def test_generated_crd_is_current():
    for rel, text in render_crds().items():
        assert (REPO_ROOT / rel).read_text() == text, f"{rel} is stale: run `make compile`"


def test_crd_is_a_valid_structural_customresourcedefinition():
    import kubernetes_validate

    crd = crd_manifest()
    kubernetes_validate.validate(crd, "1.30", strict=True)
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Ready",
        "Stable",
        "Candidate",
        "Canary %",
        "Drift",
        "Age",
    ]
    assert crd["spec"]["names"]["shortNames"] == ["mdep"]
    text = yaml.safe_dump(crd)
    assert "$ref" not in text and "anyOf" not in text and "$defs" not in text
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["rollout"]["properties"]["steps"]["items"]["type"] == "integer"
    assert crd["metadata"]["name"] == f"{PLURAL}.{GROUP}"


def _walk(schema, path=""):
    yield path, schema
    for key, sub in schema.get("properties", {}).items():
        yield from _walk(sub, f"{path}.{key}")
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"], f"{path}[]")


def test_every_schema_node_is_typed():
    root = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(root):
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_samples_validate(sample: Path):
    doc = yaml.safe_load(sample.read_text())
    assert doc["apiVersion"] == f"{GROUP}/v1alpha1" and doc["kind"] == "ModelDeployment"
    parse_spec(doc["spec"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model": {"name": "fd", "versionPolicy": "Pinned"}}, "model.version is required"),
        ({"model": {"name": "fd"}, "rollout": {"steps": [50, 25, 100]}}, "strictly increase"),
        ({"model": {"name": "fd"}, "rollout": {"steps": [100]}}, "at least one canary step"),
        ({"model": {"name": "fd"}, "rollout": {"minSamples": 0}}, "spec.rollout.minSamples"),
        ({"model": {"name": "Bad_Name"}}, "spec.model.name"),
        (
            {"model": {"name": "fd"}, "retraining": {"dataWindow": "week"}},
            "spec.retraining.dataWindow",
        ),
        ({"model": {"name": "fd"}, "rollout": {"stepz": [1]}}, "spec.rollout.stepz"),
    ],
)
def test_bad_spec_names_the_problem(spec, message):
    with pytest.raises(ValueError, match="invalid ModelDeployment") as err:
        parse_spec(spec)
    assert message in str(err.value)
