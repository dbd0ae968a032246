"""The register stage called directly against a real local registry."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from kubeloop.components.evaluate.impl import run_evaluate
from kubeloop.components.register.impl import GateFailed, run_register
from kubeloop.components.train.impl import StageInputError

from kubeloop.registry import ModelRegistry
from tests.support.training import saved_bundle, split_frames, write_split

META = {"data_hash": "abc123", "row_count": 4321, "source_uri": "example://fraud/stationary"}


@pytest.fixture(scope="module")
def stage_inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("register")
    train, evaluation = split_frames(days=4, n_accounts=250)
    model = saved_bundle(train, root / "model")
    run_evaluate(
        model, write_split(evaluation, root / "eval"), root / "r.html", root / "evaluation"
    )
    for name, passed in (("passed", True), ("failed", False)):
        (root / name).mkdir()
        body = {"passed": passed, "reasons": ["roc_auc 0.5 misses the objective >= 0.8"]}
        (root / name / "gate.json").write_text(json.dumps(body))
    return root


def _register(root, registry, decision="passed", meta=META, params='{"epochs": 3}'):
    return run_register(
        root / "model",
        root / "evaluation",
        root / decision,
        meta,
        "fraud-detector",
        str(registry.uri),
        "kubeloop-training-run-1",
        params,
    )


def test_publishes_a_complete_version_with_lineage(stage_inputs, tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    version = _register(stage_inputs, registry)
    assert version.version == "v1"
    assert set(version.files) == {
        "model.pt",
        "model.json",
        "preprocessing.json",
        "schema.json",
        "metrics.json",
        "lineage.json",
        "gate.json",
        "reference.parquet",
    }
    lineage = version.lineage
    assert lineage["data_hash"] == "abc123" and lineage["row_count"] == 4321
    assert lineage["pipeline_run_id"] == "kubeloop-training-run-1"
    assert lineage["pipeline_name"] == "kubeloop-training"
    assert lineage["parameters"] == {"epochs": 3}
    assert lineage["code_version"].startswith("0.1.0")
    assert lineage["source_uri"] == "example://fraud/stationary"
    assert 0.5 < version.metrics["roc_auc"] <= 1.0
    assert registry.get_alias("fraud-detector", "champion") == "v1"
    reference = pd.read_parquet(
        __import__("io").BytesIO(registry.read_file("fraud-detector", "v1", "reference.parquet"))
    )
    assert {"prediction_score", "prediction", "is_fraud"} <= set(reference.columns)
    # A second version does not take the champion alias: promotion is the operator's.
    assert _register(stage_inputs, registry).version == "v2"
    assert registry.get_alias("fraud-detector", "champion") == "v1"
    assert registry.find_by_run_id("fraud-detector", "kubeloop-training-run-1").version == "v2"


def test_lineage_records_where_the_model_trained(stage_inputs, tmp_path):
    import shutil

    from kubeloop.components.train.impl import RAY_FILE

    shutil.copytree(stage_inputs, tmp_path / "inputs")
    fallback = {
        "address": "127.0.0.1:6379",
        "remote": False,
        "fallback": "the Ray cluster at ray://head.invalid:10001 is not reachable",
    }
    (tmp_path / "inputs" / "model" / RAY_FILE).write_text(json.dumps(fallback))
    version = _register(tmp_path / "inputs", ModelRegistry(str(tmp_path / "registry")))
    assert version.lineage["training_ray"] == fallback
    assert RAY_FILE not in version.files  # a lineage fact, not a file of the version
    # A model folder from before (no record) registers without it.
    plain = _register(stage_inputs, ModelRegistry(str(tmp_path / "registry2")))
    assert "training_ray" not in plain.lineage


def test_refuses_a_failed_gate_and_writes_nothing(stage_inputs, tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    with pytest.raises(GateFailed, match="the gate failed .*roc_auc 0.5 misses"):
        _register(stage_inputs, registry, decision="failed")
    assert not (tmp_path / "registry").exists() or registry.list_versions("fraud-detector") == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"meta": {"row_count": 1}}, "lacks 'data_hash'"),
        ({"params": "{not json"}, "parameters_json is not valid JSON"),
        ({"decision": "missing"}, "decision: .*gate.json does not exist"),
    ],
)
def test_bad_inputs_are_named(stage_inputs, tmp_path, kwargs, message):
    registry = ModelRegistry(str(tmp_path / "registry"))
    with pytest.raises(StageInputError, match=message):
        _register(stage_inputs, registry, **kwargs)
    assert registry.list_versions("fraud-detector") == []
