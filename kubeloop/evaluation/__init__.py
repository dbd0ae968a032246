"""Evaluation: metrics, calibration, slices, the HTML report and the gate's decision."""

from kubeloop.evaluation.gate import GateDecision, decide
from kubeloop.evaluation.metrics import Evaluation, EvaluationError, evaluate_scores

__all__ = ["Evaluation", "EvaluationError", "GateDecision", "decide", "evaluate_scores"]
