"""The Broker: the one produce/consume/admin API that every front-end speaks.

It owns the store, the metadata and the background tasks (flushing,
checkpoints, offset persistence, retention) and runs on trio. Gateways call it
and never touch the store. A sketch of the way of a message:

    gateway ──put(Message)──► Broker ──append──► MessageStore (CommitLog, ConsumeQueue, index)
                                 └──(sync flush) await group commit──► ack
    gateway ──get(group, topic, queue, offset)──► GetResult(records) ──► bytes on the wire
    gateway ──wait(topic, queue, offset, timeout)──► woken by the next put (long polling)

Calls that do not wait (``get``, ``commit_offset``, admin reads) are plain
methods; ``put`` is async because under sync flush it waits for the fsync.
Under async flush ``put`` completes without yielding to the scheduler.
"""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from functools import partial

import trio

from ..protocols import record as rec
from .errors import (
    FerryError,
    FlushFailed,
    GroupNotFound,
    InvalidArgument,
    InvalidMessage,
    MessageTooLarge,
    OffsetOutOfRange,
    PermissionDenied,
    QueueNotFound,
    ShuttingDown,
    StoreError,
    TopicExists,
    TopicNotFound,
)
from .filter import Filter
from .flusher import GroupCommitter, interval_flusher
from .message import (
    PROPERTY_TRANSACTION_PREPARED,
    ConsumedMessage,
    GetResult,
    Message,
    PutResult,
    now_ms,
    parse_offset_message_id,
)
from .metadata import (
    MAX_QUEUES,
    MESSAGE_TYPES,
    PERM_READ,
    PERM_READ_WRITE,
    PERM_WRITE,
    GroupConfig,
    Metadata,
    TopicConfig,
    validate_group_name,
    validate_topic_name,
)
from .metrics import MetricsRegistry, broker_collector
from .pop import (
    DEFAULT_INVISIBLE_MS,
    DEFAULT_MAX_INFLIGHT_PER_QUEUE,
    PoppedMessage,
    PopService,
    QueuePopStatus,
    ReceiptRenewal,
)
from .retry import RESENT_TOPIC, DeadLetter, ResendResult, RetryService, SendBackResult
from .stats import Counters, GroupTopicStats, QueueLag, TopicStats
from .store.store import MessageStore, RecoveryReport, StoreConfig
from .supervisor import TaskSupervisor
from .timers import TIMER_TOPIC, CancelResult, TimerService, TimerStats, parse_delay_levels
from .transactions import (
    CHECK_MAX_TOPIC,
    HALF_TOPIC,
    OP_TOPIC,
    HalfHandle,
    PendingTransaction,
    TransactionAction,
    TransactionChecker,
    TransactionService,
    TransactionStats,
)

log = logging.getLogger("ferrymq.broker")

# The properties that send a single put elsewhere (core/timers.py, core/transactions.py);
# a message without properties never looks at them.
_SPECIAL_PROPERTIES = frozenset(("DELAY", "TIMER_DELIVER_MS", "TIMER_DELAY_MS", "TIMER_DELAY_SEC",
                                 PROPERTY_TRANSACTION_PREPARED))
# System topics the features own: perm 0 hides them from producers and consumers.
_SPECIAL_ENCODED = tuple(name.encode() + b"\x01" for name in _SPECIAL_PROPERTIES)


def _may_be_special(props: Mapping[str, str]) -> bool:
    """Whether a put's properties name a timer or a half. Encoded properties (the
    remoting door's) are searched, not decoded: this runs for every message."""
    if type(props) is rec.EncodedProperties:
        raw = props.raw
        return any(name in raw for name in _SPECIAL_ENCODED)
    return not _SPECIAL_PROPERTIES.isdisjoint(props)


_SYSTEM_TOPICS = {TIMER_TOPIC: 0, HALF_TOPIC: 0, OP_TOPIC: 0, RESENT_TOPIC: 0,
                  CHECK_MAX_TOPIC: PERM_READ}

