"""The socket URL and V2 binary frames (reference §2.1, §2.2)."""

from __future__ import annotations

import pytest

from pool.lightning.phoenix import Reply, build_socket_url, decode_binary, describe_failure


def test_endpoint_becomes_the_websocket_url_with_lightnings_params() -> None:
    url = build_socket_url("ws://localhost:4000/worker", "eyJ.abc+/=", "0.1.0")
    assert url == ("ws://localhost:4000/worker/websocket?token=eyJ.abc%2B%2F%3D"
                   "&api_version=1.2&worker_version=0.1.0&vsn=2.0.0")


@pytest.mark.parametrize("endpoint, start", [
    ("wss://app.openfn.org/worker/", "wss://app.openfn.org/worker/websocket?"),
    ("https://app.openfn.org/worker", "wss://app.openfn.org/worker/websocket?"),
    ("ws://[::1]:4000/worker/websocket", "ws://[::1]:4000/worker/websocket?"),
])
def test_variants_of_the_endpoint(endpoint, start) -> None:
    assert build_socket_url(endpoint, "t", "1").startswith(start)


def test_encodes_like_encode_uri_component() -> None:
    url = build_socket_url("ws://h/worker", "a b!'()*~é", "1")
    assert "token=a%20b!'()*~%C3%A9&" in url


@pytest.mark.parametrize("endpoint", ["localhost:4000/worker", "ftp://h/worker", "ws:///x"])
def test_unusable_endpoint_is_refused(endpoint) -> None:
    with pytest.raises(ValueError, match="must look like ws://host:4000/worker"):
        build_socket_url(endpoint, "t", "1")


def test_binary_reply_frame_decodes_to_a_reply_with_bytes() -> None:
    body = b'{"data":{"x":1}}'
    frame = bytes([1, 1, 2, 5, 2]) + b"3" + b"12" + b"run:1" + b"ok" + body
    assert decode_binary(frame) == ["3", "12", "run:1", "phx_reply",
                                    {"status": "ok", "response": body}]


def test_binary_push_and_broadcast_frames_decode() -> None:
    push = bytes([0, 1, 5, 3]) + b"7" + b"run:1" + b"evt" + b"\x00\x01"
    assert decode_binary(push) == ["7", None, "run:1", "evt", b"\x00\x01"]
    broadcast = bytes([2, 5, 3]) + b"run:1" + b"evt" + b"x"
    assert decode_binary(broadcast) == [None, None, "run:1", "evt", b"x"]
    with pytest.raises(ValueError, match="unknown binary frame kind"):
        decode_binary(bytes([9, 0, 0]))


def test_failures_read_like_ws_workers() -> None:
    not_found = {"errors": {"id": ["Credential not found!"]}}
    assert describe_failure("fetch:credential", Reply("error", not_found)) == \
        '[fetch:credential] {"errors":{"id":["Credential not found!"]}}'
    assert describe_failure("fetch:dataclip", Reply("error", "not_found")) == \
        "[fetch:dataclip] not_found"
    assert describe_failure("run:log", Reply("timeout")) == "[run:log] timeout"
