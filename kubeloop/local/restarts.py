"""When to restart a part of the local runtime that died: back-off, a restart count, giving up.

The local counterpart of the kubelet's ``restartPolicy: Always`` with CrashLoopBackOff:
a part that exits is restarted after ``backoff_seconds``, doubled for each further
exit in a row (capped at ``max_backoff_seconds``); a part that ran ``stable_seconds``
before it exited starts counting afresh; after ``max_restarts`` restarts in a row that
all died again, it is given up and reported. Pure: the watchdog (``watchdog.py``)
observes the processes and acts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class RestartPolicy:
    max_restarts: int = 5  # restarts in a row that died again before the part is given up
    backoff_seconds: float = 1.0  # the first delay; doubled for each further exit in a row
    max_backoff_seconds: float = 30.0
    stable_seconds: float = 60.0  # a part that ran this long before exiting counts afresh

    def __post_init__(self) -> None:
        if self.max_restarts < 0 or self.backoff_seconds < 0 or self.stable_seconds < 0:
            raise ValueError(f"restart policy values must not be negative: {self}")

    def delay(self, exits_in_a_row: int) -> float:
        """Seconds to wait before restarting after the ``exits_in_a_row``-th exit (1, 2, ...)."""
        return min(self.max_backoff_seconds, self.backoff_seconds * 2 ** max(0, exits_in_a_row - 1))


class PartPhase(StrEnum):
    RUNNING = "running"
    BACKOFF = "backoff"  # exited; restart due at ``restart_at``
    GAVE_UP = "gave_up"


@dataclass(frozen=True)
class PartRestarts:
    """What the watchdog knows of one part. ``restarts`` counts every restart it made."""

    phase: PartPhase = PartPhase.RUNNING
    pid: int | None = None  # the process last seen running
    since: float = 0.0  # when that process was first seen (or started)
    exits_in_a_row: int = 0
    restarts: int = 0
    restart_at: float | None = None
    last_exit: str = ""

    def seen_running(self, pid: int, now: float) -> PartRestarts:
        """The part runs as ``pid``. A pid not seen before was started by someone else
        (``kubeloop up`` again): a part given up then counts its exits afresh."""
        if pid == self.pid and self.phase is PartPhase.RUNNING:
            return self
        exits = 0 if self.phase is PartPhase.GAVE_UP else self.exits_in_a_row
        return replace(self, phase=PartPhase.RUNNING, pid=pid, since=now, restart_at=None,
                       exits_in_a_row=exits)  # fmt: skip

    def exited(self, policy: RestartPolicy, now: float, why: str) -> PartRestarts:
        """The part is gone (or a restart failed): back off, or give up."""
        if self.phase is not PartPhase.RUNNING:
            return self
        ran_long = self.pid is not None and now - self.since >= policy.stable_seconds
        exits = 1 if ran_long else self.exits_in_a_row + 1
        if exits > policy.max_restarts:
            return replace(self, phase=PartPhase.GAVE_UP, pid=None, exits_in_a_row=exits,
                           restart_at=None, last_exit=why)  # fmt: skip
        return replace(self, phase=PartPhase.BACKOFF, pid=None, exits_in_a_row=exits,
                       restart_at=now + policy.delay(exits), last_exit=why)  # fmt: skip

    def restart_due(self, now: float) -> bool:
        return (
            self.phase is PartPhase.BACKOFF
            and self.restart_at is not None
            and now >= self.restart_at
        )

    def restarted(self, pid: int, now: float) -> PartRestarts:
        return replace(self, phase=PartPhase.RUNNING, pid=pid, since=now, restart_at=None,
                       restarts=self.restarts + 1)  # fmt: skip

    def restart_failed(self, policy: RestartPolicy, now: float, why: str) -> PartRestarts:
        """Starting it failed (a launcher error): counts as one more exit in a row."""
        counted = replace(self, phase=PartPhase.RUNNING, pid=None, restarts=self.restarts + 1)
        return counted.exited(policy, now, why)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PartRestarts:
        return cls(**{**data, "phase": PartPhase(data.get("phase", PartPhase.RUNNING))})


__all__ = ["PartPhase", "PartRestarts", "RestartPolicy"]
