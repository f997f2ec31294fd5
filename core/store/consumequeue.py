"""The ConsumeQueue of one (topic, queue): where each queue offset's record lies in the CommitLog.

One fixed-size entry per CommitLog record (40 bytes, big-endian)::

    CommitLog offset 8 | record size 4 | base queue offset 8 | message count 4 |
    tag hash 8 | store timestamp 8

Queue offsets count messages (Kafka semantics): a batch record of N messages
covers offsets ``base .. base+N-1``, so an offset is found by binary search on
the base offsets (with a direct hit when every record holds one message).
Entries live in preallocated files of ``entries_per_file`` entries, named by the
byte position of their first entry (20 digits), memory-mapped. A ConsumeQueue is
derived data: recovery truncates it and re-dispatches from the CommitLog.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator
from typing import NamedTuple

ENTRY = struct.Struct(">qiqiqq")
ENTRY_SIZE = ENTRY.size  # 40
_ITER_CHUNK = 1024  # entries unpacked per slice by iter_entries
_pack_entry = ENTRY.pack_into
_NAME_DIGITS = 20


class Entry(NamedTuple):
    physical_offset: int
    size: int
    base_offset: int
    count: int
    tag_hash: int
    store_timestamp: int


class _File:
    __slots__ = ("fd", "first", "mm", "path")

    def __init__(self, path: str, first: int, entries: int, create: bool) -> None:
        self.path = path
        self.first = first  # global index of the first entry in this file
        self.fd = os.open(path, os.O_RDWR | (os.O_CREAT if create else 0), 0o644)
        size = entries * ENTRY_SIZE
        if os.fstat(self.fd).st_size != size:
            os.ftruncate(self.fd, size)
        self.mm = mmap.mmap(self.fd, size)

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


class ConsumeQueue:
    """Entries ``[first_entry, next_entry)`` of one queue. Event-loop thread only,
    except ``flush`` (worker thread)."""

    def __init__(self, directory: str, topic: str, queue_id: int, entries_per_file: int) -> None:
        self.directory = directory
        self.topic = topic
        self.queue_id = queue_id
        self.per_file = entries_per_file
        self.files: list[_File] = []
        self.first_entry = 0  # global index of the oldest entry kept
        self.next_entry = 0  # global index the next entry gets
        self.min_offset = 0  # first queue offset still readable
        self.max_offset = 0  # the queue offset the next message gets
        self.dirty = False
        self._file_bytes = entries_per_file * ENTRY_SIZE

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Map existing files and find the end: the last entry whose size is set."""
        os.makedirs(self.directory, exist_ok=True)
        names = sorted(n for n in os.listdir(self.directory)
                       if len(n) == _NAME_DIGITS and n.isdigit())
        for n in names:
            first = int(n) // ENTRY_SIZE
            if self.files and first != self.files[-1].first + self.per_file:
                # A gap means a file went missing: everything before it is unusable.
                for f in self.files:
                    f.close()
                    os.unlink(f.path)
                self.files = []
            self.files.append(_File(os.path.join(self.directory, n), first, self.per_file, False))
        if not self.files:
            return
        self.first_entry = self.files[0].first
        # Entries are written in order, so "size != 0" holds for a prefix of the
        # last file: binary search for its end.
        last = self.files[-1]
        lo, hi = 0, self.per_file
        while lo < hi:
            mid = (lo + hi) // 2
            if ENTRY.unpack_from(last.mm, mid * ENTRY_SIZE)[1] != 0:
                lo = mid + 1
            else:
                hi = mid
        self.next_entry = last.first + lo
        # Skip leading empty entries of the first file (retention may have left
        # a file whose older entries were cleared).
        while self.first_entry < self.next_entry and self.entry(self.first_entry).size == 0:
            self.first_entry += 1
        self._refresh_bounds()

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files = []

    def _refresh_bounds(self) -> None:
        if self.next_entry > self.first_entry:
            first = self.entry(self.first_entry)
            last = self.entry(self.next_entry - 1)
            self.min_offset = first.base_offset
            self.max_offset = last.base_offset + last.count
        else:
            self.min_offset = self.max_offset

    # ------------------------------------------------------------------ entries

    def _locate(self, index: int) -> tuple[mmap.mmap, int]:
        f = self.files[(index - self.files[0].first) // self.per_file]
        return f.mm, (index - f.first) * ENTRY_SIZE

    def entry(self, index: int) -> Entry:
        mm, pos = self._locate(index)
        return Entry._make(ENTRY.unpack_from(mm, pos))

    def iter_entries(self, index: int, stop: int) -> Iterator[tuple[int, int, int, int, int, int]]:
        """Entries ``[index, stop)`` as plain tuples (the fields of ``Entry``), read in
        chunks of at most _ITER_CHUNK entries: the read path's loop, without a named
        tuple and a file lookup per entry."""
        files = self.files
        first = files[0].first if files else 0
        per = self.per_file
        while index < stop:
            f = files[(index - first) // per]
            n = min(stop, f.first + per, index + _ITER_CHUNK) - index
            pos = (index - f.first) * ENTRY_SIZE
            yield from ENTRY.iter_unpack(f.mm[pos:pos + n * ENTRY_SIZE])
            index += n

    def append(self, phys: int, size: int, base: int, count: int, tag_hash: int,
               store_ts: int) -> None:
        """Add the entry for a record whose first message has queue offset ``base``."""
        index = self.next_entry
        files = self.files
        if files:
            f = files[-1]
            pos = (index - f.first) * ENTRY_SIZE
            if 0 <= pos < self._file_bytes:
                _pack_entry(f.mm, pos, phys, size, base, count, tag_hash, store_ts)
                self.next_entry = index + 1
                self.max_offset = base + count
                self.dirty = True
                return
        if not files or index >= files[-1].first + self.per_file:
            first = index - index % self.per_file
            path = os.path.join(self.directory, f"{first * ENTRY_SIZE:0{_NAME_DIGITS}d}")
            files.append(_File(path, first, self.per_file, True))
            if len(files) == 1:
                self.first_entry = index
                self.min_offset = base
        f = files[-1]
        ENTRY.pack_into(f.mm, (index - f.first) * ENTRY_SIZE, phys, size, base, count, tag_hash,
                        store_ts)
        self.next_entry = index + 1
        self.max_offset = base + count
        self.dirty = True

    def find(self, offset: int) -> int | None:
        """The index of the entry holding queue ``offset``, or None if the offset is
        outside ``[min_offset, max_offset)``."""
        if offset < self.min_offset or offset >= self.max_offset:
            return None
        lo, hi = self.first_entry, self.next_entry - 1
        # Direct hit when the entries up to here each hold one message.
        guess = self.first_entry + (offset - self.min_offset)
        if guess <= hi:
            e = self.entry(guess)
            if e.base_offset <= offset < e.base_offset + e.count:
                return guess
            if e.base_offset > offset:
                hi = guess
        while lo < hi:  # last entry with base_offset <= offset
            mid = (lo + hi + 1) // 2
            if self.entry(mid).base_offset <= offset:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def offset_for_time(self, timestamp_ms: int) -> int:
        """The first queue offset stored at or after ``timestamp_ms`` (store time);
        ``max_offset`` if every message is older."""
        lo, hi = self.first_entry, self.next_entry
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entry(mid).store_timestamp < timestamp_ms:
                lo = mid + 1
            else:
                hi = mid
        return self.entry(lo).base_offset if lo < self.next_entry else self.max_offset

    def last_physical_end(self) -> int:
        if self.next_entry == self.first_entry:
            return 0
        e = self.entry(self.next_entry - 1)
        return e.physical_offset + e.size

    # ------------------------------------------------------------------ recovery

    def truncate_physical(self, phys: int) -> None:
        """Drop every entry for a record at CommitLog offset >= ``phys`` (they will be
        re-dispatched from the CommitLog, or were lost with it)."""
        lo, hi = self.first_entry, self.next_entry
        while lo < hi:  # first entry at or past phys
            mid = (lo + hi) // 2
            if self.entry(mid).physical_offset < phys:
                lo = mid + 1
            else:
                hi = mid
        self._truncate_entries(lo)

    def _truncate_entries(self, index: int) -> None:
        if index >= self.next_entry:
            return
        index = max(index, self.first_entry)
        new_max = self.entry(index).base_offset
        keep = [f for f in self.files if f.first < index]
        for f in self.files[len(keep):]:
            f.close()
            os.unlink(f.path)
        if keep:
            f = keep[-1]
            start = (index - f.first) * ENTRY_SIZE
            stop = (min(self.next_entry, f.first + self.per_file) - f.first) * ENTRY_SIZE
            f.mm[start:stop] = bytes(stop - start)
        self.files = keep
        self.next_entry = index
        if index == self.first_entry:
            self.min_offset = self.max_offset = new_max
        else:
            self._refresh_bounds()
        self.dirty = True

    def reset_offsets(self, next_offset: int) -> None:
        """An empty queue whose next message gets ``next_offset``."""
        self.min_offset = self.max_offset = next_offset

    # ------------------------------------------------------------------ retention

    def delete_before_physical(self, min_phys: int) -> int:
        """Forget entries whose records lie below CommitLog offset ``min_phys``;
        delete files that hold only such entries. Returns the new min offset."""
        lo, hi = self.first_entry, self.next_entry
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entry(mid).physical_offset < min_phys:
                lo = mid + 1
            else:
                hi = mid
        if lo == self.first_entry:
            return self.min_offset
        # Keep the last file even when empty: it anchors the entry numbering.
        while len(self.files) > 1 and self.files[1].first <= lo:
            f = self.files.pop(0)
            f.close()
            os.unlink(f.path)
        self.first_entry = lo
        if lo < self.next_entry:
            self.min_offset = self.entry(lo).base_offset
        else:
            self.min_offset = self.max_offset
        return self.min_offset

    # ------------------------------------------------------------------ flushing

    def flush(self) -> None:
        """fsync the mapped files (worker thread; the checkpoint calls it)."""
        self.dirty = False
        for f in list(self.files[-2:]):
            try:
                os.fsync(f.fd)
            except OSError:
                self.dirty = True
                raise

    def remove_files(self) -> None:
        """Delete this queue's files (the topic was deleted)."""
        self.close()
        for n in os.listdir(self.directory):
            os.unlink(os.path.join(self.directory, n))
        os.rmdir(self.directory)
