"""Tier 2: the validate component run by kfp.local, fed by the ingest component.

No ``from __future__ import annotations``: the pipeline below is read by KFP.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
from kfp import dsl, local
from kubeloop.components.ingest.component import ingest
from kubeloop.components.validate.component import validate

from kubeloop.settings import get_settings

pytestmark = pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")


@pytest.fixture
def kfp_local(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBELOOP_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))
    yield tmp_path
    get_settings.cache_clear()


@dsl.pipeline(name="ingest-validate")
def ingest_validate(source_uri: str) -> dsl.Artifact:
    snap = ingest(source_uri=source_uri, schema_uri="", window_start="", window_end="")
    checked = validate(dataset=snap.outputs["dataset"])
    return checked.outputs["serving_schema"]


@pytest.mark.slow
def test_validate_component_passes_clean_data(kfp_local):
    run = ingest_validate(source_uri="example://fraud/stationary?days=3&accounts=200&seed=2")
    schema = json.loads((Path(run.output.path) / "schema.json").read_text())
    assert schema["statistics"]["amount"]["max"] > schema["statistics"]["amount"]["min"]


@pytest.mark.slow
def test_validate_component_stops_the_run_on_bad_data(kfp_local, tmp_path):
    from kubeloop.data.fraud import generate

    data = generate("stationary", days=3, n_accounts=200, seed=2)
    data.transactions.loc[4, "hour"] = 31
    data.write(tmp_path / "bad")
    with pytest.raises(RuntimeError):
        ingest_validate(source_uri=str(tmp_path / "bad"))
    reports = list((tmp_path / "runs").rglob("report"))
    assert reports, "the report is written before the run stops"
    html = reports[0].read_text()
    assert "FAIL" in html and "hour" in html and data.transactions.loc[4, "transaction_id"] in html
    assert isinstance(pd.read_parquet(tmp_path / "bad" / "transactions.parquet"), pd.DataFrame)
