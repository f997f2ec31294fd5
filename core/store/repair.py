"""Damage and its repair: CommitLog ranges that hold no valid record, ConsumeQueue entries that
do not point at their record.

The CommitLog is the truth; ConsumeQueues are derived from it. Three things can
go wrong, and each is mended here without losing more than the damage took
(docs/storage.md, "Damage"):

- **A damaged CommitLog range** (a *hole*): bytes where no valid record starts.
  Records are self-delimiting and carry their own offset, so the record after the
  damage is found by searching for the next position where one validates
  (``CommitLog.find_next``); everything from there on is kept. The messages the
  damaged records held are *lost*: their ConsumeQueue entries are marked lost
  (``ConsumeQueue.mark_lost``, size LOST_SIZE, offsets kept), or written as lost
  entries where recovery had cut them, so queue offsets never move and every
  reader skips them. Each hole is logged at ERROR with its byte range and the
  messages it took, and counted (``DamageStats``: ``ferrymq_store_damaged_*``).
- **A damaged ConsumeQueue entry**: one that does not match the record where it
  points (size, magic, queue id, queue offset, physical offset), or breaks the
  queue's numbering. Its neighbours that do match (*anchors*) bound where its
  record lies in the log; walking the log between them (fixed fields only, cheap)
  finds this queue's records there, and the entries between the anchors are
  written again from them (``repair_run``).
- **Missing entries** (a ConsumeQueue file deleted or cut short): recovery meets a
  record whose queue offset is past the queue's end and fills the gap from the
  log the same way (``fill_gap``).

A record whose own CRC fails is lost, never served: it is only ever marked.

Threads: owner thread only (recovery's, then the event loop).
"""

from __future__ import annotations

import bisect
import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ...protocols import record as rec
from .commitlog import CommitLog, Damage, Head
from .consumequeue import LOST_SIZE, ConsumeQueue

log = logging.getLogger("ferrymq.store")

# The farthest the online repair of a ConsumeQueue walks the CommitLog between two
# anchors (fixed fields only: about a million records a second). Past it the
# entries are marked lost and the operator is told to run ``ferrymq store check
# --repair``, which rebuilds every queue from the log offline.
REPAIR_SCAN_BYTES = 1 << 30
# How far from a damaged entry its anchors are looked for, each way.
ANCHOR_SEARCH = 4096

# total size, magic, queue id, queue offset, physical offset, system flags, store
# timestamp: what an entry must match (the timestamp where the born host is IPv4).
_ENTRY_CHECK = struct.Struct(">ii4xi4xqqi16xq")
ENTRY_CHECK_SIZE = _ENTRY_CHECK.size

Entry6 = tuple[int, int, int, int, int, int]


def header_matches(data: bytes | memoryview, phys: int, size: int, queue_id: int,
                   base: int, ts: int) -> bool:
    """Whether ``data`` (at least ENTRY_CHECK_SIZE bytes read at CommitLog offset ``phys``)
    starts the record a ConsumeQueue entry (``phys``, ``size``, ``base``, store time
    ``ts``) of queue ``queue_id`` describes."""
    if len(data) < ENTRY_CHECK_SIZE:
        return False
    total, magic, qid, qoff, rphys, sys_flag, rts = _ENTRY_CHECK.unpack_from(data)
    return (total == size and magic == rec.MAGIC and qid == queue_id and qoff == base
            and rphys == phys and (rts == ts or bool(sys_flag & _V6)))


_V6 = rec.BORNHOST_V6_FLAG | rec.STOREHOST_V6_FLAG


@dataclass(frozen=True, slots=True)
class Hole:
    """A damaged CommitLog range: bytes ``[start, end)`` hold no valid record, and
    ``messages`` messages (in ``queues`` queues) were lost with it."""

    start: int
    end: int
    messages: int
    queues: int


@dataclass(slots=True)
class DamageStats:
    """What the store found damaged since it opened (metrics ``ferrymq_store_damaged_*``)."""

    ranges: int = 0  # damaged CommitLog ranges (holes) skipped
    bytes: int = 0  # bytes in them
    messages: int = 0  # messages lost: their entries are marked lost
    entries: int = 0  # ConsumeQueue entries found wrong and written again from the log
    index_entries: int = 0  # index entries that pointed at no record of their key


