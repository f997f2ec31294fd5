"""How an MQTT application message becomes a broker Message and back (docs/mqtt.md, "Mapping").

- The first level of the MQTT topic names the broker topic (``broker_topic``),
  its characters outside ``[A-Za-z0-9._-]`` written as ``|XX`` per UTF-8 byte.
- The whole MQTT topic travels in the ``MQTT_TOPIC`` property, unchanged up to
  the 65,535 bytes MQTT allows (past RocketMQ's 32,767-byte property area the
  store keeps the record in its long form: docs/storage.md); the queue is
  chosen by a CRC-32 of it, so the messages of one MQTT topic keep their order.
- QoS, retain flag and the MQTT 5 message properties travel as ``MQTT_*``
  properties; MQTT 5 user properties are plain message properties (Kafka
  headers, RocketMQ user properties) when they can be, else a JSON list in
  ``MQTT_USER_PROPERTIES``.
- Delivery time: the MQTT 5 user property ``ferrymq-deliver-at-ms`` (absolute,
  ms since the epoch) or ``ferrymq-delay-ms`` becomes the core's
  ``TIMER_DELIVER_MS`` / ``TIMER_DELAY_MS`` (docs/mqtt.md, "Delivery time"):
  explicit names, so that no user property named like a RocketMQ system
  property (``DELAY``...) ever steers the core.
"""

from __future__ import annotations

import base64
import contextlib
import json
import zlib
from collections.abc import Mapping
from typing import Any

from ...core.addresses import ADDRESS_PROPERTY, broker_topic
from ...core.errors import InvalidDelay
from ...core.message import (
    PROPERTY_DOOR,
    PROPERTY_TIMER_DELAY_MS,
    PROPERTY_TIMER_DELIVER_MS,
    ConsumedMessage,
    Message,
    now_ms,
)
from ...core.tracing import TRACEPARENT, TRACESTATE
from ...protocols import boundedjson
from ...protocols.mqtt.constants import Prop

MQTT_TOPIC = ADDRESS_PROPERTY  # the full MQTT topic name: the message's address
MQTT_QOS = "MQTT_QOS"
MQTT_RETAIN = "MQTT_RETAIN"
MQTT_PUBLISHER = "MQTT_PUBLISHER"
MQTT_CONTENT_TYPE = "MQTT_CONTENT_TYPE"
MQTT_RESPONSE_TOPIC = "MQTT_RESPONSE_TOPIC"
MQTT_CORRELATION_DATA = "MQTT_CORRELATION_DATA"  # base64
MQTT_PAYLOAD_FORMAT = "MQTT_PAYLOAD_FORMAT"
MQTT_EXPIRY_AT = "MQTT_EXPIRY_AT"  # absolute, ms since the epoch: it counts down while stored
MQTT_USER_PROPERTIES = "MQTT_USER_PROPERTIES"  # JSON [[name, value], ...] when needed
MQTT_PREFIX = "MQTT_"

DEFAULT_FOREIGN_QOS = 1
"""QoS of a message produced through another door: it is stored durably, so
subscribers may get it at least once."""

# RocketMQ system properties: never MQTT user properties, and an MQTT user
# property of such a name must not steer the core (a "DELAY" header).
RESERVED = frozenset({
    "UNIQ_KEY", "WAIT", "TRAN_MSG", "PGROUP", "REAL_TOPIC", "REAL_QID", "RETRY_TOPIC", "DELAY",
    "TIMER_DELIVER_MS", "TIMER_DELAY_MS", "TIMER_DELAY_SEC", "TIMER_OUT_MS", "TIMER_FROM",
    "MIN_OFFSET",
    "MAX_OFFSET", "CONSUME_START_TIME", "ORIGIN_MESSAGE_ID", "MAX_RECONSUME_TIMES",
    "__SHARDINGKEY", "DLQ_ORIGIN_TOPIC", "DLQ_ORIGIN_MESSAGE_ID", "CLUSTER", "TRACE_ON",
    "MSG_REGION", "TRAN_PREPARED_QUEUE_OFFSET", "CHECK_IMMUNITY_TIME_IN_SECONDS",
    PROPERTY_DOOR,
})

# MQTT 5 user properties that are also kept as themselves when the others are stored as
# one JSON list: the W3C trace context (core/tracing.py) every door reads by name.
_TRACE_CARRIERS = frozenset((TRACEPARENT, TRACESTATE))
DELIVER_AT_PROPERTY = "ferrymq-deliver-at-ms"
DELAY_PROPERTY = "ferrymq-delay-ms"
DELIVERY_PROPERTIES = {DELIVER_AT_PROPERTY: PROPERTY_TIMER_DELIVER_MS,
                       DELAY_PROPERTY: PROPERTY_TIMER_DELAY_MS}

# The address <-> topic rule lives in the core: the access model judges addresses by it.
MAX_TOPIC_LEN = 127  # core/metadata.py TOPIC_NAME


def queue_for(mqtt_topic: str, queues: int) -> int:
    """The queue of an MQTT topic: stable across restarts, so per-topic order holds."""
    return zlib.crc32(mqtt_topic.encode()) % queues


def _storable(text: str) -> bool:
    return "\x01" not in text and "\x02" not in text


