"""Tier 2: the evaluate component under kfp.local, fed by importers.

No ``from __future__ import annotations``: the pipeline below is read by KFP.
"""

import json
from pathlib import Path

import pytest
from kfp import dsl, local
from kubeloop.components.evaluate.component import evaluate

from tests.support.training import saved_bundle, split_frames, write_split

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@dsl.pipeline(name="evaluate-only")
def evaluate_only(model_uri: str, eval_uri: str) -> dsl.Artifact:
    model = dsl.importer(artifact_uri=model_uri, artifact_class=dsl.Model, reimport=True)
    data = dsl.importer(artifact_uri=eval_uri, artifact_class=dsl.Dataset, reimport=True)
    task = evaluate(model=model.output, eval_set=data.output)
    return task.outputs["evaluation"]


@pytest.mark.slow
def test_evaluate_component(tmp_path):
    train, evaluation = split_frames(days=4, n_accounts=250)
    model = saved_bundle(train, tmp_path / "model")
    eval_set = write_split(evaluation, tmp_path / "eval")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    run = evaluate_only(model_uri=str(model), eval_uri=str(eval_set))
    folder = Path(run.output.path)
    ev = json.loads((folder / "evaluation.json").read_text())
    assert run.output.metadata["roc_auc"] == pytest.approx(ev["roc_auc"])
    assert ev["roc_auc"] > 0.8
    assert run.output.metadata["reference_rows"] == min(len(evaluation), 2000)
    assert (folder / "reference.parquet").exists()
    report = next((tmp_path / "runs").rglob("evaluate/report")).read_text()
    assert report.count("data:image/png;base64,") == 4
