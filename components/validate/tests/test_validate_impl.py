"""Tier 1: the validate implementation called directly, on good and deliberately bad data."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from kubeloop.components.validate.checks import ValidationConfig
from kubeloop.components.validate.impl import DataValidationError, run_validate

from kubeloop.data.sources import read_source, write_snapshot

SOURCE = "example://fraud/stationary?days=4&accounts=300&seed=3"


@pytest.fixture(scope="module")
def clean():
    return read_source(SOURCE)


def _run(tmp_path, data, cfg=ValidationConfig()):
    write_snapshot(data, tmp_path / "ds")
    return run_validate(
        tmp_path / "ds", tmp_path / "validated", tmp_path / "report.html", tmp_path / "schema", cfg
    )


def _fails(tmp_path, data, check, column, cfg=ValidationConfig()):
    with pytest.raises(DataValidationError, match=re.escape(check)) as err:
        _run(tmp_path, data, cfg)
    report = (tmp_path / "report.html").read_text()
    assert check in report and column in report and "FAIL" in report
    assert column in str(err.value)
    # Nothing passes through a failed validation.
    assert not (tmp_path / "validated").exists() and not (tmp_path / "schema").exists()
    return report


def test_clean_data_passes_and_writes_serving_schema(tmp_path, clean):
    outcome = _run(tmp_path, clean)
    assert not outcome.failed and len(outcome.results) >= 8
    assert (tmp_path / "validated" / "transactions.parquet").exists()
    body = json.loads((tmp_path / "schema" / "schema.json").read_text())
    stats = body["statistics"]
    amount = clean.transactions["amount"]
    assert stats["amount"]["min"] == pytest.approx(amount.min())
    assert stats["amount"]["max"] == pytest.approx(amount.max())
    assert stats["amount"]["mean"] == pytest.approx(amount.mean())
    assert sum(stats["merchant_category"]["frequencies"].values()) == pytest.approx(1.0)
    assert "avg_amount_30d" in stats  # feature-view features, from the account snapshots
    assert body["columns"] and body["row_count"] == len(clean.transactions)
    assert "PASSED" in (tmp_path / "report.html").read_text()


def _copy(data):
    from dataclasses import replace

    return replace(data, transactions=data.transactions.copy())


def test_out_of_range_and_unknown_category(tmp_path, clean):
    data = _copy(clean)
    data.transactions.loc[5, "amount"] = -3.0
    data.transactions.loc[7, "merchant_category"] = "casino"
    report = _fails(tmp_path, data, "schema (transactions)", "amount")
    assert "merchant_category" in report and "casino" in report
    assert data.transactions.loc[5, "transaction_id"] in report  # offending row id


def test_duplicate_ids(tmp_path, clean):
    data = _copy(clean)
    data.transactions.loc[9, "transaction_id"] = data.transactions.loc[8, "transaction_id"]
    _fails(tmp_path, data, "schema", "transaction_id")


def test_duplicate_rows(tmp_path, clean):
    data = _copy(clean)
    tx = data.transactions
    tx.iloc[20, 1:] = tx.iloc[10, 1:]
    report = _fails(tmp_path, data, "duplicate rows", "amount")
    assert tx.loc[20, "transaction_id"] in report


def test_label_outside_0_1(tmp_path, clean):
    data = _copy(clean)
    data.transactions.loc[3, "is_fraud"] = 2
    _fails(tmp_path, data, "label set", "is_fraud", ValidationConfig())


def test_class_balance(tmp_path, clean):
    data = _copy(clean)
    positives = data.transactions.index[data.transactions["is_fraud"] == 1]
    data.transactions.loc[positives[3:], "is_fraud"] = 0
    _fails(tmp_path, data, "class balance", "is_fraud", ValidationConfig(min_class_count=10))


def test_leaky_numeric_feature(tmp_path, clean):
    data = _copy(clean)
    tx = data.transactions
    rng = np.random.default_rng(0)
    tx["distance_from_home_km"] = tx["is_fraud"] * 500.0 + rng.uniform(0, 10, len(tx))
    report = _fails(tmp_path, data, "leakage", "distance_from_home_km")
    assert "ROC-AUC 1.000" in report


def test_leaky_category_deterministic_mapping(tmp_path, clean):
    data = _copy(clean)
    tx = data.transactions
    tx["merchant_category"] = np.where(tx["is_fraud"] == 1, "jewelry", "grocery")
    _fails(tmp_path, data, "leakage", "merchant_category")


def test_label_known_before_the_event(tmp_path, clean):
    data = _copy(clean)
    tx = data.transactions
    tx.loc[11, "label_timestamp"] = tx.loc[11, "event_timestamp"] - np.timedelta64(1, "h")
    report = _fails(tmp_path, data, "label timing", "label_timestamp")
    assert tx.loc[11, "transaction_id"] in report


def test_missing_rate_of_a_nullable_column(tmp_path, clean):
    data = _copy(clean)
    spec = data.schema.column("distance_from_home_km")
    schema = data.schema.model_copy(deep=True)
    schema.columns[[c.name for c in schema.columns].index(spec.name)].nullable = True
    data.schema = schema
    data.transactions.loc[data.transactions.index[::5], "distance_from_home_km"] = np.nan
    _fails(tmp_path, data, "missing values", "distance_from_home_km")


def test_account_snapshot_out_of_range(tmp_path, clean):
    from dataclasses import replace

    data = replace(clean, account_features=clean.account_features.copy())
    data.account_features.loc[0, "avg_amount_30d"] = -1.0
    _fails(tmp_path, data, "schema (account_features)", "avg_amount_30d")


def test_leaky_feature_view_feature(tmp_path, clean):
    """A snapshot value that encodes the label is caught before the features stage joins it."""
    from dataclasses import replace

    accounts = clean.account_features.copy()
    fraudsters = set(clean.transactions.loc[clean.transactions["is_fraud"] == 1, "account_id"])
    tx = clean.transactions[
        (clean.transactions["is_fraud"] == 1) | ~clean.transactions["account_id"].isin(fraudsters)
    ].reset_index(drop=True)
    accounts["txn_count_24h"] = accounts["account_id"].isin(fraudsters).astype(float) * 100.0
    _fails(
        tmp_path,
        replace(clean, transactions=tx, account_features=accounts),
        "leakage",
        "txn_count_24h",
    )
