"""KFP component shell of the register stage (the work lives in ``impl.py``).

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import Artifact, Dataset, Input, Model

from kubeloop.images import image


@dsl.component(base_image=image("register"), install_kfp_package=False)
def register(
    model: Input[Model],
    evaluation: Input[Artifact],
    decision: Input[Artifact],
    dataset: Input[Dataset],
    model_name: str,
    registry_uri: str,
    pipeline_run_id: str,
    parameters_json: str,
) -> str:
    """Publishes the candidate as a new immutable registry version.

    Args:
        model: the ``ModelBundle`` folder.
        evaluation: folder with ``evaluation.json`` and ``reference.parquet``.
        decision: the gate's folder with ``gate.json``; a failed gate is refused.
        dataset: the ingested dataset (its metadata gives ``data_hash`` and ``row_count``).
        model_name: registry model name.
        registry_uri: local directory or ``s3://bucket/prefix``; empty = settings.
        pipeline_run_id: the KFP run that produced the model (lineage).
        parameters_json: the pipeline parameters as JSON (lineage).

    Returns:
        The new version name, e.g. ``v3``.
    """
    from kubeloop.components.register.impl import run_register

    version = run_register(
        model.path,
        evaluation.path,
        decision.path,
        dict(dataset.metadata),
        model_name,
        registry_uri,
        pipeline_run_id,
        parameters_json,
    )
    return version.version
