"""The values that cross the ``Broker`` API: messages in, results and stored records out.

A producer hands the broker ``Message`` values; ``put`` answers with a
``PutResult``. ``get`` answers with a ``GetResult`` of ``StoredRecord``s: raw
CommitLog records (one message, or a batch of several), so a gateway that
speaks the stored format (a RocketMQ pull of native messages, a Kafka fetch of
Kafka batches) copies bytes, and any other reads ``ConsumedMessage`` values
from ``StoredRecord.messages()``.
"""

from __future__ import annotations

import enum
import struct
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import NamedTuple, Protocol

from ..protocols import record as rec

# Property names (RocketMQ MessageConst), used the same way by every door.
PROPERTY_KEYS = "KEYS"
PROPERTY_TAGS = "TAGS"
PROPERTY_UNIQ_KEY = "UNIQ_KEY"
PROPERTY_DELAY_LEVEL = "DELAY"
PROPERTY_TIMER_DELIVER_MS = "TIMER_DELIVER_MS"
PROPERTY_TIMER_DELAY_MS = "TIMER_DELAY_MS"
PROPERTY_TIMER_DELAY_SEC = "TIMER_DELAY_SEC"
PROPERTY_WAIT_STORE_MSG_OK = "WAIT"
PROPERTY_SHARDING_KEY = "__SHARDINGKEY"
PROPERTY_RETRY_TOPIC = "RETRY_TOPIC"
PROPERTY_REAL_TOPIC = "REAL_TOPIC"
PROPERTY_REAL_QUEUE_ID = "REAL_QID"
PROPERTY_TRANSACTION_PREPARED = "TRAN_MSG"
PROPERTY_PRODUCER_GROUP = "PGROUP"
PROPERTY_ORIGIN_MESSAGE_ID = "ORIGIN_MESSAGE_ID"
PROPERTY_MAX_RECONSUME_TIMES = "MAX_RECONSUME_TIMES"
PROPERTY_DLQ_ORIGIN_TOPIC = "DLQ_ORIGIN_TOPIC"
PROPERTY_DLQ_ORIGIN_MESSAGE_ID = "DLQ_ORIGIN_MESSAGE_ID"
# FerryMQ's own: the door a message came in by (http, kafka, mqtt, remoting), set by that
# door over whatever a client sent, so the console can tell a message's origin.
PROPERTY_DOOR = "FERRY_DOOR"
KEY_SEPARATOR = " "

_OFFSET_ID = struct.Struct(">8sq")
_NO_PROPERTIES: Mapping[str, str] = MappingProxyType({})


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Message(NamedTuple):
    """A message as a producer hands it to the broker (an immutable value).

    ``queue_id`` -1 lets the broker choose (round-robin). ``born_timestamp`` 0
    means "now". Tags and keys are the ``TAGS`` and ``KEYS`` properties (keys
    separated by spaces), as in RocketMQ. A NamedTuple rather than a frozen
    dataclass: it is built once per message on hot paths, and costs a third.
    """

    topic: str
    body: bytes
    properties: Mapping[str, str] = _NO_PROPERTIES
    queue_id: int = -1
    flag: int = 0
    born_timestamp: int = 0
    born_host: bytes = b"\x00\x00\x00\x00\x00\x00\x00\x00"
    reconsume_times: int = 0
    sys_flag: int = 0

    @property
    def tags(self) -> str | None:
        return self.properties.get(PROPERTY_TAGS)

    @property
    def keys(self) -> list[str]:
        raw = self.properties.get(PROPERTY_KEYS)
        return [k for k in raw.split(KEY_SEPARATOR) if k] if raw else []

    @classmethod
    def build(cls, topic: str, body: bytes, *, tags: str | None = None,
              keys: str | list[str] | None = None,
              properties: Mapping[str, str] | None = None, **kw: object) -> Message:
        """Convenience constructor that folds tags and keys into the properties."""
        props = dict(properties or {})
        if tags:
            props[PROPERTY_TAGS] = tags
        if keys:
            props[PROPERTY_KEYS] = keys if isinstance(keys, str) else KEY_SEPARATOR.join(keys)
        return cls(topic, body, props, **kw)  # type: ignore[arg-type]

    def with_properties(self, **extra: str) -> Message:
        return self._replace(properties={**self.properties, **extra})


def offset_message_id(store_host: bytes, physical_offset: int, member: int = 0) -> str:
    """RocketMQ's offsetMsgId: store host (address + port) and CommitLog offset, in hex.

    A message inside a batch record carries its index in the batch in the upper
    16 bits of the port field (docs/storage.md, "Message ids"); for member 0 and
    for single messages this is exactly RocketMQ's id."""
    if member:
        store_host = store_host[:4] + struct.pack(">i", (member << 16)
                                                  | (struct.unpack(">i", store_host[4:8])[0]
                                                     & 0xFFFF))
    return _OFFSET_ID.pack(store_host[:8], physical_offset).hex().upper()


