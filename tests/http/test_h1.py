"""The sans-I/O HTTP/1.1 server connection: requests out of bytes however they are cut,
pipelining, the head limit, what smuggling looks like, and response framing."""

from __future__ import annotations

import pytest
from ferrymq.protocols.http import h1
from hypothesis import given
from hypothesis import strategies as st

PIPELINE = (b"POST /v1/topics/t/messages?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n"
            b"Content-Type:  application/json \r\n\r\nhello"
            b"PUT /chunked HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
            b"GET /last HTTP/1.0\r\n\r\n")


def drain(conn: h1.ServerConnection) -> list[object]:
    out: list[object] = []
    while (ev := conn.next_event()) is not h1.NEED_DATA:
        out.append(ev)
    return out


def requests(events: list[object]) -> list[tuple[str, str, bytes, bool]]:
    """(method, target, body, keep_alive) per request, bodies joined."""
    out = []
    for ev in events:
        if isinstance(ev, h1.RequestHead):
            out.append([ev.method, ev.target, b"", ev.keep_alive])
        elif isinstance(ev, bytes):
            out[-1][2] += ev
    assert events.count(h1.END) == len(out)
    return [tuple(r) for r in out]


EXPECTED = [("POST", "/v1/topics/t/messages?x=1", b"hello", True),
            ("PUT", "/chunked", b"abcde", True), ("GET", "/last", b"", False)]


def test_pipelined_requests_come_out_in_order_with_their_bodies() -> None:
    conn = h1.ServerConnection()
    conn.receive_data(PIPELINE)
    events = drain(conn)
    assert requests(events) == EXPECTED
    head = events[0]
    assert head.headers == {b"host": b"a", b"content-length": b"5",
                            b"content-type": b"application/json"}
    assert (head.version, events[-2].version) == ("1.1", "1.0")


@given(st.lists(st.integers(1, len(PIPELINE) - 1), max_size=12))
def test_any_cut_of_the_bytes_gives_the_same_requests(cuts: list[int]) -> None:
    conn = h1.ServerConnection()
    events: list[object] = []
    last = 0
    for cut in [*sorted(set(cuts)), len(PIPELINE)]:
        conn.receive_data(PIPELINE[last:cut])
        events += drain(conn)
        last = cut
    assert requests(events) == EXPECTED


def test_expect_continue_and_connection_close_are_reported() -> None:
    conn = h1.ServerConnection()
    conn.receive_data(b"POST / HTTP/1.1\r\nExpect: 100-Continue\r\nContent-Length: 2\r\n"
                      b"Connection: close\r\n\r\n")
    (head,) = drain(conn)
    assert head.expect_continue and not head.keep_alive
    conn.receive_data(b"ok")
    assert drain(conn) == [b"ok", h1.END]


@pytest.mark.parametrize("data, status", [
    (b"GET / HTTP/9.9\r\n\r\n", 505),
    (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400),  # a TLS hello
    (b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: a\r\n folded\r\n\r\n", 400),  # obs-fold
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", 400),
])
def test_broken_and_smuggling_requests_are_protocol_errors(data: bytes, status: int) -> None:
    with pytest.raises(h1.HttpProtocolError) as err:
        h1.ServerConnection().receive_data(data)
    assert err.value.status == status


def test_a_head_is_bounded_whole_or_in_pieces() -> None:
    with pytest.raises(h1.HeadTooLarge) as err:
        h1.ServerConnection(1024).receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000
                                               + b"\r\n\r\n")
    assert err.value.status == 431
    conn = h1.ServerConnection(1024)
    conn.receive_data(b"GET / HTTP/1.1\r\n")
    with pytest.raises(h1.HeadTooLarge):  # a header that never ends
        for _ in range(100):
            conn.receive_data(b"X-Slow: " + b"a" * 100)
    conn = h1.ServerConnection(1024)
    conn.receive_data(b"GET / HTTP/1.1\r\n" + b"X: 1\r\n" * 100 + b"\r\n")
    assert len(drain(conn)) == 2, "many small headers under the limit are fine"


def test_an_upgrade_is_answered_and_then_the_connection_ends() -> None:
    conn = h1.ServerConnection()
    conn.receive_data(b"GET / HTTP/1.1\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\nPRI *")
    (head, end) = drain(conn)
    assert end is h1.END and not head.keep_alive


def test_response_framing() -> None:
    assert h1.response_head(201, [("content-type", "application/json")], 2) == (
        b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n")
    assert h1.response_head(200, [], None, close=True) == (
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n")
    assert h1.response_head(200, [], None, version="1.0") == b"HTTP/1.1 200 OK\r\n\r\n"
    assert h1.chunk(b"hello") + h1.LAST_CHUNK == b"5\r\nhello\r\n0\r\n\r\n"
    with pytest.raises(ValueError):
        h1.response_head(200, [("location", "/x\r\nset-cookie: a=b")], 0)
