"""Random and mutated frames at every port, seeded from valid frames of each protocol.

Hypothesis draws a valid frame (or several), mutates it (flipped and inserted bytes, cut
and repeated pieces, length fields set to extremes, deeply nested JSON spliced in), sends
it on a fresh connection, half-closes, and reads what comes back. The broker may answer,
refuse or close; it must stay up, and once the examples are done every door must still
serve another client within bounded memory. Deterministic: derandomized, no example
database, a fixed number of examples."""

from __future__ import annotations

import contextlib
import json
import socket
import struct
import time
from collections.abc import Callable

import pytest
from abuse_tools import (
    API_VERSIONS,
    PRODUCE,
    TOKEN,
    connect,
    kafka_body,
    kafka_request,
    mqtt_connect,
    remoting_frame,
    sasl_login,
    ws_open,
)
from ferrymq.protocols.kafka import records as kr
from ferrymq.protocols.kafka import schema
from ferrymq.protocols.remoting import RequestCode, SerializeType, encode, request
from ferrymq.protocols.remoting.codes import FerryRequestCode
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from wsproto.events import BytesMessage

EXAMPLES = 30
FUZZ = settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------- seeds: valid frames

HEARTBEAT = json.dumps({"clientID": "fuzz@1", "producerDataSet": [{"groupName": "pg"}],
                        "consumerDataSet": [{"groupName": "cg", "consumeType": "CONSUME_PASSIVELY",
                                             "messageModel": "CLUSTERING",
                                             "consumeFromWhere": "CONSUME_FROM_LAST_OFFSET",
                                             "subscriptionDataSet": [{"topic": "t",
                                                                      "subString": "*"}]}]}
                       ).encode()
REGISTER = json.dumps({"topicConfigSerializeWrapper": {"topicConfigTable": {
    "t": {"topicName": "t", "readQueueNums": 4, "writeQueueNums": 4, "perm": 6}},
    "dataVersion": {"timestamp": 1, "counter": 1}}, "filterServerList": []}).encode()
REMOTING_SEEDS = [
    encode(request(RequestCode.GET_BROKER_RUNTIME_INFO, 1)),
    encode(request(RequestCode.HEART_BEAT, 2, {}, HEARTBEAT)),
    encode(request(RequestCode.SEND_MESSAGE_V2, 3, {
        "a": "pg", "b": "fuzz", "c": "TBW102", "d": "4", "e": "0", "f": "0", "g": "0",
        "h": "0", "i": "KEYS\x01k\x02TAGS\x01t\x02", "j": "0", "k": "false"}, b"body")),
    encode(request(RequestCode.UPDATE_AND_CREATE_TOPIC, 5, {
        "topic": "fuzz-cfg", "readQueueNums": "1", "writeQueueNums": "1", "perm": "6",
        "attributes": "+cleanup.policy=compact,+retention.ms=1000,-segment.ms"})),
    encode(request(RequestCode.GET_TOPIC_CONFIG, 6, {"topic": "fuzz"})),
    encode(request(RequestCode.PULL_MESSAGE, 4, {
        "consumerGroup": "cg", "topic": "fuzz", "queueId": "0", "queueOffset": "0",
        "maxMsgNums": "32", "sysFlag": "0", "commitOffset": "0",
        "suspendTimeoutMillis": "0", "subscription": "*", "subVersion": "0"})),
    encode(request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 5, {"topic": "fuzz"},
                   serialize_type=SerializeType.ROCKETMQ)),
    remoting_frame(b'{"code":34,"opaque":6,"extFields":{"a":[[[{}]]]}}', b"[[[[[[]]]]]]"),
    # FerryMQ's timer requests (CANCEL_TIMER, GET_TIMER_STATS; docs/remoting.md)
    encode(request(FerryRequestCode.CANCEL_TIMER, 7, {"msgId": "AC1100020000" + "0" * 20})),
    encode(request(FerryRequestCode.GET_TIMER_STATS, 8, {"hours": "24"})),
]
NAMESRV_SEEDS = [
    encode(request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 1, {"topic": "fuzz"})),
    encode(request(RequestCode.GET_BROKER_CLUSTER_INFO, 2)),
    encode(request(RequestCode.REGISTER_BROKER, 3, {
        "brokerName": "b", "brokerAddr": "127.0.0.1:1", "clusterName": "c", "brokerId": "0",
        "haServerAddr": "", "compressed": "false"}, REGISTER)),
    encode(request(RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER, 4,
                   serialize_type=SerializeType.ROCKETMQ)),
]


def _produce(topic: str) -> bytes:
    R = kafka_body(PRODUCE).__class__
    batch = kr.encode_batch(0, [(1, b"k", b"v", (("h", b"x"),))] * 3)
    return kafka_request(PRODUCE, 8, R(acks=-1, timeout_ms=1000, topic_data=(
        R.TopicProduceData(name=topic, partition_data=(
            R.PartitionProduceData(index=0, records=batch),)),)), 7)


