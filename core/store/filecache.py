"""The file cache: every segment, ConsumeQueue file and index file the store opens, under one budget.

A store with thousands of queues has thousands of files; keeping each open for
good runs the process out of descriptors (``RLIMIT_NOFILE``) and mappings
(``vm.max_map_count``). So every such file is a ``CachedFile`` that is open
only while the cache holds it, the coldest closed to make room (CLOCK, a
second-chance approximation of LRU), any of them reopened on demand.

An open file is a mapping of the whole file and, for the kinds that need one
(``KEEPS_FD``: CommitLog segments), a descriptor of the store's; the others
close theirs once the file is mapped. A mapping stays valid without its
descriptor, but CPython's ``mmap`` keeps a duplicate of it unless told not to
(``trackfd=False``, Python 3.13): before 3.13 every mapping costs a descriptor
too. The budget therefore counts *slots*: an open file takes one per descriptor
it holds, and at least one (its mapping), so the budget bounds both the
descriptors and the mappings the store holds. docs/storage.md says why each
kind keeps what it keeps.

Threads. The store has one *owner* thread (the broker's event loop; recovery's
thread before it): it alone creates, opens, evicts and discards files, and it
reads ``f.mm`` without taking the lock, so the hot path costs an attribute load
and a flag store. Worker threads (flush, checkpoint, reads with pread) never
touch ``f.mm`` unpinned: ``pin`` holds a file open (opening it if asked, even
past the budget, which the owner's next ``open`` or ``trim`` restores) and
nothing closes a pinned file; ``sync`` and ``pread`` pin for their caller. A
file discarded while pinned (retention deleted it) is closed by its last
``unpin``.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import resource
import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import ClassVar, TypeVar

from ..errors import StoreError

FILE_KINDS = ("commitlog", "consumequeue", "index")
"""The kinds of ``CachedFile`` (their ``KIND``): the metrics' ``kind`` label."""

MIN_BUDGET = 16
"""The smallest budget accepted: the owner keeps the active CommitLog segment and the
newest index file pinned, and recovery pins a segment while it scans it."""

MAX_DEFAULT_BUDGET = 16_384
"""The default budget never exceeds a quarter of Linux's default ``vm.max_map_count``
(65,530): the interpreter, the timer wheel and the doors map files too."""

_OUT_OF_FILES = (errno.EMFILE, errno.ENFILE, errno.ENOMEM)
MAPPING_KEEPS_FD = sys.version_info < (3, 13)
"""Whether an ``mmap`` holds a duplicate of the descriptor it was made from."""
_T = TypeVar("_T")


class FileGone(StoreError):
    """A file a worker thread wanted was deleted meanwhile (retention, truncation)."""


