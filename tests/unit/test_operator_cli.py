"""``kubeloop rollout`` against the local operator's store."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from kubeloop.cli.main import _register, app
from kubeloop.local.operator.driver import LocalStore

runner = CliRunner()


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBELOOP_OPERATOR_STATE_DIR", str(tmp_path / "operator"))
    _register()
    manifest = tmp_path / "md.yaml"
    manifest.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kubeloop.io/v1alpha1",
                "kind": "ModelDeployment",
                "metadata": {"name": "fd"},
                "spec": {"model": {"name": "fraud-detector"}},
            }
        )
    )
    result = runner.invoke(app, ["rollout", "apply", "-f", str(manifest)])
    assert result.exit_code == 0, result.output
    assert "modeldeployment/fd configured" in result.output
    return LocalStore(tmp_path / "operator")


def test_pause_resume_patch_the_applied_spec(store):
    assert runner.invoke(app, ["rollout", "pause", "fd"]).exit_code == 0
    assert store.manifest("fd")["spec"]["rollout"]["paused"] is True
    assert runner.invoke(app, ["rollout", "resume", "fd"]).exit_code == 0
    assert store.manifest("fd")["spec"]["rollout"]["paused"] is False


def test_promote_and_rollback_default_to_the_candidate(store):
    store.save_state(
        "fd",
        {
            "status": {
                "phase": "Canary",
                "stableVersion": "v1",
                "candidateVersion": "v2",
                "canaryPercent": 25,
            }
        },
    )
    result = runner.invoke(app, ["rollout", "promote", "fd"])
    assert result.exit_code == 0 and "promote v2" in result.output
    assert runner.invoke(app, ["rollout", "rollback", "fd"]).exit_code == 0
    assert store.commands("fd") == {"promote": "v2", "rollback": "v2"}
    out = runner.invoke(app, ["rollout", "status", "fd", "-o", "json"])
    assert json.loads(out.output)["candidateVersion"] == "v2"
    table = runner.invoke(app, ["rollout", "status", "fd"])
    assert "candidate v2 @ 25%" in table.output


def test_status_explains_the_latest_drift(store):
    evidence = {
        "detectors": {"error_rate": 1.0, "predicted_class": 1.0, "mmd": 0.0},
        "moved": [{"feature": "amount", "p_value": 1e-9}],
        "positive_rate": {"predicted": 0.186, "reference_predicted": 0.04},
    }
    history = [
        {"time": "2026-01-01T00:00:00Z", "decision": "deploy", "reason": "Initial",
         "message": "v1", "version": "v1"},
        {"time": "2026-01-01T00:01:00Z", "decision": "drift", "reason": "DriftDetected",
         "message": "drift on v1", "version": "v1", "evidence": evidence},
    ]  # fmt: skip
    store.save_state("fd", {"status": {"phase": "Stable", "stableVersion": "v1",
                                       "drift": "Detected", "history": history}})  # fmt: skip
    out = runner.invoke(app, ["rollout", "status", "fd"], terminal_width=300).output
    assert "detectors error_rate, predicted_class" in out
    assert "inputs that moved most: amount (p 1e-09)" in out
    assert "positive predictions 18.6 % (reference 4.0 %)" in out


def test_clear_errors(store, tmp_path):
    result = runner.invoke(app, ["rollout", "promote", "fd"])
    assert result.exit_code == 1 and "no candidate to promote" in result.output
    result = runner.invoke(app, ["rollout", "status", "nope"])
    assert result.exit_code == 1 and "no ModelDeployment 'nope'" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "kind": "ModelDeployment",
                "metadata": {"name": "x"},
                "spec": {"model": {"name": "x"}, "rollout": {"steps": [100]}},
            }
        )
    )
    result = runner.invoke(app, ["rollout", "apply", "-f", str(bad)])
    assert result.exit_code == 1 and "spec.rollout.steps" in result.output


def test_up_refuses_a_feast_store_that_is_not_a_repository(tmp_path):
    _register()
    result = runner.invoke(app, ["up", "--feast-store", str(tmp_path)])
    assert result.exit_code == 2 and "feature_store.yaml" in result.output, result.output
