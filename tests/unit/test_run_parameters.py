"""The retraining run's parameters as the compiled training pipeline declares them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from kubeloop.operators.runs import pipeline_parameters

COMPILED = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "training.yaml"
NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def test_the_data_window_becomes_the_pipelines_window_bounds():
    out = pipeline_parameters({"model_name": "fd", "data_window": "36h", "epochs": "3"}, NOW)
    assert out == {
        "model_name": "fd",
        "epochs": "3",
        "window_start": (NOW - timedelta(hours=36)).isoformat(),
        "window_end": NOW.isoformat(),
    }
    # what the operator sends by default is what the compiled pipeline declares
    spec = next(yaml.safe_load_all(COMPILED.read_text()))  # then the platform spec
    declared = set(spec["root"]["inputDefinitions"]["parameters"])
    assert set(out) <= declared, set(out) - declared


def test_bounds_in_the_spec_win_and_a_bad_window_is_named():
    out = pipeline_parameters(
        {"data_window": "7d", "window_start": "2026-01-01T00:00:00+00:00"}, NOW
    )
    assert out["window_start"] == "2026-01-01T00:00:00+00:00"
    assert out["window_end"] == NOW.isoformat()
    assert pipeline_parameters({"epochs": "2"}, NOW) == {"epochs": "2"}
    with pytest.raises(ValueError, match="data_window.*'7 days'"):
        pipeline_parameters({"data_window": "7 days"}, NOW)


def test_the_replay_parameters_are_declared_by_the_compiled_pipeline():
    out = pipeline_parameters(
        {"data_window": "7d", "replay_fraction": "0.5", "replay_version": "v3",
         "distill_weight": "0.3"}, NOW,
    )  # fmt: skip
    assert out["replay_fraction"] == "0.5" and out["replay_version"] == "v3"
    assert out["distill_weight"] == "0.3"
    spec = next(yaml.safe_load_all(COMPILED.read_text()))
    assert set(out) <= set(spec["root"]["inputDefinitions"]["parameters"])
