"""Transactional messages: half messages, their commit or rollback, and the check-back.

The way of a transaction (RocketMQ's model; docs/transactions.md states the
guarantee and how it is kept):

1. ``prepare`` stores the message as a *half* in the system topic
   ``RMQ_SYS_TRANS_HALF_TOPIC`` (queue 0) with ``REAL_TOPIC``/``REAL_QID``,
   ``TRAN_MSG=true`` and its producer group (``PGROUP``). No consumer of the
   real topic can see it.
2. ``end_transaction(COMMIT)`` appends the message to its real topic and queue
   (its record's prepared-transaction-offset field names the half, as
   RocketMQ's does) and, in the same synchronous step, an *op record* in
   ``RMQ_SYS_TRANS_OP_HALF_TOPIC`` saying the half is committed. ROLLBACK
   appends only the op record. An op record's ConsumeQueue tag-hash field is
   ``half offset * 8 + kind``, so the outcome of every half is rebuilt from
   the op queue at start without reading a record.
3. A half still open ``transaction_check_timeout_ms`` (6 s) after it was
   stored is checked back: the registered checker (the remoting door) asks a
   live producer of its group, which answers with an END_TRANSACTION. Only a
   check that reached a producer counts (so a half is never discarded without
   a real check: apache/rocketmq #8311); each is recorded as an op record so
   the count survives restarts. Checks repeat every
   ``transaction_check_interval_ms`` up to ``transaction_check_max`` (15); a
   half unresolved after that goes to ``RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC``
   (RocketMQ's name), is counted and listed. Each check runs on its own under
   a time limit, so one failing half cannot stall the others (#1568); a half
   whose outcome is known is never checked again (#1517).
4. A half open longer than the roll window is appended again (and the old
   copy marked moved), so CommitLog retention never removes an open half.
5. A *coordinated* half (``TRAN_COORDINATOR``: a door that decides its outcome
   itself, the Kafka door's transaction coordinator) is never checked back nor
   discarded, and only its coordinator may end it: all the open halves of its
   producer group at once (``end_group``), in the order they were stored, in
   one synchronous step together with the door's own trailing records (Kafka's
   transaction markers), so every door sees the whole transaction or nothing.
   Its body may be a Kafka RecordBatch (``TRAN_BODY_FORMAT=kafka``), committed as
   a Kafka batch record of its partition (docs/transactions.md, "Kafka
   transactions").

State: the open halves live in memory (a few hundred bytes each; they end
within seconds normally); the ended ones are only on disk. The checkpoint
(``<data>/transactions/checkpoint.json``) bounds the start-up rebuild.
"""

from __future__ import annotations

import enum
import heapq
import json
import logging
import math
import os
import struct
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from ..protocols import record as rec
from ..protocols.kafka import batch_header as kb
from .config import BrokerConfig
from .errors import (
    CorruptMessage,
    FerryError,
    InvalidArgument,
    InvalidMessage,
    MessageTooLarge,
    PermissionDenied,
    TopicNotFound,
    TransactionAlreadyEnded,
    TransactionNotFound,
)
from .message import (
    PROPERTY_PRODUCER_GROUP,
    PROPERTY_REAL_QUEUE_ID,
    PROPERTY_REAL_TOPIC,
    PROPERTY_TRANSACTION_PREPARED,
    PROPERTY_UNIQ_KEY,
    ConsumedMessage,
    Message,
    PutResult,
    now_ms,
    offset_message_id,
    parse_offset_message_id,
)
from .metadata import validate_group_name
from .paths import Paths
from .store.files import atomic_write, read_json_state
from .store.store import MessageStore
from .timers import (
    TIMER_TOPIC,
    TimerService,
    iter_records,
    new_message_id,
    parse_delivery,
    strip_timer_properties,
)

log = logging.getLogger("ferrymq.transactions")

HALF_TOPIC = "RMQ_SYS_TRANS_HALF_TOPIC"
OP_TOPIC = "RMQ_SYS_TRANS_OP_HALF_TOPIC"
CHECK_MAX_TOPIC = "RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC"

# RocketMQ MessageConst names.
PROPERTY_TRANSACTION_ID = "__transactionId__"
PROPERTY_CHECK_TIMES = "TRANSACTION_CHECK_TIMES"
PROPERTY_CHECK_IMMUNITY = "CHECK_IMMUNITY_TIME_IN_SECONDS"
PROPERTY_PREPARED_QUEUE_OFFSET = "TRAN_PREPARED_QUEUE_OFFSET"
# FerryMQ's: on a rolled half, the CommitLog offset of the first copy; on an op record.
PROPERTY_ORIGIN_OFFSET = "TRAN_ORIGIN_OFFSET"
PROPERTY_OP = "TRAN_OP"
PROPERTY_OP_HALF = "TRAN_HALF"
# FerryMQ's: the door whose coordinator decides a half (never checked back), and the
# format of a half's body when it is not a message body ("kafka": a RecordBatch).
PROPERTY_COORDINATOR = "TRAN_COORDINATOR"
PROPERTY_BODY_FORMAT = "TRAN_BODY_FORMAT"
BODY_FORMAT_KAFKA = "kafka"

# Op kinds (the low 3 bits of an op record's tag hash).
OP_COMMIT, OP_ROLLBACK, OP_DISCARD, OP_CHECK, OP_MOVED = 1, 2, 3, 4, 5
_OP_NAMES = {OP_COMMIT: "commit", OP_ROLLBACK: "rollback", OP_DISCARD: "discard",
             OP_CHECK: "check", OP_MOVED: "moved"}
_OP_KINDS = {v: k for k, v in _OP_NAMES.items()}

