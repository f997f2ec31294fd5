"""The door's one store path: every application message an MQTT client sends reaches the store here.

QoS 0 and 1 PUBLISHes read together, a QoS 2 PUBLISH, a will: each is a list
of ``Publish`` values given to ``StorePath.store``, which

1. maps each onto a broker ``Message`` (``mapping.to_message``; the MQTT
   topic's route and plain property dict are cached, so the hot path builds
   the Message without a coroutine), creating its broker topic if needed;
2. stores them with one ``Broker.put`` per (broker topic, queue) (a timed
   message on its own: a batch record is delivered at once);
3. applies the retain flag of each stored one to the retained messages, and
   makes them durable before returning when one had QoS 1 or 2 (so the
   PUBACK / PUBREC that follows never promises what a crash could lose).

It returns, per message, None (stored) or the ``FerryError`` that stopped it;
the caller answers (``errors.answer_for``).
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ...core.access import SYSTEM, Principal
from ...core.broker import Broker
from ...core.errors import FerryError, TopicNotFound
from ...core.message import Message
from ...core.metadata import TopicConfig
from ...core.metrics import DoorMetrics
from ...protocols.mqtt.packets import Publish
from . import mapping
from .delivery import Delivery
from .retained import RetainedStore
from .state import MqttState

ROUTE_CACHE_MAX = 10_000  # cached MQTT topics (publish routes, plain property dicts)
BATCH_BYTES = 1 << 20  # payload bytes per batch record at most (the core allows 4 MiB)


class StorePath:
    """See the module docstring. ``topic_created(name)`` is called before a publish
    creates a broker topic (its dispatcher must start before the put)."""

    def __init__(self, broker: Broker, retained: RetainedStore, state: MqttState,
                 stats: collections.Counter[str], topic_created: Callable[[str], None]) -> None:
        self.broker = broker
        self.retained = retained
        self.state = state
        self.stats = stats
        self.topic_created = topic_created
        self.door_metrics: DoorMetrics | None = None  # the hub's, once it has them
        # MQTT topic -> (its topic's config, broker topic, queue): a publish skips
        # the name mapping and the hash while the topic's config is unchanged.
        self._routes: dict[str, tuple[TopicConfig, str, int]] = {}
        self._plain_props: dict[tuple[str, int, bool, str], dict[str, str]] = {}

    def cached_message(self, topic: str, payload: bytes, qos: int, retain: bool,
                       publisher: str, props: Mapping[int, Any],
                       checked: dict[str, TopicConfig] | None = None) -> Message | None:
        """``message_for`` without a coroutine, for a topic whose route is known and
        that carries no 5.0 properties (the hot path); None otherwise. ``checked``:
        broker topics whose configuration was found unchanged since the caller last
        yielded (the caller empties it after every await), so a batch of publishes
        to one topic looks its configuration up once."""
        hit = self._routes.get(topic)
        if hit is None or props:
            return None
        if checked is None or checked.get(hit[1]) is not hit[0]:
            if self.broker.find_topic(hit[1], principal=SYSTEM) is not hit[0]:
                return None
            if checked is not None:
                checked[hit[1]] = hit[0]
        plain = self._plain_props.get((topic, qos, retain, publisher))
        if plain is None:
            return None
        return Message(hit[1], payload, plain, hit[2])

    async def message_for(self, topic: str, payload: bytes, qos: int, retain: bool,
                          publisher: str, props: Mapping[int, Any]) -> Message:
        """The broker Message of an MQTT application message, its topic created if
        needed (before any put, so wildcard subscribers see its first message)."""
        broker = self.broker
        hit = self._routes.get(topic)
        if hit is not None and broker.find_topic(hit[1], principal=SYSTEM) is hit[0]:
            bt, queue = hit[1], hit[2]
        else:
            bt = mapping.broker_topic(topic)
            try:
                t = broker.topic(bt, principal=SYSTEM)
            except TopicNotFound:
                if not broker.config.auto_create_topics:
                    raise
                self.topic_created(bt)
                t = await broker.create_topic(bt, exist_ok=True, principal=SYSTEM)
            queue = mapping.queue_for(topic, t.queues)
            if len(self._routes) >= ROUTE_CACHE_MAX:
                self._routes.clear()
            self._routes[topic] = (t, bt, queue)
        if not props:
            # The common message has no MQTT 5 properties: its store properties
            # are the same dict for every message of a publisher and topic.
            key = (topic, qos, retain, publisher)
            plain = self._plain_props.get(key)
            if plain is None:
                if len(self._plain_props) >= ROUTE_CACHE_MAX:
                    self._plain_props.clear()
                plain = self._plain_props[key] = dict(
                    mapping.to_message(topic, queue, b"", qos, retain, publisher, {}).properties)
            return Message(bt, payload, plain, queue)
        return mapping.to_message(topic, queue, payload, qos, retain, publisher, props)

    async def store(self, publishes: Sequence[Publish], publisher: str,
                    principal: Principal = SYSTEM) -> list[FerryError | None]:
        """Store ``publishes`` (all from ``publisher``), retain what asks for it; per
        message None or the error that stopped it (see the module docstring)."""
        n = len(publishes)
        errors: list[FerryError | None] = [None] * n
        messages: list[Message | None] = [None] * n
        groups: dict[tuple[str, int], list[int]] = {}
        payload_bytes = 0
        cached = self.cached_message
        checked: dict[str, TopicConfig] = {}
        for i, p in enumerate(publishes):
            try:
                m = cached(p.topic, p.payload, p.qos, p.retain, publisher, p.properties, checked)
                if m is None:
                    checked.clear()  # the next await may change a topic
                    m = await self.message_for(p.topic, p.payload, p.qos, p.retain, publisher,
                                               p.properties)
            except FerryError as exc:
                errors[i] = exc
                continue
            messages[i] = m
            payload_bytes += len(p.payload)
            if payload_bytes > BATCH_BYTES:
                checked.clear()
                await self._put_groups(groups, messages, errors, principal)
                groups.clear()
                payload_bytes = len(p.payload)
            # A timed message is put on its own: a batch record is delivered at once.
            key = (m.topic, -1 - i) if p.properties and mapping.is_timed(m) \
                else (m.topic, m.queue_id)
            groups.setdefault(key, []).append(i)
        await self._put_groups(groups, messages, errors, principal)
        durable = retained = False
        for i, p in enumerate(publishes):
            m = messages[i]
            if p.retain and m is not None and errors[i] is None:
                self.retained.apply(Delivery(p.topic, p.payload, p.qos, True,
                                             dict(m.properties), publisher, None))
                retained = True
                durable |= p.qos > 0
        if retained:
            self.state.retained_changed()
            if durable:
                await self.state.retained_durable()
        return errors

    async def _put_groups(self, groups: dict[tuple[str, int], list[int]],
                          messages: list[Message | None], errors: list[FerryError | None],
                          principal: Principal) -> None:
        put = self.broker.put
        for idx in groups.values():
            try:
                if len(idx) == 1:
                    await put(messages[idx[0]], principal=principal)  # type: ignore[arg-type]
                else:
                    await put([messages[i] for i in idx],  # type: ignore[misc]
                              principal=principal)
            except FerryError as exc:
                for i in idx:
                    errors[i] = exc
            else:
                self.stats["received"] += len(idx)
                if self.door_metrics is not None:
                    self.door_metrics.messages_in(messages[idx[0]].topic,  # type: ignore[union-attr]
                                                  len(idx))
