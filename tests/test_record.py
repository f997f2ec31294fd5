"""The stored record layout: construct's declaration is the spec; the fast path agrees byte for byte."""

from __future__ import annotations

import struct

import pytest
from ferrymq.protocols import record as rec
from hypothesis import given
from hypothesis import strategies as st

ints32 = st.integers(-(2**31), 2**31 - 1)
ints64 = st.integers(-(2**63), 2**63 - 1)
hosts = st.binary(min_size=4, max_size=4).flatmap(
    lambda ip: ints32.map(lambda port: ip + struct.pack(">i", port)))
props = st.dictionaries(st.text(st.characters(blacklist_characters="\x01\x02", codec="utf-8"),
                                min_size=1, max_size=8),
                        st.text(st.characters(blacklist_characters="\x01\x02", codec="utf-8"),
                                max_size=16), max_size=4)


def _fields(**over):
    base = dict(queue_id=3, flag=7, queue_offset=42, physical_offset=1000, sys_flag=0,
                born_timestamp=1_700_000_000_000, born_host=rec.host_bytes("10.0.0.1", 5555),
                store_timestamp=1_700_000_000_001, store_host=rec.host_bytes("127.0.0.1", 10911),
                reconsume_times=1, prepared_transaction_offset=0, body=b"hello",
                topic=b"orders", properties=rec.encode_properties({"TAGS": "TagA", "KEYS": "k1"}))
    base.update(over)
    return base


@given(queue_id=ints32, flag=ints32, queue_offset=ints64, physical_offset=ints64,
       born_timestamp=ints64, born_host=hosts, store_timestamp=ints64, store_host=hosts,
       reconsume_times=ints32, prepared=ints64, body=st.binary(max_size=300),
       topic=st.text(st.characters(codec="utf-8"), min_size=1, max_size=40),
       properties=props)
def test_fast_path_and_construct_agree_byte_for_byte(queue_id, flag, queue_offset,
                                                      physical_offset, born_timestamp, born_host,
                                                      store_timestamp, store_host,
                                                      reconsume_times, prepared, body, topic,
                                                      properties) -> None:
    topic_b = topic.encode()[:255]
    topic = topic_b.decode("utf-8", "ignore")
    topic_b = topic.encode()
    if not topic_b:
        return
    raw_props = rec.encode_properties(properties)
    fast = rec.encode(queue_id=queue_id, flag=flag, queue_offset=queue_offset,
                      physical_offset=physical_offset, sys_flag=0,
                      born_timestamp=born_timestamp, born_host=born_host,
                      store_timestamp=store_timestamp, store_host=store_host,
                      reconsume_times=reconsume_times, prepared_transaction_offset=prepared,
                      body=body, topic=topic_b, properties=raw_props)
    spec = rec.RECORD.build(dict(
        total_size=len(fast), body_crc=rec.body_crc(body), queue_id=queue_id, flag=flag,
        queue_offset=queue_offset, physical_offset=physical_offset, sys_flag=0,
        born_timestamp=born_timestamp,
        born_host=dict(address=born_host[:4], port=struct.unpack(">i", born_host[4:])[0]),
        store_timestamp=store_timestamp,
        store_host=dict(address=store_host[:4], port=struct.unpack(">i", store_host[4:])[0]),
        reconsume_times=reconsume_times, prepared_transaction_offset=prepared, body=body,
        topic=topic, properties=raw_props))
    assert fast == spec
    decoded = rec.decode(fast)
    parsed = rec.RECORD.parse(fast)
    assert (decoded.queue_offset, decoded.body, decoded.topic, decoded.properties_raw) == \
        (parsed.queue_offset, parsed.body, parsed.topic, parsed.properties)
    assert decoded.properties == properties
    assert decoded.total_size == len(fast) == rec.record_size(len(body), len(topic_b), len(raw_props))


def test_record_layout_matches_rocketmq_offsets() -> None:
    raw = rec.encode(**_fields())
    assert struct.unpack_from(">i", raw, 0)[0] == len(raw)
    assert struct.unpack_from(">i", raw, 4)[0] == rec.MAGIC == -626843481
    assert struct.unpack_from(">q", raw, rec.POS_QUEUE_OFFSET)[0] == 42
    assert struct.unpack_from(">q", raw, rec.POS_PHYSICAL_OFFSET)[0] == 1000
    assert raw[rec.HEADER_SIZE:rec.HEADER_SIZE + 5] == b"hello"
    assert raw.endswith(b"TAGS\x01TagA\x02KEYS\x01k1\x02")


