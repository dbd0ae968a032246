"""The evaluate stage called directly on a small bundle and eval set."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from kubeloop.components.evaluate.impl import run_evaluate
from kubeloop.components.train.impl import StageInputError

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.model.publish import REFERENCE_ROWS
from tests.support.training import saved_bundle, split_frames, write_split


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    train, evaluation = split_frames(days=6, n_accounts=400)
    return saved_bundle(train, root / "model"), write_split(evaluation, root / "eval"), evaluation


def test_writes_metrics_report_and_reference(inputs, tmp_path):
    model, eval_set, evaluation = inputs
    result = run_evaluate(model, eval_set, tmp_path / "report.html", tmp_path / "evaluation")
    ev = json.loads((tmp_path / "evaluation" / "evaluation.json").read_text())
    assert ev["rows"] == len(evaluation) and ev["roc_auc"] > 0.85
    assert 0 <= ev["ece"] < 0.2
    assert {r["slice"] for r in ev["slices"]["merchant_category"]} == set(
        evaluation["merchant_category"]
    )
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 4
    reference = pd.read_parquet(tmp_path / "evaluation" / "reference.parquet")
    # the entity key too: the drift service reads each account profile once
    expected = {*FRAUD_SCHEMA.feature_names, "is_fraud", "account_id", "prediction_score",
                "prediction"}  # fmt: skip
    assert set(reference.columns) == expected
    assert len(reference) == min(len(evaluation), REFERENCE_ROWS) == len(result.reference)
    assert reference["prediction_score"].between(0, 1).all()
    assert set(reference["prediction"]) <= {0, 1}


def test_reference_takes_whole_profiles_up_to_about_2000_rows(tmp_path):
    train, evaluation = split_frames(days=8, n_accounts=700, eval_fraction=0.4)
    assert len(evaluation) > REFERENCE_ROWS
    model = saved_bundle(train, tmp_path / "model", steps=20)
    run_evaluate(
        model, write_split(evaluation, tmp_path / "e"), tmp_path / "r.html", tmp_path / "o"
    )
    reference = pd.read_parquet(tmp_path / "o" / "reference.parquet")
    profile = ["account_id", *(c.name for c in FRAUD_SCHEMA.view_features)]
    sizes = evaluation.groupby(profile).size()
    # at least 2,000 rows, and no more than the last profile taken adds
    assert REFERENCE_ROWS <= len(reference) < REFERENCE_ROWS + sizes.max()
    # every row of each profile taken: a busy account's day is in whole or not at all
    taken = reference.groupby(profile).size()
    assert (taken == sizes.loc[taken.index]).all()
    assert len(taken) < sizes.size  # a sample, not the whole window


def test_missing_eval_set_is_named(inputs, tmp_path):
    model, _, _ = inputs
    with pytest.raises(StageInputError, match="eval_set: .*data.parquet does not exist"):
        run_evaluate(model, tmp_path / "nowhere", tmp_path / "r.html", tmp_path / "o")
