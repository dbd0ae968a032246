"""Compiles the pipelines to KFP IR YAML (the generator behind ``make compile``)."""

from __future__ import annotations

import tempfile
from pathlib import Path

from kubeloop.generated import GENERATED_HEADER

COMPILED = {"training": "pipelines/compiled/training.yaml"}


def compile_training(path: str | Path) -> Path:
    from kfp import compiler
    from kubeloop.pipelines.training import training_pipeline

    compiler.Compiler().compile(training_pipeline, package_path=str(path))
    return Path(path)


def render() -> dict[str, str]:
    """``{relative path: IR YAML}`` for every pipeline, with the generated-file header."""
    with tempfile.TemporaryDirectory() as tmp:
        text = compile_training(Path(tmp) / "training.yaml").read_text()
    header = GENERATED_HEADER.format(source="pipelines/training.py")
    return {COMPILED["training"]: f"{header}\n{text}"}