# Kept out of a committed message (RocketMQ clears TRAN_MSG on commit too).
_HALF_ONLY = frozenset((PROPERTY_REAL_TOPIC, PROPERTY_REAL_QUEUE_ID, PROPERTY_TRANSACTION_PREPARED,
                        PROPERTY_CHECK_TIMES, PROPERTY_ORIGIN_OFFSET, PROPERTY_COORDINATOR,
                        PROPERTY_BODY_FORMAT))

CHECK_CALL_TIMEOUT_S = 10.0  # a checker call that takes longer counts as failed
CHECK_CONCURRENCY = 16
ENDED_MEMORY = 100_000  # recently ended halves remembered, to name the outcome of a late END


class TransactionAction(enum.Enum):
    """What END_TRANSACTION asks (RocketMQ's commitOrRollback: 0x8, 0xC, 0)."""

    COMMIT = "commit"
    ROLLBACK = "rollback"
    UNKNOWN = "unknown"

    @classmethod
    def from_sys_flag(cls, value: int) -> TransactionAction:
        kind = value & rec.TRANSACTION_MASK
        if kind == rec.TRANSACTION_COMMIT_TYPE:
            return cls.COMMIT
        if kind == rec.TRANSACTION_ROLLBACK_TYPE:
            return cls.ROLLBACK
        return cls.UNKNOWN


@dataclass(frozen=True, slots=True)
class HalfHandle:
    """What ``prepare`` returns: everything END_TRANSACTION needs to name the half.

    ``physical_offset`` is RocketMQ's commitLogOffset, ``queue_offset`` its
    tranStateTableOffset, ``offset_msg_id`` encodes the former."""

    physical_offset: int
    queue_offset: int
    msg_id: str
    offset_msg_id: str
    transaction_id: str
    producer_group: str
    topic: str
    queue_id: int
    store_timestamp: int


@dataclass(frozen=True, slots=True)
class HalfMessage:
    """A half as the check-back hook gets it. ``message`` is the half as stored
    (topic ``RMQ_SYS_TRANS_HALF_TOPIC``, its CommitLog and queue offsets);
    ``as_real()`` is the message as its producer sent it."""

    message: ConsumedMessage
    producer_group: str
    real_topic: str
    real_queue_id: int
    transaction_id: str
    msg_id: str
    check: int  # 1 for the first check

    @property
    def physical_offset(self) -> int:
        return self.message.physical_offset

    @property
    def queue_offset(self) -> int:
        return self.message.queue_offset

    @property
    def offset_msg_id(self) -> str:
        return self.message.offset_msg_id

    def as_real(self) -> ConsumedMessage:
        return self.message._replace(topic=self.real_topic, queue_id=self.real_queue_id)


TransactionChecker = Callable[[str, HalfMessage], Awaitable[bool]]
"""``async (producer_group, half) -> bool``: ask a live producer of the group for
the outcome (the answer comes back as an END_TRANSACTION with ``from_check``).
Return True if the question reached a producer, False if none is connected."""


@dataclass(frozen=True, slots=True)
class PendingTransaction:
    physical_offset: int
    queue_offset: int
    msg_id: str
    transaction_id: str
    producer_group: str
    topic: str
    stored_ms: int
    checks: int
    next_check_ms: int


@dataclass(frozen=True, slots=True)
class TransactionStats:
    pending: int
    prepared: int  # since start, as the counters below
    committed: int
    rolled_back: int
    discarded: int
    checks_sent: int
    checks_without_producer: int
    check_failures: int
    oldest_pending_ms: int | None


@dataclass(frozen=True, slots=True)
class GroupEnd:
    """What ``end_group`` did: the records appended to real queues (the committed
    halves, then the trailers, in that order), and how many halves were committed and
    rolled back (those ``accept`` refused, or whose topic is gone, are rolled back)."""

    results: tuple[PutResult, ...]
    committed: int
    rolled_back: int


class _Half:
    __slots__ = ("checking", "checks", "coordinator", "group", "msg_id", "next_check_ms",
                 "op_floor", "origin", "phys", "queue_offset", "size", "store_ms", "topic",
                 "transaction_id")

    def __init__(self, phys: int, size: int, queue_offset: int, store_ms: int, group: str,
                 topic: str, msg_id: str, transaction_id: str, origin: int, checks: int,
                 op_floor: int, coordinator: str | None = None) -> None:
        self.phys = phys
        self.size = size
        self.queue_offset = queue_offset
        self.store_ms = store_ms
        self.group = group
        self.topic = topic
        self.msg_id = msg_id
        self.transaction_id = transaction_id
        self.origin = origin
        self.checks = checks
        self.op_floor = op_floor
        self.coordinator = coordinator
        self.next_check_ms = 0
        self.checking = False


