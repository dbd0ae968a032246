"""The model versions the drift service keeps events for, and the state of their watch.

A version is *tracked* from its first payload event when the registry the service reads
holds it (the service looks it up once; a version it lacks is remembered as absent for a
short while), or from its first ``POST /v1/watch``. Its events are paired and its labels
counted from then on, so a canary's delayed labels count for the rollout analysis at
once, while its detectors are still being armed (a cold threshold calibration takes
seconds to minutes). What the detectors read is held in a bounded backlog until they
are armed, then handed to them in arrival order.

States: ``unwatched`` (tracked from its events, nobody asked to watch it), ``arming``
(detectors being built), ``armed``, ``failed`` (the last arming failed; events are still
paired and labels counted). Unwatched versions are few (an LRU of ``unwatched_limit``):
an arbitrary version name never creates state, and real but stale versions cannot crowd
out the ones served now. Pure logic: no I/O, no clock of its own.
"""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

UNWATCHED, ARMING, ARMED, FAILED = "unwatched", "arming", "armed", "failed"
STATES: tuple[str, ...] = (UNWATCHED, ARMING, ARMED, FAILED)
WATCHED_STATES: tuple[str, ...] = (ARMING, ARMED, FAILED)
"""States a ``POST /v1/watch`` leads to; ``GET /v1/status`` lists these as ``watched``."""

# Payload events name a concrete registry version (``v<N>``): an alias or ``latest`` would
# file the same predictions under a moving name. Model names are one registry path segment.
VERSION_NAME = re.compile(r"v[0-9]{1,9}")
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,252}")


def trackable(model: str, version: str) -> str | None:
    """Why events of ``model``/``version`` cannot be tracked before a watch, or None."""
    if not MODEL_NAME.fullmatch(model):
        return "the model is not a registry name"
    if not VERSION_NAME.fullmatch(version):
        return "the version is not a registry version name (v<N>)"
    return None


class LookUp(Exception):  # noqa: N818 (a signal to the caller, not an error)
    """An event names a version the service has not looked up in its registry yet."""

    def __init__(self, model: str, version: str) -> None:
        super().__init__(model, version)
        self.key = (model, version)


@dataclass
class Backlog:
    """What the detectors would read, held while they are not armed: paired instances
    (``observe`` items) and labelled predictions (``feedback`` items), each kind bounded
    in rows; past the bound the oldest items go first (the detectors start from the
    latest data), and every dropped row is returned to the caller to count."""

    limit: int
    items: dict[str, deque] = field(
        default_factory=lambda: {"observe": deque(), "feedback": deque()}
    )
    rows: dict[str, int] = field(default_factory=lambda: {"observe": 0, "feedback": 0})

    def hold(self, kind: str, payload: tuple, n_rows: int) -> int:
        """Keeps one item of ``n_rows`` rows; returns the rows dropped to stay in bounds."""
        items = self.items[kind]
        items.append((payload, n_rows))
        self.rows[kind] += n_rows
        dropped = 0
        while self.rows[kind] > self.limit:
            _, n = items.popleft()
            self.rows[kind] -= n
            dropped += n
        return dropped

    def drain(self) -> list[tuple[str, tuple]]:
        """Every held item as ``(kind, payload)``, observations first, each in arrival
        order (the two kinds feed different detectors), leaving the backlog empty."""
        out = [
            (kind, payload) for kind in ("observe", "feedback") for payload, _ in self.items[kind]
        ]
        self.clear()
        return out

    def clear(self) -> int:
        """Empties the backlog; returns the rows it held."""
        held = sum(self.rows.values())
        for kind in self.items:
            self.items[kind].clear()
            self.rows[kind] = 0
        return held

    def view(self) -> dict[str, int]:
        return {"instances": self.rows["observe"], "labels": self.rows["feedback"]}


@dataclass(eq=False)
class TrackedVersion:
    """One tracked version on the service's HTTP side (the detectors live in the worker)."""

    reference: Any  # kubeloop.drift.reference.Reference: what events are validated against
    backlog: Backlog
    since: float  # when the state last changed (epoch seconds)
    # Tells this tracking of the version from a later one: pending requests and answered
    # ones keep (key, serial), not the object, so a forgotten version's memory is freed.
    serial: int = 0
    state: str = UNWATCHED
    mon_id: int | None = None  # the worker's monitor fed now (armed) or last (arming again)
    snapshot: dict[str, Any] | None = None  # the armed monitor's latest snapshot
    watch_key: tuple | None = None  # (reference digest, detector settings) of the last watch
    attempt: int = 0  # arming attempts; a finished arming applies only if still the latest
    error: str | None = None
    evicted: bool = False  # no longer tracked: its pending requests and labels are refused

    @property
    def model(self) -> str:
        return self.reference.model

    @property
    def version(self) -> str:
        return self.reference.version

    @property
    def key(self) -> tuple[str, str]:
        return (self.model, self.version)

    def start_arming(self, reference: Any, watch_key: tuple, now: float) -> int:
        """A watch asks for (fresh) detectors: returns the rows dropped from the backlog
        because the reference changed (they were validated against the old schema)."""
        dropped = 0
        if reference.digest != self.reference.digest:
            dropped = self.backlog.clear()
        self.reference, self.watch_key = reference, watch_key
        self.state, self.error, self.since = ARMING, None, now
        self.attempt += 1
        return dropped

    def armed(self, mon_id: int, snapshot: dict[str, Any], now: float) -> int | None:
        """Detectors of the latest attempt are ready; returns the replaced monitor's id."""
        old, self.mon_id, self.snapshot = self.mon_id, mon_id, snapshot
        self.state, self.since = ARMED, now
        return old if old != mon_id else None

    def failed(self, error: str, now: float) -> int | None:
        """The latest arming failed; returns the monitor no longer fed (if any)."""
        old, self.mon_id, self.snapshot = self.mon_id, None, None
        self.state, self.error, self.since = FAILED, error, now
        return old

    def same_watch(self, watch_key: tuple) -> bool:
        """A watch that would change nothing: the same reference and settings, armed or
        being armed."""
        return self.state in (ARMING, ARMED) and self.watch_key == watch_key

    def view(self, now: float) -> dict[str, Any]:
        """This version in ``GET /v1/status``: state, backlog and, once armed, the snapshot."""
        base: dict[str, Any] = {
            "model": self.model,
            "version": self.version,
            "state": self.state,
            "state_seconds": round(now - self.since, 3),
            "attempt": self.attempt,  # armings started (each builds fresh detectors)
            "backlog": self.backlog.view(),
        }
        if self.state == ARMED and self.snapshot is not None:
            return {
                **self.snapshot,
                **base,
                "seconds_since_reset": now - self.snapshot["reset_at"],
            }
        if self.state == FAILED:
            base["error"] = self.error
        return base