_THREADED_READ_BYTES = 8 << 20  # gets allowed to return this much read in a worker thread


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Everything the core needs; the server builds it from TOML, environment and flags."""

    data_dir: str = "./ferrymq-data"
    flush: str = "async"  # "async": fsync every flush_interval_ms; "sync": ack after fsync
    flush_interval_ms: int = 500
    segment_size: int = 1 << 30
    cq_entries_per_file: int = 300_000
    index_slots: int = 500_000
    index_entries: int = 2_000_000
    retention_hours: float = 72.0
    max_disk_ratio: float = 0.75  # RocketMQ's diskMaxUsedSpaceRatio
    retention_check_interval_s: float = 10.0
    checkpoint_interval_ms: int = 1000
    offset_persist_interval_ms: int = 1000
    max_message_size: int = 4 << 20
    auto_create_topics: bool = True
    auto_create_groups: bool = True
    default_queues: int = 4
    broker_name: str = "broker-a"
    cluster_name: str = "DefaultCluster"
    store_host: str = "127.0.0.1"
    store_port: int = 10911
    # Timers, transactions, retry (docs/timers.md, docs/transactions.md).
    timer_max_delay_ms: int = 365 * 86_400_000  # a later delivery time is refused (InvalidDelay)
    roll_window_s: int = 86_400  # timers and open halves older than this are appended again
    timer_wheel_slots: int = 1 << 22  # seconds in the ring (48.5 days)
    timer_log_segment_entries: int = 1 << 20
    timer_prepare_limit: int = 200_000  # deliveries built ahead of time, at most (soft)
    # RocketMQ's messageDelayLevel: the lengths of the 18 DELAY levels (retries use them too).
    delay_levels: str = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
    transaction_check_timeout_ms: int = 6_000  # RocketMQ transactionTimeOut
    transaction_check_interval_ms: int = 60_000  # RocketMQ transactionCheckInterval
    transaction_check_max: int = 15  # RocketMQ transactionCheckMax
    extra: Mapping[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.flush not in ("async", "sync"):
            raise ValueError("flush must be 'async' or 'sync'")
        if self.segment_size < self.max_message_size + 64 * 1024:
            raise ValueError("segment_size must exceed max_message_size by at least 64 KiB")
        if not 1 <= self.default_queues <= MAX_QUEUES:
            raise ValueError(f"default_queues must be 1..{MAX_QUEUES}")
        if self.timer_wheel_slots < 1024 or self.timer_wheel_slots & (self.timer_wheel_slots - 1):
            raise ValueError("timer_wheel_slots must be a power of two, at least 1024")
        if not 60 <= self.roll_window_s < self.timer_wheel_slots // 2:
            raise ValueError("roll_window_s must be at least 60 and under half the wheel")
        parse_delay_levels(self.delay_levels)  # raises ValueError
        if self.timer_max_delay_ms < 0 or self.transaction_check_max < 0 \
                or self.transaction_check_timeout_ms < 0 or self.transaction_check_interval_ms < 1:
            raise ValueError("timer and transaction settings must not be negative")


class Broker:
    """Use ``async with Broker.open(config) as broker``; see the module docstring."""

    def __init__(self, config: BrokerConfig) -> None:
        self.config = config
        self.store = MessageStore(StoreConfig(
            directory=os.path.join(config.data_dir, "store"),
            segment_size=config.segment_size,
            cq_entries_per_file=config.cq_entries_per_file,
            index_slots=config.index_slots,
            index_entries=config.index_entries,
            store_host=rec.host_bytes(config.store_host, config.store_port),
        ))
        self.meta = Metadata(os.path.join(config.data_dir, "config"))
        self.counters = Counters()
        self.recovery: RecoveryReport | None = None
        self.sync_flush = config.flush == "sync"
        self._committer: GroupCommitter | None = None
        self._waiters: dict[str, set[trio.Event]] = {}
        self._round_robin: dict[str, list[int]] = {}
        self._meta_lock = trio.Lock()
        self._topic_watchers: list[Callable[[], None]] = []
        self._threaded_reads = 0
        self._closing = False
        self.started_at = 0
        self.timers = TimerService(self)
        self.transactions = TransactionService(self)
        self.retry = RetryService(self)
        self.metrics = MetricsRegistry()
        self.metrics.add_collector(broker_collector(self))
        self._flush_seconds = self.metrics.histogram(
            "ferrymq_store_flush_duration_seconds", "CommitLog fsync latency.").labels()
        self.pop_service = PopService(
            self, os.path.join(config.data_dir, "pop"),
            max_inflight_per_queue=int(config.extra.get(  # type: ignore[call-overload]
                "pop_max_inflight_per_queue", DEFAULT_MAX_INFLIGHT_PER_QUEUE)))

    # ================================================================ lifecycle

    @classmethod
    @asynccontextmanager
    async def open(cls, config: BrokerConfig) -> AsyncIterator[Broker]:
        """Recover the store, start the background tasks, and on exit shut down
        cleanly: flush, checkpoint, persist offsets, remove the abort marker."""
        broker = cls(config)
        try:
            # Recovery runs in a worker thread; a cancellation (a signal) during it
            # takes effect when it ends, and the finally clause still closes cleanly.
            await trio.to_thread.run_sync(broker._open_sync)
            async with trio.open_nursery() as nursery:
                broker._start_tasks(nursery)
                try:
                    yield broker
                finally:
                    broker._closing = True
                    nursery.cancel_scope.cancel()
        except BaseExceptionGroup as group:
            # The background tasks catch their own errors, so a group here wraps
            # the caller's one exception: give it back unwrapped.
            if len(group.exceptions) == 1:
                raise group.exceptions[0] from None
            raise
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(broker._close_sync)

    def _open_sync(self) -> None:
        os.makedirs(self.config.data_dir, exist_ok=True)
        self.meta.load()
        self._system_topics_sync()
        self.recovery = self.store.open(self._accept_record)
        for (topic, _qid) in list(self.store.queues):
            if topic not in self.meta.topics:
                self.store.drop_topic(topic)  # a deleted topic's leftovers
        self._system_topics_sync()
        self._save_topics_sync()
        self.timers.open_sync(self.recovery.clean_shutdown)
        self.transactions.open_sync()
        self.pop_service.open()
        self.started_at = now_ms()
        log.info("store open", extra={"recovery": self.recovery})

    def _accept_record(self, topic: str, queue_id: int, phys: int) -> bool:
        """Recovery asks whether a record belongs to a live topic."""
        t = self.meta.topics.get(topic)
        if t is not None:
            if phys < t.created_phys:
                return False
            if queue_id >= t.queues:
                self.meta.with_topic(t, queues=queue_id + 1)
            return True
        if phys < self.meta.tombstones.get(topic, -1):
            return False
        # The topic's records outlived its metadata (created, written, crashed
        # before topics.json was rewritten): bring the topic back.
        log.warning("re-creating topic %s found in the CommitLog", topic)
        self.meta.topics[topic] = TopicConfig(topic, max(queue_id + 1, self.config.default_queues),
                                              created_at=now_ms(), created_phys=phys)
        return True

    def _start_tasks(self, nursery: trio.Nursery) -> None:
        # Every background task runs supervised (core/supervisor.py): a failure is
        # logged, counted and the task restarted with backoff; only the flusher is
        # critical (writers wait on it), and its failure stops the broker cleanly.
        store = self.store
        tasks = self.tasks = TaskSupervisor(nursery, self.metrics, prefix="broker",
                                            on_fatal=self._store_task_failed)
        if self.sync_flush:
            self._committer = GroupCommitter(store.flush, lambda: store.dispatched_pos,
                                             self._flush_failed, self._flushed)
            self._committer.flushed_pos = store.commitlog.flushed_pos
            tasks.start_soon(self._committer.run, name="flusher", critical=True)
        else:
            tasks.start_soon(partial(
                interval_flusher, store.flush,
                lambda: store.commitlog.flushed_pos < store.commitlog.write_pos,
                self.config.flush_interval_ms / 1000, self._flush_failed, self._flushed),
                name="flusher", critical=True)
        tasks.every(self.config.checkpoint_interval_ms / 1000, self._checkpoint,
                    name="checkpoint")
        tasks.every(self.config.offset_persist_interval_ms / 1000, self.flush_offsets,
                    name="offsets")
        tasks.every(self.config.retention_check_interval_s, self.run_retention,
                    name="retention")
        tasks.start_soon(self.pop_service.run, name="pop")
        self.timers.start(tasks)  # type: ignore[arg-type]  # a supervisor starts tasks as a nursery does
        self.transactions.start(tasks)  # type: ignore[arg-type]
        # What start-up built (modules, configuration, recovery) lives as long as the
        # process: out of the collector's sight, full collections stay short. Timer
        # lateness depends on it (``ferrymq bench timers``: the longest pause of a
        # 100,000-timer burst went from 53 to 27 ms).
        gc.collect()
        gc.freeze()

    def _store_task_failed(self, task: str, exc: BaseException) -> None:
        """A critical task died: nothing written from now on can be promised durable.
        Refuse writes, and leave the abort marker so the next start recovers the log."""
        if self.store.failed is None:
            self.store.failed = StoreError(f"{task} failed: {type(exc).__name__}: {exc}")

    async def _checkpoint(self) -> None:
        if self.store.failed is None and self.store.dispatched_pos:
            await trio.to_thread.run_sync(self.store.checkpoint)

    def _flush_failed(self, err: FlushFailed) -> None:
        self.counters.flush_failures += 1
        self.store.failed = err

    def _flushed(self, pos: int, seconds: float) -> None:
        self.counters.flushes += 1
        self.counters.flush_seconds += seconds
        self._flush_seconds.observe(seconds)

    def _close_sync(self) -> None:
        if not self.store._open:
            self.store.close()  # releases the directory lock if recovery failed midway
            return
        try:
            self.timers.close_sync()
            self.transactions.close_sync()
            if self.meta.groups_dirty:
                self.meta.save("groups.json", self.meta.dump_groups())
            if self.meta.offsets_dirty:
                self.meta.save("offsets.json", self.meta.dump_offsets())
            self.pop_service.close()
        finally:
            self.timers.wheel.close()
            self.store.close()

    # ================================================================ producing

    def _writable_topic(self, name: str) -> TopicConfig | None:
        t = self.meta.topics.get(name)
        if t is not None and not t.writable:
            raise PermissionDenied(f"topic {name} is not writable")
        return t

    async def _topic_for_put(self, name: str) -> TopicConfig:
        t = self._writable_topic(name)
        if t is None:
            validate_topic_name(name)
            if not self.config.auto_create_topics:
                raise TopicNotFound(f"topic {name} does not exist")
            t = await self.create_topic(name, exist_ok=True)
        return t

    def _queue_for(self, t: TopicConfig, queue_id: int) -> int:
        if queue_id < 0:
            rr = self._round_robin.get(t.name)
            if rr is None:
                rr = self._round_robin[t.name] = [0]
            rr[0] += 1
            return rr[0] % t.queues
        if queue_id >= t.queues:
            raise QueueNotFound(f"topic {t.name} has {t.queues} queues; no queue {queue_id}")
        return queue_id

    async def put(self, messages: Message | Sequence[Message]) -> PutResult:
        """Append one message, or a batch (one topic, one queue: the first message's
        ``queue_id``) stored as one record. Returns where it landed; under sync flush,
        only once it is on disk. Raises TopicNotFound, PermissionDenied,
        MessageTooLarge, InvalidMessage, QueueNotFound, StoreError, ShuttingDown."""
        if self._closing:
            raise ShuttingDown()
        if isinstance(messages, Message):
            m = messages
            props = m.properties
            if props and _may_be_special(props) and self._special(props):
                return await self._put_special(m)  # a timer or a half: see "issue 6" below
            topic = m.topic
            t = self.meta.topics.get(topic)
            if t is None or not t.perm & PERM_WRITE:
                t = await self._topic_for_put(topic)
            body = m.body
            if len(body) > self.config.max_message_size:
                raise MessageTooLarge(
                    f"message body is {len(body)} bytes; the maximum is "
                    f"{self.config.max_message_size}")
            qid = m.queue_id
            if qid < 0 or qid >= t.queues:
                qid = self._queue_for(t, qid)
            try:
                result = self.store.append_message(
                    topic, qid, body, m.properties, m.flag, m.sys_flag & ~rec.FORMAT_MASK,
                    m.born_timestamp, m.born_host, m.reconsume_times)
            except UnicodeEncodeError as exc:
                raise InvalidMessage(f"properties are not encodable: {exc}") from exc
            c = self.counters.topics.get(topic) or self.counters.topic(topic)
            c.messages_in += 1
            c.bytes_in += self.store.dispatched_pos - result.physical_offset
            c.puts += 1
            if self._committer is not None:
                await self._committer.wait_flushed(self.store.dispatched_pos)
            if self._waiters:
                self._notify(topic)
            return result
        batch = list(messages)
        if not batch:
            raise InvalidMessage("empty batch")
        if len(batch) == 1:
            return await self.put(batch[0])
        first = batch[0]
        t = self.meta.topics.get(first.topic)
        if t is None or not t.perm & PERM_WRITE:
            t = await self._topic_for_put(first.topic)
        qid = self._queue_for(t, first.queue_id)
        try:
            result = self.store.append_batch(first.topic, qid, batch, first.born_timestamp,
                                             first.born_host, self.config.max_message_size)
        except UnicodeEncodeError as exc:
            raise InvalidMessage(f"properties are not encodable: {exc}") from exc
        return await self._after_put(result)

    async def put_encoded_batch(self, topic: str, queue_id: int, body: bytes,
                                born_host: bytes = b"\x00" * 8) -> PutResult:
        """Append a native batch already in RocketMQ's batch encoding (a
        SEND_BATCH_MESSAGE body) as one record, without re-encoding it."""
        if self._closing:
            raise ShuttingDown()
        t = await self._topic_for_put(topic)
        if len(body) > self.config.max_message_size:
            raise MessageTooLarge(f"batch is {len(body)} bytes; the maximum is "
                                  f"{self.config.max_message_size}")
        qid = self._queue_for(t, queue_id)
        result = self.store.append_encoded_batch(topic, qid, body, born_host=born_host)
        return await self._after_put(result)

    async def put_kafka_batch(self, topic: str, queue_id: int,
                              batch: bytes | bytearray | memoryview) -> PutResult:
        """Append one Kafka RecordBatch (magic 2, CRC already checked by the Kafka
        codec) as one record; its base offset becomes the queue offset assigned."""
        if self._closing:
            raise ShuttingDown()
        t = await self._topic_for_put(topic)
        if len(batch) > self.config.max_message_size:
            raise MessageTooLarge(f"batch is {len(batch)} bytes; the maximum is "
                                  f"{self.config.max_message_size}")
        qid = self._queue_for(t, queue_id)
        result = self.store.append_kafka_batch(topic, qid, batch)
        return await self._after_put(result)

    async def _after_put(self, result: PutResult) -> PutResult:
        """Count the put (bytes = the record as stored), wait for the flush under
        sync flush, then wake the long polls of the topic."""
        c = self.counters.topics.get(result.topic) or self.counters.topic(result.topic)
        c.messages_in += result.count
        c.bytes_in += self.store.dispatched_pos - result.physical_offset
        c.puts += 1
        if self._committer is not None:
            await self._committer.wait_flushed(self.store.dispatched_pos)
        if self._waiters:
            self._notify(result.topic)
        return result

    # ================================================================ consuming

    def _readable_topic(self, name: str) -> TopicConfig:
        t = self.meta.topics.get(name)
        if t is None:
            validate_topic_name(name)
            raise TopicNotFound(f"topic {name} does not exist")
        if not t.readable:
            raise PermissionDenied(f"topic {name} is not readable")
        return t

    def _visible_limit(self) -> int | None:
        return self._committer.flushed_pos if self._committer is not None else None

    def get(self, group: str | None, topic: str, queue_id: int, offset: int,
            max_messages: int = 32, max_bytes: int = 4 << 20,
            filter: Filter | None = None) -> GetResult:
        """Read from ``offset`` on: whole records, at least one if any is there,
        up to ``max_messages`` messages and about ``max_bytes`` bytes. Never waits
        (see ``wait``). ``group`` (None for anonymous reads) is charged in the
        stats. Raises TopicNotFound, PermissionDenied, QueueNotFound, InvalidArgument."""
        t = self._readable_topic(topic)
        if not 0 <= queue_id < t.queues:
            raise QueueNotFound(f"topic {topic} has {t.queues} queues; no queue {queue_id}")
        if max_messages < 1 or max_bytes < 1 or offset < 0:
            raise InvalidArgument("offset must be >= 0, max_messages and max_bytes >= 1")
        result = self.store.get(topic, queue_id, offset, max_messages, max_bytes, filter,
                                self._visible_limit())
        if group is not None and result.records:
            self._charge(group, topic, result)
        return result

    async def get_large(self, group: str | None, topic: str, queue_id: int, offset: int,
                        max_messages: int, max_bytes: int,
                        filter: Filter | None = None) -> GetResult:
        """``get`` for bulk reads: above 8 MiB the records are read with pread(2) in
        a worker thread, so cold pages never stall the event loop."""
        if max_bytes < _THREADED_READ_BYTES:
            return self.get(group, topic, queue_id, offset, max_messages, max_bytes, filter)
        t = self._readable_topic(topic)
        if not 0 <= queue_id < t.queues:
            raise QueueNotFound(f"topic {topic} has {t.queues} queues; no queue {queue_id}")
        self._threaded_reads += 1
        try:
            result = await trio.to_thread.run_sync(partial(
                self.store.get, topic, queue_id, offset, max_messages, max_bytes, filter,
                self._visible_limit(), pread=True))
        finally:
            self._threaded_reads -= 1
        if group is not None and result.records:
            self._charge(group, topic, result)
        return result

    def _charge(self, group: str, topic: str, result: GetResult) -> None:
        c = self.counters.group(group, topic)
        c.gets += 1
        c.messages_out += result.message_count
        c.bytes_out += sum(len(r.data) for r in result.records)

    def available(self, topic: str, queue_id: int, offset: int) -> bool:
        """Whether a get at ``offset`` would find a visible message now."""
        q = self.store.queues.get((topic, queue_id))
        if q is None or offset >= q.max_offset:
            return False
        if self._committer is None:
            return True
        i = q.find(max(offset, q.min_offset))
        if i is None:
            return False
        e = q.entry(i)
        return e.physical_offset + e.size <= self._committer.flushed_pos

    async def wait(self, topic: str, queue_id: int, offset: int, timeout: float) -> bool:
        """Long polling: return True as soon as a message at ``offset`` or later is
        visible in the queue, False after ``timeout`` seconds without one."""
        return await self.wait_any(((topic, queue_id, offset),), timeout)

    async def wait_any(self, positions: Iterable[tuple[str, int, int]], timeout: float) -> bool:
        """``wait`` over several (topic, queue id, offset) positions at once."""
        positions = tuple(positions)

        def ready() -> bool:
            return any(self.available(t, q, o) for t, q, o in positions)

        if ready():
            return True
        topics = {t for t, _, _ in positions}
        with trio.move_on_after(timeout):
            while True:
                ev = trio.Event()
                for t in topics:
                    self._waiters.setdefault(t, set()).add(ev)
                try:
                    await ev.wait()
                finally:
                    for t in topics:
                        s = self._waiters.get(t)
                        if s is not None:
                            s.discard(ev)
                            if not s:
                                del self._waiters[t]
                if ready():
                    return True
        return False

    def _notify(self, topic: str) -> None:
        waiters = self._waiters.pop(topic, None)
        if waiters:
            for ev in waiters:
                ev.set()

    # ================================================================ pop consumption
    # RocketMQ 5's POP_MESSAGE, ACK_MESSAGE, BATCH_ACK_MESSAGE, CHANGE_INVISIBLE_TIME
    # and PEEK_MESSAGE; the state and its durability live in core/pop.py (docs/pop.md).

    async def pop(self, group: str, topic: str, max_messages: int = 16,
                  invisible_time_ms: int = DEFAULT_INVISIBLE_MS, filter: Filter | None = None,
                  *, queue_id: int = -1, wait_ms: int = 0, init: str = "earliest"
                  ) -> list[PoppedMessage]:
        """Lease up to ``max_messages`` messages of ``topic`` (every queue, or only
        ``queue_id``) to ``group`` for ``invisible_time_ms``: revived ones first, then
        new ones. Waits up to ``wait_ms`` for one (long polling); [] at the timeout.
        A group without pop state starts at its committed offset, else at the
        queue's start (``init="earliest"``) or end (``"latest"``). Raises
        TopicNotFound, PermissionDenied, QueueNotFound, InvalidArgument,
        InvalidGroupName, GroupNotFound (auto-create off)."""
        return await self.pop_service.pop(group, topic, max_messages, invisible_time_ms,
                                          filter, queue_id, wait_ms, init)

    def ack(self, receipt: str) -> None:
        """Ack one popped message by its receipt handle. Raises InvalidReceipt (not
        issued by this broker), ReceiptStale (acked already, or its invisible time
        ran out, or superseded by change_invisible_time), TopicNotFound."""
        self.pop_service.ack(receipt)

    def ack_batch(self, receipts: Sequence[str]) -> list[FerryError | None]:
        """Ack several handles; per handle None (acked) or the error ``ack`` would raise."""
        return self.pop_service.ack_batch(receipts)

    def change_invisible_time(self, receipt: str, invisible_time_ms: int) -> ReceiptRenewal:
        """Extend (or shorten) a lease to ``invisible_time_ms`` from now. The old handle
        becomes stale; ack with the returned one. Raises as ``ack``, and InvalidArgument."""
        return self.pop_service.change_invisible_time(receipt, invisible_time_ms)

    def peek(self, group: str, topic: str, max_messages: int = 16,
             filter: Filter | None = None, *, queue_id: int = -1) -> list[ConsumedMessage]:
        """What the group's next pop would get, without leasing anything."""
        return self.pop_service.peek(group, topic, max_messages, filter, queue_id)

    def pop_status(self, group: str, topic: str | None = None) -> list[QueuePopStatus]:
        """Per queue the group popped from: pop offset, leases out, revived waiting."""
        return self.pop_service.status(group, topic)

    # ================================================================ offsets

    def queue_bounds(self, topic: str, queue_id: int) -> tuple[int, int]:
        """(min offset, max offset) of a queue; max is the next message's offset."""
        t = self._readable_topic(topic)
        if not 0 <= queue_id < t.queues:
            raise QueueNotFound(f"topic {topic} has {t.queues} queues; no queue {queue_id}")
        lo, hi = self.store.queue_bounds(topic, queue_id)
        if self._committer is not None and hi > lo and not self.available(topic, queue_id, hi - 1):
            # Under sync flush, messages not yet on disk are not visible: find the
            # visible end by bisection over the (few) unflushed tail entries.
            a, b = lo, hi - 1
            while a < b:
                mid = (a + b) // 2
                if self.available(topic, queue_id, mid):
                    a = mid + 1
                else:
                    b = mid
            hi = a
        return lo, hi

    def commit_offset(self, group: str, topic: str, queue_id: int, offset: int) -> None:
        """Record ``offset`` (the next message to consume) for the group. Persisted
        within ``offset_persist_interval_ms`` and at shutdown (RocketMQ's model: a
        crash can replay what was consumed since). Raises InvalidGroupName,
        TopicNotFound, QueueNotFound, OffsetOutOfRange (negative), GroupNotFound."""
        self._group_for_commit(group)
        t = self.meta.topics.get(topic)
        if t is None:
            validate_topic_name(topic)
            raise TopicNotFound(f"topic {topic} does not exist")
        if not 0 <= queue_id < t.queues:
            raise QueueNotFound(f"topic {topic} has {t.queues} queues; no queue {queue_id}")
        if offset < 0:
            raise OffsetOutOfRange(f"offset {offset} is negative")
        self.meta.commit(group, topic, queue_id, offset)

    def _group_for_commit(self, group: str) -> GroupConfig:
        validate_group_name(group)
        g = self.meta.groups.get(group)
        if g is None:
            if not self.config.auto_create_groups:
                raise GroupNotFound(f"consumer group {group} does not exist")
            g = self.meta.groups[group] = GroupConfig(group, created_at=now_ms())
            self.meta.groups_dirty = True  # saved by the periodic metadata job
        return g

    def committed_offset(self, group: str, topic: str, queue_id: int) -> int | None:
        """The group's committed offset for the queue, or None if it never committed."""
        return self.meta.committed(group, topic, queue_id)

    def offset_for_time(self, topic: str, queue_id: int, timestamp_ms: int) -> int:
        """The first offset whose message was stored at or after ``timestamp_ms``
        (the max offset if none): rewinding a consumer by time."""
        self._readable_topic(topic)
        return self.store.offset_for_time(topic, queue_id, timestamp_ms)

    async def flush_offsets(self) -> None:
        """Persist committed offsets (and auto-created groups) now if any changed."""
        if self.meta.groups_dirty:
            await self._save_groups()
        if self.meta.offsets_dirty:
            data = self.meta.dump_offsets()
            async with self._meta_lock:
                await trio.to_thread.run_sync(self.meta.save, "offsets.json", data)

    # ================================================================ topics

    def topic(self, name: str) -> TopicConfig:
        t = self.meta.topics.get(name)
        if t is None:
            validate_topic_name(name)
            raise TopicNotFound(f"topic {name} does not exist")
        return t

    def topics(self) -> list[TopicConfig]:
        return sorted(self.meta.topics.values(), key=lambda t: t.name)

    async def create_topic(self, name: str, queues: int | None = None, *,
                           perm: int = PERM_READ_WRITE, message_type: str = "NORMAL",
                           attributes: Mapping[str, str] | None = None,
                           exist_ok: bool = False) -> TopicConfig:
        """Create a topic (``queues`` defaults to the broker's default_queues).
        Raises InvalidTopicName, InvalidArgument, TopicExists (unless ``exist_ok``)."""
        validate_topic_name(name)
        queues = self.config.default_queues if queues is None else queues
        _check_topic_args(queues, perm, message_type)
        existing = self.meta.topics.get(name)
        if existing is not None:
            if exist_ok:
                return existing
            raise TopicExists(f"topic {name} exists")
        t = TopicConfig(name, queues, perm, message_type, now_ms(), self.store.dispatched_pos,
                        dict(attributes or {}))
        # In memory first, so concurrent producers see it at once; then durable.
        self.meta.topics[name] = t
        self.meta.tombstones.pop(name, None)
        await self._save_topics()
        return t

    async def update_topic(self, name: str, *, queues: int | None = None,
                           perm: int | None = None, message_type: str | None = None,
                           attributes: Mapping[str, str] | None = None) -> TopicConfig:
        """Change a topic's queue count (grow only: a queue's messages stay where
        they are), permissions, message type or attributes."""
        self._refuse_system_topic(name)
        t = self.topic(name)
        new_queues = t.queues if queues is None else queues
        if new_queues < t.queues:
            raise InvalidArgument(f"topic {name} has {t.queues} queues; queues cannot shrink")
        _check_topic_args(new_queues, t.perm if perm is None else perm,
                          t.message_type if message_type is None else message_type)
        t = self.meta.with_topic(
            t, queues=new_queues, perm=t.perm if perm is None else perm,
            message_type=t.message_type if message_type is None else message_type,
            attributes=t.attributes if attributes is None else dict(attributes))
        await self._save_topics()
        return t

    async def delete_topic(self, name: str) -> None:
        """Delete a topic: its queues and committed offsets go at once, its records
        leave the CommitLog with retention. Raises TopicNotFound."""
        self._refuse_system_topic(name)
        self.topic(name)
        del self.meta.topics[name]
        self.meta.tombstones[name] = self.store.dispatched_pos
        self.meta.drop_topic_offsets(name)
        self.store.drop_topic(name)
        self._round_robin.pop(name, None)
        self.counters.topics.pop(name, None)
        self.pop_service.forget_topic(name)
        self._notify(name)
        await self._save_topics()

    def watch_topics(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (cheap, synchronous) whenever a topic is created, changed
        or deleted, through whichever door: the remoting door re-registers its
        routes with the NameServer, so a topic a Kafka producer auto-created is
        routable for RocketMQ clients at once."""
        self._topic_watchers.append(callback)

    async def _save_topics(self) -> None:
        for callback in self._topic_watchers:
            callback()
        data = self.meta.dump_topics()
        async with self._meta_lock:
            await trio.to_thread.run_sync(self.meta.save, "topics.json", data)

    def _save_topics_sync(self) -> None:
        self.meta.save("topics.json", self.meta.dump_topics())

    # ================================================================ groups

    def group(self, name: str) -> GroupConfig:
        validate_group_name(name)
        g = self.meta.groups.get(name)
        if g is None:
            raise GroupNotFound(f"consumer group {name} does not exist")
        return g

    def groups(self) -> list[GroupConfig]:
        return sorted(self.meta.groups.values(), key=lambda g: g.name)

    async def create_group(self, name: str, *, exist_ok: bool = False, **settings: object
                           ) -> GroupConfig:
        validate_group_name(name)
        g = self.meta.groups.get(name)
        if g is not None:
            if exist_ok:
                return g
            raise InvalidArgument(f"consumer group {name} exists")
        g = self.meta.groups[name] = replace(GroupConfig(name, created_at=now_ms()), **settings)  # type: ignore[arg-type]
        await self._save_groups()
        return g

    async def update_group(self, name: str, **settings: object) -> GroupConfig:
        g = self.meta.groups[name] = replace(self.group(name), **settings)  # type: ignore[arg-type]
        await self._save_groups()
        return g

    async def delete_group(self, name: str) -> None:
        """Forget a group: its settings, pop state and committed offsets. A group known
        only by its offsets (a Kafka consumer group commits without being created)
        counts as existing; GroupNotFound when neither is there."""
        validate_group_name(name)
        if name not in self.meta.groups and name not in self.meta.offsets:
            raise GroupNotFound(f"consumer group {name} does not exist")
        self.meta.groups.pop(name, None)
        self.pop_service.forget_group(name)
        if self.meta.offsets.pop(name, None) is not None:
            self.meta.offsets_dirty = True
        await self._save_groups()

    async def _save_groups(self) -> None:
        data = self.meta.dump_groups()
        async with self._meta_lock:
            await trio.to_thread.run_sync(self.meta.save, "groups.json", data)

    # ================================================================ stats

    def topic_stats(self, name: str) -> TopicStats:
        t = self.topic(name)
        c = self.counters.topics.get(name)
        queues = tuple((q, *self.store.queue_bounds(name, q)) for q in range(t.queues))
        return TopicStats(name, queues, c.messages_in if c else 0, c.bytes_in if c else 0)

    def group_stats(self, group: str, topic: str | None = None) -> list[GroupTopicStats]:
        """Per topic the group consumed: every queue's committed offset and lag."""
        self.group(group)
        topics = [topic] if topic else sorted(self.meta.offsets.get(group, {}))
        out = []
        for name in topics:
            t = self.meta.topics.get(name)
            if t is None:
                continue
            lags = tuple(QueueLag(q, *self.store.queue_bounds(name, q),
                                  self.meta.committed(group, name, q)) for q in range(t.queues))
            c = self.counters.groups.get((group, name))
            out.append(GroupTopicStats(group, name, lags, c.messages_out if c else 0,
                                       c.bytes_out if c else 0))
        return out

    # ================================================================ lookups

    def message_by_id(self, msg_id: str) -> ConsumedMessage | None:
        """A message by its id: a client id (UNIQ_KEY) through the index, or an
        offset message id decoded directly."""
        for m in self.store.lookup_key(msg_id, limit=1):
            return m
        decoded = parse_offset_message_id(msg_id)
        if decoded is not None:
            phys, member = decoded
            m = self.store.message_at(phys, member)
            if m is not None and m.offset_msg_id == msg_id.upper():
                return m
        return None

    def messages_by_key(self, topic: str, key: str, limit: int = 32) -> list[ConsumedMessage]:
        self.topic(topic)
        return self.store.lookup_key(key, topic, limit)

    # ================================================================ issue 6: timers, transactions, retry
    # Thin adapters over core/timers.py, core/transactions.py and core/retry.py:
    # the doors call these (docs/timers.md and docs/transactions.md say how).

    def _system_topics_sync(self) -> None:
        """Around recovery: the store learns how to re-derive the ConsumeQueue tag-hash
        fields the features use for their own purposes, and a system topic that
        recovery found in the CommitLog gets its permissions back."""
        for name, perm in _SYSTEM_TOPICS.items():
            t = self.meta.topics.get(name)
            if t is not None and (t.perm != perm or t.queues != 1):
                self.meta.topics[name] = replace(t, queues=1, perm=perm)
        self.timers.register_hooks()
        self.transactions.register_hooks()
        self.retry.register_hooks()

    async def _system_topic(self, name: str) -> None:
        """Create a feature's system topic on first use (hidden: perm 0, one queue)."""
        if name not in self.meta.topics:
            self.meta.topics[name] = TopicConfig(name, 1, _SYSTEM_TOPICS[name], "NORMAL",
                                                 now_ms(), self.store.dispatched_pos)
            await self._save_topics()

    def _system_topic_sync(self, name: str) -> None:
        """``_system_topic`` at start-up (the event loop is not serving yet)."""
        if name not in self.meta.topics:
            self.meta.topics[name] = TopicConfig(name, 1, _SYSTEM_TOPICS[name], "NORMAL",
                                                 now_ms(), self.store.dispatched_pos)
            self._save_topics_sync()

    def _refuse_system_topic(self, name: str) -> None:
        if name in _SYSTEM_TOPICS:
            raise PermissionDenied(f"{name} is a system topic the broker manages")

    @staticmethod
    def _special(props: Mapping[str, str]) -> bool:
        return props.get(PROPERTY_TRANSACTION_PREPARED) == "true" \
            or TimerService.wants_timer(props)

    async def _put_special(self, m: Message) -> PutResult:
        """``put`` of a message asking for a delivery time, or marked as a half."""
        if m.properties.get(PROPERTY_TRANSACTION_PREPARED) == "true":
            return await self.transactions.prepare_put(m)
        return await self.timers.put(m)

    # ---------------------------------------------------------------- timers

    async def cancel_timer(self, message_id: str) -> CancelResult:
        """Cancel a pending timer by the message id its put returned (its client id,
        or the offset id of the timer record). Durable under sync flush when this
        returns. Raises TimerNotFound (unknown, delivered, or cancelled already)."""
        return await self.timers.cancel(message_id)

    def timer_stats(self) -> TimerStats:
        return self.timers.stats()

    # ---------------------------------------------------------------- transactions

    async def prepare(self, message: Message, producer_group: str) -> HalfHandle:
        """Store a half message (invisible until committed); see core/transactions.py.
        ``put`` of a message with ``TRAN_MSG=true`` and ``PGROUP`` does the same."""
        return await self.transactions.prepare(message, producer_group)

    async def end_transaction(self, half: HalfHandle | int | str,
                              action: TransactionAction | str, *,
                              producer_group: str | None = None,
                              transaction_id: str | None = None,
                              from_check: bool = False) -> PutResult | None:
        """END_TRANSACTION: ``half`` is the handle, the half's CommitLog offset
        (RocketMQ's commitLogOffset) or its message/transaction id. COMMIT returns
        where the message landed, exactly once; ROLLBACK and UNKNOWN return None.
        Raises TransactionNotFound, TransactionAlreadyEnded, InvalidArgument."""
        return await self.transactions.end_transaction(
            half, action, producer_group=producer_group, transaction_id=transaction_id,
            from_check=from_check)

    def set_transaction_checker(self, checker: TransactionChecker | None) -> None:
        """Install the check-back hook: ``async (producer_group, HalfMessage) -> bool``,
        True when the question reached a live producer of the group."""
        self.transactions.checker = checker

    def pending_transactions(self, limit: int = 100, group: str | None = None
                             ) -> list[PendingTransaction]:
        """Open halves, oldest first (only the producer group ``group``'s when given)."""
        return self.transactions.list_pending(limit, group)

    def transaction_stats(self) -> TransactionStats:
        return self.transactions.stats()

    def discarded_transactions(self, offset: int = 0, limit: int = 100) -> list[ConsumedMessage]:
        """Halves discarded after the last check-back, oldest first (in
        RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC)."""
        result = self.store.get(CHECK_MAX_TOPIC, 0, offset, limit, 8 << 20)
        return list(result.messages(offset))[:limit]

    # ---------------------------------------------------------------- retry and dead letters

    async def send_back(self, group: str, message: ConsumedMessage | str | int,
                        delay_level: int = 0, *, max_reconsume_times: int | None = None
                        ) -> SendBackResult:
        """CONSUMER_SEND_MSG_BACK: to %RETRY%<group> after a growing delay, or past the
        maximum reconsume count to %DLQ%<group>; see core/retry.py."""
        return await self.retry.send_back(group, message, delay_level,
                                          max_reconsume_times=max_reconsume_times)

    def dead_letters(self, group: str, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        return self.retry.dead_letters(group, offset, limit)

    def dead_letter(self, group: str, ref: str | int) -> DeadLetter:
        return self.retry.dead_letter(group, ref)

    async def resend_dead_letters(self, group: str, refs: Iterable[str | int] | None = None, *,
                                  force: bool = False) -> list[ResendResult]:
        """Put dead letters back into their original topic (all not yet resent when
        ``refs`` is None); a letter resent before needs ``force``."""
        return await self.retry.resend(group, refs, force=force)

    # ================================================================ retention

    def run_retention(self) -> list[int]:
        """One retention pass (the background task calls it every
        retention_check_interval_s)."""
        if self._threaded_reads:
            return []  # a worker thread is reading the ConsumeQueues: next pass
        deleted = self.store.retain(now_ms(), int(self.config.retention_hours * 3600_000),
                                    self.config.max_disk_ratio)
        if deleted:
            floor = self.store.commitlog.min_offset
            for name, at in list(self.meta.tombstones.items()):
                if at <= floor:
                    del self.meta.tombstones[name]
        return deleted


def _check_topic_args(queues: int, perm: int, message_type: str) -> None:
    if not isinstance(queues, int) or not 1 <= queues <= MAX_QUEUES:
        raise InvalidArgument(f"queue count must be 1..{MAX_QUEUES}")
    if perm & ~PERM_READ_WRITE or perm < 0:
        raise InvalidArgument("perm must combine 4 (read) and 2 (write)")
    if message_type not in MESSAGE_TYPES:
        raise InvalidArgument(f"message type must be one of {', '.join(MESSAGE_TYPES)}")