def to_message(topic: str, queue_id: int, payload: bytes, qos: int, retain: bool,
               publisher: str, props: Mapping[int, Any], now: int | None = None) -> Message:
    """The broker Message for an MQTT PUBLISH to ``topic`` (an MQTT topic name)."""
    p: dict[str, str] = {MQTT_TOPIC: topic, MQTT_QOS: "012"[qos], MQTT_PUBLISHER: publisher}
    if retain:
        p[MQTT_RETAIN] = "1"
    if props:
        v = props.get(Prop.PAYLOAD_FORMAT_INDICATOR)
        if v is not None:
            p[MQTT_PAYLOAD_FORMAT] = str(v)
        v = props.get(Prop.CONTENT_TYPE)
        if v is not None:
            p[MQTT_CONTENT_TYPE] = v
        v = props.get(Prop.RESPONSE_TOPIC)
        if v is not None:
            p[MQTT_RESPONSE_TOPIC] = v
        v = props.get(Prop.CORRELATION_DATA)
        if v is not None:
            p[MQTT_CORRELATION_DATA] = base64.b64encode(v).decode()
        v = props.get(Prop.MESSAGE_EXPIRY_INTERVAL)
        if v is not None:
            p[MQTT_EXPIRY_AT] = str((now or now_ms()) + v * 1000)
        users = props.get(Prop.USER_PROPERTY)
        timer: tuple[str, str] | None = None
        if users and any(k in DELIVERY_PROPERTIES for k, _ in users):
            asked = [(k, v) for k, v in users if k in DELIVERY_PROPERTIES]
            if len(asked) > 1:
                raise InvalidDelay(f"give one of {DELIVER_AT_PROPERTY}, {DELAY_PROPERTY}, "
                                   f"once, not {len(asked)} of them")
            if retain:
                raise InvalidDelay("a delivery time and the retain flag cannot be combined "
                                   "(the retained message would be seen before its time)")
            timer = (DELIVERY_PROPERTIES[asked[0][0]], asked[0][1])
            users = [(k, v) for k, v in users if k not in DELIVERY_PROPERTIES]
        if users:
            names = [k for k, _ in users]
            plain = (len(set(names)) == len(names)
                     and all(k not in RESERVED and not k.startswith(MQTT_PREFIX) and k
                             and _storable(k) and _storable(v) for k, v in users))
            if plain:
                p.update(users)
            else:
                p[MQTT_USER_PROPERTIES] = json.dumps([list(kv) for kv in users])
                for k, v in users:  # the trace context, where every door finds it
                    if k in _TRACE_CARRIERS and k not in p and _storable(v):
                        p[k] = v
        if timer is not None:
            p[timer[0]] = timer[1]  # validated by Broker.put (InvalidDelay)
    p[PROPERTY_DOOR] = "mqtt"  # the door it came in by (the console's "which door"), last
    return Message(broker_topic(topic), payload, p, queue_id=queue_id)


def is_timed(m: Message) -> bool:
    """Whether the message asks for a delivery time (it must be put on its own: a
    batch record is delivered at once)."""
    props = m.properties
    return PROPERTY_TIMER_DELAY_MS in props or PROPERTY_TIMER_DELIVER_MS in props


def mqtt_topic_of(m: ConsumedMessage) -> str:
    """The MQTT topic of a stored message: its ``MQTT_TOPIC``, else the broker topic."""
    return m.properties.get(MQTT_TOPIC) or m.topic


_USER_JSON = boundedjson.JsonLimits(max_bytes=1 << 20, max_depth=2, max_containers=100_000)


def user_properties(props: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """MQTT 5 user properties of a stored message, in stored order."""
    raw = props.get(MQTT_USER_PROPERTIES)
    if raw is not None:
        try:
            # Any door can set this property: a flat list of pairs, or nothing.
            return tuple((str(k), str(v)) for k, v in boundedjson.loads(raw, _USER_JSON))
        except (ValueError, TypeError):
            return ()
    return tuple((k, v) for k, v in props.items()
                 if not k.startswith(MQTT_PREFIX) and k not in RESERVED)


def message_properties(props: Mapping[str, str], now: int) -> tuple[dict[int, Any], bool]:
    """(MQTT 5 PUBLISH properties, expired?) of a stored message at time ``now``
    (3.3.2.3.3: the expiry interval sent is what remains of it)."""
    out: dict[int, Any] = {}
    if len(props) <= 4 and MQTT_TOPIC in props and (len(props) <= 3 or PROPERTY_DOOR in props):
        return out, False  # the common case: topic, QoS, publisher (and door) only
    v = props.get(MQTT_PAYLOAD_FORMAT)
    if v is not None and v in ("0", "1"):
        out[Prop.PAYLOAD_FORMAT_INDICATOR] = int(v)
    v = props.get(MQTT_EXPIRY_AT)
    if v is not None:
        try:
            left = int(v) - now
        except ValueError:
            left = 1
        if left <= 0:
            return out, True
        out[Prop.MESSAGE_EXPIRY_INTERVAL] = max(1, (left + 999) // 1000)
    v = props.get(MQTT_CONTENT_TYPE)
    if v is not None:
        out[Prop.CONTENT_TYPE] = v
    v = props.get(MQTT_RESPONSE_TOPIC)
    if v is not None:
        out[Prop.RESPONSE_TOPIC] = v
    v = props.get(MQTT_CORRELATION_DATA)
    if v is not None:
        with contextlib.suppress(ValueError):  # not ours: another door wrote it
            out[Prop.CORRELATION_DATA] = base64.b64decode(v)
    users = user_properties(props)
    if users:
        out[Prop.USER_PROPERTY] = users
    return out, False


def qos_of(props: Mapping[str, str]) -> int:
    """The QoS a message was published with (``DEFAULT_FOREIGN_QOS`` from other doors)."""
    return _QOS.get(props.get(MQTT_QOS), DEFAULT_FOREIGN_QOS)  # type: ignore[arg-type]


_QOS = {"0": 0, "1": 1, "2": 2}
