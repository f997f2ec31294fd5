"""The timer wheel on disk: for every second of delivery time, a linked list of timer-log entries.

Two memory-mapped structures under ``<data>/timer/`` hold every pending timer,
so a million pending timers cost disk and page cache, not Python objects:

- ``wheel``: a ring of ``slots`` slots (a power of two; 2^22 seconds = 48.5
  days by default), one per second of delivery time, 16 bytes each::

      head entry number + 1 (8; 0 = empty) | entry count (4) | reserved (4)

  The file is sparse: an untouched second costs nothing on disk.
- ``log/<20-digit first entry number>``: the timer log, an append-only
  sequence of fixed 32-byte entries in segment files of ``segment_entries``
  entries behind a 32-byte header (magic 4 | version 4 | first entry 8 |
  highest slot of its entries 8 | reserved 8)::

      delivery ms (8) | CommitLog offset of the timer message (8) |
      previous entry number + 1 in the same slot (8; 0 = none) |
      timer message size (4; negative = cancelled) | CRC-32 of the first 24 bytes (4)

Inserting a timer appends one entry whose ``previous`` is the slot's head and
makes it the new head: O(1), two small writes into mapped pages. Reading a
slot walks its list from the newest entry back. A slot is an absolute second
taken modulo the ring size, so its list can hold entries of a later lap; the
caller (``core/timers.py``) compares each entry's own delivery time with the
second it processes and links later laps again. A log segment is deleted once
every entry in it belongs to a slot that has been processed (its header keeps
the highest slot of its entries).

Crash safety: entries are written before the slot that points at them; the
CRC lets ``validate`` find entries a power cut left half-written, and the
caller rebuilds the wheel from the CommitLog then (the wheel is derived data).
This module does no I/O scheduling of its own: everything runs on the event
loop thread except ``flush`` (fsync), which a worker thread may call.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib
from collections.abc import Iterator
from typing import NamedTuple

SLOT = struct.Struct(">qii")
SLOT_SIZE = SLOT.size  # 16
ENTRY = struct.Struct(">qqqiI")
ENTRY_SIZE = ENTRY.size  # 32
_ENTRY_HEAD = struct.Struct(">qqq")
_SIZE_AT = 24  # offset of the size field inside an entry
_I32 = struct.Struct(">i")
SEGMENT_HEADER = struct.Struct(">IIqqq")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 32
_MAX_SLOT_AT = 16
_Q = struct.Struct(">q")
_MAGIC = 0x46544C47  # "FTLG"
_VERSION = 1
_NAME_DIGITS = 20

DEFAULT_SLOTS = 1 << 22  # seconds: 48.5 days, the brief's ring (RocketMQ 5 uses 2 x 7 days)
DEFAULT_SEGMENT_ENTRIES = 1 << 20  # 32 MiB per log segment


class WheelCorrupt(Exception):
    """A slot's list points at an entry that is missing or fails its CRC."""


class WheelEntry(NamedTuple):
    number: int
    deliver_ms: int
    phys: int
    size: int
    cancelled: bool


Slot = tuple[int, int, int, int, bool]
"""What ``walk`` returns per entry: (number, delivery ms, CommitLog offset, size,
cancelled). A plain tuple, not a WheelEntry: the garbage collector stops tracking
exact tuples of numbers, and a slot of 100,000 named tuples would keep every full
collection busy for tens of milliseconds (measured with ``ferrymq bench timers``)."""


def _check(deliver_ms: int, phys: int, prev: int) -> int:
    return zlib.crc32(_ENTRY_HEAD.pack(deliver_ms, phys, prev))


class _Segment:
    __slots__ = ("fd", "first", "max_slot", "mm", "path")

    def __init__(self, path: str, first: int, entries: int, create: bool) -> None:
        self.path = path
        self.first = first
        self.fd = os.open(path, os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0), 0o644)
        try:
            size = SEGMENT_HEADER_SIZE + entries * ENTRY_SIZE
            if create:
                os.ftruncate(self.fd, size)  # sparse: pages appear as entries are written
            elif os.fstat(self.fd).st_size != size:
                raise WheelCorrupt(f"timer log segment {path} has the wrong size")
            self.mm = mmap.mmap(self.fd, size)
        except BaseException:
            os.close(self.fd)
            raise
        if create:
            SEGMENT_HEADER.pack_into(self.mm, 0, _MAGIC, _VERSION, first, -1, 0)
            self.max_slot = -1
        else:
            magic, version, head_first, self.max_slot, _ = SEGMENT_HEADER.unpack_from(self.mm)
            if magic != _MAGIC or version != _VERSION or head_first != first:
                self.close()
                raise WheelCorrupt(f"timer log segment {path} has a bad header")

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


