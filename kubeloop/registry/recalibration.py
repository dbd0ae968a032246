"""A version recalibrated for label shift: the same model, its threshold moved for a new prior.

Under label shift the class prior moves from ``reference_prior`` to ``target_prior`` while
P(x|y) holds, so a calibrated score's posterior odds scale by

    r = target (1 - reference) / (reference (1 - target))

and the decision "adjusted score >= t" is "score >= t / (t + r (1 - t))" on the scores the
model already serves. :func:`publish_recalibrated` republishes a version with that
threshold in its ``model.json`` and a ``prior.json`` saying which prior it is for; the drift
service re-weights the version's reference sample to that prior (``kubeloop.drift.reference``),
so its detectors compare live traffic with the world the new version was made for. Only
JSON is changed: no torch, no pandas (the operator runs it).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from kubeloop.registry.registry import ModelRegistry, ModelVersion

MODEL_CONFIG_FILE = "model.json"  # the bundle's config (kubeloop.model.network)
PRIOR_FILE = "prior.json"  # the class prior a recalibrated version is for


def recalibrated_threshold(threshold: float, reference_prior: float, target_prior: float) -> float:
    """The threshold on unchanged scores that decides as ``threshold`` does on scores
    adjusted from ``reference_prior`` to ``target_prior`` (Bayes' rule, P(x|y) fixed)."""
    for name, value in (("reference_prior", reference_prior), ("target_prior", target_prior)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value!r}")
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold!r}")
    r = target_prior * (1 - reference_prior) / (reference_prior * (1 - target_prior))
    return threshold / (threshold + r * (1 - threshold))


def find_recalibration(registry: ModelRegistry, model: str, name: str) -> ModelVersion | None:
    """The version a recalibration called ``name`` published, if any (it is done once)."""
    for version in reversed(registry.list_versions(model)):
        if version.lineage.get("recalibration") == name:
            return version
    return None


def publish_recalibrated(
    registry: ModelRegistry,
    model: str,
    version: str,
    *,
    name: str,
    reference_prior: float,
    target_prior: float,
) -> ModelVersion:
    """Publishes ``version`` again with its threshold moved to ``target_prior``; its
    lineage names the source version and both priors, its gate stays the source's.
    Idempotent by ``name``."""
    if (done := find_recalibration(registry, model, name)) is not None:
        return done
    with tempfile.TemporaryDirectory(prefix="kubeloop-recalibrate-") as tmp:
        source, folder = registry.download(model, version, Path(tmp) / "version")
        config = json.loads((folder / MODEL_CONFIG_FILE).read_text())
        before = float(config.get("threshold", 0.5))
        after = recalibrated_threshold(before, reference_prior, target_prior)
        config["threshold"] = after
        (folder / MODEL_CONFIG_FILE).write_text(json.dumps(config, indent=2))
        prior = {
            "reference_prior": reference_prior,
            "target_prior": target_prior,
            "threshold": after,
            "recalibrated_from": source.version,
        }
        (folder / PRIOR_FILE).write_text(json.dumps(prior, indent=2))
        lineage: dict[str, Any] = {
            **source.lineage,
            "recalibration": name,
            "recalibrated_from": source.version,
            "reference_prior": reference_prior,
            "target_prior": target_prior,
            "threshold": {"from": before, "to": after},
        }
        lineage.pop("pipeline_run_id", None)  # not the run that trained it again
        gate = {
            **source.gate,
            "recalibration": f"{source.version}'s gated model, threshold {before:.4g} -> "
            f"{after:.4g} for a positive prior of {target_prior:.4g} "
            f"(reference {reference_prior:.4g})",
        }
        return registry.publish(model, folder, metrics=source.metrics, lineage=lineage, gate=gate)
