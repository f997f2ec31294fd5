"""Kafka record formats: RecordBatch v2 and MessageSet v0/v1, their compression and checksums.

Layouts (Kafka's "Record Format" documentation; KIP-98 for v2, KIP-32 for v1):

- RecordBatch (magic 2): the 61-byte header of ``batch_header`` then records,
  compressed together when the attributes say so. A record is
  ``length varint | attributes int8 | timestampDelta varlong | offsetDelta varint |
  keyLength varint | key | valueLength varint | value | headers count varint |
  (headerKeyLength varint | headerKey | headerValueLength varint | value)*``,
  varints zig-zag encoded. The CRC is CRC-32C of everything after the crc field.
- MessageSet (magic 0 and 1): ``offset int64 | size int32 | crc uint32 (CRC-32 of
  the rest) | magic int8 | attributes int8 | [timestamp int64, magic 1] | key
  bytes | value bytes``. A compressed message wraps a whole inner message set
  in its value.

Compression codecs (attribute bits 0-2): 1 gzip, 2 snappy (raw, or the xerial
framing Java clients write), 3 lz4 (frame format), 4 zstd. cramjam (Rust) does
the work; crc32c (C) the checksums. Decompression never makes more than
``MAX_DECOMPRESSED`` bytes, whatever a frame claims: zstd packs a gigabyte of
zeros into 33 KB, and inflating first and measuring after let one produce
request take the broker's memory (see ``decompress``). Everything here is pure: bytes in, bytes
or values out. ``RecordsError`` says the bytes are not valid records;
``CorruptRecords`` (a subclass) that a checksum failed.
"""

from __future__ import annotations

import mmap
import re
import struct
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import cramjam
from crc32c import crc32c

from ..errors import LocalProtocolError, RemoteProtocolError
from . import batch_header as bh

NO_COMPRESSION, GZIP, SNAPPY, LZ4, ZSTD = 0, 1, 2, 3, 4
CODEC_NAMES = {NO_COMPRESSION: "none", GZIP: "gzip", SNAPPY: "snappy", LZ4: "lz4", ZSTD: "zstd"}
COMPRESSION_MASK = 0x07
TIMESTAMP_TYPE_MASK = 0x08  # LogAppendTime when set
TRANSACTIONAL_FLAG = 0x10
CONTROL_FLAG = 0x20
NO_PRODUCER_ID = -1
NO_SEQUENCE = -1
MAGIC_V0, MAGIC_V1, MAGIC_V2 = 0, 1, 2
POS_MAGIC = 16  # the magic byte sits here in every format (v0/v1: offset 8 + size 4 + crc 4)
XERIAL_MAGIC = b"\x82SNAPPY\x00"  # xerial snappy-java stream header
MAX_DECOMPRESSED = 64 << 20  # refuse to inflate one batch beyond this (memory bound)

_LEGACY_HEAD = struct.Struct(">qiIbb")  # offset, size, crc, magic, attributes
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


class RecordsError(RemoteProtocolError, ValueError):
    """The bytes are not valid Kafka records."""


class CorruptRecords(RecordsError):
    """A batch or message failed its CRC (Kafka's CORRUPT_MESSAGE)."""


# ------------------------------------------------------------------ compression


def compress(codec: int, data: bytes) -> bytes:
    if codec == GZIP:
        return bytes(cramjam.gzip.compress(data))
    if codec == SNAPPY:
        return bytes(cramjam.snappy.compress_raw(data))
    if codec == LZ4:
        return bytes(cramjam.lz4.compress(data))
    if codec == ZSTD:
        return bytes(cramjam.zstd.compress(data))
    if codec == NO_COMPRESSION:
        return data
    raise RecordsError(f"unknown compression codec {codec}")


def _snappy_raw(data: bytes | memoryview) -> bytes:
    """A raw snappy block, refused before inflating when it says it is too large (its
    preamble states the uncompressed length)."""
    if cramjam.snappy.decompress_raw_len(data) > MAX_DECOMPRESSED:
        raise RecordsError("decompressed batch too large")
    return bytes(cramjam.snappy.decompress_raw(data))


