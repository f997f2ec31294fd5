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


# ------------------------------------------------------------ long property areas

long_values = st.integers(0, 70_000).map(lambda n: "v" * n)


@given(sys_flag=st.sampled_from([0, rec.FORMAT_LONG_PROPERTIES]), big=long_values,
       properties=props, body=st.binary(max_size=64))
def test_long_property_areas_agree_with_the_specification(sys_flag, big, properties,
                                                          body) -> None:
    """With FORMAT_LONG_PROPERTIES the properties length is 4 bytes: construct's
    declaration says so, the fast path writes and reads it so, byte for byte."""
    properties = {**properties, "MQTT_TOPIC": big}
    raw_props = rec.encode_properties(properties)
    if not sys_flag and len(raw_props) > rec.MAX_PROPERTIES_BYTES:
        sys_flag = rec.FORMAT_LONG_PROPERTIES  # the short form cannot carry them (see fit)
    fast = rec.encode(**_fields(sys_flag=sys_flag, body=body, properties=raw_props))
    spec = rec.RECORD.build(dict(
        total_size=len(fast), body_crc=rec.body_crc(body), queue_id=3, flag=7, queue_offset=42,
        physical_offset=1000, sys_flag=sys_flag, born_timestamp=1_700_000_000_000,
        born_host=dict(address=bytes([10, 0, 0, 1]), port=5555),
        store_timestamp=1_700_000_000_001,
        store_host=dict(address=bytes([127, 0, 0, 1]), port=10911), reconsume_times=1,
        prepared_transaction_offset=0, body=body, topic="orders", properties=raw_props))
    assert fast == spec
    decoded, parsed = rec.decode(fast), rec.RECORD.parse(fast)
    assert decoded.properties_raw == parsed.properties == raw_props
    assert decoded.properties == properties and decoded.body == body
    assert decoded.total_size == len(fast)
    if len(raw_props) > rec.MAX_PROPERTIES_BYTES:
        assert decoded.total_size == rec.record_size(len(body), 6, len(raw_props))


@given(st.lists(st.tuples(ints32, st.binary(max_size=64), props, long_values), min_size=1,
                max_size=4))
def test_long_batch_members_round_trip_and_match_the_specification(members) -> None:
    encoded = [rec.encode_member(f, b, rec.encode_properties({**p, "MQTT_TOPIC": big}), long=True)
               for f, b, p, big in members]
    for raw, (f, b, _p, _big) in zip(encoded, members, strict=True):
        parsed = rec.BATCH_MEMBER_LONG.parse(raw)
        assert (parsed.total_size, parsed.flag, parsed.body) == (len(raw), f, b)
    out = list(rec.iter_members(b"".join(encoded), long=True))
    assert [(m.flag, m.body, dict(m.properties)) for m in out] == \
        [(f, b, {**p, "MQTT_TOPIC": big}) for f, b, p, big in members]
    assert rec.count_members(b"".join(encoded), long=True) == len(members)
    assert list(rec.iter_members(b"".join(encoded), skip=len(members) - 1, long=True)) == out[-1:]


def test_a_record_for_a_rocketmq_client_fits_its_properties() -> None:
    """A RocketMQ client reads a 2-byte properties length: what does not fit is left
    out, whole, and named; the record is a plain RocketMQ 4.x record."""
    topic = "a/" + "b" * 65_533
    props = {"MQTT_TOPIC": topic, "MQTT_QOS": "1", "UNIQ_KEY": "ABC", "KEYS": "k1"}
    raw = rec.encode(**_fields(properties=rec.encode_properties(props)))
    assert rec.peek_size(raw, 0)[0] == len(raw)
    sys_flag = struct.unpack_from(">i", raw, rec.POS_SYS_FLAG)[0]
    assert not sys_flag & rec.FORMAT_LONG_PROPERTIES
    parsed = rec.RECORD.parse(raw)  # the 4.x layout, 16-bit length
    assert len(parsed.properties) <= rec.MAX_PROPERTIES_BYTES
    got = rec.decode(raw).properties
    assert dict(got) == {"MQTT_QOS": "1", "UNIQ_KEY": "ABC", "KEYS": "k1",
                         rec.OMITTED_PROPERTIES: "MQTT_TOPIC"}
    assert rec.decode(raw).body == b"hello"
    # Told that the reader understands the long form, the same call keeps everything.
    long = rec.encode(**_fields(properties=rec.encode_properties(props)), long_properties=True)
    assert rec.decode(long).properties == props


def test_fitting_leaves_out_the_longest_properties_first() -> None:
    raw = rec.encode_properties({"A": "a" * 20_000, "B": "b" * 20_000, "C": "c"})
    fitted = rec.decode_properties(rec.fit_properties(raw))
    assert fitted["C"] == "c" and len(rec.fit_properties(raw)) <= rec.MAX_PROPERTIES_BYTES
    assert sorted(fitted[rec.OMITTED_PROPERTIES].split(",")) in (["A"], ["B"])
    assert rec.fit_properties(b"X\x01y\x02") == b"X\x01y\x02", "what fits is left alone"
