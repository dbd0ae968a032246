"""The gate stage called directly, against a real local registry."""

from __future__ import annotations

import json

import pytest
from kubeloop.components.evaluate.impl import run_evaluate
from kubeloop.components.gate.impl import champion_ref, run_gate

from kubeloop.registry import ModelRegistry
from kubeloop.settings import get_settings
from kubeloop.training.quick import publish_quick_version
from tests.support.training import saved_bundle, split_frames, write_split


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """One evaluation window with a good and a barely trained candidate evaluated on it."""
    root = tmp_path_factory.mktemp("gate")
    train, evaluation = split_frames(days=6, n_accounts=400, seed=5)
    eval_set = write_split(evaluation, root / "eval")
    out = {"eval_set": eval_set}
    for name, steps in (("good", 200), ("weak", 1)):
        model = saved_bundle(train, root / name, seed=1, steps=steps)
        run_evaluate(model, eval_set, root / f"{name}.html", root / f"{name}-evaluation")
        out[name] = root / f"{name}-evaluation"
        out[f"{name}-model"] = model
    return out


@pytest.fixture
def lenient_objectives(monkeypatch):
    """Objectives that anything meets, so only the champion comparison decides."""
    for key in ("MIN_ROC_AUC", "MIN_PR_AUC", "MIN_ACCURACY"):
        monkeypatch.setenv(f"KUBELOOP_OBJECTIVES__{key}", "0")
    monkeypatch.setenv("KUBELOOP_OBJECTIVES__MAX_ECE", "1")
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def _run(window, which, registry, tmp_path):
    return run_gate(
        window[which],
        window["eval_set"],
        "fraud-detector",
        str(registry.uri),
        tmp_path / "decision",
        tmp_path / "gate.md",
        window[f"{which}-model"],
    )


def test_without_champion_objectives_decide(window, tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    good = _run(window, "good", registry, tmp_path)
    assert good.passed and good.champion_version is None
    saved = json.loads((tmp_path / "decision" / "gate.json").read_text())
    assert saved["passed"] is True and saved["champion_metrics"] is None
    assert "No champion" in (tmp_path / "gate.md").read_text()
    weak = _run(window, "weak", registry, tmp_path)
    assert not weak.passed
    assert any("roc_auc" in r and "misses" in r for r in weak.reasons)


def test_champion_is_scored_on_the_same_window(window, tmp_path, lenient_objectives):
    registry = ModelRegistry(str(tmp_path / "registry"))
    publish_quick_version(registry, seed=2, n_accounts=300, days=6)  # v1, a trained champion
    assert champion_ref(registry, "fraud-detector") == "v1"  # no alias yet: the latest
    weak = _run(window, "weak", registry, tmp_path)
    assert not weak.passed
    assert [c.name for c in weak.checks if not c.passed] == ["champion"]
    saved = json.loads((tmp_path / "decision" / "gate.json").read_text())
    assert saved["champion_version"] == "v1"
    # Scored here, on this window: the stored metrics of v1 came from its own data.
    stored = registry.get("fraud-detector", "v1").metrics["roc_auc"]
    candidate_rows = json.loads((window["weak"] / "evaluation.json").read_text())["rows"]
    assert saved["champion_metrics"]["eval_rows"] == candidate_rows
    assert saved["champion_metrics"]["roc_auc"] != stored
    # Paired on the window's rows: the barely trained candidate loses its disagreements
    # with the champion beyond chance, which is what refuses it.
    paired = saved["paired"]
    assert paired["rows"] == candidate_rows
    assert paired["champion_only"] > paired["candidate_only"] and paired["p_value"] < 0.05
    accuracy = saved["champion_metrics"]["window_accuracy"]
    weak_accuracy = json.loads((window["weak"] / "evaluation.json").read_text())["window_accuracy"]
    assert (paired["champion_only"] - paired["candidate_only"]) / paired["rows"] == (
        pytest.approx(accuracy - weak_accuracy)
    )
    assert _run(window, "good", registry, tmp_path).passed


def test_alias_champion_wins_over_latest(tmp_path):
    registry = ModelRegistry(str(tmp_path / "registry"))
    publish_quick_version(registry, seed=1, n_accounts=150, days=3, steps=50)
    publish_quick_version(registry, seed=2, n_accounts=150, days=3, steps=50)
    registry.set_alias("fraud-detector", "champion", "v1")
    assert champion_ref(registry, "fraud-detector") == "v1"
    assert champion_ref(registry, "other-model") is None
