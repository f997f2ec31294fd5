"""Kafka record formats: RecordBatch v2, MessageSet v0/v1, compression, CRCs, conversions."""

from __future__ import annotations

import gzip
import struct
import zlib

import pytest
from crc32c import crc32c
from ferrymq.protocols.kafka import batch_header as bh
from ferrymq.protocols.kafka import records as kr
from hypothesis import given
from hypothesis import strategies as st

ROWS = [(1_700_000_000_000, b"k1", b"v1", [("h", b"x")]),
        (1_700_000_000_005, None, b"v2", []),
        (1_700_000_000_003, b"k3", None, [("a", None), ("b", b"\xff")])]


@pytest.mark.parametrize("codec", [kr.NO_COMPRESSION, kr.GZIP, kr.SNAPPY, kr.LZ4, kr.ZSTD])
def test_batch_round_trips_with_every_codec(codec: int) -> None:
    raw = kr.encode_batch(10, ROWS, compression=codec)
    batch = kr.decode_batch(raw)
    assert batch.compression == codec
    assert [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in batch.records] == [
        (10 + i, ts, k, v, hs) for i, (ts, k, v, hs) in enumerate(ROWS)]
    h = bh.read_header(raw)
    assert (h.records_count, h.last_offset_delta) == (3, 2)
    assert h.max_timestamp == 1_700_000_000_005


def test_batch_header_layout_matches_the_spec() -> None:
    raw = kr.encode_batch(7, ROWS[:1], producer_id=42, producer_epoch=3, base_sequence=9)
    base, length, epoch, magic, crc = struct.unpack_from(">qiibI", raw)
    assert (base, length, epoch, magic) == (7, len(raw) - 12, 0, 2)
    assert crc == crc32c(raw[21:]), "CRC-32C covers attributes to the end"
    h = bh.read_header(raw)
    assert (h.producer_id, h.producer_epoch, h.base_sequence) == (42, 3, 9)


def test_a_flipped_byte_fails_the_crc() -> None:
    raw = bytearray(kr.encode_batch(0, ROWS))
    raw[-1] ^= 0xFF
    with pytest.raises(kr.CorruptRecords):
        kr.check_crc(bytes(raw))


def test_base_offset_rewrite_keeps_the_crc_valid() -> None:
    raw = kr.encode_batch(0, ROWS)
    moved = bh.with_base_offset(raw, 1234)
    kr.check_crc(moved)
    assert kr.decode_batch(moved).records[0].offset == 1234


def test_xerial_framed_snappy_is_accepted() -> None:
    import cramjam
    inner = b"hello " * 50
    block = bytes(cramjam.snappy.compress_raw(inner))
    framed = kr.XERIAL_MAGIC + struct.pack(">ii", 1, 1) + struct.pack(">i", len(block)) + block
    assert kr.decompress(kr.SNAPPY, framed) == inner


def test_gzip_bomb_is_refused() -> None:
    bomb = gzip.compress(bytes(kr.MAX_DECOMPRESSED + 10))
    with pytest.raises(kr.RecordsError):
        kr.decompress(kr.GZIP, bomb)


def test_garbage_compressed_payload_is_a_records_error() -> None:
    for codec in (kr.GZIP, kr.SNAPPY, kr.LZ4, kr.ZSTD):
        with pytest.raises(kr.RecordsError):
            kr.decompress(codec, b"definitely not compressed")


def _legacy(offset: int, magic: int, key: bytes | None, value: bytes | None,
            attrs: int = 0, ts: int = 1000) -> bytes:
    return kr.encode_message(offset, magic, ts, key, value, attrs)


def test_message_set_v0_and_v1_decode() -> None:
    ms = _legacy(0, 0, b"k", b"v0") + _legacy(1, 1, None, b"v1", ts=77)
    msgs = kr.decode_message_set(ms)
    assert [(m.magic, m.key, m.value, m.timestamp) for m in msgs] == [
        (0, b"k", b"v0", -1), (1, None, b"v1", 77)]


def test_compressed_wrapper_message_is_unpacked() -> None:
    inner = _legacy(0, 1, b"a", b"1") + _legacy(1, 1, b"b", b"2")
    wrapper = _legacy(1, 1, None, gzip.compress(inner), attrs=kr.GZIP)
    assert [m.value for m in kr.decode_message_set(wrapper)] == [b"1", b"2"]


def test_legacy_crc_is_checked() -> None:
    msg = bytearray(_legacy(0, 1, b"k", b"v"))
    msg[-1] ^= 1
    with pytest.raises(kr.CorruptRecords):
        kr.decode_message_set(bytes(msg))
    assert zlib.crc32(b"") == 0  # (the legacy CRC is plain CRC-32)


def test_upconvert_makes_one_v2_batch() -> None:
    ms = _legacy(0, 0, b"k", b"v0") + _legacy(1, 1, None, b"v1", ts=77)
    batch = kr.decode_batch(kr.upconvert(ms, now_ms=5000))
    assert [(r.offset, r.timestamp, r.key, r.value) for r in batch.records] == [
        (0, 5000, b"k", b"v0"), (1, 77, None, b"v1")]


def test_downconvert_to_v1_and_v0() -> None:
    recs = kr.decode_batch(kr.encode_batch(5, ROWS)).records
    for magic in (0, 1):
        msgs = kr.decode_message_set(kr.downconvert(recs, magic))
        assert [(m.offset, m.key, m.value) for m in msgs] == [(r.offset, r.key, r.value)
                                                              for r in recs]
        assert all(m.magic == magic for m in msgs)


def test_split_batches_refuses_a_truncated_tail() -> None:
    raw = kr.encode_batch(0, ROWS)
    assert kr.split_batches(raw + raw) == [(0, len(raw)), (len(raw), 2 * len(raw))]
    with pytest.raises(kr.RecordsError):
        kr.split_batches(raw + raw[:30])


@given(st.lists(st.tuples(st.integers(0, 1 << 41), st.one_of(st.none(), st.binary(max_size=40)),
                          st.one_of(st.none(), st.binary(max_size=200)),
                          st.lists(st.tuples(st.text(max_size=8),
                                             st.one_of(st.none(), st.binary(max_size=8))),
                                   max_size=3)),
                min_size=1, max_size=20))
def test_any_records_round_trip(rows: list) -> None:
    batch = kr.decode_batch(kr.encode_batch(0, rows))
    assert [(r.timestamp, r.key, r.value, list(r.headers)) for r in batch.records] == [
        (ts, k, v, hs) for ts, k, v, hs in rows]
