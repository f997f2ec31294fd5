"""The core's one write path and one read path, shared by the Broker and its services.

Write path (``put``, ``put_encoded_batch``, ``put_kafka_batch``, and the steps a
service composes for its own records): resolve the topic (``topic_for_put``:
auto-created when the configuration allows), choose the queue (``queue_for``:
round-robin when the producer did not), append to the store, then ``after_put``:
count the put, wait for the group commit under sync flush, wake the long polls of
the topic. A message that asks for a delivery time or is marked as a half leaves
the path at its first step for the timers or the transactions (``special_put``,
installed by the Broker), which append their own records and come back through
``after_put``.

Read path (``get``, ``get_large``, ``available``, ``wait_any``, ``queue_bounds``):
the topic must exist and be readable, the queue must exist; reads apply the
get's filter and see only what is durable under sync flush and confirmed by the
in-sync set in a broker group (``visible_limit``).

Broker groups (docs/cluster.md): a slave, or a master past its lease deadline,
refuses writes with NotLeader (``write_refusal``, checked first); a slave
refuses reads too unless it serves them (``read_refusal``). A write's
``durability`` (``Durability.REPLICATED`` by default under sync replication)
decides whether ``after_put`` also waits for the in-sync set; no write is
acknowledged once the lease deadline has passed (``lease_deadline``).

Who uses it: the ``Broker`` facade, after it has authorized the caller's
principal (core/access.py), and the services the Broker owns (timers,
transactions, retry, pop), which act for the broker itself and are never
checked against a client's principal. Nothing here knows a principal, a
socket or a protocol, and nothing here imports the Broker or a service: the
services import this module, and the Broker wires the few things the paths
need back from it (creating a topic, saving the topic table, diverting special
puts) as callables at construction.

Everything runs on the event-loop thread and does not yield between resolving
a topic's queue and appending to it, except ``get_large``, which reads in a
worker thread.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from functools import partial
from time import time_ns
from typing import Protocol

import trio

from ..protocols import record as rec
from ..protocols.kafka import batch_header as bh
from . import topicconfig
from .config import BrokerConfig
from .errors import (
    FerryError,
    GroupNotFound,
    InvalidArgument,
    InvalidMessage,
    MessageTooLarge,
    NotLeader,
    PermissionDenied,
    QueueNotFound,
    ShuttingDown,
    TopicNotFound,
)
from .filter import Filter
from .flusher import GroupCommitter
from .message import (
    PROPERTY_DELAY_LEVEL,
    PROPERTY_TIMER_DELAY_MS,
    PROPERTY_TIMER_DELAY_SEC,
    PROPERTY_TIMER_DELIVER_MS,
    PROPERTY_TRANSACTION_PREPARED,
    ConsumedMessage,
    GetResult,
    Message,
    PutResult,
    now_ms,
    parse_offset_message_id,
)
from .metadata import (
    NS_GROUP,
    NS_OFFSET,
    NS_TOPIC,
    PERM_READ_WRITE,
    PERM_WRITE,
    GroupConfig,
    Metadata,
    TopicConfig,
    validate_group_name,
    validate_topic_name,
)
from .replication import Durability
from .statelog import STATE_TOPIC, StateLog
from .stats import Counters
from .store.store import MessageStore
from .tracing import TRACEPARENT, PutTrace, Tracer

# The properties that send a single put elsewhere (core/timers.py, core/transactions.py);
# a message without properties never looks at them.
_TIMER_REQUESTS = (PROPERTY_TIMER_DELIVER_MS, PROPERTY_TIMER_DELAY_MS, PROPERTY_TIMER_DELAY_SEC,
                   PROPERTY_DELAY_LEVEL)
_SPECIAL_PROPERTIES = frozenset((*_TIMER_REQUESTS, PROPERTY_TRANSACTION_PREPARED))
_SPECIAL_ENCODED = tuple(name.encode() + b"\x01" for name in _SPECIAL_PROPERTIES)

THREADED_READ_BYTES = 8 << 20  # gets allowed to return this much read in a worker thread


def _may_be_special(props: Mapping[str, str]) -> bool:
    """Whether a put's properties name a timer or a half. Encoded properties (the
    remoting door's) are searched, not decoded: this runs for every message."""
    if type(props) is rec.EncodedProperties:
        raw = props.raw
        return any(name in raw for name in _SPECIAL_ENCODED)
    return not _SPECIAL_PROPERTIES.isdisjoint(props)


