"""Broker metadata: topics, consumer groups, tombstones and committed offsets, as state-log tables.

The tables live in memory (``Metadata``) and change only through the state log
(core/statelog.py): every create, update, delete and offset commit is a record
of the CommitLog, applied here by the tables below at put time and at recovery.
The loop thread owns the tables.

Round 1 kept them as JSON files, ``<data>/config/topics.json``, ``groups.json``
and ``offsets.json`` (the names RocketMQ operators know from topics.json /
subscriptionGroup.json / consumerOffset.json), rewritten whole on every change:
``load_legacy`` reads them once so the broker can import them into the state
log, and ``retire_legacy`` renames them (never deletes them).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import InvalidGroupName, InvalidTopicName
from .store.files import read_file

if TYPE_CHECKING:
    from .statelog import Table

PERM_READ = 0x4  # RocketMQ PermName
PERM_WRITE = 0x2
PERM_READ_WRITE = PERM_READ | PERM_WRITE

MESSAGE_TYPES = ("NORMAL", "FIFO", "DELAY", "TRANSACTION", "MIXED")

TOPIC_NAME = re.compile(r"^[A-Za-z0-9._%|-]{1,127}$")
"""RocketMQ's topic characters (``%|a-zA-Z0-9_-``) plus Kafka's dot; 127 as RocketMQ."""

MAX_GROUP_NAME = 255
MAX_QUEUES = 1024

RETRY_PREFIX = "%RETRY%"
DLQ_PREFIX = "%DLQ%"
SYSTEM_PREFIXES = ("%RETRY%", "%DLQ%", "RMQ_SYS_", "SCHEDULE_TOPIC", "TBW102")

def validate_topic_name(name: str) -> str:
    if not isinstance(name, str) or not TOPIC_NAME.match(name) or name in (".", ".."):
        raise InvalidTopicName(
            f"invalid topic name {name!r}: 1-127 characters of A-Z a-z 0-9 . _ - % |")
    return name


def validate_group_name(name: str) -> str:
    if (not isinstance(name, str) or not 0 < len(name) <= MAX_GROUP_NAME
            or any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in name)):
        raise InvalidGroupName(
            f"invalid group name {name!r}: 1-{MAX_GROUP_NAME} characters, no control characters")
    return name


@dataclass(frozen=True, slots=True)
class TopicConfig:
    name: str
    queues: int
    perm: int = PERM_READ_WRITE
    message_type: str = "NORMAL"
    created_at: int = 0
    # The CommitLog offset when this incarnation of the topic was created: older
    # records under the same name belong to a deleted predecessor.
    created_phys: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)

    @property
    def readable(self) -> bool:
        return bool(self.perm & PERM_READ)

    @property
    def writable(self) -> bool:
        return bool(self.perm & PERM_WRITE)

    @property
    def system(self) -> bool:
        return self.name.startswith(SYSTEM_PREFIXES)

    def to_json(self) -> dict[str, object]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["attributes"] = dict(self.attributes)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> TopicConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["attributes"] = dict(d.get("attributes") or {})  # type: ignore[call-overload]
        return cls(**known)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class GroupConfig:
    name: str
    consume_enable: bool = True
    broadcast: bool = False
    max_reconsume_times: int = 16
    retry_queues: int = 1
    created_at: int = 0
    attributes: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, object]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["attributes"] = dict(self.attributes)
        return d

    @classmethod
    def from_json(cls, d: Mapping[str, object]) -> GroupConfig:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        known["attributes"] = dict(d.get("attributes") or {})  # type: ignore[call-overload]
        return cls(**known)  # type: ignore[arg-type]


LEGACY_FILES = ("topics.json", "groups.json", "offsets.json")
LEGACY_SUFFIX = ".imported"

# The state-log namespaces of the tables below.
NS_TOPIC, NS_GROUP, NS_OFFSET, NS_TOMBSTONE = "topic", "group", "offset", "tombstone"

OffsetKey = tuple[str, str, int]  # (group, topic, queue id)


class Metadata:
    """The tables. ``topics`` and ``groups`` hold immutable configs (replaced, never
    changed in place, so a reader may keep one and compare identity)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory  # round 1's config directory (legacy files)
        self.topics: dict[str, TopicConfig] = {}
        self.groups: dict[str, GroupConfig] = {}
        # group -> topic -> queue id -> next offset to consume
        self.offsets: dict[str, dict[str, dict[int, int]]] = {}
        # topic -> CommitLog offset at deletion: older records of that name are dead
        self.tombstones: dict[str, int] = {}

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    # Offsets

    def committed(self, group: str, topic: str, queue_id: int) -> int | None:
        return self.offsets.get(group, {}).get(topic, {}).get(queue_id)

    def offset_keys(self, *, group: str | None = None, topic: str | None = None
                    ) -> list[OffsetKey]:
        """The (group, topic, queue) keys committed, of one group and/or one topic."""
        groups = [group] if group is not None else list(self.offsets)
        out: list[OffsetKey] = []
        for g in groups:
            for t, qs in self.offsets.get(g, {}).items():
                if topic is None or t == topic:
                    out.extend((g, t, q) for q in qs)
        return out

    # Round 1's files

    def load_legacy(self) -> list[str]:
        """Read round 1's JSON files into the tables; returns the paths found."""
        found = []
        raw = read_file(self.path("topics.json"))
        if raw is not None:
            found.append(self.path("topics.json"))
            doc = json.loads(raw or b"{}")
            for t in doc.get("topics", []):
                self.topics[t["name"]] = TopicConfig.from_json(t)
            self.tombstones.update({k: int(v) for k, v in doc.get("tombstones", {}).items()})
        raw = read_file(self.path("groups.json"))
        if raw is not None:
            found.append(self.path("groups.json"))
            for g in json.loads(raw or b"{}").get("groups", []):
                self.groups[g["name"]] = GroupConfig.from_json(g)
        raw = read_file(self.path("offsets.json"))
        if raw is not None:
            found.append(self.path("offsets.json"))
            for g, ts in json.loads(raw or b"{}").get("offsets", {}).items():
                for t, qs in ts.items():
                    for q, o in qs.items():
                        self.offsets.setdefault(g, {}).setdefault(t, {})[int(q)] = int(o)
        return found

    def legacy_paths(self) -> list[str]:
        return [p for p in map(self.path, LEGACY_FILES) if os.path.exists(p)]

    @staticmethod
    def retire_legacy(paths: Iterable[str]) -> None:
        """Rename imported files (``.imported``): kept for the operator, never read again."""
        for p in paths:
            os.replace(p, p + LEGACY_SUFFIX)

    # The state-log tables

    def tables(self, on_topic: Callable[[str, TopicConfig | None, TopicConfig | None], None],
               pinned: Iterable[str] = ()) -> dict[str, Table]:
        """The four namespaces as state-log tables. ``on_topic(name, old, new)`` runs
        after every topic change (the broker drops a deleted topic's queues there);
        ``pinned`` topics are fixed by the broker and never stored."""
        return {NS_TOPIC: _TopicTable(self, on_topic, frozenset(pinned)),
                NS_GROUP: _GroupTable(self), NS_OFFSET: _OffsetTable(self),
                NS_TOMBSTONE: _TombstoneTable(self)}


