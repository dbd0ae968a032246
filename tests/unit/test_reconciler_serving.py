"""The reconciler core under what the serving runtime can do: a runtime that cannot split
traffic (KServe RawDeployment) gets no canary, and a namespace without the predictors'
storage gets no predictor (no I/O; the modes are observations)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubeloop.operators.reconciler.core import reconcile
from kubeloop.operators.reconciler.types import (
    RecordDecision,
    ServingMode,
    SetTraffic,
    WatchDrift,
)

from tests.unit.test_reconciler_core import decisions, deployed, healthy, obs, spec

RAW = ServingMode("RawDeployment", "ConfigMap kserve/inferenceservice-config", False)
SERVERLESS = ServingMode("Serverless", "InferenceService fd status.deploymentMode", True)
NO_SA = (
    "ServiceAccount kubeloop-s3 not found in namespace team-b: predictors here could not "
    "download model versions"
)


def condition(status, type_):
    return next(c for c in status.conditions if c.type == type_)


def traffic(result) -> list[SetTraffic]:
    return [a for a in result.actions if isinstance(a, SetTraffic)]


# --- no traffic split: no canary -----------------------------------------------------------
def test_without_a_split_a_new_version_waits_and_takes_no_traffic():
    status = deployed()
    result = reconcile("fd", spec(), status, obs(1, reg=("v1", "v2"), serving_mode=RAW))
    s = result.status
    assert (s.phase, s.stable_version, s.candidate_version, s.canary_percent) == (
        "Stable",
        "v1",
        "v2",
        0,
    )
    # Only the stable version is served: the candidate never reaches the InferenceService.
    assert traffic(result) == [SetTraffic("v1", None, 0)]
    assert WatchDrift("v2") not in result.actions
    progressing = condition(s, "Progressing")
    assert (progressing.status, progressing.reason) == ("False", "CanaryNotSupported")
    assert "RawDeployment" in progressing.message and "kubeloop rollout promote fd" in (
        progressing.message
    )
    assert decisions(result) == ["hold"]
    # The next passes hold without repeating the decision, and still send no canary.
    again = reconcile("fd", spec(), s, obs(30, reg=("v1", "v2"), serving_mode=RAW))
    assert decisions(again) == [] and traffic(again) == [SetTraffic("v1", None, 0)]


def test_the_same_pass_with_a_split_starts_the_canary():
    """The control for the test above: only the serving mode differs."""
    status = deployed()
    result = reconcile("fd", spec(), status, obs(1, reg=("v1", "v2"), serving_mode=SERVERLESS))
    assert (result.status.phase, result.status.canary_percent) == ("Canary", 10)
    assert traffic(result) == [SetTraffic("v1", "v2", 10)]


def test_a_waiting_candidate_is_promoted_by_hand_to_all_traffic_and_watched():
    sp = spec()
    status = reconcile("fd", sp, deployed(sp), obs(1, reg=("v1", "v2"), serving_mode=RAW)).status
    result = reconcile(
        "fd",
        sp,
        status,
        obs(40, reg=("v1", "v2"), serving_mode=RAW, commands={"promote": "v2"}),
    )
    s = result.status
    assert (s.phase, s.stable_version, s.previous_version, s.candidate_version) == (
        "Watching",
        "v2",
        "v1",
        None,
    )
    assert traffic(result)[0].stable == "v2" and traffic(result)[0].canary is None
    assert "promote" in decisions(result)


def test_a_waiting_candidate_can_be_dropped_by_hand():
    sp = spec()
    status = reconcile("fd", sp, deployed(sp), obs(1, reg=("v1", "v2"), serving_mode=RAW)).status
    result = reconcile(
        "fd", sp, status, obs(40, reg=("v1", "v2"), serving_mode=RAW, commands={"rollback": "v2"})
    )
    assert result.status.candidate_version is None and "v2" in result.status.rejected_versions
    assert traffic(result) == [SetTraffic("v1", None, 0)]


def test_a_newer_version_replaces_the_waiting_one():
    sp = spec()
    status = reconcile("fd", sp, deployed(sp), obs(1, reg=("v1", "v2"), serving_mode=RAW)).status
    result = reconcile("fd", sp, status, obs(30, reg=("v1", "v2", "v3"), serving_mode=RAW))
    assert result.status.candidate_version == "v3"
    assert traffic(result) == [SetTraffic("v1", None, 0)]


def test_a_pinned_version_missing_from_the_registry_never_becomes_the_candidate():
    """What the split runtime would not canary (not in the registry) must not wait either,
    where a manual promotion would put it on all traffic."""

    def pinned(version):
        sp = spec()
        return sp.model_copy(
            update={"model": sp.model.model_copy(update={"version_policy": "Pinned",
                                                         "version": version})}
        )  # fmt: skip

    waiting = reconcile("fd", pinned("v2"), deployed(),
                        obs(1, reg=("v1", "v2"), serving_mode=RAW)).status  # fmt: skip
    assert waiting.candidate_version == "v2"
    result = reconcile("fd", pinned("v9"), waiting, obs(30, reg=("v1", "v2"), serving_mode=RAW))
    assert result.status.candidate_version == "v2"  # v9 is not in the registry
    promoted = reconcile(
        "fd", pinned("v9"), result.status,
        obs(40, reg=("v1", "v2"), serving_mode=RAW, commands={"promote": "v9"}),
    )  # fmt: skip
    assert promoted.status.stable_version == "v1"
    assert all(t.stable == "v1" for t in traffic(promoted))
    split = reconcile("fd", pinned("v9"), deployed(),
                      obs(1, reg=("v1", "v2"), serving_mode=SERVERLESS))  # fmt: skip
    assert split.status.candidate_version is None  # the same rule with a split


def test_a_waiting_candidate_starts_its_canary_once_the_runtime_splits():
    sp = spec()
    status = reconcile("fd", sp, deployed(sp), obs(1, reg=("v1", "v2"), serving_mode=RAW)).status
    result = reconcile("fd", sp, status, obs(30, reg=("v1", "v2"), serving_mode=SERVERLESS))
    assert (result.status.phase, result.status.candidate_version) == ("Canary", "v2")
    assert traffic(result) == [SetTraffic("v1", "v2", 10)]


def test_a_running_canary_stops_getting_traffic_when_the_split_goes_away():
    sp = spec()
    status = reconcile("fd", sp, deployed(sp), obs(1, reg=("v1", "v2"))).status
    assert status.phase == "Canary"
    metrics = {"v1": healthy(5000), "v2": healthy(5000)}
    result = reconcile(
        "fd", sp, status, obs(60, versions=metrics, reg=("v1", "v2"), serving_mode=RAW)
    )
    s = result.status
    assert (s.phase, s.candidate_version, s.canary_percent) == ("Stable", "v2", 0)
    assert traffic(result) == [SetTraffic("v1", None, 0)]
    assert condition(s, "Progressing").reason == "CanaryNotSupported"
    # No verdict was reached on evidence from a split that no longer exists.
    assert not {"step", "promote", "rollback"} & set(decisions(result))


@settings(max_examples=60, deadline=None)
@given(
    versions=st.lists(st.integers(2, 9), min_size=1, max_size=4),
    times=st.lists(st.floats(1, 5000), min_size=1, max_size=6),
)
def test_without_a_split_no_pass_ever_sends_a_canary(versions, times):
    sp = spec()
    status = deployed(sp)
    reg = ("v1", *(f"v{n}" for n in sorted(set(versions))))
    for t in sorted(times):
        metrics = {v: healthy(3000) for v in reg}
        result = reconcile("fd", sp, status, obs(t, versions=metrics, reg=reg, serving_mode=RAW))
        assert all(a.canary is None and a.stable == "v1" for a in traffic(result))
        status = result.status


# --- storage not configured: no predictor --------------------------------------------------
def test_missing_storage_creates_no_predictor_and_says_what_is_missing():
    result = reconcile("fd", spec(), None, obs(storage_problem=NO_SA))
    s = result.status
    assert traffic(result) == []
    assert [type(a) for a in result.actions] == [RecordDecision]
    assert s.phase == "Pending" and s.stable_version is None
    for type_, status in (("Ready", "False"), ("Stalled", "True"), ("Progressing", "False")):
        cond = condition(s, type_)
        assert (cond.status, cond.reason) == (status, "StorageNotConfigured")
        assert "team-b" in cond.message and "kubeloop-s3" in cond.message


@pytest.mark.parametrize("command", [None, {"promote": "v2"}, {"rollback": "v2"}])
def test_missing_storage_holds_a_rollout_and_its_commands(command):
    sp = spec()
    status = reconcile("fd", sp, deployed(sp), obs(1, reg=("v1", "v2"))).status
    result = reconcile(
        "fd", sp, status, obs(60, reg=("v1", "v2"), storage_problem=NO_SA, commands=command or {})
    )
    assert traffic(result) == []
    assert (result.status.phase, result.status.candidate_version) == ("Canary", "v2")
    assert result.status.handled_commands == []  # handled once the storage is back
    assert condition(result.status, "Stalled").reason == "StorageNotConfigured"
    # Storage back: the pass goes on from where it was, and the command applies.
    resumed = reconcile("fd", sp, result.status, obs(61, reg=("v1", "v2"), commands=command or {}))
    assert traffic(resumed)
    assert condition(resumed.status, "Stalled").status == "False"
