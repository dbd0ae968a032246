"""Replay: rows of the champion's data mixed into a retraining window.

A window of recent labelled traffic is small (minutes of it) and shows only the world as
it is now. A model retrained on it alone forgets what did not change: under covariate
drift P(y|x) still holds where the old traffic was, and the window has a few dozen
frauds at most. ``spec.retraining.replayFraction`` sets the share of the training rows
drawn from the champion's data instead. They come from the champion's registered
reference sample (``reference.parquet``: up to 2,000 labelled rows spread over the data
it was trained and evaluated on), which every version carries in the registry, locally
and on object storage alike. Evaluation stays on the recent window: the retrained model
is judged on the world it will serve.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kubeloop.data.schema import DatasetSchema
from kubeloop.registry import REFERENCE_FILE, ModelRegistry


class ReplayError(ValueError):
    """The replay sample cannot be drawn; the message says why."""


@dataclass(frozen=True)
class Replay:
    """The rows replayed and where they came from (recorded in the lineage)."""

    rows: pd.DataFrame
    version: str
    fraction: float
    available: int

    def lineage(self) -> dict:
        return {
            "version": self.version,
            "file": REFERENCE_FILE,
            "fraction": self.fraction,
            "rows": len(self.rows),
            "available": self.available,
        }


def replay_count(window_rows: int, fraction: float) -> int:
    """Replay rows that make up ``fraction`` of the training rows beside ``window_rows``:
    n / (n + window_rows) = fraction."""
    if not 0.0 <= fraction < 1.0:
        raise ReplayError(f"replay fraction must be in [0, 1), got {fraction}")
    if window_rows < 0:
        raise ReplayError(f"window rows must be ≥ 0, got {window_rows}")
    return int(round(window_rows * fraction / (1.0 - fraction)))


def draw(sample: pd.DataFrame, count: int, seed: int) -> pd.DataFrame:
    """``count`` rows of ``sample`` without replacement (all of it when it has fewer), seeded,
    in the sample's order."""
    if count >= len(sample):
        return sample.reset_index(drop=True)
    rows = np.sort(np.random.default_rng(seed).choice(len(sample), size=count, replace=False))
    return sample.iloc[rows].reset_index(drop=True)


def replay_rows(
    reference: pd.DataFrame, schema: DatasetSchema, window_rows: int, fraction: float, seed: int
) -> pd.DataFrame:
    """The replayed rows: features and label of the reference sample, as many as make up
    ``fraction`` of the training rows (capped by the sample)."""
    columns = [*schema.feature_names, schema.label]
    if missing := [c for c in columns if c not in reference.columns]:
        raise ReplayError(f"the reference sample lacks column(s) {missing}")
    return draw(reference[columns], replay_count(window_rows, fraction), seed)


def load_replay(
    registry: ModelRegistry,
    model: str,
    version: str,
    schema: DatasetSchema,
    *,
    window_rows: int,
    fraction: float,
    seed: int,
) -> Replay:
    """Reads ``version``'s reference sample from the registry (checksum verified) and draws
    the replay rows for a window of ``window_rows`` training rows."""
    if not version:
        raise ReplayError("replay needs the champion's version (run parameter replay_version)")
    try:
        body = registry.read_file(model, version, REFERENCE_FILE)
    except Exception as exc:
        raise ReplayError(f"{model}/{version} has no readable {REFERENCE_FILE}: {exc}") from exc
    reference = pd.read_parquet(io.BytesIO(body))
    rows = replay_rows(reference, schema, window_rows, fraction, seed)
    return Replay(rows=rows, version=version, fraction=fraction, available=len(reference))
