"""The ConsumeQueue of one (topic, queue): where each queue offset's record lies in the CommitLog.

One fixed-size entry per CommitLog record (40 bytes, big-endian)::

    CommitLog offset 8 | record size 4 | base queue offset 8 | message count 4 |
    tag hash 8 | store timestamp 8

Queue offsets count messages (Kafka semantics): a batch record of N messages
covers offsets ``base .. base+N-1``, so an offset is found by binary search on
the base offsets (with a direct hit when every record holds one message).
Entries live in preallocated files of ``entries_per_file`` entries, named by the
byte position of their first entry (20 digits), memory-mapped through the
store's file cache (filecache.py): a queue nobody writes or reads has no file
open. A ConsumeQueue is derived data: recovery truncates it and re-dispatches
from the CommitLog.

A *lost* entry (``size`` LOST_SIZE, -1) stands for messages whose record was in a
damaged range of the CommitLog (docs/storage.md, "Damage"): it keeps its queue
offsets (``base``, ``count``) so that the numbering never moves, and readers
skip it. Recovery and the store's repairs write them; nothing else does.

Threads: the owner thread (the event loop) appends, reads, truncates and deletes;
the checkpoint's worker thread calls ``flush``; a read in a worker thread goes
through ``reader()``, which pins each file it touches.
"""

from __future__ import annotations

import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from .filecache import CachedFile, FileCache, FileGone, default_budget, map_file

ENTRY = struct.Struct(">qiqiqq")
ENTRY_SIZE = ENTRY.size  # 40
_ITER_CHUNK = 1024  # entries unpacked per slice by iter_entries
_pack_entry = ENTRY.pack_into
_NAME_DIGITS = 20
LOST_SIZE = -1  # the size field of a lost entry (any other size below a header's is damage)
_ZERO_ENTRY = bytes(ENTRY_SIZE)


class Entry(NamedTuple):
    physical_offset: int
    size: int
    base_offset: int
    count: int  # type: ignore[assignment]  # shadows tuple.count: the field keeps its name
    tag_hash: int
    store_timestamp: int


class _File(CachedFile):
    """One ConsumeQueue file: entries ``[first, limit)``. Written and read through its
    mapping only, so it keeps no descriptor while open."""

    __slots__ = ("first", "limit")

    KIND = "consumequeue"
    RANDOM = True  # sparse, and a get reads one page of entries

    def __init__(self, path: str, first: int, entries: int) -> None:
        super().__init__(path, entries * ENTRY_SIZE)
        self.first = first  # global index of the first entry in this file
        self.limit = first + entries


def _create_file(path: str, size: int) -> tuple[int, mmap.mmap]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size != size:
            os.ftruncate(fd, size)  # sparse: pages appear as entries are written
        return fd, map_file(fd, size)
    except BaseException:
        os.close(fd)
        raise


