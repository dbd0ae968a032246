"""Gate: judge the candidate against the objectives and the registry's champion.

The champion (alias ``champion``, else the latest version) is downloaded and scored on
the *same* evaluation set as the candidate, so the comparison is like for like even
when the champion's stored metrics came from an older window.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from kubeloop.components.evaluate.impl import EVALUATION_FILE, score_window
from kubeloop.components.train.impl import StageInputError, read_split

from kubeloop.evaluation.gate import GateDecision, decide, render_markdown
from kubeloop.model import ModelBundle
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


def champion_metrics(
    registry: ModelRegistry, model_name: str, version: str, eval_set: str | Path
) -> dict[str, float]:
    frame, _ = read_split(eval_set, "eval_set")
    with tempfile.TemporaryDirectory(prefix="kubeloop-champion-") as tmp:
        _, folder = registry.download(model_name, version, tmp)
        bundle = ModelBundle.load(folder)
        return score_window(bundle, frame).headline()


def run_gate(
    evaluation_dir: str | Path,
    eval_set: str | Path,
    model_name: str,
    registry_uri: str,
    decision_dir: str | Path,
    report_path: str | Path,
) -> GateDecision:
    settings = get_settings()
    path = Path(evaluation_dir) / EVALUATION_FILE
    if not path.exists():
        raise StageInputError(
            f"evaluation: {path} does not exist (expected the evaluate stage output)"
        )
    candidate = json.loads(path.read_text())
    registry = ModelRegistry(registry_uri or settings.registry_uri)
    version = champion_ref(registry, model_name)
    champion = (
        champion_metrics(registry, model_name, version, eval_set) if version is not None else None
    )
    decision = decide(
        candidate,
        settings.objectives,
        champion,
        tolerance=settings.gate.champion_tolerance,
        compare_metric=settings.gate.compare_metric,
        champion_version=version,
    )
    folder = Path(decision_dir)
    folder.mkdir(parents=True, exist_ok=True)
    body = decision.to_dict()
    body["candidate_metrics"] = {
        k: candidate.get(k) for k in ("roc_auc", "pr_auc", "ece", "accuracy")
    }
    body["champion_metrics"] = champion
    (folder / GATE_FILE).write_text(json.dumps(body, indent=2))
    Path(report_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_path).write_text(render_markdown(decision, model_name))
    return decision