class _TopicTable:
    def __init__(self, meta: Metadata,
                 on_change: Callable[[str, TopicConfig | None, TopicConfig | None], None],
                 pinned: frozenset[str]) -> None:
        self.topics = meta.topics
        self.on_change = on_change
        self.pinned = pinned

    def apply(self, key: Any, value: Any) -> None:
        if key in self.pinned:
            return
        old = self.topics.get(key)
        if value is None:
            if old is None:
                return
            del self.topics[key]
            self.on_change(key, old, None)
        else:
            new = self.topics[key] = TopicConfig.from_json(value)
            self.on_change(key, old, new)

    def get(self, key: Any) -> Any:
        t = self.topics.get(key)
        return None if t is None or key in self.pinned else t.to_json()

    def items(self) -> Iterable[tuple[Any, Any]]:
        return [(n, t.to_json()) for n, t in self.topics.items() if n not in self.pinned]

    def view(self) -> Callable[[], Iterable[tuple[Any, Any]]]:
        copy = dict(self.topics)  # TopicConfig is immutable
        pinned = self.pinned
        return lambda: [(n, t.to_json()) for n, t in copy.items() if n not in pinned]

    def __len__(self) -> int:
        return len(self.topics)


class _GroupTable:
    def __init__(self, meta: Metadata) -> None:
        self.groups = meta.groups

    def apply(self, key: Any, value: Any) -> None:
        if value is None:
            self.groups.pop(key, None)
        else:
            self.groups[key] = GroupConfig.from_json(value)

    def get(self, key: Any) -> Any:
        g = self.groups.get(key)
        return None if g is None else g.to_json()

    def items(self) -> Iterable[tuple[Any, Any]]:
        return [(n, g.to_json()) for n, g in self.groups.items()]

    def view(self) -> Callable[[], Iterable[tuple[Any, Any]]]:
        copy = dict(self.groups)
        return lambda: [(n, g.to_json()) for n, g in copy.items()]

    def __len__(self) -> int:
        return len(self.groups)


class _OffsetTable:
    """(group, topic, queue) -> offset, kept as the nested dict the readers use."""

    def __init__(self, meta: Metadata) -> None:
        self.offsets = meta.offsets
        self.count = 0

    def apply(self, key: Any, value: Any) -> None:
        group, topic, qid = key
        if value is None:
            ts = self.offsets.get(group)
            qs = ts.get(topic) if ts else None
            if qs is None or qs.pop(qid, None) is None:
                return
            self.count -= 1
            if not qs:
                del ts[topic]  # type: ignore[union-attr]
                if not ts:
                    del self.offsets[group]
            return
        qs = self.offsets.setdefault(group, {}).setdefault(topic, {})
        if qid not in qs:
            self.count += 1
        qs[qid] = value

    def get(self, key: Any) -> Any:
        group, topic, qid = key
        return self.offsets.get(group, {}).get(topic, {}).get(qid)

    def items(self) -> Iterable[tuple[Any, Any]]:
        return [((g, t, q), o) for g, ts in self.offsets.items() for t, qs in ts.items()
                for q, o in qs.items()]

    def view(self) -> Callable[[], Iterable[tuple[Any, Any]]]:
        copy = {g: {t: dict(qs) for t, qs in ts.items()} for g, ts in self.offsets.items()}
        return lambda: [((g, t, q), o) for g, ts in copy.items() for t, qs in ts.items()
                        for q, o in qs.items()]

    def __len__(self) -> int:
        return self.count


class _TombstoneTable:
    def __init__(self, meta: Metadata) -> None:
        self.tombstones = meta.tombstones

    def apply(self, key: Any, value: Any) -> None:
        if value is None:
            self.tombstones.pop(key, None)
        else:
            self.tombstones[key] = int(value)

    def get(self, key: Any) -> Any:
        return self.tombstones.get(key)

    def items(self) -> Iterable[tuple[Any, Any]]:
        return list(self.tombstones.items())

    def view(self) -> Callable[[], Iterable[tuple[Any, Any]]]:
        return dict(self.tombstones).items

    def __len__(self) -> int:
        return len(self.tombstones)
