"""The ModelDeployment CRD: generated schema, samples, and clear errors for bad specs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from kubeloop.operators.crd import GROUP, PLURAL, parse_spec
from kubeloop.operators.crd_manifest import crd_manifest, render_crds

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
    columns = version["additionalPrinterColumns"]
    assert [c["name"] for c in columns if "priority" not in c] == [
        "Ready",
        "Stable",
        "Candidate",
        "Canary %",
        "Drift",
        "Age",
    ]
    # `kubectl get -o wide` adds these
    assert [c["name"] for c in columns if c.get("priority") == 1] == [
        "Phase",
        "Previous",
        "Seconds To Detect",
    ]
    assert all(c.get("description") for c in columns)
    assert crd["spec"]["names"]["shortNames"] == ["mdep"]
    assert crd["spec"]["names"]["categories"] == ["kubeloop"]
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


def _root():
    return crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def test_every_property_has_a_description():
    # what `kubectl explain modeldeployment.spec...` shows; the items of a list of scalars
    # are described by the list
    missing = [
        path
        for path, node in _walk(_root())
        if path and not node.get("description")
        if not (path.endswith("[]") and node.get("type") != "object")
    ]
    assert not missing, f"properties without a description: {missing}"


def test_printer_columns_read_fields_of_the_schema():
    crd = crd_manifest()
    root = _root()
    for column in crd["spec"]["versions"][0]["additionalPrinterColumns"]:
        path = column["jsonPath"].split("[")[0].lstrip(".").split(".")
        if path[0] == "metadata":
            continue
        node = root
        for key in path:
            node = node["properties"][key]
        assert node["type"] in {column["type"], "array"}, column


def test_conditions_are_a_list_map_keyed_by_type():
    conditions = _root()["properties"]["status"]["properties"]["conditions"]
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    # list-map keys must be required (or defaulted) in every item
    assert "type" in conditions["items"]["required"]


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_samples_validate(sample: Path):
    doc = yaml.safe_load(sample.read_text())
    assert doc["apiVersion"] == f"{GROUP}/v1alpha1" and doc["kind"] == "ModelDeployment"
    parse_spec(doc["spec"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"model": {"name": "fd", "versionPolicy": "Pinned"}},
            "spec.model: Value error, version is required when versionPolicy is Pinned",
        ),
        ({"model": {"name": "fd"}, "rollout": {"steps": [50, 25, 100]}}, "strictly increase"),
        ({"model": {"name": "fd"}, "rollout": {"steps": [100]}}, "at least one canary step"),
        ({"model": {"name": "fd"}, "rollout": {"minSamples": 0}}, "spec.rollout.minSamples"),
        ({"model": {"name": "Bad_Name"}}, "spec.model.name"),
        (
            {"model": {"name": "fd"}, "retraining": {"dataWindow": "week"}},
            "spec.retraining.dataWindow",
        ),
        ({"model": {"name": "fd"}, "rollout": {"stepz": [1]}}, "spec.rollout.stepz"),
        ({"model": {"name": "fd"}, "rollout": {"steps": [50, 10, 400]}}, "spec.rollout.steps.2"),
        (
            {"model": {"name": "fd"}, "serving": {"replicas": 4, "maxReplicas": 3}},
            "spec.serving: Value error, replicas must not exceed maxReplicas",
        ),
    ],
)
def test_bad_spec_names_the_problem(spec, message):
    with pytest.raises(ValueError, match="invalid ModelDeployment") as err:
        parse_spec(spec)
    assert message in str(err.value)
