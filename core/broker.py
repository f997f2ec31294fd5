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
    NS_GROUP,
    NS_OFFSET,
    NS_TOMBSTONE,
    NS_TOPIC,
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
from .statelog import STATE_TOPIC, Change, StateLog
from .stats import Counters, GroupTopicStats, QueueLag, TopicStats
from .store.store import MessageStore, RecoveryReport, StoreConfig
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
                  CHECK_MAX_TOPIC: PERM_READ, STATE_TOPIC: 0}

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
    # Unused since round 2 (offsets are state-log records, durable when committed);
    # accepted so that round-1 configuration files still load.
    offset_persist_interval_ms: int = 1000
    # The state log's compaction (docs/storage.md "The state log"): a snapshot every
    # this many state records (at least as many as the state holds), or every
    # interval when anything changed.
    state_snapshot_records: int = 100_000
    state_snapshot_interval_s: float = 60.0
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
        if self.state_snapshot_records < 1 or self.state_snapshot_interval_s <= 0:
            raise ValueError("state_snapshot_records and state_snapshot_interval_s must be positive")
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
        # The state log's own topic is no topic of the tables (its records define them):
        # hidden from every listing and door, never created, written or read but here.
        self.state = StateLog(self.store, os.path.join(config.data_dir, "state"),
                              durable=self._state_durable,
                              max_record_bytes=min(config.max_message_size, 1 << 20),
                              snapshot_interval_s=config.state_snapshot_interval_s,
                              snapshot_records=config.state_snapshot_records)
        for ns, table in self.meta.tables(self._topic_changed, pinned=(STATE_TOPIC,)).items():
            self.state.register(ns, table, admin=ns != NS_OFFSET)
        self.counters = Counters()
        self.recovery: RecoveryReport | None = None
        self.sync_flush = config.flush == "sync"
        self._committer: GroupCommitter | None = None
        self._admin_committer: GroupCommitter | None = None  # async flush: admin changes
        self._waiters: dict[str, set[trio.Event]] = {}
        self._round_robin: dict[str, list[int]] = {}
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
        """Start-up (docs/storage.md, "The state log"): the newest state snapshot, then
        the store's recovery, which replays the state records after the snapshot in
        log order with the messages (``StateLog.replay_queue``, ``_accept_record``).
        A round-1 data directory's JSON files and pop journal are imported once."""
        os.makedirs(self.config.data_dir, exist_ok=True)
        had_snapshot = self.state.load()
        legacy = self.meta.legacy_paths() + self.pop_service.legacy_paths()
        if legacy and not had_snapshot:
            self.meta.load_legacy()
            self.pop_service.load_legacy()
        self._system_topics_sync()
        self.recovery = self.store.open(self._accept_record, before_scan=self.state.replay_queue)
        for (topic, _qid) in list(self.store.queues):
            if topic not in self.meta.topics and topic != STATE_TOPIC:
                self.store.drop_topic(topic)  # a deleted topic's leftovers
        self._system_topics_sync()
        self.state.finish_recovery()
        if legacy:
            if not had_snapshot:
                # The import is a snapshot at the log's end: written whole or not at all,
                # and a crash before the files are renamed imports them again.
                self.state.snapshot_sync()
                log.warning("imported round-1 metadata into the state log", extra={
                    "topics": len(self.meta.topics), "groups": len(self.meta.groups),
                    "files": legacy})
            Metadata.retire_legacy(legacy)
        self.timers.open_sync(self.recovery.clean_shutdown)
        self.transactions.open_sync()
        self.pop_service.open()
        self.started_at = now_ms()
        log.info("store open", extra={"recovery": self.recovery})

    def _accept_record(self, topic: str, queue_id: int, phys: int) -> bool:
        """Recovery, for each record past the checkpoint in log order: does it belong
        to a live topic? A state record is applied here (unless the snapshot holds
        it), so the topics are always those of the record's own point in the log or
        of a later one — and for either the rule below is right: a record is live if
        its topic exists and it is not older than the topic's creation."""
        if topic == STATE_TOPIC:
            self.state.recover_at(phys)
            return True
        t = self.meta.topics.get(topic)
        if t is not None:
            if phys < t.created_phys:
                return False
            if queue_id >= t.queues:
                self.state.stage([(NS_TOPIC, topic, replace(t, queues=queue_id + 1).to_json())])
            return True
        if phys < self.meta.tombstones.get(topic, -1):
            return False
        # Records without a topic: a round-1 directory whose topics.json lagged, or
        # state lost to damage. Bring the topic back rather than drop its messages.
        log.warning("re-creating topic %s found in the CommitLog", topic)
        self.state.stage([(NS_TOPIC, topic, TopicConfig(
            topic, max(queue_id + 1, self.config.default_queues), created_at=now_ms(),
            created_phys=phys).to_json())])
        return True

    def _topic_changed(self, name: str, old: TopicConfig | None, new: TopicConfig | None
                       ) -> None:
        """Every topic change, applied live or at recovery: a deleted topic's queues go
        at once (its records leave the CommitLog with retention); the doors' watchers
        hear of every change."""
        if old is not None and (new is None or new.created_phys != old.created_phys):
            self.store.drop_topic(name)
            self._round_robin.pop(name, None)
            self.counters.topics.pop(name, None)
            self._notify(name)
        for callback in self._topic_watchers:
            callback()

    async def _state_durable(self, pos: int, admin: bool) -> None:
        """The state log's wait: under sync flush the group commit covering ``pos``;
        under async flush an fsync of its own for admin changes, nothing for others
        (durable within the flush interval)."""
        c = self._committer if self._committer is not None else (
            self._admin_committer if admin else None)
        if c is not None and self.store.commitlog.flushed_pos < pos:
            await c.wait_flushed(pos)

    def _start_tasks(self, nursery: trio.Nursery) -> None:
        store = self.store
        if self.sync_flush:
            self._committer = GroupCommitter(store.flush, lambda: store.dispatched_pos,
                                             self._flush_failed, self._flushed)
            self._committer.flushed_pos = store.commitlog.flushed_pos
            nursery.start_soon(self._committer.run)
        else:
            nursery.start_soon(partial(
                interval_flusher, store.flush,
                lambda: store.commitlog.flushed_pos < store.commitlog.write_pos,
                self.config.flush_interval_ms / 1000, self._flush_failed, self._flushed))
            self._admin_committer = GroupCommitter(store.flush, lambda: store.dispatched_pos,
                                                   self._flush_failed, self._flushed)
            self._admin_committer.flushed_pos = store.commitlog.flushed_pos
            nursery.start_soon(self._admin_committer.run)
        nursery.start_soon(self._every, self.config.checkpoint_interval_ms / 1000,
                           self._checkpoint)
        nursery.start_soon(self.state.run)
        nursery.start_soon(self._every, self.config.retention_check_interval_s,
                           self.run_retention)
        nursery.start_soon(self.pop_service.run)
        self.timers.start(nursery)
        self.transactions.start(nursery)
        # What start-up built (modules, configuration, recovery) lives as long as the
        # process: out of the collector's sight, full collections stay short. Timer
        # lateness depends on it (``ferrymq bench timers``: the longest pause of a
        # 100,000-timer burst went from 53 to 27 ms).
        gc.collect()
        gc.freeze()

    async def _every(self, seconds: float, job: Callable[[], object]) -> None:
        while True:
            await trio.sleep(seconds)
            try:
                result = job()
                if hasattr(result, "__await__"):
                    await result  # type: ignore[misc]
            except FerryError as exc:
                log.error("background job %s failed: %s", getattr(job, "__name__", job), exc)
            except OSError as exc:
                log.error("background job %s failed", getattr(job, "__name__", job), exc_info=exc)

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
            if self.store.failed is None and self.state.since_snapshot:
                self.state.snapshot_sync()  # the next start replays nothing
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
        """Record ``offset`` (the next message to consume) for the group, as a state
        record of the CommitLog: when this returns the commit survives a crash of the
        process. A door acknowledges a commit after ``await wait_durable()``, which
        under sync flush waits for the group commit covering it (under async flush
        the window is the flush interval). Committing the offset already committed
        writes nothing. Raises InvalidGroupName, TopicNotFound, QueueNotFound,
        OffsetOutOfRange (negative), GroupNotFound, StoreError."""
        self._group_for_commit(group)
        t = self.meta.topics.get(topic)
        if t is None:
            validate_topic_name(topic)
            raise TopicNotFound(f"topic {topic} does not exist")
        if not 0 <= queue_id < t.queues:
            raise QueueNotFound(f"topic {topic} has {t.queues} queues; no queue {queue_id}")
        if offset < 0:
            raise OffsetOutOfRange(f"offset {offset} is negative")
        if self.meta.committed(group, topic, queue_id) != offset:
            self.state.append(((NS_OFFSET, (group, topic, queue_id), offset),))

    async def wait_durable(self) -> None:
        """Return once every state change made so far (offset commits, pop acks,
        auto-created groups) is as durable as the flush policy promises: under sync
        flush on disk (one group commit serves every waiter); under async flush at
        once, the flush interval being the window (docs/operations.md). Raises
        FlushFailed."""
        await self.state.wait(self.state.end, False)

    def _group_for_commit(self, group: str) -> GroupConfig:
        validate_group_name(group)
        g = self.meta.groups.get(group)
        if g is None:
            if not self.config.auto_create_groups:
                raise GroupNotFound(f"consumer group {group} does not exist")
            # Appended with the commit that needs it; durable with it (``wait_durable``).
            self.state.append(((NS_GROUP, group, GroupConfig(group, created_at=now_ms()).to_json()),))
            g = self.meta.groups[group]
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
        """Make committed offsets (and every other state change) durable now, under
        either flush policy: an fsync if anything is not on disk yet."""
        await self.state.wait(self.state.end, True)

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
        Raises InvalidTopicName, InvalidArgument, TopicExists (unless ``exist_ok``),
        PermissionDenied (the state log's topic)."""
        validate_topic_name(name)
        if name == STATE_TOPIC:
            raise PermissionDenied(f"{name} is a system topic the broker manages")
        queues = self.config.default_queues if queues is None else queues
        _check_topic_args(queues, perm, message_type)
        existing = self.meta.topics.get(name)
        if existing is not None:
            if exist_ok:
                return existing
            raise TopicExists(f"topic {name} exists")
        t = TopicConfig(name, queues, perm, message_type, now_ms(), self.store.dispatched_pos,
                        dict(attributes or {}))
        changes: list[Change] = [(NS_TOPIC, name, t.to_json())]
        if name in self.meta.tombstones:
            changes.insert(0, (NS_TOMBSTONE, name, None))
        # Applied when appended, so concurrent producers see it at once; then durable.
        await self.state.put_many(changes)
        return self._topic_after_wait(name)

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
        t = replace(
            t, queues=new_queues, perm=t.perm if perm is None else perm,
            message_type=t.message_type if message_type is None else message_type,
            attributes=t.attributes if attributes is None else dict(attributes))
        await self.state.put(NS_TOPIC, name, t.to_json())
        return self._topic_after_wait(name)

    def _topic_after_wait(self, name: str) -> TopicConfig:
        """The topic a change just made durable, unless another task deleted it while
        that change waited for its flush."""
        t = self.meta.topics.get(name)
        if t is None:
            raise TopicNotFound(f"topic {name} was deleted meanwhile")
        return t

    async def delete_topic(self, name: str) -> None:
        """Delete a topic: its queues and committed offsets go at once, its records
        leave the CommitLog with retention. Raises TopicNotFound."""
        self._refuse_system_topic(name)
        self.topic(name)
        # The dependent state first, the topic last: should the changes not fit one
        # record and a crash fall between two, the topic is still there to delete.
        changes: list[Change] = [(NS_OFFSET, k, None) for k in self.meta.offset_keys(topic=name)]
        changes += self.pop_service.forget_changes(topic=name)
        changes += [(NS_TOMBSTONE, name, self.store.dispatched_pos), (NS_TOPIC, name, None)]
        await self.state.put_many(changes)  # _topic_changed drops its queues

    def watch_topics(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (cheap, synchronous) whenever a topic is created, changed
        or deleted, through whichever door: the remoting door re-registers its
        routes with the NameServer, so a topic a Kafka producer auto-created is
        routable for RocketMQ clients at once."""
        self._topic_watchers.append(callback)

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
        g = replace(GroupConfig(name, created_at=now_ms()), **settings)  # type: ignore[arg-type]
        await self.state.put(NS_GROUP, name, g.to_json())
        return self.group(name)  # GroupNotFound if deleted while this waited for its flush

    async def update_group(self, name: str, **settings: object) -> GroupConfig:
        g = replace(self.group(name), **settings)  # type: ignore[arg-type]
        await self.state.put(NS_GROUP, name, g.to_json())
        return self.group(name)  # GroupNotFound if deleted while this waited for its flush

    async def delete_group(self, name: str) -> None:
        """Forget a group: its settings, pop state and committed offsets. A group known
        only by its offsets (a Kafka consumer group commits without being created)
        counts as existing; GroupNotFound when neither is there."""
        validate_group_name(name)
        if name not in self.meta.groups and name not in self.meta.offsets:
            raise GroupNotFound(f"consumer group {name} does not exist")
        changes: list[Change] = [(NS_OFFSET, k, None) for k in self.meta.offset_keys(group=name)]
        changes += self.pop_service.forget_changes(group=name)
        changes.append((NS_GROUP, name, None))
        await self.state.put_many(changes)

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
            if m is not None and m.offset_msg_id == msg_id.upper() and m.topic != STATE_TOPIC:
                return m  # (the state log is no door's to read)
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
                self.state.stage([(NS_TOPIC, name, replace(t, queues=1, perm=perm).to_json())])
        self.timers.register_hooks()
        self.transactions.register_hooks()
        self.retry.register_hooks()

    async def _system_topic(self, name: str) -> None:
        """Create a feature's system topic on first use (hidden: perm 0, one queue)."""
        if name not in self.meta.topics:
            await self.state.put(NS_TOPIC, name, TopicConfig(
                name, 1, _SYSTEM_TOPICS[name], "NORMAL", now_ms(),
                self.store.dispatched_pos).to_json())

    def _system_topic_sync(self, name: str) -> None:
        """``_system_topic`` at start-up (the event loop is not serving yet)."""
        if name not in self.meta.topics:
            self.state.append([(NS_TOPIC, name, TopicConfig(
                name, 1, _SYSTEM_TOPICS[name], "NORMAL", now_ms(),
                self.store.dispatched_pos).to_json())])

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
        # Never delete state records no snapshot holds; ask for one when they sit in a
        # segment retention may want (not the active one), so the next pass can.
        keep = self.state.retention_floor()
        segments = self.store.commitlog.segments
        if keep is not None and segments and keep < segments[-1].base:
            self.state.request_snapshot()
        deleted = self.store.retain(now_ms(), int(self.config.retention_hours * 3600_000),
                                    self.config.max_disk_ratio, protect_from=keep)
        if deleted:
            floor = self.store.commitlog.min_offset
            gone: list[Change] = [(NS_TOMBSTONE, name, None)
                                  for name, at in self.meta.tombstones.items() if at <= floor]
            if gone:
                self.state.append(gone)  # no record of those topics is left to rule out
        return deleted


def _check_topic_args(queues: int, perm: int, message_type: str) -> None:
    if not isinstance(queues, int) or not 1 <= queues <= MAX_QUEUES:
        raise InvalidArgument(f"queue count must be 1..{MAX_QUEUES}")
    if perm & ~PERM_READ_WRITE or perm < 0:
        raise InvalidArgument("perm must combine 4 (read) and 2 (write)")
    if message_type not in MESSAGE_TYPES:
        raise InvalidArgument(f"message type must be one of {', '.join(MESSAGE_TYPES)}")