class TransactionService:
    """The broker's transactions; the Broker owns one (see the module docstring).
    Halves and commits take the write path (``paths``); a commit of a timed message
    becomes a timer (``timers``)."""

    def __init__(self, cfg: BrokerConfig, store: MessageStore, paths: Paths,
                 timers: TimerService) -> None:
        self.paths = paths
        self.timers = timers
        self.store = store
        self.max_message_size = cfg.max_message_size
        self.directory = os.path.join(cfg.data_dir, "transactions")
        self.clock: Callable[[], int] = now_ms
        self.check_timeout_ms = cfg.transaction_check_timeout_ms
        self.check_interval_ms = cfg.transaction_check_interval_ms
        self.check_max = cfg.transaction_check_max
        self.roll_ms = timers.roll_s * 1000
        self.checkpoint_interval = cfg.checkpoint_interval_ms / 1000
        self.checker: TransactionChecker | None = None
        self.pending: dict[int, _Half] = {}  # current CommitLog offset of the half -> state
        self._ids: dict[str, int] = {}  # transaction id and client id -> current offset
        self._alias: dict[int, int] = {}  # offset of an older (rolled) copy -> current offset
        self._ended: OrderedDict[int, str] = OrderedDict()
        self._heap: list[tuple[int, int, int]] = []  # (check at ms, sequence, offset)
        self._seq = 0
        self._wake = trio.Event()
        self._limiter = trio.CapacityLimiter(CHECK_CONCURRENCY)
        self.prepared = self.committed = self.rolled_back = self.discarded = 0
        self.checks_sent = self.checks_without_producer = self.check_failures = 0

    # ================================================================ prepare

    async def prepare(self, m: Message, producer_group: str, *,
                      coordinator: str | None = None) -> HalfHandle:
        """Store ``m`` as a half message of ``producer_group``: durable (under sync
        flush) when this returns, invisible to consumers until committed. With
        ``coordinator`` (a door's name) the half is coordinated: never checked back,
        ended only by that door's ``end_group``. Raises what ``put`` raises,
        InvalidGroupName, and InvalidDelay for a delivery property the commit could
        not honour."""
        validate_group_name(producer_group)
        paths = self.paths
        parse_delivery(m.properties, self.clock(), self.timers.max_delay_ms, self.timers.levels)
        t = await paths.topic_for_put(m.topic)
        if len(m.body) > self.max_message_size:
            raise MessageTooLarge(f"message body is {len(m.body)} bytes; the maximum is "
                                  f"{self.max_message_size}")
        qid = paths.queue_for(t, m.queue_id)
        await paths.system_topic(HALF_TOPIC)
        props = dict(m.properties)
        for k in (PROPERTY_CHECK_TIMES, PROPERTY_ORIGIN_OFFSET):
            props.pop(k, None)
        uniq = props.get(PROPERTY_UNIQ_KEY) or new_message_id()
        props[PROPERTY_UNIQ_KEY] = uniq
        props[PROPERTY_REAL_TOPIC] = t.name
        props[PROPERTY_REAL_QUEUE_ID] = str(qid)
        props[PROPERTY_TRANSACTION_PREPARED] = "true"
        props[PROPERTY_PRODUCER_GROUP] = producer_group
        props.pop(PROPERTY_COORDINATOR, None)
        if coordinator:
            props[PROPERTY_COORDINATOR] = coordinator
        immunity = props.get(PROPERTY_CHECK_IMMUNITY, "")
        first_check = int(immunity) * 1000 if immunity.isdigit() else self.check_timeout_ms
        if coordinator:
            first_check = self.roll_ms  # never asked: only rolled, should it stay that long
        sys_flag = (m.sys_flag & ~(rec.FORMAT_MASK | rec.TRANSACTION_MASK)) \
            | rec.TRANSACTION_PREPARED_TYPE
        try:
            r = self.store.append_message(HALF_TOPIC, 0, m.body, props, m.flag, sys_flag,
                                          m.born_timestamp, m.born_host, m.reconsume_times)
        except UnicodeEncodeError as exc:
            raise InvalidMessage(f"properties are not encodable: {exc}") from exc
        tid = props.get(PROPERTY_TRANSACTION_ID) or uniq
        half = _Half(r.physical_offset, self.store.dispatched_pos - r.physical_offset,
                     r.queue_offset, r.store_timestamp, producer_group, t.name, uniq, tid,
                     r.physical_offset, 0, self._op_max(), coordinator or None)
        self._add(half, r.store_timestamp + first_check)
        self.prepared += 1
        await paths.after_put(r)
        return HalfHandle(r.physical_offset, r.queue_offset, uniq, r.offset_message_id(), tid,
                          producer_group, t.name, qid, r.store_timestamp)

    async def prepare_kafka_batch(self, topic: str, queue_id: int,
                                  batch: bytes | bytearray | memoryview, producer_group: str,
                                  coordinator: str,
                                  properties: Mapping[str, str] | None = None) -> HalfHandle:
        """Store a Kafka RecordBatch (magic 2, CRC checked by the Kafka codec) as a
        coordinated half of ``producer_group`` for (topic, queue_id): at commit it
        becomes a Kafka batch record of that queue, verbatim but for its base offset.
        ``properties`` travel on the half (the door's bookkeeping: producer id and
        epoch). Raises CorruptMessage, InvalidMessage and what ``prepare`` raises."""
        try:
            h = kb.read_header(batch)
        except kb.BatchHeaderError as exc:
            raise CorruptMessage(str(exc)) from exc
        if h.size != len(batch):
            raise CorruptMessage("RecordBatch length does not match the bytes given")
        if h.records_count != h.last_offset_delta + 1:
            raise InvalidMessage("a producer batch must have lastOffsetDelta == count - 1")
        props = {k: v for k, v in (properties or {}).items() if k not in _HALF_ONLY}
        props[PROPERTY_BODY_FORMAT] = BODY_FORMAT_KAFKA
        m = Message(topic, bytes(batch), props, queue_id, born_timestamp=max(0, h.base_timestamp))
        return await self.prepare(m, producer_group, coordinator=coordinator)

    async def prepare_put(self, m: Message) -> PutResult:
        """``put`` of a message marked ``TRAN_MSG=true`` (RocketMQ's SEND_MESSAGE of a
        half): the producer group comes from its ``PGROUP`` property. The result
        names the real topic and queue, the half's queue offset and its CommitLog
        offset (so its offset message id names the half, as END_TRANSACTION needs)."""
        group = m.properties.get(PROPERTY_PRODUCER_GROUP)
        if not group:
            raise InvalidMessage("a half message (TRAN_MSG=true) needs its producer group "
                                 "in the PGROUP property")
        h = await self.prepare(m, group)
        return PutResult(h.topic, h.queue_id, h.queue_offset, 1, h.physical_offset,
                         h.store_timestamp, self.store.store_host, (h.msg_id,))

    def _add(self, half: _Half, check_at: int) -> None:
        self.pending[half.phys] = half
        self._ids[half.transaction_id] = half.phys
        self._ids[half.msg_id] = half.phys
        self._schedule(half, check_at)

    def _schedule(self, half: _Half, at: int) -> None:
        half.next_check_ms = at
        self._seq += 1
        heapq.heappush(self._heap, (at, self._seq, half.phys))
        if self._heap[0][2] == half.phys:
            self._wake.set()

    def _op_max(self) -> int:
        return self.store.queue_bounds(OP_TOPIC, 0)[1]

    # ================================================================ end

    async def end_transaction(self, half: HalfHandle | int | str,
                              action: TransactionAction | str, *,
                              producer_group: str | None = None,
                              transaction_id: str | None = None,
                              from_check: bool = False,
                              authorize: Callable[[str], None] | None = None,
                              coordinator: str | None = None
                              ) -> PutResult | None:
        """Commit, roll back, or report UNKNOWN for a half named by its handle, its
        CommitLog offset (RocketMQ's commitLogOffset), or its transaction/message id.
        ``authorize`` is called with the half's topic once the half is found, before
        anything changes (the Broker's access check).

        COMMIT appends the message to its real topic exactly once and returns where
        it landed (for a timed message: the timer's PutResult); ROLLBACK returns
        None and nothing is ever delivered; UNKNOWN changes nothing (the check-back
        asks again later). Raises TransactionNotFound for a half nobody knows,
        TransactionAlreadyEnded (with ``.outcome``) for one already ended, and
        InvalidArgument for another producer group's half. Under sync flush the
        outcome is durable when this returns."""
        act = action if isinstance(action, TransactionAction) else TransactionAction(action)
        h = self._resolve(half, transaction_id)
        if authorize is not None:
            authorize(h.topic)
        if producer_group and producer_group != h.group:
            raise InvalidArgument(f"the half at offset {h.phys} belongs to producer group "
                                  f"{h.group}, not {producer_group}")
        if h.coordinator != coordinator:
            raise InvalidArgument(f"the half at offset {h.phys} is decided by the "
                                  f"{h.coordinator} door's transaction coordinator" if h.coordinator
                                  else f"the half at offset {h.phys} is not a {coordinator} half")
        if act is TransactionAction.UNKNOWN:
            return None
        paths = self.paths
        await paths.system_topic(OP_TOPIC)
        await paths.system_topic(TIMER_TOPIC)
        h = self._resolve(h.phys, None)  # still open after those awaits?
        if act is TransactionAction.ROLLBACK:
            r = self._end(h, OP_ROLLBACK)
            self.rolled_back += 1
            await paths.after_put(r)
            return None
        t = await paths.topic_for_put(h.topic)  # re-created if it was deleted meanwhile
        h = self._resolve(h.phys, None)  # it may have ended (or rolled) while we waited
        m = self._read_half(h)
        if m.properties.get(PROPERTY_BODY_FORMAT) == BODY_FORMAT_KAFKA:
            result = put = self._commit_kafka_batch(h, m, t.queues)
            self._end(h, OP_COMMIT)
            self.committed += 1
            await paths.after_put(put)
            return result
        props = {k: v for k, v in m.properties.items() if k not in _HALF_ONLY}
        props[PROPERTY_PREPARED_QUEUE_OFFSET] = str(h.queue_offset)
        real_qid = int(m.properties.get(PROPERTY_REAL_QUEUE_ID, "0") or 0)
        qid = real_qid if real_qid < t.queues else real_qid % t.queues
        sys_flag = (m.sys_flag & ~(rec.FORMAT_MASK | rec.TRANSACTION_MASK)) \
            | rec.TRANSACTION_COMMIT_TYPE
        real = Message(t.name, m.body, props, qid, m.flag, m.born_timestamp, m.born_host[:8],
                       m.reconsume_times, sys_flag)
        # The real message and the op record are appended in one synchronous step.
        timers = self.timers
        deliver = parse_delivery(props, timers.clock(), timers.max_delay_ms, timers.levels) \
            if timers.wants_timer(props) else None
        if deliver is not None and deliver > timers.clock():
            clean = strip_timer_properties(props)
            put = timers.append_timer(real, clean, t.name, qid, deliver, prepared_offset=h.phys)
            result = PutResult(t.name, qid, -1, 1, put.physical_offset, put.store_timestamp,
                               put.store_host, put.uniq_keys)
        else:
            if deliver is not None:
                props = {k: v for k, v in props.items() if k not in _TIMER_REQUEST}
            result = put = self.store.append_message(
                t.name, qid, m.body, props, m.flag, sys_flag, m.born_timestamp, m.born_host[:8],
                m.reconsume_times, prepared_offset=h.phys)
        self._end(h, OP_COMMIT)
        self.committed += 1
        await paths.after_put(put)  # its flush wait covers the op record behind it
        return result

    def _commit_kafka_batch(self, h: _Half, m: ConsumedMessage, queues: int) -> PutResult:
        """Append a Kafka half's batch to its real queue (synchronous, no checks): a Kafka
        batch record whose base offset is the queue's next offset, flagged committed
        with the half's offset as RocketMQ flags a committed message, and carrying the
        half's client id so that a crash between it and its op record is repaired."""
        real_qid = int(m.properties.get(PROPERTY_REAL_QUEUE_ID, "0") or 0)
        qid = real_qid if real_qid < queues else real_qid % queues
        batch = m.body
        head = kb.read_header(batch)
        base = self.store.queue_bounds(h.topic, qid)[1]
        raw = b"%s\x01%s\x02" % (PROPERTY_UNIQ_KEY.encode(), h.msg_id.encode())
        return self.store.append(h.topic, qid, kb.with_base_offset_parts(batch, base), raw, 0,
                                 rec.FORMAT_KAFKA_BATCH | rec.TRANSACTION_COMMIT_TYPE,
                                 max(0, head.base_timestamp), b"\x00" * 8, 0, h.phys,
                                 head.records_count)

    async def end_group(self, producer_group: str, commit: bool, *, coordinator: str,
                        accept: Callable[[Mapping[str, str]], bool] | None = None,
                        trailers: Sequence[tuple[str, int, bytes]] = (),
                        authorize: Callable[[str], None] | None = None) -> GroupEnd:
        """End every open half of ``producer_group`` (coordinated by ``coordinator``):
        commit them, in the order they were stored, or roll them back; then append
        ``trailers`` (topic, queue, Kafka batch: the door's transaction markers) to
        their queues. The appends happen in one synchronous step, so no reader of any
        door sees a part of the transaction without the rest, and a crash keeps a
        prefix of them (each half's commit and op record are repaired as for
        ``end_transaction``; a coordinator that ends the group again after a crash
        commits what is left and appends the trailers again). At commit, a half whose
        properties ``accept`` refuses (a fenced producer epoch) is rolled back instead,
        as is a half whose topic no longer exists and cannot be created. ``authorize``
        is called with every topic written before anything is. Under sync flush the
        outcome is durable when this returns."""
        paths = self.paths
        await paths.system_topic(OP_TOPIC)
        halves = sorted((h for h in self.pending.values()
                         if h.group == producer_group and h.coordinator == coordinator),
                        key=lambda h: h.phys)
        topics: dict[str, int] = {}  # topic -> queue count; absent: gone (roll back)
        wanted = {h.topic for h in halves} if commit else set()
        wanted |= {t for t, _q, _b in trailers}
        if authorize is not None:
            for name in sorted(wanted):
                authorize(name)
        for name in sorted(wanted):
            try:
                topics[name] = (await paths.topic_for_put(name)).queues
            except (TopicNotFound, PermissionDenied) as exc:
                log.warning("transaction of %s: topic %s is gone (%s); its records are "
                            "rolled back", producer_group, name, exc)
        # From here on nothing awaits until every record is appended.
        results: list[PutResult] = []
        committed = rolled_back = 0
        ops: list[PutResult] = []
        for h in halves:
            if self.pending.get(h.phys) is not h:
                continue  # ended meanwhile (the awaits above)
            keep = commit and h.topic in topics
            m = None
            if keep:
                m = self._read_half(h)
                keep = accept is None or accept(m.properties)
            if keep and m is not None:
                if m.properties.get(PROPERTY_BODY_FORMAT) == BODY_FORMAT_KAFKA:
                    results.append(self._commit_kafka_batch(h, m, topics[h.topic]))
                else:
                    results.append(self._commit_message(h, m, topics[h.topic]))
                ops.append(self._end(h, OP_COMMIT))
                self.committed += 1
                committed += 1
            else:
                ops.append(self._end(h, OP_ROLLBACK))
                self.rolled_back += 1
                rolled_back += 1
        for topic, qid, batch in trailers:
            if topic not in topics:
                continue
            q = qid if qid < topics[topic] else qid % topics[topic]
            results.append(self.store.append_kafka_batch(topic, q, batch))
        for r in results or ops[-1:]:
            await paths.after_put(r)
        return GroupEnd(tuple(results), committed, rolled_back)

    def _commit_message(self, h: _Half, m: ConsumedMessage, queues: int) -> PutResult:
        """A message half's commit for ``end_group`` (synchronous): appended as is, a
        delivery time it asked for honoured as at a single END."""
        props = {k: v for k, v in m.properties.items() if k not in _HALF_ONLY}
        props[PROPERTY_PREPARED_QUEUE_OFFSET] = str(h.queue_offset)
        real_qid = int(m.properties.get(PROPERTY_REAL_QUEUE_ID, "0") or 0)
        qid = real_qid if real_qid < queues else real_qid % queues
        sys_flag = (m.sys_flag & ~(rec.FORMAT_MASK | rec.TRANSACTION_MASK)) \
            | rec.TRANSACTION_COMMIT_TYPE
        timers = self.timers
        deliver = parse_delivery(props, timers.clock(), timers.max_delay_ms, timers.levels) \
            if timers.wants_timer(props) else None
        if deliver is not None and deliver > timers.clock():
            real = Message(h.topic, m.body, props, qid, m.flag, m.born_timestamp,
                           m.born_host[:8], m.reconsume_times, sys_flag)
            return timers.append_timer(real, strip_timer_properties(props), h.topic, qid, deliver,
                                       prepared_offset=h.phys)
        if deliver is not None:
            props = {k: v for k, v in props.items() if k not in _TIMER_REQUEST}
        return self.store.append_message(h.topic, qid, m.body, props, m.flag, sys_flag,
                                         m.born_timestamp, m.born_host[:8], m.reconsume_times,
                                         prepared_offset=h.phys)

    def _resolve(self, ref: HalfHandle | int | str, transaction_id: str | None) -> _Half:
        phys: int | None
        if isinstance(ref, HalfHandle):
            phys = ref.physical_offset
        elif isinstance(ref, int):
            phys = ref
        else:
            phys = self._ids.get(ref)
            if phys is None:  # an ended transaction: its half is still findable by id
                # (before trying the id as an offset id: any 32 hex digits decode as one)
                found = self.store.lookup_key(ref, HALF_TOPIC, limit=1)
                phys = found[0].physical_offset if found else None
            if phys is None:
                decoded = parse_offset_message_id(ref)
                phys = decoded[0] if decoded is not None else None
        if phys is None and transaction_id:
            phys = self._ids.get(transaction_id)
        if phys is None:
            raise TransactionNotFound(f"no transaction {ref!r}")
        phys = self._alias.get(phys, phys)
        h = self.pending.get(phys)
        if h is not None:
            return h
        outcome = self._ended.get(phys)
        m = self.store.message_at(phys)
        if m is not None and m.topic == HALF_TOPIC:
            # An older copy of a half that was rolled: the current copy has its id.
            current = self._ids.get(m.properties.get(PROPERTY_UNIQ_KEY) or "")
            if current is not None and current in self.pending:
                return self.pending[current]
            outcome = outcome or "ended"
        elif outcome is None:
            raise TransactionNotFound(f"no half message at CommitLog offset {phys}")
        if outcome == "moved":
            outcome = "ended"
        raise TransactionAlreadyEnded(f"the transaction at CommitLog offset {phys} was "
                                      f"{_PAST.get(outcome, 'ended')} already", outcome)

    def _read_half(self, h: _Half) -> ConsumedMessage:
        """The half's record, decoded once (``message_at`` decodes twice: a third of
        an END_TRANSACTION's time, measured with py-spy)."""
        data = self.store.read_record(h.phys)
        try:
            r = rec.decode(data, 0, check_crc=False) if data is not None else None
        except rec.RecordError:
            r = None
        if r is None or r.topic != HALF_TOPIC or r.physical_offset != h.phys:
            # The record is gone (it cannot be: rolled before retention); never guess.
            raise TransactionNotFound(f"the half at CommitLog offset {h.phys} is no longer stored")
        return ConsumedMessage(r.topic, r.queue_id, r.queue_offset, r.body, r.properties,
                               r.born_timestamp, r.store_timestamp, r.physical_offset,
                               r.store_host, r.born_host, r.flag, r.sys_flag, r.reconsume_times)

    def _end(self, h: _Half, kind: int) -> PutResult:
        """Append the op record for ``h`` and forget it (synchronous)."""
        r = self._append_op(h.phys, kind)
        self._forget(h, _OP_NAMES[kind])
        return r

    def _append_op(self, half_phys: int, kind: int) -> PutResult:
        raw = b"TRAN_OP\x01%s\x02TRAN_HALF\x01%d\x02" % (_OP_NAMES[kind].encode(), half_phys)
        return self.store.append(OP_TOPIC, 0, b"", raw, 0, 0, 0, b"\x00" * 8, 0, 0, 1,
                                 half_phys * 8 + kind)

    def _forget(self, h: _Half, outcome: str) -> None:
        self.pending.pop(h.phys, None)
        for key in (h.transaction_id, h.msg_id):
            if self._ids.get(key) == h.phys:
                del self._ids[key]
        if self._alias:
            for old in [o for o, cur in self._alias.items() if cur == h.phys]:
                del self._alias[old]
                self._remember(old, outcome)
        self._remember(h.phys, outcome)

    def _remember(self, phys: int, outcome: str) -> None:
        self._ended[phys] = outcome
        self._ended.move_to_end(phys)
        while len(self._ended) > ENDED_MEMORY:
            self._ended.popitem(last=False)

    # ================================================================ check-back

    async def _check_loop(self) -> None:
        async with trio.open_nursery() as nursery:
            while True:
                now = self.clock()
                heap = self._heap
                self._wake = trio.Event()
                if not heap or heap[0][0] > now:
                    delay = (heap[0][0] - now) / 1000 if heap else math.inf
                    with trio.move_on_after(delay):
                        await self._wake.wait()
                    continue
                at, _seq, phys = heapq.heappop(heap)
                h = self.pending.get(phys)
                if h is None or h.next_check_ms != at or h.checking:
                    continue  # ended, or rescheduled
                if h.coordinator is not None:
                    # Its door decides it: never asked, never discarded; only kept from
                    # retention by rolling it once per roll window.
                    await self.paths.system_topic(OP_TOPIC)
                    if self.pending.get(phys) is h:
                        try:
                            h = self._roll(h)
                        except FerryError as exc:
                            log.error("could not roll the half %s: %s", h.transaction_id, exc)
                        self._schedule(h, now + self.roll_ms)
                    continue
                if h.checks >= self.check_max:
                    await self.paths.system_topic(CHECK_MAX_TOPIC)
                    await self.paths.system_topic(OP_TOPIC)
                    if self.pending.get(phys) is h:
                        try:
                            self._discard(h)
                        except FerryError as exc:  # the store refuses writes: try later
                            log.error("discarding the half %s failed: %s", h.transaction_id, exc)
                            self._schedule(h, now + self.check_interval_ms)
                    continue
                await self.paths.system_topic(OP_TOPIC)
                if self.pending.get(phys) is not h:
                    continue
                if now - h.store_ms >= self.roll_ms:
                    try:
                        h = self._roll(h)
                    except FerryError as exc:
                        log.error("could not roll the half %s: %s", h.transaction_id, exc)
                h.checking = True
                nursery.start_soon(self._check_one, h)

    async def _check_one(self, h: _Half) -> None:
        try:
            async with self._limiter:
                sent = await self._ask(h)
        finally:
            h.checking = False
        if self.pending.get(h.phys) is not h:
            return  # the answer (or an END) arrived while we asked
        self._schedule(h, self.clock() + self.check_interval_ms)
        if sent:
            h.checks += 1
            self.checks_sent += 1
            try:
                await self.paths.after_put(self._append_op(h.phys, OP_CHECK))
            except FerryError as exc:  # counted in memory; the count on disk lags
                log.error("recording a check of %s failed: %s", h.transaction_id, exc)

    async def _ask(self, h: _Half) -> bool:
        checker = self.checker
        if checker is None:
            self.checks_without_producer += 1
            return False
        try:
            m = self._read_half(h)
        except TransactionNotFound as exc:
            log.error("cannot check transaction %s: %s", h.transaction_id, exc)
            self.check_failures += 1
            return False
        half = HalfMessage(m, h.group, h.topic, int(m.properties.get(PROPERTY_REAL_QUEUE_ID, "0")
                                                    or 0), h.transaction_id, h.msg_id,
                           h.checks + 1)
        sent = False
        try:
            with trio.move_on_after(CHECK_CALL_TIMEOUT_S) as scope:
                sent = bool(await checker(h.group, half))
            if scope.cancelled_caught:
                self.check_failures += 1
                log.warning("transaction checker timed out for %s (group %s)",
                            h.transaction_id, h.group)
                return False
        except Exception as exc:  # the hook is another module's code: count, log, go on
            self.check_failures += 1
            log.error("transaction checker failed for %s (group %s)", h.transaction_id, h.group,
                      exc_info=exc)
            return False
        if not sent:
            self.checks_without_producer += 1
        return sent

    def _discard(self, h: _Half) -> None:
        """Unresolved after the last check: to the dead-letter topic of halves."""
        try:
            m = self._read_half(h)
            props = dict(m.properties)
            props[PROPERTY_CHECK_TIMES] = str(h.checks)
            self.store.append_message(CHECK_MAX_TOPIC, 0, m.body, props, m.flag,
                                      m.sys_flag & ~rec.FORMAT_MASK, m.born_timestamp,
                                      m.born_host[:8], m.reconsume_times)
        except (FerryError, UnicodeEncodeError) as exc:
            log.error("could not keep the discarded half %s: %s", h.transaction_id, exc)
        self._end(h, OP_DISCARD)
        self.discarded += 1
        log.warning("transaction %s of producer group %s discarded after %d checks",
                    h.transaction_id, h.group, h.checks)

    def _roll(self, h: _Half) -> _Half:
        """Append a fresh copy of a long-open half (the old one becomes 'moved')."""
        m = self._read_half(h)
        props = dict(m.properties)
        props[PROPERTY_CHECK_TIMES] = str(h.checks)
        props[PROPERTY_ORIGIN_OFFSET] = str(h.origin)
        r = self.store.append_message(HALF_TOPIC, 0, m.body, props, m.flag,
                                      m.sys_flag & ~rec.FORMAT_MASK, m.born_timestamp,
                                      m.born_host[:8], m.reconsume_times)
        new = _Half(r.physical_offset, self.store.dispatched_pos - r.physical_offset,
                    r.queue_offset, h.store_ms, h.group, h.topic, h.msg_id, h.transaction_id,
                    h.origin, h.checks, self._op_max(), h.coordinator)
        self._append_op(h.phys, OP_MOVED)
        self.pending.pop(h.phys, None)
        self._remember(h.phys, "moved")
        self._alias[h.phys] = new.phys
        for old, cur in list(self._alias.items()):
            if cur == h.phys:
                self._alias[old] = new.phys
        self.pending[new.phys] = new
        self._ids[new.transaction_id] = new.phys
        self._ids[new.msg_id] = new.phys
        new.next_check_ms = h.next_check_ms
        return new

    # ================================================================ lifecycle

    def register_hooks(self) -> None:
        self.store.tag_hash_hooks[OP_TOPIC] = _op_tag_hash

    def open_sync(self) -> None:
        """Rebuild the open halves from the half and op queues (from the checkpoint's
        offsets), and repair a commit whose op record a crash cut off."""
        t0 = time.monotonic()
        os.makedirs(self.directory, exist_ok=True)
        store = self.store
        cp = self._read_checkpoint()
        hlo, hhi = store.queue_bounds(HALF_TOPIC, 0)
        olo, ohi = store.queue_bounds(OP_TOPIC, 0)
        if cp is None:
            half_from, op_from = hlo, olo
            hq = store.queues.get((HALF_TOPIC, 0))
            scan_from = hq.entry(hq.first_entry).physical_offset if hq and hhi > hlo \
                else store.dispatched_pos
        else:
            half_from = min(max(int(cp["half_offset"]), hlo), hhi)
            op_from = min(max(int(cp["op_offset"]), olo), ohi)
            scan_from = int(cp["dedupe_from"])
        outcomes: dict[int, int] = {}
        checks: dict[int, int] = {}
        for th in _tag_hashes(store, OP_TOPIC, op_from):
            phys, kind = th >> 3, th & 7
            if kind == OP_CHECK:
                checks[phys] = checks.get(phys, 0) + 1
            elif kind in _OP_NAMES:
                outcomes[phys] = kind
        # A commit whose op record a crash cut off: its real message names the half.
        repaired = 0
        for _pos, data in _iter_commits(store, scan_from):
            half_phys = _I64.unpack_from(data, _POS_PREPARED)[0]
            if half_phys not in outcomes and self._commits_half(data, half_phys):
                outcomes[half_phys] = OP_COMMIT
                self.paths.system_topic_sync(OP_TOPIC)
                self._append_op(half_phys, OP_COMMIT)
                repaired += 1
        for phys, kind in outcomes.items():
            self._remember(phys, _OP_NAMES[kind])
        q = store.queues.get((HALF_TOPIC, 0))
        now = self.clock()
        if q is not None and hhi > half_from:
            i = q.find(half_from)
            while i is not None and i < q.next_entry:
                phys, size, base, _count, _th, ts = q.entry(i)
                i += 1
                if phys in outcomes or size < 0:  # size < 0: lost with a damaged range
                    continue
                m = store.message_at(phys)
                if m is None or m.topic != HALF_TOPIC:
                    continue
                props = m.properties
                ck = props.get(PROPERTY_CHECK_TIMES, "")
                origin = props.get(PROPERTY_ORIGIN_OFFSET, "")
                uniq = props.get(PROPERTY_UNIQ_KEY) or m.offset_msg_id
                half = _Half(phys, size, base, ts, props.get(PROPERTY_PRODUCER_GROUP, ""),
                             props.get(PROPERTY_REAL_TOPIC, ""), uniq,
                             props.get(PROPERTY_TRANSACTION_ID) or uniq,
                             int(origin) if origin.isdigit() else phys,
                             (int(ck) if ck.isdigit() else 0) + checks.get(phys, 0), op_from,
                             props.get(PROPERTY_COORDINATOR) or None)
                if half.origin != phys:
                    self._alias[half.origin] = phys
                immunity = props.get(PROPERTY_CHECK_IMMUNITY, "")
                first = int(immunity) * 1000 if immunity.isdigit() else self.check_timeout_ms
                due = ts + first if half.checks == 0 else now + self.check_interval_ms
                if half.coordinator is not None:
                    due = ts + self.roll_ms
                self._add(half, max(due, now))
        self._write_checkpoint(self._snapshot())
        log.info("transactions open", extra={"pending": len(self.pending),
                                             "repaired_commits": repaired,
                                             "seconds": round(time.monotonic() - t0, 3)})

    def _commits_half(self, data: bytes, half_phys: int) -> bool:
        """Whether a record flagged "committed" is the commit of the half at
        ``half_phys``: that half exists and has the same client id."""
        half = self.store.message_at(half_phys)
        if half is None or half.topic != HALF_TOPIC:
            return False
        try:
            props = rec.decode(data, 0, check_crc=False).properties
        except rec.RecordError:
            return False
        return props.get(PROPERTY_UNIQ_KEY) == half.properties.get(PROPERTY_UNIQ_KEY)

    def start(self, nursery: trio.Nursery) -> None:
        nursery.start_soon(self._check_loop)
        nursery.start_soon(self._checkpointer)

    def close_sync(self) -> None:
        """At shutdown, while the store is still open (the Broker closes it after)."""
        if self.store.failed is None:
            self._write_checkpoint(self._snapshot())

    def _snapshot(self) -> dict[str, int]:
        hhi = self.store.queue_bounds(HALF_TOPIC, 0)[1]
        ohi = self._op_max()
        half_offset = min((h.queue_offset for h in self.pending.values()), default=hhi)
        op_offset = min((h.op_floor for h in self.pending.values()), default=ohi)
        return {"half_offset": half_offset, "op_offset": op_offset,
                "dedupe_from": self.store.dispatched_pos, "written_at_ms": now_ms()}

    def _write_checkpoint(self, snap: dict[str, int]) -> None:
        self.store.flush(snap["dedupe_from"])
        atomic_write(os.path.join(self.directory, "checkpoint.json"), json.dumps(snap).encode())

    def _read_checkpoint(self) -> dict[str, Any] | None:
        try:
            return read_json_state(os.path.join(self.directory, "checkpoint.json"),
                                   ("half_offset", "op_offset", "dedupe_from"))
        except ValueError:
            log.error("transaction checkpoint unreadable: rebuilding from the queues' start")
            return None

    async def _checkpointer(self) -> None:
        while True:
            await trio.sleep(self.checkpoint_interval)
            if self.store.failed is not None:
                continue
            try:
                await trio.to_thread.run_sync(self._write_checkpoint, self._snapshot())
            except OSError as exc:
                log.error("transaction checkpoint failed", exc_info=exc)

    # ================================================================ admin

    def list_pending(self, limit: int = 100, group: str | None = None
                     ) -> list[PendingTransaction]:
        """Open halves, oldest first; only ``group``'s when given."""
        out = []
        halves = [h for h in self.pending.values() if group is None or h.group == group]
        for h in sorted(halves, key=lambda h: h.store_ms)[:limit]:
            out.append(PendingTransaction(h.phys, h.queue_offset, h.msg_id, h.transaction_id,
                                          h.group, h.topic, h.store_ms, h.checks,
                                          h.next_check_ms))
        return out

    def stats(self) -> TransactionStats:
        oldest = min((h.store_ms for h in self.pending.values()), default=None)
        return TransactionStats(len(self.pending), self.prepared, self.committed,
                                self.rolled_back, self.discarded, self.checks_sent,
                                self.checks_without_producer, self.check_failures, oldest)

    def offset_message_id(self, phys: int) -> str:
        return offset_message_id(self.store.store_host, phys)


