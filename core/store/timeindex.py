"""The time index of one queue: offsets by the records' own timestamps (Kafka's .timeindex).

The ConsumeQueue's store timestamps answer "what was stored after t" (LogAppendTime).
Kafka clients ask by CreateTime, the producer's timestamp, which need not grow
with the offset; Kafka's rule is "the first offset whose timestamp is >= t",
found through an index of the *largest timestamp seen so far*, which never
decreases and so can be searched. A record's timestamp here is a Kafka batch's
maxTimestamp (what Kafka indexes; a LogAppendTime batch carries the append time
there) and a native record's born timestamp.

Entries, 24 bytes, big-endian, one every ``INTERVAL_BYTES`` of the queue's
records (sparse, like Kafka's ``index.interval.bytes``)::

    max timestamp 8 | offset that first reached it 8 | next offset 8

"every record below *next offset* has a timestamp <= *max timestamp*, and
*offset* is where that maximum was first reached". A lookup of t takes the last
entry whose maximum is below t: no record before its *next offset* can answer, so
the store scans the records from there (at most about one interval before the
next entry, whose maximum is >= t) and then looks inside the record it finds
(a Kafka batch holds many records). The maximum and where it was reached also
answer ListOffsets' MAX_TIMESTAMP (-3).

Files: ``<store>/timeindex/<topic>/<queue>``, appended by the checkpoint (worker
thread) and fsynced before the checkpoint is written, like the ConsumeQueues. The
index is derived data: at recovery it is cut to the ConsumeQueue's truncation point
and the re-dispatch appends the rest; a queue whose file is missing (a data
directory older than the index) answers by scanning from the queue's start. The
entries live in memory (24 bytes per ``INTERVAL_BYTES``, 0.04 % of the data) and
are loaded on first use. Not done: dropping entries below the queue start when
retention moves it (they cost their bytes until the topic is deleted).
"""

from __future__ import annotations

import os
import shutil
import struct
import threading
from array import array
from bisect import bisect_left

ENTRY = struct.Struct(">qqq")
INTERVAL_BYTES = 64 * 1024  # records between entries; a lookup scans about this much


class TimeIndex:
    """One queue's entries (owner thread; ``flush`` in the checkpoint's thread)."""

    __slots__ = (
        "_at",
        "_bytes",
        "_lock",
        "_next",
        "_persisted",
        "_ts",
        "complete",
        "max_offset",
        "max_ts",
        "next_offset",
        "path",
    )

    def __init__(self, path: str) -> None:
        self.path = path
        self.max_ts = -1  # the largest timestamp noted so far
        self.max_offset = -1  # where it was first reached
        self.next_offset = 0  # the offset after the last record noted
        self._bytes = 0  # record bytes since the last entry
        self._ts = array("q")
        self._at = array("q")
        self._next = array("q")
        self._persisted = 0  # entries in the file
        self.complete = True  # False: records older than the index exist unindexed
        self._lock = threading.Lock()

    def load(self, bound: int, queue_min: int, queue_max: int) -> None:
        """Read the file, keeping entries wholly below ``bound`` (the ConsumeQueue's
        end after recovery cut it; later records are re-dispatched and noted)."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            raw = b""
            self.complete = queue_min == queue_max
        keep = 0
        for ts, at, nxt in ENTRY.iter_unpack(raw[:len(raw) - len(raw) % ENTRY.size]):
            if nxt > bound:
                break
            self._ts.append(ts)
            self._at.append(at)
            self._next.append(nxt)
            keep += 1
        if keep * ENTRY.size != len(raw):
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with open(self.path, "ab") as f:
                f.truncate(keep * ENTRY.size)
        self._persisted = keep
        if keep:
            self.max_ts, self.max_offset, self.next_offset = self._ts[-1], self._at[-1], \
                self._next[-1]

    def note(self, ts: int, offset: int, count: int, size: int) -> None:
        """A record of ``count`` messages at ``offset`` with timestamp ``ts``, appended."""
        if ts > self.max_ts:
            self.max_ts = ts
            self.max_offset = offset
        self.next_offset = offset + count
        self._bytes += size
        if self._bytes >= INTERVAL_BYTES:
            self._bytes = 0
            with self._lock:
                self._ts.append(self.max_ts)
                self._at.append(self.max_offset)
                self._next.append(self.next_offset)

    def scan_from(self, timestamp_ms: int) -> int | None:
        """The offset to scan from for the first record with timestamp >=
        ``timestamp_ms``; None: from the queue's start."""
        if not self.complete:
            return None
        i = bisect_left(self._ts, timestamp_ms)  # entries [0, i) have a maximum below it
        return self._next[i - 1] if i else None

    def flush(self) -> None:
        """Append the entries not yet in the file and fsync it (worker thread)."""
        with self._lock:
            n = len(self._ts)
            start = self._persisted
            if n == start:
                return
            data = b"".join(ENTRY.pack(self._ts[i], self._at[i], self._next[i])
                            for i in range(start, n))
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            os.pwrite(fd, data, start * ENTRY.size)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._persisted = n


class TimeIndexes:
    """Every queue's time index, created and loaded on first use."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.indexes: dict[tuple[str, int], TimeIndex] = {}
        self._bounds: dict[tuple[str, int], int] = {}  # recovery's cut, per queue

    def path(self, topic: str, queue_id: int) -> str:
        return os.path.join(self.directory, topic, str(queue_id))

    def set_bound(self, topic: str, queue_id: int, bound: int) -> None:
        """Recovery cut the queue to ``bound``: entries past it are dropped at load."""
        self._bounds[(topic, queue_id)] = bound

    def cut(self, topic: str, queue_id: int, bound: int) -> None:
        """Recovery cut the queue again (its tail was lost): drop what is past it."""
        key = (topic, queue_id)
        ti = self.indexes.pop(key, None)
        if ti is not None:
            ti.flush()
        self._bounds[key] = min(bound, self._bounds.get(key, bound))

    def get(self, topic: str, queue_id: int, queue_min: int, queue_max: int) -> TimeIndex:
        key = (topic, queue_id)
        ti = self.indexes.get(key)
        if ti is None:
            ti = self.indexes[key] = TimeIndex(self.path(topic, queue_id))
            ti.load(self._bounds.pop(key, queue_max), queue_min, queue_max)
        return ti

    def flush(self) -> None:
        for ti in list(self.indexes.values()):
            ti.flush()

    def drop_topic(self, topic: str) -> None:
        for key in [k for k in self.indexes if k[0] == topic]:
            del self.indexes[key]
        shutil.rmtree(os.path.join(self.directory, topic), ignore_errors=True)
