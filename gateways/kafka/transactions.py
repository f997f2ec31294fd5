"""The Kafka door's transaction coordinator: transactional ids, producer epochs, exactly-once.

A Kafka transaction here (docs/transactions.md, "Kafka transactions", has the
argument) is

- a **transaction record** in the state log: namespace ``kafka.txn`` keyed by
  transactional id (producer id and epoch, state, timeout, start), with its
  partitions (``kafka.txn.part``) and pending offset commits
  (``kafka.txn.offset``) as keys of their own, so no change outgrows a record;
- its **batches written as halves** of the core's transaction engine: each
  transactional RecordBatch is stored by ``Broker.prepare_kafka_batch`` as a
  coordinated half of the producer group ``%KAFKA_TXN%<transactional id>``,
  invisible to every door;
- at EndTxn, **one synchronous step** of the engine
  (``Broker.end_transaction_group``) that appends every half of the transaction
  to its partition (verbatim, with its producer id, epoch and sequences) and a
  COMMIT control batch (the transaction marker) after it in each partition, or
  drops them and writes ABORT markers. So a transaction's records become visible
  to Kafka, native, MQTT and HTTP consumers at once, at commit, or never; the last
  stable offset is the high watermark and the aborted-transaction list is empty.

States (Kafka's TransactionState) and the moves between them, as a table
(``TRANSITIONS``; ``Txn.move_to`` refuses any other move, a bug here)::

    Empty, CompleteCommit, CompleteAbort ──AddPartitions/AddOffsets──► Ongoing
    Ongoing ──EndTxn(commit)──► PrepareCommit ──halves committed, markers──► CompleteCommit
    Ongoing ──EndTxn(abort), timeout, fencing InitProducerId──► PrepareAbort ──► CompleteAbort

PrepareCommit and PrepareAbort are written (durably) before the engine's step;
a broker that stops between the two completes the transaction at start. An
InitProducerId of a transactional id bumps its epoch (fencing every older
producer: PRODUCER_FENCED to the coordinator requests, INVALID_PRODUCER_EPOCH to
Produce); one that finds a transaction Ongoing aborts it first and answers
CONCURRENT_TRANSACTIONS, as Kafka does, so the client retries. Halves carry the
producer id, epoch and the transaction's sequence number, and only those of the
transaction being committed are committed: a zombie's batch that slipped in
behind a fence is rolled back.

Everything runs on the event loop; a transactional id's requests are serialised
by a per-id lock (Kafka answers CONCURRENT_TRANSACTIONS meanwhile; here a second
request simply waits for the first).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import trio

from ...core.access import SYSTEM
from ...core.broker import Broker
from ...core.errors import FerryError
from ...protocols.kafka import errors as ke
from ...protocols.kafka import records as kr

log = logging.getLogger("ferrymq.kafka.transactions")

NS_TXN, NS_TXN_PART, NS_TXN_OFFSET = "kafka.txn", "kafka.txn.part", "kafka.txn.offset"
NS_PRODUCER_IDS = "kafka.producer_ids"
COORDINATOR = "kafka"  # the engine's name for halves this door decides
GROUP_PREFIX = "%KAFKA_TXN%"  # producer group of a transactional id's halves
MAX_GROUP_NAME = 255  # core/metadata.py's limit on producer group names
PRODUCER_ID_BLOCK = 1000  # ids reserved per state record (Kafka's ProducerIdManager blocks)
FIRST_PRODUCER_ID = 1000
NO_EPOCH = -1
MAX_EPOCH = 32767  # Short.MaxValue: an epoch at MAX_EPOCH - 1 is exhausted (a new id follows)
# Properties on a half: whose transaction it belongs to.
PROP_PID, PROP_EPOCH, PROP_SEQ = "KAFKA_TXN_PID", "KAFKA_TXN_EPOCH", "KAFKA_TXN_SEQ"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class TxnState(enum.StrEnum):
    """A transactional id's state; the value is the name DescribeTransactions and
    ListTransactions report."""

    EMPTY = "Empty"
    ONGOING = "Ongoing"
    PREPARE_COMMIT = "PrepareCommit"
    PREPARE_ABORT = "PrepareAbort"
    COMPLETE_COMMIT = "CompleteCommit"
    COMPLETE_ABORT = "CompleteAbort"


EMPTY, ONGOING, PREPARE_COMMIT, PREPARE_ABORT, COMPLETE_COMMIT, COMPLETE_ABORT = TxnState

TRANSITIONS: dict[TxnState, frozenset[TxnState]] = {
    # state: the states it may move to (Kafka's validPreviousStates, read the other way)
    EMPTY: frozenset((EMPTY, ONGOING)),
    ONGOING: frozenset((ONGOING, PREPARE_COMMIT, PREPARE_ABORT)),
    PREPARE_COMMIT: frozenset((COMPLETE_COMMIT,)),
    PREPARE_ABORT: frozenset((COMPLETE_ABORT,)),
    COMPLETE_COMMIT: frozenset((EMPTY, ONGOING)),
    COMPLETE_ABORT: frozenset((EMPTY, ONGOING)),
}


class IllegalTransition(AssertionError):
    """A move ``TRANSITIONS`` does not allow: a bug in this module."""


class TxnError(Exception):
    """A request is answered with ``code``."""

    def __init__(self, code: int) -> None:
        super().__init__(ke.NAMES.get(code, code))
        self.code = code


def group_for(transactional_id: str) -> str:
    """The core producer group of a transactional id's halves (a digest when the id is
    too long for a group name)."""
    name = GROUP_PREFIX + transactional_id
    if len(name) <= MAX_GROUP_NAME and name.isprintable():
        return name
    return GROUP_PREFIX + "sha256:" + hashlib.sha256(transactional_id.encode()).hexdigest()


@dataclass
class Txn:
    """One transactional id (Kafka's TransactionMetadata)."""

    transactional_id: str
    producer_id: int
    epoch: int = NO_EPOCH
    last_producer_id: int = -1
    last_epoch: int = NO_EPOCH
    timeout_ms: int = 60_000
    state: TxnState = EMPTY
    start_ms: int = -1
    updated_ms: int = 0
    seq: int = 0  # the number of the current (or last) transaction of this id
    partitions: set[tuple[str, int]] = field(default_factory=set)
    groups: set[str] = field(default_factory=set)
    offsets: dict[tuple[str, str, int], tuple[int, str | None, int]] = field(default_factory=dict)
    lock: trio.Lock = field(default_factory=trio.Lock, repr=False)

    @property
    def group(self) -> str:
        return group_for(self.transactional_id)

    def move_to(self, new: TxnState) -> None:
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"transaction {self.transactional_id}: {self.state} -> {new}")
        self.state = new

    def header(self) -> list[Any]:
        return [self.producer_id, self.epoch, self.last_producer_id, self.last_epoch,
                self.timeout_ms, self.state.value, self.start_ms, self.updated_ms, self.seq,
                sorted(self.groups)]

    @classmethod
    def from_header(cls, tid: str, v: Sequence[Any]) -> Txn:
        pid, epoch, lpid, lepoch, timeout, state, start, updated, seq, groups = v
        return cls(tid, pid, epoch, lpid, lepoch, timeout, TxnState(state), start, updated, seq,
                   groups=set(groups))

    def accepts(self, props: Mapping[str, str]) -> bool:
        """Whether a half belongs to the transaction being ended (not a zombie's)."""
        return (props.get(PROP_PID) == str(self.producer_id)
                and props.get(PROP_EPOCH) == str(self.epoch)
                and props.get(PROP_SEQ) == str(self.seq))


