"""Dispatchers: one task per watched broker topic, tailing its queues and routing each message once.

    Dispatcher(T) ─ wait_any / get on T's queues ─► route(m) (the hub's topic trie)

Messages live only in the store: a dispatcher reads each message of broker
topic T once and hands it to ``route``, so the cost per message does not grow
with the number of subscribers or filters (docs/mqtt.md, "Delivery").
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable

import trio

from ...core.access import SYSTEM
from ...core.broker import Broker
from ...core.errors import FerryError, TopicNotFound
from ...core.message import ConsumedMessage, GetStatus, StoredRecord
from ...core.tracing import Delivery
from . import mapping
from .delivery import RecordReader

_NO_HOST = bytes(8)  # a deliver span's message id is its UNIQ_KEY or offset id

log = logging.getLogger("ferrymq.mqtt")

DISPATCH_BATCH = 256  # messages per get: one wake-up drains a burst
DISPATCH_BYTES = 1 << 20
IDLE_WAIT = 1.0  # seconds a dispatcher long-polls before re-checking its topic

Route = Callable[[str, int, int, bytes, dict[str, str]], None]


def first_broker_topic(topic_filter: str) -> str | None:
    """The broker topic a filter's first level names; None for a wildcard level
    (every topic) and for $-topics (never stored: $SYS is served from memory)."""
    first = topic_filter.split("/", 1)[0]
    if first in ("+", "#") or first.startswith("$"):
        return None
    return mapping.broker_topic(first)


def _first(item: tuple[int, int, StoredRecord]) -> int:
    return item[0]


class Dispatcher:
    """Tails every queue of one broker topic from where it started and routes each
    message (broker topic, queue, offset, body, properties) to ``route``."""

    def __init__(self, broker: Broker, topic: str, from_start: bool, route: Route,
                 reader: RecordReader, stats: collections.Counter[str]) -> None:
        self.broker = broker
        self.topic = topic
        self.route = route
        self.reader = reader
        self.stats = stats
        self.positions: list[int] = []
        self.stopped = False
        self._from_start = from_start
        self._ensure_positions()

    def _ensure_positions(self) -> bool:
        broker = self.broker
        try:
            t = broker.topic(self.topic, principal=SYSTEM)
        except (TopicNotFound, FerryError):
            self._from_start = True  # created later: every message of it is new
            return False
        while len(self.positions) < t.queues:
            q = len(self.positions)
            lo, hi = broker.queue_bounds(self.topic, q, principal=SYSTEM)
            self.positions.append(lo if self._from_start else hi)
        self._from_start = True  # queues added later start at their beginning
        return True

    def position(self, q: int) -> int:
        return self.positions[q] if q < len(self.positions) else 0

    def _pass(self) -> bool:
        """Read what is new in every queue and route it in CommitLog order, so that
        one publisher's messages to different MQTT topics (different queues) reach
        a wildcard subscriber in the order they were stored. All gets of a pass
        happen without yielding, so no put lands in between; where a queue had
        more than one get returns, records past its last one wait for the next
        pass. Returns whether any position moved."""
        broker = self.broker
        topic = self.topic
        positions = self.positions
        available = broker.available
        fetched: list[tuple[int, int, StoredRecord]] = []
        cut = math.inf
        moved = False
        for q in range(len(positions)):
            pos = positions[q]
            if not available(topic, q, pos, principal=SYSTEM):
                if pos == 0:
                    lo, _ = broker.queue_bounds(topic, q, principal=SYSTEM)
                    if lo > pos:
                        positions[q] = lo
                continue
            try:
                res = broker.get(None, topic, q, pos, DISPATCH_BATCH, DISPATCH_BYTES,
                                 principal=SYSTEM)
            except FerryError:
                break  # deleted or changed under us: re-check the topic
            if res.status is GetStatus.OFFSET_TOO_SMALL or not res.records:
                if res.next_offset != pos:
                    positions[q] = res.next_offset  # retention removed what we had not read
                    moved = True
                continue
            fetched.extend((r.physical_offset, q, r) for r in res.records)
            if res.next_offset < res.max_offset:
                cut = min(cut, res.records[-1].physical_offset)
        if len(fetched) > 1:
            fetched.sort(key=_first)
        route = self.route
        read = self.reader.messages
        tracer = broker.tracer
        for phys, q, r in fetched:
            if phys > cut:
                break
            pos = positions[q]
            try:
                for off, body, props in read(r, pos):
                    route(topic, q, off, body, props)
                    if tracer is not None:  # the deliver span (core/tracing.py)
                        tracer.delivered(Delivery("mqtt", None, topic, q, (ConsumedMessage(
                            topic, q, off, body, props, 0, r.store_timestamp, phys,
                            _NO_HOST),), time.time_ns()))
            except Exception:  # a bug must not stop the topic: skip, count, log
                self.stats["internal_errors"] += 1
                log.exception("routing %s/%d from %d failed", topic, q, pos)
            positions[q] = r.queue_offset + r.count
            moved = True
        return moved

    async def run(self) -> None:
        broker = self.broker
        topic = self.topic
        default_queues = broker.config.default_queues
        while not self.stopped:
            if not self._ensure_positions():
                await broker.wait_any([(topic, q, 0) for q in range(default_queues)], IDLE_WAIT,
                                      principal=SYSTEM)
                continue
            moved = self._pass()
            if moved:
                await trio.sleep(0)
            elif await broker.wait_any([(topic, q, p) for q, p in enumerate(self.positions)],
                                       IDLE_WAIT, principal=SYSTEM):
                # Woken by a put: let the other ready readers put theirs too, so
                # one pass routes them all.
                await trio.sleep(0)
