"""The Prometheus observer against a real Prometheus scraping a real exporter process."""

from __future__ import annotations

import textwrap
import time

import pytest
from kubeloop.operators.observe import PrometheusObserver

from kubeloop.local.ports import free_port
from kubeloop.local.prometheus import start_prometheus, write_targets
from kubeloop.local.supervisor import Supervisor

EXPORTER = textwrap.dedent(
    """
    import random, sys, time
    from prometheus_client import Counter, Gauge, Histogram, start_http_server
    req = Counter("kubeloop_inference_requests_total", "r", ["model", "version", "status"])
    dur = Histogram("kubeloop_inference_duration_seconds", "d", ["model", "version"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25))
    score = Histogram("kubeloop_prediction_score", "s", ["model", "version"],
                      buckets=tuple(round(0.05 * i, 2) for i in range(1, 21)))
    drift = Gauge("kubeloop_drift_detected", "g", ["model", "version", "detector", "feature"])
    since = Gauge("kubeloop_drift_seconds_since_reset", "s", ["model", "version"])
    reset_at = time.time() - 100  # as if the detectors were reset 100 s before the start
    since.labels("fd", "v1").set_function(lambda: time.time() - reset_at)
    start_http_server(int(sys.argv[1]), addr="127.0.0.1")
    drift.labels("fd", "v1", "mmd", "_all").set(1)
    p_value = Gauge("kubeloop_feature_drift_p_value", "p", ["model", "version", "feature"])
    for feature, p in (("amount", 1e-9), ("hour", 0.4), ("merchant_category", 0.003)):
        p_value.labels("fd", "v1", feature).set(p)
    rate = Gauge("kubeloop_positive_rate", "r", ["model", "version", "source"])
    rate.labels("fd", "v1", "predicted").set(0.09)
    rng = random.Random(0)
    while True:
        for _ in range(20):
            req.labels("fd", "v1", "ok").inc()
            dur.labels("fd", "v1").observe(0.004)
            score.labels("fd", "v1").observe(rng.random() * 0.2)
            bad = rng.random() < 0.5
            req.labels("fd", "v2", "server_error" if bad else "ok").inc()
            dur.labels("fd", "v2").observe(0.2)
            score.labels("fd", "v2").observe(0.5 + rng.random() * 0.5)
        time.sleep(0.1)
    """
)


@pytest.mark.slow
def test_observer_reads_per_version_metrics_and_drift(tmp_path):
    sup = Supervisor(tmp_path / "runtime")
    exporter_port, prom_port = free_port(), free_port()
    t0 = time.monotonic()
    try:
        sup.start(
            "exporter",
            ["-c", EXPORTER, str(exporter_port)],
            health_url=f"http://127.0.0.1:{exporter_port}/",
        )
        write_targets(tmp_path / "prom", "exporter", [f"127.0.0.1:{exporter_port}"])
        start_prometheus(sup, tmp_path / "prom", prom_port, wait=False)
        sup.wait_healthy("exporter", 20)
        sup.wait_healthy("prometheus", 30)
        observer = PrometheusObserver(f"http://127.0.0.1:{prom_port}", min_window_seconds=5)
        deadline = time.monotonic() + 40
        snap = None
        while time.monotonic() < deadline:
            snap = observer.version_metrics("fd", 10)
            if (
                snap.ok
                and {"v1", "v2"} <= set(snap.versions)
                and snap.versions["v2"].requests > 100
            ):
                break
            time.sleep(1)
        assert snap is not None and snap.ok, snap
        v1, v2 = snap.versions["v1"], snap.versions["v2"]
        assert v1.server_errors == 0 and 0.35 < v2.server_errors / v2.requests < 0.65
        assert v1.latency_p99 < 0.006 and v2.latency_p99 > 0.1
        assert max(v1.score_buckets) == float("inf")
        assert v1.score_buckets[0.2] == pytest.approx(v1.score_buckets[float("inf")])
        assert v2.score_buckets[0.5] == pytest.approx(0.0)
        # A canary's labels reach back to its first step: requests over that longer window
        # come with them (labels per request), the rest stays on the step's window.
        assert v1.feedback_requests is None
        longer = observer.version_metrics("fd", 5, feedback_seconds=60)
        assert (
            longer.ok and longer.versions["v1"].requests < longer.versions["v1"].feedback_requests
        )
        detected, detail = observer.drift("fd", "v1")
        assert detected is True and detail["detectors"] == {"mmd": 1.0}
        # the inputs that moved (p < 0.01), most significant first; hour did not
        assert detail["moved"] == [
            {"feature": "amount", "p_value": 1e-9},
            {"feature": "merchant_category", "p_value": 0.003},
        ]
        assert detail["positive_rate"] == {"predicted": 0.09}
        assert observer.drift("fd", "v9") == (None, {})
        # Seconds since the reset as of now: the last scrape's value plus the scrape's age.
        started = time.monotonic()
        age = observer.drift_reset_age("fd", "v1")
        assert age is not None and 100 < age < 100 + (time.monotonic() - t0) + 2.5
        time.sleep(1.5)
        later = observer.drift_reset_age("fd", "v1")
        assert later - age == pytest.approx(time.monotonic() - started, abs=0.5)
        assert observer.drift_reset_age("fd", "v9") is None
    finally:
        sup.stop_all()


def test_unreachable_prometheus_is_reported_not_hidden():
    observer = PrometheusObserver(f"http://127.0.0.1:{free_port()}", timeout=1)
    snap = observer.version_metrics("fd", 60)
    assert not snap.ok and "unreachable" in snap.error and snap.versions == {}