def _xerial_decompress(data: bytes) -> bytes:
    """snappy-java's stream: 8-byte magic, two int32 versions, then (int32 size, raw
    snappy block) chunks."""
    pos = 16
    out = []
    total = 0
    while pos < len(data):
        if pos + 4 > len(data):
            raise RecordsError("truncated xerial snappy chunk")
        (n,) = _I32.unpack_from(data, pos)
        pos += 4
        if n < 0 or pos + n > len(data):
            raise RecordsError("xerial snappy chunk size out of range")
        chunk = _snappy_raw(data[pos:pos + n])
        total += len(chunk)
        if total > MAX_DECOMPRESSED:
            raise RecordsError("decompressed batch too large")
        out.append(chunk)
        pos += n
    return b"".join(out)


# Scratch buffers not in use. A caller takes one (list.pop and append are atomic), so
# callers on several threads never share one, without this pure module knowing threads:
# there are as many as calls ever ran at once.
_free_scratch: list[mmap.mmap] = []
_RELEASE_ABOVE = 1 << 20  # pages a larger output touched go back to the system after it


def _bounded(decompress_into: object, data: bytes) -> bytes:
    """Stream-decompress into a buffer of MAX_DECOMPRESSED + 1 bytes: a larger output
    fails as it passes the end, not after it was made. The buffer is anonymous memory,
    reused: pages cost memory only once written, and a large output's pages are
    handed back right after (madvise)."""
    try:
        buf = _free_scratch.pop()
    except IndexError:
        buf = mmap.mmap(-1, MAX_DECOMPRESSED + 1)
    try:
        try:
            n = decompress_into(data, buf)  # type: ignore[operator]
        except cramjam.DecompressionError as exc:
            if "whole buffer" in str(exc):  # cramjam: the output did not fit
                buf.madvise(mmap.MADV_DONTNEED)
                raise RecordsError("decompressed batch too large") from None
            raise
        if n > MAX_DECOMPRESSED:
            buf.madvise(mmap.MADV_DONTNEED)
            raise RecordsError("decompressed batch too large")
        out = buf[:n]
        if n > _RELEASE_ABOVE:
            buf.madvise(mmap.MADV_DONTNEED, 0, n - n % mmap.PAGESIZE)
        return out
    finally:
        _free_scratch.append(buf)


def decompress(codec: int, data: bytes | memoryview) -> bytes:
    """Inflate one batch's records. Raises RecordsError on garbage or an unknown codec."""
    data = bytes(data)
    try:
        if codec == GZIP:
            d = zlib.decompressobj(wbits=31)
            out = d.decompress(data, MAX_DECOMPRESSED + 1)
            if len(out) > MAX_DECOMPRESSED:
                raise RecordsError("decompressed batch too large")
            return out
        if codec == SNAPPY:
            if data.startswith(XERIAL_MAGIC):
                return _xerial_decompress(data)
            out = _snappy_raw(data)
        elif codec == LZ4:
            out = _bounded(cramjam.lz4.decompress_into, data)
        elif codec == ZSTD:
            out = _bounded(cramjam.zstd.decompress_into, data)
        else:
            raise RecordsError(f"unknown compression codec {codec}")
    except (cramjam.DecompressionError, zlib.error) as exc:
        raise RecordsError(f"cannot decompress {CODEC_NAMES.get(codec)}: {exc}") from exc
    if len(out) > MAX_DECOMPRESSED:
        raise RecordsError("decompressed batch too large")
    return out


# ------------------------------------------------------------------ varints


def _read_varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """A zig-zag varint (up to 64 bits)."""
    result = shift = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise RecordsError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise RecordsError("varint too long")


def _varint(n: int) -> bytes:
    z = (n << 1) ^ (n >> 63)
    if 0 <= z < 0x80:
        return bytes((z,))
    z &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while z >= 0x80:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


# ------------------------------------------------------------------ records v2


@dataclass(frozen=True, slots=True)
class Record:
    """One record with absolute offset and timestamp."""

    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...] = ()


@dataclass(frozen=True, slots=True)
class Batch:
    """A decoded RecordBatch (or an up-converted legacy message set)."""

    header: bh.BatchHeader
    records: tuple[Record, ...]

    @property
    def compression(self) -> int:
        return self.header.attributes & COMPRESSION_MASK

    @property
    def is_control(self) -> bool:
        return bool(self.header.attributes & CONTROL_FLAG)


