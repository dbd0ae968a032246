"""The CRD's CEL rules (``x-kubernetes-validations``), evaluated with cel-python.

Each rule is evaluated as the API server would: on the generated schema's node it sits
on, after the schema's defaults are applied. Every rule must reject a bad object of the
table below (a rule that cannot fail fails the coverage test), accept the shipped samples
and the demo's manifest, and agree with the operator's pydantic validation.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import celpy
import pytest
import yaml
from celpy import celtypes
from hypothesis import given, settings
from hypothesis import strategies as st
from kubeloop.operators.crd import MAX_STEPS, parse_spec
from kubeloop.operators.crd_manifest import crd_manifest

from kubeloop.generated import REPO_ROOT

SAMPLES = sorted((REPO_ROOT / "manifests" / "samples").glob("*.yaml"))
ROOT_SCHEMA = crd_manifest()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


# --- evaluation --------------------------------------------------------------------------
def _is_sorted(items: celtypes.ListType) -> celtypes.BoolType:
    # Kubernetes' list library: `<list>.isSorted()`, true when each element is <= the next.
    return celtypes.BoolType(all(a <= b for a, b in zip(items, items[1:], strict=False)))


# The Kubernetes CEL library functions the rules use (cel-python has only standard CEL).
K8S_FUNCTIONS = {"isSorted": _is_sorted}


@functools.cache
def _program(rule: str) -> celpy.Runner:
    env = celpy.Environment()
    return env.program(env.compile(rule), functions=K8S_FUNCTIONS)


def holds(rule: str, value: Any) -> bool:
    """The rule's verdict on ``value`` (``self``); a rule that errors fails the test."""
    result = _program(rule).evaluate({"self": celpy.json_to_cel(value)})
    assert isinstance(result, celtypes.BoolType), f"{rule!r} on {value!r} gave {result!r}"
    return bool(result)


