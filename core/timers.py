"""Timers: a message with a delivery time becomes consumable at that time and not before.

The way of a timed message (docs/timers.md has the reasoning and the guarantees):

1. ``put`` sees a delivery property (``TIMER_DELIVER_MS``, ``TIMER_DELAY_MS``,
   ``TIMER_DELAY_SEC`` or a ``DELAY`` level) and hands the message here. It is
   appended, durably, to the system topic ``RMQ_SYS_WHEEL_TIMER`` (queue 0)
   with ``REAL_TOPIC``/``REAL_QID`` naming where it goes and ``TIMER_OUT_MS``
   its delivery time; that ConsumeQueue entry's tag-hash field carries the
   delivery time, so the timer queue alone (no record reads) rebuilds the wheel.
2. The entry is linked into the on-disk wheel (``core/timerwheel.py``) under
   the second it is due, or under its *roll point* when it is due later than
   ``roll_window_s`` after it was stored: there it is re-appended to the
   CommitLog (rolled), so retention never removes a pending timer.
3. Ahead of time (one second, plus the time the slot's size needs) the
   preparer reads a slot, reads the timer records, and builds their delivery
   records grouped by (due ms, topic, queue, ...) as ready-made native batch
   members. At the due millisecond the firer appends each group as one record
   (a batch when several fall due together), and only later, in the
   background, indexes their keys: 100,000 timers due at the same instant cost
   about a memcpy and a CRC each at that instant.
4. A delivered message carries ``TIMER_FROM`` (its timer record's CommitLog
   offset). The timer checkpoint records the processed-up-to second, the
   CommitLog offset from which deliveries may not be covered by it, and the
   timer queue offset up to which the wheel is written. At start the CommitLog
   is scanned from that offset for ``TIMER_FROM`` so that a timer processed
   just before a crash is not delivered again, and the timer queue is
   re-linked from that queue offset so that none is lost.

Cancelling writes a cancel record into the timer topic (its ConsumeQueue
tag-hash is ``-(target offset + 1)``) and flags the wheel entry.

Threads: all of it runs on the broker's event loop, except the checkpoint's
fsyncs (a worker thread).
"""

from __future__ import annotations

import heapq
import itertools
import json
import logging
import math
import os
import struct
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..protocols import record as rec
from .config import DELAY_LEVELS_MS, MAX_DELAY_LEVEL, BrokerConfig, parse_delay_levels
from .errors import FerryError, InvalidDelay, InvalidMessage, MessageTooLarge, TimerNotFound
from .filter import TAG_HASH_MIXED, tag_hash
from .message import (
    KEY_SEPARATOR,
    PROPERTY_DELAY_LEVEL,
    PROPERTY_KEYS,
    PROPERTY_REAL_QUEUE_ID,
    PROPERTY_REAL_TOPIC,
    PROPERTY_TIMER_DELAY_MS,
    PROPERTY_TIMER_DELAY_SEC,
    PROPERTY_TIMER_DELIVER_MS,
    PROPERTY_UNIQ_KEY,
    Message,
    PutResult,
    now_ms,
    parse_offset_message_id,
)
from .paths import Paths
from .store.files import atomic_write, read_json_state
from .store.store import ANY_MEMBER, MessageStore, client_id_prefix
from .timerwheel import Slot, TimerWheel, WheelCorrupt

__all__ = ["DELAY_LEVELS_MS", "MAX_DELAY_LEVEL", "TimerService", "parse_delay_levels",
           "parse_delivery"]

log = logging.getLogger("ferrymq.timers")

TIMER_TOPIC = "RMQ_SYS_WHEEL_TIMER"  # RocketMQ 5's timer topic (rmq_sys_wheel_timer), upper-cased
PROPERTY_TIMER_OUT_MS = "TIMER_OUT_MS"  # RocketMQ 5: the delivery time, on timer and delivered copies
PROPERTY_TIMER_FROM = "TIMER_FROM"  # CommitLog offset of the timer record a copy came from
PROPERTY_TIMER_CANCEL = "TIMER_CANCEL"  # on a cancel record: the offset of the cancelled timer

REQUEST_PROPERTIES = (PROPERTY_TIMER_DELIVER_MS, PROPERTY_TIMER_DELAY_MS,
                      PROPERTY_TIMER_DELAY_SEC, PROPERTY_DELAY_LEVEL)
"""The properties that ask for delayed delivery (docs/timers.md maps each door's names)."""

# Removed from a timed message before it is stored: the request (it is answered)
# and anything that would confuse the timer's own bookkeeping.
_STRIP = frozenset((*REQUEST_PROPERTIES, PROPERTY_REAL_TOPIC, PROPERTY_REAL_QUEUE_ID,
                    PROPERTY_TIMER_OUT_MS, PROPERTY_TIMER_FROM, PROPERTY_TIMER_CANCEL))

_TOPIC_BYTES = TIMER_TOPIC.encode()
_OUT_MARK = b"TIMER_OUT_MS\x01"
_FROM_MARK = b"TIMER_FROM\x01"
_HEADER = rec.HEADER
_HEADER_SIZE = rec.HEADER_SIZE
_POS_STORE_TS = 56  # record header offset of the store timestamp (IPv4 born host)
_Q = struct.Struct(">q")
_MEMBER = struct.Struct(">iiiii")  # batch member head: total, magic, crc, flag, body length
_MEMBER_FLAG_BLEN = struct.Struct(">ii")
_U16 = struct.Struct(">H")
_PAIR = struct.Struct(">qq")

PREPARE_CHUNK = 500  # timer records read per step before yielding (~3 ms on a slow core)
WALK_CHUNK = 5000  # wheel entries walked per step before yielding (~3 ms)
INDEX_STEP = 500  # keys of delivered messages indexed per step before yielding
INDEX_DELAY_S = 0.01  # the indexer starts this long after the deliveries that woke it
LOOKAHEAD_MS = 1000  # a slot is prepared at least this long before its second starts
MAX_LEAD_MS = 10_000
MAX_COST_US = 30.0  # per timer, for the lead: a chunk timed across a GC pause must not inflate it
SCAN_SPAN_S = 3600  # the preparer looks this far ahead for the next non-empty slot
IDLE_WAKE_S = 60.0  # an idle preparer still wakes this often, so processed time follows the clock
MAX_BATCH_MEMBERS = 1024  # members per delivery record
MAX_BATCH_BYTES = 1 << 20
REBUILD_SLACK_S = 600  # extra seconds of the timer queue re-read after a damaged wheel
LATENESS_BUCKETS_MS = 10_000

GroupKey = tuple[str, int, int, int, bytes]
"""(real topic, queue id, reconsume times, system flags, born host): one delivery record each."""


