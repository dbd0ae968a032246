"""Publishing a trained bundle as a registry version, with the files every version holds."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.model.network import ModelBundle
from kubeloop.registry import REFERENCE_FILE, ModelRegistry, ModelVersion

REFERENCE_ROWS = 2000


def reference_sample(
    bundle: ModelBundle, frame: pd.DataFrame, rows: int = REFERENCE_ROWS
) -> pd.DataFrame:
    """Up to ``rows`` raw feature rows with ``prediction_score``, ``prediction`` and the label
    (the drift service's reference): an even sample over the whole window, in time order.
    Its first rows would cover the window's first hours only, so the hour of day and any
    other daily cycle would differ from traffic at every other time."""
    schema = bundle.schema
    # evenly spaced over all of it (every k-th row, then the first rows, would stop short)
    index = np.unique(np.linspace(0, len(frame) - 1, num=min(rows, len(frame))).round())
    sample = frame.iloc[index.astype(int)]
    scores, classes = bundle.predict(sample)
    out = sample[[*schema.feature_names, schema.label]].reset_index(drop=True).copy()
    out["prediction_score"] = scores
    out["prediction"] = classes
    return out


def publish_bundle(
    registry: ModelRegistry,
    model_name: str,
    bundle: ModelBundle,
    *,
    reference: pd.DataFrame,
    metrics: dict[str, Any],
    lineage: dict[str, Any],
    gate: dict[str, Any],
) -> ModelVersion:
    """Writes the bundle, reference sample, metrics, lineage and gate, then publishes atomically."""
    with tempfile.TemporaryDirectory(prefix="kubeloop-version-") as tmp:
        folder = bundle.save(Path(tmp))
        reference.to_parquet(folder / REFERENCE_FILE, index=False)
        for name, body in (("metrics", metrics), ("lineage", lineage), ("gate", gate)):
            (folder / f"{name}.json").write_text(json.dumps(body, indent=2))
        return registry.publish(model_name, folder, metrics=metrics, lineage=lineage, gate=gate)
