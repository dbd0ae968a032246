"""The demo's retraining window: what the runners read from the labelled traffic file.

Real files (Parquet written the way the traffic replayer writes it); the pipeline
retrainer's dataset is read back through kubeloop's own source reader, as its ingest
stage reads it.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import pytest

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.demo.config import LoopConfig
from kubeloop.demo.retrain import load_window, train_on_recent_window, window_bounds
from kubeloop.demo.retrain_pipeline import window_dataset
from kubeloop.demo.stream import build_stream


def labelled_traffic(path, n: int = 400, *, now: float | None = None):
    """Rows as the replayer writes them: instance, label, account, ids, times."""
    now = time.time() if now is None else now
    stream = build_stream("stationary", rate=40, onset_seconds=5, duration_seconds=n / 40 + 6,
                          seed=3, n_accounts=100)  # fmt: skip
    rows = []
    for i in range(n):
        row = dict(stream.instances[i])
        row[FRAUD_SCHEMA.label] = int(stream.labels[i])
        row["sent_at"] = now - (n - i) / 40
        row["labelled_at"] = row["sent_at"] + 3
        row[FRAUD_SCHEMA.entity] = int(stream.account_ids[i])
        row["transaction_id"] = stream.transaction_ids[i]
        rows.append(row)
    frame = pd.DataFrame.from_records(rows)
    frame.to_parquet(path, index=False)
    return frame


def test_window_dataset_has_the_schema_columns_and_utc_microsecond_timestamps(tmp_path):
    from kubeloop.data.sources import read_source

    frame = labelled_traffic(tmp_path / "labelled.parquet")
    dataset = window_dataset(frame)
    assert list(dataset.columns) == [c.name for c in FRAUD_SCHEMA.columns]
    assert str(dataset["event_timestamp"].dtype) == "datetime64[us, UTC]"
    assert str(dataset["label_timestamp"].dtype) == "datetime64[us, UTC]"
    assert (dataset["label_timestamp"] > dataset["event_timestamp"]).all()
    assert dataset["event_timestamp"].is_monotonic_increasing
    dataset.to_parquet(tmp_path / "window.parquet", index=False)
    loaded = read_source(str(tmp_path / "window.parquet"))  # what the ingest stage reads
    assert len(loaded.transactions) == len(frame)


def test_window_dataset_names_missing_key_columns(tmp_path):
    frame = labelled_traffic(tmp_path / "labelled.parquet").drop(columns=["account_id"])
    with pytest.raises(ValueError, match="account_id"):
        window_dataset(frame)


def test_recent_window_and_its_bounds(tmp_path):
    now = time.time()
    labelled_traffic(tmp_path / "labelled.parquet", n=800, now=now)
    frame = load_window(tmp_path / "labelled.parquet", "10s", "recent")
    assert 200 <= len(frame) <= 800
    assert frame["labelled_at"].min() >= time.time() - 10 - 1
    bounds = window_bounds(frame)
    start, end = pd.Timestamp(bounds["start"]), pd.Timestamp(bounds["end"])
    assert start < end and end.tz is not None
    assert np.isclose(end.timestamp(), frame["sent_at"].max(), atol=1e-3)


def test_too_small_a_window_is_refused_with_its_size(tmp_path):
    labelled_traffic(tmp_path / "labelled.parquet", n=300)
    with pytest.raises(ValueError, match=r"only \d+ labelled rows .* need 200"):
        load_window(tmp_path / "labelled.parquet", "1s", "recent")
    with pytest.raises(FileNotFoundError, match="no labelled traffic"):
        load_window(tmp_path / "absent.parquet", "10s", "recent")
    with pytest.raises(ValueError, match="window must be recent or fresh"):
        load_window(tmp_path / "labelled.parquet", "10s", "latest")


def test_window_runner_records_the_window_in_the_lineage(tmp_path):
    labelled_traffic(tmp_path / "labelled.parquet", n=800)
    version = train_on_recent_window(
        "fraud-detector", str(tmp_path / "registry"), str(tmp_path / "labelled.parquet"),
        data_window="60s", steps=50, run_name="test-window",
    )  # fmt: skip
    window = version.lineage["window"]
    assert pd.Timestamp(window["start"]) < pd.Timestamp(window["end"])
    assert version.lineage["pipeline_run_id"] == "test-window"


def test_config_refuses_unknown_retrainer_and_bad_steps():
    with pytest.raises(ValueError, match="retrainer 'ray' is not one of window, pipeline"):
        LoopConfig(retrainer="ray")
    with pytest.raises(ValueError, match="steps must increase and end at 100"):
        LoopConfig(steps=(50, 25, 100))
    assert LoopConfig().steps == (25, 50, 100)


def test_window_runner_replays_the_champions_data_and_names_it_in_the_lineage(tmp_path):
    from kubeloop.registry import ModelRegistry
    from kubeloop.training.quick import publish_quick_version

    registry = ModelRegistry(str(tmp_path / "registry"))
    champion = publish_quick_version(registry, seed=0, n_accounts=60, days=4.0, steps=30)
    labelled_traffic(tmp_path / "labelled.parquet", n=800)
    version = train_on_recent_window(
        "fraud-detector", str(tmp_path / "registry"), str(tmp_path / "labelled.parquet"),
        data_window="60s", steps=50, run_name="test-replay",
        replay_fraction="0.6", replay_version=champion.version,
    )  # fmt: skip
    replay = version.lineage["replay"]
    window_rows = int(version.lineage["row_count"] * 0.7)
    assert replay["version"] == champion.version and replay["fraction"] == 0.6
    assert replay["rows"] == min(round(window_rows * 1.5), replay["available"])
    assert version.metrics["train_rows"] == window_rows + replay["rows"]
    # evaluation stays on the recent window
    assert version.metrics["eval_rows"] == version.lineage["row_count"] - window_rows


def test_window_runner_names_a_champion_without_a_reference_sample(tmp_path):
    from kubeloop.data.replay import ReplayError

    labelled_traffic(tmp_path / "labelled.parquet", n=800)
    with pytest.raises(ReplayError, match="replay_version"):
        train_on_recent_window(
            "fraud-detector", str(tmp_path / "registry"), str(tmp_path / "labelled.parquet"),
            data_window="60s", steps=5, replay_fraction=0.5,
        )  # fmt: skip
    with pytest.raises(ReplayError, match=r"fraud-detector/v7 has no readable reference"):
        train_on_recent_window(
            "fraud-detector", str(tmp_path / "registry"), str(tmp_path / "labelled.parquet"),
            data_window="60s", steps=5, replay_fraction=0.5, replay_version="v7",
        )  # fmt: skip
    assert not (tmp_path / "registry" / "fraud-detector" / "versions").exists() or not list(
        (tmp_path / "registry" / "fraud-detector" / "versions").iterdir()
    )
