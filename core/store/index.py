"""The key index: message keys and client message ids (UNIQ_KEY) to CommitLog offsets.

An on-disk hash table per file, in the spirit of RocketMQ's IndexFile, so the
index costs disk, not memory::

    header 40:  begin timestamp 8 | end timestamp 8 | begin phys 8 | end phys 8 |
                slot count 4 | entry count 4
    slots:      slot count x 4    (number of the newest entry in the slot, 0 = empty)
    entries:    max entries x 20  (key hash 4 | CommitLog offset 8 | batch member 4 |
                                   previous entry in the slot 4)

A lookup walks the slot's chain and returns candidate (offset, member) pairs;
the caller reads the records and keeps those whose key really matches (hashes
collide). Files are preallocated sparse and memory-mapped; when one is full a
new one starts. ``end phys`` tells recovery where to resume indexing.
"""

from __future__ import annotations

import mmap
import os
import struct
import zlib

HEADER = struct.Struct(">qqqqii")
ENTRY = struct.Struct(">Iqii")
SLOT = struct.Struct(">i")
_TS = struct.Struct(">q")
_COUNT = struct.Struct(">i")
_COUNT_POS = 36
_NAME_DIGITS = 20


class BrokenIndexFile(ValueError):
    """An index file that cannot be used; the index is rebuilt from the CommitLog."""


def key_hash(key: str) -> int:
    return zlib.crc32(key.encode())


class IndexFile:
    __slots__ = ("begin_phys", "end_phys", "entries", "fd", "max_entries", "mm", "path", "slots")

    def __init__(self, path: str, slots: int, max_entries: int, begin_phys: int | None) -> None:
        self.path = path
        if begin_phys is not None:
            # Build the file under a temporary name and rename it into place, so a
            # crash never leaves a file without its header under a real name.
            tmp = path + ".tmp"
            fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, HEADER.size + slots * 4 + max_entries * ENTRY.size)
                os.pwrite(fd, HEADER.pack(0, 0, begin_phys, begin_phys, slots, 0), 0)
                os.rename(tmp, path)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
        else:
            self.fd = os.open(path, os.O_RDWR)
        try:
            size = os.fstat(self.fd).st_size
            if size < HEADER.size:
                raise BrokenIndexFile(f"{path}: {size} bytes, shorter than a header")
            self.mm = mmap.mmap(self.fd, 0)
            _, _, self.begin_phys, self.end_phys, self.slots, self.entries = HEADER.unpack_from(
                self.mm)
            self.max_entries = (len(self.mm) - HEADER.size - self.slots * 4) // ENTRY.size
            if self.slots <= 0 or self.max_entries <= 0 or not 0 <= self.entries <= self.max_entries:
                self.mm.close()
                raise BrokenIndexFile(f"{path}: header does not describe this file")
        except BaseException:
            os.close(self.fd)
            raise

    @property
    def full(self) -> bool:
        return self.entries >= self.max_entries

    def put(self, h: int, phys: int, member: int, ts: int) -> None:
        mm = self.mm
        slot_pos = HEADER.size + (h % self.slots) * 4
        prev = SLOT.unpack_from(mm, slot_pos)[0]
        n = self.entries + 1  # entry numbers start at 1; 0 ends a chain
        ENTRY.pack_into(mm, HEADER.size + self.slots * 4 + (n - 1) * ENTRY.size, h, phys, member,
                        prev)
        SLOT.pack_into(mm, slot_pos, n)
        self.entries = n
        _COUNT.pack_into(mm, _COUNT_POS, n)

    def advance(self, end_phys: int, ts: int) -> None:
        """Record that every record below ``end_phys`` is indexed."""
        self.end_phys = end_phys
        begin_ts = _TS.unpack_from(self.mm, 0)[0] or ts
        HEADER.pack_into(self.mm, 0, begin_ts, ts, self.begin_phys, end_phys, self.slots,
                         self.entries)

    def lookup(self, h: int, limit: int) -> list[tuple[int, int]]:
        mm = self.mm
        base = HEADER.size + self.slots * 4
        n = SLOT.unpack_from(mm, HEADER.size + (h % self.slots) * 4)[0]
        out: list[tuple[int, int]] = []
        seen = 0
        while 0 < n <= self.entries and len(out) < limit and seen <= self.entries:
            eh, phys, member, prev = ENTRY.unpack_from(mm, base + (n - 1) * ENTRY.size)
            if eh == h:
                out.append((phys, member))
            n = prev if prev < n else 0  # a chain only points backwards
            seen += 1
        return out

    def truncate(self, phys: int) -> None:
        """Forget the entries for records at CommitLog offset >= ``phys``. Entries are
        appended in log order, so the ones kept are a prefix; a slot whose newest
        entry is dropped is walked back along its chain to the newest one kept."""
        mm = self.mm
        base = HEADER.size + self.slots * 4
        lo, hi = 0, self.entries  # entries are numbered from 1; find how many point below phys
        while lo < hi:
            mid = (lo + hi) // 2
            if ENTRY.unpack_from(mm, base + mid * ENTRY.size)[1] < phys:
                lo = mid + 1
            else:
                hi = mid
        keep = lo
        if keep == self.entries:
            return
        for i in range(self.slots):
            pos = HEADER.size + i * 4
            n = SLOT.unpack_from(mm, pos)[0]
            if n <= keep:
                continue
            while n > keep:
                n = ENTRY.unpack_from(mm, base + (n - 1) * ENTRY.size)[3]
            SLOT.pack_into(mm, pos, n)
        mm[base + keep * ENTRY.size:base + self.entries * ENTRY.size] = bytes(
            (self.entries - keep) * ENTRY.size)
        self.entries = keep
        self.end_phys = min(self.end_phys, phys)
        begin_ts, end_ts = _TS.unpack_from(mm, 0)[0], _TS.unpack_from(mm, 8)[0]
        HEADER.pack_into(mm, 0, begin_ts, end_ts, self.begin_phys, self.end_phys, self.slots,
                         keep)

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


