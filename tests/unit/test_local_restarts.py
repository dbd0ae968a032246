"""The watchdog's restart policy (pure): back-off, restart count, giving up, counting afresh."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kubeloop.local.restarts import PartPhase, PartRestarts, RestartPolicy

POLICY = RestartPolicy(max_restarts=3, backoff_seconds=1, max_backoff_seconds=4, stable_seconds=60)


@pytest.mark.parametrize(
    ("exits", "delay"), [(1, 1), (2, 2), (3, 4), (4, 4), (10, 4)]
)  # doubled per exit in a row, capped
def test_backoff(exits, delay):
    assert POLICY.delay(exits) == delay


def crash_loop(policy: RestartPolicy, crashes: int, ran_for: float = 1.0) -> PartRestarts:
    """A part that dies ``ran_for`` seconds after each start, ``crashes`` times."""
    part, now = PartRestarts().seen_running(100, 0.0), 0.0
    for n in range(crashes):
        now += ran_for
        part = part.exited(policy, now, f"exit {n}")
        if part.phase is PartPhase.GAVE_UP:
            break
        assert not part.restart_due(part.restart_at - 0.01) and part.restart_due(part.restart_at)
        now = part.restart_at
        part = part.restarted(200 + n, now)
    return part


def test_a_part_that_keeps_crashing_is_given_up_after_max_restarts():
    part = crash_loop(POLICY, 10)
    assert part.phase is PartPhase.GAVE_UP
    assert part.restarts == POLICY.max_restarts and part.last_exit == "exit 3"
    assert not part.restart_due(1e9)
    assert part.exited(POLICY, 1e9, "again") == part  # nothing more to count


def test_a_part_that_ran_long_enough_counts_afresh():
    part = crash_loop(POLICY, 10, ran_for=POLICY.stable_seconds)
    assert part.phase is PartPhase.RUNNING and part.restarts == 10 and part.exits_in_a_row == 1


def test_a_part_given_up_is_watched_again_once_something_else_starts_it():
    part = crash_loop(POLICY, 10).seen_running(999, 500.0)
    assert (part.phase, part.pid, part.since, part.restarts) == (PartPhase.RUNNING, 999, 500.0, 3)
    assert part.exits_in_a_row == 0  # a person started it: its exits count afresh
    assert crash_loop(POLICY, 10).restarts == 3
    again = part.exited(POLICY, 501.0, "x")
    assert (again.phase, again.exits_in_a_row, again.restart_at) == (PartPhase.BACKOFF, 1, 502.0)


def test_a_failed_restart_counts_as_an_exit():
    part = PartRestarts().seen_running(1, 0).exited(POLICY, 1, "killed")
    part = part.restart_failed(POLICY, part.restart_at, "restart failed: no binary")
    assert (part.phase, part.restarts, part.exits_in_a_row) == (PartPhase.BACKOFF, 1, 2)
    assert part.last_exit == "restart failed: no binary"


def test_state_round_trips_through_json():
    part = crash_loop(POLICY, 2)
    assert PartRestarts.from_dict(part.to_dict()) == part


def test_negative_values_are_refused():
    with pytest.raises(ValueError, match="must not be negative"):
        RestartPolicy(max_restarts=-1)


@given(
    max_restarts=st.integers(0, 8),
    run_times=st.lists(st.floats(0, 120), min_size=1, max_size=30),
)
def test_never_more_restarts_in_a_row_than_the_policy_allows(max_restarts, run_times):
    policy = RestartPolicy(max_restarts=max_restarts, backoff_seconds=0.5, stable_seconds=60)
    part, now = PartRestarts().seen_running(1, 0.0), 0.0
    for ran in run_times:
        now += ran
        part = part.exited(policy, now, "exit")
        assert part.exits_in_a_row <= max_restarts + 1
        if part.phase is PartPhase.GAVE_UP:
            assert part.exits_in_a_row == max_restarts + 1
            assert ran < 60 or max_restarts == 0  # a part that ran long counts afresh
            return
        delay = policy.delay(part.exits_in_a_row)
        assert part.restart_at - now == pytest.approx(delay) and delay <= 30
        now = part.restart_at
        part = part.restarted(2, now)