def is_special(props: Mapping[str, str]) -> bool:
    """Whether a single put of a message with these properties goes to the transactions
    (``TRAN_MSG=true``) or the timers (a delivery-time property)."""
    return props.get(PROPERTY_TRANSACTION_PREPARED) == "true" \
        or any(k in props for k in _TIMER_REQUESTS)


class Replication(Protocol):
    """What the paths ask of replication: the master's ``ReplicaSet`` or a slave's
    ``SlaveView`` (core/replication)."""

    def confirm_offset(self) -> int: ...
    def appended(self) -> None: ...
    def check_min_insync(self) -> None: ...
    async def wait(self, pos: int) -> None: ...


class CreateTopic(Protocol):
    """``Broker._create_topic``: create a topic without asking who wants it."""

    def __call__(self, name: str, queues: int | None = None, *, perm: int = ...,
                 exist_ok: bool = ..., for_put: bool = ...) -> Awaitable[TopicConfig]: ...


async def _no_special_put(m: Message) -> PutResult:
    raise InvalidMessage("this broker takes no timed or transactional messages")


class Paths:
    """The write path and the read path (see the module docstring). The Broker owns
    one and hands it to each service at construction."""

    def __init__(self, config: BrokerConfig, store: MessageStore, meta: Metadata,
                 state: StateLog, counters: Counters, *, create_topic: CreateTopic) -> None:
        self.config = config
        self.counters = counters
        self.committer: GroupCommitter | None = None  # under sync flush, set at start
        self.closing = False  # puts raise ShuttingDown
        self.threaded_reads = 0  # reads running in worker threads (retention waits for 0)
        # Where a timed message or a half goes (the Broker installs the services').
        self.special_put: Callable[[Message], Awaitable[PutResult]] = _no_special_put
        # Where receive and store spans go (core/tracing.py); None: tracing is off, and
        # a put pays one test of it.
        self.tracer: Tracer | None = None
        self._store = store
        self._meta = meta
        self._state = state
        self._create_topic = create_topic
        self._max_message_size = config.max_message_size
        self._waiters: dict[str, set[trio.Event]] = {}
        self._round_robin: dict[str, list[int]] = {}
        self._system_topics: dict[str, int] = {}  # name -> perm
        self._settings: dict[str, tuple[TopicConfig, topicconfig.Effective]] = {}
        # Broker groups (None/inf when standalone: nothing below costs a thing then).
        self.replication: Replication | None = None
        self.write_refusal: FerryError | None = None  # NotLeader on a slave or a fenced master
        self.read_refusal: FerryError | None = None  # NotLeader on a slave that serves no reads
        self.default_durability = Durability.LEADER
        self.lease_deadline = math.inf  # trio.current_time() past which nothing is acknowledged
        # Topics with records not visible yet -> the end of the first of them: their long
        # polls wake when the confirm offset passes it (bounded by the topic count).
        self._pending_wakes: dict[str, int] = {}

    # ================================================================ topics and groups

    def topic_config(self, name: str) -> TopicConfig | None:
        """The topic's configuration, or None when there is no such topic."""
        return self._meta.topics.get(name)

    def group_config(self, name: str) -> GroupConfig | None:
        """The consumer group's configuration, or None when it was never created."""
        return self._meta.groups.get(name)

    def writable_topic(self, name: str) -> TopicConfig | None:
        """The topic if it exists (None if not). Raises PermissionDenied when its
        permissions forbid writing."""
        t = self._meta.topics.get(name)
        if t is not None and not t.writable:
            raise PermissionDenied(f"topic {name} is not writable")
        return t

    async def topic_for_put(self, name: str) -> TopicConfig:
        """The writable topic, auto-created when the broker allows it. Raises
        PermissionDenied, InvalidTopicName, TopicNotFound (auto-create off)."""
        t = self.writable_topic(name)
        if t is None:
            if self._system_topics.get(name, 0) & PERM_WRITE:
                await self.system_topic(name)  # one clients write (RMQ_SYS_TRACE_TOPIC)
                return self._meta.topics[name]
            validate_topic_name(name)
            if not self.config.auto_create_topics:
                raise TopicNotFound(f"topic {name} does not exist")
            t = await self._create_topic(name, exist_ok=True, for_put=True)
        return t

    async def ensure_topic(self, name: str, queues: int, perm: int = PERM_READ_WRITE
                           ) -> TopicConfig:
        """A topic the broker writes for itself (%RETRY%, %DLQ%): created with ``queues``
        and ``perm`` if missing, whatever auto-create says."""
        t = self._meta.topics.get(name)
        if t is None:
            t = await self._create_topic(name, queues, perm=perm, exist_ok=True, for_put=True)
        return t

    def queue_for(self, t: TopicConfig, queue_id: int) -> int:
        """``queue_id``, or the next queue round-robin when it is negative. Raises
        QueueNotFound for a queue the topic does not have."""
        if queue_id < 0:
            rr = self._round_robin.get(t.name)
            if rr is None:
                rr = self._round_robin[t.name] = [0]
            rr[0] += 1
            return rr[0] % t.queues
        if queue_id >= t.queues:
            raise QueueNotFound(f"topic {t.name} has {t.queues} queues; no queue {queue_id}")
        return queue_id

    def settings(self, t: TopicConfig) -> topicconfig.Effective:
        """The topic's honoured configs, parsed once per version of its config."""
        cached = self._settings.get(t.name)
        if cached is None or cached[0] is not t:
            cached = self._settings[t.name] = (t, topicconfig.effective(t.attributes, self.config))
        return cached[1]

    def size_limit(self, t: TopicConfig) -> int:
        """The largest record the topic takes: its max.message.bytes (at most the broker's)."""
        return min(self._max_message_size, self.settings(t).max_message_bytes)

    def forget_topic(self, name: str) -> None:
        """A topic was deleted: drop its round-robin position, wake its long polls."""
        self._round_robin.pop(name, None)
        self._settings.pop(name, None)
        self.wake(name)

    def readable_topic(self, name: str) -> TopicConfig:
        """Raises InvalidTopicName, TopicNotFound, PermissionDenied (not readable),
        NotLeader (a slave that serves no reads)."""
        if self.read_refusal is not None:
            raise self.read_refusal
        t = self._meta.topics.get(name)
        if t is None:
            validate_topic_name(name)
            raise TopicNotFound(f"topic {name} does not exist")
        if not t.readable:
            raise PermissionDenied(f"topic {name} is not readable")
        return t

    def consumer_group(self, name: str) -> GroupConfig:
        """The group a consumer acts for, auto-created when the broker allows it: the
        creation is a state record appended with the commit that needs it, durable
        with it (``wait_durable``). Raises InvalidGroupName, GroupNotFound."""
        validate_group_name(name)
        g = self._meta.groups.get(name)
        if g is None:
            if not self.config.auto_create_groups:
                raise GroupNotFound(f"consumer group {name} does not exist")
            if self.write_refusal is not None:
                # A slave serving reads (or a fenced master) creates nothing: the group
                # is created where it commits, on the master.
                return GroupConfig(name, created_at=now_ms())
            self._state.append(((NS_GROUP, name, GroupConfig(name, created_at=now_ms()).to_json()),))
            g = self._meta.groups[name]
        return g

    def committed(self, group: str, topic: str, queue_id: int) -> int | None:
        """The group's committed offset for the queue, or None."""
        return self._meta.committed(group, topic, queue_id)

    def commit(self, group: str, topic: str, queue_id: int, offset: int) -> None:
        """Record a consumer's progress (a state record; committing the offset already
        committed appends nothing). No checks: callers validated the queue."""
        if self.write_refusal is not None:
            raise self.write_refusal
        if self._meta.committed(group, topic, queue_id) != offset:
            self._state.append(((NS_OFFSET, (group, topic, queue_id), offset),))

    # ---------------------------------------------------------------- system topics

    def register_system_topic(self, name: str, perm: int) -> None:
        """A service owns ``name``: it is created on first use with one queue and
        ``perm`` (0 hides it from producers and consumers), and refused to admin."""
        self._system_topics[name] = perm

    def is_system_topic(self, name: str) -> bool:
        return name in self._system_topics

    def system_topics(self) -> Mapping[str, int]:
        """Every registered system topic and its permissions."""
        return self._system_topics

    async def system_topic(self, name: str) -> None:
        """Create a service's system topic on first use (one queue, its perm)."""
        if name not in self._meta.topics:
            await self._state.put(NS_TOPIC, name, self._system_topic_config(name).to_json())

    def system_topic_sync(self, name: str) -> None:
        """``system_topic`` at start-up (the event loop is not serving yet): appended,
        durable with the next flush."""
        if name not in self._meta.topics:
            self._state.append(((NS_TOPIC, name, self._system_topic_config(name).to_json()),))

    def _system_topic_config(self, name: str) -> TopicConfig:
        return TopicConfig(name, 1, self._system_topics[name], "NORMAL", now_ms(),
                           self._store.dispatched_pos)

    # ================================================================ the write path

    async def put(self, messages: Message | Sequence[Message],
                  durability: Durability | None = None, untraced: bool = False) -> PutResult:
        """Append one message, or a batch (one topic, one queue: the first message's
        ``queue_id``) stored as one record. Returns where it landed; under sync flush,
        only once it is on disk; with ``Durability.REPLICATED`` (the group's default
        under sync replication), only once the in-sync set holds it. A single message
        asking for a delivery time, or marked as a half, goes to ``special_put``.
        Raises TopicNotFound, PermissionDenied, MessageTooLarge, InvalidMessage,
        QueueNotFound, StoreError, ShuttingDown, NotLeader, NotEnoughReplicas,
        ReplicationTimeout."""
        if self.closing:
            raise ShuttingDown()
        if self.write_refusal is not None:
            raise self.write_refusal
        tracer = self.tracer
        if tracer is not None and not untraced and (
                tracer.traces_all or type(messages) is not Message
                or (messages.properties and TRACEPARENT in messages.properties)):
            return await self._traced_put(tracer, messages, durability)
        if self.replication is not None:
            self._before_put(durability)
        if isinstance(messages, Message):
            m = messages
            props = m.properties
            if props and _may_be_special(props) and is_special(props):
                return await self.special_put(m)  # a timer or a half
            topic = m.topic
            t = self._meta.topics.get(topic)
            if t is None or not t.perm & PERM_WRITE:
                t = await self.topic_for_put(topic)
            body = m.body
            limit = self._max_message_size if not t.attributes else self.size_limit(t)
            if len(body) > limit:
                raise MessageTooLarge(
                    f"message body is {len(body)} bytes; the maximum is {limit}")
            qid = m.queue_id
            if qid < 0 or qid >= t.queues:
                qid = self.queue_for(t, qid)
            store = self._store
            try:
                result = store.append_message(
                    topic, qid, body, m.properties, m.flag, m.sys_flag & ~rec.FORMAT_MASK,
                    m.born_timestamp, m.born_host, m.reconsume_times)
            except UnicodeEncodeError as exc:
                raise InvalidMessage(f"properties are not encodable: {exc}") from exc
            # after_put, inlined: this is the path of every single message.
            c = self.counters.topics.get(topic) or self.counters.topic(topic)
            c.messages_in += 1
            c.bytes_in += store.dispatched_pos - result.physical_offset
            c.puts += 1
            if self.committer is not None:
                await self.committer.wait_flushed(store.dispatched_pos)
            if self.replication is not None:
                await self._replicated(store.dispatched_pos, topic, durability)
            elif self._waiters:
                self.wake(topic)
            return result
        batch = list(messages)
        if not batch:
            raise InvalidMessage("empty batch")
        if len(batch) == 1:
            return await self.put(batch[0], durability, untraced)
        first = batch[0]
        t = self._meta.topics.get(first.topic)
        if t is None or not t.perm & PERM_WRITE:
            t = await self.topic_for_put(first.topic)
        qid = self.queue_for(t, first.queue_id)
        limit = self._max_message_size if not t.attributes else self.size_limit(t)
        try:
            result = self._store.append_batch(first.topic, qid, batch, first.born_timestamp,
                                              first.born_host, limit)
        except UnicodeEncodeError as exc:
            raise InvalidMessage(f"properties are not encodable: {exc}") from exc
        return await self.after_put(result, durability)

    async def _traced_put(self, tracer: Tracer, messages: Message | Sequence[Message],
                          durability: Durability | None) -> PutResult:
        """``put`` with tracing on: the same steps, timed for the receive and store
        spans (core/tracing.py). The receive span covers the whole put; the store
        span starts where the write path's own steps do."""
        received = time_ns()
        batch = [messages] if isinstance(messages, Message) else list(messages)
        if not batch:
            return await self.put(batch, durability, True)  # raises InvalidMessage
        kind = "batch" if len(batch) > 1 else "message"
        if kind == "message":
            props = batch[0].properties
            if props and _may_be_special(props) and is_special(props):
                kind = "special"
        appended = time_ns()
        result = await self.put(batch[0] if kind != "batch" else batch, durability, True)
        tracer.stored(PutTrace(kind, batch, None, result, received, appended, time_ns()))
        return result

    async def put_encoded_batch(self, topic: str, queue_id: int, body: bytes,
                                born_host: bytes = b"\x00" * 8,
                                durability: Durability | None = None) -> PutResult:
        """Append a native batch already in RocketMQ's batch encoding (a
        SEND_BATCH_MESSAGE body) as one record, without re-encoding it."""
        if self.closing:
            raise ShuttingDown()
        if self.write_refusal is not None:
            raise self.write_refusal
        if self.replication is not None:
            self._before_put(durability)
        t = await self.topic_for_put(topic)
        limit = self._max_message_size if not t.attributes else self.size_limit(t)
        if len(body) > limit:
            raise MessageTooLarge(f"batch is {len(body)} bytes; the maximum is {limit}")
        qid = self.queue_for(t, queue_id)
        tracer = self.tracer
        if tracer is None:
            result = self._store.append_encoded_batch(topic, qid, body, born_host=born_host)
            return await self.after_put(result, durability)
        received = time_ns()
        result = await self.after_put(
            self._store.append_encoded_batch(topic, qid, body, born_host=born_host), durability)
        tracer.stored(PutTrace("encoded", (), body, result, received, received, time_ns()))
        return result

    async def put_kafka_batch(self, topic: str, queue_id: int,
                              batch: bytes | bytearray | memoryview,
                              durability: Durability | None = None) -> PutResult:
        """Append one Kafka RecordBatch (magic 2, CRC already checked by the Kafka
        codec) as one record; its base offset becomes the queue offset assigned."""
        if self.closing:
            raise ShuttingDown()
        if self.write_refusal is not None:
            raise self.write_refusal
        if self.replication is not None:
            self._before_put(durability)
        t = await self.topic_for_put(topic)
        limit = self._max_message_size
        if t.attributes:
            limit = self.size_limit(t)
            if self.settings(t).log_append_time:
                # Kafka's LogAppendTime: the broker's time in the batch, CRC recomputed.
                batch = bh.with_log_append_time(batch, now_ms())
        if len(batch) > limit:
            raise MessageTooLarge(f"batch is {len(batch)} bytes; the maximum is {limit}")
        qid = self.queue_for(t, queue_id)
        tracer = self.tracer
        if tracer is None:
            result = self._store.append_kafka_batch(topic, qid, batch)
            return await self.after_put(result, durability)
        received = time_ns()
        result = await self.after_put(self._store.append_kafka_batch(topic, qid, batch),
                                      durability)
        tracer.stored(PutTrace("kafka", (), batch, result, received, received, time_ns()))
        return result

    async def after_put(self, result: PutResult,
                        durability: Durability | None = None) -> PutResult:
        """Count the put (bytes = the record as stored), then the after-put steps: wait
        for the flush under sync flush, for the in-sync set under
        ``Durability.REPLICATED``, then wake the long polls of the topic (once the
        record is visible). A service that appended a record of its own calls this
        as the last step of its put."""
        c = self.counters.topics.get(result.topic) or self.counters.topic(result.topic)
        c.messages_in += result.count
        end = self._store.dispatched_pos
        c.bytes_in += end - result.physical_offset
        c.puts += 1
        if self.committer is not None:
            await self.committer.wait_flushed(end)
        if self.replication is not None:
            await self._replicated(end, result.topic, durability)
        elif self._waiters:
            self.wake(result.topic)
        return result

    # ---------------------------------------------------------------- broker groups

    def _before_put(self, durability: Durability | None) -> None:
        """Before appending, in a broker group: the lease must not have run out, and a
        REPLICATED write needs enough in-sync replicas."""
        assert self.replication is not None
        if trio.current_time() > self.lease_deadline:
            raise NotLeader("this master's lease deadline passed: it may no longer be master")
        if (durability or self.default_durability) is Durability.REPLICATED:
            self.replication.check_min_insync()

    async def _replicated(self, end: int, topic: str, durability: Durability | None) -> None:
        """The replication after-put step: a REPLICATED write waits for the confirm
        offset; no write is acknowledged past the lease deadline (docs/cluster.md,
        "Fencing"); the topic's long polls wake once the record is visible."""
        r = self.replication
        assert r is not None
        r.appended()
        if (durability or self.default_durability) is Durability.REPLICATED:
            await r.wait(end)
        if r.confirm_offset() >= end:
            if self._waiters:
                self.wake(topic)
        elif topic not in self._pending_wakes:
            self._pending_wakes[topic] = end
        if trio.current_time() > self.lease_deadline:
            raise NotLeader("this master's lease deadline passed before the write was "
                            "acknowledged: it may be lost")

    def visibility_advanced(self, confirm: int) -> None:
        """The confirm offset reached ``confirm``: wake the long polls of the topics whose
        records became visible (the replication's ``on_advance``)."""
        pending = self._pending_wakes
        if pending:
            for topic in [t for t, end in pending.items() if end <= confirm]:
                del pending[topic]
                self.wake(topic)

    def replicated_topic(self, end: int, topic: str) -> None:
        """A slave dispatched a replicated record of ``topic`` ending at ``end``: its long
        polls wake once it is visible."""
        r = self.replication
        if r is not None and r.confirm_offset() >= end:
            if self._waiters:
                self.wake(topic)
        elif topic not in self._pending_wakes:
            self._pending_wakes[topic] = end

    async def wait_durable(self) -> None:
        """Under sync flush, wait until everything appended so far is on disk (a
        no-op under async flush); in a broker group with REPLICATED durability by
        default, until the in-sync set holds it. Raises FlushFailed, NotLeader,
        ReplicationTimeout."""
        end = self._store.dispatched_pos
        if self.committer is not None:
            await self.committer.wait_flushed(end)
        if self.replication is not None:
            if self.default_durability is Durability.REPLICATED:
                await self.replication.wait(end)
            if trio.current_time() > self.lease_deadline:
                raise NotLeader("this master's lease deadline passed")

    # ================================================================ the read path

    def visible_limit(self) -> int | None:
        """The CommitLog offset below which records are visible — under sync flush
        durable, in a broker group confirmed by the in-sync set (the smaller of the
        two); None when everything appended is."""
        limit = self.committer.flushed_pos if self.committer is not None else None
        if self.replication is not None:
            c = self.replication.confirm_offset()
            if limit is None or c < limit:
                limit = c
        return limit

    def _readable_queue(self, topic: str, queue_id: int) -> TopicConfig:
        t = self.readable_topic(topic)
        if not 0 <= queue_id < t.queues:
            raise QueueNotFound(f"topic {topic} has {t.queues} queues; no queue {queue_id}")
        return t

    def get(self, group: str | None, topic: str, queue_id: int, offset: int,
            max_messages: int = 32, max_bytes: int = 4 << 20,
            filter: Filter | None = None) -> GetResult:
        """Read from ``offset`` on: whole records, at least one if any is there, up to
        ``max_messages`` messages and about ``max_bytes`` bytes. Never waits.
        ``group`` (None for anonymous reads) is charged in the stats. Raises
        TopicNotFound, PermissionDenied, QueueNotFound, InvalidArgument."""
        self._readable_queue(topic, queue_id)
        if max_messages < 1 or max_bytes < 1 or offset < 0:
            raise InvalidArgument("offset must be >= 0, max_messages and max_bytes >= 1")
        result = self._store.get(topic, queue_id, offset, max_messages, max_bytes, filter,
                                 self.visible_limit())
        if group is not None and result.records:
            self._charge(group, topic, result)
        return result

    async def get_large(self, group: str | None, topic: str, queue_id: int, offset: int,
                        max_messages: int, max_bytes: int,
                        filter: Filter | None = None) -> GetResult:
        """``get`` for bulk reads: above 8 MiB the records are read with pread(2) in a
        worker thread, so cold pages never stall the event loop."""
        if max_bytes < THREADED_READ_BYTES:
            return self.get(group, topic, queue_id, offset, max_messages, max_bytes, filter)
        self._readable_queue(topic, queue_id)
        self.threaded_reads += 1
        try:
            result = await trio.to_thread.run_sync(partial(
                self._store.get, topic, queue_id, offset, max_messages, max_bytes, filter,
                self.visible_limit(), pread=True))
        finally:
            self.threaded_reads -= 1
        if group is not None and result.records:
            self._charge(group, topic, result)
        return result

    def _charge(self, group: str, topic: str, result: GetResult) -> None:
        c = self.counters.group(group, topic)
        c.gets += 1
        c.messages_out += result.message_count
        c.bytes_out += sum(len(r.data) for r in result.records)

    def stored_bounds(self, topic: str, queue_id: int) -> tuple[int, int]:
        """(min, max) offset of a queue as stored: no checks, (0, 0) for no queue, and
        under sync flush the max counts messages not yet durable."""
        return self._store.queue_bounds(topic, queue_id)

    def queue_bounds(self, topic: str, queue_id: int) -> tuple[int, int]:
        """(min offset, max offset) of a queue as consumers see it; max is the next
        message's offset. Raises TopicNotFound, PermissionDenied, QueueNotFound."""
        self._readable_queue(topic, queue_id)
        lo, hi = self._store.queue_bounds(topic, queue_id)
        if hi > lo and self.visible_limit() is not None \
                and not self.available(topic, queue_id, hi - 1):
            # Under sync flush (in a group: before the in-sync set confirms them)
            # messages are not visible yet: find the visible end by bisection over
            # the (few) unconfirmed tail entries.
            a, b = lo, hi - 1
            while a < b:
                mid = (a + b) // 2
                if self.available(topic, queue_id, mid):
                    a = mid + 1
                else:
                    b = mid
            hi = a
        return lo, hi

    def offset_for_time(self, topic: str, queue_id: int, timestamp_ms: int) -> int:
        """The first offset stored at or after ``timestamp_ms`` (the max offset if none):
        store time. Raises TopicNotFound, PermissionDenied."""
        self.readable_topic(topic)
        return self._store.offset_for_time(topic, queue_id, timestamp_ms)

    def timestamp_lookup(self, topic: str, queue_id: int, timestamp_ms: int) -> tuple[int, int]:
        """Kafka's ListOffsets by time, for every door: (the first offset whose
        timestamp is >= ``timestamp_ms``, its timestamp), (max offset, -1) if none.
        The timestamp is the topic's message.timestamp.type: CreateTime (the
        records' own, through the time index) or LogAppendTime (store time, through
        the ConsumeQueue). Raises TopicNotFound, PermissionDenied."""
        t = self.readable_topic(topic)
        store = self._store
        if t.attributes and self.settings(t).log_append_time:
            offset = store.offset_for_time(topic, queue_id, timestamp_ms)
            hi = store.queue_bounds(topic, queue_id)[1]
            if offset >= hi:
                return hi, -1
            got = store.get(topic, queue_id, offset, 1, 1)
            return offset, got.records[0].store_timestamp if got.records else -1
        return store.offset_for_create_time(topic, queue_id, timestamp_ms)

    def max_timestamp(self, topic: str, queue_id: int) -> tuple[int, int]:
        """(offset, timestamp) of the record with the largest timestamp of the topic's
        type, (-1, -1) if the queue is empty: ListOffsets' MAX_TIMESTAMP."""
        t = self.readable_topic(topic)
        store = self._store
        lo, hi = store.queue_bounds(topic, queue_id)
        if hi <= lo:
            return -1, -1
        if t.attributes and self.settings(t).log_append_time:
            got = store.get(topic, queue_id, hi - 1, 1, 1)
            return hi - 1, got.records[0].store_timestamp if got.records else -1
        return store.max_timestamp(topic, queue_id)

    def available(self, topic: str, queue_id: int, offset: int) -> bool:
        """Whether a get at ``offset`` would find a visible message now."""
        q = self._store.queues.get((topic, queue_id))
        if q is None or offset >= q.max_offset:
            return False
        limit = self.visible_limit()
        if limit is None:
            return True
        i = q.find(max(offset, q.min_offset))
        if i is None:
            return False
        e = q.entry(i)
        return e.physical_offset + e.size <= limit

    def message_by_id(self, msg_id: str) -> ConsumedMessage | None:
        """A message by its id: a client id (UNIQ_KEY) through the index, or an offset
        message id decoded directly. Never a state-log record (no door's to read)."""
        for found in self._store.lookup_key(msg_id, limit=1):
            return found
        decoded = parse_offset_message_id(msg_id)
        if decoded is not None:
            phys, member = decoded
            m = self._store.message_at(phys, member)
            if m is not None and m.offset_msg_id == msg_id.upper() and m.topic != STATE_TOPIC:
                return m
        return None

    # ---------------------------------------------------------------- long polling

    async def wait_any(self, positions: Iterable[tuple[str, int, int]], timeout: float) -> bool:
        """Return True as soon as a message at or past one of the (topic, queue id,
        offset) positions is visible, False after ``timeout`` seconds without one."""
        positions = tuple(positions)
        if self.read_refusal is not None:
            raise self.read_refusal

        def ready() -> bool:
            return any(self.available(t, q, o) for t, q, o in positions)

        if ready():
            return True
        topics = {t for t, _, _ in positions}
        with trio.move_on_after(timeout):
            while True:
                ev = trio.Event()
                self.watch(topics, ev)
                try:
                    await ev.wait()
                finally:
                    self.unwatch(topics, ev)
                if ready():
                    return True
        return False

    def watch(self, topics: Iterable[str], ev: trio.Event) -> None:
        """Set ``ev`` at the next put to any of ``topics`` (once: watch again after)."""
        for t in topics:
            self._waiters.setdefault(t, set()).add(ev)

    def unwatch(self, topics: Iterable[str], ev: trio.Event) -> None:
        for t in topics:
            s = self._waiters.get(t)
            if s is not None:
                s.discard(ev)
                if not s:
                    del self._waiters[t]

    def wake(self, topic: str) -> None:
        """Wake the long polls watching ``topic``."""
        waiters = self._waiters.pop(topic, None)
        if waiters:
            for ev in waiters:
                ev.set()