def _fetch() -> bytes:
    F = kafka_body(1).__class__
    return kafka_request(1, 11, F(replica_id=-1, max_wait_ms=0, min_bytes=1, max_bytes=1 << 16,
                                  topics=(F.FetchTopic(topic="fuzz", partitions=(
                                      F.FetchPartition(partition=0, fetch_offset=0,
                                                       partition_max_bytes=1 << 16),)),)), 8)


KAFKA_SEEDS = [
    kafka_request(API_VERSIONS, 3, kafka_body(API_VERSIONS, client_software_name="fuzz",
                                                client_software_version="1")),
    kafka_request(3, 1, kafka_body(3, topics=None)),
    _produce("fuzz"),
    _fetch(),
    # The config APIs (docs/kafka.md, "Topic configs").
    kafka_request(32, 4, kafka_body(32, resources=(schema.request_class(32).DescribeConfigsResource(
        resource_type=2, resource_name="fuzz", configuration_keys=None),), include_synonyms=True)),
    kafka_request(44, 1, kafka_body(44, resources=(
        schema.request_class(44).AlterConfigsResource(
            resource_type=2, resource_name="fuzz", configs=(
                schema.request_class(44).AlterableConfig(
                    name="retention.ms", config_operation=0, value="1000"),)),),
        validate_only=True)),
    kafka_request(33, 2, kafka_body(33, resources=(
        schema.request_class(33).AlterConfigsResource(
            resource_type=2, resource_name="fuzz", configs=(
                schema.request_class(33).AlterableConfig(name="cleanup.policy",
                                                         value="compact"),)),),
        validate_only=True)),
]
MQTT_SEEDS = [
    mqtt_connect(b"fuzz-a"),
    mqtt_connect(b"fuzz-b") + b"\x30\x0a\x00\x06fuzz/aHI",  # + PUBLISH QoS 0
    mqtt_connect(b"fuzz-c") + b"\x82\x0b\x00\x01\x00\x06fuzz/#\x01",  # + SUBSCRIBE QoS 1
    mqtt_connect(b"fuzz-d") + b"\x32\x0c\x00\x06fuzz/b\x00\x05HI" + b"\xc0\x00" + b"\xe0\x00",
    b"\x10\x26\x00\x04MQTT\x05\x02\x00\x3c\x05\x11\x00\x00\x00\x0a\x00\x06fuzz-5"
    b"\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",  # 5.0 CONNECT, properties
]
HTTP_SEEDS = [
    b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n",
    b"POST /v1/topics/fuzz/messages HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
    + TOKEN.encode() + b"\r\ncontent-type: application/json\r\ncontent-length: 27\r\n\r\n"
    + b'{"body":"hi","key":[1,{}]}',
    b"POST /v1/topics/fuzz/messages HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
    + TOKEN.encode() + b"\r\ntransfer-encoding: chunked\r\ncontent-type: application/x-ndjson"
    + b"\r\n\r\n5\r\n{}\n{}\r\n0\r\n\r\n",
    b"GET /v1/topics/fuzz/messages?group=g&wait_ms=0 HTTP/1.1\r\nhost: x\r\nauthorization:"
    b" Bearer " + TOKEN.encode() + b"\r\n\r\n",
    # timer cancel, and a produce carrying a W3C trace context (docs/observability.md)
    b"DELETE /v1/timers/AC11000200002A9F0000000000000000 HTTP/1.1\r\nhost: x\r\n"
    b"authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n",
    b"POST /v1/topics/fuzz/messages HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
    + TOKEN.encode() + b"\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    + b"\r\ntracestate: a=1\r\ncontent-type: application/json\r\ncontent-length: 13\r\n\r\n"
    + b'{"body":"hi"}',
    b"PATCH /v1/topics/fuzz/configs HTTP/1.1\r\nhost: x\r\nauthorization: Bearer "
    + TOKEN.encode() + b"\r\ncontent-type: application/json\r\ncontent-length: 49\r\n\r\n"
    + b'{"set":{"retention.ms":"5"},"validate_only":true}',
]


# ---------------------------------------------------------------- mutation


