"""The values the MQTT door passes around: subscription options, a message on its way out, and
the reader of stored records.

- ``SubOpts``: one subscription's options and Subscription Identifier.
- ``Delivery``: one message on its way to subscribers, its encodings cached so a
  fan-out encodes each variant once.
- ``Outgoing``: a Delivery queued or in flight for one session, with the QoS,
  retain flag and identifiers it goes with (and the shared subscription it
  came through, which takes it back if the session ends, 4.8.2).
- ``RecordReader``: the messages of stored records, decoding only what MQTT
  delivery needs.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ...core.message import StoredRecord
from ...protocols import record as rec
from ...protocols.mqtt import codec
from . import mapping

MAX_GROUP_NAME = 255


@dataclass(frozen=True, slots=True)
class SubOpts:
    """One subscription's options (3.8.3.1) and its Subscription Identifier."""

    qos: int
    no_local: bool = False
    rap: bool = False  # retain as published
    rh: int = 0  # retain handling
    sub_id: int | None = None


class Delivery:
    """One message on its way to subscribers; encodings are cached so a fan-out
    to many subscribers encodes each variant once. ``src`` is where it is stored
    (broker topic, queue, offset), None for messages that are not ($SYS,
    retained ones, restored in-flight ones)."""

    __slots__ = ("_v5", "cache", "expiry_at", "payload", "props", "publisher", "qos", "retain",
                 "src", "topic")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool,
                 props: dict[str, str], publisher: str,
                 src: tuple[str, int, int] | None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.props = props
        self.publisher = publisher
        self.src = src
        self.cache: dict[Any, bytes] = {}
        self._v5: bytes | None = None
        exp = props.get(mapping.MQTT_EXPIRY_AT)
        self.expiry_at = int(exp) if exp and exp.isdigit() else 0

    @classmethod
    def stored(cls, mqtt_topic: str, body: bytes, p: dict[str, str],
               src: tuple[str, int, int]) -> Delivery:
        return cls(mqtt_topic, body, mapping.qos_of(p), p.get(mapping.MQTT_RETAIN) == "1", p,
                   p.get(mapping.MQTT_PUBLISHER, ""), src)

    def expired(self, now: int) -> bool:
        return bool(self.expiry_at) and self.expiry_at <= now

    def v5_props(self, now: int) -> bytes:
        """The encoded 5.0 property block (the expiry interval counts down, 3.3.2.3.3)."""
        if self._v5 is not None:
            return self._v5
        props, _ = mapping.message_properties(self.props, now)
        data = codec.encode_properties(props)
        if not self.expiry_at:
            self._v5 = data
        return data


class Outgoing:
    """A message queued or in flight for one session. ``share`` is the key
    (share name, filter) of the shared subscription it was routed through, if any."""

    __slots__ = ("delivery", "qos", "retain", "share", "sub_ids")

    def __init__(self, delivery: Delivery, qos: int, retain: bool, sub_ids: tuple[int, ...],
                 share: tuple[str, str] | None = None) -> None:
        self.delivery = delivery
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.share = share


def core_group_name(prefix: str, ident: str) -> str:
    """A consumer group name for the core: readable when it fits, hashed when not."""
    name = prefix + ident
    if len(name) <= MAX_GROUP_NAME:
        return name
    return prefix + "h-" + hashlib.sha1(ident.encode()).hexdigest()


_MEMBER_HEAD = struct.Struct(">iiiii")
_I32 = struct.Struct(">i")
_BODY_LEN_AT = rec.HEADER_SIZE - 4
_PROPS_CACHE_MAX = 4096


class RecordReader:
    """Messages of stored records as (queue offset, body, properties), decoding only
    what MQTT delivery needs. Properties are decoded once per distinct byte string
    (the messages of one publisher and topic share theirs) into read-only dicts."""

    def __init__(self) -> None:
        self._props: dict[bytes, dict[str, str]] = {}

    def properties(self, raw: bytes) -> dict[str, str]:
        d = self._props.get(raw)
        if d is None:
            if len(self._props) >= _PROPS_CACHE_MAX:
                self._props.clear()
            d = self._props[raw] = rec.decode_properties(raw)
        return d

    def messages(self, r: StoredRecord, start: int) -> Iterator[tuple[int, bytes, dict[str, str]]]:
        sys_flag = r.sys_flag
        fmt = sys_flag & rec.FORMAT_MASK
        if (sys_flag & (rec.BORNHOST_V6_FLAG | rec.STOREHOST_V6_FLAG)
                or fmt not in (rec.FORMAT_SINGLE, rec.FORMAT_NATIVE_BATCH)):
            for m in r.messages(start):  # Kafka batches and the rare IPv6 record
                yield m.queue_offset, m.body, m.properties  # type: ignore[misc]
            return
        data = r.data
        body_len = _I32.unpack_from(data, _BODY_LEN_AT)[0]
        p = rec.HEADER_SIZE + body_len
        if fmt == rec.FORMAT_SINGLE:
            p += 1 + data[p]
            plen = (data[p] << 8) | data[p + 1]
            yield (r.queue_offset, data[rec.HEADER_SIZE:rec.HEADER_SIZE + body_len],
                   self.properties(data[p + 2:p + 2 + plen]))
            return
        offset = r.queue_offset
        pos = rec.HEADER_SIZE
        end = p
        unpack = _MEMBER_HEAD.unpack_from
        while pos < end:
            total, _, _, _, blen = unpack(data, pos)
            if offset >= start:
                q = pos + 20 + blen
                plen = (data[q] << 8) | data[q + 1]
                yield offset, data[pos + 20:q], self.properties(data[q + 2:q + 2 + plen])
            offset += 1
            pos += total