@dataclass(frozen=True, slots=True)
class TxnOptions:
    max_timeout_ms: int = 900_000  # Kafka's transaction.max.timeout.ms
    abort_check_interval_ms: int = 10_000  # transaction.abort.timed.out.transaction.cleanup...
    id_expiration_ms: int = 604_800_000  # transactional.id.expiration.ms (7 days)


class TransactionCoordinator:
    """Every transactional id of this broker. ``load`` at start, then ``run`` in a
    nursery (timeouts, expiry)."""

    def __init__(self, broker: Broker, options: TxnOptions | None = None, *,
                 clock: Callable[[], int] = now_ms) -> None:
        self.broker = broker
        self.options = options or TxnOptions()
        self.clock = clock
        self.txns: dict[str, Txn] = {}
        self.by_pid: dict[int, str] = {}
        self._next_id = FIRST_PRODUCER_ID
        self._id_limit = FIRST_PRODUCER_ID  # ids below this are reserved by a durable record
        self._id_lock = trio.Lock()
        self.pending_offsets: dict[tuple[str, str, int], int] = {}  # (group, topic, p) -> count
        self.stats = {"committed": 0, "aborted": 0, "timed_out": 0, "fenced": 0}
        self.offset_meta = OffsetMetadata()

    # ---------------------------------------------------------------- persistence

    async def _save(self, changes: Sequence[tuple[str, Any, Any]]) -> None:
        await self.broker.put_door_state(changes, principal=SYSTEM)

    def _header_change(self, t: Txn) -> tuple[str, Any, Any]:
        return (NS_TXN, t.transactional_id, t.header())

    def load(self) -> None:
        """Rebuild the transactional ids from the state log (start-up)."""
        b = self.broker
        for key, value in b.door_state(NS_PRODUCER_IDS, principal=SYSTEM):
            if key == "next" and isinstance(value, int):
                self._next_id = self._id_limit = max(self._next_id, value)
        for tid, value in b.door_state(NS_TXN, principal=SYSTEM):
            try:
                t = Txn.from_header(str(tid), value)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                log.error("transaction state of %r is unreadable (%s): forgotten", tid, exc)
                continue
            self.txns[t.transactional_id] = t
            self.by_pid[t.producer_id] = t.transactional_id
        for key, _v in b.door_state(NS_TXN_PART, principal=SYSTEM):
            tid, topic, p = cast("tuple[str, str, int]", key)
            if tid in self.txns:
                self.txns[tid].partitions.add((topic, p))
        for key, value in b.door_state(NS_TXN_OFFSET, principal=SYSTEM):
            tid, group, topic, p = cast("tuple[str, str, str, int]", key)
            if tid in self.txns:
                off, meta, epoch = cast("tuple[int, str | None, int]", value)
                self._add_pending(self.txns[tid], (group, topic, p), (off, meta, epoch))
        for pid in self.by_pid:
            self._next_id = max(self._next_id, pid + 1)
        self.offset_meta.load(b.door_state(NS_OFFSET_META, principal=SYSTEM))

    async def recover(self) -> None:
        """Finish what a stop interrupted: a transaction in PrepareCommit or PrepareAbort
        is completed; halves of an id with no transaction going on are rolled back."""
        for t in list(self.txns.values()):
            async with t.lock:
                try:
                    if t.state is PREPARE_COMMIT:
                        await self._complete(t, commit=True)
                    elif t.state is PREPARE_ABORT:
                        await self._complete(t, commit=False)
                    elif t.state is not ONGOING and self.broker.pending_transactions(
                            1, t.group, principal=SYSTEM):
                        await self.broker.end_transaction_group(
                            t.group, False, coordinator=COORDINATOR, principal=SYSTEM)
                except FerryError as exc:
                    log.error("could not complete transaction %s: %s", t.transactional_id, exc)

    # ---------------------------------------------------------------- producer ids

    def reserve_below(self, pid: int) -> None:
        """Never hand out an id below ``pid`` (ids a round-1 data directory's producer
        snapshot gave out before they were reserved in the state log)."""
        self._next_id = max(self._next_id, pid)

    async def new_producer_id(self) -> int:
        """A producer id never handed out before, on this broker's whole history: ids are
        reserved in blocks by a state record, so a crash never hands one out twice."""
        async with self._id_lock:
            if self._next_id >= self._id_limit:
                limit = max(self._next_id, self._id_limit) + PRODUCER_ID_BLOCK
                await self._save(((NS_PRODUCER_IDS, "next", limit),))
                self._id_limit = limit
            pid = self._next_id
            self._next_id += 1
            return pid

    # ---------------------------------------------------------------- InitProducerId

    async def init_producer_id(self, tid: str, timeout_ms: int, expected_pid: int,
                               expected_epoch: int) -> tuple[int, int]:
        """(producer id, epoch) for a transactional id: a new epoch each time (a new id
        once the epoch is exhausted). Raises TxnError: INVALID_REQUEST,
        INVALID_TRANSACTION_TIMEOUT, PRODUCER_FENCED, CONCURRENT_TRANSACTIONS (an
        ongoing transaction was aborted: retry)."""
        if not tid:
            raise TxnError(ke.INVALID_REQUEST)
        if not 0 < timeout_ms <= self.options.max_timeout_ms:
            raise TxnError(ke.INVALID_TRANSACTION_TIMEOUT)
        t = self.txns.get(tid)
        if t is None:
            t = Txn(tid, await self.new_producer_id(), updated_ms=self.clock())
            if tid in self.txns:  # another init created it while we waited for the id
                t = self.txns[tid]
            else:
                self.txns[tid] = t
                self.by_pid[t.producer_id] = tid
        async with t.lock:
            if expected_pid >= 0 and not (
                    t.epoch == NO_EPOCH or expected_pid == t.producer_id
                    or (expected_pid == t.last_producer_id and expected_epoch >= MAX_EPOCH - 1)):
                raise TxnError(ke.PRODUCER_FENCED)
            if t.state in (PREPARE_COMMIT, PREPARE_ABORT):
                raise TxnError(ke.CONCURRENT_TRANSACTIONS)
            if t.state is ONGOING:
                # Fence the producer of the ongoing transaction and abort it; the client
                # retries and gets the epoch after (Kafka's PrepareEpochFence).
                self._bump_epoch(t)
                self.stats["fenced"] += 1
                await self._end(t, commit=False)
                raise TxnError(ke.CONCURRENT_TRANSACTIONS)
            expected = expected_epoch if expected_pid >= 0 else None
            if expected is not None and expected != NO_EPOCH and expected != t.epoch:
                if t.last_epoch != NO_EPOCH and expected == t.last_epoch:
                    return t.producer_id, t.epoch  # a retry of the bump we answered already
                raise TxnError(ke.PRODUCER_FENCED)
            if t.epoch >= MAX_EPOCH - 1:
                t.last_producer_id, t.last_epoch = t.producer_id, t.epoch
                self.by_pid.pop(t.producer_id, None)
                t.producer_id, t.epoch = await self.new_producer_id(), 0
                self.by_pid[t.producer_id] = tid
            else:
                t.last_epoch = t.epoch if expected is not None else NO_EPOCH
                t.epoch += 1
            t.timeout_ms = timeout_ms
            t.updated_ms = self.clock()
            if t.state is not EMPTY:
                t.move_to(EMPTY)
            await self._save((self._header_change(t),))
            return t.producer_id, t.epoch

    def _bump_epoch(self, t: Txn) -> None:
        if t.epoch >= MAX_EPOCH - 1:
            t.last_producer_id, t.last_epoch = t.producer_id, t.epoch
            t.epoch = MAX_EPOCH  # exhausted: the next init rotates the producer id
        else:
            t.last_epoch = NO_EPOCH
            t.epoch += 1

    # ---------------------------------------------------------------- the transaction

    def _owned(self, tid: str, pid: int, epoch: int) -> Txn:
        """The transaction of ``tid`` if (pid, epoch) is its current producer."""
        if not tid:
            raise TxnError(ke.INVALID_REQUEST)
        t = self.txns.get(tid)
        if t is None or t.producer_id != pid:
            raise TxnError(ke.INVALID_PRODUCER_ID_MAPPING)
        if t.epoch != epoch:
            raise TxnError(ke.PRODUCER_FENCED)
        return t

    def _begin(self, t: Txn) -> None:
        if t.state is not ONGOING:
            t.move_to(ONGOING)
            t.start_ms = self.clock()
            t.seq += 1
        t.updated_ms = self.clock()

    async def add_partitions(self, tid: str, pid: int, epoch: int,
                             partitions: Iterable[tuple[str, int]],
                             exists: Callable[[str, int], bool]) -> dict[tuple[str, int], int]:
        """AddPartitionsToTxn: an error code per partition. Raises TxnError for errors of
        the whole request (every partition gets it)."""
        wanted = set(partitions)
        t = self._owned(tid, pid, epoch)
        async with t.lock:
            t = self._owned(tid, pid, epoch)
            if t.state in (PREPARE_COMMIT, PREPARE_ABORT):
                raise TxnError(ke.CONCURRENT_TRANSACTIONS)
            if t.state is ONGOING and wanted <= t.partitions:
                return dict.fromkeys(wanted, ke.NONE)
            missing = {tp for tp in wanted if not exists(*tp)}
            if missing:
                return {tp: ke.UNKNOWN_TOPIC_OR_PARTITION if tp in missing
                        else ke.OPERATION_NOT_ATTEMPTED for tp in wanted}
            self._begin(t)
            new = wanted - t.partitions
            t.partitions |= new
            await self._save([self._header_change(t)]
                             + [(NS_TXN_PART, (tid, topic, p), 1) for topic, p in sorted(new)])
            return dict.fromkeys(wanted, ke.NONE)

    async def verify_partitions(self, tid: str, pid: int, epoch: int,
                                partitions: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
        """AddPartitionsToTxn v4+ with verify_only: whether each partition is in the
        transaction (TRANSACTION_ABORTABLE if not)."""
        t = self._owned(tid, pid, epoch)
        if t.state in (PREPARE_COMMIT, PREPARE_ABORT):
            raise TxnError(ke.CONCURRENT_TRANSACTIONS)
        return {tp: ke.NONE if tp in t.partitions else ke.TRANSACTION_ABORTABLE
                for tp in partitions}

    async def add_offsets(self, tid: str, pid: int, epoch: int, group: str) -> None:
        """AddOffsetsToTxn: the group's offsets will be committed with the transaction."""
        if not group:
            raise TxnError(ke.INVALID_GROUP_ID)
        t = self._owned(tid, pid, epoch)
        async with t.lock:
            t = self._owned(tid, pid, epoch)
            if t.state in (PREPARE_COMMIT, PREPARE_ABORT):
                raise TxnError(ke.CONCURRENT_TRANSACTIONS)
            if t.state is ONGOING and group in t.groups:
                return
            self._begin(t)
            t.groups.add(group)
            await self._save((self._header_change(t),))

    async def txn_offset_commit(self, tid: str, group: str, pid: int, epoch: int,
                                offsets: Sequence[tuple[str, int, int, str | None, int]],
                                member_check: Callable[[], int]) -> int:
        """TxnOffsetCommit: offsets (topic, partition, offset, metadata, leader epoch)
        kept with the transaction, committed to the group at its commit. Returns an
        error code for every partition (the same for all)."""
        t = self.txns.get(tid)
        if not tid or t is None or t.producer_id != pid:
            return ke.INVALID_PRODUCER_ID_MAPPING
        if t.epoch != epoch:
            return ke.INVALID_PRODUCER_EPOCH
        async with t.lock:
            if t.producer_id != pid or t.epoch != epoch:
                return ke.INVALID_PRODUCER_EPOCH
            if t.state is not ONGOING or group not in t.groups:
                return ke.INVALID_TXN_STATE
            code = member_check()
            if code != ke.NONE:
                return code
            changes: list[tuple[str, Any, Any]] = []
            for topic, p, off, meta, leader_epoch in offsets:
                key = (group, topic, p)
                self._add_pending(t, key, (off, meta, leader_epoch))
                changes.append((NS_TXN_OFFSET, (tid, group, topic, p), [off, meta, leader_epoch]))
            await self._save(changes)
            return ke.NONE

    def _add_pending(self, t: Txn, key: tuple[str, str, int],
                     value: tuple[int, str | None, int]) -> None:
        if key not in t.offsets:
            self.pending_offsets[key] = self.pending_offsets.get(key, 0) + 1
        t.offsets[key] = value

    def _drop_pending(self, t: Txn) -> None:
        for key in t.offsets:
            n = self.pending_offsets.get(key, 0) - 1
            if n > 0:
                self.pending_offsets[key] = n
            else:
                self.pending_offsets.pop(key, None)
        t.offsets.clear()

    def unstable(self, group: str, topic: str, partition: int) -> bool:
        """Whether a transaction holds an offset of the group for that partition that is
        not committed yet (OffsetFetch's require_stable: UNSTABLE_OFFSET_COMMIT)."""
        return (group, topic, partition) in self.pending_offsets

    # ---------------------------------------------------------------- Produce

    def check_produce(self, tid: str | None, pid: int, epoch: int, topic: str,
                      partition: int) -> Txn:
        """A transactional batch may be stored: its producer is the transaction's current
        one and the partition was added. Raises TxnError: INVALID_PRODUCER_EPOCH (an
        older epoch: fenced), INVALID_PRODUCER_ID_MAPPING, INVALID_TXN_STATE."""
        name = tid if tid else self.by_pid.get(pid)
        t = self.txns.get(name) if name else None
        if t is None or t.producer_id != pid:
            raise TxnError(ke.INVALID_PRODUCER_ID_MAPPING)
        if epoch != t.epoch:
            raise TxnError(ke.INVALID_PRODUCER_EPOCH)
        if t.state is not ONGOING or (topic, partition) not in t.partitions:
            raise TxnError(ke.INVALID_TXN_STATE)
        return t

    def half_properties(self, t: Txn) -> dict[str, str]:
        return {PROP_PID: str(t.producer_id), PROP_EPOCH: str(t.epoch), PROP_SEQ: str(t.seq)}

    # ---------------------------------------------------------------- EndTxn

    async def end_txn(self, tid: str, pid: int, epoch: int, commit: bool) -> None:
        """EndTxn: commit or abort the ongoing transaction; when this returns the outcome
        is visible (or not) through every door. Raises TxnError."""
        t = self._owned(tid, pid, epoch)
        async with t.lock:
            t = self._owned(tid, pid, epoch)
            if t.state is ONGOING:
                await self._end(t, commit)
                return
            if (t.state is COMPLETE_COMMIT and commit) or (t.state is COMPLETE_ABORT and not commit):
                return  # a retry of an EndTxn that was answered already
            if t.state in (PREPARE_COMMIT, PREPARE_ABORT) and \
                    (t.state is PREPARE_COMMIT) == commit:
                raise TxnError(ke.CONCURRENT_TRANSACTIONS)
            raise TxnError(ke.INVALID_TXN_STATE)

    async def _end(self, t: Txn, commit: bool) -> None:
        """Ongoing -> Prepare* (durable) -> the engine's step -> Complete* (durable).
        The caller holds the id's lock."""
        t.move_to(PREPARE_COMMIT if commit else PREPARE_ABORT)
        t.updated_ms = self.clock()
        await self._save((self._header_change(t),))
        await self._complete(t, commit)

    async def _complete(self, t: Txn, commit: bool) -> None:
        b = self.broker
        ts = self.clock()
        marker = kr.encode_control_batch(t.producer_id, t.epoch, commit, ts)
        trailers = [(topic, p, marker) for topic, p in sorted(t.partitions)]
        done = await b.end_transaction_group(t.group, commit, coordinator=COORDINATOR,
                                             accept=t.accepts, trailers=trailers,
                                             principal=SYSTEM)
        changes: list[tuple[str, Any, Any]] = []
        if commit:
            for (group, topic, p), (off, meta, leader_epoch) in t.offsets.items():
                try:
                    b.commit_offset(group, topic, p, off, principal=SYSTEM)
                except FerryError as exc:
                    log.warning("transaction %s: offset of %s %s-%d not committed: %s",
                                t.transactional_id, group, topic, p, exc)
                    continue
                c = self.offset_meta.change(group, topic, p, off, meta, leader_epoch)
                if c is not None:
                    changes.append(c)
        changes += [(NS_TXN_OFFSET, (t.transactional_id, *k), None) for k in t.offsets]
        changes += [(NS_TXN_PART, (t.transactional_id, topic, p), None)
                    for topic, p in sorted(t.partitions)]
        self._drop_pending(t)
        t.partitions.clear()
        t.groups.clear()
        t.move_to(COMPLETE_COMMIT if commit else COMPLETE_ABORT)
        t.start_ms = -1
        t.updated_ms = self.clock()
        changes.append(self._header_change(t))
        await self._save(changes)
        self.stats["committed" if commit else "aborted"] += 1
        log.debug("transaction %s %s: %d halves committed, %d rolled back",
                  t.transactional_id, "committed" if commit else "aborted", done.committed,
                  done.rolled_back)

    # ---------------------------------------------------------------- timeouts, expiry

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        task_status.started()
        while True:
            await trio.sleep(self.options.abort_check_interval_ms / 1000)
            try:
                await self.abort_timed_out()
                await self.expire_ids()
            except FerryError as exc:
                log.error("transaction timeouts: %s", exc)

    async def abort_timed_out(self) -> int:
        """Abort every transaction open longer than its timeout, fencing its producer
        (its epoch is bumped, as Kafka does). Returns how many."""
        now = self.clock()
        n = 0
        for t in list(self.txns.values()):
            if t.state is not ONGOING or now - t.start_ms <= t.timeout_ms or t.lock.locked():
                continue
            async with t.lock:
                if t.state is not ONGOING:
                    continue
                log.info("transaction %s timed out after %d ms: aborting",
                         t.transactional_id, now - t.start_ms)
                self._bump_epoch(t)
                await self._end(t, commit=False)
                self.stats["timed_out"] += 1
                n += 1
        return n

    async def expire_ids(self) -> int:
        """Forget transactional ids unused for ``id_expiration_ms`` with no transaction
        going on (Kafka's transactional.id.expiration.ms)."""
        now = self.clock()
        gone = [t for t in self.txns.values()
                if t.state in (EMPTY, COMPLETE_COMMIT, COMPLETE_ABORT) and not t.lock.locked()
                and now - t.updated_ms > self.options.id_expiration_ms]
        if not gone:
            return 0
        await self._save([(NS_TXN, t.transactional_id, None) for t in gone])
        for t in gone:
            self.txns.pop(t.transactional_id, None)
            if self.by_pid.get(t.producer_id) == t.transactional_id:
                del self.by_pid[t.producer_id]
        return len(gone)

    # ---------------------------------------------------------------- admin

    def describe(self, tid: str) -> Txn | None:
        return self.txns.get(tid)

    def listing(self) -> list[Txn]:
        return sorted(self.txns.values(), key=lambda t: t.transactional_id)


# ---------------------------------------------------------------- commit metadata

NS_OFFSET_META = "kafka.offset_meta"


class OffsetMetadata:
    """OffsetCommit's metadata strings and leader epochs, kept beside the broker's
    committed offsets (which keep only the number) in the namespace
    ``kafka.offset_meta``: (group, topic, partition) -> (offset, metadata, epoch).
    OffsetFetch answers them only while the committed offset is still that offset:
    a commit of another offset (through any door) makes them stale untouched."""

    def __init__(self) -> None:
        self.data: dict[Any, tuple[int, str, int]] = {}

    def load(self, items: Iterable[tuple[Any, Any]]) -> None:
        self.data = {k: (int(v[0]), str(v[1]), int(v[2])) for k, v in items}

    def change(self, group: str, topic: str, partition: int, offset: int,
               metadata: str | None, leader_epoch: int) -> tuple[str, Any, Any] | None:
        """The state change for a commit (applied to memory now), or None when there is
        nothing to keep or forget."""
        key = (group, topic, partition)
        if not metadata and leader_epoch < 0:
            if key not in self.data:
                return None
            del self.data[key]
            return (NS_OFFSET_META, key, None)
        self.data[key] = (offset, metadata or "", leader_epoch)
        return (NS_OFFSET_META, key, [offset, metadata or "", leader_epoch])

    def get(self, group: str, topic: str, partition: int, offset: int) -> tuple[str, int]:
        """(metadata, leader epoch) committed with ``offset``, or ("", -1)."""
        kept = self.data.get((group, topic, partition))
        if kept is None or kept[0] != offset:
            return "", -1
        return kept[1], kept[2]

    def forget(self, group: str | None = None, topic: str | None = None
               ) -> list[tuple[str, Any, Any]]:
        """Changes dropping a deleted group's or topic's entries (applied now)."""
        gone = [k for k in self.data if (group is None or k[0] == group)
                and (topic is None or k[1] == topic)]
        for k in gone:
            del self.data[k]
        return [(NS_OFFSET_META, k, None) for k in gone]