class KeyIndex:
    """All index files of a store, newest last. Event-loop thread, except ``flush``."""

    def __init__(self, directory: str, slots: int, max_entries: int) -> None:
        self.directory = directory
        self.slots = slots
        self.max_entries = max_entries
        self.files: list[IndexFile] = []
        self.dirty = False

    def open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        for n in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, n)
            if n.endswith(".tmp"):  # a crash while creating a file
                os.unlink(path)
            elif len(n) == _NAME_DIGITS and n.isdigit():
                try:
                    self.files.append(IndexFile(path, 0, 0, None))
                except BrokenIndexFile:
                    # Unusable (e.g. an older build crashed while creating it): drop it
                    # and every newer file; recovery re-indexes from the CommitLog.
                    for later in sorted(os.listdir(self.directory)):
                        if len(later) == _NAME_DIGITS and later.isdigit() and later >= n:
                            os.unlink(os.path.join(self.directory, later))
                    break

    def close(self) -> None:
        for f in self.files:
            f.close()
        self.files = []

    @property
    def end_phys(self) -> int:
        """Every record below this CommitLog offset has been indexed."""
        return self.files[-1].end_phys if self.files else 0

    def put(self, key: str, phys: int, member: int, ts: int) -> None:
        if not self.files or self.files[-1].full:
            path = os.path.join(self.directory, f"{phys:0{_NAME_DIGITS}d}")
            if os.path.exists(path):  # recovery re-created a file at the same offset
                os.unlink(path)
            self.files.append(IndexFile(path, self.slots, self.max_entries, phys))
        self.files[-1].put(key_hash(key), phys, member, ts)
        self.dirty = True

    def advance(self, end_phys: int, ts: int) -> None:
        """Every record below ``end_phys`` is indexed (called after a record's keys)."""
        if self.files:
            self.files[-1].advance(end_phys, ts)

    def lookup(self, key: str, limit: int = 64) -> list[tuple[int, int]]:
        """Candidate (CommitLog offset, batch member) pairs, newest first, deduplicated."""
        h = key_hash(key)
        out: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        for f in reversed(self.files):
            for hit in f.lookup(h, limit):
                if hit not in seen:
                    seen.add(hit)
                    out.append(hit)
            if len(out) >= limit:
                break
        return out[:limit]

    def truncate(self, phys: int) -> None:
        """Replication: the CommitLog now ends at ``phys``; forget every entry at or past
        it (files that begin there go whole)."""
        while self.files and self.files[-1].begin_phys >= phys:
            f = self.files.pop()
            f.close()
            os.unlink(f.path)
        if self.files:
            self.files[-1].truncate(phys)
        self.dirty = True

    def delete_before(self, min_phys: int) -> None:
        """Delete files whose every entry points below ``min_phys`` (never the newest)."""
        while len(self.files) > 1 and self.files[0].end_phys <= min_phys:
            f = self.files.pop(0)
            f.close()
            os.unlink(f.path)

    def flush(self) -> None:
        self.dirty = False
        if self.files:
            os.fsync(self.files[-1].fd)
