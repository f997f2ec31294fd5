"""The sans-I/O Kafka connection: framing, header versions, unsupported and malformed requests."""

from __future__ import annotations

import itertools
import struct

import pytest
from ferrymq.protocols.kafka import schema
from ferrymq.protocols.kafka.connection import (
    NEED_DATA,
    BadRequest,
    FrameError,
    Request,
    ServerConnection,
    UnknownApi,
    UnsupportedVersion,
    parse_response,
    request_bytes,
    response_bytes,
)

SUPPORTED = {18: (0, 3), 3: (0, 8), 10: (0, 3)}


def conn() -> ServerConnection:
    return ServerConnection(SUPPORTED, max_frame_size=1 << 20)


def test_a_request_split_anywhere_is_reassembled() -> None:
    R = schema.request_class(3)
    frame = request_bytes(3, 1, 7, R(topics=None))
    c = conn()
    for i in range(len(frame)):
        assert c.next_event() is NEED_DATA
        c.receive_data(frame[i:i + 1])
    ev = c.next_event()
    assert isinstance(ev, Request)
    assert (ev.header.api_key, ev.header.api_version, ev.header.correlation_id) == (3, 1, 7)
    assert ev.header.client_id == "test"
    assert ev.body.topics is None
    assert c.next_event() is NEED_DATA


def test_flexible_request_header_skips_its_tagged_fields() -> None:
    R = schema.request_class(10)
    c = conn()
    c.receive_data(request_bytes(10, 3, 1, R(key="grp", key_type=0)))
    ev = c.next_event()
    assert isinstance(ev, Request) and ev.body.key == "grp"


def test_frame_announcing_2_gib_is_refused_before_buffering() -> None:
    c = conn()
    c.receive_data(struct.pack(">i", 0x7FFFFFFF) + b"\x00\x12")
    with pytest.raises(FrameError):
        c.next_event()


def test_negative_and_tiny_frame_sizes_are_framing_errors() -> None:
    for size in (-1, 0, 7):
        c = conn()
        c.receive_data(struct.pack(">i", size) + bytes(8))
        with pytest.raises(FrameError):
            c.next_event()


def test_unknown_api_key_and_unsupported_version_are_events() -> None:
    c = conn()
    c.receive_data(struct.pack(">ihhih", 10, 999, 0, 5, -1))
    assert isinstance(c.next_event(), UnknownApi)
    c.receive_data(struct.pack(">ihhih", 10, 18, 9, 6, -1))
    ev = c.next_event()
    assert isinstance(ev, UnsupportedVersion) and ev.header.correlation_id == 6


def test_malformed_body_is_a_bad_request() -> None:
    c = conn()
    payload = struct.pack(">hhih", 3, 1, 9, -1) + struct.pack(">i", 5) + b"\x00"
    c.receive_data(struct.pack(">i", len(payload)) + payload)
    ev = c.next_event()
    assert isinstance(ev, BadRequest) and ev.header.correlation_id == 9


def test_api_versions_response_header_has_no_tag_section_even_when_flexible() -> None:
    A = schema.response_class(18)
    c = conn()
    c.receive_data(request_bytes(18, 3, 11, schema.request_class(18)(
        client_software_name="x", client_software_version="1")))
    ev = c.next_event()
    raw = b"".join(response_bytes(ev.header, A(error_code=0)))
    size, corr = struct.unpack_from(">ii", raw)
    assert (size, corr) == (len(raw) - 4, 11)
    assert parse_response(18, 3, raw[4:])[1].error_code == 0


def test_flexible_response_gets_header_v1() -> None:
    R = schema.response_class(10)
    c = conn()
    c.receive_data(request_bytes(10, 3, 12, schema.request_class(10)(key="g")))
    ev = c.next_event()
    raw = b"".join(response_bytes(ev.header, R(node_id=1, host="h", port=9)))
    assert raw[8] == 0  # the empty tag section right after the correlation id
    assert parse_response(10, 3, raw[4:])[1].port == 9


