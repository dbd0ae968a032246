"""Drift evidence after a promotion is about the new stable version, or it is no evidence.

The pass that promotes v2 still holds the drift flag read for v1 (the stable version
when the pass gathered), and right after promotion Prometheus may still hold v2's alarm
latched during its canary, until the drift service's reset of v2 is scraped.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from kubeloop.operators.crd import AnalysisStatus, ModelDeploymentStatus, parse_spec
from kubeloop.operators.reconciler.core import WATCH_SLACK_SECONDS, drift_evidence, reconcile
from kubeloop.operators.reconciler.types import (
    Observations,
    RecordDecision,
    RegistryVersion,
    SubmitRun,
    VersionMetrics,
    WatchDrift,
    iso,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
EDGES = [round(0.05 * i, 2) for i in range(1, 21)]


def spec():
    return parse_spec(
        {
            "model": {"name": "fraud-detector"},
            "rollout": {
                "steps": [50, 100],
                "minSamples": 100,
                "minStepSeconds": 10,
                "watchWindowSeconds": 30,
            },  # fmt: skip
            "monitoring": {"driftDurationSeconds": 5},
            "retraining": {"cooldownSeconds": 0, "maxAttempts": 3},
        }
    )


def healthy(n: float) -> VersionMetrics:
    buckets = {le: n * min(1.0, 0.7 + 0.015 * i) for i, le in enumerate(EDGES, 1)}
    return VersionMetrics(requests=n, server_errors=0, latency_p99=0.02, score_buckets=buckets)


def obs(
    t: float, *, drift=None, version=None, age=None, versions=None, reg=("v1", "v2")
) -> Observations:
    return Observations(
        now=T0 + timedelta(seconds=t),
        versions=versions or {},
        registry_versions=tuple(RegistryVersion(v, True) for v in reg),
        ready_versions=frozenset({"v1", "v2"}),
        drift_detected=drift,
        drift_detail={"detectors": {"prediction": float(bool(drift))}} if drift is not None else {},
        drift_version=version,
        drift_reset_age_seconds=age,
        watched_versions=frozenset({"v1", "v2"}),
        max_pass_gap_seconds=1e6,
    )


def status(stable="v2", promoted_at: float | None = 100.0, **kw) -> ModelDeploymentStatus:
    promoted = iso(T0 + timedelta(seconds=promoted_at)) if promoted_at is not None else None
    return ModelDeploymentStatus(stable_version=stable, phase="Stable", promoted_at=promoted, **kw)


# (status, observations) -> (flag, reason); promoted at t=100 unless said otherwise.
CASES = [
    ("no data", status(), obs(110), (None, "MetricsUnavailable")),
    ("flag about the stable version", status(), obs(110, drift=True, version="v2", age=9),
     (True, "")),
    ("no drift on the stable version", status(), obs(110, drift=False, version="v2", age=9),
     (False, "")),
    ("flag read for the previous stable version", status(), obs(110, drift=True, version="v1"),
     (None, "EvidenceForAnotherVersion")),
    ("alarm latched during v2's canary, before its reset is scraped", status(),
     obs(101, drift=True, version="v2", age=41), (None, "EvidenceBeforeTakeover")),
    ("reset read a query after obs.now, within the slack", status(),
     obs(101, drift=True, version="v2", age=1 + WATCH_SLACK_SECONDS - 0.1), (True, "")),
    ("reset just beyond the slack", status(),
     obs(101, drift=True, version="v2", age=1 + WATCH_SLACK_SECONDS + 0.1),
     (None, "EvidenceBeforeTakeover")),
    ("status from before promotedAt was kept: no age check", status("v1", promoted_at=None),
     obs(5000, drift=True, version="v1", age=4000), (True, "")),
    ("reset age unknown (older drift service)", status(), obs(110, drift=True, version="v2"),
     (True, "")),
    ("unlabelled evidence is the stable version's", status(), obs(110, drift=True), (True, "")),
    ("Prometheus down", status(),
     Observations(now=T0, metrics_ok=False, drift_detected=True, drift_version="v2"),
     (None, "MetricsUnavailable")),
]  # fmt: skip


@pytest.mark.parametrize(("st", "o", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_drift_evidence(st, o, expected):
    flag, reason, message = drift_evidence(st, o)
    assert (flag, reason) == expected
    assert bool(message) == (flag is None)


def test_first_deployment_ignores_an_alarm_latched_before_it():
    sp = spec()
    deployed = reconcile("fd", sp, None, obs(0, reg=("v1",)))
    assert deployed.status.promoted_at is not None and WatchDrift("v1") in deployed.actions
    # The drift service watched v1 long before (an earlier deployment); its latched alarm
    # is still in Prometheus until the new watch's reset is scraped.
    stale = reconcile(
        "fd", sp, deployed.status, obs(1, drift=True, version="v1", age=600, reg=("v1",))
    )
    assert stale.status.drift == "Unknown" and not stale.decisions
    fresh = reconcile(
        "fd", sp, stale.status, obs(3, drift=False, version="v1", age=2.5, reg=("v1",))
    )
    assert fresh.status.drift == "None"


def test_drift_unknown_says_why_in_the_condition():
    result = reconcile("fd", spec(), status(), obs(101, drift=True, version="v2", age=41))
    drifting = next(c for c in result.status.conditions if c.type == "Drifting")
    assert (drifting.status, drifting.reason) == ("Unknown", "EvidenceBeforeTakeover")
    assert "v2" in drifting.message
    assert result.status.drift == "Unknown" and not result.decisions


def canary_v2(sp) -> ModelDeploymentStatus:
    deployed = reconcile("fd", sp, None, obs(0, reg=("v1",))).status
    assert deployed.stable_version == "v1"
    # v1 drifts and is retrained; v2 is registered and becomes the canary.
    return deployed.model_copy(
        update={
            "phase": "Canary",
            "candidate_version": "v2",
            "canary_percent": 50,
            "step_started_at": iso(T0 + timedelta(seconds=60)),
            "analysis": AnalysisStatus(
                evidence_since=iso(T0 + timedelta(seconds=60)),
                last_observed_at=iso(T0 + timedelta(seconds=60)),
            ),
            "drift": "Sustained",
            "drift_since": iso(T0 + timedelta(seconds=10)),
        }  # fmt: skip
    )


def test_promotion_pass_does_not_attribute_v1_drift_to_v2():
    sp = spec()
    metrics = {"v1": healthy(5000), "v2": healthy(5000)}
    # Gathered while v1 was stable: v1's latched alarm, labelled v1.
    result = reconcile(
        "fd", sp, canary_v2(sp), obs(100, drift=True, version="v1", age=100, versions=metrics)
    )
    assert result.status.stable_version == "v2"
    assert [d.decision for d in result.decisions] == ["promote"]
    assert WatchDrift("v2") in result.actions
    assert result.status.drift == "Unknown" and result.status.drift_since is None
    # Next pass: Prometheus still holds v2's alarm from its canary (reset 40 s ago, at the
    # canary start); the drift service has not been scraped since it re-watched v2.
    after = reconcile(
        "fd", sp, result.status, obs(101, drift=True, version="v2", age=41, versions=metrics)
    )
    assert not [d for d in after.decisions if d.decision == "drift"]
    # Once the reset shows, v2 is judged on its own detectors: quiet, then a real alarm.
    quiet = reconcile("fd", sp, after.status, obs(103, drift=False, version="v2", age=2.5))
    assert quiet.status.drift == "None"
    alarm = reconcile("fd", sp, quiet.status, obs(160, drift=True, version="v2", age=59.5))
    drift = [d for d in alarm.decisions if d.decision == "drift"]
    assert [(d.version, d.message) for d in drift] == [("v2", "drift on v2")]


def test_rollback_of_a_promotion_ignores_the_previous_versions_old_alarm():
    sp = spec()
    metrics = {"v1": healthy(5000), "v2": healthy(5000)}
    promoted = reconcile(
        "fd", sp, canary_v2(sp), obs(100, drift=False, version="v1", age=100, versions=metrics)
    ).status
    bad = VersionMetrics(requests=5000, server_errors=4000, latency_p99=0.02,
                         score_buckets=healthy(5000).score_buckets)  # fmt: skip
    rolled = reconcile("fd", sp, promoted, obs(110, drift=False, version="v2", age=9,
                                               versions={"v2": bad}))  # fmt: skip
    assert rolled.status.stable_version == "v1"
    assert WatchDrift("v1") in rolled.actions
    # v1's alarm latched before the promotion (reset 110 s ago) is not drift on v1 now...
    stale = reconcile("fd", sp, rolled.status, obs(111, drift=True, version="v1", age=111))
    assert stale.status.drift == "Unknown"
    assert not [a for a in stale.actions if isinstance(a, RecordDecision | SubmitRun)]
    # ...while an alarm after v1's re-watch is.
    fresh = reconcile("fd", sp, stale.status, obs(140, drift=True, version="v1", age=29))
    assert [d.version for d in fresh.decisions if d.decision == "drift"] == ["v1"]
