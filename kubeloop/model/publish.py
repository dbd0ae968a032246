"""Publishing a trained bundle as a registry version, with the files every version holds."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from kubeloop.model.network import ModelBundle
from kubeloop.registry import ModelRegistry, ModelVersion

REFERENCE_FILE = "reference.parquet"


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
