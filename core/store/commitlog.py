"""The CommitLog: every message of every topic, appended to fixed-size segment files.

Segments are named by the physical offset of their first byte (20 digits) and
preallocated to their full size (``posix_fallocate``, so a full disk fails the
roll with DiskFull instead of a SIGBUS on a later page fault), then memory-mapped:
an append is a memcpy into the page cache, a read is a slice. A record never
spans two segments: when one does not fit, a blank record (``size | BLANK_MAGIC``)
fills the segment's end and the record starts the next segment. Physical
offsets therefore run continuously over segments, blank space included.

Threads: appends, rolls, truncation and deletion happen on the broker's one
event-loop thread. ``flush`` (fdatasync, which releases the GIL) and ``pread``
run in worker threads; they work on snapshots (the segment table is replaced,
never mutated) and pin the segment they use in the file cache (filecache.py),
so a segment deleted or evicted meanwhile is closed only once they let go.
"""

from __future__ import annotations

import bisect
import errno
import mmap
import os
import struct
import threading
from collections.abc import Iterator
from typing import NamedTuple

from ...protocols import record as rec
from ..errors import DiskFull, StoreError
from .filecache import CachedFile, FileCache, default_budget, map_file

_NAME_DIGITS = 20
_ZERO_CHUNK = 1 << 20
_PWRITE_MIN = 4096
_MAGIC_BYTES = struct.pack(">i", rec.MAGIC)
_SIZE_MAGIC = struct.Struct(">ii")
_I64 = struct.Struct(">q")
# A record's fixed fields, as the walks check them: total size, magic, queue id,
# queue offset, physical offset, system flags, ..., body length (IPv4 hosts).
_FIXED = struct.Struct(">ii4xi4xqqi44xi")
_I32_S = struct.Struct(">i")
_U16_S = struct.Struct(">H")


class Damage(NamedTuple):
    """Bytes ``[start, end)`` of the CommitLog that hold no valid record (``CommitLog.walk``);
    ``end`` is the offset of the next valid record, None when none follows."""

    start: int
    end: int | None


class Head(NamedTuple):
    """A record's fixed fields, checked for consistency but not its CRC (``walk(full=False)``)."""

    total_size: int
    physical_offset: int
    queue_id: int
    queue_offset: int
    topic: bytes


def plausible(reconsume_times: int, prepared_offset: int, pos: int) -> bool:
    """Fields the body CRC does not cover, checked for what they can be: a count, and the
    offset of an earlier record (a transaction's half) or 0."""
    return reconsume_times >= 0 and (prepared_offset == 0 or 0 <= prepared_offset < pos)


def _check_at(mm: mmap.mmap, local: int, pos: int, full: bool) -> rec.Record | Head | None:
    """The record at ``local`` of a segment mapping if it is a valid one whose stored
    physical offset is ``pos``: decoded with its CRC checked (``full``), or its fixed
    fields and sizes checked (a Head); None if the bytes there are not such a record.
    Stale bytes from an earlier life of a file never pass: they carry another offset."""
    avail = len(mm) - local
    if avail < rec.HEADER_SIZE:
        return None
    total, magic, qid, qoff, phys, sys_flag, body_len = _FIXED.unpack_from(mm, local)
    if magic != rec.MAGIC or phys != pos or not rec.HEADER_SIZE + 3 <= total <= avail:
        return None
    if full or sys_flag & (rec.BORNHOST_V6_FLAG | rec.STOREHOST_V6_FLAG):
        try:
            r = rec.decode(mm, local)
        except rec.RecordError:
            return None
        if r.physical_offset != pos or not plausible(r.reconsume_times,
                                                      r.prepared_transaction_offset, pos):
            return None
        if full:
            return r
        return Head(total, pos, r.queue_id, r.queue_offset, r.topic.encode())
    p = local + rec.HEADER_SIZE + body_len
    if body_len < 0 or p + 3 > local + total:
        return None
    tlen = mm[p]
    plen_size = 4 if sys_flag & rec.FORMAT_LONG_PROPERTIES else 2
    q = p + 1 + tlen
    if q + plen_size > local + total:
        return None
    plen = (_I32_S.unpack_from(mm, q)[0] if plen_size == 4 else _U16_S.unpack_from(mm, q)[0])
    if q + plen_size + plen != local + total:
        return None
    return Head(total, pos, qid, qoff, mm[p + 1:q])


def segment_name(base: int) -> str:
    return f"{base:0{_NAME_DIGITS}d}"


