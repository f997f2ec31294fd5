"""Topic names and filters: validation (4.7), shared subscriptions (4.8.2), the topic trie.

The trie costs time proportional to the topic's depth times the wildcards
met on the way, never to the number of filters: 10,000 subscribers of
``+/status`` and ``devices/#`` are each reached in a handful of dictionary
look-ups.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .codec import MqttError
from .constants import Reason

SHARE_PREFIX = "$share/"
K = TypeVar("K")
V = TypeVar("V")


def valid_topic_name(name: str) -> bool:
    """4.7.3 [MQTT-4.7.3-1]: at least one character; 4.7.1 [MQTT-3.3.2-2]: no wildcards."""
    return bool(name) and "+" not in name and "#" not in name


def valid_topic_filter(topic_filter: str) -> bool:
    """4.7.1.2-3: ``#`` alone in the last level, ``+`` alone in its level."""
    if not topic_filter:
        return False
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """A SUBSCRIBE topic filter split into its share name (None when not shared) and filter."""

    share: str | None
    filter: str


def parse_filter(raw: str) -> FilterSpec:
    """Validate a subscription filter; ``$share/<name>/<filter>`` (4.8.2) yields its
    share name. Raises MqttError(0x8F Topic Filter invalid)."""
    if raw.startswith(SHARE_PREFIX):
        rest = raw[len(SHARE_PREFIX):]
        name, sep, flt = rest.partition("/")
        # 4.8.2 [MQTT-4.8.2-1, -2]: a non-empty share name without / + #, then a filter.
        if not sep or not name or "+" in name or "#" in name or not valid_topic_filter(flt):
            raise MqttError(f"invalid shared subscription {raw!r}", Reason.TOPIC_FILTER_INVALID)
        return FilterSpec(name, flt)
    if not valid_topic_filter(raw):
        raise MqttError(f"invalid topic filter {raw!r}", Reason.TOPIC_FILTER_INVALID)
    return FilterSpec(None, raw)


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Whether one filter matches one topic name (4.7; the trie's reference)."""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False  # 4.7.2 [MQTT-4.7.2-1]
    f = topic_filter.split("/")
    t = topic.split("/")
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


def filter_covers(outer: str, inner: str) -> bool:
    """Whether every topic ``inner`` can match is matched by ``outer`` (ACL checks
    of subscriptions: a subscription is allowed only inside a granted filter)."""
    o = outer.split("/")
    i = inner.split("/")
    for n, level in enumerate(o):
        if level == "#":
            return True
        if n >= len(i):
            return False
        if level == "+":
            if i[n] == "#":
                return False
            continue
        if level != i[n]:
            return False
    return len(o) == len(i)


class _Node(Generic[K, V]):
    __slots__ = ("children", "values")

    def __init__(self) -> None:
        self.children: dict[str, _Node[K, V]] = {}
        self.values: dict[K, V] = {}


class TopicTrie(Generic[K, V]):
    """Filters -> {key: value}. ``match(topic)`` yields (key, value, filter) of every
    filter matching ``topic``; a key subscribed through two filters appears twice."""

    def __init__(self) -> None:
        self._root: _Node[K, V] = _Node()
        self.count = 0

    def add(self, topic_filter: str, key: K, value: V) -> bool:
        """Set the value of ``key`` under ``topic_filter``; True if it was not there."""
        node = self._root
        for level in topic_filter.split("/"):
            nxt = node.children.get(level)
            if nxt is None:
                nxt = node.children[level] = _Node()
            node = nxt
        new = key not in node.values
        node.values[key] = value
        self.count += new
        return new

    def get(self, topic_filter: str, key: K) -> V | None:
        node = self._root
        for level in topic_filter.split("/"):
            nxt = node.children.get(level)
            if nxt is None:
                return None
            node = nxt
        return node.values.get(key)

    def remove(self, topic_filter: str, key: K) -> bool:
        """Remove ``key`` from ``topic_filter``, pruning empty nodes; True if it was there."""
        path = [self._root]
        levels = topic_filter.split("/")
        for level in levels:
            nxt = path[-1].children.get(level)
            if nxt is None:
                return False
            path.append(nxt)
        if path[-1].values.pop(key, _MISSING) is _MISSING:
            return False
        self.count -= 1
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.values or node.children:
                break
            del path[depth - 1].children[levels[depth - 1]]
        return True

    def match(self, topic: str) -> Iterator[tuple[K, V]]:
        """Every (key, value) whose filter matches ``topic`` (4.7)."""
        levels = topic.split("/")
        n = len(levels)
        root = self._root
        stack: list[tuple[_Node[K, V], int]] = []
        children = root.children
        # 4.7.2: topics starting with $ are not matched by a leading wildcard.
        dollar = topic[:1] == "$"
        first = levels[0]
        nxt = children.get(first)
        if nxt is not None:
            stack.append((nxt, 1))
        if not dollar:
            nxt = children.get("+")
            if nxt is not None:
                stack.append((nxt, 1))
            nxt = children.get("#")
            if nxt is not None:
                yield from nxt.values.items()
        while stack:
            node, depth = stack.pop()
            if depth == n:
                yield from node.values.items()
                hash_node = node.children.get("#")  # "a/#" matches "a" (4.7.1.2)
                if hash_node is not None:
                    yield from hash_node.values.items()
                continue
            ch = node.children
            if not ch:
                continue
            nxt = ch.get("#")
            if nxt is not None:
                yield from nxt.values.items()
            nxt = ch.get(levels[depth])
            if nxt is not None:
                stack.append((nxt, depth + 1))
            nxt = ch.get("+")
            if nxt is not None:
                stack.append((nxt, depth + 1))

    def items(self) -> Iterator[tuple[str, K, V]]:
        """Every (filter, key, value)."""
        stack: list[tuple[_Node[K, V], str]] = [(c, lvl) for lvl, c in self._root.children.items()]
        while stack:
            node, path = stack.pop()
            for k, v in node.values.items():
                yield path, k, v
            stack.extend((c, f"{path}/{lvl}") for lvl, c in node.children.items())


_MISSING = object()
