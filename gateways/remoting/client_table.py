"""The broker's table of live clients (from HEART_BEAT) and of orderly-consumption queue locks.

RocketMQ keeps the same two tables (ProducerManager/ConsumerManager and
RebalanceLockManager): a client is known by its clientID, the connection it
heart-beats on, the producer groups it serves and, per consumer group, its
ConsumerData (subscriptions, consume model). A client silent for
``expiry_s`` (RocketMQ: 120 s) or whose connection closed leaves the table.
Membership changes of a consumer group are reported to the caller, which
notifies the members (NOTIFY_CONSUMER_IDS_CHANGED).

Queue locks: a queue of a group is locked by one client for ``lock_ttl_s``
(RocketMQ REBALANCE_LOCK_MAX_LIVE_TIME: 60 s), renewed by re-locking.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ...protocols.remoting.bodies import ConsumerData, MessageQueue, SubscriptionData

CLIENT_EXPIRY_S = 120.0  # RocketMQ ClientHousekeepingService: channel expired after 120 s
LOCK_TTL_S = 60.0  # RocketMQ RebalanceLockManager.REBALANCE_LOCK_MAX_LIVE_TIME


@dataclass
class ClientInfo:
    client_id: str
    conn: Any  # ServerConnection
    language: int = 0
    version: int = 0
    last_seen: float = field(default_factory=time.monotonic)
    producer_groups: set[str] = field(default_factory=set)
    consumers: dict[str, ConsumerData] = field(default_factory=dict)


class ClientTable:
    def __init__(self, expiry_s: float = CLIENT_EXPIRY_S, lock_ttl_s: float = LOCK_TTL_S) -> None:
        self.expiry_s = expiry_s
        self.lock_ttl_s = lock_ttl_s
        self.clients: dict[str, ClientInfo] = {}
        # (group, topic, broker name, queue id) -> (client id, expiry)
        self.locks: dict[tuple[str, str, str, int], tuple[str, float]] = {}
        self._producer_turn = 0

    # ------------------------------------------------------------ heartbeats

    def heartbeat(self, client_id: str, conn: Any, producer_groups: Iterable[str],
                  consumers: Iterable[ConsumerData], language: int = 0, version: int = 0
                  ) -> set[str]:
        """Record a heartbeat; returns the consumer groups whose membership changed."""
        info = self.clients.get(client_id)
        changed: set[str] = set()
        if info is None or info.conn is not conn:
            if info is not None:
                changed |= set(info.consumers)
            info = self.clients[client_id] = ClientInfo(client_id, conn, language, version)
        info.last_seen = time.monotonic()
        info.producer_groups = set(producer_groups)
        new = {c.groupName: c for c in consumers if c.groupName}
        changed |= set(new) ^ set(info.consumers)
        info.consumers = new
        return changed

    def unregister(self, client_id: str, producer_group: str | None,
                   consumer_group: str | None) -> set[str]:
        info = self.clients.get(client_id)
        if info is None:
            return set()
        changed = set()
        if producer_group:
            info.producer_groups.discard(producer_group)
        if consumer_group and info.consumers.pop(consumer_group, None) is not None:
            changed.add(consumer_group)
            self._unlock_client(client_id, consumer_group)
        if not info.producer_groups and not info.consumers:
            del self.clients[client_id]
        return changed

    def _drop(self, client_id: str) -> set[str]:
        info = self.clients.pop(client_id)
        self._unlock_client(client_id, None)
        return set(info.consumers)

    def connection_closed(self, conn: Any) -> set[str]:
        changed: set[str] = set()
        for cid in [c.client_id for c in self.clients.values() if c.conn is conn]:
            changed |= self._drop(cid)
        return changed

    def expire(self, now: float | None = None) -> set[str]:
        """Drop clients silent for longer than the expiry; returns changed groups."""
        now = time.monotonic() if now is None else now
        changed: set[str] = set()
        for cid in [c.client_id for c in self.clients.values()
                    if now - c.last_seen > self.expiry_s]:
            changed |= self._drop(cid)
        return changed

    # ------------------------------------------------------------ queries

    def members(self, group: str) -> list[ClientInfo]:
        return sorted((c for c in self.clients.values() if group in c.consumers),
                      key=lambda c: c.client_id)

    def subscription(self, group: str, topic: str) -> SubscriptionData | None:
        """The group's subscription to ``topic`` as its newest heartbeat said."""
        best: tuple[float, SubscriptionData] | None = None
        for c in self.clients.values():
            cd = c.consumers.get(group)
            if cd is None:
                continue
            for s in cd.subscriptionDataSet:
                if s.topic == topic and (best is None or c.last_seen > best[0]):
                    best = (c.last_seen, s)
        return best[1] if best else None

    def consumer_data(self, group: str) -> ConsumerData | None:
        for c in self.members(group):
            return c.consumers[group]
        return None

    def producer_groups(self) -> dict[str, list[ClientInfo]]:
        out: dict[str, list[ClientInfo]] = {}
        for c in self.clients.values():
            for g in c.producer_groups:
                out.setdefault(g, []).append(c)
        return out

    def live_producers(self, group: str) -> list[ClientInfo]:
        """The clients that heart-beat ``group`` as a producer group on a connection that
        is still open, starting with a different one on each call (RocketMQ's
        ProducerManager.getAvailableChannel rotates the same way), so the check-backs
        of a group spread over its producers and a dead one is passed over."""
        live = sorted((c for c in self.clients.values()
                       if group in c.producer_groups and not getattr(c.conn, "closed", False)),
                      key=lambda c: c.client_id)
        if not live:
            return []
        self._producer_turn += 1
        k = self._producer_turn % len(live)
        return live[k:] + live[:k]

    # ------------------------------------------------------------ locks

    def lock(self, group: str, client_id: str, queues: Iterable[MessageQueue],
             now: float | None = None) -> list[MessageQueue]:
        """Lock what is free, expired, or already ours; returns the queues now ours."""
        now = time.monotonic() if now is None else now
        ok = []
        for q in queues:
            key = (group, q.topic, q.brokerName, q.queueId)
            held = self.locks.get(key)
            if held is None or held[0] == client_id or held[1] <= now:
                self.locks[key] = (client_id, now + self.lock_ttl_s)
                ok.append(q)
        return ok

    def unlock(self, group: str, client_id: str, queues: Iterable[MessageQueue]) -> None:
        for q in queues:
            key = (group, q.topic, q.brokerName, q.queueId)
            held = self.locks.get(key)
            if held is not None and held[0] == client_id:
                del self.locks[key]

    def _unlock_client(self, client_id: str, group: str | None) -> None:
        for key in [k for k, v in self.locks.items()
                    if v[0] == client_id and (group is None or k[0] == group)]:
            del self.locks[key]
