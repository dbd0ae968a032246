"""Ingest: read a source, coerce it to its schema, keep the window, write the snapshot."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kubeloop.data.sources import data_hash, read_source, select_window, write_snapshot


@dataclass(frozen=True)
class IngestResult:
    row_count: int
    data_hash: str
    path: Path


def run_ingest(
    source_uri: str,
    schema_uri: str,
    window_start: str,
    window_end: str,
    out_dir: str | Path,
    *,
    timeout_s: float = 10.0,
) -> IngestResult:
    """Snapshots ``[window_start, window_end)`` of ``source_uri`` into ``out_dir``.

    Raises :class:`kubeloop.data.sources.SourceError` (nothing is written) when the
    source is unreadable or does not match its schema.
    """
    data = select_window(
        read_source(source_uri, schema_uri, timeout_s=timeout_s), window_start, window_end
    )
    digest = data_hash(data)
    path = write_snapshot(data, out_dir)
    return IngestResult(row_count=len(data.transactions), data_hash=digest, path=path)
