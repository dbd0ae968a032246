"""One rule for "did this version pass its gate", used by the operator and `kubeloop registry list`."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from kubeloop.operators.gather import registry_versions

from kubeloop.registry import ModelRegistry, gate_passed

MODEL = "fraud-detector"


@pytest.mark.parametrize(
    ("gate", "passed"),
    [
        ({}, True),  # published without a gate record: publishing was the decision
        ({"passed": True}, True),
        ({"passed": False}, False),
        ({"passed": False, "reasons": ["roc_auc 0.61 < 0.8"]}, False),
        ({"passed": "false"}, False),  # hand-written records spell booleans as text
        ({"passed": "True"}, True),
        ({"decision": "passed"}, True),
        ({"decision": "failed"}, False),
        ({"decision": "pass"}, True),
        ({"decision": "fail"}, False),
        ({"passed": False, "decision": "passed"}, False),  # `passed` decides when both are there
        ({"passed": True, "decision": "failed"}, True),
    ],
)
def test_gate_passed(gate, passed):
    assert gate_passed(gate) is passed


def publish(registry: ModelRegistry, tmp_path, gate: dict | None):
    folder = tmp_path / f"model-{len(registry.list_versions(MODEL))}"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"weights")
    return registry.publish(MODEL, folder, metrics={"roc_auc": 0.9}, gate=gate)


def test_registry_list_and_the_operator_read_gates_alike(tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    gates = [{"passed": True}, {"passed": False}, {"decision": "failed"}, None]
    for gate in gates:
        publish(registry, tmp_path, gate)
    assert registry.get(MODEL, "v1").gate == {"passed": True}  # `passed`, no `decision`
    env = {
        **os.environ,
        "KUBELOOP_HOME": str(tmp_path / "home"),
        "KUBELOOP_REGISTRY_URI": str(tmp_path / "registry"),
        "COLUMNS": "250",
    }
    listed = subprocess.run(
        [sys.executable, "-m", "kubeloop.cli.main", "registry", "list"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert listed.returncode == 0, listed.stdout + listed.stderr
    rows = {
        cells[0]: cells[5]
        for line in listed.stdout.splitlines()
        if len(cells := [c.strip() for c in line.split("│")[1:-1]]) == 8
    }
    assert rows == {
        "v1": "passed",
        "v2": "failed",
        "v3": "failed",
        "v4": "passed (no record)",
    }, listed.stdout
    ok, _, versions = registry_versions(registry, MODEL)
    assert ok
    assert [v.gate_passed for v in versions] == [True, False, False, True]