def parse_delivery(props: Mapping[str, str], now: int, max_delay_ms: int,
                   levels: Sequence[int] = DELAY_LEVELS_MS) -> int | None:
    """The absolute delivery time (ms) a message asks for, or None for "now".

    Exactly one of ``TIMER_DELIVER_MS`` (absolute ms since the epoch; a time in
    the past means now), ``TIMER_DELAY_MS``, ``TIMER_DELAY_SEC`` or ``DELAY`` (a
    level 1-18; 0 means none) may be set, as a decimal integer. Raises
    InvalidDelay for anything else: two of them, a non-integer, a negative
    value, a level outside 0-18, or a time beyond ``max_delay_ms`` from now.
    ``levels`` are the 18 delay levels' lengths (the broker's ``delay_levels``)."""
    found = [k for k in REQUEST_PROPERTIES if k in props]
    if not found:
        return None
    if len(found) > 1:
        raise InvalidDelay(f"set one of {', '.join(REQUEST_PROPERTIES)}, "
                           f"not {' and '.join(found)}")
    name = found[0]
    raw = props[name]
    text = raw.strip() if isinstance(raw, str) else ""
    if not (text.isdigit() or (text[:1] == "-" and text[1:].isdigit())) or len(text) > 19:
        raise InvalidDelay(f"{name} must be a decimal integer, not {raw!r}")
    value = int(text)
    if value < 0:
        raise InvalidDelay(f"{name} must not be negative ({value})")
    if name == PROPERTY_DELAY_LEVEL:
        if value > MAX_DELAY_LEVEL:
            raise InvalidDelay(f"DELAY is a level 1-{MAX_DELAY_LEVEL} (0: none), not {value}")
        return None if value == 0 else now + levels[value - 1]
    if name == PROPERTY_TIMER_DELIVER_MS:
        at = value
    elif name == PROPERTY_TIMER_DELAY_MS:
        at = now + value
    else:
        at = now + value * 1000
    if at - now > max_delay_ms:
        raise InvalidDelay(f"{name}={value} lies {(at - now) / 86_400_000:.1f} days ahead; the "
                           f"broker's horizon is {max_delay_ms / 86_400_000:.1f} days")
    return at