def check_crc(batch: bytes | memoryview, pos: int = 0, size: int | None = None) -> None:
    """Raise CorruptRecords unless the v2 batch at ``pos`` has a correct CRC-32C."""
    h = bh.read_header(batch, pos)
    end = pos + h.size if size is None else pos + size
    if crc32c(batch[pos + bh.POS_ATTRIBUTES:end]) != h.crc:
        raise CorruptRecords("RecordBatch CRC mismatch")


def _bytes_field(buf: bytes | memoryview, pos: int) -> tuple[bytes | None, int]:
    n, pos = _read_varint(buf, pos)
    if n < 0:
        return None, pos
    end = pos + n
    if end > len(buf):
        raise RecordsError("record field overruns the batch")
    return bytes(buf[pos:end]), end


def _decode_records(raw: bytes | memoryview, h: bh.BatchHeader) -> tuple[Record, ...]:
    out = []
    pos = 0
    base_off, base_ts = h.base_offset, h.base_timestamp
    log_append = h.attributes & TIMESTAMP_TYPE_MASK
    for _ in range(h.records_count):
        length, pos = _read_varint(raw, pos)
        end = pos + length
        if length < 0 or end > len(raw):
            raise RecordsError("record length overruns the batch")
        pos += 1  # record attributes: unused
        ts_delta, pos = _read_varint(raw, pos)
        off_delta, pos = _read_varint(raw, pos)
        key, pos = _bytes_field(raw, pos)
        value, pos = _bytes_field(raw, pos)
        nh, pos = _read_varint(raw, pos)
        if nh < 0 or nh > end - pos:
            raise RecordsError("bad header count")
        headers = []
        for _h in range(nh):
            hk, pos = _bytes_field(raw, pos)
            hv, pos = _bytes_field(raw, pos)
            if hk is None:
                raise RecordsError("null header key")
            headers.append((hk.decode("utf-8", "replace"), hv))
        if pos != end:
            raise RecordsError("record length does not match its fields")
        ts = h.max_timestamp if log_append else base_ts + ts_delta
        out.append(Record(base_off + off_delta, ts, key, value, tuple(headers)))
    if pos != len(raw):
        raise RecordsError("bytes after the last record")
    return tuple(out)


def decode_batch(batch: bytes | memoryview, pos: int = 0, *, verify: bool = True) -> Batch:
    """Decode the v2 batch at ``pos`` (decompressing its records)."""
    try:
        h = bh.read_header(batch, pos)
    except bh.BatchHeaderError as exc:
        raise RecordsError(str(exc)) from exc
    if verify:
        check_crc(batch, pos)
    raw: bytes | memoryview = batch[pos + bh.HEADER_SIZE:pos + h.size]
    codec = h.attributes & COMPRESSION_MASK
    if codec:
        raw = decompress(codec, raw)
    if h.attributes & CONTROL_FLAG:
        return Batch(h, ())  # transaction markers: no user records
    return Batch(h, _decode_records(raw, h))


def _encode_record(offset_delta: int, ts_delta: int, key: bytes | None, value: bytes | None,
                   headers: Iterable[tuple[str, bytes | None]]) -> bytes:
    parts = [b"\x00", _varint(ts_delta), _varint(offset_delta)]
    for field in (key, value):
        if field is None:
            parts.append(b"\x01")  # zig-zag(-1)
        else:
            parts.append(_varint(len(field)))
            parts.append(field)
    hs = list(headers)
    parts.append(_varint(len(hs)))
    for hk, hv in hs:
        kb = hk.encode()
        parts.append(_varint(len(kb)))
        parts.append(kb)
        if hv is None:
            parts.append(b"\x01")
        else:
            parts.append(_varint(len(hv)))
            parts.append(hv)
    body = b"".join(parts)
    return _varint(len(body)) + body