class VersionTable:
    """Every tracked version; unwatched ones in a bounded LRU, absent ones remembered.

    ``track`` returns the version it evicted (if any) so the caller can drop its series.
    """

    def __init__(
        self, *, unwatched_limit: int, backlog_rows: int, absent_ttl_seconds: float,
        absent_limit: int = 1024,
    ) -> None:  # fmt: skip
        self.unwatched_limit = unwatched_limit
        self.backlog_rows = backlog_rows
        self.absent_ttl = absent_ttl_seconds
        self.absent_limit = absent_limit
        self.versions: dict[tuple[str, str], TrackedVersion] = {}
        self._unwatched: OrderedDict[tuple[str, str], None] = OrderedDict()  # LRU, oldest first
        self._absent: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()
        self._serial = 0

    def _new(self, reference: Any, now: float) -> TrackedVersion:
        self._serial += 1
        tracked = TrackedVersion(
            reference, Backlog(self.backlog_rows), since=now, serial=self._serial
        )
        self.versions[tracked.key] = tracked
        return tracked

    def get(self, key: tuple[str, str]) -> TrackedVersion | None:
        """The tracked version (an unwatched one becomes the most recently used)."""
        tracked = self.versions.get(key)
        if tracked is not None and tracked.state == UNWATCHED:
            self._unwatched.move_to_end(key)
        return tracked

    def peek(self, key: tuple[str, str]) -> TrackedVersion | None:
        return self.versions.get(key)

    def current(self, key: tuple[str, str], serial: int) -> TrackedVersion | None:
        """The version as tracked when ``serial`` was handed out, if it still is."""
        tracked = self.versions.get(key)
        return tracked if tracked is not None and tracked.serial == serial else None

    def absent(self, key: tuple[str, str], now: float) -> str | None:
        """Why the version was found untrackable less than ``absent_ttl`` ago, or None."""
        found = self._absent.get(key)
        if found is None:
            return None
        until, why = found
        if now >= until:
            del self._absent[key]
            return None
        return why

    def mark_absent(self, key: tuple[str, str], why: str, now: float) -> None:
        self._absent[key] = (now + self.absent_ttl, why)
        self._absent.move_to_end(key)
        while len(self._absent) > self.absent_limit:
            self._absent.popitem(last=False)

    def track(self, reference: Any, now: float) -> tuple[TrackedVersion, TrackedVersion | None]:
        """Tracks a version from its events (``unwatched``); returns it and the evicted one."""
        key = (reference.model, reference.version)
        if (tracked := self.versions.get(key)) is not None:
            return tracked, None
        self._absent.pop(key, None)
        tracked = self._new(reference, now)
        self._unwatched[key] = None
        evicted = None
        if len(self._unwatched) > self.unwatched_limit:
            old, _ = self._unwatched.popitem(last=False)
            evicted = self.versions.pop(old)
            evicted.evicted = True
            evicted.backlog.clear()
        return tracked, evicted

    def watch(self, reference: Any, now: float) -> TrackedVersion:
        """The version a watch names: tracked already, or new; either way no longer in the
        unwatched LRU (watched versions are the operator's choice, never evicted)."""
        key = (reference.model, reference.version)
        self._absent.pop(key, None)
        tracked = self.versions.get(key) or self._new(reference, now)
        self._unwatched.pop(key, None)
        return tracked

    def watched(self) -> list[TrackedVersion]:
        return [t for t in self.versions.values() if t.state in WATCHED_STATES]

    def unwatched(self) -> list[TrackedVersion]:
        return [self.versions[k] for k in self._unwatched]

    def arming(self) -> bool:
        # list(): read from other threads (the status wait) while the event loop may add.
        return any(t.state == ARMING for t in list(self.versions.values()))


__all__ = [
    "ARMED",
    "ARMING",
    "FAILED",
    "STATES",
    "UNWATCHED",
    "WATCHED_STATES",
    "Backlog",
    "LookUp",
    "TrackedVersion",
    "VersionTable",
    "trackable",
]