class Store(Protocol):
    """What the repairs use of the store (store.MessageStore)."""

    commitlog: CommitLog
    queues: dict[tuple[str, int], ConsumeQueue]
    dispatched_pos: int

    def queue(self, topic: str, queue_id: int) -> ConsumeQueue: ...
    def describe(self, r: rec.Record) -> tuple[int, int, list[tuple[str, int]]]: ...


class Repairs:
    """The store's damage handling (see the module docstring)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.stats = DamageStats()
        # Whether a record (topic, physical offset) belongs to the live incarnation
        # of its topic: a walk from far back must not take a deleted topic's records
        # for a re-created one's. The broker installs its rule.
        self.live: Callable[[str, int], bool] = lambda topic, phys: True

    # ------------------------------------------------------------ holes

    def hole(self, start: int, end: int, checkpoint: int,
             hints: list[tuple[int, tuple[str, int], Entry6]]) -> Hole:
        """Recovery met a damaged range ``[start, end)``: mark lost the entries that point
        into it (those below the ``checkpoint``, which recovery kept), write lost
        entries for the ones recovery cut past it (``hints``: the cut entries, sorted
        by CommitLog offset), log it and count it."""
        store = self.store
        lost = 0
        queues: set[tuple[str, int]] = set()
        if start < checkpoint:
            stop = min(end, checkpoint)
            for key, q in store.queues.items():
                n = mark_range_lost(q, start, stop)
                if n:
                    lost += n
                    queues.add(key)
        if end > checkpoint and hints:
            i = bisect.bisect_left(hints, (max(start, checkpoint),))
            while i < len(hints) and hints[i][0] < end:
                phys, key, e = hints[i]
                i += 1
                q = store.queue(*key)
                if e[2] == q.max_offset and e[3] > 0:
                    q.append_lost(phys, e[2], e[3], e[5], e[4])
                    lost += e[3]
                    queues.add(key)
        h = Hole(start, end, lost, len(queues))
        self.stats.ranges += 1
        self.stats.bytes += end - start
        self.stats.messages += lost
        log.error("CommitLog damaged: bytes %d..%d (%d bytes) hold no valid record; skipped to "
                  "the next valid record at %d, later records kept; %d message(s) in %d "
                  "queue(s) lost with it (their ConsumeQueue entries are marked lost)",
                  start, end, end - start, end, lost, len(queues))
        return h

    # ------------------------------------------------------------ checking entries

    def entry_ok(self, q: ConsumeQueue, i: int) -> bool:
        """Whether entry ``i`` is a live entry that matches the record where it points."""
        phys, size, base, count, _th, ts = q.entry(i)
        if size < rec.HEADER_SIZE or count < 1 or phys < 0:
            return False
        data = self.store.commitlog.read(phys, ENTRY_CHECK_SIZE)
        return data is not None and header_matches(data, phys, size, q.queue_id, base, ts)

    def damaged_runs(self, q: ConsumeQueue) -> list[tuple[int, int]]:
        """Runs ``(first, last)`` of entries that break the queue's own structure: zero or
        negative counts of live entries, a size of 0, offsets that do not continue
        the previous entry's, CommitLog offsets that go backwards. Reads the whole
        queue (40 bytes an entry): called once damage is suspected."""
        runs: list[tuple[int, int]] = []
        expect = None
        last_phys = last_ts = -1
        i = q.first_entry
        for phys, size, base, count, _th, ts in q.iter_entries(q.first_entry, q.next_entry):
            bad = (count < 0 or (size != LOST_SIZE and (size < rec.HEADER_SIZE or count < 1))
                   or phys < last_phys or ts < last_ts or (expect is not None and base != expect))
            if bad:
                if runs and runs[-1][1] >= i - 2:
                    runs[-1] = (runs[-1][0], i)
                else:
                    runs.append((i, i))
            else:
                expect = base + count
                last_phys = phys
                last_ts = ts
            i += 1
        return runs

    def check_queue(self, q: ConsumeQueue, why: str) -> int:
        """Find the damaged runs of a queue and repair each; returns how many entries
        were written again."""
        n = 0
        for a, b in self.damaged_runs(q):
            n += self.repair_run(q, a, b, why)
        return n

    # ------------------------------------------------------------ repairing entries

    def repair_run(self, q: ConsumeQueue, a: int, b: int, why: str) -> int:
        """Write entries ``a..b`` of ``q`` (and any next to them that do not match
        their records either) again from the CommitLog, between the nearest entries
        on each side that do match (the anchors). Records of the queue that the walk
        finds damaged, or does not find, become lost entries. Returns how many
        entries were written."""
        store = self.store
        cl = store.commitlog
        lo = a - 1
        while lo >= q.first_entry and lo > a - 1 - ANCHOR_SEARCH and not self.entry_ok(q, lo):
            lo -= 1
        if lo < q.first_entry or lo <= a - 1 - ANCHOR_SEARCH:
            lo = q.first_entry - 1  # no anchor before: from the start of the log
        hi = b + 1
        while hi < q.next_entry and hi < b + 1 + ANCHOR_SEARCH and not self.entry_ok(q, hi):
            hi += 1
        if hi >= b + 1 + ANCHOR_SEARCH:
            hi = q.next_entry  # no anchor after: to the end of the log
        if hi < q.next_entry:
            e = q.entry(hi)
            to_phys, stop_off, last_ts = e.physical_offset, e.base_offset, e.store_timestamp
        else:
            to_phys, stop_off, last_ts = store.dispatched_pos, None, 0
        if lo >= q.first_entry:
            e = q.entry(lo)
            from_phys, first_off, last_ts = e.physical_offset + e.size, e.base_offset + e.count, \
                e.store_timestamp
        else:
            from_phys, first_off = cl.min_offset, None
        slots = hi - lo - 1
        if to_phys - from_phys > REPAIR_SCAN_BYTES:
            found: list[Entry6] = []
            log.error("ConsumeQueue %s:%d: entries %d..%d are too far (%d bytes of log) to "
                      "rebuild online: marked lost; run `ferrymq store check --repair` on the "
                      "stopped broker to rebuild them", q.topic, q.queue_id, lo + 1, hi - 1,
                      to_phys - from_phys)
        else:
            found = self._records_of(q, from_phys, to_phys, first_off, stop_off)
        if first_off is None:
            first_off = found[0][2] if found else (
                max(0, stop_off - slots) if stop_off is not None else q.min_offset)
        new: list[Entry6] = []
        expected = first_off
        phys_at = from_phys
        for e6 in found:
            if e6[2] > expected:
                new.append((phys_at, LOST_SIZE, expected, e6[2] - expected, 0, last_ts))
            new.append(e6)
            expected = e6[2] + e6[3]
            phys_at = e6[0] + e6[1]
            last_ts = e6[5]
        if stop_off is not None and expected < stop_off:
            new.append((phys_at, LOST_SIZE, expected, stop_off - expected, 0, last_ts))
        lost = sum(e6[3] for e6 in new if e6[1] < 0)
        if hi < q.next_entry:
            new = _fit(new, slots, first_off, stop_off if stop_off is not None else expected,
                       from_phys, last_ts)
            for k, e6 in enumerate(new):
                q.put_entry(lo + 1 + k, e6)
        else:
            q.truncate_entries(lo + 1)
            for e6 in new:
                q.ready()
                q.append(*e6)
        self.stats.entries += len(new)
        self.stats.messages += lost
        log.error("ConsumeQueue %s:%d damaged (%s): entries %d..%d written again from the "
                  "CommitLog (%d record(s) found, %d message(s) lost)", q.topic, q.queue_id, why,
                  lo + 1, lo + len(new), sum(1 for e6 in new if e6[1] > 0), lost)
        return len(new)

    def fill_gap(self, q: ConsumeQueue, from_phys: int, to_phys: int, upto: int) -> int:
        """Recovery: the next record of ``q`` (at CommitLog offset ``to_phys``) has queue
        offset ``upto``, past the queue's end: the entries between were lost from the
        ConsumeQueue (a file deleted or cut short) or with a damaged range. Append
        them from the records the log holds from ``from_phys`` on, and lost entries
        for the rest. Returns the messages lost."""
        start_off = q.max_offset
        found = self._records_of(q, from_phys, to_phys, start_off, upto)
        expected = start_off
        phys_at = from_phys
        ts = 0
        lost = 0
        for e6 in found:
            if e6[2] > expected:
                q.append_lost(phys_at, expected, e6[2] - expected, ts)
                lost += e6[2] - expected
            q.ready()
            q.append(*e6)
            expected = e6[2] + e6[3]
            phys_at = e6[0] + e6[1]
            ts = e6[5]
        if expected < upto:
            q.append_lost(phys_at, expected, upto - expected, ts)
            lost += upto - expected
        self.stats.entries += len(found)
        self.stats.messages += lost
        log.error("ConsumeQueue %s:%d lacked offsets %d..%d (a file missing or cut short, or "
                  "a damaged range): %d record(s) found again in the CommitLog, %d message(s) "
                  "lost", q.topic, q.queue_id, start_off, upto - 1, len(found), lost)
        return lost

    def rebuild_queue(self, q: ConsumeQueue) -> int:
        """Recovery: a queue whose files were all lost (its directory is there, empty)
        gets its entries again from every record of it the log holds. Returns how
        many were found."""
        found = self._records_of(q, self.store.commitlog.min_offset, self.store.dispatched_pos,
                                 None, None)
        if not found:
            return 0
        q.reset_offsets(found[0][2])
        expected = found[0][2]
        lost = 0
        for e6 in found:
            if e6[2] > expected:
                q.append_lost(e6[0], expected, e6[2] - expected, e6[5])
                lost += e6[2] - expected
            q.ready()
            q.append(*e6)
            expected = e6[2] + e6[3]
        self.stats.entries += len(found)
        self.stats.messages += lost
        log.error("ConsumeQueue %s:%d had lost its files: %d entries built again from the "
                  "CommitLog (%d message(s) lost)", q.topic, q.queue_id, len(found), lost)
        return len(found)

    def _records_of(self, q: ConsumeQueue, from_phys: int, to_phys: int, first_off: int | None,
                    stop_off: int | None) -> list[Entry6]:
        """The entries of ``q``'s records between two CommitLog offsets, in order, with
        queue offsets in ``[first_off, stop_off)`` (when known): fixed fields are read
        for every record, and only this queue's are decoded (CRC checked; a record
        that fails is left out: lost)."""
        store = self.store
        cl = store.commitlog
        topic = q.topic.encode()
        qid = q.queue_id
        out: list[Entry6] = []
        expected = first_off
        for item in cl.walk(from_phys, to_phys, full=False):
            if type(item) is Damage:
                continue
            h: Head = item  # type: ignore[assignment]
            if h.queue_id != qid or h.topic != topic:
                continue
            if expected is not None and h.queue_offset < expected:
                continue
            if stop_off is not None and h.queue_offset >= stop_off:
                break
            if not self.live(q.topic, h.physical_offset):
                continue
            data = cl.peek(h.physical_offset, h.total_size)
            try:
                r = rec.decode(data, 0)
            except rec.RecordError:
                continue  # its CRC fails: lost
            count, th, _keys = store.describe(r)
            out.append((r.physical_offset, r.total_size, r.queue_offset, count, th,
                        r.store_timestamp))
            expected = r.queue_offset + count
        return out


def mark_range_lost(q: ConsumeQueue, start: int, stop: int) -> int:
    """Mark lost every entry of ``q`` whose record starts in CommitLog ``[start, stop)``;
    returns the messages newly marked."""
    if q.next_entry == q.first_entry or q.last_physical_end() <= start:
        return 0
    i = q.first_at_or_past(start)
    n = 0
    while i < q.next_entry:
        e = q.entry(i)
        if e.physical_offset >= stop:
            break
        if q.mark_lost(i):
            n += e.count
        i += 1
    return n


def _fit(entries: list[Entry6], slots: int, first_off: int, stop_off: int, phys: int,
         ts: int) -> list[Entry6]:
    """``entries`` (covering offsets ``[first_off, stop_off)`` in order) made exactly
    ``slots`` long: lost entries are split, or lost entries of no message appended,
    when they are fewer; when they are more (the anchors were wrong), the whole range
    becomes lost entries."""
    out = list(entries)
    if len(out) > slots:
        total = stop_off - first_off
        out = []
        off = first_off
        for k in range(slots):
            n = total // slots + (1 if k < total % slots else 0)
            out.append((phys, LOST_SIZE, off, n, 0, ts))
            off += n
        return out
    k = 0
    while len(out) < slots and k < len(out):
        p, size, base, count, th, t = out[k]
        if size < 0 and count > 1:
            out[k] = (p, size, base, 1, th, t)
            out.insert(k + 1, (p, size, base + 1, count - 1, th, t))
        else:
            k += 1
    while len(out) < slots:
        last = out[-1] if out else (phys, LOST_SIZE, first_off, 0, 0, ts)
        out.append((last[0], LOST_SIZE, last[2] + last[3], 0, 0, last[5]))
    return out
