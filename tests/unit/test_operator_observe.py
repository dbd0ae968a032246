"""Turning PromQL results and registry manifests into observations (pure parts)."""

from __future__ import annotations

from kubeloop.operators.gather import commands_from_annotations
from kubeloop.operators.observe import assemble


def sample(value, **labels):
    return {"metric": labels, "value": [1700000000, str(value)]}


def test_assemble_groups_by_version_and_clamps_errors():
    out = assemble(
        requests=[sample(100, version="v1"), sample(40, version="v2")],
        errors=[sample(3, version="v1"), sample(41.5, version="v2")],
        p99=[sample(0.02, version="v1"), sample("NaN", version="v2")],
        scores=[sample(90, version="v1", le="0.5"), sample(100, version="v1", le="+Inf")],
        feedback=[
            sample(30, version="v1", outcome="correct"),
            sample(2, version="v1", outcome="incorrect"),
        ],
        estimated=[sample(0.93, version="v1"), sample("NaN", version="v2")],
        feedback_requests=[sample(250, version="v1")],
    )
    v1, v2 = out["v1"], out["v2"]
    # requests over the labels' longer window (a canary's first step on), when asked
    assert (v1.feedback_requests, v2.feedback_requests) == (250, None)
    assert (v1.requests, v1.server_errors, v1.latency_p99) == (100, 3, 0.02)
    assert v1.score_buckets == {0.5: 90.0, float("inf"): 100.0}
    assert (v1.feedback_correct, v1.feedback_incorrect, v1.feedback) == (30, 2, 32)
    assert v2.server_errors == 40  # extrapolated increase() never exceeds requests
    assert v2.latency_p99 is None  # NaN quantile (no data) is "unknown", not a number
    assert (v1.estimated_accuracy, v2.estimated_accuracy) == (0.93, None)  # NaN: no estimate


def test_versions_without_request_counts_are_left_out():
    assert assemble([], [sample(1, version="v1")], [], [], []) == {}


def test_commands_from_annotations():
    assert commands_from_annotations({"kubeloop.io/promote": "v3", "other": "x"}) == {
        "promote": "v3"
    }
    assert commands_from_annotations(None) == {}
