"""Leader election at the kubernetes client boundary.

``RecordedLeaseApi`` stands in for ``CoordinationV1Api`` (no API server runs here): it
keeps one Lease per name with a resourceVersion, answers 404 / 409 as the API server
does, and records every call with its arguments, so the tests assert the exact calls and
bodies the elector sends.
"""

from __future__ import annotations

import copy
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
from kubeloop.operators.cluster.election import (
    LeaderElector,
    LeaseLock,
    lease_body,
    load_election_settings,
    micro_time,
)
from kubeloop.operators.cluster.leader import ElectionTiming, LeaseRecord
from kubeloop.operators.cluster.main import KopfThread, serve_health
from kubernetes import client as k8s
from kubernetes.client import ApiClient
from kubernetes.client.rest import ApiException

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMING = ElectionTiming(lease_duration=15, renew_deadline=10, retry_period=2)
SERIALIZE = ApiClient().sanitize_for_serialization


class RecordedLeaseApi:
    """The CoordinationV1Api methods the elector may call, with the API server's
    optimistic concurrency; ``calls`` holds (method, args, serialized body, kwargs)."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.leases: dict[tuple[str, str], dict] = {}
        self.version = 0
        self.fail_next: list[int] = []  # HTTP statuses to answer before serving

    def _maybe_fail(self) -> None:
        if self.fail_next:
            raise ApiException(status=self.fail_next.pop(0), reason="injected")

    def _lease(self, wire: dict) -> k8s.V1Lease:
        spec = wire.get("spec", {})

        def stamp(value):
            return datetime.fromisoformat(value) if value else None

        return k8s.V1Lease(
            metadata=k8s.V1ObjectMeta(
                name=wire["metadata"]["name"],
                namespace=wire["metadata"]["namespace"],
                resource_version=wire["metadata"]["resourceVersion"],
            ),
            spec=k8s.V1LeaseSpec(
                holder_identity=spec.get("holderIdentity"),
                acquire_time=stamp(spec.get("acquireTime")),
                renew_time=stamp(spec.get("renewTime")),
                lease_duration_seconds=spec.get("leaseDurationSeconds"),
                lease_transitions=spec.get("leaseTransitions"),
            ),
        )

    def read_namespaced_lease(self, name, namespace, **kwargs):
        self.calls.append(("read_namespaced_lease", (name, namespace), None, kwargs))
        self._maybe_fail()
        if (namespace, name) not in self.leases:
            raise ApiException(status=404, reason="Not Found")
        return self._lease(self.leases[(namespace, name)])

    def create_namespaced_lease(self, namespace, body, **kwargs):
        wire = SERIALIZE(body)
        self.calls.append(("create_namespaced_lease", (namespace,), copy.deepcopy(wire), kwargs))
        self._maybe_fail()
        name = wire["metadata"]["name"]
        if (namespace, name) in self.leases:
            raise ApiException(status=409, reason="AlreadyExists")
        self.version += 1
        wire["metadata"]["resourceVersion"] = str(self.version)
        self.leases[(namespace, name)] = wire
        return self._lease(wire)

    def replace_namespaced_lease(self, name, namespace, body, **kwargs):
        wire = SERIALIZE(body)
        self.calls.append(
            ("replace_namespaced_lease", (name, namespace), copy.deepcopy(wire), kwargs)
        )
        self._maybe_fail()
        have = self.leases.get((namespace, name))
        if have is None:
            raise ApiException(status=404, reason="Not Found")
        if wire["metadata"].get("resourceVersion") != have["metadata"]["resourceVersion"]:
            raise ApiException(status=409, reason="Conflict")
        self.version += 1
        wire["metadata"]["resourceVersion"] = str(self.version)
        self.leases[(namespace, name)] = wire
        return self._lease(wire)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def elector(api, identity, clock) -> LeaderElector:
    return LeaderElector(
        LeaseLock(api, "kubeloop-operator", "kubeloop", 2.0), identity, TIMING, clock
    )


def test_first_candidate_creates_the_lease_with_exact_body() -> None:
    api, clock = RecordedLeaseApi(), Clock()
    a = elector(api, "op-a", clock)
    next_check = a.try_acquire_or_renew()
    assert next_check == T0 + timedelta(seconds=2)
    assert a.leading()
    assert api.calls == [
        ("read_namespaced_lease", ("kubeloop-operator", "kubeloop"), None, {"_request_timeout": 2.0}),
        (
            "create_namespaced_lease",
            ("kubeloop",),
            {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": "kubeloop-operator", "namespace": "kubeloop"},
                "spec": {
                    "holderIdentity": "op-a",
                    "acquireTime": "2026-01-01T00:00:00.000000Z",
                    "renewTime": "2026-01-01T00:00:00.000000Z",
                    "leaseDurationSeconds": 15,
                    "leaseTransitions": 0,
                },
            },
            {"_request_timeout": 2.0},
        ),
    ]  # fmt: skip


def test_renewal_replaces_with_the_version_read() -> None:
    api, clock = RecordedLeaseApi(), Clock()
    a = elector(api, "op-a", clock)
    a.try_acquire_or_renew()
    clock.advance(2.5)
    api.calls.clear()
    a.try_acquire_or_renew()
    method, args, body, _ = api.calls[-1]
    assert (method, args) == ("replace_namespaced_lease", ("kubeloop-operator", "kubeloop"))
    assert body["metadata"]["resourceVersion"] == "1"
    assert body["spec"]["renewTime"] == "2026-01-01T00:00:02.500000Z"
    assert body["spec"]["acquireTime"] == "2026-01-01T00:00:00.000000Z"
    assert a.last_renewal == clock.now


def test_follower_waits_then_takes_over_a_lapsed_lease() -> None:
    api, clock = RecordedLeaseApi(), Clock()
    a, b = elector(api, "op-a", clock), elector(api, "op-b", clock)
    a.try_acquire_or_renew()
    clock.advance(1)
    assert b.try_acquire_or_renew() == clock.now + timedelta(seconds=2)
    assert not b.leading()
    assert [c[0] for c in api.calls[-1:]] == ["read_namespaced_lease"]  # follows: no write
    clock.advance(14)  # 15 s after a's last renewal: lapsed
    b.try_acquire_or_renew()
    assert b.leading() and not a.leading()
    spec = api.leases[("kubeloop", "kubeloop-operator")]["spec"]
    assert spec["holderIdentity"] == "op-b" and spec["leaseTransitions"] == 1
    # a, back from a partition, reads b's lease and stays a follower.
    a.try_acquire_or_renew()
    assert not a.leading()


def test_conflict_means_someone_else_won() -> None:
    api, clock = RecordedLeaseApi(), Clock()
    a, b = elector(api, "op-a", clock), elector(api, "op-b", clock)
    # Both read "no lease"; b's create lands between a's read and a's create.
    real_read = api.read_namespaced_lease

    def read_then_race(name, namespace, **kwargs):
        try:
            return real_read(name, namespace, **kwargs)  # 404: no lease yet
        finally:
            api.read_namespaced_lease = real_read
            b.try_acquire_or_renew()

    api.read_namespaced_lease = read_then_race
    a.try_acquire_or_renew()
    assert b.leading() and not a.leading()
    assert [c[0] for c in api.calls] == [
        "read_namespaced_lease",
        "read_namespaced_lease",
        "create_namespaced_lease",
        "create_namespaced_lease",
    ]


def test_stale_version_replace_is_a_conflict() -> None:
    api, clock = RecordedLeaseApi(), Clock()
    a, b = elector(api, "op-a", clock), elector(api, "op-b", clock)
    a.try_acquire_or_renew()
    clock.advance(20)
    lease_then = api.read_namespaced_lease("kubeloop-operator", "kubeloop")
    a.try_acquire_or_renew()  # a renews: version 2
    lock = b.lock
    with pytest.raises(Exception, match="changed"):
        lock.write(
            LeaseRecord("op-b", clock.now, clock.now, 15, 1), lease_then.metadata.resource_version
        )


def test_leader_that_cannot_renew_steps_down_within_the_deadline() -> None:
    api, clock = RecordedLeaseApi(), Clock()
    a = elector(api, "op-a", clock)
    a.try_acquire_or_renew()
    for _ in range(4):
        clock.advance(2)
        api.fail_next = [500]
        with pytest.raises(ApiException):
            a.try_acquire_or_renew()
        assert a.leading()  # 8 s without a renewal: still within the 10 s deadline
    clock.advance(2)
    assert not a.leading()


def test_release_clears_the_holder_so_a_follower_takes_over_at_once() -> None:
    api, clock = RecordedLeaseApi(), Clock()
    a, b = elector(api, "op-a", clock), elector(api, "op-b", clock)
    a.try_acquire_or_renew()
    assert a.release()
    method, _, body, _ = api.calls[-1]
    assert method == "replace_namespaced_lease"
    assert body["spec"] == {"leaseDurationSeconds": 1, "leaseTransitions": 0}
    assert not a.leading()
    clock.advance(0.1)
    b.try_acquire_or_renew()
    assert b.leading()
    assert not a.release()  # not mine any more: nothing written
    assert api.calls[-1][0] == "read_namespaced_lease"


def test_other_api_errors_propagate() -> None:
    api, clock = RecordedLeaseApi(), Clock()
    api.fail_next = [403]
    with pytest.raises(ApiException) as exc:
        elector(api, "op-a", clock).try_acquire_or_renew()
    assert exc.value.status == 403


def test_micro_time_always_has_six_digits() -> None:
    assert micro_time(T0) == "2026-01-01T00:00:00.000000Z"
    assert micro_time(datetime(2026, 1, 1, 1, tzinfo=UTC) + timedelta(microseconds=5)) == (
        "2026-01-01T01:00:00.000005Z"
    )
    with pytest.raises(ValueError, match="timezone-aware"):
        micro_time(datetime(2026, 1, 1))
    body = lease_body("l", "ns", LeaseRecord(), None)
    assert SERIALIZE(body)["spec"] == {"leaseTransitions": 0}


def test_run_starts_and_stops_the_work_and_releases_on_stop() -> None:
    api = RecordedLeaseApi()
    timing = ElectionTiming(lease_duration=1.5, renew_deadline=1.0, retry_period=0.1)
    a = LeaderElector(LeaseLock(api, "kubeloop-operator", "kubeloop"), "op-a", timing)
    events: list[str] = []
    stop = threading.Event()
    started = threading.Event()

    def on_started():
        events.append("started")
        started.set()

    thread = threading.Thread(
        target=a.run, args=(on_started, lambda: events.append("stopped"), stop)
    )
    thread.start()
    try:
        assert started.wait(5)
        assert a.alive()
    finally:
        stop.set()
        thread.join(5)
    assert not thread.is_alive()
    assert events == ["started", "stopped"]
    assert api.leases[("kubeloop", "kubeloop-operator")]["spec"].get("holderIdentity") is None


def test_run_steps_down_when_renewals_fail() -> None:
    api = RecordedLeaseApi()
    timing = ElectionTiming(lease_duration=1.5, renew_deadline=0.6, retry_period=0.1)
    a = LeaderElector(LeaseLock(api, "kubeloop-operator", "kubeloop"), "op-a", timing)
    events: list[str] = []
    stop, stopped = threading.Event(), threading.Event()

    def on_started():
        events.append("started")
        api.fail_next = [503] * 1000  # the API server goes away

    def on_stopped():
        events.append("stopped")
        stopped.set()

    thread = threading.Thread(target=a.run, args=(on_started, on_stopped, stop))
    thread.start()
    try:
        assert stopped.wait(5)
    finally:
        stop.set()
        thread.join(5)
    assert events == ["started", "stopped"]


def test_run_restarts_work_that_ended_while_leading() -> None:
    api = RecordedLeaseApi()
    timing = ElectionTiming(lease_duration=1.5, renew_deadline=1.0, retry_period=0.05)
    a = LeaderElector(LeaseLock(api, "kubeloop-operator", "kubeloop"), "op-a", timing)
    starts: list[float] = []
    alive = {"work": False}
    stop = threading.Event()

    def on_started():
        starts.append(time.monotonic())
        alive["work"] = len(starts) >= 2  # the first run dies at once, the second keeps going
        if len(starts) >= 2:
            stop.set()

    thread = threading.Thread(
        target=a.run,
        args=(on_started, lambda: None, stop),
        kwargs={"work_alive": lambda: alive["work"]},
    )
    thread.start()
    thread.join(5)
    assert not thread.is_alive()
    assert len(starts) == 2


def test_settings_come_from_the_downward_api(monkeypatch) -> None:
    monkeypatch.setenv("POD_NAME", "kubeloop-operator-7d9-abc")
    monkeypatch.setenv("POD_NAMESPACE", "kubeloop")
    monkeypatch.setenv("KUBELOOP_LEADER_LEASE_NAME", "kl-operator")
    s = load_election_settings()
    assert (s.identity, s.namespace, s.lease_name) == (
        "kubeloop-operator-7d9-abc",
        "kubeloop",
        "kl-operator",
    )
    assert s.timing() == ElectionTiming(15, 10, 2)


def test_settings_name_what_is_missing_or_wrong(monkeypatch) -> None:
    monkeypatch.delenv("POD_NAME", raising=False)
    monkeypatch.setenv("POD_NAMESPACE", "kubeloop")
    with pytest.raises(ValueError, match="needs POD_NAME"):
        load_election_settings()
    assert not load_election_settings(enabled=False).identity
    monkeypatch.setenv("POD_NAME", "p")
    with pytest.raises(ValueError, match="renew_deadline < lease_duration"):
        load_election_settings(renew_deadline_seconds=20)
    with pytest.raises(ValueError, match="lease_duration_seconds"):
        load_election_settings(lease_duration_seconds=-1)


def test_kopf_thread_starts_once_and_stops_through_its_flag() -> None:
    runs: list[threading.Event] = []

    def fake_operator(stop: threading.Event) -> None:
        runs.append(stop)
        stop.wait(10)

    kopf_thread = KopfThread(fake_operator, stop_timeout=5)
    kopf_thread.start()
    kopf_thread.start()
    assert kopf_thread.running()
    kopf_thread.stop()
    assert not kopf_thread.running()
    kopf_thread.start()  # leadership regained: a fresh run with a fresh flag
    kopf_thread.stop()
    assert len(runs) == 2 and runs[0] is not runs[1] and all(r.is_set() for r in runs)


def test_health_endpoint_follows_the_callback() -> None:
    state = {"ok": True}
    server = serve_health(0, lambda: state["ok"], host="127.0.0.1")
    url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            assert resp.status == 200
        state["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(url, timeout=5)
        assert exc.value.code == 503
    finally:
        server.shutdown()
        server.server_close()
