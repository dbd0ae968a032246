"""The pure leader-election decision: a table of cases, and properties with hypothesis."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kubeloop.operators.cluster.leader import (
    Action,
    ElectionTiming,
    LeaseRecord,
    decide,
    released,
    still_leading,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
TIMING = ElectionTiming(lease_duration=15, renew_deadline=10, retry_period=2)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def held(holder: str | None, renewed: float, duration: int | None = 15, transitions: int = 3):
    return LeaseRecord(holder, at(renewed - 100), at(renewed), duration, transitions)


CASES = [
    # (case, record, me, now, action, next check, holder written, transitions written)
    ("no lease: create it", None, "a", 0, Action.ACQUIRE, 2, "a", 0),
    ("mine: renew", held("a", 0), "a", 5, Action.RENEW, 7, "a", 3),
    ("mine even if lapsed: renew", held("a", 0), "a", 40, Action.RENEW, 42, "a", 3),
    ("other, fresh: follow until retry", held("b", 0), "a", 5, Action.FOLLOW, 7, None, None),
    ("other, about to lapse: follow until expiry", held("b", 0), "a", 14, Action.FOLLOW, 15, None, None),
    ("other, lapsed exactly now: take over", held("b", 0), "a", 15, Action.ACQUIRE, 17, "a", 4),
    ("other, lapsed: take over", held("b", 0), "a", 60, Action.ACQUIRE, 62, "a", 4),
    ("other's own duration counts", held("b", 0, duration=30), "a", 20, Action.FOLLOW, 22, None, None),
    ("no duration on record: mine counts", held("b", 0, duration=None), "a", 16, Action.ACQUIRE, 18, "a", 4),
    ("released (no holder): take over", held(None, 0), "a", 1, Action.ACQUIRE, 3, "a", 4),
]  # fmt: skip


@pytest.mark.parametrize(
    "record,me,now,action,next_check,holder,transitions",
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_decision_table(record, me, now, action, next_check, holder, transitions) -> None:
    decision = decide(record, me, at(now), TIMING)
    assert decision.action is action
    assert decision.next_check == at(next_check)
    if holder is None:
        assert decision.record is None
        return
    written = decision.record
    assert written.holder == holder and written.transitions == transitions
    assert written.renew_time == at(now) and written.duration_seconds == 15
    if action is Action.RENEW:
        assert written.acquire_time == record.acquire_time  # renewing keeps the acquire time
    else:
        assert written.acquire_time == at(now)


def test_still_leading_until_the_renew_deadline() -> None:
    assert still_leading(at(0), at(9.99), TIMING)
    assert not still_leading(at(0), at(10), TIMING)
    assert not still_leading(None, at(0), TIMING)


def test_release_hands_back_only_my_lease() -> None:
    mine = held("a", 0)
    out = released(mine, "a")
    assert out.holder is None and out.renew_time is None and out.transitions == 3
    assert released(held("b", 0), "a") is None
    assert decide(out, "b", at(0.5), TIMING).action is Action.ACQUIRE


@pytest.mark.parametrize(
    "durations",
    [(15, 15, 2), (15, 10, 10), (15, 20, 2), (0, 0, 0), (-1, 1, 0.5)],
)
def test_timing_out_of_order_is_refused(durations) -> None:
    with pytest.raises(ValueError, match="retry_period < renew_deadline < lease_duration"):
        ElectionTiming(*durations)


def test_empty_identity_is_refused() -> None:
    with pytest.raises(ValueError, match="non-empty identity"):
        decide(None, "", at(0), TIMING)


names = st.sampled_from(["a", "b", "c"])
offsets = st.floats(min_value=-100, max_value=100, allow_nan=False)
records = st.one_of(
    st.none(),
    st.builds(
        lambda holder, renewed, duration, transitions: held(holder, renewed, duration, transitions),
        st.one_of(st.none(), names),
        offsets,
        st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
        st.integers(min_value=0, max_value=5),
    ),
)


@settings(max_examples=300, deadline=None)
@given(record=records, now=offsets)
def test_never_two_leaders_for_one_record_at_one_instant(record, now) -> None:
    """Of all candidates looking at the same record at the same instant, at most one may
    keep (renew) it, and nobody may bid for a lease another still validly holds."""
    decisions = {me: decide(record, me, at(now), TIMING) for me in ("a", "b", "c")}
    renewing = [me for me, d in decisions.items() if d.action is Action.RENEW]
    assert len(renewing) <= 1
    for me, d in decisions.items():
        if d.action is Action.ACQUIRE:
            assert record is None or not record.held_by_other(me, at(now), 15)
        if d.action is Action.FOLLOW:
            assert record.held_by_other(me, at(now), 15)
            assert at(now) < d.next_check <= at(now + 2)
        else:
            assert d.record.holder == me and d.next_check == at(now + 2)
    if renewing and record.held_by_other("someone else", at(now), 15):
        # A holder whose lease has not lapsed is the only one to write; once it lapsed,
        # its renewal is one bid among others and the Lease's resourceVersion picks one.
        assert all(d.action is not Action.ACQUIRE for d in decisions.values())


@settings(max_examples=300, deadline=None)
@given(
    lease_duration=st.floats(min_value=2, max_value=60),
    deadline_frac=st.floats(min_value=0.1, max_value=0.95),
    renewed=offsets,
    later=st.floats(min_value=0, max_value=200),
)
def test_a_leader_that_cannot_renew_steps_down_before_anyone_can_take_over(
    lease_duration, deadline_frac, renewed, later
) -> None:
    renew_deadline = lease_duration * deadline_frac
    timing = ElectionTiming(lease_duration, renew_deadline, renew_deadline / 2)
    # The leader's last successful write, as a follower reads it back.
    written = decide(None, "a", at(renewed), timing).record
    now = at(renewed + later)
    taken = decide(written, "b", now, timing).action is Action.ACQUIRE
    if taken:
        assert not still_leading(at(renewed), now, timing)
