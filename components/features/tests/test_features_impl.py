"""Tier 1: the features implementation called directly (real Feast for feature views)."""

from __future__ import annotations

import pandas as pd
import pytest
from kubeloop.components.features.impl import (
    FeatureStageError,
    ReplaySpec,
    output_columns,
    run_features,
    time_split,
)

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.data.sources import read_source, write_snapshot
from kubeloop.settings import get_settings


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KUBELOOP_FEAST_DIR", raising=False)
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


@pytest.mark.slow
def test_feature_view_join_and_time_split(tmp_path, home):
    data = read_source("example://fraud/stationary?days=4&accounts=150&seed=5")
    write_snapshot(data, tmp_path / "ds")
    result = run_features(tmp_path / "ds", tmp_path / "train", tmp_path / "eval", 0.25)
    train = pd.read_parquet(tmp_path / "train" / "data.parquet")
    evaluation = pd.read_parquet(tmp_path / "eval" / "data.parquet")
    assert list(train.columns) == list(evaluation.columns) == output_columns(FRAUD_SCHEMA)
    assert (result.train_rows, result.eval_rows) == (len(train), len(evaluation))
    assert len(train) + len(evaluation) + result.rows_without_features == len(data.transactions)
    assert train["event_timestamp"].max() < evaluation["event_timestamp"].min()
    span = data.transactions["event_timestamp"].max() - data.transactions["event_timestamp"].min()
    eval_span = evaluation["event_timestamp"].max() - evaluation["event_timestamp"].min()
    assert eval_span <= span * 0.25
    assert train[["account_age_days", "avg_amount_30d", "txn_count_24h"]].notna().all().all()
    # The Feast working copy lives under the configured feast_dir, one folder per run.
    assert result.feast_repo is not None and result.feast_repo.startswith(
        str(home.resolve() / "feast" / "runs")
    )
    # Point-in-time: each row's profile is the day's snapshot (stamped 00:00 of its day).
    accounts = data.account_features.set_index(["account_id", "event_timestamp"])
    row = train.iloc[len(train) // 2]
    snap = accounts.loc[(row["account_id"], row["event_timestamp"].floor("D"))]
    assert row["avg_amount_30d"] == snap["avg_amount_30d"]


def request_only_dataset(folder):
    """A source whose every feature arrives with the request: no Feast join."""
    data = read_source("example://fraud/stationary?days=3&accounts=80&seed=6")
    schema = FRAUD_SCHEMA.model_copy(deep=True)
    for col in schema.columns:
        col.source = "request"
    schema.feature_view = schema.feature_service = None
    accounts = data.account_features.drop(columns="created")
    tx = pd.merge_asof(
        data.transactions.sort_values("event_timestamp"),
        accounts.sort_values("event_timestamp"),
        on="event_timestamp",
        by="account_id",
    )
    data.transactions, data.schema, data.account_features = tx, schema, None
    write_snapshot(data, folder)
    return tx


def test_request_only_source_is_just_split(tmp_path, home):
    tx = request_only_dataset(tmp_path / "ds")
    result = run_features(tmp_path / "ds", tmp_path / "train", tmp_path / "eval", 0.5)
    assert result.feast_repo is None and not (home / "feast").exists()
    assert result.train_rows + result.eval_rows == len(tx)


def test_time_split_rejects_bad_fractions():
    frame = pd.DataFrame({"t": pd.date_range("2026-01-01", periods=10, freq="h", tz="UTC")})
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(
            FeatureStageError, match="eval_fraction must be strictly between 0 and 1"
        ):
            time_split(frame, "t", bad)
    with pytest.raises(FeatureStageError, match="leaves 0 train"):
        time_split(frame.head(1), "t", 0.2)
    train, evaluation, _ = time_split(frame, "t", 0.2)
    assert len(evaluation) == 2 and len(train) == 8


def test_replayed_rows_join_the_training_set_only(tmp_path, home):
    from kubeloop.registry import ModelRegistry
    from kubeloop.training.quick import publish_quick_version

    registry = tmp_path / "registry"
    champion = publish_quick_version(
        ModelRegistry(str(registry)), n_accounts=60, days=4.0, steps=20
    )
    request_only_dataset(tmp_path / "ds")
    spec = ReplaySpec("fraud-detector", champion.version, 0.25, str(registry), seed=3)
    result = run_features(tmp_path / "ds", tmp_path / "train", tmp_path / "eval", 0.5, replay=spec)
    train = pd.read_parquet(tmp_path / "train" / "data.parquet")
    evaluation = pd.read_parquet(tmp_path / "eval" / "data.parquet")
    replayed = train[train["transaction_id"].str.startswith(f"replay-{champion.version}-")]
    window_rows = len(train) - len(replayed)
    assert result.replay["rows"] == len(replayed) == round(window_rows / 3)  # 25 % of train
    assert result.replay["version"] == champion.version and result.train_rows == len(train)
    assert (replayed["account_id"] == -1).all()
    assert (replayed["event_timestamp"] == train["event_timestamp"].min()).all()
    assert replayed[FRAUD_SCHEMA.feature_names].notna().all().all()
    assert not evaluation["transaction_id"].str.startswith("replay-").any()
    assert list(train.columns) == output_columns(FRAUD_SCHEMA)


def test_a_version_without_a_reference_sample_stops_the_stage_before_writing(tmp_path, home):
    from kubeloop.data.replay import ReplayError

    request_only_dataset(tmp_path / "ds")
    spec = ReplaySpec("fraud-detector", "v4", 0.5, str(tmp_path / "registry"))
    with pytest.raises(ReplayError, match="fraud-detector/v4 has no readable reference"):
        run_features(tmp_path / "ds", tmp_path / "train", tmp_path / "eval", 0.5, replay=spec)
    assert not (tmp_path / "train").exists() and not (tmp_path / "eval").exists()


def test_distillation_puts_the_champions_score_beside_every_training_row(tmp_path, home):
    from kubeloop.model import ModelBundle
    from kubeloop.registry import ModelRegistry
    from kubeloop.training.loop import CHAMPION_SCORE
    from kubeloop.training.quick import publish_quick_version

    registry = ModelRegistry(str(tmp_path / "registry"))
    champion = publish_quick_version(registry, n_accounts=60, days=4.0, steps=20)
    request_only_dataset(tmp_path / "ds")
    spec = ReplaySpec(
        "fraud-detector", champion.version, 0.25, str(tmp_path / "registry"), distill=True
    )
    run_features(tmp_path / "ds", tmp_path / "train", tmp_path / "eval", 0.5, replay=spec)
    train = pd.read_parquet(tmp_path / "train" / "data.parquet")
    evaluation = pd.read_parquet(tmp_path / "eval" / "data.parquet")
    _, folder = registry.download("fraud-detector", champion.version, tmp_path / "champion")
    expected = ModelBundle.load(folder).predict_proba(train)
    assert train[CHAMPION_SCORE].to_numpy() == pytest.approx(expected)  # replayed rows too
    assert train["transaction_id"].str.startswith("replay-").any()
    assert CHAMPION_SCORE not in evaluation  # evaluation and the gate judge labels
    assert list(train.columns) == [*output_columns(FRAUD_SCHEMA), CHAMPION_SCORE]


def test_distilling_from_a_version_that_cannot_be_read_stops_before_writing(tmp_path, home):
    request_only_dataset(tmp_path / "ds")
    for version, message in (("", "needs the stable version"), ("v4", "fraud-detector/v4's model")):
        spec = ReplaySpec("fraud-detector", version, 0.0, str(tmp_path / "registry"), distill=True)
        with pytest.raises(FeatureStageError, match=message):
            run_features(tmp_path / "ds", tmp_path / "train", tmp_path / "eval", 0.5, replay=spec)
        assert not (tmp_path / "train").exists() and not (tmp_path / "eval").exists()


def test_the_teacher_is_read_without_its_reference_sample(tmp_path, home):
    """Distillation loads the stable version's model files only: the replay alone reads
    its reference sample, so a damaged sample stops a replaying run, not a distilling one."""
    from kubeloop.data.replay import ReplayError
    from kubeloop.registry import REFERENCE_FILE, ModelRegistry
    from kubeloop.training.loop import CHAMPION_SCORE
    from kubeloop.training.quick import publish_quick_version

    registry = ModelRegistry(str(tmp_path / "registry"))
    champion = publish_quick_version(registry, n_accounts=60, days=4.0, steps=20)
    stored = tmp_path / "registry" / "fraud-detector" / "versions" / champion.version
    (stored / REFERENCE_FILE).write_bytes(b"damaged")
    request_only_dataset(tmp_path / "ds")
    uri = str(tmp_path / "registry")
    distil = ReplaySpec("fraud-detector", champion.version, 0.0, uri, distill=True)
    run_features(tmp_path / "ds", tmp_path / "train", tmp_path / "eval", 0.5, replay=distil)
    assert pd.read_parquet(tmp_path / "train" / "data.parquet")[CHAMPION_SCORE].notna().all()
    both = ReplaySpec("fraud-detector", champion.version, 0.25, uri, distill=True)
    with pytest.raises(ReplayError, match="sha256 does not match"):
        run_features(tmp_path / "ds", tmp_path / "t2", tmp_path / "e2", 0.5, replay=both)
    assert not (tmp_path / "t2").exists() and not (tmp_path / "e2").exists()
