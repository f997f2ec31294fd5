"""The remoting codec's limits, with byte strings alone: JSON headers and bodies that would
drive json.loads into recursion are protocol errors (naming the request when they can), and
the decoder says how large the frame under way will be."""

from __future__ import annotations

import struct

import pytest
from ferrymq.protocols.remoting import (
    FrameDecoder,
    RemotingProtocolError,
    RequestCode,
    bodies,
    encode,
    request,
)
from ferrymq.protocols.sentinels import NEED_DATA

NESTED = b"[" * 5000 + b"]" * 5000


def frame(header: bytes, body: bytes = b"", stype: int = 0) -> bytes:
    return struct.pack(">ii", 4 + len(header) + len(body), (stype << 24) | len(header)) + \
        header + body


def decode(data: bytes):  # type: ignore[no-untyped-def]
    d = FrameDecoder()
    d.receive_data(data)
    return d.next_command()


def test_a_deeply_nested_json_header_is_a_protocol_error() -> None:
    """The crash frame of issue 10: json.loads raised RecursionError out of the decoder."""
    with pytest.raises(RemotingProtocolError, match="nested"):
        decode(frame(NESTED))


def test_a_header_too_deep_to_use_names_its_opaque_for_the_answer() -> None:
    deep = b"[" * 50 + b"1" + b"]" * 50
    header = b'{"code":34,"opaque":7,"flag":0,"extFields":{"x":' + deep + b"}}"
    with pytest.raises(RemotingProtocolError) as info:
        decode(frame(header))
    assert info.value.opaque == 7


def test_a_header_past_the_size_limit_is_refused() -> None:
    header = b'{"code":34,"opaque":9,"remark":"' + b"x" * (1 << 20) + b'"}'
    with pytest.raises(RemotingProtocolError, match="bytes") as info:
        decode(frame(header))
    assert info.value.opaque == 9


def test_headers_with_brackets_in_their_values_still_decode() -> None:
    props = '[["k","v"]]' * 200  # JSON kept in a property: brackets inside a string
    cmd = decode(encode(request(RequestCode.SEND_MESSAGE, 3, {"properties": props})))
    assert cmd is not NEED_DATA and cmd.ext("properties") == props


@pytest.mark.parametrize("body", [NESTED, b'{"a":' * 3000 + b"1" + b"}" * 3000,
                                  b"[" + b"[]," * 250_000 + b"[]]"])
def test_a_json_body_past_the_limits_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(RemotingProtocolError):
        bodies.HeartbeatData.decode(body)
    with pytest.raises(bodies.BodyLimitError):
        bodies.loads(body)


def test_a_malformed_body_stays_a_body_error() -> None:
    with pytest.raises(bodies.BodyError):
        bodies.HeartbeatData.decode(b"[not a heartbeat")


def test_the_decoder_reports_the_frame_under_way() -> None:
    d = FrameDecoder()
    assert d.frame_in_progress() == 0
    whole = encode(request(RequestCode.HEART_BEAT, 1, {}, b"x" * 1000))
    d.receive_data(whole[:2])
    assert d.frame_in_progress() == 4  # not even its length word yet
    d.receive_data(whole[2:100])
    assert d.frame_in_progress() == len(whole)
    d.receive_data(whole[100:] + whole[:10])
    assert d.next_command() is not NEED_DATA
    assert d.frame_in_progress() == len(whole)  # the next one has begun
    d.receive_data(whole[10:])
    assert d.next_command() is not NEED_DATA and d.frame_in_progress() == 0


def test_a_compressed_body_inflates_within_the_limit() -> None:
    import zlib

    from ferrymq.protocols import record as rec
    from ferrymq.protocols.remoting import messages

    bomb = zlib.compress(b"\0" * (messages.MAX_INFLATED + 1024), 9)
    assert len(bomb) < 200_000
    with pytest.raises(rec.RecordError, match="inflates past"):
        messages._inflate(bomb)
    assert messages._inflate(zlib.compress(b"fine" * 1000)) == b"fine" * 1000


def test_a_large_frame_is_received_into_a_buffer_of_its_size() -> None:
    body = bytes(range(256)) * 4000  # ~1 MB
    whole = encode(request(RequestCode.SEND_MESSAGE, 5, {"topic": "t"}, body))
    d = FrameDecoder()
    for i in range(0, len(whole), 7000):  # in pieces, the way reads come
        d.receive_data(whole[i:i + 7000] + (encode(request(RequestCode.HEART_BEAT, 6))
                                             if i + 7000 >= len(whole) else b""))
        if i + 7000 < len(whole):
            assert d.next_command() is NEED_DATA
            assert d.frame_in_progress() == len(whole)
    cmd = d.next_command()
    assert cmd is not NEED_DATA and cmd.opaque == 5 and cmd.body == body and cmd.ext("topic") == "t"
    nxt = d.next_command()
    assert nxt is not NEED_DATA and nxt.opaque == 6 and d.buffered == 0


def test_a_large_frame_that_does_not_decode_is_still_a_protocol_error() -> None:
    bad = frame(b"{" + b"x" * 100_000)
    d = FrameDecoder()
    d.receive_data(bad[:1000])
    assert d.next_command() is NEED_DATA
    d.receive_data(bad[1000:])
    with pytest.raises(RemotingProtocolError):
        d.next_command()
