"""The MQTT client loop's own limits, after CONNECT (docs/operations.md, "Connection limits"):
a packet begun must end within packet_timeout (only a complete packet restarts the keep
alive, 3.1.2.10), a subscriber that takes none of what is sent to it is closed after
send_timeout, and before CONNECT is accepted a packet may be pre_auth_max_bytes at most.
Each limit is counted in ferrymq_connections_closed_total{protocol="mqtt"} by reason, and
everyone else is still served."""

from __future__ import annotations

import contextlib
import socket
import struct

from abuse_tools import closed_by_peer, connect, drain, metric, mqtt_connect, trickle, wait_for


def closed(hostile, reason: str) -> float:
    return metric(hostile.ports.http, "ferrymq_connections_closed_total", protocol="mqtt",
                  reason=reason)


def publish(topic: bytes, payload: bytes) -> bytes:
    body = struct.pack(">H", len(topic)) + topic + payload
    n, varint = len(body), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        varint += bytes([byte | (0x80 if n else 0)])
        if not n:
            return b"\x30" + varint + body  # PUBLISH QoS 0


def connected(hostile, client_id: bytes, keep_alive: int = 60) -> socket.socket:
    s = connect(hostile.ports.mqtt)
    s.sendall(mqtt_connect(client_id, keep_alive=keep_alive))
    assert drain(s, 0.3)[:4] == b"\x20\x02\x00\x00"
    return s


def test_a_packet_trickled_after_connect_is_closed(hostile) -> None:
    """Keep alive 0 (none) and a PUBLISH a byte at a time: every read used to restart
    the keep alive, so nothing ever closed it. A packet begun must now end within
    packet_timeout (1 s here)."""
    before = closed(hostile, "frame_timeout")
    s = connected(hostile, b"trickler", keep_alive=0)
    assert trickle(s, publish(b"slow/t", b"x" * 100), every=0.2), "a slow packet was let finish"
    wait_for(lambda: closed(hostile, "frame_timeout") > before, what="counted as frame_timeout")
    hostile.check()


def test_a_subscriber_that_never_reads_is_closed_by_the_send_timeout(hostile) -> None:
    before = closed(hostile, "send_timeout")
    sub = connect(hostile.ports.mqtt)
    sub.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sub.sendall(mqtt_connect(b"never-reads"))
    assert drain(sub, 0.3)[:4] == b"\x20\x02\x00\x00"
    topic = b"deaf2/news"
    sub.sendall(b"\x82" + bytes([5 + len(topic)]) + b"\x00\x01" + struct.pack(">H", len(topic))
                + topic + b"\x00")  # SUBSCRIBE QoS 0
    pub = connected(hostile, b"loud2")
    packet = publish(topic, b"p" * 60_000)
    for _ in range(16):  # 9.6 MB: more than the kernel's buffers on both sides hold
        pub.sendall(packet * 10)
    wait_for(lambda: closed(hostile, "send_timeout") > before, what="the deaf subscriber closed")
    pub.close()
    sub.settimeout(10)
    with contextlib.suppress(OSError):
        while sub.recv(1 << 20):  # what the kernel held, then the end
            pass
    sub.close()
    hostile.check()


def test_connect_larger_than_the_pre_auth_limit_is_refused(hostile) -> None:
    """A 5.0 CONNECT of 100 KB (the limit is 64 KiB until CONNECT is accepted) is closed
    as the door closes any malformed packet before CONNECT (its size is known before its
    protocol version, which a CONNACK would need); a packet as large is fine after CONNECT."""
    cid = b"big"
    props = b"\x26" + struct.pack(">H", 1) + b"k" + struct.pack(">H", 60_000) + b"v" * 60_000
    props += b"\x26" + struct.pack(">H", 1) + b"k" + struct.pack(">H", 40_000) + b"v" * 40_000
    n, varint = len(props), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        varint += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    var = b"\x00\x04MQTT\x05\x02\x00\x3c" + varint + props
    rest = var + struct.pack(">H", len(cid)) + cid
    n, length = len(rest), b""
    while True:
        byte, n = n & 0x7F, n >> 7
        length += bytes([byte | (0x80 if n else 0)])
        if not n:
            break
    s = connect(hostile.ports.mqtt)
    with contextlib.suppress(OSError):
        s.sendall(b"\x10" + length + rest)
    assert closed_by_peer(s)
    ok = connected(hostile, b"after-connect")
    ok.sendall(publish(b"big/after", b"x" * 100_000))
    ok.sendall(b"\xc0\x00")  # PINGREQ: answered after the large PUBLISH was taken
    assert drain(ok, 1.0)[-2:] == b"\xd0\x00", "the large PUBLISH after CONNECT was refused"
    ok.close()
    hostile.check()
