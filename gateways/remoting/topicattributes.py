"""RocketMQ 5's topic attributes on the remoting door, onto the core's topic configs.

UPDATE_AND_CREATE_TOPIC carries, since RocketMQ 5, an ``attributes`` header:
``+name=value`` to set, ``-name`` to remove, comma separated (RocketMQ's
AttributeParser). Names are the core's (Kafka's) config names (core/topicconfig.py),
plus RocketMQ's own two: ``message.type`` (NORMAL, FIFO, DELAY, TRANSACTION, MIXED:
the topic's message type) and ``cleanup.policy`` with RocketMQ's values DELETE and
COMPACTION (Kafka's delete and compact). GET_TOPIC_CONFIG (351) answers RocketMQ 5's
TopicConfig JSON with the topic's attributes, plus ``ferrymqConfigs``: every config
with its value and source, as the CLI's ``topic config get`` shows them.
"""

from __future__ import annotations

import json
from typing import Any

from ...core import topicconfig as tc
from ...core.errors import InvalidConfig
from ...core.metadata import TopicConfig

_ROCKETMQ_POLICY = {"DELETE": "delete", "COMPACTION": "compact"}
_SOURCES = {tc.SOURCE_DYNAMIC_TOPIC: "topic", tc.SOURCE_STATIC_BROKER: "broker",
            tc.SOURCE_DEFAULT: "default"}


def parse(text: str | None) -> tuple[str | None, list[tuple[str, int, str | None]]]:
    """(message type or None, config operations) of an ``attributes`` header. Raises
    InvalidConfig for a malformed one."""
    message_type: str | None = None
    ops: list[tuple[str, int, str | None]] = []
    for item in (text or "").split(","):
        item = item.strip()
        if not item:
            continue
        if item[0] not in "+-" and ops and ops[-1][1] == tc.OP_SET:
            # A list value ("+cleanup.policy=compact,delete"): the comma was the value's.
            name, op, value = ops.pop()
            ops.append((name, op, f"{value},{item}"))
            continue
        if item[0] == "+" and "=" in item:
            name, value = item[1:].split("=", 1)
            if name == "message.type":
                message_type = value
                continue
            if name == "cleanup.policy":
                value = ",".join(_ROCKETMQ_POLICY.get(v.strip().upper(), v)
                                 for v in value.split(","))
            ops.append((name, tc.OP_SET, value))
        elif item[0] == "-" and "=" not in item and len(item) > 1:
            ops.append((item[1:], tc.OP_DELETE, None))
        else:
            raise InvalidConfig(f"attribute {item!r}: expected +name=value or -name")
    return message_type, ops


def created_attributes(ops: list[tuple[str, int, str | None]]) -> dict[str, str]:
    """The attributes of a new topic: only additions make sense there."""
    out: dict[str, str] = {}
    for name, op, value in ops:
        if op != tc.OP_SET or value is None:
            raise InvalidConfig(f"-{name}: a new topic has no attribute to remove")
        out[name] = value
    return out


def topic_config_body(t: TopicConfig, entries: list[tc.Entry]) -> bytes:
    """GET_TOPIC_CONFIG's body: RocketMQ 5's TopicConfig (what its admin tools read) and
    every config with its source."""
    doc: dict[str, Any] = {
        "topicName": t.name, "readQueueNums": t.queues, "writeQueueNums": t.queues,
        "perm": t.perm, "topicFilterType": "SINGLE_TAG", "topicSysFlag": 0,
        "order": t.message_type == "FIFO", "attributes": dict(t.attributes),
        "ferrymqConfigs": [{"name": e.name, "value": e.value, "source": _SOURCES[e.source],
                            "readOnly": e.read_only} for e in entries]}
    return json.dumps(doc).encode()
