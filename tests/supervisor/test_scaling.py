"""Resizing rules and the restart-storm guard (pure logic the arbiter loop drives)."""

from __future__ import annotations

import pytest

from pool.lightning.workloops import default_workloops, parse_workloops
from pool.supervisor.respawn import RespawnGuard
from pool.supervisor.scaling import resize


def test_resize_changes_only_the_last_workloop() -> None:
    loops = tuple(parse_workloops("fast_lane:1 manual>*:4"))
    assert [(lp.name, lp.capacity) for lp in resize(loops, 7)] == [("fast_lane", 1),
                                                                   ("manual>*", 6)]
    assert [lp.capacity for lp in resize(loops, 2)] == [1, 1]
    with pytest.raises(ValueError, match=r"other workloops hold 1 slot.*at least 2"):
        resize(loops, 1)


def test_resize_a_plain_pool() -> None:
    assert resize(tuple(default_workloops(5)), 1)[0].capacity == 1
    with pytest.raises(ValueError, match="size must be at least 1, got 0"):
        resize(tuple(default_workloops(5)), 0)


def test_respawns_go_ahead_until_the_limit_then_back_off_doubling() -> None:
    guard = RespawnGuard(limit=3, window_s=10.0, first_backoff_s=1.0, max_backoff_s=4.0)
    assert [guard.record(t) for t in (0.0, 0.1)] == [False, False]
    assert guard.wait_s(0.2) == 0
    assert guard.record(0.2) is True  # third in the window: the storm starts
    assert guard.wait_s(0.2) == pytest.approx(1.0)
    guard.record(1.2)
    assert guard.wait_s(1.2) == pytest.approx(2.0)
    guard.record(3.2)
    guard.record(7.2)
    assert guard.wait_s(7.2) == pytest.approx(4.0)  # capped


def test_a_quiet_window_calms_the_guard() -> None:
    guard = RespawnGuard(limit=2, window_s=10.0)
    guard.record(0.0)
    assert guard.record(0.5) is True
    assert guard.record(30.0) is False  # nothing for a whole window: back to immediate
    assert guard.wait_s(30.0) == 0
