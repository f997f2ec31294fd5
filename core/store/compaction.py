"""Log compaction of compacted topics on the shared CommitLog (docs/storage.md, "Compaction").

The CommitLog cannot be rewritten in place: its segments hold every topic's
records. So, as RocketMQ 5's CompactionStore does, each compacted queue gets a
*compacted log* of its own: a file of records (the CommitLog's record layout, so
every door reads them as it reads the CommitLog's) holding the latest record per
key of the queue's range ``[start, end)``. Offsets ``< end`` are served from it,
offsets ``>= end`` from the ConsumeQueue and the CommitLog as before; the queue's
ConsumeQueue entries below ``end`` are dropped, so the CommitLog segments that held
them are free for the broker's retention once no other topic needs them.

A pass (``compact``, in a worker thread):

1. The range: the old compacted log, then the queue's records up to the first
   record younger than ``min.compaction.lag.ms`` or not yet flushed (a power cut
   must not take back what compaction copied).
2. Pass one builds key digest -> offset of the key's latest record (16-byte
   BLAKE2b digests, never keys: memory is bounded by ``max_keys`` entries; a range
   with more distinct keys is compacted up to where the map filled, the rest next
   time, as Kafka's cleaner does with its dedupe buffer).
3. Pass two writes a new generation of the compacted log: a record is kept if it
   is its key's latest (offsets never change: a Kafka batch is rewritten with
   only the kept records, at their own offsets, so the batch has gaps), a
   tombstone (null value) only while younger than ``delete.retention.ms``;
   transactional and control batches, and records without a key, are kept as they
   are.
4. The switch is atomic: the new file is fsynced, then a small state file
   (generation, start, end) replaces the old one by rename; a crash before leaves
   the old generation in force, after it the new. Then the loop thread drops the
   ConsumeQueue entries below ``end``.

Consumers at any offset see a consistent view: below ``end`` the compacted records
(each at the offset it was written at), from ``end`` on everything.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from bisect import bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ...protocols import record as rec
from ...protocols.kafka import batch_header as kbh
from ...protocols.kafka import records as kr
from ..message import GetResult, GetStatus, StoredRecord
from .files import atomic_write

DEFAULT_MAX_KEYS = 1_000_000  # the digest map's bound (about 150 MB of Python objects)
_STATE = "state.json"
_READ_CHUNK = 1000  # records read from the queue per get while compacting


def _digest(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()


@dataclass(slots=True)
class _Index:
    bases: list[int]
    spans: list[int]  # offsets a record covers (a rewritten batch keeps its first..last)
    positions: list[int]
    sizes: list[int]


class CompactedLog:
    """One queue's compacted range ``[start, end)``: records back to back in
    ``<directory>/<generation>``, indexed in memory by first offset."""

    def __init__(self, directory: str, topic: str, queue_id: int) -> None:
        self.directory = directory
        self.topic = topic
        self.queue_id = queue_id
        self.generation = 0
        self.start = 0
        self.end = 0
        self.index = _Index([], [], [], [])
        self._fd: int | None = None

    @property
    def path(self) -> str:
        return os.path.join(self.directory, f"{self.generation:020d}")

    def load(self) -> bool:
        """Open the generation the state file names (False: none); delete others."""
        try:
            with open(os.path.join(self.directory, _STATE), "rb") as f:
                state = json.loads(f.read())
            self.generation, self.start, self.end = (int(state["generation"]),
                                                     int(state["start"]), int(state["end"]))
        except (FileNotFoundError, ValueError, KeyError):
            return False
        for name in os.listdir(self.directory):
            if name.isdigit() and int(name) != self.generation:
                os.unlink(os.path.join(self.directory, name))  # a pass that did not switch
        self._fd = os.open(self.path, os.O_RDONLY)
        data = os.pread(self._fd, os.fstat(self._fd).st_size, 0)
        pos = 0
        while pos < len(data):
            r = rec.decode(data, pos, check_crc=False)
            self.index.bases.append(r.queue_offset)
            self.index.spans.append(_span(r))
            self.index.positions.append(pos)
            self.index.sizes.append(r.total_size)
            pos += r.total_size
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def records(self) -> Iterator[rec.Record]:
        """Every record, in order (a worker thread's pass; pread on the open file)."""
        assert self._fd is not None or not self.index.bases
        for pos, size in zip(self.index.positions, self.index.sizes, strict=True):
            yield rec.decode(os.pread(self._fd, size, pos), 0, check_crc=False)  # type: ignore[arg-type]

    def get(self, offset: int, max_messages: int, max_bytes: int, max_offset: int) -> GetResult:
        """Records from the first covering ``offset`` or after it (gaps are skipped)."""
        ix = self.index
        i = max(0, bisect_right(ix.bases, offset) - 1)
        if i < len(ix.bases) and ix.bases[i] + ix.spans[i] <= offset:
            i += 1
        out: list[StoredRecord] = []
        n = size = 0
        while i < len(ix.bases) and (not out or (n < max_messages and size < max_bytes)):
            data = os.pread(self._fd, ix.sizes[i], ix.positions[i])  # type: ignore[arg-type]
            r = rec.decode(data, 0, check_crc=False)
            # The physical offset is where the record was first written (its message ids
            # keep naming it; the CommitLog may have let it go since).
            out.append(StoredRecord(self.topic, self.queue_id, r.queue_offset, ix.spans[i],
                                    r.physical_offset, r.sys_flag, r.store_timestamp, data))
            n += ix.spans[i]
            size += len(data)
            i += 1
        next_offset = (out[-1].queue_offset + out[-1].count) if out else self.end
        if i >= len(ix.bases):
            next_offset = self.end  # past the last kept record: the rest of the range is gaps
        status = GetStatus.FOUND if out else GetStatus.NO_MATCHED_MESSAGE
        return GetResult(status, tuple(out), next_offset, self.start, max_offset)


def _span(r: rec.Record) -> int:
    if r.sys_flag & rec.FORMAT_MASK == rec.FORMAT_KAFKA_BATCH:
        h = kbh.read_header(r.body)
        return h.last_offset_delta + 1
    if r.sys_flag & rec.FORMAT_MASK == rec.FORMAT_NATIVE_BATCH:
        return rec.count_members(r.body, bool(r.sys_flag & rec.FORMAT_LONG_PROPERTIES))
    return 1


@dataclass(frozen=True, slots=True)
class PassResult:
    log: CompactedLog | None  # the new generation (None: nothing to do)
    records_in: int
    records_out: int
    bytes_in: int
    bytes_out: int
    keys: int


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """A zig-zag varint of Kafka's record format (the scanner's own, for speed)."""
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos
        shift += 7
        if shift > 63:
            raise kr.RecordsError("varint too long")


def _scan(body: bytes) -> list[tuple[int, bytes | None, bool]] | None:
    """(offset, key, is tombstone) of each record of an uncompressed, non-transactional
    batch, reading only the fields compaction needs (about twice as fast as decoding
    the records); None for a batch it must not or cannot scan that way."""
    h = kbh.read_header(body)
    if h.attributes & (kr.COMPRESSION_MASK | kr.CONTROL_FLAG | kr.TRANSACTIONAL_FLAG):
        return None
    out = []
    pos, base, n = kbh.HEADER_SIZE, h.base_offset, len(body)
    try:
        for _ in range(h.records_count):
            length, pos = _varint(body, pos)
            end = pos + length
            p = pos + 1  # past the record's attributes (1 byte)
            while body[p] & 0x80:  # the timestamp delta: skipped
                p += 1
            b = body[p + 1]  # one-byte varints are the common case: inlined
            if b < 0x80:
                delta, p = (b >> 1) ^ -(b & 1), p + 2
            else:
                delta, p = _varint(body, p + 1)
            b = body[p]
            if b < 0x80:
                klen, p = (b >> 1) ^ -(b & 1), p + 1
            else:
                klen, p = _varint(body, p)
            key = body[p:p + klen] if klen >= 0 else None
            p += max(klen, 0)
            # A null value (tombstone) is the varint -1: the single byte 0x01.
            out.append((base + delta, key, body[p] == 1))
            pos = end
    except IndexError:
        raise kr.RecordsError("record overruns the batch") from None
    if pos != n:
        raise kr.RecordsError("record lengths do not add up to the batch")
    return out


def _keys(r: rec.Record) -> list[tuple[int, bytes | None, bool]]:
    """(offset, key, is tombstone) of each message of a record; key None: keyless.
    Transactional and control batches have none (they are kept as they are)."""
    fmt = r.sys_flag & rec.FORMAT_MASK & ~rec.FORMAT_LONG_PROPERTIES
    if fmt == rec.FORMAT_KAFKA_BATCH:
        body = bytes(r.body)
        scanned = _scan(body)
        if scanned is not None:
            return scanned
        b = kr.decode_batch(body, verify=False)
        if b.header.attributes & (kr.CONTROL_FLAG | kr.TRANSACTIONAL_FLAG):
            return []
        return [(x.offset, x.key, x.value is None) for x in b.records]
    if fmt == rec.FORMAT_SINGLE:
        keys = r.properties.get("KEYS")
        return [(r.queue_offset, keys.encode() if keys else None, False)]
    return []


def compact(old: CompactedLog | None, directory: str, topic: str, queue_id: int,
            start: int, end: int,
            read: Callable[[int, int], list[rec.Record]],
            now_ms: int, delete_retention_ms: int, max_keys: int = DEFAULT_MAX_KEYS
            ) -> PassResult:
    """One pass over the old compacted log and the queue's records ``[start, end)``
    (``read(offset, n)`` returns decoded records from ``offset`` on). Runs in a worker
    thread; writes and switches the next generation; returns it (not yet in use)."""
    def source(limit: int) -> Iterator[rec.Record]:
        if old is not None:
            yield from old.records()
        offset = start
        while offset < limit:
            batch = read(offset, _READ_CHUNK)
            if not batch:
                return
            for r in batch:
                if r.queue_offset >= limit:
                    return
                yield r
            last = batch[-1]
            offset = last.queue_offset + max(1, _span(last))

    latest: dict[bytes, int] = {}
    records_in = bytes_in = 0
    for r in source(end):
        for offset, key, _tomb in _keys(r):
            if key is None:
                continue
            d = _digest(key)
            if d not in latest and len(latest) >= max_keys:
                end = r.queue_offset  # the map is full: compact up to here
                break
            latest[d] = offset
        if r.queue_offset >= end:
            break
    first = old.start if old is not None else start
    if end <= (old.end if old is not None else start):
        return PassResult(None, 0, 0, 0, 0, len(latest))
    new = CompactedLog(directory, topic, queue_id)
    new.generation = (old.generation + 1) if old is not None else 1
    new.start, new.end = first, end
    os.makedirs(directory, exist_ok=True)
    cutoff = now_ms - delete_retention_ms
    out = bytearray()
    ix = new.index
    records_out = 0
    for r in source(end):
        records_in += 1
        bytes_in += r.total_size
        kept = _kept(r, latest, cutoff)
        if kept is None:
            continue
        records_out += 1
        ix.bases.append(kept.queue_offset)
        ix.spans.append(_span(kept))
        ix.positions.append(len(out))
        data = _encode(kept, topic)
        ix.sizes.append(len(data))
        out += data
    fd = os.open(new.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, out)
        os.fsync(fd)
    finally:
        os.close(fd)
    atomic_write(os.path.join(directory, _STATE), json.dumps(
        {"generation": new.generation, "start": new.start, "end": new.end}).encode())
    new._fd = os.open(new.path, os.O_RDONLY)
    return PassResult(new, records_in, records_out, bytes_in, len(out), len(latest))


def _kept(r: rec.Record, latest: dict[bytes, int], cutoff: int) -> rec.Record | None:
    """The record as compaction keeps it: whole, rewritten with fewer records, or None."""
    fmt = r.sys_flag & rec.FORMAT_MASK & ~rec.FORMAT_LONG_PROPERTIES
    if fmt == rec.FORMAT_KAFKA_BATCH:
        scanned = _scan(bytes(r.body))
        if scanned is not None:  # decide without decoding: all kept, or none
            kept = [key is None or (latest.get(_digest(key)) == offset
                                    and (not tomb or r.store_timestamp > cutoff))
                    for offset, key, tomb in scanned]
            if all(kept):
                return r
            if not any(kept):
                return None
        b = kr.decode_batch(r.body, verify=False)
        h = b.header
        if h.attributes & (kr.CONTROL_FLAG | kr.TRANSACTIONAL_FLAG):
            return r
        keep = [x for x in b.records
                if x.key is None or (latest.get(_digest(x.key)) == x.offset
                                     and (x.value is not None or r.store_timestamp > cutoff))]
        if len(keep) == len(b.records):
            return r
        if not keep:
            return None
        base = keep[0].offset
        attrs = h.attributes & ~kr.COMPRESSION_MASK
        body = kr.encode_batch(base, [(x.timestamp, x.key, x.value, x.headers) for x in keep],
                               producer_id=h.producer_id, producer_epoch=h.producer_epoch,
                               attributes=attrs, offset_deltas=[x.offset - base for x in keep])
        return rec.Record(0, 0, r.queue_id, r.flag, base, r.physical_offset, r.sys_flag,
                          r.born_timestamp, r.born_host, r.store_timestamp, r.store_host,
                          r.reconsume_times, r.prepared_transaction_offset, body, r.topic,
                          r.properties_raw)
    if fmt == rec.FORMAT_SINGLE:
        keys = r.properties.get("KEYS")
        if keys and latest.get(_digest(keys.encode())) != r.queue_offset:
            return None
    return r


def _encode(r: rec.Record, topic: str) -> bytes:
    return rec.encode(queue_id=r.queue_id, flag=r.flag, queue_offset=r.queue_offset,
                      physical_offset=r.physical_offset, sys_flag=r.sys_flag,
                      born_timestamp=r.born_timestamp, born_host=r.born_host[:8],
                      store_timestamp=r.store_timestamp, store_host=r.store_host[:8],
                      reconsume_times=r.reconsume_times,
                      prepared_transaction_offset=r.prepared_transaction_offset,
                      body=bytes(r.body), topic=topic.encode(), properties=r.properties_raw,
                      long_properties=bool(r.sys_flag & rec.FORMAT_LONG_PROPERTIES))


def remove(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)
