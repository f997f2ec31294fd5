"""The derived Kafka message codecs: exact bytes for known messages, round trips, tagged fields."""

from __future__ import annotations

import struct

import pytest
from ferrymq.protocols.kafka import schema
from ferrymq.protocols.kafka.schema import DecodeError, read_uvarint, write_uvarint
from hypothesis import given
from hypothesis import strategies as st

METADATA, API_VERSIONS, FETCH, PRODUCE, FIND_COORDINATOR = 3, 18, 1, 0, 10


def test_metadata_v0_request_is_the_classic_layout() -> None:
    R = schema.request_class(METADATA)
    body = schema.encode_bytes(METADATA, 0, R(topics=(R.MetadataRequestTopic(name="ab"),)),
                               response=False)
    assert body == struct.pack(">ih", 1, 2) + b"ab"
    assert schema.decode(METADATA, 0, body).topics[0].name == "ab"


def test_metadata_v1_null_topics_means_all() -> None:
    body = struct.pack(">i", -1)
    assert schema.decode(METADATA, 1, body).topics is None


def test_metadata_v0_rejects_null_topics() -> None:
    with pytest.raises(DecodeError):
        schema.decode(METADATA, 0, struct.pack(">i", -1))


def test_flexible_versions_use_compact_strings_and_tag_sections() -> None:
    R = schema.request_class(FIND_COORDINATOR)
    body = schema.encode_bytes(FIND_COORDINATOR, 3, R(key="g", key_type=0), response=False)
    # compact string "g" (length+1 = 2), int8 key type, empty tag section
    assert body == b"\x02g\x00\x00"


def test_tagged_fields_are_written_only_when_not_default() -> None:
    A = schema.response_class(API_VERSIONS)
    plain = schema.encode_bytes(API_VERSIONS, 3, A(error_code=0))
    assert plain.endswith(b"\x00")  # no tagged fields
    tagged = schema.encode_bytes(API_VERSIONS, 3, A(error_code=0, finalized_features_epoch=7))
    assert tagged.endswith(b"\x01\x01\x08" + struct.pack(">q", 7))
    assert schema.decode(API_VERSIONS, 3, tagged, response=True).finalized_features_epoch == 7


def test_unknown_tagged_fields_are_skipped() -> None:
    A = schema.response_class(API_VERSIONS)
    body = schema.encode_bytes(API_VERSIONS, 3, A(error_code=0))
    with_unknown = body[:-1] + b"\x01\x63\x02zz"  # tag 99, two bytes
    assert schema.decode(API_VERSIONS, 3, with_unknown, response=True).error_code == 0


@pytest.mark.parametrize("version", range(0, 12))
def test_fetch_request_round_trips_at_every_offered_version(version: int) -> None:
    R = schema.request_class(FETCH)
    req = R(replica_id=-1, max_wait_ms=500, min_bytes=1, max_bytes=1 << 20, topics=(
        R.FetchTopic(topic="t", partitions=(R.FetchPartition(partition=2, fetch_offset=42,
                                                             partition_max_bytes=9000),)),))
    raw = schema.encode_bytes(FETCH, version, req, response=False)
    back = schema.decode(FETCH, version, raw)
    assert back.topics[0].partitions[0].fetch_offset == 42
    assert back.topics[0].topic == "t"


def test_records_field_accepts_chunks_without_joining() -> None:
    R = schema.response_class(FETCH)
    resp = R(responses=(R.FetchableTopicResponse(topic="t", partitions=(
        R.PartitionData(partition_index=0, records=[b"abc", memoryview(b"de")]),)),))
    parts = schema.encode(FETCH, 4, resp)
    raw = b"".join(parts)
    assert bytes(schema.decode(FETCH, 4, raw, response=True)
                 .responses[0].partitions[0].records) == b"abcde"


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"\x00\x00\x00\x05", b"\xff" * 3,
                                     struct.pack(">i", 0x7FFFFFFF)])
def test_truncated_or_absurd_bodies_raise_decode_error(garbage: bytes) -> None:
    with pytest.raises(DecodeError):
        schema.decode(METADATA, 1, garbage)


def test_trailing_bytes_are_an_error() -> None:
    with pytest.raises(DecodeError):
        schema.decode(METADATA, 1, struct.pack(">i", 0) + b"x")


@given(st.integers(min_value=0, max_value=(1 << 32) - 1))
def test_uvarint_round_trips(n: int) -> None:
    raw = write_uvarint(n)
    assert read_uvarint(raw, 0) == (n, len(raw))


@given(st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=30)), max_size=5),
       st.integers(min_value=0, max_value=5))
def test_join_group_request_round_trips(protocols: list[tuple[str, bytes]], version: int
                                        ) -> None:
    R = schema.request_class(11)
    req = R(group_id="g", session_timeout_ms=10000, rebalance_timeout_ms=300000, member_id="m",
            protocol_type="consumer",
            protocols=tuple(R.JoinGroupRequestProtocol(name=n, metadata=m) for n, m in protocols))
    back = schema.decode(11, version, schema.encode_bytes(11, version, req, response=False))
    assert [(p.name, p.metadata) for p in back.protocols] == protocols
