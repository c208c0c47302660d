"""The outbox against Lightning's frame limit, driven directly: what is queued is made to fit,
log batches are split by encoded size, and a frame refused with close code 1009 is never sent
again (the run is ended instead). The end-to-end behaviour is in test_frame_limits.py."""

from __future__ import annotations

import json
from typing import Any

from pool.lightning.payloads import RunEvents, ending_events
from pool.lightning.phoenix import TOO_BIG, Reply
from pool.supervisor.outbox import LOG, Outbox
from pool.supervisor.timers import Timers

LIMIT = 20_000


class Sent:
    """Records what the outbox sends; replies are given by the test."""

    def __init__(self) -> None:
        self.frames: list[tuple[str, dict[str, Any], int]] = []
        self.counts: list[tuple[str, dict[str, str]]] = []

    def send(self, event: str, payload: dict[str, Any], tag: int, encoded: str | None) -> None:
        self.frames.append((event, payload, tag))

    def count(self, name: str, **labels: str) -> None:
        self.counts.append((name, labels))


def outbox(sent: Sent, events: RunEvents | None = None, batch_logs: bool = False) -> Outbox:
    box = Outbox("r", sent.send, Timers(), sent.count, batch_logs=batch_logs,
                 batch_interval_s=0.01, batch_limit=50, cap_bytes=64 << 20,
                 on_withhold=lambda step, clip: None, on_finished=lambda: None,
                 frame_limit=LIMIT,
                 fit=(events.fit if events else None),
                 end=lambda why, steps: ending_events("r", why, steps, 1795609291000000))
    box.channel_up = True
    return box


def line(text: str) -> tuple[str, dict[str, Any]]:
    return ("run:log", {"run_id": "r", "message": [text], "source": "JOB", "level": "info",
                        "timestamp": "1795609291000000"})


def answer_all(box: Outbox, sent: Sent) -> None:
    answered = 0
    while answered < len(sent.frames):
        box.on_reply(sent.frames[answered][2], Reply("ok", {}))
        answered += 1


def test_a_batch_is_split_so_no_frame_is_over_the_limit() -> None:
    sent = Sent()
    box = outbox(sent, batch_logs=True)
    box.add([line("x" * 4_000) for _ in range(12)] + [("run:complete", {"reason": "success"})],
            LOG)
    answer_all(box, sent)
    batches = [p for e, p, _ in sent.frames if e == "run:batch_logs"]
    assert sum(len(b["logs"]) for b in batches) == 12  # every line, in order, once
    assert len(batches) > 1
    assert all(len(json.dumps(b).encode()) < LIMIT for b in batches)
    assert sent.frames[-1][0] == "run:complete"


def test_a_step_output_too_big_for_a_frame_is_withheld_and_later_events_agree() -> None:
    sent = Sent()
    events = RunEvents("r", {"memory_mb": 500, "timeout_ms": 1000, "payload_mb": 10})
    box = outbox(sent, events)
    box.add(events.on_message({"type": "step-start", "step_id": "s1", "job_id": "a",
                               "input_from": None, "time_us": 1}))
    state = json.dumps({"data": '"' * 8_000})  # 8 kB of state, 32 kB in the frame
    box.add(events.on_message({"type": "step-complete", "step_id": "s1", "job_id": "a",
                               "state": state, "next": [], "time_us": 2}))
    box.add(events.on_message({"type": "run-complete", "reason": "success",
                               "final_state": state, "time_us": 3}))
    answer_all(box, sent)
    names = [e for e, _, _ in sent.frames]
    assert names == ["step:start", "run:log", "step:complete", "run:log", "run:complete"]
    complete = sent.frames[2][1]
    assert complete["output_dataclip_error"] == "DATACLIP_TOO_LARGE"
    assert "output_dataclip_id" not in complete
    done = sent.frames[-1][1]
    assert "final_dataclip_id" not in done  # it would point at the withheld dataclip
    assert len(done["final_state"]["data"]) == 8_000  # 16 kB as an object: fits
    assert ("event_fitted", {"event": "step:complete"}) in sent.counts


def test_a_frame_refused_with_1009_ends_the_run_and_is_never_sent_again() -> None:
    sent = Sent()
    box = outbox(sent)
    box.add([("step:start", {"step_id": "s1", "job_id": "a", "timestamp": "1"})])
    box.on_reply(sent.frames[-1][2], Reply("ok", {}))
    box.add([("step:complete", {"step_id": "s1", "job_id": "a", "reason": "success"}),
             line("after")])
    refused = sent.frames[-1]
    box.on_reply(refused[2], Reply(TOO_BIG, {"frame_bytes": 12_700_000}))
    answer_all(box, sent)
    after = [f[:2] for f in sent.frames[sent.frames.index(refused) + 1:]]
    assert [e for e, _ in after] == ["step:complete", "run:log", "run:log", "run:complete"]
    closing = after[0][1]
    assert (closing["step_id"], closing["reason"]) == ("s1", "exception")
    assert "output_dataclip" not in closing
    done = after[-1][1]
    assert done["reason"] == "exception" and "1009" in done["error_message"]
    assert all(p.get("message") != ["after"] for _, p in after)  # nothing of the run's own
    assert box.finished  # run:complete was answered: the run is reported
    assert ("frame_too_big", {"event": "step:complete"}) in sent.counts
