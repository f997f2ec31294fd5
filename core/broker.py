"""The Broker: the one produce/consume/admin API that every front-end speaks.

It owns the store, the metadata, the services (timers, transactions, retry, pop)
and the background tasks (flushing, checkpoints, offset persistence, retention),
and runs on trio. Gateways call it and nothing else of the core: they never
touch the store or the metadata (tests/test_architecture.py holds them to it).
A sketch of the way of a message:

    gateway ──put(Message, principal=)──► Broker._authorize ──► Paths.put ──append──► MessageStore
                                             (core/access.py)    (core/paths.py)        (CommitLog,
                                 └──(sync flush) await group commit──► ack               ConsumeQueue, index)
    gateway ──get(group, topic, queue, offset)──► GetResult(records) ──► bytes on the wire
    gateway ──wait(topic, queue, offset, timeout)──► woken by the next put (long polling)

Every public call that produces, consumes, commits, administers, pops,
transacts, or touches timers or dead letters takes ``principal=`` (who is
asking; ``ANONYMOUS`` when a caller passes none) and passes it through
``_authorize``, the one access decision (docs/architecture.md, "Who is
asking", has the table of resources and operations). Then it takes the core's
one write path or read path (``core/paths.py``), which the services share:
their own work (timer deliveries, retries, commits, revives) never passes the
facade, so it is never checked against a client's principal.

Calls that do not wait (``get``, ``commit_offset``, admin reads) are plain
methods; ``put`` is async because under sync flush it waits for the fsync.
Under async flush ``put`` completes without yielding to the scheduler.

In a broker group (docs/cluster.md) the core is opened for one role — master or
slave — given by a ``Membership``; a role change closes it and opens it again.
A slave takes the master's bytes through ``replicate`` and dispatches them by
recovery's own function (``_accept_record``); the "cluster wiring" methods at
the end serve the replication door and the controller.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from functools import partial

import trio

from ..protocols import record as rec
from . import topicconfig
from .access import (
    ALTER,
    ANONYMOUS,
    CLUSTER,
    CREATE,
    DELETE,
    DESCRIBE,
    GROUP,
    READ,
    TOPIC,
    TRANSACTIONAL_ID,
    WRITE,
    AccessControl,
    Operation,
    Principal,
    ResourceType,
)
from .addresses import ADDRESS_PROPERTY
from .config import BrokerConfig
from .errors import (
    DiskPressure,
    FerryError,
    FlushFailed,
    GroupNotFound,
    InvalidArgument,
    MessageNotFound,
    NotLeader,
    OffsetOutOfRange,
    PermissionDenied,
    QueueNotFound,
    StoreError,
    TopicExists,
    TopicNotFound,
)
from .filter import Filter
from .flusher import GroupCommitter, interval_flusher
from .message import (
    PROPERTY_DOOR,
    PROPERTY_REAL_TOPIC,
    PROPERTY_TRANSACTION_PREPARED,
    ConsumedMessage,
    GetResult,
    Message,
    PutResult,
    now_ms,
    parse_offset_message_id,
)
from .metadata import (
    DLQ_PREFIX,
    MAX_QUEUES,
    MESSAGE_TYPES,
    NS_GROUP,
    NS_OFFSET,
    NS_TOMBSTONE,
    NS_TOPIC,
    PERM_READ,
    PERM_READ_WRITE,
    RETRY_PREFIX,
    GroupConfig,
    Metadata,
    TopicConfig,
    validate_group_name,
    validate_topic_name,
)
from .metrics import MetricsRegistry, broker_collector, services_collector
from .paths import Paths
from .pop import (
    DEAD,
    DEFAULT_INVISIBLE_MS,
    DEFAULT_MAX_INFLIGHT_PER_QUEUE,
    LEASED,
    PoppedMessage,
    PopService,
    QueuePopStatus,
    Receipt,
    ReceiptRenewal,
)
from .replication import STANDALONE, Durability, Membership, Role, SlaveView
from .replication.epochs import EpochFile, truncation_point
from .replication.replicas import ReplicaSet, SlaveStatus
from .retry import RESENT_TOPIC, DeadLetter, ResendResult, RetryService, SendBackResult
from .security import SecurityCalls
from .security import install as install_security
from .statelog import STATE_TOPIC, Change, Key, StateLog
from .stats import (
    BrokerInfo,
    BrokerStats,
    Consumption,
    Counters,
    GroupLag,
    GroupTopicStats,
    Health,
    LifeStep,
    MessageLife,
    QueueLag,
    StoredQueue,
    TimerSchedule,
    TopicStats,
    Traffic,
)
from .store.store import MessageStore, RecoveryReport, StoreConfig
from .supervisor import TaskSupervisor
from .timers import (
    PROPERTY_TIMER_FROM,
    PROPERTY_TIMER_OUT_MS,
    TIMER_TOPIC,
    CancelResult,
    TimerService,
    TimerStats,
    parse_delivery,
)
from .timerwheel import WheelCorrupt
from .tracing import TRACE_TOPIC, Tracer
from .transactions import (
    CHECK_MAX_TOPIC,
    HALF_TOPIC,
    OP_TOPIC,
    GroupEnd,
    HalfHandle,
    PendingTransaction,
    TransactionAction,
    TransactionChecker,
    TransactionService,
    TransactionStats,
)

__all__ = ["ANONYMOUS", "Broker", "BrokerConfig", "Principal"]

log = logging.getLogger("ferrymq.broker")

# The services' system topics and their permissions: 0 hides them from producers
# and consumers; the discarded halves can be read (by admin tools).
_SYSTEM_TOPICS = {TIMER_TOPIC: 0, HALF_TOPIC: 0, OP_TOPIC: 0, RESENT_TOPIC: 0,
                  CHECK_MAX_TOPIC: PERM_READ, STATE_TOPIC: 0,
                  # RocketMQ clients with enableMsgTrace write their trace data here, and
                  # trace tools read it: created by its first write, whatever auto-create
                  # says (Paths.topic_for_put; core/tracing.py).
                  TRACE_TOPIC: PERM_READ_WRITE}
HOUR_MS = 3600_000
# Wheel entries one timer_schedule reads one by one (~4 µs each); past it, slots are counted
# by their second. Measured with 50,000 timers on as many seconds: 60-100 ms with this
# budget, 170-270 ms reading them all (docs/console.md).
TIMER_WALK_BUDGET = 10_000
KAFKA_DOOR = "kafka"  # FERRY_DOOR of the Kafka door (gateways/kafka/mapping.py DOOR)
LIFE_COPIES = 64  # stored copies of one id a message_life looks at
# The system topics that hold a copy of a message waiting for something (its REAL_TOPIC
# names its topic), and those whose records are bookkeeping, never a copy.
_LIFE_KINDS = {TIMER_TOPIC: "timer", HALF_TOPIC: "half", CHECK_MAX_TOPIC: "discarded_half"}
_NOT_IN_A_LIFE = frozenset((STATE_TOPIC, OP_TOPIC, RESENT_TOPIC))


def _life_topic(m: ConsumedMessage) -> str:
    """The topic a stored copy is about: its own, or for a timer or a half the real one."""
    return (m.properties.get(PROPERTY_REAL_TOPIC) or m.topic) if m.topic in _LIFE_KINDS else m.topic


class Broker(SecurityCalls):
    """Use ``async with Broker.open(config) as broker``; see the module docstring.
    The security calls (authentication questions, users, tokens, keys, ACLs) are
    inherited from core/security.py."""

    def __init__(self, config: BrokerConfig, membership: Membership = STANDALONE) -> None:
        self.config = config
        self.membership = membership
        self.role = membership.role
        self.epochs = EpochFile(os.path.join(config.data_dir, "cluster"))
        self._replicas: ReplicaSet | None = None  # a master's view of its slaves
        self._slave: SlaveView | None = None  # a slave's view of its master's confirm offset
        self._truncate_to: int | None = None  # a slave cut back at close (``truncate_log``)
        self.store = MessageStore(StoreConfig(
            directory=os.path.join(config.data_dir, "store"),
            segment_size=config.segment_size,
            cq_entries_per_file=config.cq_entries_per_file,
            index_slots=config.index_slots,
            index_entries=config.index_entries,
            store_host=rec.host_bytes(config.store_host, config.store_port),
            max_open_files=config.max_open_files,
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
        self._admin_committer: GroupCommitter | None = None  # async flush: admin changes
        self._compaction_lock = trio.Lock()
        self._topic_watchers: list[Callable[[], None]] = []
        auth = dict(config.extra.get("auth") or {})  # type: ignore[call-overload]
        self._access = AccessControl(bool(auth.get("enabled", False)),
                                     auth.get("super_users", ()))
        self.credentials = install_security(self.state, self._access)
        self.started_at = 0
        # The one write path and read path; the services get it, never the Broker.
        self._paths = Paths(config, self.store, self.meta, self.state, self.counters,
                            create_topic=self._create_topic)
        for name, perm in _SYSTEM_TOPICS.items():
            self._paths.register_system_topic(name, perm)
        self.timers = TimerService(config, self.store, self._paths)
        self.transactions = TransactionService(config, self.store, self._paths, self.timers)
        self.retry = RetryService(self.store, self._paths)
        self._paths.special_put = self._put_special
        self.metrics = MetricsRegistry()
        self._flush_seconds = self.metrics.histogram(
            "ferrymq_store_flush_duration_seconds", "CommitLog fsync latency.").labels()
        self.pop_service = PopService(
            self._paths, self.state, os.path.join(config.data_dir, "pop"),
            max_inflight_per_queue=int(config.extra.get(  # type: ignore[call-overload]
                "pop_max_inflight_per_queue", DEFAULT_MAX_INFLIGHT_PER_QUEUE)))
        # Disk pressure (docs/operations.md, "Disk"): set while producers' writes are refused.
        self._disk_refusal: DiskPressure | None = None
        self._disk_warned = 0.0
        self._refused_puts = 0
        # (used, total) bytes of the file system holding the store; tests replace it.
        self.disk_usage: Callable[[], tuple[int, int]] = partial(_disk_usage, config.data_dir)
        self.metrics.add_collector(broker_collector(
            self.counters, self.meta, self.store, config.data_dir, lambda: self.started_at,
            self.pop_service, lambda: (self._disk_refusal is not None, self._refused_puts),
            lambda: self.metrics.max_lag_series))
        self.metrics.add_collector(services_collector(self.timers.stats,
                                                      self.transactions.stats))

    # ================================================================ who is asking

    def _authorize(self, principal: Principal, kind: ResourceType, name: str,
                   operation: Operation) -> None:
        """The facade's one access decision (core/access.py): every public call that
        produces, consumes, commits, administers, pops, transacts, or touches
        timers or dead letters passes here once per resource it touches, before
        it does anything. Raises PermissionDenied."""
        if not self._access.open:  # open: nothing enforced, the check would return
            self._access.check(principal, kind, name, operation)

    def _authorize_write(self, principal: Principal, message: Message) -> None:
        """WRITE on a message's topic, judged at its address (core/addresses.py)
        when it has one finer than the topic: an MQTT topic name."""
        props = message.properties
        address = props.get(ADDRESS_PROPERTY) if props else None
        if address is None:
            self._access.check(principal, TOPIC, message.topic, WRITE)
        else:
            self._access.check(principal, TOPIC, message.topic, WRITE, address)

    def _master_only(self) -> None:
        """The services that write (pop, timers, transactions, retry) run on a master:
        a slave answers their calls NotLeader (docs/cluster.md)."""
        if self.role is Role.SLAVE:
            raise self._paths.write_refusal or NotLeader("this broker is a slave")

    def _permits(self, principal: Principal, kind: ResourceType, name: str,
                 operation: Operation) -> bool:
        """``_authorize`` as a question: listings show only what may be seen."""
        try:
            self._authorize(principal, kind, name, operation)
        except PermissionDenied:
            return False
        return True

    # ================================================================ lifecycle

    @classmethod
    @asynccontextmanager
    async def open(cls, config: BrokerConfig,
                   membership: Membership = STANDALONE) -> AsyncIterator[Broker]:
        """Recover the store, start the background tasks, and on exit shut down
        cleanly: flush, checkpoint, persist offsets, remove the abort marker. In a
        broker group ``membership`` gives this life's role (docs/cluster.md)."""
        broker = cls(config, membership)
        try:
            # Recovery runs in a worker thread; a cancellation (a signal) during it
            # takes effect when it ends, and the finally clause still closes cleanly.
            await trio.to_thread.run_sync(broker._open_sync)
            broker._start_role()
            async with trio.open_nursery() as nursery:
                broker._start_tasks(nursery)
                try:
                    yield broker
                finally:
                    broker._paths.closing = True
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
        self.recovery = self.store.open(self._accept_record, before_scan=self.state.replay_queue,
                                        live=self._live_record)
        for (topic, _qid) in list(self.store.queues):
            if topic not in self.meta.topics and topic != STATE_TOPIC:
                self.store.drop_topic(topic)  # a deleted topic's leftovers
        self._system_topics_sync()
        slave = self.role is Role.SLAVE
        self.state.finish_recovery(append=not slave)
        # A topic's own retention moved its queues' start in memory only: move it again
        # before anyone reads (docs/storage.md, "Retention per topic").
        self._retain_topics(now_ms(), int(self.config.retention_hours * 3600_000))
        if self.role is not Role.STANDALONE:
            self._open_epochs()
        if slave:
            # A slave writes nothing of its own: no services; they are rebuilt from the
            # log it copied when it is promoted (the core is opened again as master).
            self.started_at = now_ms()
            log.info("store open as a slave", extra={"recovery": self.recovery})
            return
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

    def _open_epochs(self) -> None:
        """A group member's epoch file; a master records that its term begins at its
        log's end (the first time, also epoch 0 for what the log held before)."""
        self.epochs.load()
        if self.role is Role.MASTER:
            if not self.epochs.entries:
                self.epochs.append(0, self.store.commitlog.min_offset)
            if self.membership.epoch > self.epochs.epoch:
                self.epochs.append(self.membership.epoch, self.store.dispatched_pos)

    def _start_role(self) -> None:
        """On the event loop, once the store is open: the master's replica set or the
        slave's view, wired into the paths and the state log."""
        cfg, m, paths = self.config, self.membership, self._paths
        if m.role is Role.MASTER:
            r = self._replicas = ReplicaSet(
                m.node, m.isr, end=lambda: self.store.dispatched_pos,
                confirm_floor=m.confirm_floor, min_insync=cfg.min_insync_replicas,
                lag_max_s=cfg.replica_lag_max_ms / 1000,
                timeout_s=cfg.replication_timeout_ms / 1000)
            r.on_advance = paths.visibility_advanced
            paths.replication = r
            paths.default_durability = (Durability.REPLICATED if cfg.replication_mode == "sync"
                                        else Durability.LEADER)
            self.state.confirmed = r.confirm_offset
            self.state.appended = r.appended
        elif m.role is Role.SLAVE:
            s = self._slave = SlaveView(lambda: self.store.dispatched_pos, m.master)
            s.on_advance = paths.visibility_advanced
            paths.replication = s
            paths.write_refusal = self.store.read_only = s.refusal
            if not cfg.slave_read_enable:
                paths.read_refusal = NotLeader(
                    f"this broker is a slave of {m.master or 'no master yet'} and serves no "
                    "reads (slave_read_enable)")
            self.state.confirmed = s.confirm_offset

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

    def _live_record(self, topic: str, phys: int) -> bool:
        """``_accept_record`` without its side effects, for a repair that walks the log
        out of order (core/store/repair.py): whether the record at ``phys`` belongs to
        its topic's live incarnation."""
        if topic == STATE_TOPIC:
            return True
        t = self.meta.topics.get(topic)
        if t is not None:
            return phys >= t.created_phys
        return phys >= self.meta.tombstones.get(topic, -1)

    def _topic_changed(self, name: str, old: TopicConfig | None, new: TopicConfig | None
                       ) -> None:
        """Every topic change, applied live or at recovery: a deleted topic's queues go
        at once (its records leave the CommitLog with retention); the doors' watchers
        hear of every change."""
        if old is not None and (new is None or new.created_phys != old.created_phys):
            self.store.drop_topic(name)
            self.counters.topics.pop(name, None)
            self._paths.forget_topic(name)
        for callback in self._topic_watchers:
            callback()

    async def _state_durable(self, pos: int, admin: bool, replicate: bool = True) -> None:
        """The state log's wait: under sync flush the group commit covering ``pos``;
        under async flush an fsync of its own for admin changes, nothing for others
        (durable within the flush interval)."""
        c = self._paths.committer if self._paths.committer is not None else (
            self._admin_committer if admin else None)
        if c is not None and self.store.commitlog.flushed_pos < pos:
            await c.wait_flushed(pos)
        # In a sync group, an acknowledged change survives a failover as a write does.
        if replicate and self._replicas is not None \
                and self._paths.default_durability is Durability.REPLICATED:
            await self._replicas.wait(pos)

    def _start_tasks(self, nursery: trio.Nursery) -> None:
        # Every background task runs supervised (core/supervisor.py): a failure is
        # logged, counted and the task restarted with backoff; only the flusher is
        # critical (writers wait on it), and its failure stops the broker cleanly.
        store = self.store
        tasks = self.tasks = TaskSupervisor(nursery, self.metrics, prefix="broker",
                                            on_fatal=self._store_task_failed)
        if self.role is Role.SLAVE:
            # A slave acknowledges what it wrote to the page cache (as Kafka's followers
            # do) and flushes on the interval, whatever the master's policy.
            tasks.start_soon(partial(
                interval_flusher, store.flush,
                lambda: store.commitlog.flushed_pos < store.commitlog.write_pos,
                self.config.flush_interval_ms / 1000, self._flush_failed, self._flushed),
                name="flusher", critical=True)
            tasks.every(self.config.checkpoint_interval_ms / 1000, self._checkpoint,
                        name="checkpoint")
            tasks.start_soon(self.state.run, name="state")
            tasks.every(self.config.retention_check_interval_s, self.run_retention,
                        name="retention")
            return
        if self.sync_flush:
            self._paths.committer = committer = GroupCommitter(
                store.flush, lambda: store.dispatched_pos, self._flush_failed, self._flushed)
            committer.flushed_pos = store.commitlog.flushed_pos
            tasks.start_soon(committer.run, name="flusher", critical=True)
        else:
            tasks.start_soon(partial(
                interval_flusher, store.flush,
                lambda: store.commitlog.flushed_pos < store.commitlog.write_pos,
                self.config.flush_interval_ms / 1000, self._flush_failed, self._flushed),
                name="flusher", critical=True)
            # Admin changes wait for a flush even under async flush (the state log):
            # writers wait on this one too, so it is as critical as the flusher.
            self._admin_committer = GroupCommitter(store.flush, lambda: store.dispatched_pos,
                                                   self._flush_failed, self._flushed)
            self._admin_committer.flushed_pos = store.commitlog.flushed_pos
            tasks.start_soon(self._admin_committer.run, name="admin_flusher", critical=True)
        tasks.every(self.config.checkpoint_interval_ms / 1000, self._checkpoint,
                    name="checkpoint")
        tasks.start_soon(self.state.run, name="state")
        tasks.every(self.config.retention_check_interval_s, self.run_retention,
                    name="retention")
        if self.config.max_disk_ratio < 1.0:
            tasks.every(self.config.disk_check_interval_s, self.check_disk, name="disk")
        # Compacted topics (docs/storage.md, "Compaction"): a pass in a worker thread.
        tasks.every(self.config.compaction_check_interval_s, self.compact, name="compaction")
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
        self.store.repair_pending()  # what worker threads' reads found damaged
        if self.store.failed is None and self.store.dispatched_pos:
            self.store.mark_indexed()  # owner thread: the index is the owner's
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
        truncate = self._truncate_to
        try:
            if self.role is not Role.SLAVE:
                self.timers.close_sync()
                self.transactions.close_sync()
            if truncate is not None:
                self.store.truncate(truncate)  # the tables are ahead of the log now
            elif self.store.failed is None and self.state.since_snapshot:
                self.state.snapshot_sync()  # the next start replays nothing
        finally:
            self.timers.wheel.close()
            self.store.close()
        if truncate is not None:
            self._finish_truncation(truncate)

    def _finish_truncation(self, end: int) -> None:
        """After the store was cut back to ``end`` and closed (docs/cluster.md,
        "Truncation"): the next open rebuilds the state tables from the newest
        snapshot at or below ``end``; the services' derived data, which names
        CommitLog offsets, is rebuilt from the log when this node is next master."""
        self.state.set_aside_snapshots(end)
        shutil.rmtree(self.timers.directory, ignore_errors=True)
        txn_cp = os.path.join(self.transactions.directory, "checkpoint.json")
        if os.path.exists(txn_cp):
            os.unlink(txn_cp)
        self.epochs.truncate(end)
        log.warning("truncated the CommitLog to %d: the state is rebuilt at the next open", end)

    # ================================================================ producing
    # Authorize, then the write path (core/paths.py).

    async def put(self, messages: Message | Sequence[Message], *,
                  durability: Durability | None = None,
                  principal: Principal = ANONYMOUS) -> PutResult:
        """Append one message, or a batch (one topic, one queue: the first message's
        ``queue_id``) stored as one record. Returns where it landed; under sync flush,
        only once it is on disk. A message with a delivery-time property becomes a
        timer (docs/timers.md); one marked ``TRAN_MSG=true`` a half
        (docs/transactions.md). Checks WRITE on the topic. Raises PermissionDenied,
        TopicNotFound, MessageTooLarge, InvalidMessage, InvalidDelay, QueueNotFound,
        StoreError (DiskPressure while the disk is above its high watermark), ShuttingDown;
        in a broker group NotLeader, NotEnoughReplicas and ReplicationTimeout
        (``durability``: when it is acknowledged; None, the group's replication mode
        decides — docs/cluster.md)."""
        if isinstance(messages, Message):
            if not self._access.open:  # open: nothing enforced, the check would return
                self._authorize_write(principal, messages)
        else:
            messages = list(messages)
            if messages:
                addressed = [m for m in messages if ADDRESS_PROPERTY in m.properties]
                if len(addressed) < len(messages):
                    self._authorize(principal, TOPIC, messages[0].topic, WRITE)
                for m in addressed:
                    self._authorize_write(principal, m)
        if self._disk_refusal is not None:
            self._refuse_for_disk()
        return await self._paths.put(messages, durability)

    async def put_encoded_batch(self, topic: str, queue_id: int, body: bytes,
                                born_host: bytes = b"\x00" * 8, *,
                                durability: Durability | None = None,
                                principal: Principal = ANONYMOUS) -> PutResult:
        """Append a native batch already in RocketMQ's batch encoding (a
        SEND_BATCH_MESSAGE body) as one record, without re-encoding it. Checks WRITE
        on the topic; raises as ``put``."""
        self._authorize(principal, TOPIC, topic, WRITE)
        if self._disk_refusal is not None:
            self._refuse_for_disk()
        return await self._paths.put_encoded_batch(topic, queue_id, body, born_host, durability)

    async def put_kafka_batch(self, topic: str, queue_id: int,
                              batch: bytes | bytearray | memoryview, *,
                              durability: Durability | None = None,
                              principal: Principal = ANONYMOUS) -> PutResult:
        """Append one Kafka RecordBatch (magic 2, CRC already checked by the Kafka
        codec) as one record; its base offset becomes the queue offset assigned.
        Checks WRITE on the topic; raises as ``put`` (``durability``: the producer's
        acks, LEADER for 0/1, REPLICATED for all)."""
        self._authorize(principal, TOPIC, topic, WRITE)
        if self._disk_refusal is not None:
            self._refuse_for_disk()
        return await self._paths.put_kafka_batch(topic, queue_id, batch, durability)

    @property
    def tracer(self) -> Tracer | None:
        """Where the broker reports its spans (core/tracing.py), None when tracing is
        off: a door's delivery point reports a ``Delivery`` to it when it is set."""
        return self._paths.tracer

    def set_tracer(self, tracer: Tracer | None) -> None:
        """Install (or, with None, remove) the span hook: the write path reports each
        put to it (receive and store spans), the doors their deliveries."""
        self._paths.tracer = tracer

    def delivery_time(self, properties: Mapping[str, str]) -> int | None:
        """The delivery time (epoch ms) that ``properties`` ask for, by this broker's
        clock, levels and horizon (``timer_max_delay_ms``); None when they ask for
        none. Raises InvalidDelay exactly when ``put`` of a message carrying them
        would: a door checks a batch's timed messages before storing any."""
        timers = self.timers
        return parse_delivery(properties, timers.clock(), timers.max_delay_ms, timers.levels)

    # ================================================================ consuming
    # Authorize, then the read path (core/paths.py).

    def get(self, group: str | None, topic: str, queue_id: int, offset: int,
            max_messages: int = 32, max_bytes: int = 4 << 20,
            filter: Filter | None = None, *, principal: Principal = ANONYMOUS) -> GetResult:
        """Read from ``offset`` on: whole records, at least one if any is there,
        up to ``max_messages`` messages and about ``max_bytes`` bytes. Never waits
        (see ``wait``). ``group`` (None for anonymous reads) is charged in the
        stats. Checks READ on the topic. Raises PermissionDenied, TopicNotFound,
        QueueNotFound, InvalidArgument."""
        self._authorize(principal, TOPIC, topic, READ)
        return self._paths.get(group, topic, queue_id, offset, max_messages, max_bytes, filter)

    async def get_large(self, group: str | None, topic: str, queue_id: int, offset: int,
                        max_messages: int, max_bytes: int,
                        filter: Filter | None = None, *,
                        principal: Principal = ANONYMOUS) -> GetResult:
        """``get`` for bulk reads: above 8 MiB the records are read with pread(2) in
        a worker thread, so cold pages never stall the event loop."""
        self._authorize(principal, TOPIC, topic, READ)
        return await self._paths.get_large(group, topic, queue_id, offset, max_messages,
                                           max_bytes, filter)

    def available(self, topic: str, queue_id: int, offset: int, *,
                  principal: Principal = ANONYMOUS) -> bool:
        """Whether a get at ``offset`` would find a visible message now. Checks READ
        on the topic."""
        self._authorize(principal, TOPIC, topic, READ)
        return self._paths.available(topic, queue_id, offset)

    async def wait(self, topic: str, queue_id: int, offset: int, timeout: float, *,
                   principal: Principal = ANONYMOUS) -> bool:
        """Long polling: return True as soon as a message at ``offset`` or later is
        visible in the queue, False after ``timeout`` seconds without one. Checks
        READ on the topic."""
        return await self.wait_any(((topic, queue_id, offset),), timeout, principal=principal)

    async def wait_any(self, positions: Iterable[tuple[str, int, int]], timeout: float, *,
                       principal: Principal = ANONYMOUS) -> bool:
        """``wait`` over several (topic, queue id, offset) positions at once. Checks READ
        on each topic."""
        positions = tuple(positions)
        for topic in {t for t, _, _ in positions}:
            self._authorize(principal, TOPIC, topic, READ)
        return await self._paths.wait_any(positions, timeout)

    # ================================================================ pop consumption
    # RocketMQ 5's POP_MESSAGE, ACK_MESSAGE, BATCH_ACK_MESSAGE, CHANGE_INVISIBLE_TIME
    # and PEEK_MESSAGE; the state and its durability live in core/pop.py (docs/pop.md).

    async def pop(self, group: str, topic: str, max_messages: int = 16,
                  invisible_time_ms: int = DEFAULT_INVISIBLE_MS, filter: Filter | None = None,
                  *, queue_id: int = -1, wait_ms: int = 0, init: str = "earliest",
                  principal: Principal = ANONYMOUS) -> list[PoppedMessage]:
        """Lease up to ``max_messages`` messages of ``topic`` (every queue, or only
        ``queue_id``) to ``group`` for ``invisible_time_ms``: revived ones first, then
        new ones. Waits up to ``wait_ms`` for one (long polling); [] at the timeout.
        A group without pop state starts at its committed offset, else at the
        queue's start (``init="earliest"``) or end (``"latest"``). Checks READ on the
        group and the topic. Raises PermissionDenied, TopicNotFound, QueueNotFound,
        InvalidArgument, InvalidGroupName, GroupNotFound (auto-create off)."""
        self._authorize(principal, GROUP, group, READ)
        self._authorize(principal, TOPIC, topic, READ)
        self._master_only()
        return await self.pop_service.pop(group, topic, max_messages, invisible_time_ms,
                                          filter, queue_id, wait_ms, init)

    def _receipt_check(self, principal: Principal) -> Callable[[str, str], None]:
        """What an ack checks once its receipt is decoded: READ on its group."""
        def check(group: str, topic: str) -> None:
            self._authorize(principal, GROUP, group, READ)
        return check

    def ack(self, receipt: str, *, principal: Principal = ANONYMOUS) -> None:
        """Ack one popped message by its receipt handle. Checks READ on the group the
        receipt names. Raises InvalidReceipt (not issued by this broker), ReceiptStale
        (acked already, or its invisible time ran out, or superseded by
        change_invisible_time), TopicNotFound, PermissionDenied."""
        self._master_only()
        self.pop_service.ack(receipt, self._receipt_check(principal))

    def ack_batch(self, receipts: Sequence[str], *,
                  principal: Principal = ANONYMOUS) -> list[FerryError | None]:
        """Ack several handles; per handle None (acked) or the error ``ack`` would raise."""
        self._master_only()
        return self.pop_service.ack_batch(receipts, self._receipt_check(principal))

    def change_invisible_time(self, receipt: str, invisible_time_ms: int, *,
                              principal: Principal = ANONYMOUS) -> ReceiptRenewal:
        """Extend (or shorten) a lease to ``invisible_time_ms`` from now. The old handle
        becomes stale; ack with the returned one. Raises as ``ack``, and InvalidArgument."""
        self._master_only()
        return self.pop_service.change_invisible_time(receipt, invisible_time_ms,
                                                      self._receipt_check(principal))

    def peek(self, group: str, topic: str, max_messages: int = 16,
             filter: Filter | None = None, *, queue_id: int = -1,
             principal: Principal = ANONYMOUS) -> list[ConsumedMessage]:
        """What the group's next pop would get, without leasing anything. Checks READ
        on the group and the topic."""
        self._authorize(principal, GROUP, group, READ)
        self._authorize(principal, TOPIC, topic, READ)
        return self.pop_service.peek(group, topic, max_messages, filter, queue_id)

    def pop_status(self, group: str, topic: str | None = None, *,
                   principal: Principal = ANONYMOUS) -> list[QueuePopStatus]:
        """Per queue the group popped from: pop offset, leases out, revived waiting.
        Checks DESCRIBE on the group."""
        self._authorize(principal, GROUP, group, DESCRIBE)
        return self.pop_service.status(group, topic)

    def receipt(self, handle: str) -> Receipt:
        """What a receipt handle this broker issued names (group, topic, queue,
        offset...), without asking whether it is current. Raises InvalidReceipt."""
        self._master_only()
        return self.pop_service.codec.decode(handle)

    # ================================================================ offsets

    def queue_bounds(self, topic: str, queue_id: int, *,
                     principal: Principal = ANONYMOUS) -> tuple[int, int]:
        """(min offset, max offset) of a queue as consumers see it; max is the next
        message's offset. Checks DESCRIBE on the topic. Raises TopicNotFound,
        PermissionDenied (not readable), QueueNotFound."""
        self._authorize(principal, TOPIC, topic, DESCRIBE)
        return self._paths.queue_bounds(topic, queue_id)

    def min_offset(self, topic: str, queue_id: int, *, principal: Principal = ANONYMOUS) -> int:
        """The queue's first retained offset (retention moves it), as a producer learns
        it: the topic need not be readable. 0 for a queue that never held a message.
        Checks DESCRIBE on the topic; raises TopicNotFound, QueueNotFound."""
        self._authorize(principal, TOPIC, topic, DESCRIBE)
        t = self._paths.topic_config(topic)
        if t is None:
            validate_topic_name(topic)
            raise TopicNotFound(f"topic {topic} does not exist")
        if not 0 <= queue_id < t.queues:
            raise QueueNotFound(f"topic {topic} has {t.queues} queues; no queue {queue_id}")
        return self._paths.stored_bounds(topic, queue_id)[0]

    def commit_offset(self, group: str, topic: str, queue_id: int, offset: int, *,
                      principal: Principal = ANONYMOUS) -> None:
        """Record ``offset`` (the next message to consume) for the group, as a state
        record of the CommitLog: when this returns the commit survives a crash of the
        process. A door acknowledges a commit after ``await wait_durable()``, which
        under sync flush waits for the group commit covering it (under async flush
        the window is the flush interval). Committing the offset already committed
        writes nothing. Checks READ on the group and the topic. Raises
        PermissionDenied, InvalidGroupName, TopicNotFound, QueueNotFound,
        OffsetOutOfRange (negative), GroupNotFound, StoreError."""
        self._authorize(principal, GROUP, group, READ)
        self._authorize(principal, TOPIC, topic, READ)
        if self._paths.write_refusal is not None:  # a commit is a write: checked first
            raise self._paths.write_refusal
        self._paths.consumer_group(group)
        t = self.meta.topics.get(topic)
        if t is None:
            validate_topic_name(topic)
            raise TopicNotFound(f"topic {topic} does not exist")
        if not 0 <= queue_id < t.queues:
            raise QueueNotFound(f"topic {topic} has {t.queues} queues; no queue {queue_id}")
        if offset < 0:
            raise OffsetOutOfRange(f"offset {offset} is negative")
        self._paths.commit(group, topic, queue_id, offset)

    async def delete_committed_offsets(self, group: str,
                                       queues: Iterable[tuple[str, int]], *,
                                       principal: Principal = ANONYMOUS) -> int:
        """Forget the group's committed offsets of the (topic, queue id) pairs (Kafka's
        OffsetDelete); returns how many there were. Durable when this returns. Checks
        DELETE on the group and READ on each topic. Raises InvalidGroupName."""
        self._authorize(principal, GROUP, group, DELETE)
        validate_group_name(group)
        pairs = list(queues)
        for topic in {t for t, _q in pairs}:
            self._authorize(principal, TOPIC, topic, READ)
        changes: list[Change] = [(NS_OFFSET, (group, t, q), None) for t, q in pairs
                                 if self.meta.committed(group, t, q) is not None]
        await self.state.put_many(changes)
        return len(changes)

    async def wait_durable(self) -> None:
        """Return once every state change made so far (offset commits, pop acks,
        auto-created groups) is as durable as the flush policy promises: under sync
        flush on disk (one group commit serves every waiter); under async flush at
        once, the flush interval being the window (docs/operations.md). Raises
        FlushFailed."""
        await self.state.wait(self.state.end, False)

    def committed_offset(self, group: str, topic: str, queue_id: int, *,
                         principal: Principal = ANONYMOUS) -> int | None:
        """The group's committed offset for the queue, or None if it never committed.
        Checks DESCRIBE on the group."""
        self._authorize(principal, GROUP, group, DESCRIBE)
        return self._paths.committed(group, topic, queue_id)

    def committed_offsets(self, group: str, *, principal: Principal = ANONYMOUS
                          ) -> dict[str, dict[int, int]]:
        """Every offset the group committed: topic -> queue id -> offset (a copy;
        empty for a group that never committed). Checks DESCRIBE on the group."""
        self._authorize(principal, GROUP, group, DESCRIBE)
        return {topic: dict(queues) for topic, queues in self.meta.offsets.get(group, {}).items()}

    def offset_for_time(self, topic: str, queue_id: int, timestamp_ms: int, *,
                        principal: Principal = ANONYMOUS) -> int:
        """The first offset whose message was stored at or after ``timestamp_ms``
        (the max offset if none): store time, what resuming "from when I left" needs
        (an MQTT session). Rewinding a consumer to a time is ``offset_for_timestamp``
        (the records' own timestamps, Kafka's semantics). Checks DESCRIBE on the
        topic. Raises TopicNotFound, PermissionDenied (not readable)."""
        self._authorize(principal, TOPIC, topic, DESCRIBE)
        return self._paths.offset_for_time(topic, queue_id, timestamp_ms)

    def offset_for_timestamp(self, topic: str, queue_id: int, timestamp_ms: int, *,
                             principal: Principal = ANONYMOUS) -> tuple[int, int]:
        """Kafka's lookup by time: (the first offset whose timestamp is >=
        ``timestamp_ms``, that timestamp), or (max offset, -1). The timestamp is the
        topic's message.timestamp.type (CreateTime: the records' own, through the
        time index; LogAppendTime: store time). Checks DESCRIBE on the topic.
        Raises TopicNotFound, PermissionDenied (not readable)."""
        self._authorize(principal, TOPIC, topic, DESCRIBE)
        return self._paths.timestamp_lookup(topic, queue_id, timestamp_ms)

    def max_timestamp(self, topic: str, queue_id: int, *,
                      principal: Principal = ANONYMOUS) -> tuple[int, int]:
        """(offset, timestamp) of the queue's record with the largest timestamp,
        (-1, -1) when it is empty. Checks DESCRIBE on the topic."""
        self._authorize(principal, TOPIC, topic, DESCRIBE)
        return self._paths.max_timestamp(topic, queue_id)

    @asynccontextmanager
    async def admin_batch(self) -> AsyncIterator[None]:
        """Admin changes made inside the block (topics and groups created, updated,
        deleted) are acknowledged together: leaving the block waits once for their
        durability (a Kafka CreateTopics of 10,000 topics costs one fsync, not
        10,000). Each change inside is still checked by its own call."""
        async with self.state.batch():
            yield

    async def flush_offsets(self) -> None:
        """Make committed offsets (and every other state change) durable now, under
        either flush policy: an fsync if anything is not on disk yet. Not checked:
        it makes durable what was committed already."""
        await self.state.wait(self.state.end, True)

    # ================================================================ topics

    def topic(self, name: str, *, principal: Principal = ANONYMOUS) -> TopicConfig:
        """The topic's configuration. Checks DESCRIBE on it. Raises PermissionDenied,
        InvalidTopicName, TopicNotFound."""
        self._authorize(principal, TOPIC, name, DESCRIBE)
        return self._topic(name)

    def _topic(self, name: str) -> TopicConfig:
        t = self.meta.topics.get(name)
        if t is None:
            validate_topic_name(name)
            raise TopicNotFound(f"topic {name} does not exist")
        return t

    def find_topic(self, name: str, *, principal: Principal = ANONYMOUS) -> TopicConfig | None:
        """The topic's configuration, or None when there is no such topic (whatever
        its name). Checks DESCRIBE on it."""
        self._authorize(principal, TOPIC, name, DESCRIBE)
        return self.meta.topics.get(name)

    def topics(self, *, principal: Principal = ANONYMOUS) -> list[TopicConfig]:
        """Every topic the principal may DESCRIBE (system topics included), by name."""
        return [t for t in sorted(self.meta.topics.values(), key=lambda t: t.name)
                if self._permits(principal, TOPIC, t.name, DESCRIBE)]

    async def create_topic(self, name: str, queues: int | None = None, *,
                           perm: int = PERM_READ_WRITE, message_type: str = "NORMAL",
                           attributes: Mapping[str, str | None] | None = None,
                           exist_ok: bool = False, validate_only: bool = False,
                           principal: Principal = ANONYMOUS) -> TopicConfig:
        """Create a topic (``queues`` defaults to the broker's default_queues).
        ``attributes`` holds its topic configs under Kafka's names (validated by
        core/topicconfig.py; a None value, as Kafka's nullable configs allow, is an
        InvalidConfig) and free-form labels (keys without a dot). Checks CREATE
        on it. Raises PermissionDenied, InvalidTopicName, InvalidArgument,
        InvalidConfig, TopicExists (unless ``exist_ok``). With ``validate_only``
        nothing is created: the topic as it would be is returned."""
        self._authorize(principal, TOPIC, name, CREATE)
        return await self._create_topic(name, queues, perm=perm, message_type=message_type,
                                        attributes=attributes, exist_ok=exist_ok,
                                        validate_only=validate_only)

    async def _create_topic(self, name: str, queues: int | None = None, *,
                            perm: int = PERM_READ_WRITE, message_type: str = "NORMAL",
                            attributes: Mapping[str, str | None] | None = None,
                            exist_ok: bool = False, for_put: bool = False,
                            validate_only: bool = False) -> TopicConfig:
        """``create_topic`` unchecked: the write path auto-creates topics through it.
        Raises PermissionDenied also for the state log's topic."""
        validate_topic_name(name)
        if name == STATE_TOPIC:
            raise PermissionDenied(f"{name} is a system topic the broker manages")
        queues = self.config.default_queues if queues is None else queues
        _check_topic_args(queues, perm, message_type)
        attrs = topicconfig.validate(attributes or {}, self.config)
        existing = self.meta.topics.get(name)
        if existing is not None:
            if exist_ok:
                return existing
            raise TopicExists(f"topic {name} exists")
        t = TopicConfig(name, queues, perm, message_type, now_ms(), self.store.dispatched_pos,
                        attrs)
        if validate_only:
            return t
        changes: list[Change] = [(NS_TOPIC, name, t.to_json())]
        if name in self.meta.tombstones:
            changes.insert(0, (NS_TOMBSTONE, name, None))
        # Applied when appended, so concurrent producers see it at once; then durable.
        # A topic a put creates for itself is replicated with the put (it precedes it
        # in the log): the put's own wait covers it, at the put's durability.
        await self.state.put_many(changes, replicate=not for_put)
        return self._topic_after_wait(name)

    async def update_topic(self, name: str, *, queues: int | None = None,
                           perm: int | None = None, message_type: str | None = None,
                           attributes: Mapping[str, str] | None = None,
                           principal: Principal = ANONYMOUS) -> TopicConfig:
        """Change a topic's queue count (grow only: a queue's messages stay where
        they are), permissions, message type or attributes. Checks ALTER on it."""
        self._authorize(principal, TOPIC, name, ALTER)
        self._refuse_system_topic(name)
        t = self._topic(name)
        new_queues = t.queues if queues is None else queues
        if new_queues < t.queues:
            raise InvalidArgument(f"topic {name} has {t.queues} queues; queues cannot shrink")
        _check_topic_args(new_queues, t.perm if perm is None else perm,
                          t.message_type if message_type is None else message_type)
        if attributes is not None:
            attributes = topicconfig.validate(attributes, self.config)
        t = replace(
            t, queues=new_queues, perm=t.perm if perm is None else perm,
            message_type=t.message_type if message_type is None else message_type,
            attributes=t.attributes if attributes is None else dict(attributes))
        await self.state.put(NS_TOPIC, name, t.to_json())
        return self._topic_after_wait(name)

    async def alter_topic_configs(self, name: str,
                                  ops: Sequence[tuple[str, int, str | None]] | None = None, *,
                                  replace_with: Mapping[str, str | None] | None = None,
                                  validate_only: bool = False,
                                  principal: Principal = ANONYMOUS) -> TopicConfig:
        """Change a topic's configs: ``ops`` are (name, operation, value) with the
        operations of core/topicconfig.py (SET, DELETE back to the default, APPEND and
        SUBTRACT for lists: Kafka's IncrementalAlterConfigs); ``replace_with`` replaces
        every config (Kafka's AlterConfigs: those not given go back to their defaults).
        With ``validate_only`` nothing changes and the topic as it would be is
        returned. Checks ALTER on the topic. Raises PermissionDenied,
        TopicNotFound, InvalidConfig."""
        self._authorize(principal, TOPIC, name, ALTER)
        self._refuse_system_topic(name)
        t = self._topic(name)
        if replace_with is not None:
            attrs = topicconfig.replace_all(t.attributes, replace_with, self.config)
        else:
            attrs = topicconfig.apply(t.attributes, ops or (), self.config)
        new = replace(t, attributes=attrs)
        if validate_only or attrs == dict(t.attributes):
            return new
        await self.state.put(NS_TOPIC, name, new.to_json())
        return self._topic_after_wait(name)

    def describe_topic_configs(self, name: str, *, principal: Principal = ANONYMOUS
                               ) -> list[topicconfig.Entry]:
        """Every topic config of the topic: value, source, read-only, synonyms,
        documentation (core/topicconfig.py). Checks DESCRIBE on it. Raises
        PermissionDenied, InvalidTopicName, TopicNotFound."""
        self._authorize(principal, TOPIC, name, DESCRIBE)
        return topicconfig.describe(self._topic(name).attributes, self.config)

    def describe_broker_configs(self, *, principal: Principal = ANONYMOUS,
                                extra: Mapping[str, str] | None = None
                                ) -> list[topicconfig.Entry]:
        """The broker's settings under Kafka's names (read-only: they come from its
        configuration); ``extra`` overrides values a door knows better (its own
        auto-create switch). Checks DESCRIBE on the cluster."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        return topicconfig.describe_broker(self.config, extra)

    def _topic_after_wait(self, name: str) -> TopicConfig:
        """The topic a change just made durable, unless another task deleted it while
        that change waited for its flush."""
        t = self.meta.topics.get(name)
        if t is None:
            raise TopicNotFound(f"topic {name} was deleted meanwhile")
        return t

    async def delete_topic(self, name: str, *, principal: Principal = ANONYMOUS) -> None:
        """Delete a topic: its queues and committed offsets go at once, its records
        leave the CommitLog with retention. Checks DELETE on it. Raises TopicNotFound."""
        self._authorize(principal, TOPIC, name, DELETE)
        self._refuse_system_topic(name)
        self._topic(name)
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
        routable for RocketMQ clients at once. Door wiring: not checked."""
        self._topic_watchers.append(callback)

    # ================================================================ groups

    def group(self, name: str, *, principal: Principal = ANONYMOUS) -> GroupConfig:
        """The group's configuration. Checks DESCRIBE on it. Raises PermissionDenied,
        InvalidGroupName, GroupNotFound."""
        self._authorize(principal, GROUP, name, DESCRIBE)
        return self._group(name)

    def _group(self, name: str) -> GroupConfig:
        validate_group_name(name)
        g = self.meta.groups.get(name)
        if g is None:
            raise GroupNotFound(f"consumer group {name} does not exist")
        return g

    def find_group(self, name: str, *, principal: Principal = ANONYMOUS) -> GroupConfig | None:
        """The group's configuration, or None when it was never created (a group known
        only by its committed offsets has none). Checks DESCRIBE on it."""
        self._authorize(principal, GROUP, name, DESCRIBE)
        return self.meta.groups.get(name)

    def groups(self, *, principal: Principal = ANONYMOUS) -> list[GroupConfig]:
        """Every created group the principal may DESCRIBE, by name."""
        return [g for g in sorted(self.meta.groups.values(), key=lambda g: g.name)
                if self._permits(principal, GROUP, g.name, DESCRIBE)]

    def known_groups(self, *, principal: Principal = ANONYMOUS) -> list[str]:
        """The names of every group the broker knows and the principal may DESCRIBE:
        created ones and those known only by their committed offsets (a Kafka group
        commits without being created), sorted."""
        names = set(self.meta.groups) | set(self.meta.offsets)
        return [g for g in sorted(names) if self._permits(principal, GROUP, g, DESCRIBE)]

    def consuming_groups(self, topic: str, *, principal: Principal = ANONYMOUS) -> list[str]:
        """The groups that committed an offset on ``topic`` (RocketMQ's "consumed by
        who"), sorted. Checks DESCRIBE on the topic; lists the groups the principal
        may DESCRIBE."""
        self._authorize(principal, TOPIC, topic, DESCRIBE)
        return sorted(g for g, topics in self.meta.offsets.items()
                      if topic in topics and self._permits(principal, GROUP, g, DESCRIBE))

    async def create_group(self, name: str, *, exist_ok: bool = False,
                           principal: Principal = ANONYMOUS, **settings: object) -> GroupConfig:
        """Create a consumer group with ``settings`` (GroupConfig fields). Checks CREATE
        on it. Raises PermissionDenied, InvalidGroupName, InvalidArgument (exists,
        unless ``exist_ok``). With ``exist_ok`` (a consumer's implicit group, as a
        RocketMQ heartbeat or a Kafka JoinGroup makes it) READ on the group is
        enough, as in Kafka: who may consume in a group may bring it into being."""
        self._authorize(principal, GROUP, name, READ if exist_ok else CREATE)
        validate_group_name(name)
        g = self.meta.groups.get(name)
        if g is not None:
            if exist_ok:
                return g
            raise InvalidArgument(f"consumer group {name} exists")
        g = replace(GroupConfig(name, created_at=now_ms()), **settings)  # type: ignore[arg-type]
        await self.state.put(NS_GROUP, name, g.to_json())
        return self._group(name)  # GroupNotFound if deleted while this waited for its flush

    async def update_group(self, name: str, *, principal: Principal = ANONYMOUS,
                           **settings: object) -> GroupConfig:
        """Change a group's settings. Checks ALTER on it. Raises GroupNotFound."""
        self._authorize(principal, GROUP, name, ALTER)
        g = replace(self._group(name), **settings)  # type: ignore[arg-type]
        await self.state.put(NS_GROUP, name, g.to_json())
        return self._group(name)  # GroupNotFound if deleted while this waited for its flush

    async def delete_group(self, name: str, *, principal: Principal = ANONYMOUS) -> None:
        """Forget a group: its settings, pop state and committed offsets. A group known
        only by its offsets (a Kafka consumer group commits without being created)
        counts as existing; GroupNotFound when neither is there. Checks DELETE on it."""
        self._authorize(principal, GROUP, name, DELETE)
        validate_group_name(name)
        if name not in self.meta.groups and name not in self.meta.offsets:
            raise GroupNotFound(f"consumer group {name} does not exist")
        changes: list[Change] = [(NS_OFFSET, k, None) for k in self.meta.offset_keys(group=name)]
        changes += self.pop_service.forget_changes(group=name)
        changes.append((NS_GROUP, name, None))
        await self.state.put_many(changes)

    # ================================================================ stats

    def topic_stats(self, name: str, *, principal: Principal = ANONYMOUS) -> TopicStats:
        """Every queue's (min, max) offset as stored, and the messages and bytes put
        since start. Checks DESCRIBE on the topic. Raises TopicNotFound."""
        self._authorize(principal, TOPIC, name, DESCRIBE)
        t = self._topic(name)
        c = self.counters.topics.get(name)
        queues = tuple((q, *self.store.queue_bounds(name, q)) for q in range(t.queues))
        return TopicStats(name, queues, c.messages_in if c else 0, c.bytes_in if c else 0)

    def group_stats(self, group: str, topic: str | None = None, *,
                    principal: Principal = ANONYMOUS) -> list[GroupTopicStats]:
        """Per topic the group consumed: every queue's committed offset and lag. Checks
        DESCRIBE on the group. Raises GroupNotFound."""
        self._authorize(principal, GROUP, group, DESCRIBE)
        self._group(group)
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

    def broker_stats(self, *, principal: Principal = ANONYMOUS) -> BrokerStats:
        """The broker as a whole (RocketMQ's runtime info): start time, messages put
        since, the CommitLog's end, topic and group counts. Checks DESCRIBE on the
        cluster."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        return BrokerStats(self.started_at,
                           sum(c.messages_in for c in self.counters.topics.values()),
                           self.store.dispatched_pos, len(self.meta.topics),
                           len(self.meta.groups))

    def health(self) -> Health:
        """Whether the broker takes writes, and why not (shutting down, a failed
        flush). Not checked: readiness probes ask it anonymously."""
        if self._paths.closing:
            return Health(False, "the broker is shutting down")
        if self.store.failed is not None:
            return Health(False, f"the store refuses writes: {self.store.failed}")
        if self._disk_refusal is not None:
            return Health(False, str(self._disk_refusal))
        if self._paths.write_refusal is not None:
            return Health(False, str(self._paths.write_refusal))
        return Health(True, "")

    # ---------------------------------------------------------------- what a console reads

    def broker_info(self, *, principal: Principal = ANONYMOUS) -> BrokerInfo:
        """This broker as a console lists brokers: name, cluster, role, address, store.
        Checks DESCRIBE on the cluster."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        cfg, cl = self.config, self.store.commitlog
        # RocketMQ's brokerRole: a broker alone is its group's master.
        role = "slave" if self.role is Role.SLAVE else "master"
        return BrokerInfo(cfg.broker_name, cfg.cluster_name, role,
                          f"{cfg.store_host}:{cfg.store_port}", self.started_at, cfg.flush,
                          sum(c.messages_in for c in self.counters.topics.values()),
                          sum(1 for t in self.meta.topics.values() if not t.system),
                          len(self.meta.groups), cl.min_offset,
                          self.store.dispatched_pos, cl.flushed_pos)

    def door_connections(self, *, principal: Principal = ANONYMOUS) -> dict[str, tuple[int, int]]:
        """Per door (its protocol label: http, kafka, mqtt, rocketmq...): connections open
        now and accepted since start, as the doors count them into the metrics
        (``ferrymq_connections``). Checks DESCRIBE on the cluster."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        # The doors' instruments (core/metrics.py DoorMetrics), looked up by name and labels.
        open_now = self.metrics.gauge("ferrymq_connections", "Open client connections, per "
                                      "protocol.", ("protocol",))
        accepted = self.metrics.counter("ferrymq_connections_accepted_total",
                                        "Connections accepted, per protocol.", ("protocol",))
        counts: dict[str, list[int]] = {}
        for at, family in enumerate((open_now.family(), accepted.family())):
            for sample in family.samples:
                counts.setdefault(dict(sample.labels)["protocol"], [0, 0])[at] = int(sample.value)
        return {door: (n[0], n[1]) for door, n in sorted(counts.items())}

    def traffic(self, *, principal: Principal = ANONYMOUS) -> Traffic:
        """The message and byte counters since start, per topic and per (group, topic), in
        one read (no queue is looked at: cheap enough to sample every few seconds).
        Checks DESCRIBE on the cluster."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        c = self.counters
        return Traffic({t: (tc.messages_in, tc.bytes_in) for t, tc in c.topics.items()},
                       {k: (gc.messages_out, gc.bytes_out) for k, gc in c.groups.items()})

    def group_lags(self, group: str | None = None, *,
                   principal: Principal = ANONYMOUS) -> list[GroupLag]:
        """Every (group, topic, queue) with a committed offset, and its lag: of one group
        (DESCRIBE on it; created or known only by its offsets, as a Kafka group is) or
        of all (DESCRIBE on the cluster). Sorted; topics deleted since are left out."""
        if group is None:
            self._authorize(principal, CLUSTER, "", DESCRIBE)
            items = sorted(self.meta.offsets.items())
        else:
            self._authorize(principal, GROUP, group, DESCRIBE)
            validate_group_name(group)
            items = [(group, self.meta.offsets.get(group, {}))]
        out: list[GroupLag] = []
        topics = self.meta.topics
        for g, per_topic in items:
            for topic, queues in sorted(per_topic.items()):
                if topic in topics:
                    out.extend(GroupLag(g, topic, q, committed, self.store.queue_bounds(topic, q)[1])
                               for q, committed in sorted(queues.items()))
        return out

    def timer_schedule(self, hours: int = 24, *,
                       principal: Principal = ANONYMOUS) -> TimerSchedule:
        """Pending timers per hour of delivery time, from the current hour on, for
        ``hours`` (1-168) hours. Reads the wheel's slots in the window (a timer due
        beyond the roll window waits at its roll point, so each entry's own delivery
        time decides its hour); past TIMER_WALK_BUDGET entries a slot is counted by
        its second instead, and the answer says it is approximate. Checks DESCRIBE on
        the cluster. Raises InvalidArgument."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        if not 1 <= hours <= 168:
            raise InvalidArgument("hours must be 1..168")
        timers = self.timers
        wheel = timers.wheel
        start_ms = timers.clock() // HOUR_MS * HOUR_MS
        first_s, end_s = start_ms // 1000, start_ms // 1000 + hours * 3600
        counts = [0] * hours
        walked = cancelled = 0
        approximate = False
        for slot_s in wheel.nonempty_slots(min(timers.processed_s or first_s, first_s), end_s):
            n = wheel.count(slot_s)
            entries = None
            if walked + n <= TIMER_WALK_BUDGET:
                try:
                    entries = wheel.walk(slot_s)
                except WheelCorrupt:
                    entries = None  # counted by its second below; recovery repairs the wheel
            if entries is None:
                approximate = True
                counts[min(hours - 1, max(0, slot_s - first_s) // 3600)] += n
                continue
            walked += n
            for _, deliver_ms, _, _, gone in entries:
                if gone:
                    cancelled += 1
                    continue
                h = max(0, deliver_ms - start_ms) // HOUR_MS
                if h < hours:
                    counts[h] += 1
        later = max(0, wheel.pending - cancelled - sum(counts))
        return TimerSchedule(start_ms, tuple(counts), later, wheel.pending, approximate)

    def message_life(self, msg_id: str, *, principal: Principal = ANONYMOUS) -> MessageLife:
        """Every stored copy of message ``msg_id`` (a client id, or an offset id), oldest
        first: where it was produced, its timer, retries, dead letters and resends,
        and for each copy in a topic where every group that consumes that queue
        stands with it (committed offsets, pop leases). Checks READ on the topic of
        the first copy found, and lists only copies of topics the principal may READ,
        and groups it may DESCRIBE. Raises MessageNotFound, PermissionDenied."""
        seen: set[tuple[int, int]] = set()
        copies: list[ConsumedMessage] = []
        found = []
        decoded = parse_offset_message_id(msg_id)  # an offset id names its own record
        if decoded is not None:
            at = self.store.message_at(*decoded)
            found = [at] if at is not None else []
        for m in [*found, *self.store.lookup_key(msg_id, limit=LIFE_COPIES)]:
            if m.topic not in _NOT_IN_A_LIFE and (m.physical_offset, m.batch_index) not in seen \
                    and (m.msg_id == msg_id or m.offset_msg_id == msg_id.upper()):
                seen.add((m.physical_offset, m.batch_index))
                copies.append(m)
        if not copies:
            raise MessageNotFound(f"no message with id {msg_id}")
        copies.sort(key=lambda m: (m.physical_offset, m.batch_index))
        self._authorize(principal, TOPIC, _life_topic(copies[0]), READ)
        steps: list[LifeStep] = []
        dead = False
        door = None
        for m in copies:
            if not self._permits(principal, TOPIC, _life_topic(m), READ):
                continue
            props = dict(m.properties.items())  # decoded whole: a door's FERRY_DOOR is the last
            kind = _LIFE_KINDS.get(m.topic)
            group = None
            due = resent = None
            if kind == "timer":
                out = props.get(PROPERTY_TIMER_OUT_MS, "")
                due = int(out) if out.isdigit() else None
            elif m.topic.startswith(RETRY_PREFIX):
                kind, group = "retry", m.topic[len(RETRY_PREFIX):]
            elif m.topic.startswith(DLQ_PREFIX):
                kind, group, dead = "dead_letter", m.topic[len(DLQ_PREFIX):], True
                try:
                    resent = self.retry.dead_letter(group, m.queue_offset).resent
                except FerryError:
                    resent = None
            elif kind is None:
                kind = ("delivered" if PROPERTY_TIMER_FROM in props else "resent" if dead
                        else "produced" if not steps else "copy")
            if door is None:
                door = props.get(PROPERTY_DOOR)
            consumers = () if m.topic in _LIFE_KINDS else self._consumers(m, principal)
            steps.append(LifeStep(kind, m, group, due, resent, consumers))
        if steps and self._kafka_record(steps[0].message.physical_offset):
            # A Kafka batch stored verbatim: only the Kafka door writes those, and its
            # records' headers (a FERRY_DOOR among them) are the client's, not the door's.
            door = KAFKA_DOOR
        return MessageLife(msg_id, door, tuple(steps))

    def _kafka_record(self, phys: int) -> bool:
        data = self.store.read_record(phys)
        try:
            return data is not None and \
                rec.decode(data, 0, check_crc=False).sys_flag & rec.FORMAT_MASK == rec.FORMAT_KAFKA_BATCH
        except rec.RecordError:
            return False

    def _consumers(self, m: ConsumedMessage, principal: Principal) -> tuple[Consumption, ...]:
        """Where each group that consumes the message's queue stands with it."""
        topic, qid, offset = m.topic, m.queue_id, m.queue_offset
        out: dict[str, Consumption] = {}
        for group, per_topic in self.meta.offsets.items():
            committed = per_topic.get(topic, {}).get(qid)
            if committed is not None:
                out[group] = Consumption(group, committed, committed > offset)
        for (group, t, q), qs in self.pop_service.queues.items():
            if t != topic or q != qid:
                continue
            base = out.get(group) or Consumption(group, None, False)
            lease = qs.leases.get(offset)
            if lease is not None:
                state = "leased" if lease.state == LEASED else "dead" if lease.state == DEAD \
                    else "revived"
                out[group] = replace(base, pop=state, deliveries=lease.deliveries,
                                     invisible_until=lease.until if lease.state == LEASED else None)
            elif offset < qs.pop_offset:
                out[group] = replace(base, pop="acked", consumed=True)
        return tuple(c for g, c in sorted(out.items())
                     if self._permits(principal, GROUP, g, DESCRIBE))

    # ---------------------------------------------------------------- a door's own state

    def stored_queues(self, *, principal: Principal = ANONYMOUS) -> list[StoredQueue]:
        """Every queue of a live topic that holds or held a message, with its (min, max)
        offset as stored: flushed or not, the topic readable or not. For a door that
        keeps state of its own alongside the queues (the Kafka door's producer ids).
        Checks DESCRIBE on the cluster."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        topics = self.meta.topics
        return [StoredQueue(topic, qid, *self.store.queue_bounds(topic, qid))
                for topic, qid in list(self.store.queues) if topic in topics]

    def read_stored(self, topic: str, queue_id: int, offset: int, max_messages: int,
                    max_bytes: int, *, principal: Principal = ANONYMOUS) -> GetResult:
        """Records as stored, from ``offset`` on: no permission or flush visibility
        applies, for a door rebuilding its own state from the queues at start-up
        (``stored_queues``). Checks READ on the topic."""
        self._authorize(principal, TOPIC, topic, READ)
        return self.store.get(topic, queue_id, offset, max_messages, max_bytes)

    # ================================================================ lookups

    def message_by_id(self, msg_id: str, *, principal: Principal = ANONYMOUS
                      ) -> ConsumedMessage | None:
        """A message by its id: a client id (UNIQ_KEY) through the index, or an
        offset message id decoded directly; None when there is none. Checks READ on
        the topic it is found in."""
        m = self._paths.message_by_id(msg_id)
        if m is not None:
            self._authorize(principal, TOPIC, m.topic, READ)
        return m

    def messages_by_id(self, msg_id: str, limit: int = 16, *,
                       principal: Principal = ANONYMOUS) -> list[ConsumedMessage]:
        """Every stored message with the client id ``msg_id`` (a message, its retries,
        its dead letter share it), up to ``limit``, those of topics the principal
        may READ."""
        return [m for m in self.store.lookup_key(msg_id, limit=limit)
                if m.topic != STATE_TOPIC and self._permits(principal, TOPIC, m.topic, READ)]

    def messages_by_key(self, topic: str, key: str, limit: int = 32, *,
                        principal: Principal = ANONYMOUS) -> list[ConsumedMessage]:
        """Messages of ``topic`` whose keys include ``key``. Checks READ on the topic."""
        self._authorize(principal, TOPIC, topic, READ)
        self._topic(topic)
        return self.store.lookup_key(key, topic, limit)

    # ================================================================ timers, transactions, retry
    # Thin adapters over core/timers.py, core/transactions.py and core/retry.py:
    # the doors call these (docs/timers.md and docs/transactions.md say how).

    def _system_topics_sync(self) -> None:
        """Around recovery: the store learns how to re-derive the ConsumeQueue tag-hash
        fields the features use for their own purposes, and a system topic that
        recovery found in the CommitLog gets its permissions back."""
        for name, perm in self._paths.system_topics().items():
            t = self.meta.topics.get(name)
            if t is not None and (t.perm != perm or t.queues != 1):
                self.state.stage([(NS_TOPIC, name, replace(t, queues=1, perm=perm).to_json())])
        self.timers.register_hooks()
        self.transactions.register_hooks()
        self.retry.register_hooks()

    def _refuse_system_topic(self, name: str) -> None:
        if self._paths.is_system_topic(name):
            raise PermissionDenied(f"{name} is a system topic the broker manages")

    async def _put_special(self, m: Message) -> PutResult:
        """The write path's diversion (``Paths.special_put``): a message asking for a
        delivery time, or marked as a half."""
        if m.properties.get(PROPERTY_TRANSACTION_PREPARED) == "true":
            return await self.transactions.prepare_put(m)
        return await self.timers.put(m)

    def _topic_check(self, principal: Principal, operation: Operation) -> Callable[[str], None]:
        """A check of ``operation`` on the topic a service resolves an id to."""
        def check(topic: str) -> None:
            self._authorize(principal, TOPIC, topic, operation)
        return check

    # ---------------------------------------------------------------- timers

    async def cancel_timer(self, message_id: str, *,
                           principal: Principal = ANONYMOUS) -> CancelResult:
        """Cancel a pending timer by the message id its put returned (its client id,
        or the offset id of the timer record). Durable under sync flush when this
        returns. Checks WRITE on the timer's destination topic. Raises TimerNotFound
        (unknown, delivered, or cancelled already), PermissionDenied."""
        self._master_only()
        return await self.timers.cancel(message_id, self._topic_check(principal, WRITE))

    def timer_stats(self, *, principal: Principal = ANONYMOUS) -> TimerStats:
        """The timers' counts and delivery lateness. Checks DESCRIBE on the cluster."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        return self.timers.stats()

    # ---------------------------------------------------------------- transactions

    async def prepare(self, message: Message, producer_group: str, *,
                      principal: Principal = ANONYMOUS) -> HalfHandle:
        """Store a half message (invisible until committed); see core/transactions.py.
        ``put`` of a message with ``TRAN_MSG=true`` and ``PGROUP`` does the same.
        Checks WRITE on the topic."""
        self._authorize(principal, TOPIC, message.topic, WRITE)
        self._master_only()
        if self._disk_refusal is not None:
            self._refuse_for_disk()
        return await self.transactions.prepare(message, producer_group)

    async def end_transaction(self, half: HalfHandle | int | str,
                              action: TransactionAction | str, *,
                              producer_group: str | None = None,
                              transaction_id: str | None = None,
                              from_check: bool = False,
                              principal: Principal = ANONYMOUS) -> PutResult | None:
        """END_TRANSACTION: ``half`` is the handle, the half's CommitLog offset
        (RocketMQ's commitLogOffset) or its message/transaction id. COMMIT returns
        where the message landed, exactly once; ROLLBACK and UNKNOWN return None.
        Checks WRITE on the half's topic. Raises TransactionNotFound,
        TransactionAlreadyEnded, InvalidArgument, PermissionDenied."""
        self._master_only()
        return await self.transactions.end_transaction(
            half, action, producer_group=producer_group, transaction_id=transaction_id,
            from_check=from_check, authorize=self._topic_check(principal, WRITE))

    async def prepare_kafka_batch(self, topic: str, queue_id: int,
                                  batch: bytes | bytearray | memoryview, producer_group: str, *,
                                  coordinator: str, properties: Mapping[str, str] | None = None,
                                  principal: Principal = ANONYMOUS) -> HalfHandle:
        """Store a Kafka RecordBatch as a half of ``producer_group`` that the door named
        ``coordinator`` decides (docs/transactions.md, "Kafka transactions"): invisible
        to every door until ``end_transaction_group`` commits it. Checks WRITE on the
        topic and on the producer group's transactional id. Raises as ``prepare``, and
        CorruptMessage."""
        self._authorize(principal, TOPIC, topic, WRITE)
        self._authorize(principal, TRANSACTIONAL_ID, producer_group, WRITE)
        return await self.transactions.prepare_kafka_batch(topic, queue_id, batch,
                                                           producer_group, coordinator,
                                                           properties)

    async def end_transaction_group(self, producer_group: str, commit: bool, *,
                                    coordinator: str,
                                    accept: Callable[[Mapping[str, str]], bool] | None = None,
                                    trailers: Sequence[tuple[str, int, bytes]] = (),
                                    principal: Principal = ANONYMOUS) -> GroupEnd:
        """Commit (or roll back) every open half of ``producer_group`` that ``coordinator``
        decides, then append ``trailers`` (topic, queue, Kafka batch) in the same step:
        see core/transactions.py ``end_group``. Checks WRITE on the transactional id and
        on every topic written."""
        self._authorize(principal, TRANSACTIONAL_ID, producer_group, WRITE)
        return await self.transactions.end_group(
            producer_group, commit, coordinator=coordinator, accept=accept, trailers=trailers,
            authorize=self._topic_check(principal, WRITE))

    def set_transaction_checker(self, checker: TransactionChecker | None) -> None:
        """Install the check-back hook: ``async (producer_group, HalfMessage) -> bool``,
        True when the question reached a live producer of the group. Door wiring:
        not checked."""
        self.transactions.checker = checker

    def pending_transactions(self, limit: int = 100, group: str | None = None, *,
                             principal: Principal = ANONYMOUS) -> list[PendingTransaction]:
        """Open halves, oldest first (only the producer group ``group``'s when given).
        Checks DESCRIBE on the producer group's transactions (on the cluster for all)."""
        if group is None:
            self._authorize(principal, CLUSTER, "", DESCRIBE)
        else:
            self._authorize(principal, TRANSACTIONAL_ID, group, DESCRIBE)
        return self.transactions.list_pending(limit, group)

    def transaction_stats(self, *, principal: Principal = ANONYMOUS) -> TransactionStats:
        """Open halves, outcomes and check-backs since start. Checks DESCRIBE on the
        cluster."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        return self.transactions.stats()

    def discarded_transactions(self, offset: int = 0, limit: int = 100, *,
                               principal: Principal = ANONYMOUS) -> list[ConsumedMessage]:
        """Halves discarded after the last check-back, oldest first (in
        RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC). Checks DESCRIBE on the cluster."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        result = self.store.get(CHECK_MAX_TOPIC, 0, offset, limit, 8 << 20)
        return list(result.messages(offset))[:limit]

    # ---------------------------------------------------------------- retry and dead letters

    async def send_back(self, group: str, message: ConsumedMessage | str | int,
                        delay_level: int = 0, *, max_reconsume_times: int | None = None,
                        principal: Principal = ANONYMOUS) -> SendBackResult:
        """CONSUMER_SEND_MSG_BACK: to %RETRY%<group> after a growing delay, or past the
        maximum reconsume count to %DLQ%<group>; see core/retry.py. Checks READ on
        the group."""
        self._authorize(principal, GROUP, group, READ)
        self._master_only()
        return await self.retry.send_back(group, message, delay_level,
                                          max_reconsume_times=max_reconsume_times)

    def dead_letters(self, group: str, offset: int = 0, limit: int = 100, *,
                     principal: Principal = ANONYMOUS) -> list[DeadLetter]:
        """Dead letters of ``group`` from DLQ offset ``offset`` on. Checks READ on the
        group."""
        self._authorize(principal, GROUP, group, READ)
        return self.retry.dead_letters(group, offset, limit)

    def dead_letter(self, group: str, ref: str | int, *,
                    principal: Principal = ANONYMOUS) -> DeadLetter:
        """One dead letter by its message id or DLQ offset. Checks READ on the group.
        Raises MessageNotFound."""
        self._authorize(principal, GROUP, group, READ)
        return self.retry.dead_letter(group, ref)

    async def resend_dead_letters(self, group: str, refs: Iterable[str | int] | None = None, *,
                                  force: bool = False,
                                  principal: Principal = ANONYMOUS) -> list[ResendResult]:
        """Put dead letters back into their original topic (all not yet resent when
        ``refs`` is None); a letter resent before needs ``force``. Checks READ on the
        group and WRITE on every original topic before resending any."""
        self._authorize(principal, GROUP, group, READ)
        self._master_only()
        return await self.retry.resend(group, refs, force=force,
                                       authorize=self._topic_check(principal, WRITE))

    # ================================================================ cluster wiring
    # The replication door and the controller (gateways/replication; docs/cluster.md)
    # call these. Not checked: they carry no client's request, like the door wiring
    # above (``set_transaction_checker``).

    def replication_position(self) -> ReplicationPosition:
        """Where this broker's log stands, for the stream's handshake and for the
        controller: role, node, epoch list, log start and end, confirm offset."""
        r = self._paths.replication
        return ReplicationPosition(
            self.role, self.config.broker_name, self.membership.node, self.membership.epoch,
            self.epochs.snapshot(), self.store.commitlog.min_offset, self.store.dispatched_pos,
            self.config.segment_size, r.confirm_offset() if r is not None else
            self.store.dispatched_pos)

    def replication_chunk(self, start: int, max_bytes: int) -> ReplicationChunk:
        """The master's side of a TRANSFER: whole records from ``start`` (a record
        boundary a slave acked), at most ``max_bytes`` unless one record is larger,
        never past its segment's end or into the next epoch. Empty when the slave has
        everything. Raises NotLeader on a slave, StoreError."""
        if self.role is not Role.MASTER or self._replicas is None:
            raise NotLeader("only a master streams its log")
        entries = self.epochs.entries
        end = self.store.dispatched_pos
        epoch, epoch_start = entries[-1]
        for i in range(len(entries) - 1, -1, -1):
            if entries[i][1] <= start:
                epoch, epoch_start = entries[i]
                # The next epoch beginning after ``start`` bounds the chunk.
                for later_epoch, later_start in entries[i + 1:]:
                    if later_start > start:
                        end = min(end, later_start)
                        break
                    epoch, epoch_start = later_epoch, later_start
                break
        data = self.store.commitlog.chunk(start, end, max_bytes)
        return ReplicationChunk(epoch, epoch_start, start, self._replicas.confirm_offset(), data)

    async def replication_wait(self, pos: int, timeout: float, confirm_delay: float,
                               confirm_sent: int) -> bool:
        """The master's stream to a slave at ``pos``, which was last sent
        ``confirm_sent``: return True when the log grew past ``pos``, or the confirm
        offset moved and ``confirm_delay`` passed without a record to carry it; False
        after ``timeout`` with neither (a heartbeat is due)."""
        r = self._replicas
        if r is None:
            raise NotLeader("only a master streams its log")
        now = trio.current_time()
        deadline = now + timeout
        while self.store.dispatched_pos <= pos:
            if r.confirm_offset() > confirm_sent:
                deadline = min(deadline, now + confirm_delay)
            if trio.current_time() >= deadline:
                return r.confirm_offset() > confirm_sent
            # Appends wake this; the short bound covers appends that bypass the paths.
            with trio.move_on_at(min(deadline, trio.current_time() + 0.05)):
                await r.changed().wait()
        return True

    def replica_connected(self, node: str, end: int) -> None:
        """A slave completed the handshake holding its log up to ``end`` (the master)."""
        if self._replicas is not None:
            self._replicas.connected_slave(node, end)

    def replica_acked(self, node: str, end: int) -> None:
        """A slave holds its log up to ``end`` (the master)."""
        if self._replicas is not None:
            self._replicas.ack(node, end)

    def replica_disconnected(self, node: str) -> None:
        if self._replicas is not None:
            self._replicas.disconnected_slave(node)

    def replica_status(self) -> list[SlaveStatus]:
        """Every slave the master knows this term: acked end, lag, in-sync or not."""
        return self._replicas.status() if self._replicas is not None else []

    def replicate(self, epoch: int, epoch_start: int, start: int, confirm: int,
                  data: bytes) -> int:
        """A slave's side of a TRANSFER: record the epoch if it is new, append the bytes
        verbatim at ``start`` and dispatch them as recovery does (``_accept_record``),
        note the master's confirm offset. Returns the new end, to ack. Raises
        NotLeader (not a slave), CorruptMessage (nothing written), StoreError."""
        s = self._slave
        if s is None:
            raise NotLeader("only a slave takes replicated bytes")
        if epoch > self.epochs.epoch:
            self.epochs.append(epoch, epoch_start)
        if data:
            records = self.store.append_replicated(start, data, self._accept_record)
            paths = self._paths
            for r in records:
                paths.replicated_topic(r.physical_offset + r.total_size, r.topic)
        s.confirmed(confirm)
        return self.store.dispatched_pos

    def truncation_point(self, master_epochs: Sequence[tuple[int, int]],
                         master_end: int) -> int | None:
        """Where this slave's log stops equalling the master's (docs/cluster.md,
        "Epochs"): its end when nothing must go; None when the logs share no epoch."""
        return truncation_point(self.epochs.entries, self.store.dispatched_pos, master_epochs,
                                master_end)

    def truncate_log(self, end: int) -> None:
        """A slave whose log diverged: cut it back to ``end`` when the core closes, which
        must follow at once (the next open rebuilds the state; docs/cluster.md,
        "Truncation"). Raises NotLeader on a master."""
        if self.role is not Role.SLAVE:
            raise NotLeader("only a slave truncates its log")
        self._truncate_to = end

    def set_lease_deadline(self, deadline: float) -> None:
        """The controller: no write is acknowledged after ``deadline`` (trio's clock), the
        send time of the last keep-alive etcd acknowledged plus the TTL minus the
        margin (docs/cluster.md, "Fencing")."""
        self._paths.lease_deadline = deadline
        if self._replicas is not None and self._replicas.fenced is not None \
                and trio.current_time() < deadline:
            self._replicas.fenced = None
            self._paths.write_refusal = None

    def fence(self, reason: str) -> None:
        """The controller: this master's term may be over — refuse writes, fail the ones
        waiting for the in-sync set."""
        err = NotLeader(reason)
        self._paths.write_refusal = err
        if self._replicas is not None:
            self._replicas.fence(err)

    def isr_proposals(self) -> tuple[frozenset[str], frozenset[str]]:
        """The master: (in-sync members to remove, slaves to add), as the acks stand."""
        return self._replicas.proposals() if self._replicas is not None else (
            frozenset(), frozenset())

    def propose_isr_add(self, nodes: Iterable[str]) -> None:
        """The master is about to add ``nodes`` in etcd: count them from now on."""
        if self._replicas is not None:
            self._replicas.propose_add(nodes)

    def cancel_isr_add(self, nodes: Iterable[str]) -> None:
        if self._replicas is not None:
            self._replicas.cancel_add(nodes)

    def isr_changed(self, isr: Iterable[str]) -> None:
        """etcd holds this in-sync set now."""
        if self._replicas is not None:
            self._replicas.isr_changed(isr)

    def in_sync_replicas(self) -> frozenset[str]:
        return self._replicas.isr if self._replicas is not None else self.membership.isr

    # ================================================================ a door's own durable state
    # Session state a door keeps beside the messages (the Kafka door's group membership,
    # transactions, producer ids, commit metadata) lives in the state log, in namespaces
    # named after the door ("kafka.group"): durable with the CommitLog, replayed at
    # start-up (and, with replication, on slaves), never a file of its own.

    async def put_door_state(self, changes: Sequence[Change], *,
                             principal: Principal = ANONYMOUS) -> None:
        """Set keys of a door's namespaces (a value None deletes the key), in one state
        record where they fit; as durable as the flush policy promises when this
        returns. A door namespace is "<door>.<name>". Checks ALTER on the cluster (a
        door's bookkeeping passes SYSTEM). Raises InvalidArgument."""
        self._authorize(principal, CLUSTER, "", ALTER)
        for ns, _key, _value in changes:
            _check_door_namespace(ns)
        await self.state.put_many(changes)

    def append_door_state(self, changes: Sequence[Change], *,
                          principal: Principal = ANONYMOUS) -> None:
        """``put_door_state`` without the wait, for a door that must order its state
        before another change of its own without yielding (the MQTT door appends a
        session's in-flight messages before it commits positions past them): when this
        returns the changes are in the CommitLog (they survive a crash of the process);
        ``await wait_durable()`` before acknowledging anything that depends on them.
        A change of a door namespace may be as large as a state record (it may hold a
        message). Checks ALTER on the cluster. Raises InvalidArgument, StoreError,
        NotLeader (a slave's doors keep no state of their own)."""
        self._authorize(principal, CLUSTER, "", ALTER)
        for ns, _key, _value in changes:
            _check_door_namespace(ns)
        if self._paths.write_refusal is not None:
            raise self._paths.write_refusal
        if changes:
            self.state.append(changes)

    def door_state(self, namespace: str, *, principal: Principal = ANONYMOUS
                   ) -> list[tuple[Key, object]]:
        """Every (key, value) of a door namespace as the state log holds it (arrays come
        back as tuples). Checks DESCRIBE on the cluster. Raises InvalidArgument."""
        self._authorize(principal, CLUSTER, "", DESCRIBE)
        _check_door_namespace(namespace)
        return self.state.items(namespace)

    # ================================================================ retention

    def _retain_topics(self, now: int, broker_ms: int) -> int | None:
        """Each topic's own retention (docs/storage.md, "Retention per topic"): topics
        with retention.ms or retention.bytes of their own have their queues' start
        moved; returns the CommitLog offset from which segments must outlive the
        broker's retention (the oldest record of a topic that keeps longer: -1, a
        longer retention.ms, or a compacted topic), None if no topic does."""
        hold: int | None = None
        for t in self.meta.topics.values():
            if not t.attributes:
                continue
            e = self._paths.settings(t)
            if e.delete:
                cutoff = now - e.retention_ms if 0 <= e.retention_ms < broker_ms else None
                max_bytes = e.retention_bytes if e.retention_bytes >= 0 else None
                if cutoff is not None or max_bytes is not None:
                    self.store.retain_topic(t.name, cutoff, max_bytes)
            if e.compact or e.retention_ms < 0 or e.retention_ms > broker_ms:
                phys = self.store.oldest_physical(t.name)
                if phys is not None:
                    hold = phys if hold is None else min(hold, phys)
        return hold

    async def compact(self, topic: str | None = None, *,
                      principal: Principal = ANONYMOUS) -> list[CompactionStats]:
        """One compaction pass over every queue of ``topic`` (default: every topic whose
        cleanup.policy has compact) whose records are old enough
        (min.compaction.lag.ms), each in a worker thread (docs/storage.md,
        "Compaction"). The background task calls it every
        ``compaction_check_interval_s``; an admin may call it at once. Checks ALTER
        on each topic named. Returns one line per queue compacted."""
        if topic is not None:
            self._authorize(principal, TOPIC, topic, ALTER)
            names = [self._topic(topic).name]
        else:
            names = [t.name for t in self.meta.topics.values()
                     if t.attributes and self._paths.settings(t).compact]
        async with self._compaction_lock:  # one pass at a time: each builds on the last
            return await self._compact(names)

    async def _compact(self, names: list[str]) -> list[CompactionStats]:
        out = []
        for name in names:
            t = self.meta.topics.get(name)
            if t is None or not t.attributes:
                continue
            settings = topicconfig.effective(t.attributes, self.config)
            if not settings.compact:
                continue
            lag = int(t.attributes.get("min.compaction.lag.ms", "0"))
            delete_ms = int(t.attributes.get("delete.retention.ms", "86400000"))
            for qid in self.store.topic_queue_ids(name):
                now = now_ms()
                plan = self.store.compaction_range(name, qid, now, lag)
                if plan is None:
                    continue
                old, start, end = plan
                t0 = trio.current_time()
                self._paths.threaded_reads += 1  # retention waits while the pass reads
                try:
                    result = await trio.to_thread.run_sync(
                        self.store.compact_queue, name, qid, old, start, end, now, delete_ms)
                finally:
                    self._paths.threaded_reads -= 1
                if result.log is None:
                    continue
                now_t = self.meta.topics.get(name)
                if now_t is None or now_t.created_phys != t.created_phys:
                    self.store.discard_compacted(name, qid, result.log)  # deleted meanwhile
                else:
                    self.store.switch_compacted(name, qid, result.log)
                    out.append(CompactionStats(name, qid, result.log.start, result.log.end,
                                               result.records_in, result.records_out,
                                               result.bytes_in, result.bytes_out, result.keys,
                                               trio.current_time() - t0))
        return out

    def run_retention(self) -> list[int]:
        """One retention pass (the background task calls it every
        retention_check_interval_s): segments older than the retention time go, each
        logged at INFO; under ``disk_full_policy = "delete_oldest"`` also the oldest
        ones while the disk is above ``max_disk_ratio``, each logged at WARNING with
        the unconsumed messages it held per group. Under the default "refuse" space
        never deletes data: producers' writes are refused instead (``check_disk``)."""
        if self._paths.threaded_reads:
            return []  # a worker thread is reading the ConsumeQueues: next pass
        # Never delete state records no snapshot holds; ask for one when they sit in a
        # segment retention may want (not the active one), so the next pass can.
        keep = self.state.retention_floor()
        segments = self.store.commitlog.segments
        if keep is not None and segments and keep < segments[-1].base:
            self.state.request_snapshot()
        now = now_ms()
        broker_ms = int(self.config.retention_hours * 3600_000)
        hold = self._retain_topics(now, broker_ms)
        space = self.config.max_disk_ratio if self.config.disk_full_policy == "delete_oldest" \
            else 1.0
        deleted = self.store.retain(now, broker_ms, space, self.disk_usage, protect_from=keep,
                                    hold_from=hold, on_space_delete=self._space_delete)
        if deleted:
            floor = self.store.commitlog.min_offset
            gone: list[Change] = [(NS_TOMBSTONE, name, None)
                                  for name, at in self.meta.tombstones.items() if at <= floor]
            if gone and self.role is not Role.SLAVE:  # a slave gets its master's
                self.state.append(gone)  # no record of those topics is left to rule out
        return deleted

    def _space_delete(self, start: int, end: int) -> None:
        """A segment retention deletes for space (``delete_oldest``): say what it held
        that consumer groups had not consumed yet."""
        unconsumed: dict[str, int] = {}
        total = 0
        spans: dict[tuple[str, int], tuple[int, int]] = {}
        for topic, qid in list(self.store.queues):
            if topic == STATE_TOPIC or topic not in self.meta.topics:
                continue
            lo, hi = self.store.queue_span(topic, qid, start, end)
            if hi > lo:
                spans[(topic, qid)] = (lo, hi)
                total += hi - lo
        for group, topics in self.meta.offsets.items():
            n = 0
            for topic, queues in topics.items():
                for (t, qid), (lo, hi) in spans.items():
                    if t == topic:
                        n += max(0, hi - max(lo, queues.get(qid, 0)))
            if n:
                unconsumed[group] = n
        by_group = ", ".join(f"{g}={n}" for g, n in sorted(unconsumed.items())) or "none"
        log.warning("disk above max_disk_ratio (disk_full_policy delete_oldest): deleted the "
                    "CommitLog segment at %d..%d before its retention time: %d message(s); "
                    "unconsumed per group: %s", start, end, total, by_group,
                    extra={"unconsumed": unconsumed})

    # ================================================================ disk pressure

    def _refuse_for_disk(self) -> None:
        self._refused_puts += 1
        assert self._disk_refusal is not None
        raise self._disk_refusal

    def check_disk(self) -> None:
        """One look at the file system holding the store (every
        ``disk_check_interval_s``): above ``max_disk_ratio`` producers' writes are
        refused (DiskPressure: each door's own error) until it is below the low
        watermark (``disk_resume_ratio``), with a WARNING when it starts, every
        minute while it lasts, and when it ends. Consumers keep reading, committing
        and acking: internal writes (the state log) are not refused, the space
        above the watermark is their reserve. Under ``delete_oldest`` the oldest
        segments are deleted first, and writes refused only if that was not enough."""
        cfg = self.config
        used, total = self.disk_usage()
        ratio = used / total if total else 0.0
        now = time.monotonic()
        if self._disk_refusal is not None:
            if ratio < cfg.resume_ratio:
                self._disk_refusal = None
                log.warning("disk %.1f%% full, below disk_resume_ratio %.1f%%: producers' "
                            "writes resume (%d refused meanwhile)", ratio * 100,
                            cfg.resume_ratio * 100, self._refused_puts)
            elif now - self._disk_warned >= _DISK_WARN_EVERY_S:
                self._disk_warned = now
                log.warning("disk still %.1f%% full (max_disk_ratio %.1f%%): producers' writes "
                            "are still refused (%d so far); free space or raise max_disk_ratio",
                            ratio * 100, cfg.max_disk_ratio * 100, self._refused_puts)
            return
        if ratio < cfg.max_disk_ratio:
            return
        if cfg.disk_full_policy == "delete_oldest":
            self.run_retention()
            used, total = self.disk_usage()
            ratio = used / total if total else 0.0
            if ratio < cfg.max_disk_ratio:
                return
        self._disk_refusal = DiskPressure(
            f"the disk holding the store is {ratio:.1%} full, above max_disk_ratio "
            f"{cfg.max_disk_ratio:.1%}: writes are refused until it is below "
            f"{cfg.resume_ratio:.1%}")
        self._disk_warned = now
        log.warning("disk %.1f%% full, above max_disk_ratio %.1f%%: producers' writes are "
                    "refused until it is below %.1f%% (disk_full_policy %s); nothing is "
                    "deleted before its retention time", ratio * 100, cfg.max_disk_ratio * 100,
                    cfg.resume_ratio * 100, cfg.disk_full_policy)


