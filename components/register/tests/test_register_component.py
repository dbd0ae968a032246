"""Tier 2: the register component under kfp.local, fed by importers.

No ``from __future__ import annotations``: the pipeline below is read by KFP.
"""

import json

import pytest
from kfp import dsl, local
from kubeloop.components.evaluate.impl import run_evaluate
from kubeloop.components.register.component import register

from kubeloop.registry import ModelRegistry
from tests.support.training import saved_bundle, split_frames, write_split

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@dsl.pipeline(name="register-only")
def register_only(
    model_uri: str, evaluation_uri: str, decision_uri: str, dataset_uri: str, registry_uri: str
) -> str:
    model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=True)
    ev = dsl.importer(artifact_uri=evaluation_uri, artifact_class=dsl.Artifact, reimport=True)
    decision = dsl.importer(artifact_uri=decision_uri, artifact_class=dsl.Artifact, reimport=True)
    dataset = dsl.importer(
        artifact_uri=dataset_uri,
        artifact_class=dsl.Dataset,
        reimport=True,
        metadata={"data_hash": "feedbeef", "row_count": 1234},
    )
    return register(
        model=model.output,
        evaluation=ev.output,
        decision=decision.output,
        dataset=dataset.output,
        model_name="fraud-detector",
        registry_uri=registry_uri,
        pipeline_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
        parameters_json='{"seed": 7}',
    ).output


@pytest.mark.slow
def test_register_component_publishes_v1(tmp_path):
    train, evaluation = split_frames(days=4, n_accounts=250)
    saved_bundle(train, tmp_path / "model")
    eval_set = write_split(evaluation, tmp_path / "eval")
    run_evaluate(tmp_path / "model", eval_set, tmp_path / "r.html", tmp_path / "evaluation")
    (tmp_path / "decision").mkdir()
    (tmp_path / "decision" / "gate.json").write_text(json.dumps({"passed": True, "reasons": []}))
    (tmp_path / "dataset").mkdir()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    version = register_only(
        **{f"{name}_uri": str(tmp_path / name) for name in ("model", "evaluation", "decision")},
        dataset_uri=str(tmp_path / "dataset"),
        registry_uri=str(tmp_path / "registry"),
    ).output
    assert version == "v1"
    published = ModelRegistry(str(tmp_path / "registry")).get("fraud-detector", "v1")
    assert published.lineage["data_hash"] == "feedbeef" and published.lineage["row_count"] == 1234
    run_id = published.lineage["pipeline_run_id"]
    assert run_id and "{{" not in run_id  # the placeholder was resolved
    assert published.lineage["parameters"] == {"seed": 7}
