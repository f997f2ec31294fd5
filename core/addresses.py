"""Addresses: where a message is, finer than its topic.

An MQTT topic name (``sensors/secret/pin``) is a message's *address*; its broker
topic is the first level, escaped into a valid topic name (``broker_topic``), and
the full name travels as the property ``ADDRESS_PROPERTY`` (``MQTT_TOPIC``). A
message without that property is at the address of its topic's name. The access
model (core/access.py) judges MQTT topic-filter rules against addresses, so the
rule lives here, in the core, and the MQTT door uses the same function.
"""

from __future__ import annotations

import hashlib

from .metadata import SYSTEM_PREFIXES

ADDRESS_PROPERTY = "MQTT_TOPIC"

_SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
MAX_TOPIC_LEN = 127  # core/metadata.py TOPIC_NAME
_HASHED_PREFIX = 109  # 109 + "|H" + 16 hex digits = 127


def broker_topic(mqtt_topic: str) -> str:
    """The broker topic of an MQTT topic name or of a filter's literal first level:
    that level with every character outside ``[A-Za-z0-9._-]`` written ``|XX`` (its
    UTF-8 bytes in upper-case hex); an empty level is ``|``, ``.`` and ``..`` are
    escaped too; a result over 127 characters keeps 109 and appends ``|H`` and 16
    hex digits of its SHA-1; a RocketMQ system prefix gets a ``|`` in front. Always
    a valid topic name."""
    level = mqtt_topic.split("/", 1)[0]
    if not level:
        return "|"
    if level in (".", ".."):
        level = "|2E" * len(level)
    elif not _SAFE.issuperset(level):
        level = "".join(ch if ch in _SAFE else "".join(f"|{b:02X}" for b in ch.encode())
                        for ch in level)
    if level.startswith(SYSTEM_PREFIXES):
        level = "|" + level  # never write into RMQ_SYS_*, TBW102...: "|" + letters is no escape
    if len(level) > MAX_TOPIC_LEN:
        digest = hashlib.sha1(level.encode()).hexdigest()[:16].upper()
        level = f"{level[:_HASHED_PREFIX]}|H{digest}"
    return level


