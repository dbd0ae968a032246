"""KFP component shell of the gate stage (the work lives in ``impl.py``).

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Markdown, Model, Output

from kubeloop.images import image


@dsl.component(base_image=image("gate"), install_kfp_package=False)
def gate(
    model: Input[Model],
    evaluation: Input[Artifact],
    eval_set: Input[Dataset],
    model_name: str,
    registry_uri: str,
    decision: Output[Artifact],
    report: Output[Markdown],
) -> NamedTuple("GateOutputs", [("passed", bool), ("reasons", str)]):
    """Decides whether the candidate may be registered.

    Args:
        model: the candidate ``ModelBundle``: its decisions are paired row by row with the
            champion's on the window, and it is recorded in the decision's lineage.
        evaluation: the evaluate stage's folder with ``evaluation.json``.
        eval_set: the evaluation window, on which the champion is scored too.
        model_name: registry model name, e.g. ``fraud-detector``.
        registry_uri: local directory or ``s3://bucket/prefix``; empty = settings.
        decision: folder with ``gate.json`` (passed, checks, reasons, both metric sets).
        report: the decision as a Markdown table.

    Returns:
        passed: every objective met and not worse than the champion beyond tolerance.
        reasons: the failed checks (or all checks when passed), joined by ``; ``.
    """
    from kubeloop.components.gate.impl import run_gate

    verdict = run_gate(
        evaluation.path,
        eval_set.path,
        model_name,
        registry_uri,
        decision.path,
        report.path,
        model_dir=model.path,
    )
    decision.metadata["passed"] = verdict.passed
    decision.metadata["candidate_model"] = model.uri
    return (verdict.passed, "; ".join(verdict.reasons))
