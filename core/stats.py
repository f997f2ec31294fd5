"""Counters the broker keeps per topic and per consumer group (since start), read by admin and metrics."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple


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
