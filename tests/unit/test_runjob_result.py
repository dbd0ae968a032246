"""What a local retraining run reports to the operator (``result.json``)."""

from __future__ import annotations

from kubeloop.operators.reconciler.types import RunState

from kubeloop.local.operator.runjob import call_runner
from kubeloop.local.pipelines import TrainingRunResult

REASON = "window_accuracy 0.9400 vs champion v1 0.9700 on the same window (worse by 0.0300)"


def gate_kept_the_champion(**_) -> TrainingRunResult:
    return TrainingRunResult("r", None, True, "fd", "file:///registry", gate_passed=False,
                             gate_reasons=[REASON])  # fmt: skip


def gate_passed(**_) -> TrainingRunResult:
    return TrainingRunResult("r", None, True, "fd", "file:///registry", gate_passed=True,
                             gate_reasons=[REASON], version="v2")  # fmt: skip


def test_a_run_the_gate_stopped_names_the_gate_reasons():
    out = call_runner(f"{__name__}:gate_kept_the_champion", {})
    assert out == {"state": RunState.SUCCEEDED, "version": None,
                   "message": f"the gate refused the candidate: {REASON}"}  # fmt: skip
    assert call_runner(f"{__name__}:gate_passed", {})["message"] == ""
