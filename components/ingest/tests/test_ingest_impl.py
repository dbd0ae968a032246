"""Tier 1: the ingest implementation called directly."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from kubeloop.components.ingest.impl import run_ingest

from kubeloop.data.fraud import FRAUD_SCHEMA, generate
from kubeloop.data.sources import SourceError

EXAMPLE = "example://fraud/covariate?days=3&accounts=150&seed=4"


def test_example_window_is_snapshotted_with_contract_files(tmp_path):
    result = run_ingest(
        EXAMPLE, "", "2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00Z", tmp_path / "ds"
    )
    tx = pd.read_parquet(tmp_path / "ds" / "transactions.parquet")
    assert result.row_count == len(tx) > 0
    assert tx["event_timestamp"].min() >= pd.Timestamp("2026-01-02", tz="UTC")
    assert tx["event_timestamp"].max() < pd.Timestamp("2026-01-03", tz="UTC")
    assert str(tx["event_timestamp"].dtype) == "datetime64[us, UTC]"
    accounts = pd.read_parquet(tmp_path / "ds" / "account_features.parquet")
    # Snapshots before the window stay (the point-in-time join needs them), none after it.
    assert accounts["event_timestamp"].max() < pd.Timestamp("2026-01-03", tz="UTC")
    assert json.loads((tmp_path / "ds" / "scenario.json").read_text())["scenario"] == "covariate"
    assert json.loads((tmp_path / "ds" / "schema.json").read_text())["name"] == FRAUD_SCHEMA.name
    assert len(result.data_hash) == 64


def test_data_hash_is_the_data_version(tmp_path):
    a = run_ingest(EXAMPLE, "", "", "", tmp_path / "a")
    b = run_ingest(EXAMPLE, "", "", "", tmp_path / "b")
    other_window = run_ingest(EXAMPLE, "", "2026-01-02T00:00:00Z", "", tmp_path / "c")
    other_seed = run_ingest(EXAMPLE.replace("seed=4", "seed=5"), "", "", "", tmp_path / "d")
    assert a.data_hash == b.data_hash
    assert len({a.data_hash, other_window.data_hash, other_seed.data_hash}) == 3


def test_folder_source_has_the_same_version_as_the_example_it_came_from(tmp_path):
    generate("covariate", days=3, n_accounts=150, seed=4).write(tmp_path / "src")
    from_folder = run_ingest(str(tmp_path / "src"), "", "", "", tmp_path / "a")
    from_example = run_ingest(EXAMPLE, "", "", "", tmp_path / "b")
    assert from_folder.data_hash == from_example.data_hash
    assert from_folder.row_count == from_example.row_count


def test_bad_window_names_the_problem_and_writes_nothing(tmp_path):
    with pytest.raises(SourceError, match="holds no rows"):
        run_ingest(EXAMPLE, "", "2030-01-01", "", tmp_path / "out")
    with pytest.raises(SourceError, match="window_start .* not before window_end"):
        run_ingest(EXAMPLE, "", "2026-01-03", "2026-01-02", tmp_path / "out")
    with pytest.raises(SourceError, match="not an ISO-8601 time"):
        run_ingest(EXAMPLE, "", "yesterday", "", tmp_path / "out")
    assert not (tmp_path / "out").exists()