@pytest.mark.parametrize("cuts", [(), (3,), (5,), (1, 40), (2, 3, 80), (27, 54)])
def test_frames_in_any_reads_come_out_whole_and_in_order(cuts) -> None:
    """Reads of whole frames are parsed in place (no copy); any other cut goes through
    the buffer. Either way every request comes out once, in order."""
    R = schema.request_class(3)
    stream = b"".join(request_bytes(3, 1, cid, R(topics=None)) for cid in range(4))
    bounds = [0, *cuts, len(stream)]
    c = conn()
    got = []
    for a, b in itertools.pairwise(bounds):
        c.receive_data(stream[a:b])
        while (ev := c.next_event()) is not NEED_DATA:
            got.append(ev.header.correlation_id)
    assert got == [0, 1, 2, 3]
    assert c.buffered == 0


def test_a_whole_frame_read_is_not_copied_into_the_buffer() -> None:
    R = schema.request_class(3)
    frame = request_bytes(3, 1, 9, R(topics=None))
    c = conn()
    c.receive_data(frame + frame[:5])  # one whole frame and the start of the next
    assert isinstance(c.next_event(), Request)
    assert c.next_event() is NEED_DATA
    c.receive_data(frame[5:])
    ev = c.next_event()
    assert isinstance(ev, Request) and ev.header.correlation_id == 9
    assert c.buffered == 0


def test_a_large_frame_is_received_into_a_buffer_of_its_own() -> None:
    """From LARGE_FRAME on, a frame under way gets its own buffer: the socket can
    read into it (frame_buffer/frame_received) or bytes can be fed; both give the
    same request, and bytes past it start the next frame."""
    from ferrymq.protocols.kafka.connection import LARGE_FRAME

    R = schema.request_class(3)
    big = request_bytes(3, 1, 1, R(topics=[R.MetadataRequestTopic(name="t" * 200)]
                                    * (LARGE_FRAME // 200)))
    small = request_bytes(3, 1, 2, R(topics=None))
    assert len(big) > LARGE_FRAME
    for use_buffer in (False, True):
        c = conn()
        assert c.frame_buffer() is None
        c.receive_data(big[:1000])
        assert c.next_event() is NEED_DATA
        pos = 1000
        while pos < len(big):
            view = c.frame_buffer()
            assert view is not None and len(view) == len(big) - pos == c.frame_wanted()
            if use_buffer:
                n = min(len(view), 30_000)
                view[:n] = big[pos:pos + n]
                c.frame_received(n)
            else:
                n = min(len(big) - pos, 30_000)
                c.receive_data(big[pos:pos + n] + (small[:3] if pos + n == len(big) else b""))
            pos += n
        ev = c.next_event()
        assert isinstance(ev, Request) and ev.header.correlation_id == 1
        assert len(ev.body.topics) == LARGE_FRAME // 200
        if not use_buffer:
            c.receive_data(small[3:])
        else:
            c.receive_data(small)
        ev = c.next_event()
        assert isinstance(ev, Request) and ev.header.correlation_id == 2
        assert c.next_event() is NEED_DATA and c.buffered == 0


def test_announcing_large_frames_reserves_no_memory() -> None:
    """A frame's own buffer is anonymous memory: 20 connections announcing 16 MiB
    frames and sending a kilobyte each must not cost 320 MiB of RSS."""
    from ferrymq.protocols.kafka.connection import MAX_PREALLOCATED_FRAME

    def rss_mib() -> float:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * 4096 / (1 << 20)

    conns = [ServerConnection(SUPPORTED, max_frame_size=1 << 30) for _ in range(20)]
    before = rss_mib()
    for c in conns:
        c.receive_data(struct.pack(">ihhi", MAX_PREALLOCATED_FRAME - 4, 3, 1, 7) + b"x" * 1000)
        assert c.next_event() is NEED_DATA and c.frame_buffer() is not None
    assert rss_mib() - before < 32
