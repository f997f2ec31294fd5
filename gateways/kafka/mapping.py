"""Cross-protocol mapping between Kafka records and FerryMQ messages (docs/kafka.md, "Mapping").

Kafka -> FerryMQ (the batch decoder registered for FORMAT_KAFKA_BATCH records):
the value is the body (null -> empty); a key that is UTF-8 text without the
property separators (space, \\x01, \\x02) becomes the ``KEYS`` property, any other
key travels base64-encoded in ``KAFKA_KEY_BASE64``; a header whose value is UTF-8
text becomes the property of that name, a binary one travels base64-encoded as
``KAFKA_HEADER_BASE64.<name>``; a null header value becomes an empty string; the
record's timestamp is the born timestamp.

FerryMQ -> Kafka (packing natively produced records into RecordBatches on
fetch): the inverse. ``KEYS`` (or ``KAFKA_KEY_BASE64``) is the key, every other
property a header, the born timestamp (store timestamp when unset) the
record's CreateTime.

Delivery time (docs/kafka.md, "Delivery time"; docs/timers.md): a record with the
header ``ferrymq-deliver-at-ms`` (absolute, ms since the epoch) or
``ferrymq-delay-ms`` (ASCII decimal) becomes a timer: ``delivery_message``
turns it into a Message carrying ``TIMER_DELIVER_MS`` / ``TIMER_DELAY_MS``.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator, Mapping

from ...core.errors import InvalidDelay
from ...core.message import (
    KEY_SEPARATOR,
    PROPERTY_DOOR,
    PROPERTY_KEYS,
    PROPERTY_PRODUCER_GROUP,
    PROPERTY_TIMER_DELAY_MS,
    PROPERTY_TIMER_DELIVER_MS,
    PROPERTY_TRANSACTION_PREPARED,
    ConsumedMessage,
    Message,
    StoredRecord,
    register_batch_decoder,
)
from ...core.timers import REQUEST_PROPERTIES
from ...protocols import record as rec
from ...protocols.kafka import records as kr

KAFKA_TOPIC_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
KAFKA_MAX_TOPIC = 249  # Kafka's topic name length limit


def kafka_visible(name: str) -> bool:
    """Topics whose names Kafka clients accept (FerryMQ's %RETRY% and the like are not)."""
    return 0 < len(name) <= KAFKA_MAX_TOPIC and set(name) <= KAFKA_TOPIC_CHARS


# The door's name in FERRY_DOOR, on the records it stores as messages (a batch stored
# verbatim is known by its record format: core Broker.message_life).
DOOR = "kafka"
PROPERTY_KAFKA_KEY_BASE64 = "KAFKA_KEY_BASE64"
HEADER_BASE64_PREFIX = "KAFKA_HEADER_BASE64."
_FORBIDDEN_IN_KEY = (KEY_SEPARATOR, rec.NAME_VALUE_SEPARATOR, rec.PROPERTY_SEPARATOR)
_FORBIDDEN_IN_PROPERTY = (rec.NAME_VALUE_SEPARATOR, rec.PROPERTY_SEPARATOR)


def _text(raw: bytes, forbidden: tuple[str, ...]) -> str | None:
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any(ch in s for ch in forbidden):
        return None
    return s


def kafka_to_properties(key: bytes | None,
                        headers: Iterable[tuple[str, bytes | None]]) -> dict[str, str]:
    """A Kafka record's key and headers as FerryMQ message properties."""
    props: dict[str, str] = {}
    for name, value in headers:
        if any(ch in name for ch in _FORBIDDEN_IN_PROPERTY):
            continue  # cannot be a property name; unreachable from any other door anyway
        if value is None:
            props[name] = ""
            continue
        text = _text(value, _FORBIDDEN_IN_PROPERTY)
        if text is None:
            props[HEADER_BASE64_PREFIX + name] = base64.b64encode(value).decode()
        else:
            props[name] = text
    if key is not None:
        text = _text(key, _FORBIDDEN_IN_KEY)
        if text is not None and text:
            props[PROPERTY_KEYS] = text
            props.pop(PROPERTY_KAFKA_KEY_BASE64, None)
        else:
            props.pop(PROPERTY_KEYS, None)
            props[PROPERTY_KAFKA_KEY_BASE64] = base64.b64encode(key).decode()
    return props


def properties_to_kafka(props: Mapping[str, str]
                        ) -> tuple[bytes | None, list[tuple[str, bytes | None]]]:
    """A FerryMQ message's properties as a Kafka key and headers."""
    key: bytes | None = None
    headers: list[tuple[str, bytes | None]] = []
    for name, value in props.items():
        if name == PROPERTY_KEYS:
            key = value.encode()
        elif name == PROPERTY_KAFKA_KEY_BASE64:
            try:
                key = base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                headers.append((name, value.encode()))
        elif name.startswith(HEADER_BASE64_PREFIX):
            try:
                headers.append((name[len(HEADER_BASE64_PREFIX):],
                                base64.b64decode(value, validate=True)))
            except (binascii.Error, ValueError):
                headers.append((name, value.encode()))
        else:
            headers.append((name, value.encode()))
    return key, headers


def decode_kafka_record(stored: StoredRecord, r: rec.Record) -> Iterator[ConsumedMessage]:
    """The batch decoder the core calls for FORMAT_KAFKA_BATCH records."""
    batch = kr.decode_batch(r.body, verify=False)
    sys_flag = r.sys_flag & ~rec.FORMAT_MASK
    for i, k in enumerate(batch.records):
        yield ConsumedMessage(
            r.topic, r.queue_id, k.offset, k.value if k.value is not None else b"",
            kafka_to_properties(k.key, k.headers), k.timestamp, r.store_timestamp,
            r.physical_offset, r.store_host, r.born_host, 0, sys_flag, 0, i)


DELIVER_AT_HEADER = "ferrymq-deliver-at-ms"
DELAY_HEADER = "ferrymq-delay-ms"
DELIVERY_HEADERS = {DELIVER_AT_HEADER: PROPERTY_TIMER_DELIVER_MS, DELAY_HEADER: PROPERTY_TIMER_DELAY_MS}
# Both names share this prefix: a batch whose records do not contain it carries neither
# (the door's cheap test before it decodes anything: kr.batch_mentions).
DELIVERY_MARK = re.compile(rb"ferrymq-de(?:liver-at|lay)-ms")
# Property names that steer the core. Inert in a batch stored verbatim; a record the
# door turns into a Message must not carry them, or they would act.
_STEERING = frozenset((*REQUEST_PROPERTIES, PROPERTY_TRANSACTION_PREPARED,
                       PROPERTY_PRODUCER_GROUP))


def wants_delivery(headers: Iterable[tuple[str, bytes | None]]) -> bool:
    return any(name in DELIVERY_HEADERS for name, _ in headers)


def delivery_message(topic: str, queue_id: int, record: kr.Record) -> Message:
    """A record as a Message for ``Broker.put``: its key and headers as properties (as
    the batch decoder maps them), a delivery header as the timer property it names.
    Raises InvalidDelay for two delivery headers, a value that is not ASCII text, or a
    header that would steer the core (``DELAY``, ``TIMER_*``, ``TRAN_MSG``, ``PGROUP``)."""
    plain = [(n, v) for n, v in record.headers if n not in DELIVERY_HEADERS]
    asked = [(n, v) for n, v in record.headers if n in DELIVERY_HEADERS]
    if len(asked) > 1:
        raise InvalidDelay(f"give one of {DELIVER_AT_HEADER}, {DELAY_HEADER}, not "
                           f"{' and '.join(n for n, _ in asked)}")
    name, raw = asked[0]
    try:
        value = (raw or b"").decode("ascii")
    except UnicodeDecodeError:
        raise InvalidDelay(f"header {name} must be an ASCII decimal integer") from None
    props = kafka_to_properties(record.key, plain)
    clash = _STEERING.intersection(props)
    if clash:
        raise InvalidDelay(f"a record with {name} must not carry the header(s) "
                           f"{', '.join(sorted(clash))}")
    props[DELIVERY_HEADERS[name]] = value
    props[PROPERTY_DOOR] = DOOR
    return Message(topic, record.value if record.value is not None else b"", props, queue_id,
                   born_timestamp=record.timestamp)


def pack_messages(messages: list[ConsumedMessage]) -> bytes:
    """Natively produced messages (consecutive queue offsets) as one RecordBatch."""
    base = messages[0].queue_offset
    rows = []
    for m in messages:
        key, headers = properties_to_kafka(m.properties)
        rows.append((m.born_timestamp or m.store_timestamp, key, m.body, headers))
    return kr.encode_batch(base, rows, offset_deltas=[m.queue_offset - base for m in messages])


def install() -> None:
    register_batch_decoder(rec.FORMAT_KAFKA_BATCH, decode_kafka_record)