def encode_batch(base_offset: int, records: Sequence[tuple[int, bytes | None, bytes | None,
                                                        Iterable[tuple[str, bytes | None]]]],
                 *, compression: int = NO_COMPRESSION, producer_id: int = NO_PRODUCER_ID,
                 producer_epoch: int = -1, base_sequence: int = NO_SEQUENCE,
                 attributes: int = 0, offset_deltas: Sequence[int] | None = None) -> bytes:
    """A RecordBatch of ``(timestamp, key, value, headers)`` records at consecutive
    offsets from ``base_offset`` (or at ``offset_deltas``)."""
    if not records:
        raise LocalProtocolError("a RecordBatch needs at least one record")
    base_ts = min(r[0] for r in records)
    max_ts = max(r[0] for r in records)
    deltas = offset_deltas if offset_deltas is not None else range(len(records))
    body = b"".join(_encode_record(d, ts - base_ts, k, v, hs)
                    for d, (ts, k, v, hs) in zip(deltas, records, strict=True))
    if compression:
        body = compress(compression, body)
    attrs = (attributes & ~COMPRESSION_MASK) | compression
    tail = struct.pack(">hiqqqhii", attrs, deltas[-1], base_ts, max_ts, producer_id,
                       producer_epoch, base_sequence, len(records)) + body
    crc = crc32c(tail)
    length = 4 + 1 + 4 + len(tail)  # leader epoch, magic, crc, rest
    return struct.pack(">qiibI", base_offset, length, 0, MAGIC_V2, crc) + tail


# ------------------------------------------------------------------ MessageSet v0/v1


@dataclass(frozen=True, slots=True)
class LegacyMessage:
    offset: int
    magic: int
    attributes: int
    timestamp: int  # -1 for magic 0
    key: bytes | None
    value: bytes | None


def _legacy_bytes(buf: bytes | memoryview, pos: int, end: int) -> tuple[bytes | None, int]:
    if pos + 4 > end:
        raise RecordsError("truncated message")
    (n,) = _I32.unpack_from(buf, pos)
    pos += 4
    if n < 0:
        return None, pos
    if pos + n > end:
        raise RecordsError("message field overruns the message")
    return bytes(buf[pos:pos + n]), pos + n


def decode_message_set(buf: bytes | memoryview, *, verify: bool = True,
                       depth: int = 0) -> list[LegacyMessage]:
    """The messages of a v0/v1 message set, compressed wrappers unpacked (one level,
    as Kafka allows). A partial message at the end (a fetch cut mid-message) is
    ignored, as consumers do."""
    out: list[LegacyMessage] = []
    pos = 0
    n = len(buf)
    while pos + 12 <= n:
        offset, size = struct.unpack_from(">qi", buf, pos)
        if size < 14:
            raise RecordsError("message size out of range")
        end = pos + 12 + size
        if end > n:
            break
        _o, _s, crc, magic, attrs = _LEGACY_HEAD.unpack_from(buf, pos)
        if magic not in (MAGIC_V0, MAGIC_V1):
            raise RecordsError(f"message magic {magic} in a message set")
        if verify and zlib.crc32(buf[pos + 16:end]) != crc:
            raise CorruptRecords("message CRC mismatch")
        p = pos + 18
        ts = -1
        if magic == MAGIC_V1:
            if p + 8 > end:
                raise RecordsError("truncated message")
            (ts,) = _I64.unpack_from(buf, p)
            p += 8
        key, p = _legacy_bytes(buf, p, end)
        value, p = _legacy_bytes(buf, p, end)
        if p != end:
            raise RecordsError("message size does not match its fields")
        codec = attrs & COMPRESSION_MASK
        if codec:
            if depth or value is None:
                raise RecordsError("nested or empty compressed message")
            inner = decode_message_set(decompress(codec, value), verify=verify, depth=1)
            out.extend(inner)
        else:
            out.append(LegacyMessage(offset, magic, attrs, ts, key, value))
        pos = end
    if depth == 0 and pos != n and not out:
        raise RecordsError("truncated message set")
    return out


def encode_message(offset: int, magic: int, timestamp: int, key: bytes | None,
                   value: bytes | None, attributes: int = 0) -> bytes:
    parts = [struct.pack(">bb", magic, attributes)]
    if magic == MAGIC_V1:
        parts.append(_I64.pack(timestamp))
    for field in (key, value):
        if field is None:
            parts.append(_I32.pack(-1))
        else:
            parts.append(_I32.pack(len(field)))
            parts.append(field)
    body = b"".join(parts)
    crc = zlib.crc32(body)
    return struct.pack(">qiI", offset, len(body) + 4, crc) + body


# ------------------------------------------------------------------ framing & conversion


def magic_of(buf: bytes | memoryview, pos: int = 0) -> int:
    if len(buf) - pos <= POS_MAGIC:
        raise RecordsError("records too short")
    return buf[pos + POS_MAGIC]


