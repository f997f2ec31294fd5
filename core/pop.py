"""Pop consumption (RocketMQ 5's stateless model): lease, ack by receipt, revive the un-acked.

A consumer asks for messages of (group, topic) without owning queues or
offsets. Each message handed out is *leased* to the group until its invisible
time runs out; the consumer acks it with the opaque receipt handle it got. A
lease that runs out un-acked is *revived*: the message becomes poppable again,
its reconsume count one higher, and past the group's ``max_reconsume_times``
it goes to ``%DLQ%<group>`` instead. See docs/pop.md for the whole argument.

State per (group, topic, queue) is a ``QueueState``: the pop offset (the next
offset never handed out) and the leases of the messages handed out and not yet
acked, in offset order. The message itself stays where it is in the CommitLog:
a revived message is re-read at its offset, never copied (RocketMQ copies it
into a retry topic, and an ack racing that copy left duplicates: apache/rocketmq
#3787, #4153). Here every lease carries a lease number; a receipt handle names
one, and only the current lease of a message can be acked. Reviving, changing
the invisible time, and acking all replace or drop the lease, so an old
handle is refused (``ReceiptStale``) and can never ack a newer delivery.

Durability: pop state is consumer state, kept in the broker's state log
(core/statelog.py): every pop, ack, change of invisible time and dead letter
is a record of the CommitLog — namespace ``pop``, (group, topic, queue) -> pop
offset, and ``lease``, (group, topic, queue, offset) -> (lease number,
deliveries, pop time, deadline) — applied by ``apply_pop``/``apply_lease``
at put time and at recovery, compacted with the broker's state snapshots. So a
SIGKILLed broker loses no pop, ack or lease, and a pop under sync flush returns
its receipts once they are on disk; an ack lost to a power cut (within the
flush interval) redelivers, never drops, a message.

Memory is bounded: at most ``max_inflight_per_queue`` leases per queue (a full
window pops nothing new from that queue until acks or the DLQ drain it), and
the expiry heap is compacted when stale entries outnumber live leases.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import hmac
import itertools
import logging
import os
import secrets
import struct
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import msgpack
import trio

from .errors import (
    FerryError,
    InvalidArgument,
    InvalidReceipt,
    QueueNotFound,
    ReceiptStale,
    TopicNotFound,
)
from .filter import Filter
from .message import (
    PROPERTY_DLQ_ORIGIN_MESSAGE_ID,
    PROPERTY_DLQ_ORIGIN_TOPIC,
    PROPERTY_MAX_RECONSUME_TIMES,
    PROPERTY_UNIQ_KEY,
    BatchCursor,
    ConsumedMessage,
    Message,
    now_ms,
)
from .metadata import DLQ_PREFIX, NS_OFFSET
from .paths import Paths
from .statelog import Change, StateLog
from .store.files import read_file

log = logging.getLogger("ferrymq.pop")

MIN_INVISIBLE_MS = 100  # shorter leases would expire before a consumer could ack over a network
MAX_INVISIBLE_MS = 12 * 3600_000  # RocketMQ proxy's maxInvisibleTimeMills (12 h)
DEFAULT_INVISIBLE_MS = 30_000  # RocketMQ SimpleConsumer's default invisible duration
MAX_POP_MESSAGES = 1024
DEFAULT_MAX_INFLIGHT_PER_QUEUE = 10_000
POP_MAX_BYTES = 4 << 20  # per pop call, as a pull's default
IDLE_MAX_S = 60.0  # the scanner's longest sleep with nothing to do
# Lease numbers restart above wall-clock milliseconds x 1024 (see ``open``).
_LEASE_CLOCK_SHIFT = 10

RECEIPT_VERSION = 1
_MAC_BYTES = 16  # HMAC-SHA256 truncated to 128 bits: forging needs 2**128 tries
_RECEIPT_FIXED = struct.Struct(">iqqiq")  # queue id, offset, pop time ms, invisible ms, lease
_FRAME = struct.Struct(">IIQ")  # round 1's journal frame: payload length, CRC-32, sequence
NS_POP, NS_LEASE = "pop", "lease"  # the state-log namespaces of pop state
# The receipt secret: a table of the state log too, so that it survives with the leases
# it signs (and, later, replicates with them). Round 1 kept it in <pop dir>/secret.
NS_SECRET, SECRET_KEY = "pop_secret", "receipt"  # no dot: no door may write it

Key = tuple[str, str, int]  # (group, topic, queue id)
ReceiptCheck = Callable[[str, str], None]  # (group, topic) a receipt names: raises to refuse

LEASED, READY, DEAD = 0, 1, 2  # a lease's states: out with a consumer, revived, bound for the DLQ


@dataclass(slots=True)
class Lease:
    """One message handed out and not acked. ``lease`` changes with every pop and
    every change of invisible time; ``deliveries`` counts hand-outs (1 = first)."""

    lease: int
    deliveries: int
    pop_time: int
    until: int
    state: int = LEASED


@dataclass(slots=True)
class QueueState:
    pop_offset: int
    leases: dict[int, Lease] = field(default_factory=dict)  # offset -> lease, in offset order
    ready: deque[int] = field(default_factory=deque)  # revived offsets, oldest first
    cursor: BatchCursor = field(default_factory=BatchCursor)  # where new pops read on

    @property
    def progress(self) -> int:
        """The offset below which the group has consumed everything (its committed offset)."""
        for offset in self.leases:
            return offset
        return self.pop_offset


class Receipt(NamedTuple):
    """The fields a receipt handle carries, authenticated as a whole by an HMAC. (A
    named tuple: built per message popped and per ack, it costs a third of a frozen
    dataclass.)"""

    group: str
    topic: str
    queue_id: int
    offset: int
    pop_time: int
    invisible_ms: int
    lease: int

    @property
    def invisible_until(self) -> int:
        return self.pop_time + self.invisible_ms


@dataclass(frozen=True, slots=True)
class PoppedMessage:
    """A message as pop hands it out: the message (its ``reconsume_times`` is the
    number of earlier deliveries), its receipt handle, and when the lease ends."""

    message: ConsumedMessage
    receipt: str
    pop_time: int
    invisible_until: int


@dataclass(frozen=True, slots=True)
class ReceiptRenewal:
    """What ``change_invisible_time`` answers: the new handle and the new deadline."""

    receipt: str
    invisible_until: int


@dataclass(frozen=True, slots=True)
class QueuePopStatus:
    topic: str
    queue_id: int
    pop_offset: int
    in_flight: int
    ready: int


class ReceiptCodec:
    """Builds and checks receipt handles: URL-safe base64 of the packed fields and an
    HMAC-SHA256 (per-broker secret) over them. Anything not issued by this broker's
    secret is ``InvalidReceipt``; the codec knows nothing of whether it is current."""

    ISSUED_MAX = 32_768  # receipts remembered as issued (about 200 bytes each)

    def __init__(self, secret: bytes) -> None:
        self._secret = secret
        # Handles this codec signed -> their fields, newest last: an ack of one of
        # them (the usual case: acked soon after its pop) skips base64, HMAC and
        # unpacking. Only handles built here go in, so a hit is authentic; a miss is
        # decoded and checked in full. Bounded: the oldest are forgotten first.
        self._issued: dict[str, Receipt] = {}
        # Keyed once; each receipt copies the keyed state (measured 1.2 us against
        # 2.5 us for hmac.new or hmac.digest per receipt: every pop signs one per
        # message and every ack checks one).
        self._keyed = hmac.new(secret, digestmod=hashlib.sha256)

    def _mac(self, payload: bytes) -> bytes:
        h = self._keyed.copy()
        h.update(payload)
        return h.digest()[:_MAC_BYTES]

    def encode(self, r: Receipt) -> str:
        return self.sign(self.prefix(r.group, r.topic), r.queue_id, r.offset, r.pop_time,
                         r.invisible_ms, r.lease)

    @staticmethod
    def prefix(group: str, topic: str) -> bytes:
        """The leading fields of a receipt (format version, group, topic): the same for
        every message of a pop, so a pop builds them once."""
        g, t = group.encode(), topic.encode()
        return bytes((RECEIPT_VERSION,)) + struct.pack(">H", len(g)) + g + bytes((len(t),)) + t

    def sign(self, prefix: bytes, queue_id: int, offset: int, pop_time: int,
             invisible_ms: int, lease: int) -> str:
        """``encode`` of a receipt whose ``prefix`` is built: the handle."""
        payload = prefix + _RECEIPT_FIXED.pack(queue_id, offset, pop_time, invisible_ms, lease)
        return base64.urlsafe_b64encode(payload + self._mac(payload)).rstrip(b"=").decode()

    def forget(self, handle: str) -> None:
        """``handle`` was acked: its lease is gone, its next use is stale anyway."""
        self._issued.pop(handle, None)

    def remember(self, handle: str, r: Receipt) -> None:
        """Note that ``handle`` (signed here) carries ``r``: its ack decodes nothing."""
        issued = self._issued
        if len(issued) >= self.ISSUED_MAX:
            del issued[next(iter(issued))]
        issued[handle] = r

    def decode(self, handle: str) -> Receipt:
        if type(handle) is str:
            known = self._issued.get(handle)
            if known is not None:
                return known
        if not isinstance(handle, str) or not 0 < len(handle) <= 1024:
            raise InvalidReceipt("a receipt handle is a string of at most 1024 characters")
        try:
            raw = base64.urlsafe_b64decode(handle + "=" * (-len(handle) % 4))
        except (ValueError, TypeError):
            raise InvalidReceipt("the receipt handle is not URL-safe base64") from None
        if len(raw) < 1 + 2 + 1 + _RECEIPT_FIXED.size + _MAC_BYTES:
            raise InvalidReceipt("the receipt handle is truncated")
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidReceipt("the receipt handle was not issued by this broker")
        try:
            if payload[0] != RECEIPT_VERSION:
                raise ValueError("version")
            (glen,) = struct.unpack_from(">H", payload, 1)
            p = 3
            group = payload[p:p + glen].decode()
            p += glen
            tlen = payload[p]
            topic = payload[p + 1:p + 1 + tlen].decode()
            p += 1 + tlen
            fields = _RECEIPT_FIXED.unpack_from(payload, p)
            if p + _RECEIPT_FIXED.size != len(payload):
                raise ValueError("length")
        except (ValueError, IndexError, struct.error, UnicodeDecodeError):
            # Authentic but unreadable: a handle from a newer format version.
            raise InvalidReceipt("unsupported receipt handle format") from None
        return Receipt(group, topic, *fields)


class PopService:
    """Pop state; the Broker's pop methods delegate here. Runs on the broker's
    event-loop thread; its state changes go through the broker's state log."""

    def __init__(self, paths: Paths, state: StateLog, directory: str, *,
                 max_inflight_per_queue: int = DEFAULT_MAX_INFLIGHT_PER_QUEUE) -> None:
        self.paths = paths
        self.state = state
        self.directory = directory  # the receipt secret; round 1's journal and snapshot
        self.max_inflight_per_queue = max_inflight_per_queue
        self.queues: dict[Key, QueueState] = {}
        self.codec = ReceiptCodec(b"")
        self._heap: list[tuple[int, int, Key, int]] = []  # (until, lease, key, offset)
        self._live = 0  # leases in state LEASED: the heap's useful entries
        self._next_lease = 1
        self._opened = False  # recovery applies state without building the heap
        self._dead: deque[tuple[Key, int]] = deque()  # leases bound for the DLQ
        self._rotor: dict[tuple[str, str], itertools.count[int]] = {}
        self._waiters: dict[tuple[str, str], set[trio.Event]] = {}
        self._scanner_wakeup: trio.Event | None = None
        self._scanner_target = 0
        self._anchor: tuple[int, float] | None = None
        self.stats = {"pops": 0, "popped": 0, "acks": 0, "revived": 0, "dead_lettered": 0,
                      "stale_acks": 0, "invalid_receipts": 0}
        state.register(NS_POP, _PopTable(self))
        state.register(NS_LEASE, _LeaseTable(self))

    # ================================================================ clock

    def now(self) -> int:
        """Wall-clock milliseconds that advance with trio's clock: immune to wall-clock
        steps while running, and driven by MockClock in tests."""
        current = trio.current_time()
        if self._anchor is None:
            self._anchor = (now_ms(), current)
        wall, at = self._anchor
        return wall + int((current - at) * 1000)

    # ================================================================ persistence

    def open(self) -> None:
        """Start-up, after the state log's recovery applied the pop state: load the
        receipt secret, order every queue's leases, build the expiry heap."""
        self.codec = ReceiptCodec(self._secret())
        self._live = 0
        self._heap = []
        for key, qs in self.queues.items():
            qs.leases = dict(sorted(qs.leases.items()))
            for offset, lease in qs.leases.items():
                self._heap.append((lease.until, lease.lease, key, offset))
                self._live += 1
        heapq.heapify(self._heap)
        # A power cut can take back the last flush interval of pop records after their
        # receipts went out; lease numbers restarting from the log's maximum could then
        # issue a number an outstanding receipt already carries, and that stale
        # receipt would ack the new delivery. Restart above the wall clock instead:
        # a running broker issues fewer than 1,024 leases per millisecond.
        self._next_lease = max(self._next_lease, now_ms() << _LEASE_CLOCK_SHIFT)
        self._opened = True

    def _secret(self) -> bytes:
        """The receipt secret from the state log; at the first start made, or taken
        from round 1's file (receipts it signed stay valid; the file is then renamed
        ``secret.imported``), and appended to the log."""
        secret = self.state.get(NS_SECRET, SECRET_KEY)
        if isinstance(secret, bytes) and len(secret) >= 32:
            return secret
        legacy = os.path.join(self.directory, "secret")
        secret = read_file(legacy)
        if not secret or len(secret) < 32:
            secret = secrets.token_bytes(32)
        self.state.append([(NS_SECRET, SECRET_KEY, secret)])
        if os.path.exists(legacy):
            os.replace(legacy, legacy + ".imported")
        return secret

    def _record(self, changes: list[Change]) -> None:
        """Append pop state changes to the state log, which applies them here."""
        self.state.append(changes)

    def _progress(self, key: Key, qs: QueueState, pop_offset: int,
                  removed: Iterable[int] = (), added: Iterable[int] = ()) -> list[Change]:
        """The committed-offset change that goes with a pop state change, if any: a
        group's committed offset is its pop progress (the first offset still leased,
        else the pop offset), so a pull consumer of the group resumes there."""
        gone = set(removed)
        progress = min(pop_offset, *added) if added else pop_offset  # a list, when given
        for offset in qs.leases:
            if offset not in gone:
                progress = min(progress, offset)
                break
        group, topic, qid = key
        paths = self.paths
        if paths.committed(group, topic, qid) != progress \
                and paths.topic_config(topic) is not None:
            return [(NS_OFFSET, key, progress)]
        return []

    def forget_changes(self, *, topic: str | None = None, group: str | None = None
                       ) -> list[Change]:
        """The changes that drop the pop state of a deleted topic or group."""
        return [(NS_POP, k, None) for k in self.queues
                if (topic is None or k[1] == topic) and (group is None or k[0] == group)]

    # ================================================================ the state machine

    def apply_pop(self, key: Key, pop_offset: int | None) -> None:
        """``pop`` namespace: (group, topic, queue) -> pop offset; deleting the key
        forgets the queue's state, leases included."""
        if pop_offset is None:
            qs = self.queues.pop(key, None)
            if qs is not None:
                self._live -= sum(1 for x in qs.leases.values() if x.state == LEASED)
            return
        qs = self.queues.get(key)
        if qs is None:
            self.queues[key] = QueueState(pop_offset)
        else:
            qs.pop_offset = pop_offset

    def apply_lease(self, lkey: tuple[str, str, int, int],
                     value: tuple[int, int, int, int] | None) -> None:
        """``lease`` namespace: (group, topic, queue, offset) -> (lease number,
        deliveries, pop time, deadline). Setting it leases the message (a new pop,
        a redelivery, a new invisible time); deleting it is an ack, or a message
        gone to the DLQ. Live, a new lease enters the expiry heap; at recovery
        ``open`` builds the heap once."""
        group, topic, qid, offset = lkey
        key = (group, topic, qid)
        qs = self.queues.get(key)
        if value is None:
            old = qs.leases.pop(offset, None) if qs is not None else None
            if old is not None and old.state == LEASED:
                self._live -= 1
            return
        if qs is None:
            qs = self.queues[key] = QueueState(0)
        lease_no, deliveries, pop_time, until = value
        old = qs.leases.get(offset)
        if old is None:
            qs.leases[offset] = Lease(lease_no, deliveries, pop_time, until)
            self._live += 1
        else:
            if old.state != LEASED:
                self._live += 1
            old.lease, old.deliveries, old.pop_time, old.until, old.state = \
                lease_no, deliveries, pop_time, until, LEASED
        if lease_no >= self._next_lease:
            self._next_lease = lease_no + 1
        if self._opened:
            self._push(until, lease_no, key, offset)

    # ================================================================ round 1's files

    def legacy_paths(self) -> list[str]:
        """Round 1's pop snapshot and journals, if this data directory has them."""
        if not os.path.isdir(self.directory):
            return []
        names = sorted(n for n in os.listdir(self.directory)
                       if n == "snapshot" or (n.startswith("journal-") and "." not in n))
        return [os.path.join(self.directory, n) for n in names]

    def load_legacy(self) -> None:
        """Read round 1's snapshot and journals into the tables (the broker imports
        them into the state log): the journal's operations translated into the
        state log's changes and applied, as round 1's replay did."""
        raw = read_file(os.path.join(self.directory, "snapshot"))
        seq = 0
        if raw:
            doc = msgpack.unpackb(raw, strict_map_key=False)
            seq = doc["seq"]
            self._next_lease = max(self._next_lease, doc["next_lease"])
            for g, t, q, pop_offset, leases in doc["queues"]:
                self.apply_pop((g, t, q), pop_offset)
                for offset, lease, deliveries, pop_time, until in leases:
                    self.apply_lease((g, t, q, offset), (lease, deliveries, pop_time, until))
        for path in self.legacy_paths():
            if not os.path.basename(path).startswith("journal-"):
                continue
            with open(path, "rb") as f:
                data = f.read()
            pos = 0
            while pos + _FRAME.size <= len(data):
                length, crc, frame_seq = _FRAME.unpack_from(data, pos)
                payload = data[pos + _FRAME.size:pos + _FRAME.size + length]
                if len(payload) != length or zlib.crc32(payload) != crc:
                    break  # a torn write ends the journal
                pos += _FRAME.size + length
                if frame_seq > seq:
                    seq = frame_seq
                    self._apply_legacy_op(msgpack.unpackb(payload))

    def _apply_legacy_op(self, op: list[Any]) -> None:
        kind = op[0]
        if kind == "X":
            for key in [k for k in self.queues if k[0] == op[1] and k[1] == op[2]]:
                self.apply_pop(key, None)
            return
        key = (op[1], op[2], op[3])
        if kind == "P":
            _, g, t, q, pop_offset, pop_time, until, items = op
            qs = self.queues.get(key)
            self.apply_pop(key, max(pop_offset, qs.pop_offset if qs else 0))
            for offset, lease_no, deliveries in items:
                self.apply_lease((g, t, q, offset), (lease_no, deliveries, pop_time, until))
        elif kind in ("A", "D"):
            for offset in op[4]:
                self.apply_lease((*key, offset), None)
        elif kind == "C":
            _, g, t, q, offset, lease_no, pop_time, until = op
            qs = self.queues.get(key)
            old = qs.leases.get(offset) if qs else None
            if old is not None:
                self.apply_lease((g, t, q, offset), (lease_no, old.deliveries, pop_time, until))

    def _push(self, until: int, lease_no: int, key: Key, offset: int) -> None:
        heapq.heappush(self._heap, (until, lease_no, key, offset))
        if len(self._heap) > 2 * self._live + 1024:
            # Acked leases leave their heap entries behind; keep the heap within
            # twice the live leases so memory follows the in-flight windows.
            self._heap = [e for e in self._heap if self._current(e) is not None]
            heapq.heapify(self._heap)
        wakeup = self._scanner_wakeup
        if wakeup is not None and until < self._scanner_target:
            wakeup.set()

    def _current(self, entry: tuple[int, int, Key, int]) -> Lease | None:
        _, lease_no, key, offset = entry
        qs = self.queues.get(key)
        lease = qs.leases.get(offset) if qs else None
        if lease is None or lease.lease != lease_no or lease.state != LEASED:
            return None
        return lease

    def revive_due(self, now: int) -> int:
        """Turn every lease whose invisible time has run out into a redelivery (or a
        dead letter past the group's maximum). Returns how many were revived."""
        heap = self._heap
        n = 0
        while heap and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            lease = self._current(entry)
            if lease is None:
                continue
            _, _, key, offset = entry
            self._live -= 1
            n += 1
            g = self.paths.group_config(key[0])
            max_reconsume = g.max_reconsume_times if g is not None else 16
            if lease.deliveries > max_reconsume:
                lease.state = DEAD
                self._dead.append((key, offset))
            else:
                lease.state = READY
                self.queues[key].ready.append(offset)
                self.stats["revived"] += 1
                self._wake((key[0], key[1]))
        return n

    def _wake(self, group_topic: tuple[str, str]) -> None:
        waiters = self._waiters.pop(group_topic, None)
        if waiters:
            for ev in waiters:
                ev.set()

    # ================================================================ background

    async def run(self) -> None:
        """The revive scanner: sleeps until the earliest lease falls due (at most
        IDLE_MAX_S), revives, and drains the DLQ backlog."""
        idle_ms = int(IDLE_MAX_S * 1000)
        while True:
            now = self.now()
            self.revive_due(now)
            if self._dead:
                await self._drain_dead()
            # Sleep until the earliest lease falls due (a new earlier one wakes us).
            target = min(self._heap[0][0] if self._heap else now + idle_ms, now + idle_ms)
            self._scanner_target = target
            self._scanner_wakeup = trio.Event()
            with trio.move_on_after(max(0, target - now) / 1000):
                await self._scanner_wakeup.wait()
            self._scanner_wakeup = None

    async def _drain_dead(self) -> None:
        while self._dead:
            key, offset = self._dead.popleft()
            qs = self.queues.get(key)
            lease = qs.leases.get(offset) if qs else None
            if lease is None or lease.state != DEAD:
                continue
            group, topic, qid = key
            msg = self._read(topic, qid, offset)
            if msg is not None:
                try:
                    await self._put_dead_letter(group, msg, lease.deliveries)
                except FerryError as exc:
                    # Keep the lease: the next pass tries again rather than lose it.
                    log.error("cannot move %s:%d@%d to the DLQ: %s", topic, qid, offset, exc)
                    self._dead.append((key, offset))
                    return
                self.stats["dead_lettered"] += 1
            else:
                log.warning("dead letter %s:%d@%d is gone from the store", topic, qid, offset)
            qs = self.queues.get(key)
            if qs is not None and offset in qs.leases:
                self._record([(NS_LEASE, (group, topic, qid, offset), None),
                              *self._progress(key, qs, qs.pop_offset, removed=(offset,))])

    async def _put_dead_letter(self, group: str, m: ConsumedMessage, deliveries: int) -> None:
        dlq = DLQ_PREFIX + group
        await self.paths.ensure_topic(dlq, 1)
        props = dict(m.properties)
        props.setdefault(PROPERTY_DLQ_ORIGIN_TOPIC, m.topic)
        props.setdefault(PROPERTY_DLQ_ORIGIN_MESSAGE_ID, m.msg_id)
        # The letter keeps the message's id, as a retry's copy does (core/retry.py): a
        # message without a client id would otherwise be known by the letter's offset id
        # only, and its lookups, its life and its resend would lose the original's.
        props.setdefault(PROPERTY_UNIQ_KEY, m.msg_id)
        props[PROPERTY_MAX_RECONSUME_TIMES] = str(deliveries - 1)
        await self.paths.put(Message(dlq, m.body, props, 0, m.flag, m.born_timestamp,
                                      m.born_host, deliveries))

    # ================================================================ reading

    def _read(self, topic: str, qid: int, offset: int) -> ConsumedMessage | None:
        """The message at one offset (a member of a batch record included), or None."""
        try:
            r = self.paths.get(None, topic, qid, offset, 1, 1)
        except FerryError:
            return None
        for m in r.messages(offset):
            return m if m.queue_offset == offset else None
        return None

    def _queue_ids(self, topic: str, queue_id: int) -> list[int]:
        t = self.paths.readable_topic(topic)
        if queue_id >= 0:
            if queue_id >= t.queues:
                raise QueueNotFound(f"topic {topic} has {t.queues} queues; no queue {queue_id}")
            return [queue_id]
        return list(range(t.queues))

    def _state(self, group: str, topic: str, qid: int, init: str) -> tuple[QueueState, bool]:
        """The queue's pop state, and whether it was created just now."""
        key = (group, topic, qid)
        qs = self.queues.get(key)
        if qs is not None:
            return qs, False
        lo, hi = self.paths.queue_bounds(topic, qid)
        committed = self.paths.committed(group, topic, qid)
        start = committed if committed is not None else (hi if init == "latest" else lo)
        qs = self.queues[key] = QueueState(start)
        return qs, True

    # ================================================================ API

    def pop_now(self, group: str, topic: str, max_messages: int, invisible_ms: int,
                filter: Filter | None, queue_id: int, init: str) -> list[PoppedMessage]:
        """One non-waiting pop: redeliveries first, then new messages, queue by queue."""
        queue_ids = self._queue_ids(topic, queue_id)
        now = self.now()
        self.revive_due(now)
        if self._dead and self._scanner_wakeup is not None:
            self._scanner_wakeup.set()
        rotor = self._rotor.get((group, topic))
        if rotor is None:
            rotor = self._rotor[(group, topic)] = itertools.count()
        start = next(rotor) % len(queue_ids)
        until = now + invisible_ms
        out: list[PoppedMessage] = []
        prefix: bytes | None = None  # the receipts' leading fields, built once
        self.stats["pops"] += 1
        for qid in queue_ids[start:] + queue_ids[:start]:
            if len(out) >= max_messages:
                break
            qs, created = self._state(group, topic, qid, init)
            items: list[list[int]] = []
            msgs: list[ConsumedMessage] = []
            self._take_ready((group, topic, qid), qs, max_messages - len(out), filter,
                             items, msgs)
            pop_offset = self._take_new(group, qs, topic, qid,
                                        max_messages - len(out) - len(items), filter,
                                        items, msgs)
            if not items and pop_offset == qs.pop_offset and not created:
                continue  # nothing changed (a new state is recorded: "latest" is a time)
            key = (group, topic, qid)
            self._record([(NS_POP, key, pop_offset),
                          *[(NS_LEASE, (group, topic, qid, offset), (lease_no, deliveries, now, until))
                            for offset, lease_no, deliveries in items],
                          *self._progress(key, qs, pop_offset, added=[i[0] for i in items])])
            if prefix is None:
                prefix = self.codec.prefix(group, topic)
            sign, remember = self.codec.sign, self.codec.remember
            for (offset, lease_no, deliveries), m in zip(items, msgs, strict=True):
                if m.reconsume_times != deliveries - 1:
                    m = m._replace(reconsume_times=deliveries - 1)
                handle = sign(prefix, qid, offset, now, invisible_ms, lease_no)
                remember(handle, Receipt(group, topic, qid, offset, now, invisible_ms, lease_no))
                out.append(PoppedMessage(m, handle, now, until))
        self.stats["popped"] += len(out)
        return out

    def _take_ready(self, key: Key, qs: QueueState, room: int, filter: Filter | None,
                    items: list[list[int]], msgs: list[ConsumedMessage]) -> None:
        _, topic, qid = key
        skipped: list[int] = []
        while qs.ready and len(items) < room:
            offset = qs.ready.popleft()
            lease = qs.leases.get(offset)
            if lease is None or lease.state != READY:
                continue
            m = self._read(topic, qid, offset)
            if m is None:
                lease.state = DEAD  # retention removed it: nothing to redeliver
                self._dead.append((key, offset))
                continue
            if filter is not None and not filter.matches(m):
                skipped.append(offset)  # not this consumer's: leave it for a matching one
                continue
            items.append([offset, self._new_lease(), lease.deliveries + 1])
            msgs.append(m)
        qs.ready.extendleft(reversed(skipped))

    def _take_new(self, group: str, qs: QueueState, topic: str, qid: int, room: int,
                  filter: Filter | None, items: list[list[int]],
                  msgs: list[ConsumedMessage]) -> int:
        """Lease up to ``room`` new messages from the pop offset; returns the new pop offset."""
        room = min(room, self.max_inflight_per_queue - len(qs.leases))
        # Retention may have removed what was never popped: start at the queue's minimum.
        pop_offset = max(qs.pop_offset, self.paths.stored_bounds(topic, qid)[0])
        if room <= 0:
            return pop_offset
        r = self.paths.get(group, topic, qid, pop_offset, room, POP_MAX_BYTES, filter)
        new_offset = r.next_offset
        for taken, m in enumerate(r.messages(pop_offset, qs.cursor)):
            if taken == room:
                new_offset = m.queue_offset
                break
            items.append([m.queue_offset, self._new_lease(), 1])
            msgs.append(m)
        return max(new_offset, pop_offset)

    def _new_lease(self) -> int:
        n = self._next_lease
        self._next_lease += 1
        return n

    async def pop(self, group: str, topic: str, max_messages: int, invisible_ms: int,
                  filter: Filter | None, queue_id: int, wait_ms: int, init: str
                  ) -> list[PoppedMessage]:
        if not 1 <= max_messages <= MAX_POP_MESSAGES:
            raise InvalidArgument(f"max_messages must be 1..{MAX_POP_MESSAGES}")
        if not MIN_INVISIBLE_MS <= invisible_ms <= MAX_INVISIBLE_MS:
            raise InvalidArgument(
                f"invisible time must be {MIN_INVISIBLE_MS}..{MAX_INVISIBLE_MS} ms")
        if wait_ms < 0:
            raise InvalidArgument("wait must not be negative")
        if init not in ("earliest", "latest"):
            raise InvalidArgument("init must be 'earliest' or 'latest'")
        self.paths.consumer_group(group)
        deadline = trio.current_time() + wait_ms / 1000
        while True:
            got = self.pop_now(group, topic, max_messages, invisible_ms, filter, queue_id, init)
            if got:
                # Under sync flush the leases are on disk before a receipt goes out.
                await self.paths.wait_durable()
                return got
            if trio.current_time() >= deadline:
                return got
            ev = trio.Event()
            self.paths.watch((topic,), ev)  # a put to the topic
            mine = self._waiters.setdefault((group, topic), set())
            mine.add(ev)  # a revive of one of the group's leases
            try:
                with trio.move_on_at(deadline):
                    await ev.wait()
            finally:
                self.paths.unwatch((topic,), ev)
                mine.discard(ev)
                if not mine and self._waiters.get((group, topic)) is mine:
                    del self._waiters[(group, topic)]

    def _check(self, handle: str, authorize: ReceiptCheck | None, now: int | None = None
               ) -> tuple[Receipt, QueueState, Lease]:
        try:
            r = self.codec.decode(handle)
        except InvalidReceipt:
            self.stats["invalid_receipts"] += 1
            raise
        if authorize is not None:
            authorize(r.group, r.topic)
        if self.paths.topic_config(r.topic) is None:
            raise TopicNotFound(f"topic {r.topic} does not exist")
        qs = self.queues.get((r.group, r.topic, r.queue_id))
        lease = qs.leases.get(r.offset) if qs else None
        if (lease is None or lease.lease != r.lease or lease.state != LEASED
                or (self.now() if now is None else now) >= lease.until):
            self.stats["stale_acks"] += 1
            raise ReceiptStale(
                "the receipt handle is not current: the message was acked, or its "
                "invisible time ran out and it was (or will be) delivered again")
        return r, qs, lease  # type: ignore[return-value]

    def ack(self, handle: str, authorize: ReceiptCheck | None = None) -> None:
        """Ack a lease. ``authorize(group, topic)`` is called once the handle is
        decoded (the Broker's access check); so for ``ack_batch`` and
        ``change_invisible_time``."""
        r, qs, _ = self._check(handle, authorize)
        key = (r.group, r.topic, r.queue_id)
        self._record([(NS_LEASE, (*key, r.offset), None),
                      *self._progress(key, qs, qs.pop_offset, removed=(r.offset,))])
        self.codec.forget(handle)
        self.stats["acks"] += 1

    def ack_batch(self, handles: Sequence[str], authorize: ReceiptCheck | None = None
                  ) -> list[FerryError | None]:
        results: list[FerryError | None] = []
        by_queue: dict[Key, list[int]] = {}
        seen: set[tuple[Key, int]] = set()
        now = self.now()
        for h in handles:
            try:
                r, _, _ = self._check(h, authorize, now)
            except FerryError as exc:
                results.append(exc)
                continue
            key = (r.group, r.topic, r.queue_id)
            if (key, r.offset) in seen:
                results.append(ReceiptStale("the same receipt handle twice in one batch"))
                continue
            seen.add((key, r.offset))
            by_queue.setdefault(key, []).append(r.offset)
            results.append(None)
        forget = self.codec.forget
        for h, err in zip(handles, results, strict=True):
            if err is None:
                forget(h)
        for key, offsets in by_queue.items():
            qs = self.queues[key]
            self._record([*[(NS_LEASE, (*key, o), None) for o in offsets],
                          *self._progress(key, qs, qs.pop_offset, removed=offsets)])
            self.stats["acks"] += len(offsets)
        return results

    def change_invisible_time(self, handle: str, invisible_ms: int,
                              authorize: ReceiptCheck | None = None) -> ReceiptRenewal:
        if not MIN_INVISIBLE_MS <= invisible_ms <= MAX_INVISIBLE_MS:
            raise InvalidArgument(
                f"invisible time must be {MIN_INVISIBLE_MS}..{MAX_INVISIBLE_MS} ms")
        r, _, lease = self._check(handle, authorize)
        now = self.now()
        lease_no = self._new_lease()
        self._record([(NS_LEASE, (r.group, r.topic, r.queue_id, r.offset),
                       (lease_no, lease.deliveries, now, now + invisible_ms))])
        new = self.codec.encode(Receipt(r.group, r.topic, r.queue_id, r.offset, now,
                                        invisible_ms, lease_no))
        return ReceiptRenewal(new, now + invisible_ms)

    def peek(self, group: str, topic: str, max_messages: int, filter: Filter | None,
             queue_id: int) -> list[ConsumedMessage]:
        if not 1 <= max_messages <= MAX_POP_MESSAGES:
            raise InvalidArgument(f"max_messages must be 1..{MAX_POP_MESSAGES}")
        self.revive_due(self.now())
        out: list[ConsumedMessage] = []
        for qid in self._queue_ids(topic, queue_id):
            qs = self.queues.get((group, topic, qid))
            if qs is not None:
                for offset in qs.ready:
                    if len(out) >= max_messages:
                        return out
                    lease = qs.leases.get(offset)
                    m = self._read(topic, qid, offset) if lease and lease.state == READY else None
                    if m is not None and (filter is None or filter.matches(m)):
                        out.append(m._replace(reconsume_times=lease.deliveries))  # type: ignore[union-attr]
                start = qs.pop_offset
            else:
                committed = self.paths.committed(group, topic, qid)
                start = committed if committed is not None else self.paths.queue_bounds(
                    topic, qid)[0]
            room = max_messages - len(out)
            if room <= 0:
                break
            r = self.paths.get(None, topic, qid, start, room, POP_MAX_BYTES, filter)
            for m in r.messages(start):
                if len(out) >= max_messages:
                    break
                out.append(m)
        return out

    def status(self, group: str, topic: str | None = None) -> list[QueuePopStatus]:
        return [QueuePopStatus(t, q, qs.pop_offset,
                               sum(1 for x in qs.leases.values() if x.state == LEASED),
                               sum(1 for x in qs.leases.values() if x.state == READY))
                for (g, t, q), qs in sorted(self.queues.items())
                if g == group and (topic is None or t == topic)]

    def in_flight(self) -> int:
        return self._live



