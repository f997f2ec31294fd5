"""Broker metadata: topics, consumer groups and committed offsets, kept as JSON files written atomically.

``<data>/config/topics.json``, ``groups.json`` and ``offsets.json`` (the names
RocketMQ operators know from topics.json / subscriptionGroup.json /
consumerOffset.json). The loop thread owns the in-memory tables; ``dump_*``
takes a consistent snapshot as bytes there, and ``save`` writes those bytes from
a worker thread (temp file, fsync, rename).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from .errors import InvalidGroupName, InvalidTopicName
from .store.files import atomic_write, read_file

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


class Metadata:
    """The tables, and their files under ``<data>/config``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.topics: dict[str, TopicConfig] = {}
        self.groups: dict[str, GroupConfig] = {}
        # group -> topic -> queue id -> next offset to consume
        self.offsets: dict[str, dict[str, dict[int, int]]] = {}
        # topic -> CommitLog offset at deletion: older records of that name are dead
        self.tombstones: dict[str, int] = {}
        self.offsets_dirty = False
        self.groups_dirty = False

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def load(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        raw = read_file(self.path("topics.json"))
        if raw:
            doc = json.loads(raw)
            self.topics = {t["name"]: TopicConfig.from_json(t) for t in doc.get("topics", [])}
            self.tombstones = {k: int(v) for k, v in doc.get("tombstones", {}).items()}
        raw = read_file(self.path("groups.json"))
        if raw:
            self.groups = {g["name"]: GroupConfig.from_json(g)
                           for g in json.loads(raw).get("groups", [])}
        raw = read_file(self.path("offsets.json"))
        if raw:
            self.offsets = {
                g: {t: {int(q): int(o) for q, o in qs.items()} for t, qs in ts.items()}
                for g, ts in json.loads(raw).get("offsets", {}).items()}

    # Snapshots are taken on the loop thread; ``save`` may run in a worker thread.

    def dump_topics(self) -> bytes:
        return json.dumps({"topics": [t.to_json() for t in self.topics.values()],
                           "tombstones": self.tombstones}, indent=1).encode()

    def dump_groups(self) -> bytes:
        self.groups_dirty = False
        return json.dumps({"groups": [g.to_json() for g in self.groups.values()]},
                          indent=1).encode()

    def dump_offsets(self) -> bytes:
        self.offsets_dirty = False
        return json.dumps({"offsets": {
            g: {t: {str(q): o for q, o in qs.items()} for t, qs in ts.items()}
            for g, ts in self.offsets.items()}}).encode()

    def save(self, name: str, data: bytes) -> None:
        atomic_write(self.path(name), data)

    # Offsets

    def commit(self, group: str, topic: str, queue_id: int, offset: int) -> None:
        self.offsets.setdefault(group, {}).setdefault(topic, {})[queue_id] = offset
        self.offsets_dirty = True

    def committed(self, group: str, topic: str, queue_id: int) -> int | None:
        return self.offsets.get(group, {}).get(topic, {}).get(queue_id)

    def drop_topic_offsets(self, topic: str) -> None:
        for ts in self.offsets.values():
            if ts.pop(topic, None) is not None:
                self.offsets_dirty = True

    def with_topic(self, t: TopicConfig, **changes: object) -> TopicConfig:
        new = replace(t, **changes)  # type: ignore[arg-type]
        self.topics[t.name] = new
        return new
