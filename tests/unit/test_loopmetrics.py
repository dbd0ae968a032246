"""Lock-free request-path metrics expose exactly what prometheus-client would."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from kubeloop.serving.loopmetrics import LoopCounterFamily, LoopHistogramFamily
from kubeloop.serving.metrics import LATENCY_BUCKETS, SCORE_BUCKETS


def _text(registry: CollectorRegistry) -> list[str]:
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]


values = st.floats(min_value=0, max_value=5, allow_nan=False) | st.sampled_from(
    [*LATENCY_BUCKETS, *SCORE_BUCKETS, 0.0, 2.5000001]
)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["v1", "v2"]), st.sampled_from(["ok", "client_error"]))),
    st.lists(st.tuples(st.sampled_from(["v1", "v2"]), values)),
)
def test_same_exposition_as_prometheus_client(incs, observations):
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    c1 = LoopCounterFamily("t_requests", "Requests.", ["version", "status"], registry=ours)
    c2 = Counter("t_requests_total", "Requests.", ["version", "status"], registry=theirs)
    h1 = LoopHistogramFamily("t_seconds", "Latency.", ["version"], LATENCY_BUCKETS, registry=ours)
    h2 = Histogram("t_seconds", "Latency.", ["version"], buckets=LATENCY_BUCKETS, registry=theirs)
    s1 = LoopHistogramFamily("t_score", "Score.", ["version"], SCORE_BUCKETS, registry=ours)
    s2 = Histogram("t_score", "Score.", ["version"], buckets=SCORE_BUCKETS, registry=theirs)
    for version, status in incs:
        c1.labels(version, status).inc()
        c2.labels(version, status).inc()
    for version, value in observations:
        for h in (h1, h2, s1, s2):
            h.labels(version).observe(value)
    assert _text(ours) == _text(theirs)


def test_mistakes_are_refused():
    registry = CollectorRegistry()
    counter = LoopCounterFamily("t_c", "c", ["a"], registry=registry)
    with pytest.raises(ValueError, match="labels"):
        counter.labels("x", "y")
    with pytest.raises(ValueError, match="only go up"):
        counter.labels("x").inc(-1)
    with pytest.raises(ValueError, match="increasing"):
        LoopHistogramFamily("t_h", "h", ["a"], [0.5, 0.1], registry=registry)
    with pytest.raises(ValueError, match="Duplicated"):
        LoopCounterFamily("t_c", "again", ["a"], registry=registry)