def test_body_crc_is_rocketmqs_31_bit_crc32() -> None:
    import zlib
    assert rec.body_crc(b"hello") == zlib.crc32(b"hello") & 0x7FFFFFFF


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[:7], "truncated"),
    (lambda b: b[:4] + struct.pack(">i", rec.BLANK_MAGIC) + b[8:], "blank record"),
    (lambda b: b[:4] + b"\x00\x00\x00\x01" + b[8:], "bad magic"),
    (lambda b: struct.pack(">i", len(b) + 9) + b[4:], "out of range"),
    (lambda b: b[:rec.HEADER_SIZE] + b"j" + b[rec.HEADER_SIZE + 1:], "CRC"),
    (lambda b: b[:rec.HEADER_SIZE - 4] + struct.pack(">i", 10**6) + b[rec.HEADER_SIZE:],
     "body length"),
])
def test_decode_refuses_damaged_records(damage, message) -> None:
    with pytest.raises(rec.RecordError, match=message):
        rec.decode(damage(rec.encode(**_fields())))


def test_ipv6_hosts_decode_through_the_specification() -> None:
    six = dict(address=bytes(range(16)), port=9876)
    raw = rec.RECORD.build(dict(
        total_size=0, body_crc=rec.body_crc(b"x"), queue_id=0, flag=0, queue_offset=5,
        physical_offset=0, sys_flag=rec.BORNHOST_V6_FLAG | rec.STOREHOST_V6_FLAG,
        born_timestamp=1, born_host=six, store_timestamp=2, store_host=six, reconsume_times=0,
        prepared_transaction_offset=0, body=b"x", topic="t", properties=b""))
    raw = struct.pack(">i", len(raw)) + raw[4:]
    r = rec.decode(raw)
    assert r.queue_offset == 5 and r.body == b"x" and len(r.born_host) == 20
    assert rec.host_str(r.born_host).endswith(":9876")


def test_properties_tolerate_a_missing_final_separator() -> None:
    assert rec.decode_properties(b"A\x011\x02B\x012") == {"A": "1", "B": "2"}
    assert rec.decode_properties("junk-without-separator") == {}


@given(st.lists(st.tuples(ints32, st.binary(max_size=64), props), min_size=1, max_size=8))
def test_batch_members_round_trip_and_match_the_specification(members) -> None:
    encoded = [rec.encode_member(f, b, rec.encode_properties(p)) for f, b, p in members]
    for raw, (f, b, _p) in zip(encoded, members, strict=True):
        parsed = rec.BATCH_MEMBER.parse(raw)
        assert (parsed.total_size, parsed.flag, parsed.body) == (len(raw), f, b)
    out = list(rec.iter_members(b"".join(encoded)))
    assert [(m.flag, m.body, m.properties) for m in out] == members
    assert rec.count_members(b"".join(encoded)) == len(members)


@pytest.mark.parametrize("body", [b"\x00" * 10, rec.encode_member(0, b"abc", b"")[:-1],
                                  struct.pack(">iiiii", 22, 0, 0, 0, 99) + b"\x00\x00"])
def test_malformed_batch_bodies_are_refused(body) -> None:
    with pytest.raises(rec.RecordError):
        list(rec.iter_members(body))


def test_hosts_format() -> None:
    raw = rec.host_bytes("192.168.1.2", 10911)
    assert rec.host_str(raw) == "192.168.1.2:10911"
    with pytest.raises(ValueError):
        rec.host_bytes("300.1.1.1", 1)


def test_encoded_properties_pass_through_without_decoding() -> None:
    raw = b"UNIQ_KEY\x01ABC\x02TAGS\x01TagA\x02XTAGS\x01no\x02"
    props = rec.EncodedProperties(raw)
    assert rec.encode_properties(props) is raw, "written back exactly as it came"
    assert props.get("TAGS") == "TagA" and props._dict is None, "found by search, not decoded"
    assert props.get("AGS") is None and props.get("XTAGS") == "no"
    assert dict(props) == {"UNIQ_KEY": "ABC", "TAGS": "TagA", "XTAGS": "no"}
    assert props == {"UNIQ_KEY": "ABC", "TAGS": "TagA", "XTAGS": "no"}
    assert not rec.EncodedProperties(b"")