_DISK_WARN_EVERY_S = 60.0  # while writes are refused for disk pressure, a WARNING this often


def _disk_usage(path: str) -> tuple[int, int]:
    usage = shutil.disk_usage(path)
    return usage.used, usage.total


@dataclass(frozen=True, slots=True)
class ReplicationPosition:
    role: Role
    group: str
    node: str
    epoch: int
    epochs: tuple[tuple[int, int], ...]
    start: int  # the first byte the CommitLog still holds
    end: int  # just past the last record
    segment_size: int
    confirm: int  # what the in-sync set holds (a slave: what its master last said)


@dataclass(frozen=True, slots=True)
class ReplicationChunk:
    epoch: int
    epoch_start: int
    start: int
    confirm: int
    data: bytes


def _check_door_namespace(namespace: str) -> None:
    door, dot, name = namespace.partition(".") if isinstance(namespace, str) else ("", "", "")
    if not (door and dot and name and door.isalnum()):
        raise InvalidArgument(f"a door's state namespace is <door>.<name>, not {namespace!r}")


@dataclass(frozen=True, slots=True)
class CompactionStats:
    """One queue's compaction pass: the compacted range and what it kept."""

    topic: str
    queue_id: int
    start: int
    end: int
    records_in: int
    records_out: int
    bytes_in: int
    bytes_out: int
    keys: int
    seconds: float


def _check_topic_args(queues: int, perm: int, message_type: str) -> None:
    if not isinstance(queues, int) or not 1 <= queues <= MAX_QUEUES:
        raise InvalidArgument(f"queue count must be 1..{MAX_QUEUES}")
    if perm & ~PERM_READ_WRITE or perm < 0:
        raise InvalidArgument("perm must combine 4 (read) and 2 (write)")
    if message_type not in MESSAGE_TYPES:
        raise InvalidArgument(f"message type must be one of {', '.join(MESSAGE_TYPES)}")
