"""``$SYS`` topics: the broker's statistics in Mosquitto's names, served from memory.

Every ``sys_interval`` seconds the values that changed are delivered to the
online subscribers of matching filters; the latest values are retained (in
memory only), and refreshed for a new subscriber. ``$``-topics are never
stored, and clients may not publish to them (docs/mqtt.md).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterator, Mapping
from typing import Protocol

import trio

from .delivery import Delivery
from .retained import RetainedStore
from .sessions import Session

VERSION = "ferrymq-mqtt 0.1"


class SysSource(Protocol):
    """What ``$SYS`` reads and where it delivers (the hub)."""

    @property
    def sessions(self) -> Mapping[str, Session]: ...

    @property
    def stats(self) -> collections.Counter[str]: ...

    @property
    def retained(self) -> RetainedStore: ...

    def subscription_count(self) -> int: ...

    def publish_local(self, d: Delivery) -> None: ...


class SysTopics:
    def __init__(self, source: SysSource, interval: float) -> None:
        self.source = source
        self.interval = interval
        self.retained = RetainedStore()
        self.started = time.monotonic()

    def values(self) -> dict[str, str]:
        src = self.source
        st = src.stats
        online = sum(1 for s in src.sessions.values() if s.client is not None)
        return {
            "$SYS/broker/version": VERSION,
            "$SYS/broker/uptime": f"{int(time.monotonic() - self.started)} seconds",
            "$SYS/broker/clients/connected": str(online),
            "$SYS/broker/clients/disconnected": str(len(src.sessions) - online),
            "$SYS/broker/clients/total": str(len(src.sessions)),
            "$SYS/broker/clients/maximum": str(st["max_online"]),
            "$SYS/broker/messages/received": str(st["received"]),
            "$SYS/broker/messages/sent": str(st["sent"]),
            "$SYS/broker/messages/dropped": str(st["dropped"]),
            "$SYS/broker/publish/denied": str(st["publish_denied"]),
            "$SYS/broker/bytes/received": str(st["bytes_received"]),
            "$SYS/broker/bytes/sent": str(st["bytes_sent"]),
            "$SYS/broker/subscriptions/count": str(src.subscription_count()),
            "$SYS/broker/retained messages/count": str(len(src.retained.messages)),
            "$SYS/broker/connections/total": str(st["connects"]),
        }

    def retained_for(self, topic_filter: str) -> Iterator[Delivery]:
        """The current values a ``$SYS`` filter matches (fresh for a new subscriber)."""
        if topic_filter.startswith("$SYS") and self.interval > 0:
            for topic, value in self.values().items():
                self.retained.set(Delivery(topic, value.encode(), 0, True, {}, "", None))
            yield from self.retained.match(topic_filter)

    def publish(self) -> None:
        """Deliver the values that changed since the last time."""
        for topic, value in self.values().items():
            old = self.retained.messages.get(topic)
            if old is not None and old.payload == value.encode():
                continue
            d = Delivery(topic, value.encode(), 0, True, {}, "", None)
            self.retained.set(d)
            self.source.publish_local(Delivery(topic, d.payload, 0, False, {}, "", None))

    async def run(self) -> None:
        while True:
            self.publish()
            await trio.sleep(self.interval)
