"""The fixed header of a Kafka RecordBatch (magic 2): the part of Kafka's formats the store reads.

Layout (big-endian; KIP-98, Kafka's DefaultRecordBatch)::

    baseOffset 8 | batchLength 4 | partitionLeaderEpoch 4 | magic 1 | crc 4 (CRC-32C of
    everything after it) | attributes 2 | lastOffsetDelta 4 | baseTimestamp 8 |
    maxTimestamp 8 | producerId 8 | producerEpoch 2 | baseSequence 4 | records count 4

``baseOffset`` and ``partitionLeaderEpoch`` lie outside the CRC, so the broker
may rewrite them (it assigns the base offset) without re-computing it.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from crc32c import crc32c

from ..errors import RemoteProtocolError

HEADER = struct.Struct(">qiibIhiqqqhii")
HEADER_SIZE = HEADER.size  # 61
MAGIC_V2 = 2
POS_BASE_OFFSET = 0
POS_LEADER_EPOCH = 12
POS_MAGIC = 16
POS_CRC = 17
POS_ATTRIBUTES = 21  # the CRC covers from here to the end
LENGTH_OVERHEAD = 12  # baseOffset + batchLength precede the counted bytes
POS_MAX_TIMESTAMP = 35
TIMESTAMP_TYPE_LOG_APPEND = 0x08  # attributes bit 3
_MAX_TS = struct.Struct(">q")


class BatchHeaderError(RemoteProtocolError, ValueError):
    """The bytes are not a well-formed RecordBatch header."""


class BatchHeader(NamedTuple):
    base_offset: int
    batch_length: int
    partition_leader_epoch: int
    magic: int
    crc: int
    attributes: int
    last_offset_delta: int
    base_timestamp: int
    max_timestamp: int
    producer_id: int
    producer_epoch: int
    base_sequence: int
    records_count: int

    @property
    def size(self) -> int:
        """The whole batch's size in bytes."""
        return self.batch_length + LENGTH_OVERHEAD


def read_header(batch: bytes | bytearray | memoryview, pos: int = 0) -> BatchHeader:
    """Parse and sanity-check the header at ``pos`` (not the CRC: see the Kafka codec)."""
    if len(batch) - pos < HEADER_SIZE:
        raise BatchHeaderError("truncated RecordBatch header")
    h = BatchHeader._make(HEADER.unpack_from(batch, pos))
    if h.magic != MAGIC_V2:
        raise BatchHeaderError(f"RecordBatch magic {h.magic}, expected 2")
    if h.batch_length < HEADER_SIZE - LENGTH_OVERHEAD or pos + h.size > len(batch):
        raise BatchHeaderError("RecordBatch length out of range")
    if h.records_count < 0 or h.last_offset_delta < 0:
        raise BatchHeaderError("negative record count or offset delta")
    return h


def with_base_offset(batch: bytes | bytearray | memoryview, base_offset: int) -> bytes:
    """The batch with its baseOffset (and partitionLeaderEpoch, zeroed) rewritten."""
    return b"".join(with_base_offset_parts(batch, base_offset))


def with_base_offset_parts(batch: bytes | bytearray | memoryview, base_offset: int
                           ) -> tuple[bytes, memoryview]:
    """``with_base_offset`` as (new first 16 bytes, a view of the rest): no copy of
    the records, for a writer that takes pieces (the store's vectored append)."""
    return (struct.pack(">qii", base_offset, len(batch) - LENGTH_OVERHEAD, 0),
            memoryview(batch)[16:])


def with_log_append_time(batch: bytes | bytearray | memoryview, timestamp_ms: int) -> bytearray:
    """The batch as a broker with ``message.timestamp.type=LogAppendTime`` stores it:
    the timestamp-type attribute bit set and maxTimestamp the append time (records
    keep their deltas; a consumer takes maxTimestamp for each), the CRC recomputed
    over the changed bytes. Raises BatchHeaderError for a malformed header."""
    h = read_header(batch)
    out = bytearray(memoryview(batch)[:h.size])
    struct.pack_into(">h", out, POS_ATTRIBUTES, h.attributes | TIMESTAMP_TYPE_LOG_APPEND)
    struct.pack_into(">q", out, POS_MAX_TIMESTAMP, timestamp_ms)
    struct.pack_into(">I", out, POS_CRC, crc32c(memoryview(out)[POS_ATTRIBUTES:]))
    return out


def max_timestamp(batch: bytes | bytearray | memoryview, pos: int = 0) -> int:
    """The batch's maxTimestamp (no checks: the store calls it on a checked batch)."""
    return int(_MAX_TS.unpack_from(batch, pos + POS_MAX_TIMESTAMP)[0])