def parse_offset_message_id(msg_id: str) -> tuple[int, int] | None:
    """(physical offset, batch member index) of an offset message id, or None."""
    if len(msg_id) != 32:
        return None
    try:
        raw = bytes.fromhex(msg_id)
    except ValueError:
        return None
    port_field, phys = struct.unpack(">iq", raw[4:16])
    return phys, (port_field >> 16) & 0xFFFF


class PutResult(NamedTuple):
    """Where a put landed: ``count`` messages from ``queue_offset`` on in one record."""

    topic: str
    queue_id: int
    queue_offset: int
    count: int  # type: ignore[assignment]  # shadows tuple.count: the field keeps its name
    physical_offset: int
    store_timestamp: int
    store_host: bytes
    uniq_keys: tuple[str | None, ...] = ()

    @property
    def next_offset(self) -> int:
        return self.queue_offset + self.count

    def offset_message_id(self, index: int = 0) -> str:
        return offset_message_id(self.store_host, self.physical_offset, index)

    def message_id(self, index: int = 0) -> str:
        """The producer-visible id: its UNIQ_KEY if it set one, else the offset id."""
        if index < len(self.uniq_keys) and self.uniq_keys[index]:
            return self.uniq_keys[index]  # type: ignore[return-value]
        return self.offset_message_id(index)

    @property
    def message_ids(self) -> list[str]:
        return [self.message_id(i) for i in range(self.count)]


class ConsumedMessage(NamedTuple):
    """One message as a consumer sees it, whatever door produced it."""

    topic: str
    queue_id: int
    queue_offset: int
    body: bytes
    properties: Mapping[str, str]
    born_timestamp: int
    store_timestamp: int
    physical_offset: int
    store_host: bytes
    born_host: bytes = b"\x00" * 8
    flag: int = 0
    sys_flag: int = 0
    reconsume_times: int = 0
    batch_index: int = 0

    @property
    def tags(self) -> str | None:
        return self.properties.get(PROPERTY_TAGS)

    @property
    def keys(self) -> list[str]:
        raw = self.properties.get(PROPERTY_KEYS)
        return [k for k in raw.split(KEY_SEPARATOR) if k] if raw else []

    @property
    def offset_msg_id(self) -> str:
        return offset_message_id(self.store_host, self.physical_offset, self.batch_index)

    @property
    def msg_id(self) -> str:
        return self.properties.get(PROPERTY_UNIQ_KEY) or self.offset_msg_id


class Filter(Protocol):
    """What a get's filter answers (core/filter.py has the tag and SQL92 ones): whether
    a ConsumeQueue entry's tag hash may match (False skips the record unread), and
    whether a decoded message matches (the final word). Declared here, with the
    values it is asked about, so that a StoredRecord can carry one."""

    def may_match_tag_hash(self, h: int) -> bool: ...

    def matches(self, message: ConsumedMessage) -> bool: ...


BatchDecoder = Callable[["StoredRecord", rec.Record], Iterator[ConsumedMessage]]
"""Turns a batch record of a foreign format (a Kafka batch) into messages; see
``register_batch_decoder``."""

_BATCH_DECODERS: dict[int, BatchDecoder] = {}


def register_batch_decoder(fmt: int, decoder: BatchDecoder) -> None:
    """Install the decoder for records of format ``fmt`` (record.FORMAT_KAFKA_BATCH).

    The core reads Kafka batch headers but never their records: that is the
    Kafka protocol package's job, plugged in here by the server at start-up so
    that the core does not import it (DESIGN.md, "who may import whom")."""
    _BATCH_DECODERS[fmt] = decoder


