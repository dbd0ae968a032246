"""The demo's retraining runner: the kfp.local training pipeline on the recent window.

The operator's local driver calls ``retrain_with_pipeline`` in a run subprocess
(``KUBELOOP_OPERATOR_LOCAL_RUNNER=kubeloop.demo.retrain_pipeline:retrain_with_pipeline``).
It takes the window of labelled traffic (``kubeloop.demo.retrain.load_window``), writes it
as a Parquet dataset with the schema's columns — the account as entity key, the time of
the prediction as ``event_timestamp`` and the time the label came as
``label_timestamp`` (both ``datetime64[us, UTC]``) — and runs the training pipeline
(ingest → validate → features → Ray Train → evaluate → gate → register) on it, with the
window's bounds as the pipeline's ``window_start``/``window_end`` so the registered
version's lineage names them. ``quality="corrupt"`` inverts the window's labels first (a
broken label join): the gate, scoring candidate and champion on the same corrupted
window, passes the candidate, and only the canary's live accuracy can catch it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from kubeloop.demo.config import LoopConfig
from kubeloop.demo.retrain import corrupt_labels, load_window

WINDOWS_DIR = "windows"


def window_dataset(frame: pd.DataFrame) -> pd.DataFrame:
    """The labelled rows as a dataset of the fraud schema (its columns, in its order)."""
    from kubeloop.data.fraud import FRAUD_SCHEMA as schema

    missing = [c for c in ("sent_at", "labelled_at", schema.entity) if c not in frame.columns]
    if missing:
        raise ValueError(f"labelled traffic lacks {missing}; the pipeline needs them as keys")
    out = frame.copy()
    out[schema.timestamp] = pd.to_datetime(out["sent_at"], unit="s", utc=True).astype(
        "datetime64[us, UTC]"
    )
    if schema.label_timestamp:
        out[schema.label_timestamp] = pd.to_datetime(out["labelled_at"], unit="s", utc=True).astype(
            "datetime64[us, UTC]"
        )
    if "transaction_id" not in out.columns:
        out["transaction_id"] = [f"live-{i}" for i in range(len(out))]
    columns = [c.name for c in schema.columns]
    if absent := [c for c in columns if c not in out.columns]:
        raise ValueError(f"labelled traffic lacks the schema column(s) {absent}")
    return out[columns].sort_values(schema.timestamp).reset_index(drop=True)


def retrain_with_pipeline(
    model_name: str,
    registry_uri: str,
    labelled_traffic: str,
    data_window: str = "40s",
    window: str = "recent",
    seed: int = 1,
    run_name: str = "",
    epochs: int = LoopConfig.pipeline_epochs,
    batch_size: int = LoopConfig.pipeline_batch_size,
    members: int = LoopConfig.pipeline_members,
    target_positive_rate: float = 0.0,
    replay_fraction: float = 0.0,
    replay_version: str = "",
    distill_weight: float = 0.0,
    quality: str = "good",
    **_: Any,
):
    """Runs the training pipeline on the window; returns its ``TrainingRunResult``.

    A window holds hundreds of rows, not the pipeline's usual tens of thousands: small
    batches give the network enough optimiser steps in a few epochs.
    """
    from kubeloop.data.fraud import FRAUD_SCHEMA
    from kubeloop.local.pipelines import format_summary, run_training_pipeline

    if quality not in ("good", "corrupt"):
        raise ValueError(f"quality must be good or corrupt, got {quality!r}")
    path = Path(labelled_traffic)
    frame = load_window(path, data_window, window)
    if quality == "corrupt":
        frame = corrupt_labels(frame, FRAUD_SCHEMA.label)
    dataset = window_dataset(frame)
    folder = path.parent / WINDOWS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    source = folder / f"{run_name or 'window'}.parquet"
    dataset.to_parquet(source, index=False)
    times = dataset[FRAUD_SCHEMA.timestamp]
    bounds = {"start": times.min().isoformat(), "end": times.max().isoformat()}
    # window_end is exclusive: one microsecond past the last prediction keeps every row
    end = (times.max() + pd.Timedelta(microseconds=1)).isoformat()
    print(f"window {bounds['start']} .. {bounds['end']}: {len(dataset)} rows -> {source}")
    result = run_training_pipeline(
        source_uri=str(source), window_start=bounds["start"], window_end=end,
        model_name=model_name, registry_uri=registry_uri, epochs=int(epochs), seed=int(seed),
        batch_size=int(batch_size), members=int(members), target_positive_rate=float(target_positive_rate),
        replay_version=replay_version, replay_fraction=float(replay_fraction),
        distill_weight=float(distill_weight),
    )  # fmt: skip
    print(format_summary(result))
    return result
