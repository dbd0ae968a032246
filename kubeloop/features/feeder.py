"""Keeping the online store current: each day's account snapshots written as the day comes.

Account profiles change over time: a snapshot stamped at a day's midnight summarises the
history before it and is what serving should read for that day's transactions.
:class:`SnapshotFeeder` writes the snapshots of each new day into the Feast online store
(Feast's push path, ``write_to_online_store``: the same rows ``materialize`` would copy
from the offline store) when it is told the day has come, on a worker thread, so the
caller (a traffic replay, a scheduler) never waits on the store.

Its metrics tell how fresh the store is: the data time of the newest snapshot online, the
wall time of the last write and, computed when scraped, the age of the store (seconds
since that write), per feature view.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from pathlib import Path

import pandas as pd
from prometheus_client import CollectorRegistry, Counter, Gauge

from kubeloop.features.feast_import import load_feast
from kubeloop.features.store import ENTITY_TIMESTAMP

log = logging.getLogger(__name__)


class FeederMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ["feature_view"]
        self.snapshot_time = Gauge(
            "kubeloop_online_store_snapshot_timestamp_seconds",
            "Data time (Unix seconds) of the newest snapshot written to the online store.",
            labels, registry=self.registry,
        )  # fmt: skip
        self.updated = Gauge(
            "kubeloop_online_store_updated_timestamp_seconds",
            "Wall time (Unix seconds) of the last successful write to the online store.",
            labels, registry=self.registry,
        )  # fmt: skip
        self.age = Gauge(
            "kubeloop_online_store_age_seconds",
            "Seconds since the online store was last written (computed when scraped).",
            labels, registry=self.registry,
        )  # fmt: skip
        self.writes = Counter(
            "kubeloop_online_store_writes_total",
            "Writes of a day's snapshots to the online store, by outcome.",
            [*labels, "outcome"], registry=self.registry,
        )  # fmt: skip
        self.rows = Counter(
            "kubeloop_online_store_rows_written_total",
            "Snapshot rows written to the online store.",
            labels, registry=self.registry,
        )  # fmt: skip


class SnapshotFeeder:
    """Writes ``snapshots`` (entity key, ``event_timestamp``, features) into the online store
    of the prepared Feast repository ``store_dir`` up to the day it is advanced to.

    ``written_until`` is the stamp of the newest snapshot already online (what
    :func:`kubeloop.features.store.prepare_feature_store` materialized).
    """

    def __init__(
        self,
        store_dir: str | Path,
        snapshots: pd.DataFrame,
        *,
        feature_view: str,
        written_until: pd.Timestamp,
        metrics: FeederMetrics | None = None,
    ) -> None:
        load_feast()
        from feast import FeatureStore

        if ENTITY_TIMESTAMP not in snapshots.columns:
            raise ValueError(f"snapshots need an {ENTITY_TIMESTAMP!r} column")
        self.store = FeatureStore(repo_path=str(store_dir))
        self.view = self.store.get_feature_view(feature_view).name
        self.snapshots = snapshots.sort_values(ENTITY_TIMESTAMP).reset_index(drop=True)
        self.written_until = pd.Timestamp(written_until)
        self.metrics = metrics or FeederMetrics()
        self.errors: list[str] = []
        self.writes = 0
        self._updated_at = time.time()
        self.metrics.updated.labels(self.view).set(self._updated_at)
        self.metrics.snapshot_time.labels(self.view).set(self.written_until.timestamp())
        self.metrics.age.labels(self.view).set_function(lambda: time.time() - self._updated_at)
        self._queue: queue.SimpleQueue[pd.Timestamp | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="snapshot-feeder", daemon=True)
        self._thread.start()

    def advance(self, day: pd.Timestamp) -> None:
        """Asks for every snapshot stamped at or before ``day`` to be online (returns at once)."""
        self._queue.put(pd.Timestamp(day))

    def close(self, timeout: float = 30.0) -> None:
        """Finishes the writes asked for, then stops the worker."""
        self._queue.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while (day := self._queue.get()) is not None:
            if day <= self.written_until:
                continue
            try:
                self.write_until(day)
            except Exception as exc:  # noqa: BLE001 - counted and kept; the next day retries
                log.exception("writing the snapshots up to %s failed", day)
                self.metrics.writes.labels(self.view, "error").inc()
                self.errors.append(f"{day}: {type(exc).__name__}: {exc}")

    def write_until(self, day: pd.Timestamp) -> int:
        """Writes the snapshots stamped after ``written_until`` and at or before ``day``;
        returns how many rows it wrote."""
        stamps = self.snapshots[ENTITY_TIMESTAMP]
        rows = self.snapshots[(stamps > self.written_until) & (stamps <= day)]
        if rows.empty:
            return 0
        self.store.write_to_online_store(self.view, rows)
        self.written_until = rows[ENTITY_TIMESTAMP].max()
        self._updated_at = time.time()
        self.writes += 1
        self.metrics.updated.labels(self.view).set(self._updated_at)
        self.metrics.snapshot_time.labels(self.view).set(self.written_until.timestamp())
        self.metrics.writes.labels(self.view, "ok").inc()
        self.metrics.rows.labels(self.view).inc(len(rows))
        return len(rows)
