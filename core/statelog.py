"""The state log: broker metadata and consumer state as records of a hidden topic of the CommitLog.

Durable broker state — topics, consumer groups, tombstones of deleted topics,
committed offsets, pop leases; next: Kafka group membership, MQTT sessions,
users, ACLs — is a set of *namespaces*, each a table of key -> value. A change
is "set key = value" or "delete key" (value None). Changes are appended as
records of the system topic ``RMQ_SYS_FERRY_STATE`` (one queue, perm 0)
through the store's normal append path, so they share the CommitLog's order,
its group commit, its recovery and (issue 14) its replication with the
messages: a follower that has the log has the state. This is how Kafka keeps
``__consumer_offsets`` and KRaft its metadata.

The one state machine: ``_apply`` turns changes into table updates, at put
time (``append``), at recovery (``replay_queue``/``recover_record``, called by
the store's recovery in log order), and later on a slave. A record's body is
msgpack ``[1, [[namespace, key, value], ...]]``; applying records in log order
from a snapshot gives the state, and because every change is a plain set or
delete, applying a suffix of the history again on top of a later state gives
that same state.

Compaction: a snapshot of every table (msgpack, atomic write) records the
CommitLog offset S it covers and the state queue's offset there. Start-up loads
the newest valid snapshot and applies the state records from S on, in log
order. Snapshots are taken in the background (every ``snapshot_records``
records, or every ``snapshot_interval_s`` when anything changed), at clean
shutdown, and when retention wants a segment that holds state records no
snapshot has: ``retention_floor`` says which segments retention must keep.
docs/storage.md ("The state log") has the whole argument.

Threads: everything runs on the broker's event-loop thread except the parts of
a snapshot marked "worker thread" (encoding and writing a consistent copy).
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Protocol

import msgpack
import trio

from ..protocols import record as rec
from .errors import FlushFailed, InvalidArgument, StoreError
from .store.files import atomic_write, read_file

if TYPE_CHECKING:
    from .store.store import MessageStore

log = logging.getLogger("ferrymq.state")

STATE_TOPIC = "RMQ_SYS_FERRY_STATE"
RECORD_VERSION = 1
SNAPSHOT_VERSION = 1
SNAPSHOTS_KEPT = 2  # the newest, and one to fall back on if the newest is damaged
MAX_CHANGE_BYTES = 64 << 10  # one change of the core's tables, encoded
# A door's own namespaces ("<door>.<name>", the only ones with a dot: an MQTT session's
# in-flight message, a retained message) may hold a message: one change of theirs may
# take a whole record (max_record_bytes, less room for the record's own fields); a
# segment always has room for one (segment_size >= max_message_size + 64 KiB).
_RECORD_ROOM = 1024
MAX_RECORD_BYTES = 1 << 20  # changes of one call share a record up to this (atomic together)

# Snapshot file: magic 4 | version 4 | CommitLog offset S 8 | state queue offset 8 |
# payload length 8 | CRC-32 of the payload 4 | payload (msgpack {namespace: [[key, value]...]}).
_SNAP_HEAD = struct.Struct(">4sIqqqI")
_SNAP_MAGIC = b"FSNP"
_SNAP_PREFIX = "snapshot-"

Key = str | int | tuple[Any, ...]
Change = tuple[str, Key, Any]  # (namespace, key, value or None: delete)


class Table(Protocol):
    """A namespace's in-memory form. ``apply`` takes wire values (what msgpack gives
    back: tuples for arrays) and must not raise for a value its owner wrote."""

    def apply(self, key: Key, value: Any) -> None: ...
    def get(self, key: Key) -> Any: ...
    def items(self) -> Iterable[tuple[Key, Any]]: ...
    def view(self) -> Callable[[], Iterable[tuple[Key, Any]]]:
        """A consistent copy taken on the loop thread, made into wire pairs later in a
        worker thread: the copy must not share anything the loop thread mutates."""
        ...
    def __len__(self) -> int: ...


class DictTable:
    """The default table: wire values in a dict, for namespaces without a typed owner."""

    def __init__(self) -> None:
        self.data: dict[Key, Any] = {}

    def apply(self, key: Key, value: Any) -> None:
        if value is None:
            self.data.pop(key, None)
            return
        if isinstance(value, (list, dict)):
            # Live values as a restart (or a slave) will see them: arrays as tuples.
            value = msgpack.unpackb(msgpack.packb(value), use_list=False, strict_map_key=False)
        self.data[key] = value

    def get(self, key: Key) -> Any:
        return self.data.get(key)

    def items(self) -> Iterable[tuple[Key, Any]]:
        return list(self.data.items())

    def view(self) -> Callable[[], Iterable[tuple[Key, Any]]]:
        return dict(self.data).items  # wire values are immutable (tuples, not lists)

    def __len__(self) -> int:
        return len(self.data)


def _freeze(key: Any) -> Key:
    """A key as msgpack gives it back (arrays as tuples), so tables see one form."""
    if isinstance(key, list):
        return tuple(_freeze(k) for k in key)
    return key


def _check_key(key: object) -> None:
    if type(key) is tuple:  # the common shape (pop leases, offsets): one pass, no recursion
        for k in key:
            if type(k) is not str and type(k) is not int:
                break
        else:
            return
    if isinstance(key, bool) or not isinstance(key, (str, int, tuple)):
        raise InvalidArgument("a state key is a string, an integer or a tuple of them")
    if isinstance(key, tuple):
        for k in key:
            _check_key(k)


def _array_header(n: int) -> bytes:
    if n < 16:
        return bytes((0x90 | n,))
    if n < 1 << 16:
        return b"\xdc" + n.to_bytes(2, "big")
    return b"\xdd" + n.to_bytes(4, "big")


_RECORD_PREFIX = _array_header(2) + msgpack.packb(RECORD_VERSION)
_BATCH: ContextVar[list[Any] | None] = ContextVar("ferrymq_state_batch", default=None)


class StateLog:
    """The tables, their records in the CommitLog, their snapshots under ``directory``.

    ``durable(pos, admin, replicate)`` is the broker's wait for the CommitLog to be
    durable up to ``pos`` under its flush policy (``admin``: force an fsync even under
    async flush) and, in a sync broker group, held by the in-sync set (unless
    ``replicate`` is False: a change a write makes for itself, which the write's
    own wait covers)."""

    def __init__(self, store: MessageStore, directory: str, *,
                 durable: Callable[[int, bool, bool], Awaitable[None]] | None = None,
                 max_record_bytes: int = MAX_RECORD_BYTES,
                 snapshot_interval_s: float = 60.0, snapshot_records: int = 100_000) -> None:
        self.store = store
        self.directory = directory
        self._packer = msgpack.Packer()  # packb builds one per call; a change costs one
        self.durable = durable
        self.max_record_bytes = max(MAX_CHANGE_BYTES, max_record_bytes)
        self.snapshot_interval_s = snapshot_interval_s
        self.snapshot_records = snapshot_records
        self.tables: dict[str, Table] = {}
        self.admin: set[str] = set()
        self._subscribers: dict[str, list[Callable[[Key, Any], None]]] = {}
        self.end = 0  # CommitLog offset just past the newest state record appended or recovered
        self.covered = (0, 0)  # (CommitLog offset, state queue offset) the newest snapshot holds
        self.since_snapshot = 0  # records appended or recovered past ``covered``
        self._size_at_snapshot = 0
        self._staged: dict[tuple[str, Key], None] = {}
        self._wakeup = trio.Event()
        self._snapshot_lock = trio.Lock()
        # In a broker group: the offset the in-sync set confirmed. A snapshot is only
        # written for a confirmed position, so that a truncation after a failover
        # always finds one at or below its point (docs/cluster.md, "Truncation").
        self.confirmed: Callable[[], int] | None = None
        self.appended: Callable[[], None] | None = None  # a master's stream wakes on appends
        self.stats = {"records": 0, "changes": 0, "recovered": 0, "snapshots": 0,
                      "snapshot_seconds": 0.0, "snapshot_bytes": 0, "apply_errors": 0}

    # ================================================================ tables

    def register(self, namespace: str, table: Table, *, admin: bool = False) -> None:
        """Give ``namespace`` a typed owner. ``admin`` changes (topics, groups, users,
        ACLs: rare, never to be lost once acknowledged) await an fsync even under
        async flush; others are durable within the flush interval there."""
        self.tables[namespace] = table
        if admin:
            self.admin.add(namespace)

    def subscribe(self, namespace: str, callback: Callable[[Key, Any], None]) -> None:
        """Call ``callback(key, value)`` (cheap, synchronous) after every change of
        ``namespace`` is applied: live, at recovery, and (later) on a slave."""
        self._subscribers.setdefault(namespace, []).append(callback)

    def _table(self, namespace: str) -> Table:
        t = self.tables.get(namespace)
        if t is None:
            t = self.tables[namespace] = DictTable()
        return t

    def get(self, namespace: str, key: Key) -> Any:
        """The value of ``key`` (wire form: arrays are tuples), or None."""
        t = self.tables.get(namespace)
        return None if t is None else t.get(key)

    def items(self, namespace: str) -> list[tuple[Key, Any]]:
        t = self.tables.get(namespace)
        return [] if t is None else list(t.items())

    # ================================================================ writing

    def append(self, changes: Sequence[Change]) -> int:
        """Append ``changes`` as state records and apply them; returns the CommitLog
        offset just past the last record. Once this returns the changes survive a
        crash of the process (they are in the page cache); ``wait`` makes them
        durable against a power cut. Changes of one call go into one record (applied
        together) up to ``max_record_bytes``. Raises InvalidArgument (a key or value
        the log cannot hold) or StoreError (the store refuses writes)."""
        encoded = []
        pack = self._packer.pack
        for ns, key, value in changes:
            if not isinstance(ns, str) or not ns:
                raise InvalidArgument("a state namespace is a non-empty string")
            _check_key(key)
            try:
                e = pack((ns, key, value))
            except (TypeError, ValueError, OverflowError) as exc:
                raise InvalidArgument(f"state value of {ns}:{key!r} is not storable: {exc}"
                                      ) from None
            limit = MAX_CHANGE_BYTES if "." not in ns else max(
                MAX_CHANGE_BYTES, self.max_record_bytes - _RECORD_ROOM)
            if len(e) > limit:
                raise InvalidArgument(f"state change {ns}:{key!r} is {len(e)} bytes; "
                                      f"at most {limit}")
            encoded.append(e)
        start = 0
        while start < len(encoded):
            stop, size = start, 0
            while stop < len(encoded) and (stop == start
                                           or size + len(encoded[stop]) <= self.max_record_bytes):
                size += len(encoded[stop])
                stop += 1
            body = b"".join((_RECORD_PREFIX, _array_header(stop - start), *encoded[start:stop]))
            self.store.append(STATE_TOPIC, 0, body, b"")
            self.end = self.store.dispatched_pos
            self.stats["records"] += 1
            self.since_snapshot += 1
            self._apply(changes[start:stop])
            start = stop
        if self.since_snapshot >= max(self.snapshot_records, self._size_at_snapshot):
            self._wakeup.set()
        if self.appended is not None:
            self.appended()
        return self.end

    async def wait(self, pos: int, admin: bool, replicate: bool = True) -> None:
        """Return once the CommitLog is durable up to ``pos`` as the flush policy
        promises (see ``durable``); inside ``batch()`` only remember it."""
        pending = _BATCH.get()
        if pending is not None:
            pending[0] = max(pending[0], pos)
            pending[1] = pending[1] or admin
            pending[2] = pending[2] or replicate
        elif self.durable is not None:
            await self.durable(pos, admin, replicate)
        # Always a checkpoint, as trio's own awaitables are: a loop of commits under
        # async flush (nothing to wait for) must not starve every other task.
        await trio.lowlevel.checkpoint()

    async def put(self, namespace: str, key: Key, value: Any) -> None:
        """Set ``key`` to ``value`` (None deletes it); durable when this returns."""
        await self.put_many(((namespace, key, value),))

    async def put_many(self, changes: Sequence[Change], replicate: bool = True) -> None:
        """``put`` of several changes, in one record where they fit: one flush."""
        if not changes:
            return
        pos = self.append(changes)
        await self.wait(pos, any(ns in self.admin for ns, _, _ in changes), replicate)

    @contextlib.asynccontextmanager
    async def batch(self) -> AsyncIterator[None]:
        """Within the block, state changes (``put``, ``create_topic`` ...) do not wait
        for durability; leaving it waits once for all of them: a Kafka CreateTopics
        of 10,000 topics costs one fsync, not 10,000. Nested blocks join the outer
        one. On an exception nothing is waited for (no one is acknowledged)."""
        if _BATCH.get() is not None:
            yield
            return
        pending: list[Any] = [0, False, False]
        token = _BATCH.set(pending)
        try:
            yield
        finally:
            _BATCH.reset(token)
        if pending[0] and self.durable is not None:
            await self.durable(pending[0], pending[1], pending[2])

    # ================================================================ the state machine

    def _apply(self, changes: Iterable[Change]) -> None:
        tables, subscribers = self.tables, self._subscribers
        n = 0
        for ns, key, value in changes:
            t = tables.get(ns)
            if t is None:
                t = self._table(ns)
            t.apply(key, value)
            for callback in subscribers.get(ns, ()):
                callback(key, value)
            n += 1
        self.stats["changes"] += n

    @staticmethod
    def decode(body: bytes | memoryview) -> list[Change]:
        """The changes of one state record's body. Raises ValueError."""
        try:
            version, changes = msgpack.unpackb(body, use_list=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ValueError(f"undecodable state record: {exc}") from None
        if version != RECORD_VERSION:
            raise ValueError(f"state record version {version} is not {RECORD_VERSION}")
        return [(ns, _freeze(key), value) for ns, key, value in changes]

    def apply_record(self, body: bytes | memoryview, where: int) -> None:
        """Apply one record found in the log (recovery, and later a slave). A record
        that cannot be applied is logged and counted, never fatal: one damaged
        record must not keep the broker from starting."""
        try:
            changes = self.decode(body)
            self._apply(changes)
        except (ValueError, TypeError, KeyError) as exc:
            self.stats["apply_errors"] += 1
            log.error("state record at CommitLog offset %d cannot be applied: %s", where, exc)

    # ================================================================ recovery

    def load(self) -> bool:
        """Start-up, before the store opens: load the newest valid snapshot into the
        tables. Returns whether one was found. A damaged snapshot is logged and
        the previous one used."""
        os.makedirs(self.directory, exist_ok=True)
        for name in sorted(self._snapshot_names(), reverse=True):
            path = os.path.join(self.directory, name)
            try:
                pos, qoff, tables = self._read_snapshot(path)
            except ValueError as exc:
                log.error("state snapshot %s is damaged (%s); trying an older one", path, exc)
                continue
            for ns, pairs in tables.items():
                t = self._table(ns)
                for key, value in pairs:
                    t.apply(_freeze(key), value)
            self.covered = (pos, qoff)
            self.end = pos
            self._size_at_snapshot = self.size()
            return True
        return False

    def replay_queue(self, start: int) -> None:
        """The store's recovery calls this once its ConsumeQueues are cut back to the
        checkpoint ``start`` and before it re-dispatches the log from there: apply
        the state records the snapshot does not hold and the state queue indexes
        below ``start``. The records from ``start`` on come through
        ``recover_record``, in log order with the messages."""
        q = self.store.queues.get((STATE_TOPIC, 0))
        pos, qoff = self.covered
        if q is None or q.max_offset <= qoff:
            return
        if q.min_offset > qoff:
            log.error("state records at queue offsets %d..%d are gone from the CommitLog and "
                      "no snapshot holds them: that state is lost", qoff, q.min_offset - 1)
        i = q.find(max(qoff, q.min_offset))
        if i is None:
            return
        for phys, size, _base, _count, _th, _ts in q.iter_entries(i, q.next_entry):
            if phys < pos:
                continue
            if size < 0 or not self.recover_at(phys):
                # A damaged range of the log took this record (docs/storage.md, "Damage"):
                # that change is lost, the later ones still apply.
                self.stats["apply_errors"] += 1
                log.error("the state record at CommitLog offset %d is lost (a damaged range of "
                          "the log); the changes after it still apply", phys)

    def recover_at(self, phys: int) -> bool:
        """A state record met by recovery at CommitLog offset ``phys``: apply it unless
        the snapshot holds it. False if no valid state record is there. (Recovery
        reads the log before the store sets its end, so through ``scan``.)"""
        if phys < self.covered[0]:
            return True
        r = next(self.store.commitlog.scan(phys), None)
        if r is None or r.topic != STATE_TOPIC:
            return False
        self.recover_record(r)
        return True

    def recover_record(self, r: rec.Record) -> None:
        """Apply a state record (validated by the caller) that the snapshot does not hold."""
        if r.physical_offset < self.covered[0]:
            return
        self.apply_record(r.body, r.physical_offset)
        self.end = max(self.end, r.physical_offset + r.total_size)
        self.since_snapshot += 1
        self.stats["recovered"] += 1

    def stage(self, changes: Iterable[Change]) -> None:
        """A change recovery decides (a topic found in the log without metadata, a
        system topic's permissions): applied now, appended by ``finish_recovery``
        once the store is open, with the value the key has by then."""
        changes = list(changes)
        self._apply(changes)
        for ns, key, _ in changes:
            self._staged[(ns, key)] = None

    def finish_recovery(self, append: bool = True) -> None:
        """After the store opened: append what recovery staged, and if the log ends
        before the newest snapshot (the log lost its tail, a snapshot did not), take
        a snapshot at the log's end so that new records are never mistaken for ones
        the old snapshot holds. A slave (``append=False``) appends nothing: what it
        staged stays applied in memory, and its master's log brings the real records."""
        if self._staged:
            staged, self._staged = self._staged, {}
            if append:
                self.append([(ns, key, self._wire(ns, key)) for ns, key in staged])
        if not append:
            return
        log_end = self.store.dispatched_pos
        if self.covered[0] > log_end:
            log.error("the CommitLog ends at %d, before the state snapshot at %d: the log "
                      "lost records the snapshot holds; the snapshot's state is kept",
                      log_end, self.covered[0])
            for name in self._snapshot_names():
                if int(name[len(_SNAP_PREFIX):]) > log_end:
                    os.replace(os.path.join(self.directory, name),
                               os.path.join(self.directory, name + ".beyond-log"))
            self.snapshot_sync()

    def _wire(self, namespace: str, key: Key) -> Any:
        return self._table(namespace).get(key)

    # ================================================================ compaction

    def size(self) -> int:
        return sum(len(t) for t in self.tables.values())

    def retention_floor(self) -> int | None:
        """The CommitLog offset of the oldest state record no snapshot holds: retention
        must keep the segments from there on. None when every record is in one."""
        q = self.store.queues.get((STATE_TOPIC, 0))
        qoff = self.covered[1]
        if q is None or q.max_offset <= qoff:
            return None
        i = q.find(max(qoff, q.min_offset))
        return None if i is None else q.entry(i).physical_offset

    def request_snapshot(self) -> None:
        self.since_snapshot = max(self.since_snapshot, 1)
        self._wakeup.set()

    async def run(self) -> None:
        """The compaction task: a snapshot every ``snapshot_records`` records (at
        least as many as the tables hold, so the cost stays O(1) per change), every
        ``snapshot_interval_s`` when anything changed, or when asked."""
        while True:
            with trio.move_on_after(self.snapshot_interval_s):
                await self._wakeup.wait()
            self._wakeup = trio.Event()
            if self.since_snapshot > 0:
                try:
                    await self.snapshot()
                except (OSError, StoreError) as exc:
                    log.error("state snapshot failed: %s", exc)

    def _view(self) -> tuple[int, int, int, dict[str, Callable[[], Iterable[tuple[Key, Any]]]]]:
        q = self.store.queues.get((STATE_TOPIC, 0))
        return (self.store.dispatched_pos, q.max_offset if q is not None else 0,
                self.since_snapshot, {ns: t.view() for ns, t in self.tables.items()})

    async def snapshot(self) -> None:
        """Take a snapshot: a consistent copy on the loop thread, encoded and written
        in a worker thread (one at a time: a second caller waits, then takes its own)."""
        async with self._snapshot_lock:
            pos, qoff, n, views = self._view()
            if self.confirmed is not None and not await self._wait_confirmed(pos):
                log.info("state snapshot at %d skipped: the in-sync set has not confirmed it",
                         pos)
                return
            nbytes, secs = await trio.to_thread.run_sync(self._write_snapshot, pos, qoff, views)
            self._snapshot_done(pos, qoff, n, nbytes, secs)

    async def _wait_confirmed(self, pos: int, timeout: float = 10.0) -> bool:
        assert self.confirmed is not None
        with trio.move_on_after(timeout):
            while self.confirmed() < pos:
                await trio.sleep(0.05)
            return True
        return False

    def snapshot_sync(self) -> None:
        """``snapshot`` on the calling thread (start-up and shutdown); in a broker group
        only when the in-sync set confirmed everything it would cover."""
        pos, qoff, n, views = self._view()
        if self.confirmed is not None and self.confirmed() < pos:
            log.info("state snapshot at %d skipped: the in-sync set confirmed only %d", pos,
                     self.confirmed())
            return
        nbytes, secs = self._write_snapshot(pos, qoff, views)
        self._snapshot_done(pos, qoff, n, nbytes, secs)

    def _snapshot_done(self, pos: int, qoff: int, n: int, nbytes: int, secs: float) -> None:
        self.covered = (pos, qoff)
        self.since_snapshot = max(0, self.since_snapshot - n)
        self._size_at_snapshot = self.size()
        self.stats["snapshots"] += 1
        self.stats["snapshot_seconds"] += secs
        self.stats["snapshot_bytes"] = nbytes

    def _write_snapshot(self, pos: int, qoff: int,
                        views: dict[str, Callable[[], Iterable[tuple[Key, Any]]]]
                        ) -> tuple[int, float]:
        """Worker thread. The CommitLog is made durable up to ``pos`` first: a snapshot
        must never cover records a power cut could take back, or records written
        after the restart at those offsets would be taken for ones it holds."""
        t0 = time.perf_counter()
        try:
            self.store.flush(pos)
        except OSError as exc:
            # The kernel reports a failed writeback once: whoever sees it must fail the
            # store, or the flusher's next fsync could "succeed" over lost pages.
            self.store.failed = FlushFailed(f"fsync failed: {exc}")
            raise
        payload = msgpack.packb({ns: [(k, v) for k, v in view()] for ns, view in views.items()})
        head = _SNAP_HEAD.pack(_SNAP_MAGIC, SNAPSHOT_VERSION, pos, qoff, len(payload),
                               zlib.crc32(payload))
        atomic_write(os.path.join(self.directory, f"{_SNAP_PREFIX}{pos:020d}"), head + payload)
        for name in sorted(self._snapshot_names(), reverse=True)[SNAPSHOTS_KEPT:]:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.directory, name))
        return len(payload), time.perf_counter() - t0

    def set_aside_snapshots(self, end: int) -> list[str]:
        """The log was cut back to ``end`` (docs/cluster.md, "Truncation"): snapshots
        covering more are renamed ``*.truncated`` so the next start loads the newest
        one at or below it. Returns the names set aside."""
        os.makedirs(self.directory, exist_ok=True)
        gone = [n for n in self._snapshot_names() if int(n[len(_SNAP_PREFIX):]) > end]
        for name in gone:
            os.replace(os.path.join(self.directory, name),
                       os.path.join(self.directory, name + ".truncated"))
        if gone:
            log.warning("state snapshots %s cover more than the truncated log (%d): set aside",
                        gone, end)
        return gone

    def _snapshot_names(self) -> list[str]:
        return [n for n in os.listdir(self.directory)
                if n.startswith(_SNAP_PREFIX) and n[len(_SNAP_PREFIX):].isdigit()]

    @staticmethod
    def read_snapshot(path: str) -> tuple[int, int, dict[str, list[tuple[Any, Any]]]]:
        """(CommitLog offset S, state queue offset, tables) of a snapshot file. Raises
        ValueError for a damaged one (``ferrymq store check`` uses it too)."""
        return StateLog._read_snapshot(path)

    @staticmethod
    def _read_snapshot(path: str) -> tuple[int, int, dict[str, list[tuple[Any, Any]]]]:
        raw = read_file(path) or b""
        if len(raw) < _SNAP_HEAD.size:
            raise ValueError("truncated header")
        magic, version, pos, qoff, length, crc = _SNAP_HEAD.unpack_from(raw)
        if magic != _SNAP_MAGIC or version != SNAPSHOT_VERSION:
            raise ValueError("not a state snapshot of this version")
        payload = raw[_SNAP_HEAD.size:]
        if len(payload) != length or zlib.crc32(payload) != crc:
            raise ValueError("payload length or CRC does not match")
        try:
            tables = msgpack.unpackb(payload, use_list=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types
            raise ValueError(f"undecodable payload: {exc}") from None
        if not isinstance(tables, dict):
            raise ValueError("payload is not a table map")
        return pos, qoff, tables