class StoredRecord(NamedTuple):
    """One CommitLog record as ``get`` returns it: ``data`` is the exact stored bytes.

    ``queue_offset`` is the record's first message; a batch record holds
    ``count`` messages. ``matcher``, when the get had a filter, tells which of a
    batch's members matched (the core returns a batch if at least one did)."""

    topic: str
    queue_id: int
    queue_offset: int
    count: int  # type: ignore[assignment]  # shadows tuple.count: the field keeps its name
    physical_offset: int
    sys_flag: int
    store_timestamp: int
    data: bytes
    matcher: Filter | None = None

    @property
    def format(self) -> int:
        return self.sys_flag & rec.FORMAT_MASK

    @property
    def is_batch(self) -> bool:
        return self.format != rec.FORMAT_SINGLE

    def decode(self) -> rec.Record:
        return rec.decode(self.data, 0, check_crc=False)

    def messages(self, start_offset: int = 0, cursor: BatchCursor | None = None
                 ) -> Iterator[ConsumedMessage]:
        """The messages of this record at queue offsets >= ``start_offset`` that
        match the get's filter, in order. ``cursor``: where a reader of this queue
        stopped in a native batch last time (it is kept up to date), so that reading
        a big batch a few messages at a time does not walk its start again each time."""
        r = self.decode()
        fmt = r.sys_flag & rec.FORMAT_MASK
        if fmt == rec.FORMAT_SINGLE:
            items: Iterator[ConsumedMessage] = iter((ConsumedMessage(
                r.topic, r.queue_id, r.queue_offset, r.body, r.properties, r.born_timestamp,
                r.store_timestamp, r.physical_offset, r.store_host, r.born_host, r.flag,
                r.sys_flag, r.reconsume_times),))
        elif fmt == rec.FORMAT_NATIVE_BATCH:
            # Members before start_offset are walked but never built: a consumer
            # reading a big batch a few messages at a time pays for what it reads.
            skip = max(0, start_offset - r.queue_offset)
            if cursor is not None:
                items = _members_from(r, skip, cursor)
            else:
                items = (ConsumedMessage(
                    r.topic, r.queue_id, r.queue_offset + i, m.body, m.properties,
                    r.born_timestamp, r.store_timestamp, r.physical_offset, r.store_host,
                    r.born_host, m.flag, r.sys_flag & ~rec.FORMAT_MASK, r.reconsume_times, i)
                    for i, m in enumerate(rec.iter_members(r.body, skip), skip))
        else:
            decoder = _BATCH_DECODERS.get(fmt)
            if decoder is None:
                raise LookupError(f"no decoder registered for record format {fmt:#x}")
            items = decoder(self, r)
        matcher = self.matcher
        for m in items:
            if m.queue_offset >= start_offset and (matcher is None or matcher.matches(m)):
                yield m


class BatchCursor:
    """Where the member after the last one read starts in a native batch record's body
    (member index and byte position), for the record identified by its CommitLog
    offset, store timestamp and body length. A reader that comes back for the next
    members (a pop of 32 from a batch of 1,000) starts there instead of stepping over
    every member before it: without it a batch of n read k at a time costs n²/2k
    member steps."""

    __slots__ = ("member", "pos", "record")

    def __init__(self) -> None:
        self.record: tuple[int, int, int] | None = None
        self.member = 0
        self.pos = 0


def _members_from(r: rec.Record, skip: int, cursor: BatchCursor) -> Iterator[ConsumedMessage]:
    """The members of native batch ``r`` from index ``skip`` on, started from ``cursor``
    when it points into this record at or before ``skip``; the cursor follows."""
    body = r.body
    ident = (r.physical_offset, r.store_timestamp, len(body))
    i, pos = 0, 0
    if cursor.record == ident and cursor.member <= skip:
        i, pos = cursor.member, cursor.pos
    end = len(body)
    while i < skip and pos < end:  # step over members by their sizes, as iter_members does
        size = _MEMBER_SIZE.unpack_from(body, pos)[0] if end - pos >= 22 else 0
        if size < 22 or pos + size > end:
            raise rec.RecordError("batch member size out of range")
        pos += size
        i += 1
    flags = r.sys_flag & ~rec.FORMAT_MASK
    for m in rec.iter_members(memoryview(body)[pos:] if pos else body):
        cursor.record, cursor.member, cursor.pos = ident, i, pos  # a reader may stop here
        pos += 22 + len(m.body) + len(m.properties_raw)  # member head 20, properties length 2
        yield ConsumedMessage(r.topic, r.queue_id, r.queue_offset + i, m.body, m.properties,
                              r.born_timestamp, r.store_timestamp, r.physical_offset,
                              r.store_host, r.born_host, m.flag, flags, r.reconsume_times, i)
        i += 1


_MEMBER_SIZE = struct.Struct(">i")  # a batch member's first field: its total size


class GetStatus(enum.Enum):
    """Outcome of a get (RocketMQ GetMessageStatus, trimmed to what callers act on)."""

    FOUND = "found"
    NO_MATCHED_MESSAGE = "no_matched_message"  # records scanned, none passed the filter
    NO_NEW_MESSAGE = "no_new_message"  # offset == max offset: wait (long poll)
    OFFSET_TOO_SMALL = "offset_too_small"  # below the minimum: retention removed it
    OFFSET_OVERFLOW_ONE = "offset_overflow_one"  # == max offset (same as no new message)
    OFFSET_OVERFLOW_BADLY = "offset_overflow_badly"  # beyond max offset
    NO_MESSAGE_IN_QUEUE = "no_message_in_queue"  # the queue is empty


@dataclass(frozen=True, slots=True)
class GetResult:
    """Records read from one queue. ``next_offset`` is where the next get should
    start (past filtered-out records too); ``min_offset``/``max_offset`` bound the
    queue (``max_offset`` is the offset the next message will get)."""

    status: GetStatus
    records: tuple[StoredRecord, ...]
    next_offset: int
    min_offset: int
    max_offset: int

    @property
    def message_count(self) -> int:
        return sum(r.count for r in self.records)

    def messages(self, start_offset: int = 0, cursor: BatchCursor | None = None
                 ) -> Iterator[ConsumedMessage]:
        for r in self.records:
            yield from r.messages(start_offset, cursor)
