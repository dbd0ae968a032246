"""KFP component shell of the evaluate stage (the work lives in ``impl.py``).

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from kubeloop.images import image


@dsl.component(base_image=image("evaluate"), install_kfp_package=False)
def evaluate(
    model: Input[Model],
    eval_set: Input[Dataset],
    metrics: Output[Metrics],
    classification_metrics: Output[ClassificationMetrics],
    report: Output[HTML],
    evaluation: Output[Artifact],
):
    """Evaluates a model bundle on the held-out (later) window.

    Args:
        model: the train stage's ``ModelBundle`` folder.
        eval_set: features-stage eval folder with ``data.parquet``.
        metrics: ROC-AUC, PR-AUC, accuracy/precision/recall/F1 at the model's threshold,
            ECE, Brier score.
        classification_metrics: confusion matrix and ROC curve (KFP UI visualisations).
        report: self-contained HTML report (ROC, PR, reliability, per-slice plots).
        evaluation: folder with ``evaluation.json`` and ``reference.parquet`` (up to 2,000
            raw rows with ``prediction_score``, ``prediction`` and the label).
    """
    from kubeloop.components.evaluate.impl import run_evaluate

    result = run_evaluate(model.path, eval_set.path, report.path, evaluation.path)
    ev = result.evaluation
    for name, value in ev.headline().items():
        metrics.log_metric(name, value)
    classification_metrics.log_confusion_matrix(["legitimate", "fraud"], ev.confusion_matrix)
    classification_metrics.log_roc_curve(
        ev.roc_curve["fpr"], ev.roc_curve["tpr"], ev.roc_curve["threshold"]
    )
    evaluation.metadata["roc_auc"] = ev.roc_auc
    evaluation.metadata["reference_rows"] = len(result.reference)