_ID_PREFIX = os.urandom(8).hex().upper()
_id_counter = itertools.count(time.time_ns() // 1000)


def strip_timer_properties(props: Mapping[str, str]) -> dict[str, str]:
    """The properties of a message about to become a timer, without the request
    (it is answered) and without anything that names the timer's own bookkeeping
    (``TIMER_FROM`` and friends must only ever be written by this module)."""
    return {k: v for k, v in props.items() if k not in _STRIP}


def new_message_id() -> str:
    """A 32-hex-digit client message id (RocketMQ's UNIQ_KEY shape) for a timed or
    transactional message that came without one, so the id its producer gets back
    is the id its consumers see: a random per-process prefix and a counter that
    starts at the start time in µs (uuid4 cost a tenth of a timer put)."""
    return f"{_ID_PREFIX}{next(_id_counter):016X}"


def _prop(raw: bytes, name1: bytes, mid: bytes) -> str | None:
    """The value of a property in encoded form (``name1`` = b"NAME\\x01", ``mid`` =
    b"\\x02NAME\\x01"), or None."""
    if raw.startswith(name1):
        i = len(name1)
    else:
        i = raw.find(mid)
        if i < 0:
            return None
        i += len(mid)
    j = raw.find(b"\x02", i)
    return raw[i:j if j >= 0 else len(raw)].decode("utf-8", "replace")


def _member_keys(member: bytes) -> tuple[str | None, list[str]]:
    """(client id, KEYS) of one batch member."""
    blen = _MEMBER_FLAG_BLEN.unpack_from(member, 12)[1]
    props = member[22 + blen:]
    uniq = _prop(props, _UNIQ1, _UNIQ2) if _UNIQ1 in props else None
    keys: list[str] = []
    if _KEYS1 in props:
        ks = _prop(props, _KEYS1, _KEYS2)
        keys = [k for k in (ks.split(KEY_SEPARATOR) if ks else ()) if k]
    return uniq, keys


_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")
_TAGS1, _TAGS2 = b"TAGS\x01", b"\x02TAGS\x01"
_UNIQ1, _UNIQ2 = b"UNIQ_KEY\x01", b"\x02UNIQ_KEY\x01"
_KEYS1, _KEYS2 = b"KEYS\x01", b"\x02KEYS\x01"


def timer_from_offsets(data: bytes) -> Iterator[int]:
    """Every ``TIMER_FROM`` value in a record's bytes (its properties, or its batch
    members' properties)."""
    i = data.find(_FROM_MARK)
    while i >= 0:
        # A name that merely ends in TIMER_FROM (preceded by a name character) is not ours.
        if i == 0 or data[i - 1] not in _NAME_CHARS:
            j = data.find(b"\x02", i)
            digits = data[i + len(_FROM_MARK):j]
            if digits.isdigit():
                yield int(digits)
        i = data.find(_FROM_MARK, i + 1)


def iter_records(store: Any, start: int) -> Iterator[tuple[int, bytes]]:
    """(CommitLog offset, record bytes) of every record from ``start`` to the end of
    what is dispatched, following blank records into the next segment."""
    cl = store.commitlog
    end = store.dispatched_pos
    pos = max(start, cl.min_offset)
    while pos < end:
        head = cl.read(pos, 8)
        if head is None:
            return
        size, magic = rec.peek_size(head, 0)
        if magic == rec.BLANK_MAGIC:
            pos += size
            continue
        if magic != rec.MAGIC or size <= 0:
            log.error("unreadable record at CommitLog offset %d while scanning", pos)
            return
        data = cl.read(pos, size)
        if data is None:
            return
        yield pos, data
        pos += size


@dataclass(frozen=True, slots=True)
class TimerStats:
    """What admin and the bench read: counts since start and lateness percentiles."""

    pending: int  # entries linked in the wheel (cancelled ones until their second passes)
    prepared: int  # deliveries built ahead of time, waiting for their millisecond
    scheduled: int
    delivered: int
    cancelled: int
    rolled: int
    dropped: int  # due but undeliverable: topic gone, record lost (logged)
    processed_until_ms: int
    lateness_p50_ms: float | None
    lateness_p99_ms: float | None
    lateness_max_ms: int | None
    log_bytes: int


@dataclass(frozen=True, slots=True)
class CancelResult:
    message_id: str
    timer_offset: int  # CommitLog offset of the cancelled timer record
    deliver_ms: int


class _Batch:
    """Deliveries due at the same millisecond for the same queue, built ahead of time
    as the body of one native batch record: at the due instant appending it is a
    CRC and a copy. ``index`` holds (timer offset, end of member in ``body``) per
    member. Both are bytearrays, which the garbage collector does not track: a
    second of 100,000 sparse timers would otherwise hold half a million tracked
    objects and make every full collection take hundreds of milliseconds
    (measured with ``ferrymq bench timers`` and gc callbacks). ``prev`` links the
    full batches of the same group, newest first."""

    __slots__ = ("body", "born_ts", "index", "mixed", "prev", "tag")

    def __init__(self, born_ts: int, prev: _Batch | None = None) -> None:
        self.body = bytearray()
        self.index = bytearray()
        self.born_ts = born_ts
        self.tag: str | None = None
        self.mixed = False
        self.prev = prev

    @property
    def count(self) -> int:
        return len(self.index) >> 4

    def add(self, phys: int, member: bytes, tag: str | None) -> None:
        if not self.index:
            self.tag = tag
        elif tag != self.tag:
            self.mixed = True
        self.body += member
        self.index += _PAIR.pack(phys, len(self.body))

    def offsets(self) -> list[int]:
        return [phys for phys, _end in _PAIR.iter_unpack(self.index)]

    def member(self, i: int) -> bytes:
        start = _PAIR.unpack_from(self.index, (i - 1) << 4)[1] if i else 0
        return bytes(self.body[start:_PAIR.unpack_from(self.index, i << 4)[1]])

    def without(self, cancelled: set[int]) -> _Batch:
        """A copy without the cancelled members."""
        out = _Batch(self.born_ts)
        for i, phys in enumerate(self.offsets()):
            if phys not in cancelled:
                out.add(phys, self.member(i), self.tag)
        out.mixed = self.mixed
        return out

    def chain(self) -> list[_Batch]:
        """This batch and the full ones before it, oldest first."""
        out = []
        b: _Batch | None = self
        while b is not None:
            out.append(b)
            b = b.prev
        out.reverse()
        return out


class _Slot:
    """One second of the wheel read into memory: its deliveries by due millisecond."""

    __slots__ = ("cancelled", "deferred", "due", "first_fire_pos", "items", "preparing",
                 "relinks", "second", "seen")

    def __init__(self, second: int) -> None:
        self.second = second
        self.due: dict[int, dict[GroupKey, _Batch]] = {}  # the newest batch of each group
        self.items = 0
        self.relinks: list[tuple[int, int, int, int]] = []  # (deliver ms, offset, size, stored s)
        self.deferred: list[tuple[int, int, int, int]] = []  # a later lap's inserts, after the clear
        self.cancelled: set[int] = set()
        self.seen: set[int] = set()
        self.first_fire_pos: int | None = None
        self.preparing = False


class _Lateness:
    """Delivery lateness (store time - due time) as a histogram in 1 ms buckets."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.buckets = [0] * (LATENESS_BUCKETS_MS + 1)
        self.count = 0
        self.max: int | None = None

    def add(self, late_ms: int, n: int) -> None:
        late_ms = max(0, late_ms)
        self.buckets[min(late_ms, LATENESS_BUCKETS_MS)] += n
        self.count += n
        if self.max is None or late_ms > self.max:
            self.max = late_ms

    def percentile(self, p: float) -> float | None:
        if not self.count:
            return None
        rank = math.ceil(self.count * p / 100)
        seen = 0
        for ms, n in enumerate(self.buckets):
            seen += n
            if seen >= rank:
                return float(ms)
        return float(LATENESS_BUCKETS_MS)


class TimerService:
    """The broker's timers; the Broker owns one and calls it (see the module docstring).
    Timed messages enter and leave through the write path (``paths``); the timer
    records themselves are appended to the store directly."""

    def __init__(self, cfg: BrokerConfig, store: MessageStore, paths: Paths) -> None:
        self.paths = paths
        self.store = store
        self.directory = os.path.join(cfg.data_dir, "timer")
        self.wheel = TimerWheel(self.directory, cfg.timer_wheel_slots,
                                cfg.timer_log_segment_entries)
        self.clock: Callable[[], int] = now_ms  # wall clock in ms; tests replace it
        self.max_delay_ms = cfg.timer_max_delay_ms
        self.levels = parse_delay_levels(cfg.delay_levels)
        self.roll_s = cfg.roll_window_s
        self.prepare_limit = cfg.timer_prepare_limit
        self.checkpoint_interval = cfg.checkpoint_interval_ms / 1000
        self.idle_wake_s = IDLE_WAKE_S
        self.max_message_size = cfg.max_message_size
        self.max_batch_bytes = min(MAX_BATCH_BYTES, cfg.max_message_size)
        self.processed_s = 0  # every slot before this second is done
        self.prepared_upto_s = 0  # every slot before this second has been read
        self.slots: dict[int, _Slot] = {}
        self._due_heap: list[tuple[int, int]] = []  # (due ms, slot second)
        self._prepared_items = 0
        self._skip: set[int] = set()  # timers processed before the last stop (start-up scan)
        self._skip_until_s = 0
        self._dedupe_floor: int | None = None  # keep the scan's start until the catch-up is done
        # (record offset, store time, the batch appended there, first member not indexed,
        # client id prefixes indexed for it so far)
        self._index_backlog: deque[tuple[int, int, _Batch, int, set[str]]] = deque()
        self._missing_topics: set[str] = set()
        self._preparer_target = 0
        self._wake_preparer = trio.Event()
        self._wake_firer = trio.Event()
        self._wake_indexer = trio.Event()
        self._cost_us = 10.0  # measured cost of preparing one timer (EWMA)
        self._open = False
        self.lateness = _Lateness()
        self.scheduled = self.delivered = self.cancelled = self.rolled = self.dropped = 0

    # ================================================================ properties

    @staticmethod
    def wants_timer(props: Mapping[str, str]) -> bool:
        return any(k in props for k in REQUEST_PROPERTIES)

    def _slot_for(self, deliver_ms: int, stored_s: int) -> int:
        return min(deliver_ms // 1000, stored_s + self.roll_s)

    # ================================================================ put

    async def put(self, m: Message) -> PutResult:
        """Store a message that carries a delivery property (see ``parse_delivery``):
        delivered at once if its time has come, else kept as a timer. For a timer
        the PutResult names the destination topic and queue, ``queue_offset`` is -1
        (assigned at delivery) and the offset message id is the timer record's."""
        paths = self.paths
        now = self.clock()
        deliver = parse_delivery(m.properties, now, self.max_delay_ms, self.levels)
        clean = strip_timer_properties(m.properties)
        if deliver is None or deliver <= now:
            return await paths.put(m._replace(properties=clean))
        t = await paths.topic_for_put(m.topic)
        if len(m.body) > self.max_message_size:
            raise MessageTooLarge(f"message body is {len(m.body)} bytes; the maximum is "
                                  f"{self.max_message_size}")
        qid = paths.queue_for(t, m.queue_id)
        uniq = clean.get(PROPERTY_UNIQ_KEY)
        if not uniq:
            uniq = clean[PROPERTY_UNIQ_KEY] = new_message_id()
        await paths.system_topic(TIMER_TOPIC)
        r = self.append_timer(m, clean, t.name, qid, deliver)
        await paths.after_put(r)
        return PutResult(t.name, qid, -1, 1, r.physical_offset, r.store_timestamp, r.store_host,
                         (uniq,))

    def append_timer(self, m: Message, clean: Mapping[str, str], topic: str, qid: int,
                     deliver: int, rolled_from: int | None = None,
                     prepared_offset: int = 0, link: bool = True) -> PutResult:
        """Append the timer record and link it (synchronous: no yield between the two).
        ``clean`` are the properties without the request ones; ``prepared_offset``
        names the half of a committed transactional message."""
        suffix = b"TIMER_OUT_MS\x01%d\x02" % deliver
        if rolled_from is not None:
            suffix += b"TIMER_FROM\x01%d\x02" % rolled_from
        suffix += b"REAL_TOPIC\x01" + topic.encode() + b"\x02REAL_QID\x01%d\x02" % qid
        try:
            raw = rec.encode_properties(clean) + suffix
        except UnicodeEncodeError as exc:
            raise InvalidMessage(f"properties are not encodable: {exc}") from exc
        keys = [(k, 0) for k in clean.get(PROPERTY_KEYS, "").split(KEY_SEPARATOR) if k]
        uniq = clean.get(PROPERTY_UNIQ_KEY)
        if uniq:
            keys.append((uniq, 0))
        r = self.store.append(
            TIMER_TOPIC, 0, m.body, raw, m.flag, m.sys_flag & ~rec.FORMAT_MASK, m.born_timestamp,
            m.born_host, m.reconsume_times, prepared_offset, 1, deliver, keys, (uniq,))
        size = self.store.dispatched_pos - r.physical_offset
        self.scheduled += 1
        if link:
            self._link(deliver, r.physical_offset, size, r.store_timestamp // 1000, r.queue_offset)
        return r

    # ================================================================ linking

    def _link(self, deliver: int, phys: int, size: int, stored_s: int,
              qoff: int | None = None) -> None:
        """Put a timer into the wheel under its slot; if that second has been read
        already, also into memory. Never into a processed second."""
        slot_s = max(self._slot_for(deliver, stored_s), self.processed_s)
        if slot_s < self.prepared_upto_s:
            self.wheel.insert(slot_s, deliver, phys, size)  # for a crash before it fires
            slot = self.slots.get(slot_s)
            if slot is None:
                slot = self.slots[slot_s] = _Slot(slot_s)
            slot.seen.add(phys)
            if deliver // 1000 > slot_s:
                slot.relinks.append((deliver, phys, size, stored_s))
            else:
                self._take_record(slot, deliver, phys, size)
                self._wake_firer.set()
            return
        span = self.prepared_upto_s - self.processed_s
        if span > 0:
            # The ring index of slot_s may belong to a second that is read but not
            # done: that second's clear would wipe this later lap. Hold it until then.
            same = self.processed_s + ((slot_s - self.processed_s) & self.wheel.mask)
            held = self.slots.get(same) if same < self.prepared_upto_s else None
            if held is not None:
                held.deferred.append((deliver, phys, size, stored_s))
                return
        self.wheel.insert(slot_s, deliver, phys, size)
        if slot_s < self._preparer_target:
            self._wake_preparer.set()

    # ================================================================ preparing

    def _lead_ms(self, count: int) -> int:
        """How long before its second a slot of ``count`` timers is read."""
        cost = min(self._cost_us, MAX_COST_US)
        return min(MAX_LEAD_MS, LOOKAHEAD_MS + int(count * cost * 2 / 1000))

    async def _preparer(self) -> None:
        wheel = self.wheel
        while True:
            s = self.prepared_upto_s
            now = self.clock()
            now_s = now // 1000
            nxt = next(wheel.nonempty_slots(s, s + SCAN_SPAN_S), None)
            target = nxt if nxt is not None else s + SCAN_SPAN_S
            count = wheel.count(target) if nxt is not None else 0
            start_at = target * 1000 - self._lead_ms(count)
            backlog = self._prepared_items and self._prepared_items + count > self.prepare_limit
            if now < start_at or backlog:
                if now_s > s:
                    # Empty seconds in the past are read by definition; processed time follows.
                    self.prepared_upto_s = min(target, now_s)
                self._preparer_target = target
                self._wake_preparer = trio.Event()
                wait_until = now + self.idle_wake_s * 1000 if backlog else \
                    min(start_at, now + self.idle_wake_s * 1000)
                await self._sleep_until(wait_until, self._wake_preparer)
                self._preparer_target = 0
                self._wake_firer.set()  # processed time may move
                continue
            if nxt is None:
                self.prepared_upto_s = target  # a whole span of empty seconds, all in the past
                continue
            # From here on a new timer for this second is taken in memory (the list
            # below ends where it starts now), so the list can be walked in parts.
            n, count = wheel.head(target)
            self.prepared_upto_s = target + 1
            slot = self.slots.get(target)
            if slot is None:
                slot = self.slots[target] = _Slot(target)
            slot.preparing = True
            try:
                entries: list[Slot] = []
                while n >= 0:
                    try:
                        n = wheel.walk_part(target, n, WALK_CHUNK, entries)
                    except WheelCorrupt as exc:
                        # Never stall the wheel on one bad slot (the lesson of apache/rocketmq
                        # #1568): keep what could be read, count the rest as lost, say so.
                        log.error("timer slot %d is damaged (%s); timers lost", target, exc)
                        self.dropped += max(0, count - len(entries))
                        break
                    await trio.sleep(0)
                entries.reverse()  # oldest first: timers due at the same ms go out in arrival order
                for i in range(0, len(entries), PREPARE_CHUNK):
                    t0 = time.perf_counter()
                    chunk = entries[i:i + PREPARE_CHUNK]
                    for e in chunk:
                        self._take(slot, e)
                    self._cost_us = 0.8 * self._cost_us + 0.2 * (
                        (time.perf_counter() - t0) * 1e6 / len(chunk))
                    if self._missing_topics:
                        await self._ensure_topics()
                    self._wake_firer.set()
                    await trio.sleep(0)
            finally:
                slot.preparing = False
            self._wake_firer.set()

    def _take(self, slot: _Slot, e: Slot) -> None:
        _number, deliver, phys, size, cancelled = e
        if cancelled or phys in slot.seen or phys in self._skip:
            return
        slot.seen.add(phys)
        d_s = deliver // 1000
        if d_s < self.processed_s:
            return  # a stale entry of a second that was done (a duplicate after a crash)
        if d_s > slot.second:
            head = self.store.commitlog.read(phys + _POS_STORE_TS, 8)
            stored_s = _Q.unpack(head)[0] // 1000 if head else slot.second
            slot.relinks.append((deliver, phys, size, stored_s))
            return
        self._take_record(slot, deliver, phys, size)

    def _take_record(self, slot: _Slot, deliver: int, phys: int, size: int) -> None:
        prepared = self._prepare_record(deliver, phys, size)
        if prepared is None:
            self.dropped += 1
            return
        key, member, tag, born_ts = prepared
        groups = slot.due.get(deliver)
        if groups is None:
            groups = slot.due[deliver] = {}
            heapq.heappush(self._due_heap, (deliver, slot.second))
        batch = groups.get(key)
        if batch is None:
            batch = groups[key] = _Batch(born_ts)
            if self.paths.topic_config(key[0]) is None:
                self._missing_topics.add(key[0])
        elif len(batch.index) >= MAX_BATCH_MEMBERS << 4 \
                or len(batch.body) + len(member) > self.max_batch_bytes:
            batch = groups[key] = _Batch(born_ts, batch)
        batch.add(phys, member, tag)
        slot.items += 1
        self._prepared_items += 1

    def _prepare_record(self, deliver: int, phys: int, size: int
                        ) -> tuple[GroupKey, bytes, str | None, int] | None:
        """Read a timer record and build its delivery as a batch member, working on
        the encoded bytes (a full decode costs several times as much)."""
        data = self.store.commitlog.read(phys, size)
        if data is None:
            log.error("timer record at CommitLog offset %d is gone (retention?); dropped", phys)
            return None
        (total, magic, _crc, _qid, flag, _qoff, rphys, sys_flag, born_ts, born_host, _sts, _sh,
         reconsume, _prep, blen) = _HEADER.unpack_from(data)
        p = _HEADER_SIZE + blen
        tlen = data[p] if p < len(data) else 0
        if (total != size or magic != rec.MAGIC or rphys != phys
                or data[p + 1:p + 1 + tlen] != _TOPIC_BYTES):
            log.error("no timer record at CommitLog offset %d (the log was cut after a crash?); "
                      "dropped", phys)
            return None
        props = data[p + 3 + tlen:]
        cut = props.rfind(_OUT_MARK)
        if cut < 0:
            log.error("timer record at CommitLog offset %d has no TIMER_OUT_MS; dropped", phys)
            return None
        parts = props[cut:].split(b"\x02")
        try:
            real_topic = parts[-3][len(b"REAL_TOPIC\x01"):].decode()
            real_qid = int(parts[-2][len(b"REAL_QID\x01"):])
        except (IndexError, ValueError, UnicodeDecodeError):
            log.error("timer record at CommitLog offset %d is malformed; dropped", phys)
            return None
        keep = props[:cut]
        dprops = keep + b"TIMER_OUT_MS\x01%d\x02TIMER_FROM\x01%d\x02" % (deliver, phys)
        body = data[_HEADER_SIZE:p]
        member = b"".join((_MEMBER.pack(22 + blen + len(dprops), rec.MAGIC, 0, flag, blen), body,
                           _U16.pack(len(dprops)), dprops))
        tag = _prop(keep, _TAGS1, _TAGS2) if _TAGS1 in keep else None
        # A delivery is a plain message: a committed transaction's flags stay on its timer
        # record (where the start-up scan looks for commits), not on the copy.
        flags = sys_flag & ~(rec.FORMAT_MASK | rec.TRANSACTION_MASK)
        return (real_topic, real_qid, reconsume, flags, born_host), member, tag, born_ts

    async def _ensure_topics(self) -> None:
        """Auto-create destination topics now, not at the due instant (creating one
        writes topics.json)."""
        missing, self._missing_topics = self._missing_topics, set()
        for topic in missing:
            try:
                await self.paths.topic_for_put(topic)
            except FerryError as exc:
                log.error("timers due for topic %s cannot be delivered: %s", topic, exc)

    # ================================================================ firing

    async def _firer(self) -> None:
        paths = self.paths
        while True:
            self._advance_done()
            now = self.clock()
            heap = self._due_heap
            wake = self._wake_firer = trio.Event()
            if heap and heap[0][0] <= now:
                touched = self._fire_due(now)
                try:
                    await paths.wait_durable()
                except FerryError as exc:  # a failed fsync: the store refuses writes now
                    log.error("timer deliveries may not be durable: %s", exc)
                for topic in touched:
                    paths.wake(topic)
                if self._index_backlog:
                    self._wake_indexer.set()
                if self._prepared_items < self.prepare_limit:
                    self._wake_preparer.set()
                await trio.sleep(0)
                continue
            until = heap[0][0] if heap else now + self.idle_wake_s * 1000
            first = self.slots.get(min(self.slots)) if self.slots else None
            if first is not None and not first.due and not first.preparing:
                # Its deliveries all went out: it is done (and its timers that are
                # due later are linked again) when its second ends.
                until = min(until, (first.second + 1) * 1000)
            await self._sleep_until(max(until, now + 1), wake)

    def _fire_due(self, now: int) -> set[str]:
        heap = self._due_heap
        touched: set[str] = set()
        while heap and heap[0][0] <= now:
            due, second = heapq.heappop(heap)
            slot = self.slots.get(second)
            groups = slot.due.pop(due, None) if slot is not None else None
            if not groups:
                continue
            for key, newest in groups.items():
                batches = newest.chain()
                try:
                    self._append_group(slot, due, key, batches)  # type: ignore[arg-type]
                except FerryError as exc:
                    # The store refuses writes (failed fsync, full disk): keep the
                    # deliveries not appended yet and try again in a second.
                    log.error("timer delivery to %s failed (%s); retrying", key[0], exc)
                    retry = now + 1000
                    later = slot.due.setdefault(retry, {})  # type: ignore[union-attr]
                    for b in batches:
                        b.prev = later.get(key)
                        later[key] = b
                    heapq.heappush(heap, (retry, second))
                    continue
                touched.add(key[0])
        return touched

    def _append_group(self, slot: _Slot, due: int, key: GroupKey, batches: list[_Batch]) -> None:
        """Append the batches built for (due ms, queue). A batch appended is removed
        from ``batches``, so a store error leaves exactly the rest to retry."""
        topic, qid, reconsume, sys_flag, born_host = key
        store = self.store
        t = self.paths.topic_config(topic)
        if t is None or not t.writable:
            n = sum(b.count for b in batches)
            log.error("%d timer(s) due for topic %s dropped: the topic %s", n, topic,
                      "does not exist" if t is None else "is not writable")
            self.dropped += n
            self._fired(slot, n)
            batches.clear()
            return
        if qid >= t.queues:
            qid %= t.queues
        counters = self.paths.counters.topic(topic)
        cancelled = slot.cancelled
        while batches:
            batch = batches[0]
            n_all = batch.count
            if cancelled and not cancelled.isdisjoint(batch.offsets()):
                batch = batch.without(cancelled)
            n = batch.count
            if slot.first_fire_pos is None:
                slot.first_fire_pos = store.dispatched_pos
            if n == 1:
                member = batch.member(0)
                flag, blen = _MEMBER_FLAG_BLEN.unpack_from(member, 12)
                r = store.append(topic, qid, member[20:20 + blen], member[22 + blen:], flag,
                                 sys_flag, batch.born_ts, born_host, reconsume, 0, 1,
                                 tag_hash(batch.tag))
            elif n:
                th = TAG_HASH_MIXED if batch.mixed else tag_hash(batch.tag)
                r = store.append(topic, qid, batch.body, b"", 0,
                                 sys_flag | rec.FORMAT_NATIVE_BATCH, batch.born_ts, born_host,
                                 reconsume, 0, n, th)
            del batches[0]
            self._fired(slot, n_all)
            if not n:
                continue
            self.lateness.add(r.store_timestamp - due, n)
            counters.messages_in += n
            counters.bytes_in += store.dispatched_pos - r.physical_offset
            counters.puts += 1
            self.delivered += n
            if _UNIQ1 in batch.body or _KEYS1 in batch.body:
                self._index_backlog.append((r.physical_offset, r.store_timestamp, batch, 0, set()))

    def _fired(self, slot: _Slot, n: int) -> None:
        slot.items -= n
        self._prepared_items -= n

    def _advance_done(self) -> None:
        """Retire slots whose deliveries all went out and whose second has ended:
        clear them in the wheel, link their later laps and roll points again."""
        now_s = self.clock() // 1000
        while True:
            s = self.processed_s
            if s >= self.prepared_upto_s or s >= now_s:
                break
            slot = self.slots.get(s)
            if slot is None:
                nxt = min(self.slots) if self.slots else self.prepared_upto_s
                self.processed_s = max(s, min(nxt, self.prepared_upto_s, now_s))
                if self.processed_s == s:
                    break
                continue
            if slot.due or slot.preparing or not self._roll_all(slot):
                break
            # Clear before linking again: a later lap may share this ring index.
            del self.slots[s]
            self.processed_s = s + 1
            self.wheel.clear(s)
            for deliver, phys, size, stored_s in slot.relinks:
                if phys not in slot.cancelled:
                    self._link(deliver, phys, size, stored_s)
            for deliver, phys, size, stored_s in slot.deferred:
                self._link(deliver, phys, size, stored_s)
        if self._dedupe_floor is not None and self.processed_s > self._skip_until_s:
            self._skip = set()
            self._dedupe_floor = None

    def _roll_all(self, slot: _Slot) -> bool:
        """Roll the timers of a done slot that reached their roll point: each is
        replaced in ``slot.relinks`` by its new copy, linked once the slot is
        cleared. False if the store refused a write (the slot stays, and is
        retried: clearing it would lose what is not rolled yet)."""
        s = slot.second
        relinks = slot.relinks
        for i, (deliver, phys, size, stored_s) in enumerate(relinks):
            if phys in slot.cancelled or self._slot_for(deliver, stored_s) > s:
                continue
            try:
                rolled = self._roll(deliver, phys, size)
            except FerryError as exc:
                log.error("rolling the timer at %d failed (%s); retrying", phys, exc)
                return False
            relinks[i] = rolled if rolled is not None else (deliver, phys, size, -1 << 62)
        slot.relinks = [r for r in relinks if r[3] != -1 << 62]
        return True

    def _roll(self, deliver: int, phys: int, size: int) -> tuple[int, int, int, int] | None:
        """Re-append a timer whose record reached the roll window's age, so that
        CommitLog retention cannot take it before it is due. Returns the new copy
        (delivery ms, offset, size, stored second), not linked yet; None if the
        record is gone."""
        data = self.store.commitlog.read(phys, size)
        try:
            r = rec.decode(data, 0, check_crc=False) if data is not None else None
        except rec.RecordError:
            r = None
        if r is None or r.topic != TIMER_TOPIC or r.physical_offset != phys:
            log.error("timer record at CommitLog offset %d is gone before its roll; dropped", phys)
            self.dropped += 1
            return None
        props = r.properties
        real_topic = props.get(PROPERTY_REAL_TOPIC, "")
        real_qid = int(props.get(PROPERTY_REAL_QUEUE_ID, "0") or 0)
        clean = {k: v for k, v in props.items() if k not in _STRIP}
        m = Message(real_topic, r.body, clean, real_qid, r.flag, r.born_timestamp, r.born_host,
                    r.reconsume_times, r.sys_flag)
        new = self.append_timer(m, clean, real_topic, real_qid, deliver, rolled_from=phys,
                                prepared_offset=r.prepared_transaction_offset, link=False)
        self.rolled += 1
        self.scheduled -= 1  # the same timer, not a new one
        return (deliver, new.physical_offset, self.store.dispatched_pos - new.physical_offset,
                new.store_timestamp // 1000)

    # ================================================================ indexing

    async def _indexer(self) -> None:
        """Index the keys of delivered messages after the burst that delivered them
        (the records are consumable before their keys are findable)."""
        index = self.store.index
        backlog = self._index_backlog
        while True:
            if not backlog:
                self._wake_indexer = trio.Event()
                await self._wake_indexer.wait()
                # Let the consumers the burst woke read it first: a key written into
                # an untouched page of the index costs a page fault (measured up to
                # 11 µs a key), and a consumer does not need the index.
                await trio.sleep(INDEX_DELAY_S)
                continue
            budget = INDEX_STEP
            while backlog and budget > 0:
                phys, ts, batch, member, prefixes = backlog.popleft()
                count = batch.count
                try:
                    while member < count and budget > 0:
                        uniq, keys = _member_keys(batch.member(member))
                        # As the store indexes a batch record: a RocketMQ-format client
                        # id once per distinct prefix, as "any member"; a single record
                        # and other ids exactly.
                        prefix = client_id_prefix(uniq) if uniq and count > 1 else None
                        if prefix is not None:
                            if prefix not in prefixes:
                                prefixes.add(prefix)
                                index.put(prefix, phys, ANY_MEMBER, ts)
                                budget -= 1
                        elif uniq:
                            index.put(uniq, phys, member, ts)
                            budget -= 1
                        for key in keys:
                            index.put(key, phys, member, ts)
                            budget -= 1
                        member += 1
                except OSError as exc:  # a new index file could not be made (disk full)
                    log.error("indexing delivered timers failed; lookups by their ids will "
                              "find the timer records", exc_info=exc)
                    continue
                if member < count:
                    backlog.appendleft((phys, ts, batch, member, prefixes))
            await trio.sleep(0)

    # ================================================================ cancel

    async def cancel(self, message_id: str,
                     authorize: Callable[[str], None] | None = None) -> CancelResult:
        """Cancel the pending timer of a message (its client id or the offset id put
        returned). ``authorize`` is called with the timer's destination topic before
        anything changes (the Broker's access check). Raises TimerNotFound if no
        pending timer has that id: never timed, already delivered (or being
        delivered this millisecond), or cancelled."""
        target = self._find_timer(message_id)
        if target is None:
            raise TimerNotFound(f"no pending timer for message {message_id}")
        phys, deliver, stored_s, topic = target
        if authorize is not None:
            authorize(topic)
        slot_s = max(self._slot_for(deliver, stored_s), self.processed_s)
        if deliver // 1000 < self.processed_s or not self._pending(phys, deliver, slot_s):
            raise TimerNotFound(f"the timer of message {message_id} was delivered or cancelled")
        raw = b"TIMER_CANCEL\x01%d\x02" % phys
        r = self.store.append(TIMER_TOPIC, 0, b"", raw, 0, 0, 0, b"\x00" * 8, 0, 0, 1, -(phys + 1))
        self._apply_cancel(phys, deliver, stored_s)
        self.cancelled += 1
        await self.paths.after_put(r)
        return CancelResult(message_id, phys, deliver)

    def _find_timer(self, message_id: str) -> tuple[int, int, int, str] | None:
        """(offset, delivery ms, stored second, destination topic) of the newest timer
        record with that id."""
        found = self.store.lookup_key(message_id, TIMER_TOPIC, limit=4)
        if not found:
            decoded = parse_offset_message_id(message_id)
            if decoded is not None:
                m = self.store.message_at(decoded[0], decoded[1])
                if m is not None and m.topic == TIMER_TOPIC:
                    found = [m]
        for m in found:
            out = m.properties.get(PROPERTY_TIMER_OUT_MS)
            if out is not None and out.isdigit():
                return (m.physical_offset, int(out), m.store_timestamp // 1000,
                        m.properties.get(PROPERTY_REAL_TOPIC, ""))
        return None

    def _pending(self, phys: int, deliver: int, slot_s: int) -> bool:
        slot = self.slots.get(slot_s)
        if slot is not None and phys in slot.seen:
            if phys in slot.cancelled:
                return False
            if any(r[1] == phys for r in slot.relinks):
                return True
            groups = slot.due.get(deliver)
            return groups is not None and any(phys in b.offsets() for newest in groups.values()
                                              for b in newest.chain())
        if slot_s < self.prepared_upto_s and slot is None:
            return False
        return any(e[2] == phys and not e[4] for e in self.wheel.walk(slot_s))

    def _apply_cancel(self, phys: int, deliver: int, stored_s: int) -> None:
        slot_s = max(self._slot_for(deliver, stored_s), self.processed_s)
        try:
            self.wheel.cancel(slot_s, phys)
        except WheelCorrupt as exc:
            log.error("cancelling the timer at %d: %s", phys, exc)
        slot = self.slots.get(slot_s)
        if slot is not None:
            slot.cancelled.add(phys)  # the firer leaves it out of its batch

    # ================================================================ lifecycle

    def register_hooks(self) -> None:
        """Before the store opens: recovery must write the delivery time (or a cancel
        marker) into the timer queue's tag-hash field, as ``append`` did."""
        self.store.tag_hash_hooks[TIMER_TOPIC] = _timer_tag_hash

    def open_sync(self, clean_shutdown: bool) -> None:
        """After the store recovered: map the wheel, and bring it up to date with the
        timer queue (re-link what the checkpoint does not cover, rebuild it when it
        is missing or damaged), then learn from the CommitLog which timers were
        processed after the last checkpoint."""
        t0 = time.monotonic()
        os.makedirs(self.directory, exist_ok=True)
        try:
            existed = self.wheel.open()
        except WheelCorrupt as exc:
            log.error("timer wheel unusable (%s): rebuilding it from the CommitLog", exc)
            self.wheel.close()
            self._delete_files()
            existed = self.wheel.open()
        cp = self._read_checkpoint()
        store = self.store
        lo, hi = store.queue_bounds(TIMER_TOPIC, 0)
        now_s = self.clock() // 1000
        mode = "resume"
        if cp is not None and cp.get("slots") != self.wheel.slots:
            log.warning("wheel size changed: rebuilding the timer wheel")
            cp = None
        if cp is None:
            self.wheel.reset()
            if hi > lo:
                # No checkpoint but timers in the log: rebuild everything from it.
                mode = "rebuild"
                q = store.queues[(TIMER_TOPIC, 0)]
                first = q.entry(q.first_entry)
                self.processed_s = first.store_timestamp // 1000
                queue_from, dedupe_from = lo, first.physical_offset
            else:
                self.processed_s = now_s
                queue_from, dedupe_from = hi, store.dispatched_pos
        else:
            self.processed_s = int(cp["processed_s"])
            queue_from = int(cp["queue_offset"])
            dedupe_from = int(cp["dedupe_from"])
            problem = None
            if not existed:
                problem = "the wheel file is missing"
            else:
                # Lost log segments are seen at every start (a clean one included): the
                # wheel's lists would lead nowhere and their timers never fire.
                problem = self.wheel.log_missing()
                if problem is None and not clean_shutdown:
                    problem = self.wheel.validate()
            if problem:
                log.error("timer wheel damaged (%s): rebuilding it from the timer queue", problem)
                mode = "rebuild"
                self.wheel.reset()
                queue_from = store.offset_for_time(
                    TIMER_TOPIC, 0, (self.processed_s - self.roll_s - REBUILD_SLACK_S) * 1000)
            queue_from = min(max(queue_from, lo), hi)
        self.prepared_upto_s = self.processed_s
        self._skip = self._scan_processed(dedupe_from)
        self._skip_until_s = max(now_s, self.processed_s) + 1
        self._dedupe_floor = dedupe_from
        relinked = self._relink_queue(queue_from, hi)
        self._open = True
        self._write_checkpoint(self._snapshot())
        log.info("timers open", extra={"mode": mode, "relinked": relinked,
                                       "processed_since_checkpoint": len(self._skip),
                                       "pending": self.wheel.pending,
                                       "seconds": round(time.monotonic() - t0, 3)})

    def _delete_files(self) -> None:
        for root, _dirs, files in os.walk(self.directory, topdown=False):
            for f in files:
                if f != "checkpoint.json":
                    os.unlink(os.path.join(root, f))

    def _scan_processed(self, start: int) -> set[int]:
        """Timer offsets that a delivery or a roll after ``start`` shows were processed;
        and the keys of those deliveries go into the index again (their deferred
        indexing may not have been durable)."""
        done: set[int] = set()
        index = self.store.index
        for pos, data in iter_records(self.store, start):
            if _FROM_MARK not in data:
                continue
            offsets = list(timer_from_offsets(data))
            done.update(offsets)
            try:
                r = rec.decode(data, 0, check_crc=False)
            except rec.RecordError:
                continue
            if r.topic != TIMER_TOPIC:
                _count, _h, keys = self.store._describe(r)
                for key, member in keys:
                    index.put(key, pos, member, r.store_timestamp)
        return done

    def _relink_queue(self, start: int, end: int) -> int:
        """Link the timer queue's entries from queue offset ``start`` (a cancel entry
        cancels), skipping timers already processed."""
        q = self.store.queues.get((TIMER_TOPIC, 0))
        if q is None or start >= end:
            return 0
        i = q.find(start)
        n = 0
        while i is not None and i < q.next_entry:
            phys, size, _base, _count, th, ts = q.entry(i)
            i += 1
            if size < 0:
                continue  # lost with a damaged range of the CommitLog (docs/storage.md)
            if th < 0:
                target = -th - 1
                found = self._timer_at(target)
                if found is not None:
                    self._apply_cancel(target, found[0], found[1])
                continue
            if phys in self._skip:
                continue
            stored_s = ts // 1000
            if self._slot_for(th, stored_s) < self.processed_s:
                continue  # its second was done before the checkpoint
            self._link(th, phys, size, stored_s)
            n += 1
        return n

    def _timer_at(self, phys: int) -> tuple[int, int] | None:
        m = self.store.message_at(phys)
        if m is None or m.topic != TIMER_TOPIC:
            return None
        out = m.properties.get(PROPERTY_TIMER_OUT_MS, "")
        return (int(out), m.store_timestamp // 1000) if out.isdigit() else None

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._preparer)
        nursery.start_soon(self._firer)
        nursery.start_soon(self._indexer)
        nursery.start_soon(self._checkpointer)

    def close_sync(self) -> None:
        if self._open:
            self._open = False
            try:
                if self.store.failed is None:
                    self._write_checkpoint(self._snapshot())
            finally:
                self.wheel.close()
        else:
            self.wheel.close()

    # ================================================================ checkpoint

    def _snapshot(self) -> dict[str, int]:
        """The timer checkpoint as of now (loop thread): see the module docstring."""
        dedupe_from = self.store.dispatched_pos
        for slot in self.slots.values():
            if slot.first_fire_pos is not None:
                dedupe_from = min(dedupe_from, slot.first_fire_pos)
        if self._index_backlog:
            dedupe_from = min(dedupe_from, self._index_backlog[0][0])
        if self._dedupe_floor is not None:
            dedupe_from = min(dedupe_from, self._dedupe_floor)
        queue_offset = self.store.queue_bounds(TIMER_TOPIC, 0)[1]
        for slot in self.slots.values():
            if slot.deferred:
                # Held in memory only: re-link them from the queue after a crash.
                for _d, phys, _s, _st in slot.deferred:
                    m = self.store.message_at(phys)
                    if m is not None:
                        queue_offset = min(queue_offset, m.queue_offset)
        return {"processed_s": self.processed_s, "dedupe_from": dedupe_from,
                "queue_offset": queue_offset, "slots": self.wheel.slots,
                "roll_window_s": self.roll_s, "written_at_ms": now_ms()}

    def _write_checkpoint(self, snap: dict[str, int]) -> None:
        """Make everything the snapshot claims durable, then write it (worker thread
        or start-up/shutdown)."""
        self.store.flush(snap["dedupe_from"])
        self.wheel.flush()
        self.store.index.flush()
        atomic_write(os.path.join(self.directory, "checkpoint.json"),
                     json.dumps(snap).encode())

    def _read_checkpoint(self) -> dict[str, Any] | None:
        try:
            return read_json_state(os.path.join(self.directory, "checkpoint.json"),
                                   ("processed_s", "dedupe_from", "queue_offset"))
        except ValueError:
            log.error("timer checkpoint unreadable: rebuilding the wheel")
            return None

    async def checkpoint(self) -> None:
        snap = self._snapshot()
        await trio.to_thread.run_sync(self._write_checkpoint, snap)
        self.wheel.reap(min(snap["processed_s"], self.processed_s))

    async def _checkpointer(self) -> None:
        while True:
            await trio.sleep(self.checkpoint_interval)
            if self.store.failed is not None:
                continue
            try:
                await self.checkpoint()
            except OSError as exc:
                log.error("timer checkpoint failed", exc_info=exc)

    # ================================================================ helpers

    async def _sleep_until(self, wall_ms: float, wake: trio.Event) -> None:
        delay = (wall_ms - self.clock()) / 1000
        if delay <= 0:
            await trio.sleep(0)
            return
        with trio.move_on_after(delay):
            await wake.wait()

    def stats(self) -> TimerStats:
        lat = self.lateness
        return TimerStats(self.wheel.pending, self._prepared_items, self.scheduled, self.delivered,
                          self.cancelled, self.rolled, self.dropped, self.processed_s * 1000,
                          lat.percentile(50), lat.percentile(99), lat.max,
                          self.wheel.disk_bytes())


def _timer_tag_hash(props: Mapping[str, str]) -> int:
    """What the timer queue's tag-hash field holds: the delivery time, or for a
    cancel record ``-(cancelled offset + 1)``."""
    out = props.get(PROPERTY_TIMER_OUT_MS)
    if out is not None and out.isdigit():
        return int(out)
    cancel = props.get(PROPERTY_TIMER_CANCEL)
    if cancel is not None and cancel.isdigit():
        return -(int(cancel) + 1)
    return 0
