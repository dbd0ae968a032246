"""Tier 2: the gate component under kfp.local, fed by importers.

No ``from __future__ import annotations``: the pipeline below is read by KFP.
"""

import json

import pytest
from kfp import dsl, local
from kubeloop.components.evaluate.impl import run_evaluate
from kubeloop.components.gate.component import gate

from tests.support.training import saved_bundle, split_frames, write_split

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@dsl.pipeline(name="gate-only")
def gate_only(model_uri: str, evaluation_uri: str, eval_uri: str, registry_uri: str) -> str:
    model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=True)
    ev = dsl.importer(artifact_uri=evaluation_uri, artifact_class=dsl.Artifact, reimport=True)
    data = dsl.importer(artifact_uri=eval_uri, artifact_class=dsl.Dataset, reimport=True)
    task = gate(
        model=model.output,
        evaluation=ev.output,
        eval_set=data.output,
        model_name="fraud-detector",
        registry_uri=registry_uri,
    )
    return task.outputs["reasons"]


@pytest.mark.slow
def test_gate_component_fails_a_weak_model_with_reasons(tmp_path):
    train, evaluation = split_frames(days=4, n_accounts=250)
    model = saved_bundle(train, tmp_path / "model", steps=1)
    eval_set = write_split(evaluation, tmp_path / "eval")
    run_evaluate(model, eval_set, tmp_path / "r.html", tmp_path / "evaluation")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    reasons = gate_only(
        model_uri=str(model),
        evaluation_uri=str(tmp_path / "evaluation"),
        eval_uri=str(eval_set),
        registry_uri=str(tmp_path / "registry"),
    ).output
    decision = json.loads(next((tmp_path / "runs").rglob("gate/decision/gate.json")).read_text())
    assert decision["passed"] is False
    assert reasons == "; ".join(decision["reasons"]) and "misses the objective" in reasons
    assert "FAIL" in next((tmp_path / "runs").rglob("gate/report")).read_text()
