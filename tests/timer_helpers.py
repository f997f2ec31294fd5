"""Shared by the timer, transaction and retry tests: broker configurations, a wall clock
that follows trio's MockClock, and reading every message of a queue."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import trio
from ferrymq.core import Broker, BrokerConfig, ConsumedMessage
from ferrymq.core import timers as timers_mod
from ferrymq.core import transactions as transactions_mod
from ferrymq.core.message import now_ms
from ferrymq.core.store import store as store_mod

DAY_MS = 86_400_000


def config(tmp_path, **over) -> BrokerConfig:  # type: ignore[no-untyped-def]
    base = dict(data_dir=str(tmp_path / "data"), segment_size=1 << 20,
                max_message_size=64 * 1024, cq_entries_per_file=4096, index_slots=4096,
                index_entries=1 << 16, default_queues=2, checkpoint_interval_ms=200)
    base.update(over)
    return BrokerConfig(**base)  # type: ignore[arg-type]


def quiet_config(tmp_path, **over) -> BrokerConfig:  # type: ignore[no-untyped-def]
    """For MockClock tests that jump days: background jobs wake rarely, or the run
    would spend itself on flushes and checkpoints every virtual half second."""
    base = dict(flush_interval_ms=DAY_MS, checkpoint_interval_ms=DAY_MS,
                offset_persist_interval_ms=DAY_MS, retention_check_interval_s=86_400.0,
                disk_check_interval_s=86_400.0,
                retention_hours=24 * 90.0)
    base.update(over)
    return config(tmp_path, **base)


@contextmanager
def wall_clock_follows(clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
                       ) -> Iterator[None]:
    """Make the broker's wall clock (timers, transactions, store timestamps) run
    with the MockClock, starting from the real time now."""
    base = now_ms()

    def wall_ms() -> int:
        return base + int(clock.current_time() * 1000)

    monkeypatch.setattr(timers_mod, "now_ms", wall_ms)
    monkeypatch.setattr(transactions_mod, "now_ms", wall_ms)
    monkeypatch.setattr(store_mod, "_time_ns", lambda: wall_ms() * 1_000_000)
    yield


def wall_ms(broker: Broker) -> int:
    return broker.timers.clock()


def read_queue(broker: Broker, topic: str, queue_id: int, start: int = 0
               ) -> list[ConsumedMessage]:
    out: list[ConsumedMessage] = []
    if topic not in broker.meta.topics:
        return out
    lo, hi = broker.store.queue_bounds(topic, queue_id)
    offset = max(start, lo)
    while offset < hi:
        g = broker.store.get(topic, queue_id, offset, 10_000, 64 << 20)
        out += list(g.messages(offset))
        if g.next_offset <= offset:
            break
        offset = g.next_offset
    return out


def read_topic(broker: Broker, topic: str) -> list[ConsumedMessage]:
    t = broker.meta.topics.get(topic)
    if t is None:
        return []
    return [m for q in range(t.queues) for m in read_queue(broker, topic, q)]
