"""The drift service's version table (pure logic): which versions are tracked before a
watch, the bounded backlog their detectors read once armed, and watch states."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeloop.drift.versions import (
    ARMED,
    ARMING,
    FAILED,
    UNWATCHED,
    Backlog,
    VersionTable,
    trackable,
)


@dataclass
class Ref:
    """What the table reads of a reference sample."""

    model: str
    version: str
    digest: str = "d1"


def table(limit: int = 2, rows: int = 10) -> VersionTable:
    return VersionTable(unwatched_limit=limit, backlog_rows=rows, absent_ttl_seconds=5.0)


@pytest.mark.parametrize(
    ("model", "version", "why"),
    [
        ("fraud-detector", "v3", None),
        ("fraud-detector", "latest", "version"),
        ("fraud-detector", "champion", "version"),
        ("fraud-detector", "../v1", "version"),
        ("fraud-detector", "v1" + "0" * 20, "version"),
        ("../etc", "v1", "model"),
        ("", "v1", "model"),
    ],
)
def test_only_registry_names_are_trackable(model, version, why):
    found = trackable(model, version)
    assert found is None if why is None else why in found


def test_unwatched_versions_are_an_lru_and_watched_ones_are_never_evicted():
    t = table(limit=2)
    a, _ = t.track(Ref("m", "v1"), 0.0)
    t.track(Ref("m", "v2"), 0.0)
    t.get(("m", "v1"))  # v1 used since: v2 is now the least recently used
    _, evicted = t.track(Ref("m", "v3"), 0.0)
    assert evicted.key == ("m", "v2") and evicted.evicted
    assert {v.key for v in t.unwatched()} == {("m", "v1"), ("m", "v3")}
    watched = t.watch(Ref("m", "v1"), 1.0)
    assert watched is a  # the same version: its backlog and pending requests stay
    t.track(Ref("m", "v4"), 2.0)
    _, evicted = t.track(Ref("m", "v5"), 2.0)
    assert evicted.key == ("m", "v3") and t.peek(("m", "v1")) is a


def test_absent_versions_are_remembered_for_a_while():
    t = table()
    t.mark_absent(("m", "v9"), "not in the registry", now=10.0)
    assert t.absent(("m", "v9"), 14.9) == "not in the registry"
    assert t.absent(("m", "v9"), 15.0) is None


def test_watch_states_and_the_same_watch():
    t = table()
    v = t.watch(Ref("m", "v1"), 0.0)
    assert v.state == UNWATCHED and not v.same_watch(("d1", "s"))
    v.backlog.hold("feedback", ([1, 0], [0.9, 0.1], [1, 1]), 2)
    assert v.start_arming(Ref("m", "v1"), ("d1", "s"), 1.0) == 0  # same reference: kept
    assert v.state == ARMING and v.same_watch(("d1", "s")) and not v.same_watch(("d1", "t"))
    assert v.armed(7, {"reset_at": 2.0}, 2.0) is None and v.state == ARMED
    view = v.view(3.0)
    assert view["state"] == ARMED and view["seconds_since_reset"] == 1.0
    v.start_arming(Ref("m", "v1", digest="d2"), ("d2", "s"), 4.0)
    assert v.backlog.view() == {"instances": 0, "labels": 0}  # another schema: dropped
    assert v.failed("boom", 5.0) == 7 and v.state == FAILED
    assert v.view(5.0)["error"] == "boom" and not v.same_watch(("d2", "s"))
    assert {w.key for w in t.watched()} == {("m", "v1")}


def test_backlog_drains_in_arrival_order_per_kind():
    b = Backlog(limit=100)
    b.hold("observe", (["i1"], [0.1]), 1)
    b.hold("feedback", ([1], [0.1], [0]), 1)
    b.hold("observe", (["i2"], [0.2]), 1)
    assert b.drain() == [
        ("observe", (["i1"], [0.1])),
        ("observe", (["i2"], [0.2])),
        ("feedback", ([1], [0.1], [0])),
    ]
    assert b.view() == {"instances": 0, "labels": 0}


@given(
    limit=st.integers(0, 50),
    items=st.lists(
        st.tuples(st.sampled_from(["observe", "feedback"]), st.integers(1, 20)), max_size=60
    ),
)
def test_backlog_stays_bounded_and_counts_every_dropped_row(limit, items):
    b = Backlog(limit=limit)
    added = {"observe": 0, "feedback": 0}
    dropped = 0
    for i, (kind, rows) in enumerate(items):
        dropped += b.hold(kind, (list(range(rows)), i), rows)
        added[kind] += rows
        assert all(b.rows[k] <= limit for k in b.rows)
    kept = b.drain()
    assert sum(len(p[0]) for _, p in kept) + dropped == sum(added.values())
    # What is kept is the latest of each kind, in arrival order.
    for kind in ("observe", "feedback"):
        order = [p[1] for k, p in kept if k == kind]
        assert order == sorted(order)
