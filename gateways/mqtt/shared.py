"""Shared subscriptions ``$share/<name>/<filter>`` (MQTT 5.0 4.8.2; accepted from 3.1.1 clients too).

Each matching message goes to one online member, round robin, preferring
members with room in their window. A member that leaves hands back what it
had not finished (``hand_over``): its queued messages when it goes offline,
and also its unacknowledged QoS 1 messages when its session ends, so that
another member gets them; with no member online they wait in the group
(``orphans``) for the next one. While every member is an offline persistent
session, the group *holds* its read position (``held``): its committed
offsets stop at the first message nobody could take, and the first member
back gets the backlog (``Hub.catch_up_group``).
"""

from __future__ import annotations

import collections
from collections.abc import Mapping

from .delivery import Delivery, Outgoing, SubOpts, core_group_name
from .sessions import Session

SHARE_GROUP_PREFIX = "mqtt-share-"


class SharedGroup:
    """One shared subscription and its members (client id -> options)."""

    def __init__(self, name: str, topic_filter: str, sessions: Mapping[str, Session],
                 stats: collections.Counter[str], max_queued: int) -> None:
        self.name = name
        self.filter = topic_filter
        self.key = (name, topic_filter)
        self.sessions = sessions
        self.stats = stats
        self.max_queued = max_queued
        self.members: dict[str, SubOpts] = {}
        self._rr = 0
        self.group = core_group_name(SHARE_GROUP_PREFIX, f"{name}/{topic_filter}")
        # (topic, queue) -> first offset routed while no member was online: the
        # group's committed offsets stop there, and ``Hub.catch_up_group`` starts there.
        self.held: dict[tuple[str, int], int] = {}
        # Messages a leaving member handed back while no other member was online.
        self.orphans: collections.deque[Delivery] = collections.deque()

    def _online(self, exclude: str | None) -> list[tuple[Session, SubOpts]]:
        sessions = self.sessions
        out = []
        for cid, so in self.members.items():
            s = sessions.get(cid)
            if s is not None and s.client is not None and cid != exclude:
                out.append((s, so))
        return out

    def dispatch(self, d: Delivery, exclude: str | None = None) -> None:
        """Give ``d`` to one online member (not ``exclude``); with none online, a
        stored message waits in the store (the held position), another is dropped."""
        online = self._online(exclude)
        if not online:
            # Only offline persistent members: the message waits in the store.
            if d.src is not None:
                self.held.setdefault((d.src[0], d.src[1]), d.src[2])
            else:
                self.stats["dropped"] += 1
            return
        self._give(d, online)

    def _give(self, d: Delivery, online: list[tuple[Session, SubOpts]]) -> None:
        # Only a member that may read the message's address gets it (the core's
        # check, per message, as every delivery: docs/security.md).
        online = [m for m in online if m[0].client is None or not m[0].client.access.read_denies
                  or m[0].client.access.may_read(d.topic)]
        if not online:
            self.stats["share_denied"] += 1
            return
        n = len(online)
        start = self._rr % n
        choice = online[start]
        for i in range(n):
            s, so = online[(start + i) % n]
            if not s.pending and s.flows.has_room:
                choice = online[(start + i) % n]
                break
        self._rr = (self._rr + 1) % n
        s, so = choice
        s.enqueue(d, min(d.qos, so.qos), False, (so.sub_id,) if so.sub_id else (), self.key)

    def hand_over(self, outs: list[Outgoing], leaving: str) -> None:
        """4.8.2: messages of member ``leaving`` that it will not complete go to
        another online member, each as a new delivery to that member (new packet
        id, DUP 0: 3.3.1.1 [MQTT-3.3.1-3], the packet is no retransmission); with
        no member online they wait for the next one (``orphans``)."""
        if not outs:
            return
        online = self._online(leaving)
        for out in outs:
            if online:
                self._give(out.delivery, online)
            else:
                if len(self.orphans) >= self.max_queued:
                    self.orphans.popleft()
                    self.stats["dropped"] += 1
                self.orphans.append(out.delivery)

    def flush_orphans(self) -> None:
        """A member is online again: it gets what others handed back meanwhile."""
        if not self.orphans:
            return
        online = self._online(None)
        if not online:
            return
        orphans, self.orphans = self.orphans, collections.deque()
        for d in orphans:
            self._give(d, online)

    def held_positions(self) -> dict[tuple[str, int], int]:
        """Per (topic, queue), the first offset the group has not finished with: its
        held position, or an orphan's (so a restart redelivers rather than loses it)."""
        held = dict(self.held)
        for d in self.orphans:
            if d.src is not None:
                key = (d.src[0], d.src[1])
                held[key] = min(held.get(key, d.src[2]), d.src[2])
        return held
