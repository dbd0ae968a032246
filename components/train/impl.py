"""Train: read the train set, run Ray Train, write the ``ModelBundle`` and its metrics."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from kubeloop.data.fraud import FRAUD_SCHEMA
from kubeloop.data.schema import DatasetSchema
from kubeloop.training import TrainOutcome, TrainParams, train_model

DATA_FILE = "data.parquet"
SCHEMA_FILE = "schema.json"
HISTORY_FILE = "history.json"
# Where the run trained (a Ray cluster, or this pod's own Ray and why); the register stage
# copies it into the version's lineage.
RAY_FILE = "ray.json"


class StageInputError(ValueError):
    """An input artifact is missing or malformed; the message names it."""


def read_split(folder: str | Path, what: str) -> tuple[pd.DataFrame, DatasetSchema]:
    """A features-stage output folder: ``data.parquet`` (+ ``schema.json`` when present)."""
    folder = Path(folder)
    path = folder / DATA_FILE
    if not path.exists():
        raise StageInputError(f"{what}: {path} does not exist (expected the features stage output)")
    frame = pd.read_parquet(path)
    schema_path = folder / SCHEMA_FILE
    schema = (
        DatasetSchema.model_validate_json(schema_path.read_text())
        if schema_path.exists()
        else FRAUD_SCHEMA
    )
    missing = [c for c in [schema.timestamp, schema.label, *schema.feature_names] if c not in frame]
    if missing:
        raise StageInputError(f"{what}: {path} lacks columns {missing}")
    if frame.empty:
        raise StageInputError(f"{what}: {path} has no rows")
    return frame, schema


def run_train(train_set: str | Path, model_dir: str | Path, params: TrainParams) -> TrainOutcome:
    """Trains on ``train_set/data.parquet`` and saves the bundle (+ history) to ``model_dir``."""
    frame, schema = read_split(train_set, "train_set")
    outcome = train_model(frame, schema, params)
    folder = outcome.bundle.save(model_dir)
    (folder / HISTORY_FILE).write_text(json.dumps(outcome.history, indent=2))
    if outcome.ray is not None:
        (folder / RAY_FILE).write_text(json.dumps(asdict(outcome.ray), indent=2))
    return outcome