class Segment(CachedFile):
    """One preallocated CommitLog file: mapped, with its descriptor (appends of large
    records use pwrite, flushes fdatasync, worker reads pread), while the file cache
    holds it open."""

    __slots__ = ("base",)

    KIND = "commitlog"
    KEEPS_FD = True

    def __init__(self, path: str, base: int, size: int) -> None:
        super().__init__(path, size)
        self.base = base

    @property
    def end(self) -> int:
        return self.base + self.size


def _create_segment(path: str, size: int) -> tuple[int, mmap.mmap]:
    """Create, preallocate and map a new segment file: (descriptor, mapping)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFull(f"cannot preallocate {size} bytes for {path}") from exc
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
                raise
            os.ftruncate(fd, size)  # filesystem without fallocate
        return fd, map_file(fd, size)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise


class CommitLog:
    """The segments of one store directory. Not thread-safe except as documented.

    Segments are opened through the store's file cache: the active one (appends go
    there) stays pinned open; older ones are open while read and closed when the
    cache needs room."""

    def __init__(self, directory: str, segment_size: int, files: FileCache | None = None) -> None:
        if segment_size < 4096:
            raise ValueError("segment size must be at least 4096 bytes")
        self.directory = directory
        self.segment_size = segment_size
        self.files = files if files is not None else FileCache(default_budget())
        # (segments, their bases) replaced together, so a worker thread reading it
        # once sees a consistent pair.
        self._table: tuple[tuple[Segment, ...], list[int]] = ((), [])
        self.write_pos = 0  # physical offset of the next byte to append
        self.flushed_pos = 0  # everything below is on disk (fdatasync returned)
        self._flush_lock = threading.Lock()
        self._tail: Segment | None = None
        self._read_seg: Segment | None = None
        self.skipped: str | None = None  # a segment ``open(readonly=True)`` left out

    @property
    def segments(self) -> tuple[Segment, ...]:
        return self._table[0]

    # ------------------------------------------------------------------ lifecycle

    def open(self, readonly: bool = False) -> None:
        """Find the existing segments (the newest is mapped, the others when read).
        The write position is set by ``recover``. ``readonly`` (``ferrymq store
        check``): nothing is changed on disk; a newest segment of the wrong size is
        left out (``skipped`` names it) instead of being given its size back."""
        if not readonly:
            os.makedirs(self.directory, exist_ok=True)
        names = sorted(n for n in os.listdir(self.directory)
                       if len(n) == _NAME_DIGITS and n.isdigit())
        segs: list[Segment] = []
        for i, n in enumerate(names):
            base = int(n)
            if segs and base != segs[-1].end:
                raise StoreError(f"CommitLog gap before segment {n}")
            path = os.path.join(self.directory, n)
            size = os.stat(path).st_size
            if size != self.segment_size:
                if i != len(names) - 1:
                    raise StoreError(f"segment {path} is {size} bytes, expected the configured "
                                     f"segment size {self.segment_size}")
                if readonly:
                    self.skipped = path
                    break
                # The newest segment was cut short or had bytes appended: give it
                # its size back; recovery validates what it holds record by record.
                os.truncate(path, self.segment_size)
            segs.append(Segment(path, base, self.segment_size))
        self._set_segments(tuple(segs))
        if segs:
            self.write_pos = self.flushed_pos = segs[0].base

    def close(self) -> None:
        segs = self.segments
        self._set_segments(())
        for s in segs:
            self.files.discard(s)

    def _set_segments(self, segs: tuple[Segment, ...]) -> None:
        self._table = (segs, [s.base for s in segs])
        self._read_seg = None  # read's last segment, forgotten on any change
        tail = segs[-1] if segs else None  # the segment appends go to: pinned open
        if tail is not self._tail:
            if tail is not None:
                self.files.pin(tail)
            if self._tail is not None:
                self.files.unpin(self._tail)
            self._tail = tail

    @property
    def min_offset(self) -> int:
        segs = self.segments
        return segs[0].base if segs else self.write_pos

    # ------------------------------------------------------------------ writing

    def reserve(self, size: int) -> tuple[Segment, int, int]:
        """Room for a record of ``size`` bytes: (segment, position in it, physical
        offset). The caller writes the record there (``write``), then advances
        ``write_pos``. Rolls to a new segment (writing the blank record) when it
        does not fit."""
        pos = self.write_pos
        tail = self._tail
        if tail is not None and pos + size + rec.BLANK_SIZE <= tail.end and pos >= tail.base:
            return tail, pos - tail.base, pos
        segs = self.segments
        seg = self._roll(self.write_pos) if not segs or self.write_pos >= segs[-1].end else segs[-1]
        local = self.write_pos - seg.base
        # Always leave room for a blank record behind this one (RocketMQ's
        # END_FILE_MIN_BLANK_LENGTH), so a segment's end can always be marked.
        if local + size + rec.BLANK_SIZE > seg.size:
            if size + rec.BLANK_SIZE > seg.size:
                raise StoreError(f"a {size}-byte record cannot fit a {seg.size}-byte segment")
            mm = seg.mm
            assert mm is not None  # the tail is pinned open
            rec._I32.pack_into(mm, local, seg.size - local)
            rec._I32.pack_into(mm, local + 4, rec.BLANK_MAGIC)
            self.write_pos = seg.end
            seg = self._roll(seg.end)
            local = 0
        return seg, local, self.write_pos

    @staticmethod
    def write(seg: Segment, local: int, data: bytes) -> None:
        """Copy a record into a segment (the active one: pinned open). Small records
        go through the mapping (a memcpy); large ones through pwrite(2): an append
        touches fresh pages, and faulting them in one by one through the mapping
        costs about four times what pwrite does (measured: 69 vs 15 us for 33 KB)."""
        n = len(data)
        if n < _PWRITE_MIN:
            seg.mm[local:local + n] = data  # type: ignore[index]
        elif os.pwrite(seg.fd, data, local) != n:
            raise StoreError("short write to the CommitLog")

    @staticmethod
    def write_parts(seg: Segment, local: int, parts: tuple[bytes | memoryview, ...], n: int) -> None:
        """``write`` of a record given as pieces totalling ``n`` bytes: one pwritev(2)
        from where they lie when large, one join and copy when small."""
        if n < _PWRITE_MIN:
            seg.mm[local:local + n] = b"".join(parts)  # type: ignore[index]
        elif os.pwritev(seg.fd, parts, local) != n:
            raise StoreError("short write to the CommitLog")

    def append_raw(self, offset: int, data: bytes | memoryview) -> None:
        """Replication (a slave): write bytes copied from the master's CommitLog at the
        same physical offset, which must be this log's end. The bytes are whole records
        (validated by the caller) that never cross a segment's end; a new segment
        starts when ``offset`` is the end of the last one. Raises StoreError."""
        if offset != self.write_pos:
            raise StoreError(f"replicated bytes at {offset}, the log ends at {self.write_pos}")
        seg = self._tail
        if seg is None or offset >= seg.end:
            seg = self._roll(offset)
        if offset + len(data) > seg.end:
            raise StoreError(f"replicated bytes at {offset}..{offset + len(data)} cross the end "
                             f"of the segment at {seg.base}: segment sizes differ")
        self.write(seg, offset - seg.base, bytes(data))
        self.write_pos = offset + len(data)

    def chunk(self, start: int, end: int, max_bytes: int) -> bytes:
        """Replication (the master): whole records from ``start`` (a record's first byte)
        up to ``end`` (a record boundary at most the log's end), at most ``max_bytes``
        unless the first record alone is larger, never past the end of ``start``'s
        segment (a blank record closing it is included). b"" when there is nothing."""
        seg = self._segment_for(start)
        if seg is None or start >= end:
            return b""
        stop = min(end, seg.end)
        pos, limit = start, start + max_bytes
        # open: the file cache may have closed it (owner thread, as read() and peek())
        with memoryview(self.files.open(seg)) as mm:  # released here: a view would keep it
            while pos < stop:
                total, _magic = rec.peek_size(mm, pos - seg.base)
                if total <= 0 or pos + total > seg.end:
                    raise StoreError(f"no record at CommitLog offset {pos}")
                if pos + total > stop or (pos + total > limit and pos > start):
                    break
                pos += total
            return bytes(mm[start - seg.base:pos - seg.base])

    def _roll(self, base: int) -> Segment:
        seg = Segment(os.path.join(self.directory, segment_name(base)), base, self.segment_size)
        self.files.create(seg, lambda: _create_segment(seg.path, seg.size))
        self._set_segments((*self.segments, seg))
        return seg

    # ------------------------------------------------------------------ reading

    def _segment_for(self, phys: int) -> Segment | None:
        segs, bases = self._table
        i = bisect.bisect_right(bases, phys) - 1
        if i < 0 or i >= len(segs):
            return None
        seg = segs[i]
        return seg if seg.base <= phys < seg.end else None

    def read(self, phys: int, size: int) -> bytes | None:
        """The ``size`` bytes at ``phys`` (owner thread), or None if that part of the
        log is gone (retention) or not written yet. Raises StoreError if its segment
        cannot be opened."""
        seg = self._read_seg  # reads come in runs from one segment
        if seg is None or not seg.base <= phys < seg.end:
            seg = self._read_seg = self._segment_for(phys)
            if seg is not None:
                seg.ref = True  # once a run: the clock's hand is slow next to a run
        if seg is None or phys + size > self.write_pos:
            return None
        mm = seg.mm
        if mm is None:
            mm = self.files.open(seg)
        local = phys - seg.base
        return mm[local:local + size]

    def peek(self, phys: int, size: int) -> bytes:
        """The bytes at ``phys`` whatever the write position (recovery looks past it);
        empty if no segment holds them. Owner thread."""
        seg = self._segment_for(phys)
        if seg is None:
            return b""
        local = phys - seg.base
        return self.files.open(seg)[local:local + size]

    def pread(self, phys: int, size: int) -> bytes | None:
        """Like ``read`` but with pread(2), safe from a worker thread: a cold page
        blocks only that thread (an mmap slice would hold the GIL while faulting).
        The segment is pinned while read, opened if the cache had closed it."""
        seg = self._segment_for(phys)
        if seg is None or phys + size > self.write_pos:
            return None
        return self.files.pread(seg, size, phys - seg.base)

    def scan(self, start: int) -> Iterator[rec.Record]:
        """Validate records from ``start`` on (magic, sizes, CRC, own offset), following
        blank records into the next segment; stops at the first byte that is not a
        valid record. ``write_pos`` is not consulted. The segment being scanned stays
        pinned open while the caller handles its records."""
        for item in self.walk(start, resync=False):
            if type(item) is Damage:
                return
            yield item  # type: ignore[misc]

    def walk(self, start: int, stop: int | None = None, *, resync: bool = True,
             full: bool = True) -> Iterator[rec.Record | Head | Damage]:
        """Every record from ``start`` (a record boundary) up to ``stop`` (default: the
        last segment's end), in log order, following blank records into the next
        segment; ``write_pos`` is not consulted (recovery looks past it).

        Where the bytes at a position are not a valid record, a ``Damage(pos, nxt)``
        is yielded: ``nxt`` is the offset of the next valid record (``find_next``:
        records are self-delimiting and carry their own offset, so resynchronising
        is unambiguous), and the walk goes on from there; ``nxt`` None means no
        valid record follows anywhere and the walk ends (the end of the log, or a
        torn tail). With ``resync`` False the walk ends at the first damage
        (yielding ``Damage(pos, None)``) without searching.

        ``full``: each record is decoded and its body CRC checked (``rec.Record``);
        otherwise only its fixed fields and sizes are checked (``Head``: cheap, for
        walks that look for one queue's records). Owner thread; the segment being
        walked stays pinned open while the caller handles its records."""
        pos = start
        seg: Segment | None = self._segment_for(pos)
        while seg is not None and (stop is None or pos < stop):
            nxt: int | None = None
            damaged = False
            self.files.pin(seg)
            try:
                mm = seg.mm
                assert mm is not None
                while stop is None or pos < stop:
                    local = pos - seg.base
                    if local + rec.BLANK_SIZE > seg.size:
                        if local == seg.size:
                            break  # exactly at the end: go on in the next segment
                        damaged = True
                        break
                    total, magic = _SIZE_MAGIC.unpack_from(mm, local)
                    if magic == rec.BLANK_MAGIC and total == seg.size - local:
                        pos = seg.end
                        break
                    item = _check_at(mm, local, pos, full)
                    if item is None:
                        damaged = True
                        break
                    yield item
                    pos += item[0] if isinstance(item, Head) else item.total_size
            finally:
                self.files.unpin(seg)
            if damaged:
                nxt = self.find_next(pos) if resync else None
                yield Damage(pos, nxt)
                if nxt is None:
                    return
                pos = nxt
            seg = self._segment_for(pos)

    def find_next(self, pos: int) -> int | None:
        """The offset of the first valid record after ``pos`` (magic, sizes, CRC, and its
        physical-offset field equal to its position), in ``pos``'s segment or a later
        one; None if there is none. A search for the magic's bytes through the
        mappings (C speed; the stored offset makes a false match all but impossible,
        the CRC makes it impossible in practice). Owner thread."""
        seg = self._segment_for(pos + 1)
        local = pos + 1 - seg.base if seg is not None else 0
        while seg is not None:
            self.files.pin(seg)
            try:
                mm = seg.mm
                assert mm is not None
                i = mm.find(_MAGIC_BYTES, local + 4)
                while i >= 0:
                    cand = i - 4
                    if cand + rec.HEADER_SIZE <= seg.size and _I64.unpack_from(
                            mm, cand + rec.POS_PHYSICAL_OFFSET)[0] == seg.base + cand \
                            and _check_at(mm, cand, seg.base + cand, True) is not None:
                        return seg.base + cand
                    i = mm.find(_MAGIC_BYTES, i + 1)
            finally:
                self.files.unpin(seg)
            seg = self._segment_for(seg.end)
            if seg is not None:
                # A segment's first record sits at its base: check it before searching.
                self.files.pin(seg)
                try:
                    assert seg.mm is not None
                    if _check_at(seg.mm, 0, seg.base, True) is not None:
                        return seg.base
                finally:
                    self.files.unpin(seg)
                local = 0
        return None

    def zeros_from(self, pos: int) -> bool:
        """Whether every byte from ``pos`` to the end of the last segment is zero (the
        unwritten end of the log). Owner thread."""
        seg = self._segment_for(pos)
        local = pos - seg.base if seg is not None else 0
        zero = bytes(_ZERO_CHUNK)
        while seg is not None:
            mm = self.files.open(seg)
            while local < seg.size:
                n = min(_ZERO_CHUNK, seg.size - local)
                if mm[local:local + n] != zero[:n]:
                    return False
                local += n
            seg = self._segment_for(seg.end)
            local = 0
        return True

    # ------------------------------------------------------------------ recovery

    def truncate(self, pos: int) -> None:
        """Make ``pos`` the end of the log: zero the rest of its segment (so stale
        bytes can never be mistaken for records after a later crash) and delete
        every later segment."""
        keep = []
        for old in self.segments:
            if old.base <= pos:
                keep.append(old)
            else:
                self.files.discard(old, unlink=True)
        self._set_segments(tuple(keep))
        seg = self._segment_for(pos)
        if seg is not None:
            self.files.pin(seg)
            try:
                mm = seg.mm
                assert mm is not None
                local = pos - seg.base
                zero = bytes(_ZERO_CHUNK)
                while local < seg.size:
                    n = min(_ZERO_CHUNK, seg.size - local)
                    if mm[local:local + n] != zero[:n]:
                        mm[local:local + n] = zero[:n]
                    local += n
                os.fdatasync(seg.fd)
            finally:
                self.files.unpin(seg)
        self.write_pos = pos
        self.flushed_pos = min(self.flushed_pos, pos)

    def reset(self, pos: int) -> None:
        """Start an empty log at physical offset ``pos`` (all segments gone)."""
        for seg in self.segments:
            self.files.discard(seg, unlink=True)
        self._set_segments(())
        self.write_pos = self.flushed_pos = pos

    # ------------------------------------------------------------------ flushing

    def flush(self, upto: int | None = None) -> int:
        """fdatasync every segment holding bytes below ``upto`` (default: the
        current write position) that is not flushed yet; returns the new flushed
        position. Blocking: call from a worker thread. A segment the cache closed
        meanwhile is synced through a descriptor of its own. OSError propagates:
        the caller must treat it as "nothing since the last good flush is durable"."""
        with self._flush_lock:
            target = self.write_pos if upto is None else min(upto, self.write_pos)
            if target <= self.flushed_pos:
                return self.flushed_pos
            for seg in self.segments:
                if seg.end <= self.flushed_pos or seg.base >= target:
                    continue
                self.files.sync(seg, data_only=True)
            self.flushed_pos = target
            return target

    # ------------------------------------------------------------------ retention

    def delete_segments(self, keep_from: int) -> list[int]:
        """Delete whole segments that end at or below ``keep_from`` (never the
        active one). Returns the bases deleted. A segment a worker thread is
        reading is closed when that read ends."""
        segs = self.segments
        gone = [s for s in segs[:-1] if s.end <= keep_from]
        if not gone:
            return []
        self._set_segments(segs[len(gone):])
        for s in gone:
            self.files.discard(s, unlink=True)
        return [s.base for s in gone]

    def segment_mtimes(self) -> list[tuple[int, float]]:
        """(base, last modification time) of every segment but the active one."""
        out = []
        for s in self.segments[:-1]:
            try:
                out.append((s.base, os.stat(s.path).st_mtime))
            except FileNotFoundError:
                continue
        return out

    def disk_bytes(self) -> int:
        return len(self.segments) * self.segment_size
