"""Idempotent-producer state of the Kafka door: producer ids, epochs and per-partition sequences.

Kafka's rules (KIP-98): a producer gets an id and epoch from InitProducerId and
numbers its batches per partition from 0. A batch continuing the last sequence
is appended; a batch equal to one of the last ``CACHED_BATCHES`` appended is a
retry and is answered with its original offset; anything else is out of order
(OUT_OF_ORDER_SEQUENCE_NUMBER), an older epoch is fenced
(INVALID_PRODUCER_EPOCH), and a producer the broker has no state for may only
start at sequence 0 (UNKNOWN_PRODUCER_ID otherwise).

The state is session state of the door, not message storage: a snapshot
(msgpack, written atomically) lands in ``<data>/kafka/producers.msgpack`` every
second when it changed and at shutdown. On start the snapshot is loaded and the
batches appended since it was taken are replayed from the queues (their
headers carry producer id, epoch and sequence), so a restart, even a crash,
keeps deduplication working; cached batches past the recovered end of a queue
(lost with an unflushed tail) are forgotten.

In a broker group the snapshot also names the CommitLog it describes: the epoch
list and the log's end when it was taken (``log``). A master that lost its term
with a tail its slaves never got has that tail truncated when it comes back
(docs/cluster.md, "Truncation"), and the queues grow again with what the new
master wrote at the same offsets; the snapshot's batches there, and its "replayed
up to here", would then describe records that are gone. The door therefore
keeps a snapshot only while the log still holds everything it describes
(``Broker.truncation_point`` of the snapshot's log reaches its end), and
otherwise rebuilds the state from the queues' starts.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from dataclasses import dataclass, field
from enum import Enum

import msgpack

CACHED_BATCHES = 5  # Kafka keeps the last 5 batches per producer and partition (in-flight limit)
MAX_PRODUCERS = 100_000  # bound on remembered producer ids (least recently used evicted)
SEQUENCE_WRAP = 1 << 31  # sequences are int32 and wrap to 0
SNAPSHOT_VERSION = 1

log = logging.getLogger("ferrymq.kafka")


class Verdict(Enum):
    APPEND = "append"
    DUPLICATE = "duplicate"
    OUT_OF_ORDER = "out_of_order"
    FENCED = "fenced"
    UNKNOWN_PRODUCER = "unknown_producer"


@dataclass(slots=True)
class BatchSeq:
    first_seq: int
    last_seq: int
    base_offset: int


@dataclass(slots=True)
class ProducerEntry:
    epoch: int
    last_used_ms: int
    partitions: dict[tuple[str, int], deque[BatchSeq]] = field(default_factory=dict)


def _next_seq(seq: int) -> int:
    return (seq + 1) % SEQUENCE_WRAP


class ProducerStates:
    """All producers' state; event-loop thread only, except ``save`` (any thread,
    on a snapshot taken by ``snapshot``)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, "producers.msgpack")
        self.next_id = 1000
        self.producers: dict[int, ProducerEntry] = {}
        self.dirty = False
        # (topic, queue) -> the queue's max offset when the loaded snapshot was taken
        self.snapshot_ends: dict[tuple[str, int], int] = {}
        # The CommitLog the loaded snapshot describes: (epoch list, end); None without one
        self.snapshot_log: tuple[list[tuple[int, int]], int] | None = None

    # ---------------------------------------------------------------- ids

    def new_producer(self, now_ms: int) -> tuple[int, int]:
        """A fresh (producer id, epoch 0)."""
        pid = self.next_id
        self.next_id += 1
        self.producers[pid] = ProducerEntry(0, now_ms)
        self._evict()
        self.dirty = True
        return pid, 0

    def register(self, pid: int, epoch: int, now_ms: int) -> None:
        """A producer id handed out elsewhere (the transaction coordinator, which reserves
        ids in the state log) at ``epoch``: batches of older epochs are fenced from now
        on, and the new epoch's sequences start again at 0."""
        p = self.producers.get(pid)
        if p is None:
            self.producers[pid] = ProducerEntry(epoch, now_ms)
            self._evict()
        elif p.epoch != epoch:
            p.epoch = epoch
            p.partitions.clear()
            p.last_used_ms = now_ms
        self.next_id = max(self.next_id, pid + 1)
        self.dirty = True

    def _evict(self) -> None:
        if len(self.producers) > MAX_PRODUCERS:
            oldest = sorted(self.producers.items(), key=lambda kv: kv[1].last_used_ms)
            for pid, _ in oldest[:len(self.producers) - MAX_PRODUCERS]:
                del self.producers[pid]

    # ---------------------------------------------------------------- sequences

    def check(self, pid: int, epoch: int, topic: str, queue_id: int, first_seq: int,
              count: int) -> tuple[Verdict, int]:
        """What to do with a batch; for DUPLICATE also the original base offset."""
        p = self.producers.get(pid)
        if p is None:
            return (Verdict.APPEND if first_seq == 0 else Verdict.UNKNOWN_PRODUCER), -1
        if epoch < p.epoch:
            return Verdict.FENCED, -1
        if epoch > p.epoch:
            return (Verdict.APPEND if first_seq == 0 else Verdict.OUT_OF_ORDER), -1
        batches = p.partitions.get((topic, queue_id))
        if not batches:
            return (Verdict.APPEND if first_seq == 0 else Verdict.UNKNOWN_PRODUCER), -1
        last_seq = (first_seq + count - 1) % SEQUENCE_WRAP
        for b in batches:
            if b.first_seq == first_seq and b.last_seq == last_seq:
                return Verdict.DUPLICATE, b.base_offset
        if first_seq == _next_seq(batches[-1].last_seq):
            return Verdict.APPEND, -1
        return Verdict.OUT_OF_ORDER, -1

    def record(self, pid: int, epoch: int, topic: str, queue_id: int, first_seq: int,
               count: int, base_offset: int, now_ms: int) -> None:
        """Remember an appended batch."""
        p = self.producers.get(pid)
        if p is None:
            p = self.producers[pid] = ProducerEntry(epoch, now_ms)
            self.next_id = max(self.next_id, pid + 1)
            self._evict()
        if epoch != p.epoch:
            p.epoch = epoch
            p.partitions.clear()
        p.last_used_ms = now_ms
        q = p.partitions.get((topic, queue_id))
        if q is None:
            q = p.partitions[(topic, queue_id)] = deque(maxlen=CACHED_BATCHES)
        q.append(BatchSeq(first_seq, (first_seq + count - 1) % SEQUENCE_WRAP, base_offset))
        self.dirty = True

    def forget_topic(self, topic: str) -> None:
        for p in self.producers.values():
            for key in [k for k in p.partitions if k[0] == topic]:
                del p.partitions[key]
        self.dirty = True

    def truncate(self, topic: str, queue_id: int, end_offset: int) -> None:
        """Forget cached batches at or past ``end_offset`` (lost from the queue)."""
        for p in self.producers.values():
            q = p.partitions.get((topic, queue_id))
            if q:
                kept = [b for b in q if b.base_offset < end_offset]
                if len(kept) != len(q):
                    q.clear()
                    q.extend(kept)

    # ---------------------------------------------------------------- persistence

    def snapshot(self, queue_ends: dict[tuple[str, int], int],
                 log: tuple[list[tuple[int, int]], int] | None = None) -> bytes:
        """The state as bytes (taken on the loop thread), with every queue's end and, in a
        broker group, the CommitLog's epoch list and end."""
        self.dirty = False
        return msgpack.packb({
            "version": SNAPSHOT_VERSION,
            "next_id": self.next_id,
            "queue_ends": [[t, q, o] for (t, q), o in queue_ends.items()],
            "log": None if log is None else [[[e, o] for e, o in log[0]], log[1]],
            "producers": [[pid, p.epoch, p.last_used_ms,
                           [[t, q, [[b.first_seq, b.last_seq, b.base_offset] for b in bs]]
                            for (t, q), bs in p.partitions.items()]]
                          for pid, p in self.producers.items()],
        })

    def save(self, data: bytes) -> None:
        from ...core.store.files import atomic_write

        os.makedirs(self.directory, exist_ok=True)
        atomic_write(self.path, data)

    def load(self) -> bool:
        """Load the snapshot if there is one; True if it was. A snapshot that does not
        decode is set aside as ``*.damaged`` with an ERROR: the replay then rebuilds the
        state from the queues' starts (a longer start, nothing lost)."""
        try:
            with open(self.path, "rb") as f:
                doc = msgpack.unpackb(f.read(), strict_map_key=False)
        except FileNotFoundError:
            return False
        except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
            return self._damaged(exc)
        if not isinstance(doc, dict) or doc.get("version") != SNAPSHOT_VERSION:
            return False if isinstance(doc, dict) else self._damaged(TypeError(type(doc)))
        try:
            next_id = doc["next_id"]
            ends = {(t, q): o for t, q, o in doc["queue_ends"]}
            producers = {}
            for pid, epoch, used, parts in doc["producers"]:
                p = ProducerEntry(epoch, used)
                for t, q, bs in parts:
                    p.partitions[(t, q)] = deque((BatchSeq(*b) for b in bs),
                                                 maxlen=CACHED_BATCHES)
                producers[pid] = p
            raw_log = doc.get("log")
            log_of = None if raw_log is None else (
                [(int(e), int(o)) for e, o in raw_log[0]], int(raw_log[1]))
        except (KeyError, TypeError, ValueError) as exc:
            return self._damaged(exc)
        self.next_id, self.snapshot_ends, self.snapshot_log = next_id, ends, log_of
        self.producers.update(producers)
        return True

    def forget_snapshot(self) -> None:
        """Drop what the loaded snapshot said (its log is not this one any more): the
        replay then reads every queue from its start. Producer ids handed out stay
        reserved (``next_id``)."""
        self.producers.clear()
        self.snapshot_ends = {}
        self.snapshot_log = None

    def _damaged(self, exc: BaseException) -> bool:
        log.error("the Kafka producer snapshot %s is damaged (%s): set aside as *.damaged; "
                  "producer state is rebuilt from the queues", self.path, exc)
        os.replace(self.path, self.path + ".damaged")
        return False
