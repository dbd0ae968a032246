"""Evaluate: score the eval set with the bundle; write metrics, report and reference sample."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from kubeloop.components.train.impl import read_split

from kubeloop.evaluation.metrics import Evaluation, evaluate_scores
from kubeloop.evaluation.report import render_html
from kubeloop.model import ModelBundle
from kubeloop.model.publish import reference_sample
from kubeloop.registry import REFERENCE_FILE

EVALUATION_FILE = "evaluation.json"
SLICE_COLUMNS = ("merchant_category",)


@dataclass
class EvaluateResult:
    evaluation: Evaluation
    reference: pd.DataFrame


def score_window(bundle: ModelBundle, frame: pd.DataFrame) -> tuple[Evaluation, np.ndarray]:
    """Every metric of ``bundle`` on one window, sliced by the categorical slice columns,
    and the scores behind them (one per row)."""
    scores, _ = bundle.predict(frame)
    slices = {c: frame[c] for c in SLICE_COLUMNS if c in frame}
    evaluation = evaluate_scores(
        frame[bundle.schema.label].to_numpy(), scores, bundle.config.threshold, slices
    )
    return evaluation, scores


def run_evaluate(
    model_dir: str | Path, eval_set: str | Path, report_path: str | Path, evaluation_dir: str | Path
) -> EvaluateResult:
    bundle = ModelBundle.load(model_dir)
    frame, _ = read_split(eval_set, "eval_set")
    evaluation, _ = score_window(bundle, frame)
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(render_html(evaluation, "kubeloop evaluation"))
    folder = Path(evaluation_dir)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / EVALUATION_FILE).write_text(json.dumps(evaluation.to_dict(), indent=2))
    reference = reference_sample(bundle, frame)
    reference.to_parquet(folder / REFERENCE_FILE, index=False)
    return EvaluateResult(evaluation=evaluation, reference=reference)
