"""WORKER_WORKLOOPS / WORKER_BACKOFF parsing and the queue join payload (reference §5)."""

from __future__ import annotations

import pytest

from pool.lightning.workloops import (
    Backoff,
    Workloop,
    WorkloopError,
    default_workloops,
    parse_backoff,
    parse_workloops,
    queue_join_payload,
)


def test_workloops_parse_into_queue_chains_with_slots() -> None:
    loops = parse_workloops("fast_lane:1  manual>*:4")
    assert loops == [Workloop(("fast_lane",), 1), Workloop(("manual", "*"), 4)]
    assert queue_join_payload(loops) == {"capacity": 5,
                                         "queues": {"fast_lane": 1, "manual>*": 4}}


def test_default_is_manual_then_any_queue() -> None:
    assert queue_join_payload(default_workloops(5)) == {"capacity": 5,
                                                        "queues": {"manual>*": 5}}


@pytest.mark.parametrize("text, match", [
    ("", "empty"),
    ("manual", "no ':<count>'"),
    ("manual:x", "not an integer"),
    ("manual:0", "at least 1"),
    ("*>manual:2", "'\\*' may only be the last"),
    ("man-ual:2", "letters, digits"),
    (":3", "no ':<count>'"),
])
def test_bad_workloops_name_the_bad_token(text, match) -> None:
    with pytest.raises(WorkloopError, match=match):
        parse_workloops(text)


def test_duplicate_workloops_warn_and_add_up(caplog) -> None:
    loops = parse_workloops("a:1 a:2")
    assert "more than once" in caplog.text
    assert queue_join_payload(loops) == {"capacity": 3, "queues": {"a": 3}}


def test_backoff_is_min_and_max_seconds() -> None:
    assert parse_backoff("1/10") == Backoff(1.0, 10.0)
    assert parse_backoff("0.5/2.5") == Backoff(0.5, 2.5)


@pytest.mark.parametrize("text, match", [
    ("10", "must be 'min/max'"),
    ("a/b", "must be numbers"),
    ("5/1", "min is larger"),
    ("-1/3", "negative"),
])
def test_bad_backoff_is_a_clear_error(text, match) -> None:
    with pytest.raises(WorkloopError, match=match):
        parse_backoff(text)
