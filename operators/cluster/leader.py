"""Leader election on a ``coordination.k8s.io/v1`` Lease: the pure decision.

The same protocol as client-go's ``leaderelection`` package: a candidate reads the Lease,
and

- takes it (**acquire**) when nobody holds it or the holder's last renewal is older than
  the lease duration;
- renews it (**renew**) when it is the holder;
- otherwise waits (**follow**) until the holder's lease could expire.

A write is only a bid: the I/O layer sends it with the Lease's ``resourceVersion``, so of
two candidates that both saw an expired lease only one write succeeds (the other gets a
409 Conflict and follows). A leader that has not renewed successfully for
``renew_deadline`` steps down; because ``renew_deadline < lease_duration``, it stops
before any other candidate may consider its lease expired, so two leaders never act at
the same instant (given clocks that agree to within the difference).
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, replace
from datetime import datetime, timedelta


@dataclass(frozen=True)
class ElectionTiming:
    """How long a lease lasts, how long a leader may fail to renew, how often to retry."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        if not (0 < self.retry_period < self.renew_deadline < self.lease_duration):
            raise ValueError(
                "leader election timing must satisfy 0 < retry_period < renew_deadline < "
                f"lease_duration, got retry_period={self.retry_period}, "
                f"renew_deadline={self.renew_deadline}, lease_duration={self.lease_duration}"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease's spec: who holds it, since when, last renewed when, for how long."""

    holder: str | None = None
    acquire_time: datetime | None = None
    renew_time: datetime | None = None
    duration_seconds: int | None = None
    transitions: int = 0

    def expires_at(self, default_duration: float) -> datetime | None:
        """When the holder's lease lapses; ``None`` when nobody holds it."""
        if not self.holder:
            return None
        stamp = self.renew_time or self.acquire_time
        if stamp is None:
            return None
        seconds = self.duration_seconds if self.duration_seconds else default_duration
        return stamp + timedelta(seconds=seconds)

    def held_by_other(self, me: str, now: datetime, default_duration: float) -> bool:
        """True when someone else holds a lease that has not lapsed at ``now``."""
        expiry = self.expires_at(default_duration)
        return bool(self.holder) and self.holder != me and expiry is not None and now < expiry


class Action(enum.Enum):
    ACQUIRE = "acquire"
    RENEW = "renew"
    FOLLOW = "follow"


@dataclass(frozen=True)
class Decision:
    action: Action
    # The record to write (acquire/renew), with the Lease's resourceVersion; None to follow.
    record: LeaseRecord | None
    # When to look at the Lease again.
    next_check: datetime


def decide(record: LeaseRecord | None, me: str, now: datetime, timing: ElectionTiming) -> Decision:
    """What candidate ``me`` does at ``now`` given the Lease it read (``None``: no Lease)."""
    if not me:
        raise ValueError("leader election needs a non-empty identity (the pod name)")
    retry = now + timedelta(seconds=timing.retry_period)
    # Whole seconds on the wire, rounded up so followers never wait less than we promise.
    duration = max(1, math.ceil(timing.lease_duration))
    current = record or LeaseRecord()
    if current.holder == me:
        renewed = replace(current, renew_time=now, duration_seconds=duration)
        return Decision(Action.RENEW, renewed, retry)
    if current.held_by_other(me, now, timing.lease_duration):
        expiry = current.expires_at(timing.lease_duration)
        assert expiry is not None
        return Decision(Action.FOLLOW, None, min(retry, expiry))
    taken = LeaseRecord(
        holder=me,
        acquire_time=now,
        renew_time=now,
        duration_seconds=duration,
        # A fresh Lease starts at 0; each change of holder counts one transition.
        transitions=current.transitions + (1 if record is not None else 0),
    )
    return Decision(Action.ACQUIRE, taken, retry)


def still_leading(last_renewal: datetime | None, now: datetime, timing: ElectionTiming) -> bool:
    """A leader keeps leading only while its last successful write is younger than
    ``renew_deadline``; past that it must stop its work before the lease can lapse."""
    if last_renewal is None:
        return False
    return now - last_renewal < timedelta(seconds=timing.renew_deadline)


def released(record: LeaseRecord, me: str) -> LeaseRecord | None:
    """The record a leader writes when it stops on purpose, so a follower takes over at
    once instead of waiting for expiry; ``None`` when ``me`` does not hold it."""
    if record.holder != me:
        return None
    return replace(record, holder=None, acquire_time=None, renew_time=None, duration_seconds=1)
