"""Memory a client can make the broker hold: large frames before authentication, large frames
begun and never finished (the request-bytes budget), and connections by the hundred from
one address (the per-address cap)."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from abuse_tools import (
    TOKEN,
    closed_by_peer,
    connect,
    drain,
    metric,
    probe_namesrv,
    probe_remoting,
    wait_for,
)
from ferrymq.protocols.remoting import encode, request

FRAME = 7_500_000  # the figure: 8 connections x 7.5 MB = +64 MB before any auth


def _send_some(s: socket.socket, data: bytes, seconds: float = 0.5) -> int:
    """Send what the peer takes within ``seconds``; how much that was."""
    s.settimeout(seconds)
    sent = 0
    view = memoryview(data)
    with contextlib.suppress(OSError):
        while sent < len(data):
            sent += s.send(view[sent:sent + 65536])
    return sent


def test_kafka_frames_before_sasl_are_limited_to_512_kib(hostile) -> None:
    """With SASL on, a frame before authentication may be 512 KiB (Kafka's
    sasl.server.max.receive.size); past it the connection closes at the length word,
    before a byte of the frame is buffered."""
    before = hostile.rss_kib()
    conns = [connect(hostile.ports.kafka) for _ in range(8)]
    head = struct.pack(">ihhi", FRAME, 0, 8, 1)  # Produce v8, 7.5 MB
    for s in conns:
        _send_some(s, head + b"\0" * (FRAME - 10))
    grown = hostile.rss_kib() - before
    for s in conns:
        assert closed_by_peer(s)
    assert grown < 24 * 1024, f"the broker buffered {grown} KiB of unauthenticated frames"
    hostile.check()


def test_frames_begun_and_never_finished_are_held_within_the_budget(hostile) -> None:
    """The remoting door has no authentication: eight clients each begin a 7.5 MB frame and
    stall. The first two hold the 16 MiB budget; the others wait, not read (TCP pushes back
    on them), until the frame timeout frees it; memory stays within the budget."""
    port = hostile.ports.remoting
    waits = metric(hostile.ports.http, "ferrymq_inflight_request_waits_total",
                   protocol="rocketmq")
    before = hostile.rss_kib()
    conns = [connect(port) for _ in range(8)]
    header = b'{"code":28,"opaque":9}'
    frame_head = struct.pack(">ii", 4 + len(header) + FRAME, len(header)) + header
    sent = [0] * len(conns)

    def stall(i: int) -> None:
        sent[i] = _send_some(conns[i], frame_head + b"\0" * (FRAME - 1000), 2.0)

    threads = [threading.Thread(target=stall, args=(i,)) for i in range(len(conns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    grown = hostile.rss_kib() - before
    assert grown < 24 * 1024, f"stalled frames made the broker hold {grown} KiB"
    wait_for(lambda: metric(hostile.ports.http, "ferrymq_inflight_request_waits_total",
                            protocol="rocketmq") > waits, what="readers waited for the budget")
    for s in conns:
        assert closed_by_peer(s, within=30)  # each by the frame timeout, in turn
    # A large request that completes is still served once the stallers are gone.
    with connect(port) as s:
        s.sendall(encode(request(28, 11, {}, b"\0" * 6_000_000)))
        assert drain(s, 1.0)
    assert probe_remoting(port) == 0
    hostile.check()


def test_connections_past_the_per_address_cap_are_refused(hostile) -> None:
    """400 per address on this broker: the 401st from 127.0.0.1 is refused (and counted);
    once they go, the address is served again."""
    port = hostile.ports.namesrv
    refused = metric(hostile.ports.http, "ferrymq_connections_refused_total",
                     protocol="namesrv", reason="max_connections_per_address")
    held = [connect(port) for _ in range(400)]
    extra = connect(port)
    assert closed_by_peer(extra, within=5)
    assert metric(hostile.ports.http, "ferrymq_connections_refused_total", protocol="namesrv",
                  reason="max_connections_per_address") == refused + 1
    for s in held:
        s.close()
    wait_for(lambda: _serves(port), what="the address is served again")
    hostile.check()


def _serves(port: int) -> bool:
    try:
        probe_namesrv(port)
        return True
    except (AssertionError, OSError):
        return False


def test_http_bodies_without_a_valid_token_are_not_read(hostile) -> None:
    """With bearer tokens on, a request whose token fails gets 401 before more than
    pre_auth_max_bytes (64 KiB) of its body is read."""
    s = connect(hostile.ports.http)
    s.sendall(b"POST /v1/topics/t/messages HTTP/1.1\r\nhost: x\r\nauthorization: Bearer wrong\r\n"
              b"content-type: application/octet-stream\r\ncontent-length: 4000000\r\n\r\n")
    reply = drain(s, 0.5)
    assert reply.startswith(b"HTTP/1.1 401"), reply[:100]
    assert closed_by_peer(s)
    s = connect(hostile.ports.http)
    s.sendall(b"POST /v1/topics/t/messages HTTP/1.1\r\nhost: x\r\n"
              b"transfer-encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    _send_some(s, chunk * 4, 1.0)
    assert drain(s, 1.0).startswith(b"HTTP/1.1 401")
    s = connect(hostile.ports.http)  # with the token, the same body is taken
    body = b"x" * 200_000
    s.sendall(b"POST /v1/topics/t/messages HTTP/1.1\r\nhost: x\r\n"
              + f"authorization: Bearer {TOKEN}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
              + body)
    assert drain(s, 1.0).startswith(b"HTTP/1.1 201")
    hostile.check()
