"""The drift service's ``kubeloop_*`` metrics (names and labels from docs/contracts.md).

They live in the HTTP process; the detector worker sends snapshots (plain dicts, see
``VersionMonitor.snapshot``) that :meth:`DriftMetrics.publish` turns into series.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from kubeloop.contracts.payload_events import REJECT_REASONS

DETECTOR_LABELS = ("model", "version", "detector", "feature")
VERSION_LABELS = ("model", "version")


class DriftMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.statistic = Gauge(
            "kubeloop_drift_statistic",
            "Latest detector test statistic",
            DETECTOR_LABELS,
            registry=r,
        )
        self.threshold = Gauge(
            "kubeloop_drift_threshold",
            "Detector threshold for the ERT",
            DETECTOR_LABELS,
            registry=r,
        )
        self.detected = Gauge(
            "kubeloop_drift_detected",
            "1 once drift was detected since reset",
            DETECTOR_LABELS,
            registry=r,
        )
        self.since_reset = Gauge(
            "kubeloop_drift_seconds_since_reset",
            "Seconds since the version was watched",
            VERSION_LABELS,
            registry=r,
        )
        self.samples = Counter(
            "kubeloop_drift_samples", "Instances seen by the detectors", VERSION_LABELS, registry=r
        )
        self.feedback = Counter(
            "kubeloop_feedback",
            "Labelled instances by outcome, counted on arrival (before the detectors are armed too)",
            (*VERSION_LABELS, "outcome"),
            registry=r,
        )
        self.accuracy = Gauge(
            "kubeloop_live_accuracy",
            "Accuracy over the feedback window",
            VERSION_LABELS,
            registry=r,
        )
        self.roc_auc = Gauge(
            "kubeloop_live_roc_auc", "ROC-AUC over the feedback window", VERSION_LABELS, registry=r
        )
        self.estimated_accuracy = Gauge(
            "kubeloop_estimated_accuracy",
            "Accuracy over the latest predictions estimated from their scores alone (recalibrated "
            "on the version's reference sample), before their labels arrive",
            VERSION_LABELS,
            registry=r,
        )
        self.positive_rate = Gauge(
            "kubeloop_positive_rate",
            "Share of the positive class: in the reference's labels (reference) and predictions "
            "(reference_predicted), in the latest predictions (predicted), and the prior "
            "estimated from them through the reference's confusion matrix (estimated)",
            (*VERSION_LABELS, "source"),
            registry=r,
        )
        self.feature_p_value = Gauge(
            "kubeloop_feature_drift_p_value",
            "Per input feature, the p-value of the batch test (KS for numbers, chi-square for "
            "categories) of the latest explain_rows instances against the reference: which "
            "inputs moved",
            (*VERSION_LABELS, "feature"),
            registry=r,
        )
        self.feature_statistic = Gauge(
            "kubeloop_feature_drift_statistic",
            "Per input feature, the batch test's statistic (KS distance, chi-square)",
            (*VERSION_LABELS, "feature"),
            registry=r,
        )
        self.rejected = Counter(
            "kubeloop_events_rejected", "Refused events by reason", ("reason",), registry=r
        )
        for reason in REJECT_REASONS:
            self.rejected.labels(reason=reason)
        self.dropped = Counter(
            "kubeloop_drift_dropped",
            "Paired instances and labels the detectors never read: the detector queue or the "
            "backlog of a version not armed yet was full",
            VERSION_LABELS,
            registry=r,
        )
        self.worker_up = Gauge(
            "kubeloop_drift_worker_up", "1 while the detector worker process runs", registry=r
        )
        self.worker_errors = Counter(
            "kubeloop_drift_worker_errors",
            "Detector updates that failed, and exits of the detector worker",
            ("kind",),
            registry=r,
        )
        for kind in ("update", "exit"):
            self.worker_errors.labels(kind=kind)

    def track(self, model: str, version: str) -> None:
        """Creates the version's counters at zero when the service starts tracking it, so
        ``increase()`` counts its first labels too."""
        labels = {"model": model, "version": version}
        self.dropped.labels(**labels)
        for outcome in ("correct", "incorrect"):
            self.feedback.labels(**labels, outcome=outcome)

    def label(self, model: str, version: str, correct: int, incorrect: int) -> None:
        """Labels accepted for the version, counted when they arrive (armed or not)."""
        if correct:
            self.feedback.labels(model=model, version=version, outcome="correct").inc(correct)
        if incorrect:
            self.feedback.labels(model=model, version=version, outcome="incorrect").inc(incorrect)

    def watch(self, model: str, version: str, reset_at: float) -> None:
        """(Re)creates the version's detector series once its detectors are armed, so a new
        watch starts from zero; labels and drops keep counting across watches."""
        self.forget(model, version)
        labels = {"model": model, "version": version}
        self.since_reset.labels(**labels).set_function(lambda: time.time() - reset_at)
        self.samples.labels(**labels)
        self.track(model, version)

    def forget(self, model: str, version: str, *, counters: bool = False) -> None:
        """Removes the version's detector series; with ``counters`` also its label and drop
        counts (a version no longer tracked)."""
        metrics = [self.statistic, self.threshold, self.detected, self.since_reset, self.samples,
                   self.accuracy, self.roc_auc, self.estimated_accuracy, self.positive_rate,
                   self.feature_p_value, self.feature_statistic]  # fmt: skip
        if counters:
            metrics += [self.feedback, self.dropped]
        for metric in metrics:
            for key in list(metric._metrics):  # noqa: SLF001 (prometheus_client has no prefix removal)
                if key[:2] == (model, version):
                    metric.remove(*key)

    def publish(self, snapshot: dict[str, Any], new_samples: int = 0) -> None:
        """Detector counts and gauges of one armed version from its worker snapshot."""
        labels = {"model": snapshot["model"], "version": snapshot["version"]}
        if new_samples:
            self.samples.labels(**labels).inc(new_samples)
        if (acc := snapshot.get("live_accuracy")) is not None:
            self.accuracy.labels(**labels).set(acc)
        if (auc := snapshot.get("live_roc_auc")) is not None:
            self.roc_auc.labels(**labels).set(auc)
        if (est := snapshot.get("estimated_accuracy")) is not None:
            self.estimated_accuracy.labels(**labels).set(est)
        for source, rate in (snapshot.get("positive_rate") or {}).items():
            if rate is not None:
                self.positive_rate.labels(**labels, source=source).set(rate)
        for f in (snapshot.get("explained") or {}).get("features", []):
            self.feature_p_value.labels(**labels, feature=f["feature"]).set(f["p_value"])
            self.feature_statistic.labels(**labels, feature=f["feature"]).set(f["statistic"])
        for view in snapshot.get("features", []):
            dl = {**labels, "detector": view["detector"], "feature": view["feature"]}
            self.statistic.labels(**dl).set(view["statistic"])
            self.threshold.labels(**dl).set(view["threshold"])
            self.detected.labels(**dl).set(1.0 if view["detected"] else 0.0)
