"""KFP component shell of the validate stage (the work lives in ``impl.py``).

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Output

from kubeloop.images import image


@dsl.component(base_image=image("validate"), install_kfp_package=False)
def validate(
    dataset: Input[Dataset],
    validated: Output[Dataset],
    report: Output[HTML],
    serving_schema: Output[Artifact],
):
    """Validates an ingested dataset; fails the run (after writing the report) on bad data.

    Args:
        dataset: the ingest stage's dataset folder.
        validated: the same dataset, passed through when every check passes.
        report: HTML table of every check, pass/fail, details, offending columns and row ids.
        serving_schema: folder with ``schema.json``: the declared schema plus observed
            per-feature statistics (min/max/mean, category frequencies).
    """
    from kubeloop.components.validate.impl import run_validate

    outcome = run_validate(dataset.path, validated.path, report.path, serving_schema.path)
    for key in ("row_count", "data_hash", "source_uri", "window"):
        if key in dataset.metadata:
            validated.metadata[key] = dataset.metadata[key]
    validated.metadata["checks_passed"] = len(outcome.results)