def defaulted(schema: dict, value: Any) -> Any:
    """``value`` with the schema's defaults filled in, as the API server stores it."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for key, sub in schema["properties"].items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if out.get(key) is not None:
                out[key] = defaulted(sub, out[key])
        return out
    if isinstance(value, list) and "items" in schema:
        return [defaulted(schema["items"], v) for v in value]
    return value


def rules_on(schema: dict, path: str = "") -> Iterator[tuple[str, dict, dict]]:
    """(path, schema node, validation) of every rule in ``schema``."""
    for validation in schema.get("x-kubernetes-validations", []):
        yield path, schema, validation
    for key, sub in schema.get("properties", {}).items():
        yield from rules_on(sub, f"{path}.{key}".lstrip("."))
    if isinstance(schema.get("items"), dict):
        yield from rules_on(schema["items"], f"{path}[]")


def violations(doc: dict) -> set[tuple[str, str]]:
    """(path, message) of each rule the object breaks, evaluated where its node has a value."""
    found: set[tuple[str, str]] = set()

    def walk(schema: dict, value: Any, path: str) -> None:
        if value is None:
            return
        for validation in schema.get("x-kubernetes-validations", []):
            if not holds(validation["rule"], value):
                found.add((path, validation["message"]))
        if isinstance(value, dict):
            for key, sub in schema.get("properties", {}).items():
                walk(sub, value.get(key), f"{path}.{key}".lstrip("."))
        elif isinstance(value, list) and isinstance(schema.get("items"), dict):
            for item in value:
                walk(schema["items"], item, f"{path}[]")

    walk(ROOT_SCHEMA, defaulted(ROOT_SCHEMA, doc), "")
    return found


def resource(spec: dict) -> dict:
    return {
        "apiVersion": "kubeloop.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": "fd"},
        "spec": spec,
    }


def demo_manifest() -> dict:
    from kubeloop.demo.config import LoopConfig
    from kubeloop.demo.run import deployment_manifest

    runtime = SimpleNamespace(registry_uri=Path("/registry"), url=lambda name: f"http://{name}")
    return deployment_manifest(LoopConfig(), runtime, Path("/labelled.parquet"))


# --- one bad object per rule -------------------------------------------------------------
MODEL = {"name": "fd"}
STEPS = "must strictly increase"
STEPS_END = "must hold at least one canary step and end at 100"
BAD = [
    pytest.param(
        {"model": {"name": "fd", "versionPolicy": "Pinned"}},
        "spec.model",
        "version is required when versionPolicy is Pinned",
        id="pinned-without-version",
    ),
    pytest.param(
        {"model": MODEL, "serving": {"replicas": 4, "maxReplicas": 3}},
        "spec.serving",
        "replicas must not exceed maxReplicas",
        id="replicas-above-max",
    ),
    pytest.param(
        {"model": MODEL, "serving": {"replicas": 5}},  # the default maxReplicas is 3
        "spec.serving",
        "replicas must not exceed maxReplicas",
        id="replicas-above-default-max",
    ),
    pytest.param(
        {"model": MODEL, "rollout": {"minStepSeconds": 600, "maxStepSeconds": 600}},
        "spec.rollout",
        "minStepSeconds must be less than maxStepSeconds, or no step could pass",
        id="min-step-not-below-max",
    ),
    pytest.param(
        {"model": MODEL, "rollout": {"steps": [50, 10, 100]}},
        "spec.rollout.steps",
        STEPS,
        id="steps-descending",
    ),
    pytest.param(
        {"model": MODEL, "rollout": {"steps": [10, 10, 100]}},
        "spec.rollout.steps",
        STEPS,
        id="steps-repeated",
    ),
    pytest.param(
        {"model": MODEL, "rollout": {"steps": [100]}},
        "spec.rollout.steps",
        STEPS_END,
        id="steps-no-canary-step",
    ),
    pytest.param(
        {"model": MODEL, "rollout": {"steps": [10, 50]}},
        "spec.rollout.steps",
        STEPS_END,
        id="steps-not-ending-at-100",
    ),
    pytest.param(
        {"model": MODEL, "rollout": {"steps": []}},
        "spec.rollout.steps",
        STEPS_END,
        id="steps-empty",
    ),
    pytest.param(
        {"model": MODEL, "rollout": {"analysis": {"requiredChecks": ["error_rate"] * 2}}},
        "spec.rollout.analysis.requiredChecks",
        "must not name a check twice",
        id="required-check-twice",
    ),
    pytest.param(
        {"model": MODEL, "monitoring": {"detectors": [{"name": "mmd"}, {"name": "mmd"}]}},
        "spec.monitoring.detectors",
        "must not name a detector twice",
        id="detector-twice",
    ),
    pytest.param(
        {"model": MODEL, "serving": {"nodeSelector": {"gpu type": "a100"}}},
        "spec.serving.nodeSelector",
        "keys must be label keys ([prefix/]name)",
        id="node-selector-key-with-a-space",
    ),
    pytest.param(
        {"model": MODEL, "serving": {"nodeSelector": {"example.com/": "x"}}},
        "spec.serving.nodeSelector",
        "keys must be label keys ([prefix/]name)",
        id="node-selector-key-without-a-name",
    ),
    pytest.param(
        {
            "model": MODEL,
            "serving": {
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "value": "x"}]
            },
        },
        "spec.serving.tolerations[]",
        "value must be empty when operator is Exists",
        id="toleration-exists-with-a-value",
    ),
    pytest.param(
        {"model": MODEL, "serving": {"tolerations": [{"value": "present"}]}},
        "spec.serving.tolerations[]",
        "an empty key needs operator Exists (it then tolerates every taint)",
        id="toleration-equal-without-a-key",
    ),
    pytest.param(
        {
            "model": MODEL,
            "serving": {
                "tolerations": [
                    {
                        "key": "k",
                        "operator": "Exists",
                        "effect": "NoSchedule",
                        "tolerationSeconds": 60,
                    }
                ]
            },
        },
        "spec.serving.tolerations[]",
        "tolerationSeconds needs effect NoExecute",
        id="toleration-seconds-without-no-execute",
    ),
]


@pytest.mark.parametrize(("spec", "path", "message"), BAD)
def test_rule_rejects_a_bad_object_and_so_does_the_operator(spec, path, message):
    assert violations(resource(spec)) == {(path, message)}
    with pytest.raises(ValueError, match="invalid ModelDeployment") as err:
        parse_spec(spec)
    assert message in str(err.value)


def test_every_rule_has_a_bad_object():
    in_crd = {(path, v["message"]) for path, _, v in rules_on(ROOT_SCHEMA)}
    covered = {(p.values[1], p.values[2]) for p in BAD}
    assert in_crd == covered, f"rules without a bad object: {in_crd - covered}"


GOOD = [
    pytest.param(
        {"model": {"name": "fd", "versionPolicy": "Pinned", "version": "v1"}}, id="pinned"
    ),
    pytest.param({"model": MODEL, "serving": {"replicas": 3}}, id="replicas-at-default-max"),
    pytest.param({"model": MODEL, "rollout": {"steps": [1, 100]}}, id="two-steps"),
    pytest.param({"model": MODEL, "rollout": {"steps": [99, 100]}}, id="steps-99-100"),
    pytest.param(
        {"model": MODEL, "rollout": {"minStepSeconds": 0, "maxStepSeconds": 1}}, id="min-0"
    ),
    pytest.param(
        {
            "model": MODEL,
            "rollout": {"analysis": {"requiredChecks": ["error_rate", "latency_p99"]}},
        },
        id="required-checks",
    ),
    pytest.param(
        {"model": MODEL, "monitoring": {"detectors": [{"name": "mmd"}, {"name": "cvm"}]}},
        id="detectors",
    ),
    pytest.param(
        {
            "model": MODEL,
            "serving": {
                "resources": {"gpu": 1},
                "nodeSelector": {"nvidia.com/gpu.present": "true", "pool": "gpu"},
                "tolerations": [
                    {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                    {"key": "dedicated", "value": "ml", "effect": "NoSchedule"},
                    {"operator": "Exists"},
                    {"key": "", "operator": "Exists"},
                    {"key": "k", "effect": "NoExecute", "tolerationSeconds": 300},
                ],
                "runtimeClassName": "nvidia",
                "priorityClassName": "ml-serving",
            },
        },
        id="gpu-placement",
    ),
]


@pytest.mark.parametrize("spec", GOOD)
def test_rules_accept_what_the_operator_accepts(spec):
    assert violations(resource(spec)) == set()
    parse_spec(spec)


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.name)
def test_rules_accept_the_samples(sample: Path):
    assert violations(yaml.safe_load(sample.read_text())) == set()


def test_rules_accept_the_demo_manifest():
    doc = demo_manifest()
    assert violations(doc) == set()
    parse_spec(doc["spec"])


def test_rules_accept_the_defaults():
    assert violations(resource({"model": MODEL})) == set()


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=100), max_size=MAX_STEPS))
def test_steps_rules_agree_with_the_operator(steps: list[int]):
    spec = {"model": MODEL, "rollout": {"steps": steps}}
    try:
        parse_spec(spec)
        accepted = True
    except ValueError:
        accepted = False
    assert (violations(resource(spec)) == set()) == accepted, steps


def test_rules_that_iterate_a_list_are_bounded():
    # The API server estimates a rule's cost from maxItems; without it, the CRD is refused.
    for path, node, validation in rules_on(ROOT_SCHEMA):
        if node.get("type") == "array":
            assert "maxItems" in node, f"{path}: {validation['rule']} iterates an unbounded list"


def test_evaluator_sees_the_kubernetes_list_library():
    assert holds("self.isSorted()", [1, 2, 2]) and not holds("self.isSorted()", [2, 1])
