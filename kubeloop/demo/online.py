"""The demo's Feast online store: prepared for the replay's first day, kept at its day.

Callers send the request features and the account; the predictors look the account
profile up in this store (``KUBELOOP_OPERATOR_FEAST_STORE``). It is prepared
(``feast apply``, the snapshots materialized up to the first day of traffic) before v1 is
deployed, and a :class:`~kubeloop.features.feeder.SnapshotFeeder` writes each day's
snapshots as the replay enters that day. The feeder's freshness metrics are served on a
loopback port that the local Prometheus scrapes (job ``features``).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kubeloop.demo.stream import ReplayStream

FEATURE_VIEW = "account_profile"
TARGET_GROUP = "features"


class DemoOnlineStore:
    def __init__(self, folder: Path, stream: ReplayStream) -> None:
        if stream.snapshots is None or stream.days is None:
            raise ValueError("the stream carries no account snapshots to serve")
        self.folder = Path(folder)
        self.stream = stream
        self.first_day = pd.Timestamp(stream.days.iloc[0])
        self.feeder = None
        self._server = None

    def prepare(self) -> None:
        """``feast apply`` and the snapshots up to the replay's first day, online."""
        from kubeloop.features.store import prepare_feature_store

        prepare_feature_store(self.folder, self.stream.snapshots, materialize_until=self.first_day)

    def start(self, prometheus_root: Path | None) -> None:
        """Starts the feeder and serves its metrics to the local Prometheus."""
        from prometheus_client import start_http_server

        from kubeloop.features.feeder import SnapshotFeeder
        from kubeloop.local.ports import free_port
        from kubeloop.local.prometheus import write_targets

        self.feeder = SnapshotFeeder(
            self.folder, self.stream.snapshots, feature_view=FEATURE_VIEW,
            written_until=self.first_day,
        )  # fmt: skip
        if prometheus_root is not None:
            port = free_port()
            self._server, _ = start_http_server(
                port, addr="127.0.0.1", registry=self.feeder.metrics.registry
            )
            write_targets(prometheus_root, TARGET_GROUP, [f"127.0.0.1:{port}"])

    def advance(self, day: pd.Timestamp) -> None:
        if self.feeder is not None:
            self.feeder.advance(day)

    def close(self) -> dict:
        """Stops the feeder and its metrics; returns what it did (writes, errors)."""
        out = {"writes": 0, "errors": [], "written_until": None}
        if self.feeder is not None:
            self.feeder.close()
            out = {
                "writes": self.feeder.writes,
                "errors": list(self.feeder.errors),
                "written_until": self.feeder.written_until.isoformat(),
            }
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        return out
