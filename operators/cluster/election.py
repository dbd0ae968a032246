"""Leader election I/O: one Lease read and written through ``CoordinationV1Api``.

The decision is :func:`kubeloop.operators.cluster.leader.decide`; this module only turns
the Lease into a :class:`LeaseRecord` and back, and writes with optimistic concurrency:
``create`` when no Lease exists, ``replace`` carrying the ``resourceVersion`` it read
otherwise. A 409 Conflict means another candidate wrote first, so this one follows.
The verbs used on ``leases`` (get, create, update) are what the chart's Role grants.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from kubeloop.operators.cluster.leader import (
    Action,
    ElectionTiming,
    LeaseRecord,
    decide,
    released,
    still_leading,
)
from kubernetes import client as k8s
from kubernetes.client.rest import ApiException
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger("kubeloop.operator.election")


class ElectionSettings(BaseSettings):
    """Who this replica is and which Lease it competes for; prefix ``KUBELOOP_LEADER_``.

    Identity and namespace come from the downward API (``POD_NAME``, ``POD_NAMESPACE``)."""

    model_config = SettingsConfigDict(
        env_prefix="KUBELOOP_LEADER_", extra="forbid", populate_by_name=True
    )

    enabled: bool = Field(True, description="elect a leader; false runs kopf at once")
    identity: str = Field(
        "", validation_alias="POD_NAME", description="this replica's name (downward API)"
    )
    namespace: str = Field(
        "", validation_alias="POD_NAMESPACE", description="namespace of the Lease (downward API)"
    )
    lease_name: str = Field("kubeloop-operator", min_length=1, description="the Lease's name")
    lease_duration_seconds: float = Field(15.0, gt=0, description="how long a lease lasts")
    renew_deadline_seconds: float = Field(10.0, gt=0, description="leader steps down after")
    retry_period_seconds: float = Field(2.0, gt=0, description="how often to (re)try")

    def timing(self) -> ElectionTiming:
        return ElectionTiming(
            self.lease_duration_seconds, self.renew_deadline_seconds, self.retry_period_seconds
        )


def load_election_settings(**overrides) -> ElectionSettings:
    """Validates settings; raises ``ValueError`` naming each problem."""
    try:
        settings = ElectionSettings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ValueError(f"invalid leader election settings: {problems}") from None
    if settings.enabled:
        missing = [
            env
            for env, value in (
                ("POD_NAME", settings.identity),
                ("POD_NAMESPACE", settings.namespace),
            )
            if not value
        ]
        if missing:
            raise ValueError(
                f"leader election needs {' and '.join(missing)} (set them from the downward "
                "API), or KUBELOOP_LEADER_ENABLED=false for a single replica"
            )
        settings.timing()  # raises ValueError when the three durations are out of order
    return settings


class LeaseConflict(Exception):
    """Another candidate wrote the Lease first (HTTP 409)."""


def record_of(lease: k8s.V1Lease) -> LeaseRecord:
    spec = lease.spec or k8s.V1LeaseSpec()
    return LeaseRecord(
        holder=spec.holder_identity or None,
        acquire_time=spec.acquire_time,
        renew_time=spec.renew_time,
        duration_seconds=spec.lease_duration_seconds,
        transitions=spec.lease_transitions or 0,
    )


def micro_time(stamp: datetime | None) -> str | None:
    """A Lease's MicroTime: the API server parses exactly six fractional digits
    (``2006-01-02T15:04:05.000000Z07:00``), which ``isoformat`` drops at 0 µs."""
    if stamp is None:
        return None
    if stamp.tzinfo is None:
        raise ValueError(f"lease times must be timezone-aware, got {stamp!r}")
    return stamp.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_body(
    name: str, namespace: str, record: LeaseRecord, resource_version: str | None
) -> k8s.V1Lease:
    return k8s.V1Lease(
        api_version="coordination.k8s.io/v1",
        kind="Lease",
        metadata=k8s.V1ObjectMeta(
            name=name, namespace=namespace, resource_version=resource_version
        ),
        spec=k8s.V1LeaseSpec(
            holder_identity=record.holder,
            acquire_time=micro_time(record.acquire_time),
            renew_time=micro_time(record.renew_time),
            lease_duration_seconds=record.duration_seconds,
            lease_transitions=record.transitions,
        ),
    )


@dataclass
class LeaseLock:
    """One Lease at the kubernetes client boundary."""

    api: k8s.CoordinationV1Api
    name: str
    namespace: str
    request_timeout: float = 5.0

    def get(self) -> tuple[LeaseRecord | None, str | None]:
        """(record, resourceVersion), or (None, None) when the Lease does not exist."""
        try:
            lease = self.api.read_namespaced_lease(
                self.name, self.namespace, _request_timeout=self.request_timeout
            )
        except ApiException as exc:
            if exc.status == 404:
                return None, None
            raise
        return record_of(lease), lease.metadata.resource_version

    def write(self, record: LeaseRecord, resource_version: str | None) -> None:
        """Create the Lease (no version read) or replace the version read; 409 → conflict."""
        body = lease_body(self.name, self.namespace, record, resource_version)
        try:
            if resource_version is None:
                self.api.create_namespaced_lease(
                    self.namespace, body, _request_timeout=self.request_timeout
                )
            else:
                self.api.replace_namespaced_lease(
                    self.name, self.namespace, body, _request_timeout=self.request_timeout
                )
        except ApiException as exc:
            if exc.status == 409:
                raise LeaseConflict(f"lease {self.namespace}/{self.name} changed") from exc
            raise


def _utcnow() -> datetime:
    return datetime.now(UTC)


class LeaderElector:
    """Competes for the Lease; calls ``on_started`` / ``on_stopped`` as leadership changes."""

    def __init__(
        self,
        lock: LeaseLock,
        identity: str,
        timing: ElectionTiming,
        clock: Callable[[], datetime] = _utcnow,
    ) -> None:
        self.lock, self.identity, self.timing, self.clock = lock, identity, timing, clock
        self.last_renewal: datetime | None = None  # the last write of ours that succeeded
        self.last_round: float | None = None  # time.monotonic() of the last election round

    def try_acquire_or_renew(self) -> datetime:
        """One round: read, decide, bid. Returns when to look again."""
        record, version = self.lock.get()
        now = self.clock()
        decision = decide(record, self.identity, now, self.timing)
        if decision.action is Action.FOLLOW:
            if self.last_renewal is not None:
                log.warning("lease held by %s: stepping down", record and record.holder)
            self.last_renewal = None
            return decision.next_check
        assert decision.record is not None
        try:
            self.lock.write(decision.record, version)
        except LeaseConflict:
            log.info("lost the race for the lease; following")
            return now + _seconds(self.timing.retry_period)
        if decision.action is Action.ACQUIRE:
            log.info(
                "acquired lease %s/%s as %s", self.lock.namespace, self.lock.name, self.identity
            )
        self.last_renewal = now
        return decision.next_check

    def alive(self) -> bool:
        """The election loop went round within a lease duration (the liveness probe)."""
        return (
            self.last_round is not None
            and time.monotonic() - self.last_round < self.timing.lease_duration
        )

    def leading(self) -> bool:
        return still_leading(self.last_renewal, self.clock(), self.timing)

    def release(self) -> bool:
        """Hand the Lease back on a clean stop, so a follower takes over without waiting."""
        self.last_renewal = None
        record, version = self.lock.get()
        if record is None or version is None:
            return False
        giving = released(record, self.identity)
        if giving is None:
            return False
        try:
            self.lock.write(giving, version)
        except LeaseConflict:
            return False
        return True

    def run(
        self,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        stop: threading.Event,
        work_alive: Callable[[], bool] | None = None,
    ) -> None:
        """Elect until ``stop`` is set; the work runs only between on_started and on_stopped.
        While leading, work that ended on its own (``work_alive`` false) is started again."""
        active = False
        while not stop.is_set():
            self.last_round = time.monotonic()
            try:
                next_check = self.try_acquire_or_renew()
            except Exception as exc:  # API unreachable or erroring: transient, retry
                log.warning("lease round failed: %s", exc)
                next_check = self.clock() + _seconds(self.timing.retry_period)
            if self.leading() and not active:
                active = True
                on_started()
            elif active and not self.leading():
                active = False
                log.warning("lost leadership (not renewed within the deadline): stopping work")
                on_stopped()
            elif active and work_alive is not None and not work_alive():
                log.error("the leader's work ended on its own: starting it again")
                on_started()
            wait = (next_check - self.clock()).total_seconds()
            if active and self.last_renewal is not None:
                # Wake in time to step down if renewals keep failing.
                deadline = self.last_renewal + _seconds(self.timing.renew_deadline)
                wait = min(wait, (deadline - self.clock()).total_seconds())
            stop.wait(max(0.05, wait))
        if active:
            on_stopped()
            try:
                self.release()
            except Exception as exc:
                log.warning("could not release the lease: %s", exc)


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)