def default_budget() -> int:
    """A quarter of the process's descriptor soft limit (the doors' connections need
    the rest), at least MIN_BUDGET, at most MAX_DEFAULT_BUDGET and a quarter of
    ``vm.max_map_count``. Read when the store is created: the server raises the soft
    limit before that where the hard limit allows (gateways/fdlimit.py)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    return max(MIN_BUDGET, min(soft // 4, max_map_count() // 4, MAX_DEFAULT_BUDGET))


def map_file(fd: int, size: int) -> mmap.mmap:
    """Map ``size`` bytes of ``fd`` shared, read-write; without a duplicate of the
    descriptor where the interpreter allows it (see MAPPING_KEEPS_FD)."""
    if MAPPING_KEEPS_FD:
        return mmap.mmap(fd, size)
    return mmap.mmap(fd, size, trackfd=False)  # type: ignore[call-arg, unused-ignore]


def slots_of(kind: type[CachedFile]) -> int:
    """What an open file of ``kind`` costs in the budget: its descriptors, at least 1."""
    return max(1, int(kind.KEEPS_FD) + int(MAPPING_KEEPS_FD))


def max_map_count() -> int:
    """The kernel's limit on a process's mappings (65,530 unless tuned)."""
    try:
        with open("/proc/sys/vm/max_map_count", "rb") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 65_530


class CachedFile:
    """A file of ``size`` bytes at ``path`` that the cache opens and closes.

    ``mm`` is its mapping while open, else None; ``fd`` its descriptor while open
    if the kind keeps one, else -1. Subclasses name their kind (the metrics label)
    and add their own fields. Identity-hashed: the cache keys on the object."""

    __slots__ = ("fd", "gone", "mm", "path", "pins", "ref", "size")

    KIND: ClassVar[str] = "file"
    KEEPS_FD: ClassVar[bool] = False
    RANDOM: ClassVar[bool] = False
    """Read at random, not in sequence: the mapping is advised MADV_RANDOM, so a fault
    reads one page, not the device's read-ahead window around it (8 MiB of holes of
    a sparse file, zeroed page by page, on a disk with read_ahead_kb = 8192)."""

    def __init__(self, path: str, size: int) -> None:
        self.path = path
        self.size = size
        self.mm: mmap.mmap | None = None
        self.fd = -1
        self.pins = 0
        self.ref = False  # used since the clock hand last passed (second chance)
        self.gone = False  # discarded: never reopened

    def __repr__(self) -> str:
        state = "gone" if self.gone else "open" if self.mm is not None else "closed"
        return f"<{type(self).__name__} {self.path} {state} pins={self.pins}>"


class FileCache:
    """The open files of one store, at most ``budget`` (see the module docstring)."""

    def __init__(self, budget: int) -> None:
        if budget < MIN_BUDGET:
            raise ValueError(f"max_open_files must be at least {MIN_BUDGET}")
        self.budget = budget  # slots: see the module docstring
        self.used = 0  # slots the open files take
        self._lock = threading.Lock()
        self._clock: OrderedDict[CachedFile, None] = OrderedDict()  # open files, hand first
        self.opens: Counter[str] = Counter()  # per kind: files mapped
        self.evictions: Counter[str] = Counter()  # per kind: closed to make room
        self.transient: Counter[str] = Counter()  # per kind: synced through a descriptor of their own

    # ------------------------------------------------------------------ inspection

    def __len__(self) -> int:
        return len(self._clock)

    def open_by_kind(self) -> Counter[str]:
        with self._lock:
            return Counter(f.KIND for f in self._clock)

    def descriptors(self) -> int:
        """Descriptors the open files hold (the transient ones of ``sync`` aside)."""
        with self._lock:
            return sum((f.fd >= 0) + MAPPING_KEEPS_FD for f in self._clock)

    # ------------------------------------------------------------------ owner thread

    def create(self, f: CachedFile, make: Callable[[], tuple[int, mmap.mmap]]) -> None:
        """Create ``f`` with ``make`` (which returns its new descriptor and mapping) and
        hold it open (a kind without ``KEEPS_FD`` has its descriptor closed at once).
        Owner thread. Raises StoreError (DiskFull as ``make`` raises it) if the file
        cannot be made, after giving back half of the cache if the process ran out
        of descriptors or mappings."""
        with self._lock:
            self._make_room(f)
            try:
                fd, mm = self._retry_out_of_files(make)
            except OSError as exc:
                raise StoreError(f"cannot create {f.path}: {exc.strerror}") from exc
            if not f.KEEPS_FD:
                os.close(fd)
                fd = -1
            self._install(f, fd, mm)

    def open(self, f: CachedFile) -> mmap.mmap:
        """``f``'s mapping, mapping it first if it is closed (and closing the coldest
        unpinned files past the budget). Owner thread. Raises StoreError if the file
        was discarded or cannot be opened."""
        with self._lock:
            mm = f.mm
            if mm is None:
                if f.gone:
                    raise StoreError(f"{f.path} was deleted")
                self._make_room(f)
                try:
                    self._retry_out_of_files(lambda: self._map(f))
                except OSError as exc:
                    raise StoreError(f"cannot open {f.path}: {exc.strerror}") from exc
                mm = f.mm
                assert mm is not None
            f.ref = True
            return mm

    def trim(self) -> None:
        """Close the coldest unpinned files until the budget holds again (files that
        worker threads opened pinned may have pushed it over). Owner thread."""
        with self._lock:
            self._evict_down_to(self.budget)

    def discard(self, f: CachedFile, unlink: bool = False) -> None:
        """Forget ``f`` for good (and delete it with ``unlink``). It is closed now, or
        by the last ``unpin`` if a worker thread holds it. Owner thread."""
        with self._lock:
            f.gone = True
            if f.mm is not None and f.pins == 0:
                self._close(f)
        if unlink:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f.path)

    def close_all(self) -> None:
        """Close every open file (the store is closing; no worker holds any)."""
        with self._lock:
            for f in list(self._clock):
                self._close(f)

    # ------------------------------------------------------------------ any thread

    def pin(self, f: CachedFile, load: bool = True) -> bool:
        """Hold ``f`` open until ``unpin``: nothing closes it meanwhile. A closed file is
        opened if ``load`` (past the budget if need be), else False is returned; False
        too if it was discarded. Raises StoreError if it cannot be opened."""
        with self._lock:
            if f.gone:
                return False
            if f.mm is None:
                if not load:
                    return False
                try:
                    self._map(f)
                except OSError as exc:
                    raise StoreError(f"cannot open {f.path}: {exc.strerror}") from exc
            f.pins += 1
            f.ref = True
            return True

    def unpin(self, f: CachedFile) -> None:
        with self._lock:
            f.pins -= 1
            if f.pins == 0 and f.gone and f.mm is not None:
                self._close(f)

    def sync(self, f: CachedFile, data_only: bool = False) -> None:
        """Make what was written to ``f`` durable: fdatasync/fsync its descriptor, or
        msync its mapping (which releases the GIL, as fsync does) when it keeps no
        descriptor. A closed file is synced through a descriptor opened for the
        purpose: its pages stay in the page cache after the mapping is gone. A
        discarded file needs nothing. Raises OSError."""
        if self.pin(f, load=False):
            try:
                if f.fd >= 0:
                    (os.fdatasync if data_only else os.fsync)(f.fd)
                else:
                    assert f.mm is not None
                    f.mm.flush()
            finally:
                self.unpin(f)
            return
        if f.gone:
            return
        try:
            fd = os.open(f.path, os.O_RDONLY)
        except FileNotFoundError:
            return  # deleted since: nothing left to make durable
        self.transient[f.KIND] += 1
        try:
            (os.fdatasync if data_only else os.fsync)(fd)
        finally:
            os.close(fd)

    def pread(self, f: CachedFile, size: int, offset: int) -> bytes | None:
        """``size`` bytes of ``f`` at ``offset`` read with pread(2) (a cold page blocks
        the calling worker, not the GIL holder); None if the file was discarded."""
        if not self.pin(f):
            return None
        try:
            if f.fd >= 0:
                return os.pread(f.fd, size, offset)
            assert f.mm is not None
            return f.mm[offset:offset + size]
        finally:
            self.unpin(f)

    # ------------------------------------------------------------------ internals (lock held)

    def _retry_out_of_files(self, attempt: Callable[[], _T]) -> _T:
        try:
            return attempt()
        except OSError as exc:
            if exc.errno not in _OUT_OF_FILES:
                raise
        # The process ran out of descriptors or mappings (the doors' sockets took
        # the rest): give back half of what the cache holds and try once more.
        self._evict_down_to(self.used // 2)
        return attempt()

    def _map(self, f: CachedFile) -> None:
        fd = os.open(f.path, os.O_RDWR)
        try:
            st = os.fstat(fd).st_size
            if st != f.size:
                raise StoreError(f"{f.path} is {st} bytes, expected {f.size}")
            mm = map_file(fd, f.size)
        except BaseException:
            os.close(fd)
            raise
        if not f.KEEPS_FD:
            os.close(fd)
            fd = -1
        self._install(f, fd, mm)

    def _install(self, f: CachedFile, fd: int, mm: mmap.mmap) -> None:
        if f.RANDOM:
            mm.madvise(mmap.MADV_RANDOM)
        f.fd, f.mm = fd, mm
        self._clock[f] = None
        self.used += slots_of(type(f))
        self.opens[f.KIND] += 1

    def _make_room(self, f: CachedFile) -> None:
        self._evict_down_to(self.budget - slots_of(type(f)))

    def _evict_down_to(self, target: int) -> None:
        while self.used > target:
            if not self._evict_one():
                return  # everything left is pinned: over budget until pins go

    def _evict_one(self) -> bool:
        clock = self._clock
        for _ in range(2 * len(clock)):
            f = next(iter(clock))
            if f.pins or f.ref:
                f.ref = False
                clock.move_to_end(f)
                continue
            try:
                self._close(f)
            except BufferError:  # a view of the mapping is alive: not now
                clock.move_to_end(f)
                continue
            self.evictions[f.KIND] += 1
            return True
        return False

    def _close(self, f: CachedFile) -> None:
        mm, fd = f.mm, f.fd
        if mm is not None:
            mm.close()  # raises BufferError (nothing changed) if a view is alive
        f.mm, f.fd = None, -1
        if fd >= 0:
            os.close(fd)
        if self._clock.pop(f, 0) is None:
            self.used -= slots_of(type(f))
