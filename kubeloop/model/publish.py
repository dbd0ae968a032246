"""Publishing a trained bundle as a registry version, with the files every version holds."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from kubeloop.model.network import BUNDLE_FILES, ModelBundle
from kubeloop.registry import REFERENCE_FILE, ModelRegistry, ModelVersion

REFERENCE_ROWS = 2000


def reference_sample(
    bundle: ModelBundle, frame: pd.DataFrame, rows: int = REFERENCE_ROWS
) -> pd.DataFrame:
    """About ``rows`` raw feature rows (all of ``frame`` when it holds no more) with
    ``prediction_score``, ``prediction`` and the label: the drift service's reference, in
    time order, over the whole window.

    Without feature-view features: an even sample (its first rows would cover the
    window's first hours only, so the hour of day and any other daily cycle would differ
    from traffic at every other time). With them, and the entity key in ``frame``: whole
    profiles, every row of each chosen entity and snapshot, chosen at random (seeded)
    until they hold ``rows`` rows, and the entity key kept. The drift service reads a
    profile's features once per profile; rows sampled one by one would keep a busy
    account's profile far more often than a quiet one's."""
    schema = bundle.schema
    view = [c.name for c in schema.view_features]
    keep = [*schema.feature_names, schema.label]
    if view and schema.entity in frame and len(frame) > rows:
        groups = frame.groupby([schema.entity, *view], sort=False).ngroup().to_numpy()
        order = np.random.default_rng(0).permutation(int(groups.max()) + 1)
        # profiles in random order until they hold ``rows`` rows (the last one whole)
        sizes = np.bincount(groups)[order]
        chosen = order[: int(np.searchsorted(np.cumsum(sizes), rows)) + 1]
        sample = frame.iloc[np.flatnonzero(np.isin(groups, chosen))]
    else:
        # evenly spaced over all of it (every k-th row, then the first rows, would stop short)
        index = np.unique(np.linspace(0, len(frame) - 1, num=min(rows, len(frame))).round())
        sample = frame.iloc[index.astype(int)]
    if view and schema.entity in frame:
        keep.append(schema.entity)
    scores, classes = bundle.predict(sample)
    out = sample[keep].reset_index(drop=True).copy()
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


def load_version(registry: ModelRegistry, model: str, version: str) -> ModelBundle:
    """``model``/``version``'s bundle, read from the registry with every checksum verified
    (the gate's champion, a distilling run's teacher): the bundle's files only, not the
    version's reference sample."""
    with tempfile.TemporaryDirectory(prefix="kubeloop-version-") as tmp:
        _, folder = registry.download(model, version, tmp, files=BUNDLE_FILES)
        return ModelBundle.load(folder)
