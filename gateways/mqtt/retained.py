"""Retained messages (3.3.1.3): kept by topic in a level trie, so that a subscribing filter finds
its matches without a scan of every retained topic.

What gets retained is decided in one place, the door's store path
(``publish.StorePath``): after the message is stored, ``apply`` keeps it, or
deletes the topic's retained message when the payload is empty. The store
itself is memory; ``snapshot``/``restore`` are what ``state.MqttState`` saves.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ...core.message import now_ms
from .delivery import Delivery

_VALUE = "\x00"  # the trie key of a topic's message: a key no topic level can be (1.5.4)


class RetainedStore:
    """Retained messages by topic name, with a level trie for filter look-ups."""

    def __init__(self) -> None:
        self.messages: dict[str, Delivery] = {}
        self._root: dict[str, Any] = {}

    def apply(self, d: Delivery) -> None:
        """3.3.1.3: keep ``d`` as its topic's retained message, or (empty payload)
        delete the topic's retained message."""
        if d.payload:
            self.set(d)
        else:
            self.delete(d.topic)

    def set(self, d: Delivery) -> None:
        node = self._root
        for level in d.topic.split("/"):
            node = node.setdefault(level, {})
        node[_VALUE] = d
        self.messages[d.topic] = d

    def delete(self, topic: str) -> bool:
        if self.messages.pop(topic, None) is None:
            return False
        path = [self._root]
        levels = topic.split("/")
        for level in levels:
            path.append(path[-1][level])
        del path[-1][_VALUE]
        for i in range(len(levels), 0, -1):
            if path[i]:
                break
            del path[i - 1][levels[i - 1]]
        return True

    def live(self, topic_filter: str) -> Iterator[Delivery]:
        """The unexpired retained messages a filter matches."""
        now = now_ms()
        for d in self.match(topic_filter):
            if not d.expired(now):
                yield d

    def match(self, topic_filter: str) -> Iterator[Delivery]:
        levels = topic_filter.split("/")
        n = len(levels)

        def walk(node: dict[str, Any], i: int) -> Iterator[Delivery]:
            if i == n:
                d = node.get(_VALUE)
                if d is not None:
                    yield d
                return
            level = levels[i]
            if level == "#":
                stack = [node]
                while stack:
                    cur = stack.pop()
                    for k, v in cur.items():
                        if k == _VALUE:
                            yield v
                        elif not (i == 0 and k.startswith("$")):
                            stack.append(v)
                return
            if level == "+":
                for k, v in node.items():
                    if k != _VALUE and not (i == 0 and k.startswith("$")):
                        yield from walk(v, i + 1)
                return
            nxt = node.get(level)
            if nxt is not None:
                yield from walk(nxt, i + 1)

        yield from walk(self._root, 0)

    def snapshot(self) -> list[Any]:
        return [[d.topic, d.payload, d.qos, d.props, d.publisher] for d in self.messages.values()]

    def restore(self, rows: list[Any]) -> None:
        for topic, payload, qos, props, publisher in rows:
            self.set(Delivery(topic, payload, qos, True, dict(props), publisher, None))
