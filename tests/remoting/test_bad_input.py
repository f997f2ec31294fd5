"""Bad input at the native door and the NameServer: an error response or a close, everyone
else keeps being served, memory stays bounded."""

from __future__ import annotations

import socket
import struct
import time

import pytest
from ferrymq.protocols.remoting import RequestCode, ResponseCode, encode, request

from waiting import wait_until

from .conftest import SMALL_STORE, RawConnection, frame


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _serves(port: int) -> bool:
    try:
        c = RawConnection(port)
    except OSError:
        return False
    try:
        c.send_cmd(request(RequestCode.GET_BROKER_CLUSTER_INFO, 77))
        resp = c.recv_cmd()
        return resp is not None and resp.opaque == 77 and resp.code == ResponseCode.SUCCESS
    except OSError:
        return False
    finally:
        c.close()


def _still_serves(port: int) -> None:
    c = RawConnection(port)
    c.send_cmd(request(RequestCode.GET_BROKER_CLUSTER_INFO, 77))
    resp = c.recv_cmd()
    assert resp is not None and resp.opaque == 77 and resp.code == ResponseCode.SUCCESS
    c.close()


@pytest.mark.parametrize("door", ["remoting", "namesrv"])
def test_unknown_code_is_answered_and_the_connection_stays(native, door: str) -> None:
    c = RawConnection(native.port(door))
    c.send_cmd(request(4242, 1))
    resp = c.recv_cmd()
    assert resp is not None and resp.code == ResponseCode.REQUEST_CODE_NOT_SUPPORTED
    assert resp.opaque == 1 and resp.is_response
    c.send_cmd(request(RequestCode.GET_BROKER_CLUSTER_INFO, 2))
    assert c.recv_cmd().code == ResponseCode.SUCCESS  # type: ignore[union-attr]


@pytest.mark.parametrize("door", ["remoting", "namesrv"])
@pytest.mark.parametrize("garbage", [
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
    struct.pack(">i", 0x7FFFFFFF) + b"x" * 100,  # announces 2 GiB
    struct.pack(">i", -1),
    frame(b"{not json"),
    struct.pack(">ii", 50, 1000) + b"x" * 46,  # header longer than the frame
    frame(b"\x00\x01", stype=1),  # truncated binary header
    frame(b"abcd", stype=9),  # unknown serialize type
])
def test_garbage_closes_that_connection_only(native, door: str, garbage: bytes) -> None:
    bystander = RawConnection(native.port(door))
    c = RawConnection(native.port(door))
    c.send(garbage)
    assert c.recv_cmd() is None or c.closed_by_peer()
    bystander.send_cmd(request(RequestCode.GET_BROKER_CLUSTER_INFO, 5))
    assert bystander.recv_cmd().code == ResponseCode.SUCCESS  # type: ignore[union-attr]
    _still_serves(native.port(door))
    assert native.alive


def test_malformed_header_gets_system_error(native) -> None:
    c = RawConnection(native.port("remoting"))
    c.send_cmd(request(RequestCode.PULL_MESSAGE, 3, {"topic": "t", "queueId": "zero"}))
    resp = c.recv_cmd()
    assert resp is not None and resp.code == ResponseCode.SYSTEM_ERROR and resp.remark
    c.send_cmd(request(RequestCode.HEART_BEAT, 4, {}, b"[not a heartbeat"))
    assert c.recv_cmd().code == ResponseCode.SYSTEM_ERROR  # type: ignore[union-attr]
    c.send_cmd(request(RequestCode.SEND_BATCH_MESSAGE, 5, {"a": "g", "b": "T", "e": "0"},
                       b"\x00\x00\x00\x30garbage"))
    assert c.recv_cmd().code == ResponseCode.MESSAGE_ILLEGAL  # type: ignore[union-attr]


def test_partial_frame_then_close_does_not_hurt(native) -> None:
    c = RawConnection(native.port("remoting"))
    c.send(struct.pack(">i", 10_000) + b"{")  # half a frame, then gone
    c.close()
    _still_serves(native.port("remoting"))


@pytest.mark.slow
def test_client_that_never_reads_keeps_memory_bounded(native) -> None:
    """A client pipelines requests whose responses it never reads: the broker stops
    reading it once the socket buffers are full; its memory stays flat and others
    are served."""
    port = native.port("remoting")
    pid = native.proc.pid
    c = RawConnection(port, timeout=0.5)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    # A small request with a larger response, a thousand at a time.
    one = b"".join(encode(request(RequestCode.GET_ALL_TOPIC_CONFIG, i)) for i in range(1000))
    before = _rss_kib(pid)
    sent = 0
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            c.sock.sendall(one)
            sent += len(one)
        except (TimeoutError, OSError):
            break
    assert time.monotonic() < deadline, "the broker never stopped reading a client that never reads"
    _still_serves(port)
    growth = _rss_kib(pid) - before
    assert growth < 64 * 1024, f"broker memory grew by {growth} KiB"
    c.close()
    _still_serves(port)


def test_connections_past_the_limit_are_closed(start_broker, tmp_path) -> None:
    conf = tmp_path / "c.toml"
    conf.write_text(SMALL_STORE + "[remoting]\nmax_connections = 2\n")
    b = start_broker("remoting", extra_args=("--config", str(conf)))
    port = b.port("remoting")
    kept = [RawConnection(port), RawConnection(port)]
    for k in kept:
        k.send_cmd(request(RequestCode.GET_BROKER_CLUSTER_INFO, 1))
        assert k.recv_cmd() is not None
    extra = RawConnection(port)
    assert extra.closed_by_peer()
    kept[0].close()
    wait_until(lambda: _serves(port), what="the freed connection slot taken again")
