"""The whole training pipeline under kfp.local on small data, with one Ray for the session.

1. a first run registers v1 and makes it champion;
2. a second, deliberately weak run meets a champion: the gate scores v1 on the same
   evaluation window, fails the candidate, and register is skipped;
3. a run on bad data stops at validation and leaves the registry untouched.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pandas as pd
import pytest

from kubeloop.local.pipelines import format_summary, run_training_pipeline
from kubeloop.model import ModelBundle
from kubeloop.registry import ModelRegistry
from kubeloop.settings import get_settings
from kubeloop.training.loop import CHAMPION_SCORE

SMALL = "example://fraud/stationary?days=6&accounts=300&seed=0"

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore::UserWarning")]


@pytest.fixture
def home(tmp_path, monkeypatch, ray_head, stage_server):
    """A fresh home; stages fork from the warm stage server, as under `kubeloop up`
    (tests/local/test_stages.py runs them as processes too)."""
    monkeypatch.setenv("KUBELOOP_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KUBELOOP_STAGE_SERVER", str(stage_server))
    get_settings.cache_clear()
    yield tmp_path / "home"
    get_settings.cache_clear()


def _gate(result) -> dict:
    return json.loads(next(result.run_dir.rglob("gate/decision/gate.json")).read_text())


def test_first_run_registers_then_a_weaker_candidate_is_held(home, capsys, tmp_path):
    first = run_training_pipeline(source_uri=SMALL, epochs=3)
    assert first.succeeded, first.error
    # run-parameters has no inputs, so kfp.local may schedule it at any point.
    assert [s.name for s in first.stages if s.name != "run-parameters"][:6] == [
        "ingest",
        "validate",
        "features",
        "train",
        "evaluate",
        "gate",
    ]
    assert first.gate_passed and first.version == "v1"
    registry = ModelRegistry(first.registry_uri)
    assert registry.get_alias("fraud-detector", "champion") == "v1"
    v1 = registry.get("fraud-detector", "v1")
    assert v1.lineage["pipeline_run_id"] == first.run_id
    assert registry.find_by_run_id("fraud-detector", first.run_id).version == "v1"
    assert len(v1.lineage["data_hash"]) == 64 and v1.lineage["row_count"] > 1000
    assert v1.lineage["parameters"]["epochs"] == 3
    assert v1.lineage["source_uri"] == SMALL
    # Where it trained: the session's Ray head, which KUBELOOP_RAY_ADDRESS names.
    assert v1.lineage["training_ray"] == {
        "address": os.environ["KUBELOOP_RAY_ADDRESS"],
        "remote": False,
        "fallback": "",
        "in_process": False,
    }
    assert v1.metrics["roc_auc"] == pytest.approx(first.metrics["roc_auc"])
    assert "reference.parquet" in v1.files
    assert first.reports["evaluation"].exists() and first.log_file.exists()
    out = capsys.readouterr().out
    assert "[train] epoch 3/3" in out and "✔ gate" in out
    summary = format_summary(first)
    assert "registered: fraud-detector v1" in summary and "roc_auc=" in summary

    # Barely trained (one epoch at a tiny learning rate): the champion must win. It also
    # replays a quarter of its training rows from v1's reference sample, and distils its
    # targets toward v1's scores.
    second = run_training_pipeline(
        source_uri=SMALL, epochs=1, learning_rate=1e-6, seed=1,
        replay_version="v1", replay_fraction=0.25, distill_weight=0.3,
    )  # fmt: skip
    assert second.succeeded, second.error
    train = pd.read_parquet(second.run_dir / "features" / "train_set" / "data.parquet")
    # every training row (replayed ones too) carries v1's own score of it
    _, v1_folder = registry.download("fraud-detector", "v1", tmp_path / "v1")
    v1_scores = ModelBundle.load(v1_folder).predict_proba(train)
    assert np.allclose(train[CHAMPION_SCORE], v1_scores, atol=1e-6)
    out = json.loads((second.run_dir / "train" / "executor_output.json").read_text())
    assert out["artifacts"]["metrics"]["artifacts"][0]["metadata"]["distill_weight"] == 0.3
    evaluation = pd.read_parquet(second.run_dir / "features" / "eval_set" / "data.parquet")
    replayed = train["transaction_id"].str.startswith("replay-v1-")
    available = len(pd.read_parquet(io.BytesIO(registry.read_file("fraud-detector", "v1",
                                                                  "reference.parquet"))))  # fmt: skip
    # 25 % of the training rows, as far as v1's reference sample reaches
    assert replayed.sum() == min(round((~replayed).sum() / 3), available) > 0
    assert not evaluation["transaction_id"].str.startswith("replay-").any()
    assert second.gate_passed is False and second.version is None
    gate = _gate(second)
    assert gate["champion_version"] == "v1"
    champion = next(c for c in gate["checks"] if c["name"] == "champion")
    assert champion["passed"] is False and "same window" in champion["detail"]
    assert gate["champion_metrics"]["eval_rows"] == second.metrics["eval_rows"]
    assert not any(s.name == "register" for s in second.stages)
    assert [v.version for v in registry.list_versions("fraud-detector")] == ["v1"]
    assert "registered: nothing (the gate failed)" in format_summary(second)


def test_bad_data_stops_before_register(home, tmp_path):
    from kubeloop.data.fraud import generate
    from kubeloop.training.quick import publish_quick_version

    registry = ModelRegistry(get_settings().registry_uri)
    publish_quick_version(registry, n_accounts=100, days=3, steps=20)
    before = sorted(p.relative_to(home) for p in (home / "registry").rglob("*"))
    data = generate("stationary", days=3, n_accounts=150, seed=4)
    data.transactions.loc[10:20, "hour"] = 31  # impossible hours: validation must fail
    data.write(tmp_path / "bad")
    result = run_training_pipeline(source_uri=str(tmp_path / "bad"), epochs=1)
    assert not result.succeeded
    assert result.failed_stage == "validate"
    ran = [s.name for s in result.stages if s.name != "run-parameters"]
    assert ran[:2] == ["ingest", "validate"]
    assert not {"features", "train", "evaluate", "gate", "register"} & set(ran)
    assert sorted(p.relative_to(home) for p in (home / "registry").rglob("*")) == before
    assert "FAILED" in format_summary(result) and "validate" in format_summary(result)
