"""Routing: one trie of every online subscription, and the way of a stored message to sessions.

``route`` gets each stored message once (from a dispatcher), matches its MQTT
topic against the trie (cost: the topic's depth times the wildcards met,
never the number of filters; the matches of a topic are cached until the
trie changes) and hands it to each matching online session at
min(publish QoS, subscription QoS), one copy per client (3.3.4 / 3.1.1
3.3.5), and to each matching shared subscription, which picks one member.
"""

from __future__ import annotations

from collections.abc import Mapping

from ...protocols.mqtt.topics import TopicTrie
from . import mapping
from .delivery import Delivery, SubOpts
from .sessions import Session
from .shared import SharedGroup

MATCH_CACHE_MAX = 10_000  # cached MQTT topics' trie matches


class Router:
    """Subscriptions of online sessions (``trie``) and shared subscriptions (``groups``)."""

    def __init__(self, sessions: Mapping[str, Session]) -> None:
        self.sessions = sessions
        self.trie: TopicTrie[str, SubOpts] = TopicTrie()
        # MQTT topic -> (trie matches, each client at most once): cleared whenever
        # the trie changes, so a stream of messages to one topic matches once.
        self._matches: dict[str, tuple[list[tuple[str, SubOpts]], bool]] = {}
        self.shared_trie: TopicTrie[tuple[str, str], SharedGroup] = TopicTrie()
        self.groups: dict[tuple[str, str], SharedGroup] = {}

    def add(self, topic_filter: str, client_id: str, so: SubOpts) -> None:
        self.trie.add(topic_filter, client_id, so)
        self._matches.clear()

    def remove(self, topic_filter: str, client_id: str) -> None:
        self.trie.remove(topic_filter, client_id)
        self._matches.clear()

    def add_group(self, g: SharedGroup) -> None:
        self.groups[g.key] = g
        self.shared_trie.add(g.filter, g.key, g)

    def remove_group(self, g: SharedGroup) -> None:
        del self.groups[g.key]
        self.shared_trie.remove(g.filter, g.key)

    def subscription_count(self) -> int:
        return self.trie.count + sum(len(g.members) for g in self.groups.values())

    def route(self, broker_topic: str, queue_id: int, offset: int, body: bytes,
              props: dict[str, str]) -> None:
        """One stored message to every matching online subscription."""
        topic = props.get(mapping.MQTT_TOPIC) or broker_topic
        d: Delivery | None = None
        hit = self._matches.get(topic)
        if hit is None:
            found = list(self.trie.match(topic))
            hit = (found, len(found) <= 1 or len({cid for cid, _ in found}) == len(found))
            if len(self._matches) >= MATCH_CACHE_MAX:
                self._matches.clear()
            self._matches[topic] = hit
        matches, once_each = hit
        if matches:
            d = Delivery.stored(topic, body, props, (broker_topic, queue_id, offset))
            if once_each:
                self._deliver_single(d, matches)
            else:
                hits: dict[str, list[SubOpts]] = {}
                for cid, so in matches:
                    hits.setdefault(cid, []).append(so)
                self.deliver(d, hits)
        if self.groups:
            for _, group in self.shared_trie.match(topic):
                if d is None:
                    d = Delivery.stored(topic, body, props, (broker_topic, queue_id, offset))
                group.dispatch(d)

    def _deliver_single(self, d: Delivery, matches: list[tuple[str, SubOpts]]) -> None:
        """``deliver`` when each client matched through one subscription (the
        common case: no grouping needed)."""
        sessions = self.sessions
        publisher = d.publisher
        dq = d.qos
        for cid, so in matches:
            if so.no_local and publisher == cid:
                continue
            s = sessions.get(cid)
            if s is None:
                continue
            c = s.client
            if c is not None and c.access.read_denies and not c.access.may_read(d.topic):
                continue
            sid = so.sub_id
            s.enqueue(d, so.qos if so.qos < dq else dq, d.retain and so.rap,
                      (sid,) if sid else ())

    def deliver(self, d: Delivery, hits: dict[str, list[SubOpts]]) -> None:
        """``d`` to each client of ``hits`` (client id -> its matching subscriptions)."""
        sessions = self.sessions
        publisher = d.publisher
        for cid, sos in hits.items():
            s = sessions.get(cid)
            if s is None:
                continue
            c = s.client
            if c is not None and c.access.read_denies and not c.access.may_read(d.topic):
                continue
            if len(sos) == 1:
                so = sos[0]
                if so.no_local and publisher == cid:
                    continue
                s.enqueue(d, min(so.qos, d.qos), d.retain and so.rap,
                          (so.sub_id,) if so.sub_id else ())
                continue
            # 3.3.4 / 3.1.1 3.3.5: overlapping subscriptions, one copy at the
            # highest QoS, carrying every matching Subscription Identifier.
            qos = -1
            sub_ids = []
            rap = False
            for so in sos:
                if so.no_local and publisher == cid:
                    continue
                qos = max(qos, so.qos)
                rap |= so.rap
                if so.sub_id:
                    sub_ids.append(so.sub_id)
            if qos >= 0:
                s.enqueue(d, min(qos, d.qos), d.retain and rap, tuple(sub_ids))

    def publish_local(self, d: Delivery) -> None:
        """Deliver a message that is not stored ($SYS) to matching online sessions."""
        hits: dict[str, list[SubOpts]] = {}
        for cid, so in self.trie.match(d.topic):
            hits.setdefault(cid, []).append(so)
        self.deliver(d, hits)
