"""Counters the broker keeps per topic and per consumer group (since start), read by admin and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .message import ConsumedMessage


@dataclass(slots=True)
class TopicCounters:
    messages_in: int = 0
    bytes_in: int = 0
    puts: int = 0


@dataclass(slots=True)
class GroupCounters:
    messages_out: int = 0
    bytes_out: int = 0
    gets: int = 0


@dataclass(slots=True)
class Counters:
    topics: dict[str, TopicCounters] = field(default_factory=dict)
    groups: dict[tuple[str, str], GroupCounters] = field(default_factory=dict)
    put_errors: int = 0
    flushes: int = 0
    flush_seconds: float = 0.0
    flush_failures: int = 0

    def topic(self, name: str) -> TopicCounters:
        c = self.topics.get(name)
        if c is None:
            c = self.topics[name] = TopicCounters()
        return c

    def group(self, group: str, topic: str) -> GroupCounters:
        c = self.groups.get((group, topic))
        if c is None:
            c = self.groups[(group, topic)] = GroupCounters()
        return c


@dataclass(frozen=True, slots=True)
class QueueLag:
    queue_id: int
    min_offset: int
    max_offset: int
    committed: int | None

    @property
    def lag(self) -> int | None:
        return None if self.committed is None else max(0, self.max_offset - self.committed)


@dataclass(frozen=True, slots=True)
class TopicStats:
    topic: str
    queues: tuple[tuple[int, int, int], ...]  # (queue id, min offset, max offset)
    messages_in: int
    bytes_in: int

    @property
    def messages(self) -> int:
        """Messages currently stored (max - min over the queues)."""
        return sum(hi - lo for _, lo, hi in self.queues)


@dataclass(frozen=True, slots=True)
class GroupTopicStats:
    group: str
    topic: str
    queues: tuple[QueueLag, ...]
    messages_out: int
    bytes_out: int

    @property
    def lag(self) -> int:
        return sum(q.lag or 0 for q in self.queues)


@dataclass(frozen=True, slots=True)
class BrokerStats:
    """The broker as a whole (RocketMQ's GET_BROKER_RUNTIME_INFO)."""

    started_at: int  # epoch ms
    messages_in: int  # messages put since start, every topic
    commitlog_max_offset: int  # the CommitLog offset the next record gets
    topics: int
    groups: int


@dataclass(frozen=True, slots=True)
class Health:
    """Whether the broker takes writes; ``reason`` says why not."""

    ready: bool
    reason: str


class StoredQueue(NamedTuple):
    """A queue as stored: its (min, max) offset, flushed or not."""

    topic: str
    queue_id: int
    min_offset: int
    max_offset: int


# ---------------------------------------------------------------- what the console reads
# (docs/console.md): the broker as a whole, its traffic, lags, timers, a message's life.


@dataclass(frozen=True, slots=True)
class BrokerInfo:
    """One broker as a console lists it: who it is, its role, its store."""

    name: str
    cluster: str
    role: str  # "master" (alone today); replication (issue 14) adds slaves
    address: str  # the store host:port its message ids carry
    started_at: int  # epoch ms
    flush: str  # "sync" | "async"
    messages_in: int
    topics: int  # not counting system topics (%RETRY%, %DLQ%, RMQ_SYS_*)
    groups: int
    commitlog_min: int  # CommitLog offsets: the first retained byte,
    commitlog_max: int  # the next record's,
    commitlog_flushed: int  # and what is on disk


@dataclass(frozen=True, slots=True)
class Traffic:
    """The counters since start, read in one go: per topic (messages, bytes in) and per
    (group, topic) (messages, bytes out)."""

    topics: dict[str, tuple[int, int]]
    groups: dict[tuple[str, str], tuple[int, int]]

    @property
    def messages_in(self) -> int:
        return sum(m for m, _ in self.topics.values())

    @property
    def bytes_in(self) -> int:
        return sum(b for _, b in self.topics.values())

    @property
    def messages_out(self) -> int:
        return sum(m for m, _ in self.groups.values())


class GroupLag(NamedTuple):
    """A group's committed offset on one queue, and how far behind the queue's end it is."""

    group: str
    topic: str
    queue_id: int
    committed: int
    max_offset: int

    @property
    def lag(self) -> int:
        return max(0, self.max_offset - self.committed)


@dataclass(frozen=True, slots=True)
class TimerSchedule:
    """Pending timers by the hour they are due, from the hour ``start_ms`` on. Timers due
    later than the window are ``later``; ``approximate`` when the wheel was too busy to
    walk entry by entry and some slots were counted by the second they sit at."""

    start_ms: int
    counts: tuple[int, ...]  # one per hour
    later: int
    pending: int  # wheel entries, cancelled ones included until their second passes
    approximate: bool


@dataclass(frozen=True, slots=True)
class Consumption:
    """Where one group stands with one stored message: ``consumed`` when its committed
    offset is past it; ``pop`` the state of a pop lease on it (``leased``: out with a
    consumer; ``revived``: waiting for redelivery; ``acked``), if the group pops."""

    group: str
    committed: int | None
    consumed: bool
    pop: str | None = None
    deliveries: int = 0
    invisible_until: int | None = None


@dataclass(frozen=True, slots=True)
class LifeStep:
    """One stored copy of a message: ``kind`` is ``produced`` (the original),
    ``timer`` (waiting for its delivery time ``due_ms``), ``delivered`` (a timer's copy
    in its topic), ``retry`` (in ``%RETRY%<group>``), ``dead_letter`` (in
    ``%DLQ%<group>``; ``resent`` says whether it went back), ``resent`` (a dead letter
    put back), ``half`` (a transaction's prepared message) or ``discarded_half``."""

    kind: str
    message: ConsumedMessage
    group: str | None = None
    due_ms: int | None = None
    resent: bool | None = None
    consumers: tuple[Consumption, ...] = ()


@dataclass(frozen=True, slots=True)
class MessageLife:
    """Every stored copy of one message id, oldest first, and the door it came in by
    (the ``FERRY_DOOR`` property; None for a message stored without one)."""

    msg_id: str
    door: str | None
    steps: tuple[LifeStep, ...]
