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
new one starts. ``end phys`` tells recovery where to resume indexing. Files
are opened through the store's file cache (filecache.py).
"""

from __future__ import annotations

import logging
import mmap
import os
import struct
import zlib

from .filecache import CachedFile, FileCache, default_budget, map_file

log = logging.getLogger("ferrymq.store")

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


class IndexFile(CachedFile):
    """One index file. Written and read through its mapping only, so it keeps no
    descriptor while open; its header fields live in memory too."""

    __slots__ = ("begin_phys", "end_phys", "entries", "max_entries", "slots")

    KIND = "index"
    RANDOM = True  # sparse, and a hash table

    def __init__(self, path: str, size: int) -> None:
        super().__init__(path, size)
        self.begin_phys = self.end_phys = self.slots = self.entries = self.max_entries = 0

    def load_header(self, mm: mmap.mmap) -> None:
        """Read the header of an existing file. Raises BrokenIndexFile."""
        if self.size < HEADER.size:
            raise BrokenIndexFile(f"{self.path}: {self.size} bytes, shorter than a header")
        _, _, self.begin_phys, self.end_phys, self.slots, self.entries = HEADER.unpack_from(mm)
        self.max_entries = (self.size - HEADER.size - self.slots * 4) // ENTRY.size
        if self.slots <= 0 or self.max_entries <= 0 or not 0 <= self.entries <= self.max_entries:
            raise BrokenIndexFile(f"{self.path}: header does not describe this file")

    @property
    def full(self) -> bool:
        return self.entries >= self.max_entries

    def put(self, mm: mmap.mmap, h: int, phys: int, member: int, ts: int) -> None:
        slot_pos = HEADER.size + (h % self.slots) * 4
        prev = SLOT.unpack_from(mm, slot_pos)[0]
        n = self.entries + 1  # entry numbers start at 1; 0 ends a chain
        ENTRY.pack_into(mm, HEADER.size + self.slots * 4 + (n - 1) * ENTRY.size, h, phys, member,
                        prev)
        SLOT.pack_into(mm, slot_pos, n)
        self.entries = n
        _COUNT.pack_into(mm, _COUNT_POS, n)

    def advance(self, mm: mmap.mmap, end_phys: int, ts: int) -> None:
        """Record that every record below ``end_phys`` is indexed."""
        self.end_phys = end_phys
        begin_ts = _TS.unpack_from(mm, 0)[0] or ts
        HEADER.pack_into(mm, 0, begin_ts, ts, self.begin_phys, end_phys, self.slots,
                         self.entries)

    def lookup(self, mm: mmap.mmap, h: int, limit: int) -> list[tuple[int, int]]:
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

    def truncate(self, mm: mmap.mmap, phys: int) -> None:
        """Forget the entries for records at CommitLog offset >= ``phys``. Entries are
        appended in log order, so the ones kept are a prefix; a slot whose newest
        entry is dropped is walked back along its chain to the newest one kept."""
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


def _create_file(path: str, slots: int, max_entries: int, begin_phys: int
                 ) -> tuple[int, mmap.mmap]:
    """Build the file under a temporary name and rename it into place, so a crash
    never leaves a file without its header under a real name."""
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, HEADER.size + slots * 4 + max_entries * ENTRY.size)
        os.pwrite(fd, HEADER.pack(0, 0, begin_phys, begin_phys, slots, 0), 0)
        os.rename(tmp, path)
        return fd, map_file(fd, os.fstat(fd).st_size)
    except BaseException:
        os.close(fd)
        raise


class KeyIndex:
    """All index files of a store, newest last. Owner thread, except ``flush``.

    Files are opened through the store's file cache; the newest (every put writes
    it) stays pinned open, older ones are opened when a lookup reaches them."""

    def __init__(self, directory: str, slots: int, max_entries: int,
                 cache: FileCache | None = None) -> None:
        self.directory = directory
        self.slots = slots
        self.max_entries = max_entries
        self.cache = cache if cache is not None else FileCache(default_budget())
        self.files: list[IndexFile] = []
        self.dirty = False
        self.tail: IndexFile | None = None  # the newest file, pinned open
        # Set by ``open`` when files had to be dropped (damaged): the CommitLog offset
        # from which recovery must index records again.
        self.rebuild_from: int | None = None

    def open(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        for n in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, n)
            if n.endswith(".tmp"):  # a crash while creating a file
                os.unlink(path)
            elif len(n) == _NAME_DIGITS and n.isdigit():
                f = IndexFile(path, os.stat(path).st_size)
                try:
                    if f.size < HEADER.size:
                        raise BrokenIndexFile(f"{path}: {f.size} bytes, shorter than a header")
                    f.load_header(self.cache.open(f))
                except BrokenIndexFile as exc:
                    self.cache.discard(f)
                    # Unusable (damaged, or an older build crashed while creating it):
                    # drop it and every newer file; recovery indexes the records they
                    # covered again from the CommitLog.
                    log.error("index file %s is damaged (%s): it and the newer ones are "
                              "built again from the CommitLog", path, exc)
                    for later in sorted(os.listdir(self.directory)):
                        if len(later) == _NAME_DIGITS and later.isdigit() and later >= n:
                            os.unlink(os.path.join(self.directory, later))
                    self.rebuild_from = self.files[-1].end_phys if self.files else 0
                    break
                self.files.append(f)
        self._retail()

    def close(self) -> None:
        files, self.files = self.files, []
        self._retail()
        for f in files:
            self.cache.discard(f)

    def _retail(self) -> None:
        """Pin the newest file (the one puts write) and let the previous one go."""
        new = self.files[-1] if self.files else None
        if new is self.tail:
            return
        if new is not None:
            self.cache.pin(new)
        if self.tail is not None:
            self.cache.unpin(self.tail)
        self.tail = new

    def _mm(self, f: IndexFile) -> mmap.mmap:
        mm = f.mm
        if mm is None:
            return self.cache.open(f)
        f.ref = True
        return mm

    @property
    def end_phys(self) -> int:
        """Every record below this CommitLog offset has been indexed."""
        return self.files[-1].end_phys if self.files else 0

    def ready(self, keys: int, phys: int) -> None:
        """Make room for ``keys`` more entries of the record at CommitLog offset
        ``phys`` in the newest file, starting a new file now if they would not fit, so
        that the ``put`` calls for that record cannot fail: the store calls this
        before it writes the record. Raises StoreError."""
        files = self.files
        if not files or files[-1].entries + keys > files[-1].max_entries:
            self._add_file(phys)

    def _add_file(self, phys: int) -> None:
        path = os.path.join(self.directory, f"{phys:0{_NAME_DIGITS}d}")
        if os.path.exists(path):  # recovery re-created a file at the same offset
            os.unlink(path)
        f = IndexFile(path, HEADER.size + self.slots * 4 + self.max_entries * ENTRY.size)
        self.cache.create(f, lambda: _create_file(path, self.slots, self.max_entries, phys))
        f.begin_phys = f.end_phys = phys
        f.slots, f.max_entries = self.slots, self.max_entries
        self.files.append(f)
        self._retail()

    def put(self, key: str, phys: int, member: int, ts: int) -> None:
        f = self.tail
        if f is None or f.entries >= f.max_entries:
            self._add_file(phys)
            f = self.tail
        f.put(f.mm, key_hash(key), phys, member, ts)  # type: ignore[union-attr, arg-type]
        self.dirty = True

    def advance(self, end_phys: int, ts: int) -> None:
        """Every record below ``end_phys`` is indexed (called after a record's keys)."""
        f = self.tail
        if f is not None:
            f.advance(f.mm, end_phys, ts)  # type: ignore[arg-type]  # pinned open

    def lookup(self, key: str, limit: int = 64) -> list[tuple[int, int]]:
        """Candidate (CommitLog offset, batch member) pairs, newest first, deduplicated."""
        h = key_hash(key)
        out: list[tuple[int, int]] = []
        seen: set[tuple[int, int]] = set()
        for f in reversed(self.files):
            for hit in f.lookup(self._mm(f), h, limit):
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
            self._retail()  # unpins it, pins the one before
            self.cache.discard(f, unlink=True)
        if self.files:
            f = self.files[-1]
            f.truncate(self._mm(f), phys)
        self.dirty = True

    def delete_before(self, min_phys: int) -> None:
        """Delete files whose every entry points below ``min_phys`` (never the newest)."""
        while len(self.files) > 1 and self.files[0].end_phys <= min_phys:
            self.cache.discard(self.files.pop(0), unlink=True)

    def flush(self) -> None:
        """Make the newest file durable (worker thread)."""
        self.dirty = False
        f = self.tail
        if f is not None:
            self.cache.sync(f)