def _mutate(draw: st.DrawFn, data: bytearray) -> bytearray:
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(("flip", "byte", "insert", "delete", "cut", "repeat",
                                   "int32", "int16", "nest", "wrap")))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=64))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 32))]
        elif op == "cut":
            del data[pos:]
        elif op == "nest":  # brackets around a value: JSON decoders' recursion
            depth = draw(st.sampled_from((10, 100, 1000, 5000)))
            opener, closer = draw(st.sampled_from(((b"[", b"]"), (b'{"a":', b"}"))))
            data[pos:pos] = opener * depth + b"1" + closer * depth
        elif op == "wrap":  # the whole part nested inside brackets
            depth = draw(st.sampled_from((10, 100, 1000, 5000)))
            data[:] = b"[" * depth + data + b"]" * depth
        elif op == "repeat":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 200))] * draw(st.integers(2, 50))
        elif op in ("int32", "int16") and len(data) >= pos + 4:
            fmt = ">i" if op == "int32" else ">h"
            extremes = ((-1, 0, 1, 0x7FFFFFFF, -0x80000000, 0x00FFFFFF) if op == "int32"
                        else (-1, 0, 0x7FFF, -0x8000))
            struct.pack_into(fmt, data, pos, draw(st.sampled_from(extremes)))
    return data


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], framing: str = "raw") -> bytes:
    """A seed (or two, back to back) with a few mutations, or random bytes. With a
    ``framing`` (remoting, kafka), the mutations usually go inside the frame and its
    length fields are made right again, so that the mutant reaches the decoders behind
    the framing rather than stopping at it."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(min_size=1, max_size=600))
    seed = draw(st.sampled_from(seeds))
    if framing == "remoting" and draw(st.integers(0, 4)):
        (word,) = struct.unpack_from(">I", seed, 4)
        hlen = word & 0xFFFFFF
        header, body = bytearray(seed[8:8 + hlen]), bytearray(seed[8 + hlen:])
        if draw(st.booleans()):
            header = _mutate(draw, header)
        if draw(st.booleans()):
            body = _mutate(draw, body)
        data = bytearray(remoting_frame(bytes(header), bytes(body), word >> 24))
    elif framing == "kafka" and draw(st.integers(0, 4)):
        payload = _mutate(draw, bytearray(seed[4:]))
        data = bytearray(struct.pack(">i", len(payload)) + payload)
    else:
        data = _mutate(draw, bytearray(seed))
    if draw(st.integers(0, 3)) == 0:
        data += draw(st.sampled_from(seeds))
    return bytes(data)


def exchange(sock: socket.socket, data: bytes, wait: float = 0.5) -> None:
    """Send ``data``, half-close, read until the broker closes or goes quiet."""
    with contextlib.suppress(OSError):
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            if not sock.recv(65536):
                break
    sock.close()


def fuzz_door(hostile, port: int, seeds: list[bytes], framing: str = "raw",
              opener: Callable[[int], socket.socket] = connect,
              wrap: Callable[[socket.socket, bytes], bytes] | None = None) -> int:
    """Run the examples against ``port``; how many were sent."""
    sent = 0

    @FUZZ
    @given(data=mutated(seeds, framing))
    def run(data: bytes) -> None:
        nonlocal sent
        sock = opener(port)
        exchange(sock, wrap(sock, data) if wrap is not None else data)
        sent += 1
        assert hostile.broker.alive, hostile.log()

    run()
    assert sent >= EXAMPLES, f"only {sent} examples ran"
    return sent


# ---------------------------------------------------------------- the doors


def test_fuzz_namesrv(hostile) -> None:
    fuzz_door(hostile, hostile.ports.namesrv, NAMESRV_SEEDS, "remoting")
    hostile.check()


def test_fuzz_remoting(hostile) -> None:
    fuzz_door(hostile, hostile.ports.remoting, REMOTING_SEEDS, "remoting")
    hostile.check()


def test_fuzz_kafka_before_and_after_sasl(hostile) -> None:
    fuzz_door(hostile, hostile.ports.kafka, KAFKA_SEEDS, "kafka")

    def logged_in(port: int) -> socket.socket:
        s = connect(port)
        sasl_login(s)
        return s

    fuzz_door(hostile, hostile.ports.kafka, KAFKA_SEEDS, "kafka", opener=logged_in)
    hostile.check()


def test_fuzz_mqtt(hostile) -> None:
    fuzz_door(hostile, hostile.ports.mqtt, MQTT_SEEDS)
    hostile.check()


UPGRADE = (b"GET /mqtt HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
           b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
           b"sec-websocket-protocol: mqtt\r\n\r\n")


@pytest.mark.parametrize("layer", ["handshake", "frames", "mqtt"])
def test_fuzz_mqtt_over_websocket(hostile, layer: str) -> None:
    """The upgrade request, the WebSocket frames, and MQTT inside well-formed frames."""
    port = hostile.ports.mqtt_ws
    if layer == "handshake":
        fuzz_door(hostile, port, [UPGRADE, UPGRADE + b"\x82\x80\x00\x00\x00\x00"])
    else:
        sessions: dict[int, object] = {}

        def upgraded(p: int) -> socket.socket:
            s, ws = ws_open(p)
            sessions[s.fileno()] = ws
            return s

        def frame(s: socket.socket, data: bytes) -> bytes:
            ws = sessions.pop(s.fileno())
            if layer == "mqtt":
                return ws.send(BytesMessage(data=data))  # type: ignore[attr-defined]
            return data  # already mutated WebSocket frames

        ws_frames = [b"\x82\x84abcd" + bytes(b ^ k for b, k in zip(mqtt_connect(b"w")[:4],
                                                                   b"abcd", strict=True))]
        seeds = MQTT_SEEDS if layer == "mqtt" else [*ws_frames, b"\x88\x80abcd", b"\x89\x80abcd"]
        fuzz_door(hostile, port, seeds, opener=upgraded, wrap=frame)
    hostile.check()


def test_fuzz_http(hostile) -> None:
    fuzz_door(hostile, hostile.ports.http, HTTP_SEEDS)
    hostile.check()