class _PopTable:
    """The ``pop`` namespace of the state log: (group, topic, queue) -> pop offset."""

    def __init__(self, svc: PopService) -> None:
        self.svc = svc

    def apply(self, key: Any, value: Any) -> None:
        self.svc.apply_pop(key, value)

    def get(self, key: Any) -> Any:
        qs = self.svc.queues.get(key)
        return None if qs is None else qs.pop_offset

    def items(self) -> Iterable[tuple[Any, Any]]:
        return [(k, qs.pop_offset) for k, qs in self.svc.queues.items()]

    def view(self) -> Callable[[], Iterable[tuple[Any, Any]]]:
        return self.items().__iter__  # a list built now: the copy

    def __len__(self) -> int:
        return len(self.svc.queues)


class _LeaseTable:
    """The ``lease`` namespace: (group, topic, queue, offset) -> (lease number,
    deliveries, pop time, deadline)."""

    def __init__(self, svc: PopService) -> None:
        self.svc = svc

    def apply(self, key: Any, value: Any) -> None:
        self.svc.apply_lease(key, value)

    def get(self, key: Any) -> Any:
        g, t, q, offset = key
        qs = self.svc.queues.get((g, t, q))
        x = qs.leases.get(offset) if qs is not None else None
        return None if x is None else (x.lease, x.deliveries, x.pop_time, x.until)

    def items(self) -> Iterable[tuple[Any, Any]]:
        return [((g, t, q, o), (x.lease, x.deliveries, x.pop_time, x.until))
                for (g, t, q), qs in self.svc.queues.items() for o, x in qs.leases.items()]

    def view(self) -> Callable[[], Iterable[tuple[Any, Any]]]:
        return self.items().__iter__

    def __len__(self) -> int:
        return sum(len(qs.leases) for qs in self.svc.queues.values())
