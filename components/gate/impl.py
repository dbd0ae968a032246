"""Gate: judge the candidate against the objectives and the registry's champion.

The champion (alias ``champion``, else the latest version) is downloaded and scored on
the *same* evaluation set as the candidate, so the comparison is like for like even
when the champion's stored metrics came from an older window. The candidate's and the
champion's decisions are paired row by row, so a drop in accuracy refuses the candidate
only when the champion is better with confidence (``PairedRows``).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from kubeloop.components.evaluate.impl import EVALUATION_FILE, score_window
from kubeloop.components.train.impl import StageInputError, read_split

from kubeloop.evaluation.gate import GateDecision, PairedRows, decide, render_markdown
from kubeloop.evaluation.metrics import correct_at_window_threshold
from kubeloop.model import ModelBundle
from kubeloop.model.publish import load_version
from kubeloop.registry import ModelRegistry, VersionNotFound
from kubeloop.settings import get_settings

GATE_FILE = "gate.json"


def champion_ref(registry: ModelRegistry, model_name: str) -> str | None:
    """The version the candidate must beat: alias ``champion``, else the latest, else none."""
    alias = registry.get_alias(model_name, "champion")
    if alias:
        return alias
    try:
        return registry.resolve(model_name, "latest")
    except VersionNotFound:
        return None


def window_correct(
    bundle: ModelBundle, frame: pd.DataFrame, scores: np.ndarray | None = None
) -> np.ndarray:
    """Per row of the window: is the bundle's decision at its window threshold right
    (``scores``: the bundle's scores of ``frame`` when already computed)."""
    if scores is None:
        scores, _ = bundle.predict(frame)
    return correct_at_window_threshold(frame[bundle.schema.label].to_numpy(), scores)


def champion_metrics(
    registry: ModelRegistry, model_name: str, version: str, frame: pd.DataFrame
) -> tuple[dict[str, float], np.ndarray]:
    """The champion scored on the window: its metrics, and which rows it decides right."""
    bundle = load_version(registry, model_name, version)
    evaluation, scores = score_window(bundle, frame)
    return evaluation.headline(), window_correct(bundle, frame, scores)


def run_gate(
    evaluation_dir: str | Path,
    eval_set: str | Path,
    model_name: str,
    registry_uri: str,
    decision_dir: str | Path,
    report_path: str | Path,
    model_dir: str | Path | None = None,
) -> GateDecision:
    """Judges the evaluated candidate; with ``model_dir`` (the candidate bundle) the
    champion comparison is paired row by row on the window (``PairedRows``)."""
    settings = get_settings()
    path = Path(evaluation_dir) / EVALUATION_FILE
    if not path.exists():
        raise StageInputError(
            f"evaluation: {path} does not exist (expected the evaluate stage output)"
        )
    candidate = json.loads(path.read_text())
    registry = ModelRegistry(registry_uri or settings.registry_uri)
    version = champion_ref(registry, model_name)
    champion, paired = None, None
    if version is not None:
        frame, _ = read_split(eval_set, "eval_set")
        champion, theirs = champion_metrics(registry, model_name, version, frame)
        if model_dir is not None:
            paired = PairedRows.of(window_correct(ModelBundle.load(model_dir), frame), theirs)
    decision = decide(
        candidate,
        settings.objectives,
        champion,
        tolerance=settings.gate.champion_tolerance,
        compare_metric=settings.gate.compare_metric,
        champion_version=version,
        paired=paired,
        alpha=settings.gate.champion_alpha,
    )
    folder = Path(decision_dir)
    folder.mkdir(parents=True, exist_ok=True)
    body = decision.to_dict()
    body["candidate_metrics"] = {
        k: candidate.get(k) for k in ("roc_auc", "pr_auc", "ece", "accuracy")
    }
    body["champion_metrics"] = champion
    body["paired"] = None if paired is None else {**asdict(paired), "p_value": paired.p_value}
    (folder / GATE_FILE).write_text(json.dumps(body, indent=2))
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(render_markdown(decision, model_name))
    return decision
