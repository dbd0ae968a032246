"""Compiles the pipelines to KFP IR YAML (the generator behind ``make compile``).

``render`` compiles with the chart's default release names, the committed IR;
``compile_training`` takes a release's own (the chart's upload Job, ``kubeloop pipeline
compile --image-registry ...``).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from kubeloop.pipelines.cluster import PipelineCluster

from kubeloop.generated import GENERATED_HEADER

COMPILED = {"training": "pipelines/compiled/training.yaml"}


def compile_training(path: str | Path, cluster: PipelineCluster | None = None) -> Path:
    from kfp import compiler
    from kubeloop.pipelines.training import build_training_pipeline, training_pipeline

    pipeline = training_pipeline if cluster is None else build_training_pipeline(cluster)
    compiler.Compiler().compile(pipeline, package_path=str(path))
    return Path(path)


def render(cluster: PipelineCluster | None = None) -> dict[str, str]:
    """``{relative path: IR YAML}`` for every pipeline, with the generated-file header."""
    with tempfile.TemporaryDirectory() as tmp:
        text = compile_training(Path(tmp) / "training.yaml", cluster).read_text()
    header = GENERATED_HEADER.format(source="pipelines/training.py")
    return {COMPILED["training"]: f"{header}\n{text}"}