def split_batches(buf: bytes | memoryview) -> list[tuple[int, int]]:
    """(start, end) of each v2 batch in a produce request's records. Raises
    RecordsError for anything but a whole number of well-formed v2 batches."""
    out = []
    pos = 0
    n = len(buf)
    while pos < n:
        if n - pos < bh.HEADER_SIZE:
            raise RecordsError("truncated RecordBatch")
        try:
            h = bh.read_header(buf, pos)
        except bh.BatchHeaderError as exc:
            raise RecordsError(str(exc)) from exc
        out.append((pos, pos + h.size))
        pos += h.size
    return out


def upconvert(message_set: bytes | memoryview, *, now_ms: int) -> bytes:
    """A produced v0/v1 message set as one v2 RecordBatch (base offset 0): the
    store keeps one format. Magic 0 messages get ``now_ms`` as their timestamp."""
    msgs = decode_message_set(message_set)
    if not msgs:
        raise RecordsError("empty message set")
    return encode_batch(0, [(m.timestamp if m.timestamp >= 0 else now_ms, m.key, m.value, ())
                            for m in msgs])


def downconvert(records: Iterable[Record], magic: int) -> bytes:
    """Records as an uncompressed v0/v1 message set (Fetch v0-v3); headers are lost."""
    return b"".join(encode_message(r.offset, magic, r.timestamp, r.key, r.value)
                    for r in records)


def batch_mentions(batch: bytes | memoryview, pattern: re.Pattern[bytes]) -> bool:
    """Whether the records of the v2 batch ``batch`` contain bytes matching ``pattern``
    (a header name, say): a search of the records as stored (no copy: ``re`` reads a
    memoryview in place), or of the decompressed records when the batch is compressed.
    A cheap filter: False means no record has such a header; True means decode and
    look. Raises RecordsError for a batch that does not decompress."""
    h = bh.read_header(batch)
    codec = h.attributes & COMPRESSION_MASK
    if not codec:
        return pattern.search(batch, bh.HEADER_SIZE, h.size) is not None
    return pattern.search(decompress(codec, batch[bh.HEADER_SIZE:h.size])) is not None


def iter_records(batch: bytes | memoryview) -> Iterator[Record]:
    """Every user record in a run of v2 batches (CRC not re-checked)."""
    for start, end in split_batches(batch):
        yield from decode_batch(batch[start:end], verify=False).records


# ------------------------------------------------------------------ control batches

CONTROL_ABORT, CONTROL_COMMIT = 0, 1  # a control record's type (KIP-98's EndTransactionMarker)


def encode_control_batch(producer_id: int, producer_epoch: int, commit: bool, timestamp: int,
                         coordinator_epoch: int = 0) -> bytes:
    """A transaction marker: a batch with the transactional and control attributes and
    one record whose key is (version 0: int16, type: int16) and value (version 0,
    coordinator epoch: int32), as Kafka's coordinator writes it at a transaction's end."""
    key = struct.pack(">hh", 0, CONTROL_COMMIT if commit else CONTROL_ABORT)
    value = struct.pack(">hi", 0, coordinator_epoch)
    return encode_batch(0, [(timestamp, key, value, [])], producer_id=producer_id,
                        producer_epoch=producer_epoch,
                        attributes=TRANSACTIONAL_FLAG | CONTROL_FLAG)


def control_type(batch: bytes | memoryview) -> int | None:
    """CONTROL_COMMIT or CONTROL_ABORT for a transaction marker, None for a batch of
    user records. Raises RecordsError for a control batch that does not decode."""
    try:
        h = bh.read_header(batch)
    except bh.BatchHeaderError as exc:
        raise RecordsError(str(exc)) from exc
    if not h.attributes & CONTROL_FLAG:
        return None
    raw: bytes | memoryview = batch[bh.HEADER_SIZE:h.size]
    if h.attributes & COMPRESSION_MASK:
        raw = decompress(h.attributes & COMPRESSION_MASK, raw)
    records = _decode_records(raw, h)
    if len(records) != 1 or records[0].key is None or len(records[0].key) < 4:
        raise RecordsError("a control batch holds one record with a 4-byte key")
    return int(struct.unpack_from(">h", records[0].key, 2)[0])