class TimerWheel:
    """The ring of slots and the timer log of one broker (see the module docstring)."""

    def __init__(self, directory: str, slots: int = DEFAULT_SLOTS,
                 segment_entries: int = DEFAULT_SEGMENT_ENTRIES) -> None:
        if slots <= 0 or slots & (slots - 1):
            raise ValueError("the number of wheel slots must be a power of two")
        self.directory = directory
        self.slots = slots
        self.mask = slots - 1
        self.segment_entries = segment_entries
        self.next_entry = 0
        self.segments: list[_Segment] = []
        self._fd = -1
        self._mm: mmap.mmap | None = None
        self.pending = 0  # entries in slots (cancelled ones included) since open or count()

    # ------------------------------------------------------------------ lifecycle

    @property
    def log_dir(self) -> str:
        return os.path.join(self.directory, "log")

    def open(self) -> bool:
        """Map the files, creating them if missing. Returns whether a wheel existed."""
        os.makedirs(self.log_dir, exist_ok=True)
        path = os.path.join(self.directory, "wheel")
        existed = os.path.exists(path)
        self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        size = self.slots * SLOT_SIZE
        if os.fstat(self._fd).st_size != size:
            if existed and os.fstat(self._fd).st_size:
                os.close(self._fd)
                raise WheelCorrupt(f"wheel file {path} does not have {self.slots} slots")
            os.ftruncate(self._fd, size)
        self._mm = mmap.mmap(self._fd, size)
        names = sorted(n for n in os.listdir(self.log_dir)
                       if len(n) == _NAME_DIGITS and n.isdigit())
        try:
            for n in names:
                first = int(n)
                if first % self.segment_entries:
                    raise WheelCorrupt(f"timer log segment {n} does not start a segment")
                self.segments.append(_Segment(os.path.join(self.log_dir, n), first,
                                              self.segment_entries, False))
        except BaseException:
            self.close()
            raise
        self.next_entry = self._find_end()
        self.pending = self.count_all()
        return existed

    def _find_end(self) -> int:
        if not self.segments:
            return 0
        seg = self.segments[-1]
        lo, hi = 0, self.segment_entries  # entries are written in order: valid ones form a prefix
        while lo < hi:
            mid = (lo + hi) // 2
            if self._valid_at(seg, mid):
                lo = mid + 1
            else:
                hi = mid
        return seg.first + lo

    @staticmethod
    def _valid_at(seg: _Segment, local: int) -> bool:
        deliver, phys, prev, _size, check = ENTRY.unpack_from(seg.mm, SEGMENT_HEADER_SIZE
                                                              + local * ENTRY_SIZE)
        return check == _check(deliver, phys, prev)

    def close(self) -> None:
        for s in self.segments:
            s.close()
        self.segments = []
        if self._mm is not None:
            self._mm.close()
            self._mm = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def reset(self) -> None:
        """Forget every timer: empty the wheel and delete the log (before a rebuild)."""
        for s in self.segments:
            s.close()
            os.unlink(s.path)
        self.segments = []
        self.next_entry = 0
        if self._mm is not None:
            os.ftruncate(self._fd, 0)
            os.ftruncate(self._fd, self.slots * SLOT_SIZE)
        self.pending = 0

    def flush(self) -> None:
        """Make the wheel and the log durable (worker thread: fsync writes back the
        mapped pages and releases the GIL)."""
        if self._fd >= 0:
            os.fsync(self._fd)
        for s in list(self.segments[-2:]):
            os.fsync(s.fd)

    # ------------------------------------------------------------------ entries

    def _segment_for(self, number: int) -> _Segment | None:
        segs = self.segments
        if not segs:
            return None
        i = (number - segs[0].first) // self.segment_entries
        if 0 <= i < len(segs) and segs[i].first <= number:
            seg = segs[i]
            if number < seg.first + self.segment_entries:
                return seg
        return None

    def _append_segment(self, first: int) -> _Segment:
        seg = _Segment(os.path.join(self.log_dir, f"{first:0{_NAME_DIGITS}d}"), first,
                       self.segment_entries, True)
        self.segments.append(seg)
        return seg

    def insert(self, slot_s: int, deliver_ms: int, phys: int, size: int) -> int:
        """Link a timer into the slot of absolute second ``slot_s``; returns its entry number."""
        mm = self._mm
        assert mm is not None
        spos = (slot_s & self.mask) * SLOT_SIZE
        head, count, _ = SLOT.unpack_from(mm, spos)
        n = self.next_entry
        segs = self.segments
        seg = segs[-1] if segs else None
        if seg is None or n >= seg.first + self.segment_entries:
            seg = self._append_segment(n)
        ENTRY.pack_into(seg.mm, SEGMENT_HEADER_SIZE + (n - seg.first) * ENTRY_SIZE,
                        deliver_ms, phys, head, size, _check(deliver_ms, phys, head))
        if slot_s > seg.max_slot:
            seg.max_slot = slot_s
            _Q.pack_into(seg.mm, _MAX_SLOT_AT, slot_s)
        SLOT.pack_into(mm, spos, n + 1, count + 1, 0)
        self.next_entry = n + 1
        self.pending += 1
        return n

    def count(self, slot_s: int) -> int:
        assert self._mm is not None
        return SLOT.unpack_from(self._mm, (slot_s & self.mask) * SLOT_SIZE)[1]

    def entry(self, number: int) -> WheelEntry:
        seg = self._segment_for(number)
        if seg is None or number >= self.next_entry:
            raise WheelCorrupt(f"timer log entry {number} does not exist")
        deliver, phys, prev, size, check = ENTRY.unpack_from(
            seg.mm, SEGMENT_HEADER_SIZE + (number - seg.first) * ENTRY_SIZE)
        if check != _check(deliver, phys, prev):
            raise WheelCorrupt(f"timer log entry {number} fails its CRC")
        return WheelEntry(number, deliver, phys, abs(size), size < 0)

    def walk(self, slot_s: int) -> list[Slot]:
        """Every entry of the slot as (number, delivery ms, offset, size, cancelled),
        newest first (cancelled ones included). Raises WheelCorrupt on a broken link
        or a bad CRC."""
        out: list[Slot] = []
        head, count = self.head(slot_s)
        n = head
        while n >= 0:
            n = self.walk_part(slot_s, n, 1 << 62, out, check=True)
        if len(out) != count:
            raise WheelCorrupt(f"slot {slot_s} counts {count} entries but links {len(out)}")
        return out

    def head(self, slot_s: int) -> tuple[int, int]:
        """(newest entry number or -1, entry count) of a slot."""
        assert self._mm is not None
        head, count, _ = SLOT.unpack_from(self._mm, (slot_s & self.mask) * SLOT_SIZE)
        return head - 1, count

    def walk_part(self, slot_s: int, n: int, limit: int, out: list[Slot],
                  check: bool = False) -> int:
        """Append to ``out`` up to ``limit`` entries of a slot's list from entry ``n``
        back; returns the entry to continue from (-1 at the end). Entries are never
        rewritten but for their cancel flag, so a list can be walked in parts while
        new timers are linked in front of it. ``check`` verifies each entry's CRC
        (``validate`` does it for the whole wheel after an unclean stop; the
        preparer's walk skips it: a third of its cost)."""
        segs = self.segments
        per = self.segment_entries
        end = self.next_entry
        unpack = ENTRY.unpack_from
        first = segs[0].first if segs else 0
        while n >= 0 and limit > 0:
            if not segs or n >= end:
                raise WheelCorrupt(f"slot {slot_s} links to missing entry {n}")
            i = (n - first) // per
            if i < 0 or i >= len(segs):
                raise WheelCorrupt(f"slot {slot_s} links to a deleted log segment (entry {n})")
            seg = segs[i]
            deliver, phys, prev, size, crc = unpack(seg.mm, SEGMENT_HEADER_SIZE
                                                    + (n - seg.first) * ENTRY_SIZE)
            if check and crc != _check(deliver, phys, prev):
                raise WheelCorrupt(f"timer log entry {n} fails its CRC")
            out.append((n, deliver, phys, -size if size < 0 else size, size < 0))
            if prev - 1 >= n:
                raise WheelCorrupt(f"timer log entry {n} links forward")
            n = prev - 1
            limit -= 1
        return n

    def clear(self, slot_s: int) -> None:
        """Empty a processed slot (its entries become dead log space)."""
        assert self._mm is not None
        spos = (slot_s & self.mask) * SLOT_SIZE
        count = SLOT.unpack_from(self._mm, spos)[1]
        if count:
            SLOT.pack_into(self._mm, spos, 0, 0, 0)
            self.pending -= count

    def cancel(self, slot_s: int, phys: int) -> tuple[int, int]:
        """Flag the entries of ``phys`` in the slot as cancelled. Returns (entries
        flagged now, entries already cancelled)."""
        flagged = already = 0
        for number, _deliver, e_phys, size, cancelled in self.walk(slot_s):
            if e_phys != phys:
                continue
            if cancelled:
                already += 1
                continue
            seg = self._segment_for(number)
            assert seg is not None
            _I32.pack_into(seg.mm, SEGMENT_HEADER_SIZE + (number - seg.first) * ENTRY_SIZE
                           + _SIZE_AT, -size)
            flagged += 1
        return flagged, already

    # ------------------------------------------------------------------ scanning

    def _data_ranges(self, start: int, end: int) -> list[tuple[int, int]]:
        """Byte ranges of the wheel file in ``[start, end)`` that may hold non-zero
        slots. SEEK_DATA/SEEK_HOLE skip the holes of the sparse file without
        faulting them in (reading a hole through the mapping would put 64 MiB of
        zero pages into the page cache); where unsupported, the whole range."""
        out: list[tuple[int, int]] = []
        pos = start
        try:
            while pos < end:
                try:
                    data = os.lseek(self._fd, pos, os.SEEK_DATA)
                except OSError:  # ENXIO: no data past pos
                    break
                if data >= end:
                    break
                hole = os.lseek(self._fd, data, os.SEEK_HOLE)
                out.append((data, min(hole, end)))
                pos = hole
        except (AttributeError, OSError):
            return [(start, end)]
        return out

    def _ring_ranges(self, from_idx: int, n: int) -> Iterator[tuple[int, int]]:
        """(first ring index, end ring index) runs with data, for ``n`` slots from
        ``from_idx`` going round the ring once at most."""
        first = min(n, self.slots - from_idx)
        for a, b in self._data_ranges(from_idx * SLOT_SIZE, (from_idx + first) * SLOT_SIZE):
            yield a // SLOT_SIZE, -(-b // SLOT_SIZE)
        if n > first:
            for a, b in self._data_ranges(0, (n - first) * SLOT_SIZE):
                yield a // SLOT_SIZE, -(-b // SLOT_SIZE)

    def nonempty_slots(self, from_s: int, to_s: int) -> Iterator[int]:
        """Absolute seconds in ``[from_s, to_s)`` whose slot holds entries, in order
        (at most one lap). Only the written parts of the sparse file are read, so
        an empty day is cheap to cross."""
        mm = self._mm
        assert mm is not None
        n = min(to_s - from_s, self.slots)
        if n <= 0:
            return
        from_idx = from_s & self.mask
        unpack = SLOT.unpack_from
        for a, b in list(self._ring_ranges(from_idx, n)):
            for idx in range(a, b):
                if unpack(mm, idx * SLOT_SIZE)[1]:
                    # the absolute second of ring index idx within [from_s, from_s + n)
                    s = from_s + ((idx - from_idx) & self.mask)
                    if s < from_s + n:
                        yield s

    def count_all(self) -> int:
        """Entries in all slots (a pass over the written parts of the ring)."""
        mm = self._mm
        assert mm is not None
        total = 0
        for a, b in self._data_ranges(0, len(mm)):
            for (_, count, _) in SLOT.iter_unpack(mm[a - a % SLOT_SIZE:b - b % SLOT_SIZE]):
                total += count
        return total

    def log_missing(self) -> str | None:
        """Cheap, at every start: whether the log lacks segments the wheel needs (slots
        count entries but no segment holds any, or segments with a gap between them)."""
        if self.pending and not self.segments:
            return f"the wheel counts {self.pending} entries but the timer log has no segment"
        for a, b in zip(self.segments, self.segments[1:], strict=False):
            if b.first != a.first + self.segment_entries:
                return f"timer log segments {a.first} and {b.first} leave a gap"
        return None

    def validate(self) -> str | None:
        """Walk every slot's list: None if all links and CRCs hold, else what is wrong."""
        mm = self._mm
        assert mm is not None
        for a, b in self._data_ranges(0, len(mm)):
            for idx in range(a // SLOT_SIZE, -(-b // SLOT_SIZE)):
                if SLOT.unpack_from(mm, idx * SLOT_SIZE)[0]:
                    try:
                        self.walk(idx)
                    except WheelCorrupt as exc:
                        return str(exc)
        return None

    # ------------------------------------------------------------------ retention

    def reap(self, processed_s: int) -> list[str]:
        """Delete log segments (never the newest) whose entries all belong to slots
        before ``processed_s``. Returns the paths deleted."""
        gone = []
        while len(self.segments) > 1 and self.segments[0].max_slot < processed_s:
            seg = self.segments.pop(0)
            seg.close()
            os.unlink(seg.path)
            gone.append(seg.path)
        return gone

    def disk_bytes(self) -> int:
        """Bytes the log segments occupy on disk (they are sparse until written)."""
        total = 0
        for s in self.segments:
            try:
                total += os.fstat(s.fd).st_blocks * 512
            except OSError:
                continue
        return total
