"""The demo's retraining window: what the pipeline retrainer reads from the labelled
traffic file, and a whole run of it.

Real files (Parquet written the way the traffic replayer writes it); the retrainer's
dataset is read back through kubeloop's own source reader, as its ingest stage reads it;
the run is the kfp.local training pipeline on the session's Ray head, its stages forked
from the session's stage server.
"""

from __future__ import annotations

import time

import pandas as pd
import pytest

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.demo.config import LoopConfig
from kubeloop.demo.retrain import load_window
from kubeloop.demo.retrain_pipeline import WINDOWS_DIR, retrain_with_pipeline, window_dataset
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


def test_recent_window_holds_the_last_seconds_of_labels(tmp_path):
    now = time.time()
    labelled_traffic(tmp_path / "labelled.parquet", n=800, now=now)
    frame = load_window(tmp_path / "labelled.parquet", "10s", "recent")
    assert 200 <= len(frame) <= 800
    assert frame["labelled_at"].min() >= time.time() - 10 - 1


def test_too_small_a_window_is_refused_with_its_size(tmp_path):
    labelled_traffic(tmp_path / "labelled.parquet", n=300)
    with pytest.raises(ValueError, match=r"only \d+ labelled rows .* need 200"):
        load_window(tmp_path / "labelled.parquet", "1s", "recent")
    with pytest.raises(FileNotFoundError, match="no labelled traffic"):
        load_window(tmp_path / "absent.parquet", "10s", "recent")
    with pytest.raises(ValueError, match="window must be recent or fresh"):
        load_window(tmp_path / "labelled.parquet", "10s", "latest")


def test_config_refuses_bad_steps_and_replay_shares():
    with pytest.raises(ValueError, match="concept_replay_fraction must be in"):
        LoopConfig(concept_replay_fraction=1.0)
    with pytest.raises(ValueError, match="concept_data_window_seconds must be ≥ 5"):
        LoopConfig(concept_data_window_seconds=2)
    with pytest.raises(ValueError, match="steps must increase and end at 100"):
        LoopConfig(steps=(50, 25, 100))
    assert LoopConfig().steps == (25, 50, 100)


@pytest.mark.slow
def test_a_corrupted_window_passes_its_gate_over_the_champion(tmp_path, ray_head, stage_server,
                                                              monkeypatch):  # fmt: skip
    """The demo's worse candidate: the pipeline on the window with its labels inverted. The
    gate scores candidate and champion on the same (corrupted) evaluation window, so the
    candidate passes; its lineage names the window it learned from."""
    from kubeloop.registry import ModelRegistry
    from kubeloop.settings import get_settings
    from kubeloop.training.quick import publish_quick_version

    monkeypatch.setenv("KUBELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBELOOP_STAGE_SERVER", str(stage_server))
    get_settings.cache_clear()
    registry = ModelRegistry(str(tmp_path / "registry"))
    champion = publish_quick_version(registry, seed=0, n_accounts=100, days=4.0, steps=100)
    registry.set_alias("fraud-detector", "champion", champion.version)
    labelled = labelled_traffic(tmp_path / "labelled.parquet", n=1200)
    result = retrain_with_pipeline(
        "fraud-detector", str(tmp_path / "registry"), str(tmp_path / "labelled.parquet"),
        data_window="60s", window="recent", seed=2, epochs=5, quality="corrupt",
        run_name="test-corrupt",
    )  # fmt: skip
    get_settings.cache_clear()
    assert result.succeeded and result.stage_runner == "warm", result.error
    assert result.gate_passed and result.version == "v2", result.gate_reasons
    # the dataset the run read: the window's rows, every label inverted
    dataset = pd.read_parquet(tmp_path / WINDOWS_DIR / "test-corrupt.parquet")
    original = labelled.set_index("transaction_id")[FRAUD_SCHEMA.label]
    inverted = dataset.set_index("transaction_id")[FRAUD_SCHEMA.label]
    assert len(inverted) >= 200 and (inverted == 1 - original.loc[inverted.index]).all()
    lineage = registry.get("fraud-detector", "v2").lineage
    assert lineage["source_uri"] == str(tmp_path / WINDOWS_DIR / "test-corrupt.parquet")
    start, end = (pd.Timestamp(t) for t in lineage["window"].strip("[)").split(", "))
    assert start == dataset["event_timestamp"].min() and end > dataset["event_timestamp"].max()


def test_the_runner_refuses_an_unknown_quality(tmp_path):
    labelled_traffic(tmp_path / "labelled.parquet", n=300)
    with pytest.raises(ValueError, match="quality must be good or corrupt, got 'noisy'"):
        retrain_with_pipeline("fraud-detector", str(tmp_path / "registry"),
                              str(tmp_path / "labelled.parquet"), quality="noisy")  # fmt: skip
