"""The socket and worker:queue over real loopback sockets against the DevServer."""

from __future__ import annotations

import logging
import socket
import threading

from pool.lightning.phoenix import LightningError
from pool.lightning.queue_channel import ClaimedRun, QueueChannel
from pool.lightning.tokens import RunTokenVerifier
from pool.lightning.workloops import default_workloops, parse_workloops
from tests.lightning.conftest import (
    CREDENTIALS,
    DATACLIPS,
    DEADLINE,
    PLAN,
    ipv6_first_resolver,
    wait_until,
)


def joined_queue(sock, **kwargs) -> QueueChannel:
    queue = QueueChannel(sock, default_workloops(2), **kwargs)
    assert queue.join().wait(DEADLINE).ok
    return queue


def test_join_then_claim_with_no_runs_gets_an_empty_list(server, connect) -> None:
    queue = joined_queue(connect())
    assert queue.claim(1, None, ["manual", "*"]).result(DEADLINE) == []
    joins = [f["frame"] for f in server.frames
             if f["dir"] == "worker->lightning" and f["frame"][3] == "phx_join"]
    assert joins[0][2:] == ["worker:queue", "phx_join",
                            {"capacity": 2, "queues": {"manual>*": 2}}]
    assert joins[0][0] == joins[0][1]  # a join's join_ref is its own ref
    assert server.rejections == []


def test_claim_returns_the_run_with_a_verifiable_token(server, connect) -> None:
    run_id = server.enqueue(PLAN, credentials=CREDENTIALS, dataclips=DATACLIPS, wakeup=False)
    queue = joined_queue(connect())
    [run] = queue.claim(1, "pod-7", ["manual", "*"]).result(DEADLINE)
    assert isinstance(run, ClaimedRun) and run.id == run_id
    claims = RunTokenVerifier(server.public_key_b64).verify(run.token)
    assert claims["id"] == run_id
    assert server.run(run_id)["worker_name"] == "pod-7"
    assert server.run(run_id)["state"] == "claimed"


def test_claims_honour_the_queue_preference(server, connect) -> None:
    fast = server.enqueue(PLAN, credentials=CREDENTIALS, dataclips=DATACLIPS,
                          queue="fast_lane", wakeup=False)
    queue = QueueChannel(connect(), parse_workloops("fast_lane:1 manual>*:1"))
    assert queue.join().wait(DEADLINE).ok
    assert queue.claim(1, None, ["manual"]).result(DEADLINE) == []
    [run] = queue.claim(1, None, ["fast_lane"]).result(DEADLINE)
    assert run.id == fast


def test_work_available_reaches_the_callback(server, connect) -> None:
    woken = threading.Event()
    joined_queue(connect(), on_work_available=woken.set)
    server.enqueue(PLAN, credentials=CREDENTIALS, dataclips=DATACLIPS)  # pushes work-available
    assert woken.wait(DEADLINE)


def test_claim_without_worker_name_crashes_the_channel_and_we_rejoin(server, connect,
                                                                     caplog) -> None:
    """Lightning's queue channel crashes on such a claim (phx_error): the push fails at once
    with a clear reason and the channel is joined again."""
    rejoins = []
    queue = joined_queue(connect(), on_join=lambda reply, again: rejoins.append((reply, again)))
    push = queue.channel.push("claim", {"demand": 1}, resend=False)
    reply = push.wait(DEADLINE)
    assert reply.status == "error" and reply.response == {"reason": "phx_error"}
    assert "crashed on Lightning's side" in caplog.text
    wait_until(lambda: any(again and reply.ok for reply, again in rejoins), "the rejoin")
    assert queue.claim(1, None, ["manual", "*"]).result(DEADLINE) == []


def test_error_reply_is_a_clear_lightning_error(server, connect) -> None:
    server.reply_error_on("claim", {"errors": {"demand": ["is invalid"]}})
    queue = joined_queue(connect())
    push = queue.claim(1, None, ["*"])
    try:
        push.result(DEADLINE)
    except LightningError as exc:
        assert str(exc) == '[claim] {"errors":{"demand":["is invalid"]}}'
    else:
        raise AssertionError("an error reply must raise")


def test_ipv6_first_resolution_falls_back_to_ipv4(server, connect, caplog) -> None:
    """``localhost`` resolving to ``::1`` first must not fail while Lightning listens on IPv4
    only (the 'could not connect to lightning' trap of Lightning's own docs)."""
    caplog.set_level(logging.INFO, logger="pool.lightning.phoenix")
    sock = connect(url=f"ws://localhost:{server.port}/worker", resolver=ipv6_first_resolver)
    assert sock.address[0] == "127.0.0.1"
    assert f"via 127.0.0.1 port {server.port}" in caplog.text
    assert joined_queue(sock).claim(1, None, ["*"]).result(DEADLINE) == []


def test_a_bad_worker_secret_is_logged_clearly_and_retried(server, connect, caplog) -> None:
    sock = connect(secret="not-the-secret-of-this-lightning-server", wait=False)
    wait_until(lambda: "HTTP 401 (check WORKER_SECRET)" in caplog.text, "the refusal log line")
    wait_until(lambda: caplog.text.count("HTTP 401") >= 2, "a retry")
    assert not sock.is_open
    assert "could not connect to Lightning at ws://127.0.0.1" in caplog.text
    assert "token=" not in caplog.text  # the worker token never reaches the logs


def test_nothing_listening_is_retried_with_a_clear_log(connect, caplog) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    sock = connect(url=f"ws://127.0.0.1:{port}/worker", wait=False)
    wait_until(lambda: caplog.text.count("could not connect to Lightning") >= 2, "retries")
    assert "Connection refused" in caplog.text
    assert not sock.is_open


def test_heartbeats_are_sent_and_answered_without_reconnecting(server, connect) -> None:
    sock = connect(heartbeat_s=0.25)
    joined_queue(sock)

    def heartbeats() -> int:
        return sum(1 for f in list(server.frames) if f["dir"] == "worker->lightning"
                   and f["frame"][2:4] == ["phoenix", "heartbeat"])
    wait_until(lambda: heartbeats() >= 4, "four heartbeats")
    assert len(server.connections) == 1 and sock.is_open
