"""The official worker's own frames (shared/reference/transcripts) are accepted as they are.

The strict checks must refuse what Lightning refuses and nothing more: replaying every
``worker->lightning`` run-channel frame of ws-worker 1.25.0 must draw no rejection.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pool.devserver.server import DevServer
from tests.devserver.conftest import claim_and_join
from tests.devserver.raw_phoenix import RawPhoenix

# a copy of shared/reference/transcripts kept in the repo, so a clone alone runs this test
TRANSCRIPTS = Path(__file__).resolve().parents[1] / "lightning" / "transcripts"


def run_frames(name: str) -> list[list[list]]:
    """The worker's run-channel frames, one list per run, in the order they were sent."""
    runs: dict[str, list[list]] = {}
    for line in (TRANSCRIPTS / name).read_text().splitlines():
        entry = json.loads(line)
        frame = entry["frame"]
        if entry["dir"] == "worker->lightning" and frame[2].startswith("run:") \
                and frame[3] not in ("phx_join", "phx_leave"):
            runs.setdefault(frame[2], []).append(frame)
    return list(runs.values())


@pytest.mark.parametrize("name", ["ws-worker-logs.jsonl", "ws-worker-batch-logs.jsonl"])
def test_official_worker_frames_are_all_accepted(server: DevServer, name: str) -> None:
    cases = json.loads((TRANSCRIPTS / "cases.json").read_text())
    runs = run_frames(name)
    assert len(runs) == len(cases)
    for case, frames in zip(cases, runs, strict=True):
        client = RawPhoenix(server)
        run_id = server.enqueue(case["plan"], credentials=case.get("credentials"),
                                dataclips=case.get("dataclips"))
        topic = claim_and_join(client, server, run_id)
        for frame in frames:
            reply = client.call(topic, frame[3], frame[4])
            assert isinstance(reply, bytes) or reply["status"] == "ok", (frame, reply)
        assert server.run(run_id)["state"] in ("success", "crashed")
        client.close()
    assert server.rejections == []
