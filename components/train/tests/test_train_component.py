"""Tier 2: the train component under kfp.local (a real subprocess joining the session's Ray).

No ``from __future__ import annotations``: the pipeline below is read by KFP.
"""

from pathlib import Path

import pytest
from kfp import dsl, local
from kubeloop.components.train.component import train

from kubeloop.model import ModelBundle
from tests.support.training import split_frames, write_split  # noqa: F401

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@dsl.pipeline(name="train-only")
def train_only(train_uri: str) -> dsl.Model:
    data = dsl.importer(artifact_uri=train_uri, artifact_class=dsl.Dataset, reimport=True)
    return train(train_set=data.output, epochs=2, seed=1).outputs["model"]


@pytest.mark.slow
def test_train_component_outputs_a_bundle(ray_head, tmp_path):
    train_frame, _ = split_frames(days=4, n_accounts=200)
    folder = write_split(train_frame, tmp_path / "train_set")
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    model = train_only(train_uri=str(folder)).output
    bundle = ModelBundle.load(Path(model.path))
    assert 0.0 < bundle.config.threshold < 1.0
    assert model.metadata["framework"] == "pytorch"
    # Where it trained, recorded with the artifact: the session's Ray head, as configured.
    assert (model.metadata["ray_address"], model.metadata["ray_cluster"]) == (ray_head, False)
    assert model.metadata["ray_fallback"] == ""
