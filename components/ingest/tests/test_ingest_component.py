"""Tier 2: the ingest component run by kfp.local in a subprocess (the cluster's code path)."""

from __future__ import annotations

import pandas as pd
import pytest
from kfp import local
from kubeloop.components.ingest.component import ingest

from kubeloop.settings import get_settings

# kfp.local warns that a non-python base image runs in this environment: that is the point.
pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@pytest.fixture
def kfp_local(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBELOOP_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    yield tmp_path
    get_settings.cache_clear()


@pytest.mark.slow
def test_ingest_component_writes_dataset_and_outputs(kfp_local):
    task = ingest(
        source_uri="example://fraud/stationary?days=2&accounts=100&seed=1",
        schema_uri="",
        window_start="2026-01-01T12:00:00Z",
        window_end="",
    )
    dataset = task.outputs["dataset"]
    tx = pd.read_parquet(f"{dataset.path}/transactions.parquet")
    assert task.outputs["row_count"] == len(tx) == dataset.metadata["row_count"]
    assert task.outputs["data_hash"] == dataset.metadata["data_hash"]
    assert len(task.outputs["data_hash"]) == 64


@pytest.mark.slow
def test_ingest_component_fails_the_run_on_a_bad_source(kfp_local, tmp_path, capfd):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(RuntimeError):
        ingest(
            source_uri=str(tmp_path / "empty.csv"), schema_uri="", window_start="", window_end=""
        )
    captured = capfd.readouterr()
    assert "is an empty file" in captured.out + captured.err
    # The run stopped at ingest: nothing reached the model registry.
    registry = tmp_path / "home" / "registry"
    assert not registry.exists() or not any(registry.iterdir())
