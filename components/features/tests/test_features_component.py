"""Tier 2: the features component run by kfp.local, fed by the ingest component.

No ``from __future__ import annotations``: the pipeline below is read by KFP.
"""

from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl, local
from kubeloop.components.features.component import features
from kubeloop.components.ingest.component import ingest

from kubeloop.settings import get_settings

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@dsl.pipeline(name="ingest-features")
def ingest_features(source_uri: str) -> dsl.Dataset:
    snap = ingest(source_uri=source_uri, schema_uri="", window_start="", window_end="")
    split = features(dataset=snap.outputs["dataset"], eval_fraction=0.3)
    return split.outputs["eval_set"]


@pytest.mark.slow
def test_features_component_writes_eval_set(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBELOOP_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    try:
        run = ingest_features(source_uri="example://fraud/label_shift?days=3&accounts=100&seed=8")
    finally:
        get_settings.cache_clear()
    evaluation = pd.read_parquet(Path(run.output.path) / "data.parquet")
    assert {"account_age_days", "avg_amount_30d", "txn_count_24h", "is_fraud"} <= set(
        evaluation.columns
    )
    assert run.output.metadata["row_count"] == len(evaluation) > 0
    assert Path(run.output.metadata["feast_repo"], "feature_store.yaml").exists()
