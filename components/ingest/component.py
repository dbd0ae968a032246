"""KFP component shell of the ingest stage (the work lives in ``impl.py``).

No ``from __future__ import annotations`` here: KFP reads the real annotation objects.
"""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from kubeloop.images import image


@dsl.component(base_image=image("ingest"), install_kfp_package=False)
def ingest(
    source_uri: str,
    schema_uri: str,
    window_start: str,
    window_end: str,
    dataset: Output[Dataset],
) -> NamedTuple("IngestOutputs", [("row_count", int), ("data_hash", str)]):
    """Snapshots a time window of a data source as a versioned dataset.

    Args:
        source_uri: local path, ``s3://bucket/key`` or ``example://fraud/<scenario>?days=..``.
        schema_uri: JSON/YAML ``DatasetSchema``; empty = ``schema.json`` next to the data,
            else the fraud example's schema.
        window_start: ISO-8601 start of the window (inclusive); empty = unbounded.
        window_end: ISO-8601 end of the window (exclusive); empty = unbounded.
        dataset: output folder: ``transactions.parquet``, ``schema.json`` (+
            ``account_features.parquet``, ``scenario.json`` when present).

    Returns:
        row_count: transactions in the snapshot.
        data_hash: sha256 of the snapshot's canonical serialization (the data version).
    """
    from kubeloop.components.ingest.impl import run_ingest

    result = run_ingest(source_uri, schema_uri, window_start, window_end, dataset.path)
    dataset.metadata["row_count"] = result.row_count
    dataset.metadata["data_hash"] = result.data_hash
    dataset.metadata["source_uri"] = source_uri
    dataset.metadata["window"] = f"[{window_start or '-inf'}, {window_end or '+inf'})"
    return (result.row_count, result.data_hash)
