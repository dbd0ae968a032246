"""Register: assemble the version folder and publish it atomically to the registry."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from kubeloop.components.evaluate.impl import EVALUATION_FILE
from kubeloop.components.gate.impl import GATE_FILE
from kubeloop.components.train.impl import RAY_FILE, StageInputError

import kubeloop
from kubeloop.model.network import MODEL_CONFIG_FILE, MODEL_FILE, PREPROCESSING_FILE, SCHEMA_FILE
from kubeloop.registry import REFERENCE_FILE, ModelRegistry, ModelVersion
from kubeloop.settings import get_settings

PIPELINE_NAME = "kubeloop-training"
BUNDLE_FILES = (MODEL_FILE, MODEL_CONFIG_FILE, PREPROCESSING_FILE, SCHEMA_FILE)
METRIC_KEYS = ("roc_auc", "pr_auc", "accuracy", "precision", "recall", "f1", "ece", "brier")


class GateFailed(RuntimeError):
    """The gate did not pass; nothing may be published."""


def code_version() -> str:
    """``<kubeloop version>+g<commit>`` when a git checkout (or KUBELOOP_GIT_COMMIT) says which."""
    import os

    commit = os.environ.get("KUBELOOP_GIT_COMMIT")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short=12", "HEAD"],
                cwd=Path(kubeloop.__file__).parent,
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            commit = ""
    return f"{kubeloop.__version__}+g{commit}" if commit else kubeloop.__version__


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.exists():
        raise StageInputError(f"{what}: {path} does not exist")
    return json.loads(path.read_text())


def run_register(
    model_dir: str | Path,
    evaluation_dir: str | Path,
    decision_dir: str | Path,
    dataset_metadata: dict[str, Any],
    model_name: str,
    registry_uri: str,
    pipeline_run_id: str,
    parameters_json: str,
) -> ModelVersion:
    """Publishes the next version; sets ``champion`` only when the model has none yet."""
    gate = _read_json(Path(decision_dir) / GATE_FILE, "decision")
    if not gate.get("passed"):
        reasons = "; ".join(gate.get("reasons", [])) or "no reason recorded"
        raise GateFailed(f"refusing to register {model_name}: the gate failed ({reasons})")
    evaluation = _read_json(Path(evaluation_dir) / EVALUATION_FILE, "evaluation")
    try:
        parameters = json.loads(parameters_json or "{}")
    except json.JSONDecodeError as exc:
        raise StageInputError(f"parameters_json is not valid JSON: {exc}") from None
    for key in ("data_hash", "row_count"):
        if key not in dataset_metadata:
            raise StageInputError(f"dataset metadata lacks {key!r} (set by the ingest stage)")
    metrics = {k: evaluation[k] for k in METRIC_KEYS if k in evaluation}
    metrics.update(threshold=evaluation["threshold"], eval_rows=evaluation["rows"])
    lineage = {
        "data_hash": dataset_metadata["data_hash"],
        "row_count": int(dataset_metadata["row_count"]),
        "pipeline_run_id": pipeline_run_id,
        "pipeline_name": PIPELINE_NAME,
        "parameters": parameters,
        "code_version": code_version(),
        "source_uri": dataset_metadata.get("source_uri", parameters.get("source_uri", "")),
        "window": dataset_metadata.get(
            "window",
            {"start": parameters.get("window_start", ""), "end": parameters.get("window_end", "")},
        ),
    }
    ray_record = Path(model_dir) / RAY_FILE
    if ray_record.exists():
        # Where the model trained: the Ray cluster, or the train pod's own Ray and why.
        lineage["training_ray"] = _read_json(ray_record, "model")
    registry = ModelRegistry(registry_uri or get_settings().registry_uri)
    with tempfile.TemporaryDirectory(prefix="kubeloop-register-") as tmp:
        folder = Path(tmp)
        for name in BUNDLE_FILES:
            source = Path(model_dir) / name
            if not source.exists():
                raise StageInputError(f"model: {source} does not exist")
            shutil.copy2(source, folder / name)
        reference = Path(evaluation_dir) / REFERENCE_FILE
        if not reference.exists():
            raise StageInputError(f"evaluation: {reference} does not exist")
        shutil.copy2(reference, folder / REFERENCE_FILE)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2))
        (folder / "lineage.json").write_text(json.dumps(lineage, indent=2))
        (folder / GATE_FILE).write_text(json.dumps(gate, indent=2))
        version = registry.publish(model_name, folder, metrics=metrics, lineage=lineage, gate=gate)
    # The first version becomes champion; later promotions are the operator's decision.
    if registry.get_alias(model_name, "champion") is None:
        registry.set_alias(model_name, "champion", version.version)
    return version
