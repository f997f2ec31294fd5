"""Connections that hold the broker without using it: silent after connecting, idle after a
request, stalled in the middle of a frame (slowloris), or never reading what they asked for.
Each door closes them by its limit (the abuse broker's are one or two seconds), counts why,
and keeps serving everyone else."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from abuse_tools import (
    API_VERSIONS,
    GET_BROKER_RUNTIME_INFO,
    PRODUCE,
    TOKEN,
    closed_by_peer,
    connect,
    drain,
    kafka_body,
    kafka_call,
    kafka_request,
    metric,
    mqtt_connect,
    remoting_frame,
    sasl_login,
    still_open,
    trickle,
    wait_for,
)
from ferrymq.protocols.kafka import records as kr
from ferrymq.protocols.remoting import RequestCode, encode, request

PROTOCOL = {"namesrv": "namesrv", "remoting": "rocketmq", "kafka": "kafka", "http": "http"}


def closed_count(hostile, door: str, reason: str) -> float:
    return metric(hostile.ports.http, "ferrymq_connections_closed_total",
                  protocol=PROTOCOL[door], reason=reason)


def handshaken(hostile, door: str) -> socket.socket:
    """A connection past its handshake: one request answered (Kafka: SASL done)."""
    s = connect(getattr(hostile.ports, door))
    if door == "kafka":
        sasl_login(s)
    else:
        code = GET_BROKER_RUNTIME_INFO if door == "remoting" else RequestCode.GET_ROUTEINFO_BY_TOPIC
        s.sendall(encode(request(code, 1, {"topic": "x"})))
        assert drain(s, 0.5), "no answer"
    return s


def test_silent_connections_are_closed_at_every_door(hostile) -> None:
    """Connected, then nothing: the handshake timeout (MQTT: connect_timeout; HTTP: the
    keep-alive timeout, a connection's first wait). A Kafka client that asks ApiVersions
    (allowed before SASL, and answered) but never authenticates is closed the same way."""
    before = {d: closed_count(hostile, d, "handshake_timeout")
              for d in ("namesrv", "remoting", "kafka")}
    unauthenticated = connect(hostile.ports.kafka)
    for corr in range(2):
        unauthenticated.sendall(kafka_request(API_VERSIONS, 0, kafka_body(API_VERSIONS), corr))
        assert drain(unauthenticated, 0.2)
    silent = {door: connect(port) for door, port in hostile.ports.by_door().items()}
    silent["kafka, unauthenticated"] = unauthenticated
    for door, s in silent.items():
        assert closed_by_peer(s), f"the {door} door kept a silent connection"
    for door, n in before.items():
        assert closed_count(hostile, door, "handshake_timeout") >= n + (2 if door == "kafka"
                                                                         else 1), door
    hostile.check()


def test_idle_connections_are_closed(hostile) -> None:
    """RocketMQ closes a channel idle for 120 s, Kafka after connections.max.idle.ms:
    here two seconds. Before, these doors never closed one."""
    doors = ("namesrv", "remoting", "kafka")
    before = {d: closed_count(hostile, d, "idle_timeout") for d in doors}
    idle = {d: handshaken(hostile, d) for d in doors}
    for door, s in idle.items():
        assert closed_by_peer(s), f"the {door} door kept an idle connection"
        assert closed_count(hostile, door, "idle_timeout") == before[door] + 1
    hostile.check()


def test_an_active_connection_is_not_idle(hostile) -> None:
    s = handshaken(hostile, "remoting")
    for i in range(10):  # 2.5 s of requests, past the 2 s idle timeout
        s.sendall(encode(request(GET_BROKER_RUNTIME_INFO, 100 + i)))
        assert drain(s, 0.25)
    assert still_open(s)
    s.close()


SLOW_FRAMES = {
    "namesrv": remoting_frame(b'{"code":105,"opaque":3,"extFields":{"topic":"slow"}}'),
    "remoting": remoting_frame(b'{"code":28,"opaque":3}'),
    "kafka": kafka_request(API_VERSIONS, 0, kafka_body(API_VERSIONS), 3),
}


def test_a_frame_trickled_a_byte_at_a_time_is_closed(hostile) -> None:
    """Slowloris: a frame begun must be complete within frame_timeout_s (1 s here); the
    bytes keep coming, so no idle timeout would ever fire. The three doors at once."""
    doors = ("namesrv", "remoting", "kafka")
    before = {d: closed_count(hostile, d, "frame_timeout") for d in doors}
    conns = {d: handshaken(hostile, d) for d in doors}
    finished: dict[str, bool] = {}

    def slow(door: str) -> None:
        finished[door] = not trickle(conns[door], SLOW_FRAMES[door] * 3, every=0.2)

    threads = [threading.Thread(target=slow, args=(d,)) for d in doors]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert finished == {d: False for d in doors}, "a slow frame was let finish"
    for door in doors:
        wait_for(lambda door=door: closed_count(hostile, door, "frame_timeout") > before[door],
                 what=f"{door} counted a frame timeout")
    hostile.check()


def test_mqtt_connect_trickled_is_closed_by_the_connect_timeout(hostile) -> None:
    s = connect(hostile.ports.mqtt)
    assert trickle(s, mqtt_connect(b"slowloris") * 3, every=0.2)
    hostile.check()


def test_mqtt_keep_alive_is_enforced(hostile) -> None:
    s = connect(hostile.ports.mqtt)
    s.sendall(mqtt_connect(b"sleepy", keep_alive=1))
    assert drain(s, 0.3)[:4] == b"\x20\x02\x00\x00"
    assert closed_by_peer(s)  # 1.5 x the keep alive without a packet


def test_websocket_upgrade_trickled_is_closed(hostile) -> None:
    s = connect(hostile.ports.mqtt_ws)
    upgrade = (b"GET /mqtt HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
               b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
               b"sec-websocket-protocol: mqtt\r\n\r\n")
    assert trickle(s, upgrade, every=0.2)
    hostile.check()


def test_http_head_and_body_trickled_get_408(hostile) -> None:
    s = connect(hostile.ports.http)
    assert trickle(s, b"GET /healthz HTTP/1.1\r\nhost: x\r\n" * 10, every=0.2)
    s = connect(hostile.ports.http)
    s.sendall(b"POST /v1/topics/t/messages HTTP/1.1\r\nhost: x\r\n"
              + f"authorization: Bearer {TOKEN}\r\ncontent-length: 100\r\n\r\n".encode())
    s.sendall(b"x")
    reply = drain(s, 3.0)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:100]
    hostile.check()


def test_clients_that_never_read_are_closed_by_the_send_timeout(hostile) -> None:
    """Requests whose answers are large, pipelined, never read: the broker's send blocks,
    it stops reading (the kernel's buffers are all it holds), and closes the
    connection once a send has waited send_timeout_s (1.5 s)."""
    before = {d: closed_count(hostile, d, "send_timeout") for d in ("remoting", "kafka", "http")}
    floods = {}
    remoting = handshaken(hostile, "remoting")
    remoting.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    floods["remoting"] = (remoting, b"".join(
        encode(request(RequestCode.GET_ALL_TOPIC_CONFIG, i)) for i in range(2000)))
    kafka = handshaken(hostile, "kafka")
    value = b"v" * 200_000
    R = kafka_body(PRODUCE).__class__
    batch = kr.encode_batch(0, [(0, None, value, ())] * 5)
    resp = kafka_call(kafka, PRODUCE, 8, R(acks=-1, timeout_ms=5000, topic_data=(
        R.TopicProduceData(name="never-read", partition_data=(
            R.PartitionProduceData(index=0, records=batch),)),)))
    assert resp.responses[0].partition_responses[0].error_code == 0
    kafka.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    F = kafka_body(1).__class__
    fetch = F(replica_id=-1, max_wait_ms=0, min_bytes=1, max_bytes=8 << 20, topics=(
        F.FetchTopic(topic="never-read", partitions=(
            F.FetchPartition(partition=0, fetch_offset=0, partition_max_bytes=8 << 20),)),))
    floods["kafka"] = (kafka, b"".join(kafka_request(1, 11, fetch, 50 + i) for i in range(20)))
    http = connect(hostile.ports.http)
    http.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    floods["http"] = (http, b"GET /openapi.json HTTP/1.1\r\nhost: x\r\n\r\n" * 200)
    for s, data in floods.values():
        s.settimeout(1)
        with contextlib.suppress(OSError):  # it stopped reading us: as intended
            s.sendall(data)
    for door, n in before.items():
        wait_for(lambda door=door, n=n: closed_count(hostile, door, "send_timeout") > n,
                 what=f"{door} closed a client that never reads")
    hostile.check()


def test_an_mqtt_subscriber_that_never_reads_costs_bounded_memory(hostile) -> None:
    sub = connect(hostile.ports.mqtt)
    sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sub.sendall(mqtt_connect(b"deaf"))
    assert drain(sub, 0.3)[:4] == b"\x20\x02\x00\x00"
    topic = b"deaf/news"
    sub.sendall(b"\x82" + bytes([5 + len(topic)]) + b"\x00\x01" + struct.pack(">H", len(topic))
                + topic + b"\x00")  # SUBSCRIBE QoS 0
    pub = connect(hostile.ports.mqtt)
    pub.sendall(mqtt_connect(b"loud"))
    assert drain(pub, 0.3)[:4] == b"\x20\x02\x00\x00"
    payload = b"p" * 60_000
    body = struct.pack(">H", len(topic)) + topic + payload
    length = len(body)
    varint = bytes([(length & 0x7F) | 0x80, (length >> 7) & 0x7F | 0x80, length >> 14])
    packet = b"\x30" + varint + body  # PUBLISH QoS 0
    for _ in range(500):  # 30 MB towards a subscriber that reads nothing
        pub.sendall(packet)
    pub.close()
    hostile.check()
    sub.close()