def _data_end(path: str) -> int:
    """Where the file's first hole starts (its size if it has none, or if the file
    system cannot tell)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.lseek(fd, 0, os.SEEK_HOLE)
    except OSError:
        return os.fstat(fd).st_size
    finally:
        os.close(fd)


class _Entries:
    """Reading entries ``[first_entry, next_entry)``: shared by the ConsumeQueue (owner
    thread) and its pinned readers (worker threads), which differ in ``_mm``."""

    files: Sequence[_File]
    per_file: int
    first_entry: int
    next_entry: int
    min_offset: int
    max_offset: int

    def _mm(self, f: _File) -> mmap.mmap:
        raise NotImplementedError

    def _locate(self, index: int) -> tuple[mmap.mmap, int]:
        files = self.files
        f = files[(index - files[0].first) // self.per_file]
        return self._mm(f), (index - f.first) * ENTRY_SIZE

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
            n = min(stop, f.limit, index + _ITER_CHUNK) - index
            pos = (index - f.first) * ENTRY_SIZE
            yield from ENTRY.iter_unpack(self._mm(f)[pos:pos + n * ENTRY_SIZE])
            index += n

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

    def first_stored_at_or_after(self, timestamp_ms: int) -> int:
        """The index of the first entry stored at or after ``timestamp_ms`` (store
        timestamps never decrease): ``next_entry`` if every entry is older."""
        lo, hi = self.first_entry, self.next_entry
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entry(mid).store_timestamp < timestamp_ms:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def first_at_or_past(self, phys: int) -> int:
        """The index of the first entry whose record lies at CommitLog offset >= ``phys``."""
        lo, hi = self.first_entry, self.next_entry
        while lo < hi:
            mid = (lo + hi) // 2
            if self.entry(mid).physical_offset < phys:
                lo = mid + 1
            else:
                hi = mid
        return lo


class ConsumeQueue(_Entries):
    """Entries ``[first_entry, next_entry)`` of one queue. Owner thread only, except
    ``flush`` (worker thread) and what ``reader()`` returns."""

    def __init__(self, directory: str, topic: str, queue_id: int, entries_per_file: int,
                 cache: FileCache | None = None) -> None:
        self.directory = directory
        self.topic = topic
        self.queue_id = queue_id
        self.per_file = entries_per_file
        self.cache = cache if cache is not None else FileCache(default_budget())
        self.files: list[_File] = []
        self.first_entry = 0  # global index of the oldest entry kept
        self.next_entry = 0  # global index the next entry gets
        self.min_offset = 0  # first queue offset still readable
        self.max_offset = 0  # the queue offset the next message gets
        self.dirty = False
        self.missing: list[int] = []  # first entry of each file found missing at open
        self._file_bytes = entries_per_file * ENTRY_SIZE
        # Where the last entry's record ends, kept in memory: recovery asks every
        # queue, and reading it would open every queue's last file.
        self._last_end = 0
        self.tail: _File | None = None  # the file the next entry goes into, if it exists

    def _locate(self, index: int) -> tuple[mmap.mmap, int]:
        # _Entries._locate with _mm inlined: this is every get's first step.
        files = self.files
        f = files[(index - files[0].first) // self.per_file]
        mm = f.mm
        if mm is None:
            mm = self.cache.open(f)
        else:
            f.ref = True
        return mm, (index - f.first) * ENTRY_SIZE

    def iter_entries(self, index: int, stop: int) -> Iterator[tuple[int, int, int, int, int, int]]:
        # _Entries.iter_entries with _mm inlined: every get's loop.
        files = self.files
        first = files[0].first if files else 0
        per = self.per_file
        while index < stop:
            f = files[(index - first) // per]
            n = min(stop, f.limit, index + _ITER_CHUNK) - index
            pos = (index - f.first) * ENTRY_SIZE
            mm = f.mm
            if mm is None:
                mm = self.cache.open(f)
            else:
                f.ref = True
            yield from ENTRY.iter_unpack(mm[pos:pos + n * ENTRY_SIZE])
            index += n

    def _mm(self, f: _File) -> mmap.mmap:
        mm = f.mm
        if mm is None:
            return self.cache.open(f)
        f.ref = True
        return mm

    # ------------------------------------------------------------------ lifecycle

    def open(self) -> None:
        """Find the existing files and the end: the last entry whose size is set.

        Damage is noted, never silently dropped: a file missing between two others
        is created empty and its entries listed in ``missing`` (the store rebuilds
        them from the CommitLog); an entry zeroed before the end is found too (the
        end is the last non-zero entry, and the reads' checks find the zeros)."""
        os.makedirs(self.directory, exist_ok=True)
        names = sorted(n for n in os.listdir(self.directory)
                       if len(n) == _NAME_DIGITS and n.isdigit())
        for n in names:
            first = int(n) // ENTRY_SIZE
            while self.files and first > self.files[-1].first + self.per_file:
                gap = self.files[-1].first + self.per_file
                f = _File(os.path.join(self.directory, f"{gap * ENTRY_SIZE:0{_NAME_DIGITS}d}"),
                          gap, self.per_file)
                self.cache.create(f, lambda f=f: _create_file(f.path, f.size))  # type: ignore[misc]
                self.files.append(f)
                self.missing.append(gap)
            if self.files and first != self.files[-1].first + self.per_file:
                continue  # a stray name inside another file's range: not ours
            path = os.path.join(self.directory, n)
            if os.stat(path).st_size != self._file_bytes:
                os.truncate(path, self._file_bytes)
            self.files.append(_File(path, first, self.per_file))
        if not self.files:
            return
        self.first_entry = self.files[0].first
        # Entries are written in order, so "size != 0" holds for a prefix of the
        # last file: binary search for its end, below the file's first hole (the
        # file is sparse: probing a hole through the mapping would fault in a
        # zeroed page, and a broker with thousands of queues would pay for
        # thousands of them at every start).
        last = self.files[-1]
        data_end = min(self.per_file, -(-_data_end(last.path) // ENTRY_SIZE))
        lo, hi = 0, data_end
        mm = self._mm(last)
        while lo < hi:
            mid = (lo + hi) // 2
            if ENTRY.unpack_from(mm, mid * ENTRY_SIZE)[1] != 0:
                lo = mid + 1
            else:
                hi = mid
        # Damage can zero an entry's size before the end, and the search then stops
        # short: entries past it that are not zero say where the end really is
        # (normally the search lands in the last page written, so this reads a page).
        tail = mm[lo * ENTRY_SIZE:data_end * ENTRY_SIZE]
        if tail.count(0) != len(tail):
            stripped = len(tail.rstrip(b"\x00"))
            lo += -(-stripped // ENTRY_SIZE)
        self.next_entry = last.first + lo
        # Skip leading empty entries of the first file (retention may have left
        # a file whose older entries were cleared).
        while self.first_entry < self.next_entry and self.entry(self.first_entry).size == 0 \
                and self.first_entry not in self.missing:
            self.first_entry += 1
        self._refresh_bounds()

    def close(self) -> None:
        for f in self.files:
            self.cache.discard(f)
        self.files = []
        self.tail = None

    def _refresh_bounds(self) -> None:
        if self.next_entry > self.first_entry:
            first = self.entry(self.first_entry)
            last = self.entry(self.next_entry - 1)
            self.min_offset = first.base_offset
            self.max_offset = last.base_offset + last.count
            self._last_end = last.physical_offset + max(last.size, 0)
        else:
            self.min_offset = self.max_offset

    def reader(self) -> PinnedReader:
        """The entries as they are now, for a worker thread: each file it reads is
        pinned open until ``release()``."""
        return PinnedReader(self)

    # ------------------------------------------------------------------ entries

    def ready(self) -> None:
        """Make sure the file the next entry goes into exists and is mapped (it is
        then ``tail``), so that ``append`` cannot fail: the store calls this before it
        writes the record (inlining the check ``tail`` is open and has room), and a
        record never lands in the CommitLog without its entry. Raises StoreError."""
        files = self.files
        self.tail = None
        if files:
            f = files[-1]
            if self.next_entry < f.limit:
                if f.mm is None:
                    self.cache.open(f)
                else:
                    f.ref = True
                self.tail = f
                return
        index = self.next_entry
        first = index - index % self.per_file
        f = _File(os.path.join(self.directory, f"{first * ENTRY_SIZE:0{_NAME_DIGITS}d}"), first,
                  self.per_file)
        self.cache.create(f, lambda: _create_file(f.path, f.size))
        files.append(f)
        self.tail = f

    def append(self, phys: int, size: int, base: int, count: int, tag_hash: int,
               store_ts: int) -> None:
        """Add the entry for a record whose first message has queue offset ``base``, in
        ``tail``, which ``ready()`` (or the store's inlined check) made sure is open
        with room since anything last opened a file."""
        index = self.next_entry
        f = self.tail
        _pack_entry(f.mm, (index - f.first) * ENTRY_SIZE, phys, size, base, count,  # type: ignore[union-attr, arg-type]
                    tag_hash, store_ts)
        if index == self.first_entry:
            self.min_offset = base
        self.next_entry = index + 1
        self.max_offset = base + count
        self._last_end = phys + size
        self.dirty = True

    def append_lost(self, phys: int, base: int, count: int, store_ts: int, tag_hash: int = 0
                    ) -> None:
        """Add a lost entry (``count`` messages from ``base`` whose record was in a damaged
        range at CommitLog offset ``phys`` or after). Readers skip it."""
        self.ready()
        self.append(phys, LOST_SIZE, base, count, tag_hash, store_ts)

    def put_entry(self, index: int, e: tuple[int, int, int, int, int, int]) -> None:
        """Overwrite entry ``index`` (``first_entry <= index < next_entry``): a repair."""
        mm, pos = self._locate(index)
        _pack_entry(mm, pos, *e)
        self.dirty = True
        if index == self.first_entry or index == self.next_entry - 1:
            self._refresh_bounds()

    def mark_lost(self, index: int) -> bool:
        """Mark entry ``index`` lost (its record is damaged), keeping its offsets; False
        if it was lost already."""
        e = self.entry(index)
        if e.size == LOST_SIZE:
            return False
        self.put_entry(index, (e.physical_offset, LOST_SIZE, e.base_offset, e.count,
                               e.tag_hash, e.store_timestamp))
        return True

    def last_physical_end(self) -> int:
        return self._last_end if self.next_entry > self.first_entry else 0

    # ------------------------------------------------------------------ recovery

    def truncate_physical(self, phys: int, collect: bool = False) -> list[Entry]:
        """Drop every entry for a record at CommitLog offset >= ``phys`` (they will be
        re-dispatched from the CommitLog, or were lost with it). With ``collect``,
        return the dropped entries (recovery keeps them as hints of what a damaged
        range held)."""
        if self.next_entry == self.first_entry or self._last_end <= phys:
            return []  # nothing that far: no file needs opening
        index = self.first_at_or_past(phys)
        cut = [Entry._make(e) for e in self.iter_entries(max(index, self.first_entry),
                                                         self.next_entry)] if collect else []
        self._truncate_entries(index)
        return cut

    def truncate_entries(self, index: int) -> None:
        """Drop entries ``index`` and after (a repair: they disagree with the CommitLog)."""
        self._truncate_entries(index)

    def _truncate_entries(self, index: int) -> None:
        if index >= self.next_entry:
            return
        index = max(index, self.first_entry)
        new_max = self.entry(index).base_offset
        keep = [f for f in self.files if f.first < index]
        for f in self.files[len(keep):]:
            self.cache.discard(f, unlink=True)
        if keep:
            f = keep[-1]
            start = (index - f.first) * ENTRY_SIZE
            stop = (min(self.next_entry, f.limit) - f.first) * ENTRY_SIZE
            self._mm(f)[start:stop] = bytes(stop - start)
        self.files = keep
        self.tail = None
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
        return self.delete_before_index(self.first_at_or_past(min_phys))

    def delete_before_index(self, lo: int) -> int:
        """Forget entries below global index ``lo`` (a topic's own retention moves its
        queues' start while the CommitLog segments stay for other topics); delete
        files that hold only such entries. Returns the new min offset."""
        lo = min(lo, self.next_entry)
        if lo <= self.first_entry:
            return self.min_offset
        # Keep the last file even when empty: it anchors the entry numbering.
        while len(self.files) > 1 and self.files[1].first <= lo:
            self.cache.discard(self.files.pop(0), unlink=True)  # never the tail
        self.first_entry = lo
        if lo < self.next_entry:
            self.min_offset = self.entry(lo).base_offset
        else:
            self.min_offset = self.max_offset
        return self.min_offset

    # ------------------------------------------------------------------ flushing

    def flush(self) -> None:
        """Make the newest files durable (worker thread; the checkpoint calls it)."""
        self.dirty = False
        for f in list(self.files[-2:]):
            try:
                self.cache.sync(f)
            except OSError:
                self.dirty = True
                raise

    def remove_files(self) -> None:
        """Delete this queue's files (the topic was deleted)."""
        for f in self.files:
            self.cache.discard(f, unlink=True)
        self.files = []
        self.tail = None
        for n in os.listdir(self.directory):
            os.unlink(os.path.join(self.directory, n))
        os.rmdir(self.directory)


class PinnedReader(_Entries):
    """A ConsumeQueue's entries as they were when it was made, read from a worker
    thread: every file read is pinned (opened if closed) so the owner cannot close
    it mid-read, until ``release()``. Raises FileGone if retention deleted a file
    the read needs (read again: the queue's bounds moved)."""

    def __init__(self, q: ConsumeQueue) -> None:
        # The end first: entries below it are in files listed after it.
        self.next_entry = q.next_entry
        self.max_offset = q.max_offset
        self.files = tuple(q.files)
        self.first_entry = q.first_entry
        self.min_offset = q.min_offset
        self.per_file = q.per_file
        self._cache = q.cache
        self._pinned: list[_File] = []

    def _mm(self, f: _File) -> mmap.mmap:
        if f not in self._pinned:
            if not self._cache.pin(f):
                raise FileGone(f.path)
            self._pinned.append(f)
        mm = f.mm
        assert mm is not None
        return mm

    def release(self) -> None:
        for f in self._pinned:
            self._cache.unpin(f)
        self._pinned = []