_PAST = {"commit": "committed", "rollback": "rolled back", "discard": "discarded",
         "moved": "moved", "ended": "ended"}
_TIMER_REQUEST = frozenset(("TIMER_DELIVER_MS", "TIMER_DELAY_MS", "TIMER_DELAY_SEC", "DELAY"))
_POS_PREPARED = 76  # record header offset of the prepared-transaction offset (IPv4 hosts)
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")


def _op_tag_hash(props: Mapping[str, str]) -> int:
    half = props.get(PROPERTY_OP_HALF, "")
    kind = _OP_KINDS.get(props.get(PROPERTY_OP, ""), 0)
    return int(half) * 8 + kind if half.isdigit() else 0


def _tag_hashes(store: Any, topic: str, start: int) -> list[int]:
    q = store.queues.get((topic, 0))
    if q is None or start >= q.max_offset:
        return []
    i = q.find(start)
    out = []
    while i is not None and i < q.next_entry:
        out.append(q.entry(i).tag_hash)
        i += 1
    return out


def _iter_commits(store: Any, start: int) -> Iterator[tuple[int, bytes]]:
    """Records from ``start`` on whose system flags say "committed transaction"."""
    for pos, data in iter_records(store, start):
        sys_flag = _I32.unpack_from(data, rec.POS_SYS_FLAG)[0]
        if sys_flag & rec.TRANSACTION_MASK == rec.TRANSACTION_COMMIT_TYPE \
                and not sys_flag & (rec.BORNHOST_V6_FLAG | rec.STOREHOST_V6_FLAG):
            yield pos, data
