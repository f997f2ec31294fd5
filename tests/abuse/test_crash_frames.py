"""The frames that took the whole broker down (issue 10), at every port that could take them:
the broker answers with the protocol's error or closes that connection, and every door keeps
serving."""

from __future__ import annotations

import struct

import pytest
from abuse_tools import (
    GET_BROKER_RUNTIME_INFO,
    PRODUCE,
    TOKEN,
    connect,
    drain,
    kafka_body,
    kafka_bomb_batch,
    kafka_call,
    peak_rss_kib,
    remoting_frame,
    reset,
    sasl_login,
)
from ferrymq.protocols.remoting import FrameDecoder, RequestCode, ResponseCode, encode, request
from ferrymq.protocols.sentinels import NEED_DATA

NESTED = b"[" * 5000 + b"]" * 5000


def responses(data: bytes) -> list:  # type: ignore[type-arg]
    d = FrameDecoder()
    d.receive_data(data)
    out = []
    while (cmd := d.next_command()) is not NEED_DATA:
        out.append(cmd)
    return out


@pytest.mark.parametrize("door", ["namesrv", "remoting"])
def test_a_nested_json_header_closes_that_connection_only(hostile, door: str) -> None:
    """The crash frame: a 10 KB header of nested brackets made json.loads raise
    RecursionError, which ended the process."""
    port = getattr(hostile.ports, door)
    s = connect(port)
    s.sendall(remoting_frame(NESTED))
    assert drain(s, 1.0) == b""  # no opaque to answer: closed
    s.close()
    hostile.check()


def test_a_nested_header_with_an_opaque_is_answered_then_closed(hostile) -> None:
    header = b'{"code":34,"opaque":77,"flag":0,"extFields":{"a":' + NESTED + b"}}"
    s = connect(hostile.ports.remoting)
    s.sendall(remoting_frame(header))
    got = responses(drain(s, 1.0))
    assert [(c.opaque, c.code) for c in got] == [(77, ResponseCode.SYSTEM_ERROR)]
    s.close()
    hostile.check()


@pytest.mark.parametrize("door", ["namesrv", "remoting"])
def test_a_nested_json_body_is_a_protocol_error(hostile, door: str) -> None:
    """The same bytes as a HEARTBEAT body (remoting) or a registration body (NameServer)."""
    code = RequestCode.HEART_BEAT if door == "remoting" else RequestCode.REGISTER_BROKER
    ext = {} if door == "remoting" else {"brokerName": "b", "brokerAddr": "1.2.3.4:5",
                                          "clusterName": "c", "brokerId": "0"}
    s = connect(getattr(hostile.ports, door))
    s.sendall(encode(request(code, 5, ext, NESTED)))
    got = responses(drain(s, 1.0))
    assert [(c.opaque, c.code) for c in got] == [(5, ResponseCode.SYSTEM_ERROR)]
    s.close()
    hostile.check()


def test_clients_that_ask_and_close_without_reading(hostile) -> None:
    """Five GET_BROKER_RUNTIME_INFO, then a reset: the response's send failed with
    BrokenResourceError, which escaped the connection and ended the process."""
    for _ in range(20):
        s = connect(hostile.ports.remoting)
        s.sendall(b"".join(encode(request(GET_BROKER_RUNTIME_INFO, i)) for i in range(5)))
        reset(s)
    for door in ("namesrv", "kafka", "http"):
        port = getattr(hostile.ports, door)
        for _ in range(5):
            s = connect(port)
            s.sendall(b"\x00\x00\x00\x10" + b"\x00" * 4 if door != "http"
                      else b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n" * 50)
            reset(s)
    hostile.check()


@pytest.mark.parametrize("content_type", ["application/json", "application/cloudevents+json",
                                          "application/x-ndjson"])
def test_nested_json_at_the_http_door_is_malformed_json(hostile, content_type: str) -> None:
    s = connect(hostile.ports.http)
    body = b"[" * 100_000 + b"]" * 100_000
    s.sendall(b"POST /v1/topics/t/messages HTTP/1.1\r\nhost: x\r\n"
              + f"authorization: Bearer {TOKEN}\r\ncontent-type: {content_type}\r\n".encode()
              + f"content-length: {len(body)}\r\n\r\n".encode() + body)
    reply = drain(s, 2.0)
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    assert b"malformed_json" in reply
    s.close()
    hostile.check()


def test_a_kafka_decompression_bomb_is_refused_within_the_limit(hostile) -> None:
    """16 KB of zstd that inflates to 512 MiB: the delivery-time search inflated all of it
    before measuring. Now it stops at MAX_DECOMPRESSED (64 MiB) and answers
    CORRUPT_MESSAGE."""
    batch = kafka_bomb_batch(512)
    before = peak_rss_kib(hostile.pid)
    s = connect(hostile.ports.kafka)
    sasl_login(s)
    R = kafka_body(PRODUCE).__class__
    resp = kafka_call(s, PRODUCE, 8, R(acks=-1, timeout_ms=5000, topic_data=(
        R.TopicProduceData(name="bombs", partition_data=(
            R.PartitionProduceData(index=0, records=batch),)),)))
    part = resp.responses[0].partition_responses[0]
    assert part.error_code == 2  # CORRUPT_MESSAGE
    s.close()
    peak_growth = peak_rss_kib(hostile.pid) - before
    assert peak_growth < 100 * 1024, f"the broker's peak memory grew by {peak_growth} KiB"
    hostile.check()


def test_a_kafka_frame_announcing_2_gib_costs_nothing(hostile) -> None:
    s = connect(hostile.ports.kafka)
    s.sendall(struct.pack(">i", 0x7FFFFFFF) + b"\x00" * 100)
    assert drain(s, 1.0) == b""
    s.close()
    hostile.check()


def test_a_bad_frame_after_a_good_one_is_not_answered_in_its_name(hostile) -> None:
    """The error of a frame whose header does not decode must not borrow the opaque of
    the request answered just before it in the same read."""
    s = connect(hostile.ports.remoting)
    s.sendall(encode(request(GET_BROKER_RUNTIME_INFO, 41)) + remoting_frame(NESTED))
    got = responses(drain(s, 1.0))
    assert [c.opaque for c in got] == [41] and got[0].code == ResponseCode.SUCCESS
    s.close()
    hostile.check()
