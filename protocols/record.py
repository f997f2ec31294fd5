"""The stored message record: RocketMQ 4.x's CommitLog layout, shared by the store and the pull wire.

A RocketMQ pull response carries these records back to back, so the bytes the
store appends ARE the bytes a RocketMQ consumer decodes. The layout (all
integers big-endian, as Java's ByteBuffer writes them):

    total size 4 | magic 4 | body CRC 4 | queue id 4 | flag 4 | queue offset 8 |
    physical offset 8 | system flags 4 | born timestamp 8 | born host 8 or 20 |
    store timestamp 8 | store host 8 or 20 | reconsume times 4 |
    prepared transaction offset 8 | body length 4 | body |
    topic length 1 | topic | properties length 2 (or 4) | properties

Hosts are 4 address bytes + a 4-byte port (16 + 4 with the IPv6 system flags).
Properties are ``name\\x01value\\x02`` pairs in UTF-8. A blank record
(``total size | BLANK_MAGIC``) fills the end of a CommitLog segment.

FerryMQ adds two record formats in system-flag bits RocketMQ does not use; in
both the record's body holds several messages and its queue offset is the first
one's (see docs/storage.md):

- ``FORMAT_NATIVE_BATCH``: the body is RocketMQ's batch encoding (what a
  SEND_BATCH_MESSAGE request carries): per message ``total size 4 | magic 4 |
  body CRC 4 | flag 4 | body length 4 | body | properties length 2 | properties``.
- ``FORMAT_KAFKA_BATCH``: the body is one Kafka RecordBatch (magic 2), stored
  verbatim so that a Kafka consumer gets it back byte for byte.

and one modifier, ``FORMAT_LONG_PROPERTIES``: every properties length of the
record (its own, or each batch member's) is 4 bytes, not RocketMQ's 2, so a
property area may exceed 32,767 bytes (an MQTT topic name may be 65,535). No
RocketMQ client reads such a record: ``encode``, which builds records for the
RocketMQ wire, fits the properties of one into 32,767 bytes (``fit_properties``)
unless told that its reader understands the long form.

``RECORD`` (construct) is the readable specification and the reference codec;
``encode``/``decode`` are the struct-based fast path the store uses, proven
identical by tests/test_record.py.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import construct as c

from .errors import LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from mmap import mmap  # the store decodes records in place, out of its mapped files

MAGIC = -626843481  # 0xDAA320A7, RocketMQ MessageDecoder.MESSAGE_MAGIC_CODE
BLANK_MAGIC = -875286124  # 0xCBD43194, RocketMQ MessageDecoder.BLANK_MAGIC_CODE

# System flags (RocketMQ MessageSysFlag).
COMPRESSED_FLAG = 0x1
MULTI_TAGS_FLAG = 0x1 << 1
TRANSACTION_PREPARED_TYPE = 0x1 << 2
TRANSACTION_COMMIT_TYPE = 0x2 << 2
TRANSACTION_ROLLBACK_TYPE = 0x3 << 2
TRANSACTION_MASK = 0x3 << 2
BORNHOST_V6_FLAG = 0x1 << 4
STOREHOST_V6_FLAG = 0x1 << 5

# FerryMQ record formats: three bits RocketMQ leaves unused (it stops at bit 10).
# Bits 20-21 say what the body holds; bit 22 that properties lengths are 32-bit.
FORMAT_SHIFT = 20
FORMAT_MASK = 0x7 << FORMAT_SHIFT
FORMAT_SINGLE = 0
FORMAT_NATIVE_BATCH = 0x1 << FORMAT_SHIFT
FORMAT_KAFKA_BATCH = 0x2 << FORMAT_SHIFT
FORMAT_LONG_PROPERTIES = 0x4 << FORMAT_SHIFT

NAME_VALUE_SEPARATOR = "\x01"
PROPERTY_SEPARATOR = "\x02"

MAX_TOPIC_BYTES = 255  # one length byte
MAX_PROPERTIES_BYTES = 32767  # a Java short: what a RocketMQ client reads
MAX_LONG_PROPERTIES_BYTES = 1 << 20
"""A long property area's limit: an MQTT 5 PUBLISH's topic (65,535 bytes) and
properties fit many times over (the MQTT door's default packet limit is 1 MiB)."""

OMITTED_PROPERTIES = "FERRYMQ_OMITTED_PROPERTIES"
"""Set by ``fit_properties``: the names of the properties left out, comma-separated."""

PULL_LONG_PROPERTIES = "ferrymqLongProperties"
"""The ext field (value ``true``) by which FerryMQ's own client tells the remoting door
that it reads FORMAT_LONG_PROPERTIES records: it gets them as stored."""

# Offsets inside a record (fixed part; IPv4 hosts).
POS_TOTAL_SIZE = 0
POS_MAGIC = 4
POS_BODY_CRC = 8
POS_QUEUE_ID = 12
POS_QUEUE_OFFSET = 20
POS_PHYSICAL_OFFSET = 28
POS_SYS_FLAG = 36
BLANK_SIZE = 8  # total size + blank magic

# ----------------------------------------------------------------- specification

_Host4 = c.Struct("address" / c.Bytes(4), "port" / c.Int32sb)
_Host6 = c.Struct("address" / c.Bytes(16), "port" / c.Int32sb)

RECORD = c.Struct(
    "total_size" / c.Int32sb,
    "magic" / c.Const(MAGIC, c.Int32sb),
    "body_crc" / c.Int32sb,
    "queue_id" / c.Int32sb,
    "flag" / c.Int32sb,
    "queue_offset" / c.Int64sb,
    "physical_offset" / c.Int64sb,
    "sys_flag" / c.Int32sb,
    "born_timestamp" / c.Int64sb,
    "born_host" / c.IfThenElse(c.this.sys_flag & BORNHOST_V6_FLAG, _Host6, _Host4),
    "store_timestamp" / c.Int64sb,
    "store_host" / c.IfThenElse(c.this.sys_flag & STOREHOST_V6_FLAG, _Host6, _Host4),
    "reconsume_times" / c.Int32sb,
    "prepared_transaction_offset" / c.Int64sb,
    "body" / c.Prefixed(c.Int32sb, c.GreedyBytes),
    "topic" / c.PascalString(c.Int8ub, "utf8"),
    "properties" / c.Prefixed(
        c.IfThenElse(c.this.sys_flag & FORMAT_LONG_PROPERTIES, c.Int32sb, c.Int16sb),
        c.GreedyBytes),
)
"""The CommitLog record, declared once. ``total_size`` must equal the encoded length."""


def _batch_member(properties_length: c.Construct) -> c.Struct:
    return c.Struct(
        "total_size" / c.Int32sb,
        "magic" / c.Int32sb,
        "body_crc" / c.Int32sb,
        "flag" / c.Int32sb,
        "body" / c.Prefixed(c.Int32sb, c.GreedyBytes),
        "properties" / c.Prefixed(properties_length, c.GreedyBytes),
    )


BATCH_MEMBER = _batch_member(c.Int16sb)
"""One message inside a native batch body (RocketMQ MessageDecoder.encodeMessage)."""

BATCH_MEMBER_LONG = _batch_member(c.Int32sb)
"""One message inside the body of a FORMAT_NATIVE_BATCH | FORMAT_LONG_PROPERTIES record."""

# ------------------------------------------------------------------ fast path

# Everything up to and including the body length, for IPv4 born and store hosts.
HEADER = struct.Struct(">iiiiiqqiq8sq8siqi")
HEADER_SIZE = HEADER.size  # 88
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_U16 = struct.Struct(">H")
_MEMBER_HEAD = struct.Struct(">iiiii")  # total, magic, crc, flag, body length


class RecordError(RemoteProtocolError, ValueError):
    """Bytes that are not a valid record: a torn write, corruption, or a peer's garbage."""


class RecordEncodeError(LocalProtocolError, ValueError):
    """Values that do not fit the record layout (the caller should have refused them)."""


def body_crc(body: bytes | memoryview) -> int:
    """RocketMQ's body CRC: CRC-32 (zlib polynomial) masked to 31 bits (UtilAll.crc32)."""
    return zlib.crc32(body) & 0x7FFFFFFF


def encode_properties(properties: Mapping[str, str]) -> bytes:
    """``name\\x01value\\x02`` pairs, as RocketMQ's messageProperties2String writes them."""
    if not properties:
        return b""
    if type(properties) is EncodedProperties:
        return properties.raw  # already in this encoding: written back as it came
    return "".join(f"{k}\x01{v}\x02" for k, v in properties.items()).encode()


def fit_properties(raw: bytes, limit: int = MAX_PROPERTIES_BYTES) -> bytes:
    """Encoded properties made to fit ``limit`` bytes (a RocketMQ client's 16-bit
    length) by leaving out whole properties, the longest first, and naming them in
    OMITTED_PROPERTIES; ``raw`` itself if it fits. A value is never cut: a shortened
    MQTT topic would be another topic."""
    if len(raw) <= limit:
        return raw
    pairs = [p + b"\x02" for p in raw.split(b"\x02") if b"\x01" in p]
    total = sum(len(p) for p in pairs)
    omitted: list[bytes] = []
    for p in sorted(pairs, key=len, reverse=True):
        marker = OMITTED_PROPERTIES.encode() + b"\x01" + b",".join(
            [*omitted, p.partition(b"\x01")[0]]) + b"\x02"
        omitted.append(p.partition(b"\x01")[0])
        total -= len(p)
        pairs.remove(p)
        if total + len(marker) <= limit:
            return b"".join(pairs) + marker
    return b""


def decode_properties(raw: bytes | memoryview | str) -> dict[str, str]:
    """Inverse of ``encode_properties``; tolerant of a missing final separator."""
    if not raw:
        return {}
    text = raw if isinstance(raw, str) else bytes(raw).decode("utf-8", "replace")
    out: dict[str, str] = {}
    for pair in text.split(PROPERTY_SEPARATOR):
        if pair:
            name, sep, value = pair.partition(NAME_VALUE_SEPARATOR)
            if sep:
                out[name] = value
    return out


def find_property(raw: bytes, name: bytes) -> str | None:
    """The value of property ``name`` in encoded properties, without decoding the rest
    (``name`` must be encoded and end with ``\x01``, e.g. ``b"TAGS\x01"``)."""
    i = raw.find(name)
    while i > 0 and raw[i - 1] != 2:  # a longer name that ends with this one
        i = raw.find(name, i + 1)
    if i < 0:
        return None
    start = i + len(name)
    end = raw.find(b"\x02", start)
    return raw[start:end if end >= 0 else len(raw)].decode("utf-8", "replace")


class EncodedProperties(Mapping[str, str]):
    """Properties still in their stored encoding, decoded on first use.

    A door that receives properties encoded (RocketMQ remoting sends the very
    ``name\x01value\x02`` text the record holds) hands them to the store as they
    came, and a reader that wants one property finds it without decoding the
    rest. Behaves as a read-only mapping of str to str."""

    __slots__ = ("_dict", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._dict: dict[str, str] | None = None

    def _decoded(self) -> dict[str, str]:
        if self._dict is None:
            self._dict = decode_properties(self.raw)
        return self._dict

    def get(self, name: str, default: str | None = None) -> str | None:  # type: ignore[override]
        if self._dict is not None:
            return self._dict.get(name, default)
        value = find_property(self.raw, name.encode() + b"\x01")
        return default if value is None else value

    def __getitem__(self, name: str) -> str:
        return self._decoded()[name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[str]:
        return iter(self._decoded())

    def __len__(self) -> int:
        return len(self._decoded())

    def __bool__(self) -> bool:
        return bool(self.raw)

    def any_of(self, names: Iterable[bytes]) -> bool:
        """Whether any of the encoded names (``b"DELAY\x01"``...) is present."""
        return any(find_property(self.raw, n) is not None for n in names)

    def __repr__(self) -> str:
        return f"EncodedProperties({self._decoded()!r})"


def host_bytes(address: str, port: int) -> bytes:
    """An IPv4 ``address:port`` as the 8 bytes of a record's host field."""
    parts = [int(p) for p in address.split(".")]
    if len(parts) != 4 or not all(0 <= p <= 255 for p in parts):
        raise ValueError(f"not an IPv4 address: {address!r}")
    return bytes(parts) + _I32.pack(port)


def host_str(raw: bytes) -> str:
    """The 8 (IPv4) or 20 (IPv6) bytes of a host field as ``address:port``."""
    if len(raw) == 8:
        return ".".join(str(b) for b in raw[:4]) + f":{_I32.unpack_from(raw, 4)[0]}"
    import ipaddress

    return f"[{ipaddress.IPv6Address(raw[:16])}]:{_I32.unpack_from(raw, 16)[0]}"


def record_size(body_len: int, topic_len: int, props_len: int) -> int:
    """The encoded size of a record with IPv4 hosts (as the store writes it: a property
    area past MAX_PROPERTIES_BYTES takes the 4-byte length)."""
    return (HEADER_SIZE + body_len + 1 + topic_len + (2 if props_len <= MAX_PROPERTIES_BYTES else 4)
            + props_len)


@dataclass(frozen=True, slots=True)
class Record:
    """A decoded CommitLog record. ``body`` of a batch record holds its members."""

    total_size: int
    body_crc: int
    queue_id: int
    flag: int
    queue_offset: int
    physical_offset: int
    sys_flag: int
    born_timestamp: int
    born_host: bytes
    store_timestamp: int
    store_host: bytes
    reconsume_times: int
    prepared_transaction_offset: int
    body: bytes
    topic: str
    properties_raw: bytes

    @property
    def format(self) -> int:
        return self.sys_flag & FORMAT_MASK

    @property
    def properties(self) -> Mapping[str, str]:
        return EncodedProperties(self.properties_raw) if self.properties_raw else {}


def encode(
    *,
    queue_id: int,
    flag: int,
    queue_offset: int,
    physical_offset: int,
    sys_flag: int,
    born_timestamp: int,
    born_host: bytes,
    store_timestamp: int,
    store_host: bytes,
    reconsume_times: int,
    prepared_transaction_offset: int,
    body: bytes,
    topic: bytes,
    properties: bytes,
    long_properties: bool = False,
) -> bytes:
    """One record with IPv4 hosts (8-byte ``born_host``/``store_host``); topic and
    properties already UTF-8 encoded. The properties length is 4 bytes if
    ``sys_flag`` has FORMAT_LONG_PROPERTIES, or if they exceed MAX_PROPERTIES_BYTES
    and ``long_properties`` says the reader understands that form (the flag is then
    set); otherwise 2 bytes, and properties that do not fit are fitted
    (``fit_properties``): the record a RocketMQ client can read. Raises RecordEncodeError
    for a topic over 255 bytes or long properties over MAX_LONG_PROPERTIES_BYTES."""
    if len(topic) > MAX_TOPIC_BYTES:
        raise RecordEncodeError("topic too long for the record layout")
    if len(properties) > MAX_PROPERTIES_BYTES and long_properties:
        sys_flag |= FORMAT_LONG_PROPERTIES
    if sys_flag & FORMAT_LONG_PROPERTIES:
        if len(properties) > MAX_LONG_PROPERTIES_BYTES:
            raise RecordEncodeError("properties too long for the record layout")
        plen = _I32.pack(len(properties))
    else:
        properties = fit_properties(properties)
        plen = _U16.pack(len(properties))
    body_len = len(body)
    total = HEADER_SIZE + body_len + 1 + len(topic) + len(plen) + len(properties)
    head = HEADER.pack(
        total, MAGIC, body_crc(body), queue_id, flag, queue_offset, physical_offset,
        sys_flag & ~(BORNHOST_V6_FLAG | STOREHOST_V6_FLAG), born_timestamp, born_host,
        store_timestamp, store_host, reconsume_times, prepared_transaction_offset, body_len,
    )
    return b"".join((head, body, bytes((len(topic),)), topic, plen, properties))


def decode(buf: bytes | bytearray | memoryview | mmap, pos: int = 0, *, check_crc: bool = True) -> Record:
    """Decode the record starting at ``pos``. Raises RecordError for a blank record,
    a bad magic, a size that does not add up, or (with ``check_crc``) a body CRC mismatch."""
    avail = len(buf) - pos
    if avail < 8:
        raise RecordError("truncated record header")
    total, magic = struct.unpack_from(">ii", buf, pos)
    if magic != MAGIC:
        raise RecordError(f"bad magic {magic:#x}" if magic != BLANK_MAGIC else "blank record")
    if total < HEADER_SIZE + 3 or total > avail:
        raise RecordError(f"record size {total} out of range (available {avail})")
    sys_flag = _I32.unpack_from(buf, pos + POS_SYS_FLAG)[0]
    if not sys_flag & (BORNHOST_V6_FLAG | STOREHOST_V6_FLAG):
        (total, _, crc, queue_id, flag, queue_offset, physical_offset, sys_flag, born_ts,
         born_host, store_ts, store_host, reconsume, prepared, body_len) = HEADER.unpack_from(buf, pos)
        p = pos + HEADER_SIZE
    else:
        return _decode_general(buf, pos, total, check_crc)
    end = pos + total
    if body_len < 0 or p + body_len + 3 > end:
        raise RecordError("body length out of range")
    body = bytes(buf[p:p + body_len])
    p += body_len
    topic_len = buf[p]
    p += 1
    topic_end = p + topic_len
    long = sys_flag & FORMAT_LONG_PROPERTIES
    if topic_end + (4 if long else 2) > end:
        raise RecordError("topic length out of range")
    topic = bytes(buf[p:topic_end]).decode("utf-8", "replace")
    if long:
        props_len = _I32.unpack_from(buf, topic_end)[0]
        p = topic_end + 4
    else:
        props_len = _U16.unpack_from(buf, topic_end)[0]
        p = topic_end + 2
    if p + props_len != end:
        raise RecordError("record size does not match its fields")
    if check_crc and body_crc(body) != crc:
        raise RecordError("body CRC mismatch")
    return Record(total, crc, queue_id, flag, queue_offset, physical_offset, sys_flag, born_ts,
                  born_host, store_ts, store_host, reconsume, prepared, body, topic,
                  bytes(buf[p:end]))


def _decode_general(buf: bytes | bytearray | memoryview | mmap, pos: int, total: int,
                    check_crc: bool) -> Record:
    """Records with IPv6 hosts are rare (FerryMQ writes IPv4); construct decodes them."""
    try:
        parsed = RECORD.parse(bytes(buf[pos:pos + total]))
    except c.ConstructError as exc:
        raise RecordError(str(exc)) from exc
    if check_crc and body_crc(parsed.body) != parsed.body_crc:
        raise RecordError("body CRC mismatch")
    return Record(
        total, parsed.body_crc, parsed.queue_id, parsed.flag, parsed.queue_offset,
        parsed.physical_offset, parsed.sys_flag, parsed.born_timestamp,
        parsed.born_host.address + _I32.pack(parsed.born_host.port), parsed.store_timestamp,
        parsed.store_host.address + _I32.pack(parsed.store_host.port), parsed.reconsume_times,
        parsed.prepared_transaction_offset, parsed.body, parsed.topic, parsed.properties,
    )


def peek_size(buf: bytes | bytearray | memoryview | mmap, pos: int) -> tuple[int, int]:
    """(total size, magic) of the record at ``pos`` without decoding it."""
    return struct.unpack_from(">ii", buf, pos)


# -------------------------------------------------------------- native batches


@dataclass(frozen=True, slots=True)
class BatchMember:
    """One message of a native batch body."""

    flag: int
    body: bytes
    properties_raw: bytes

    @property
    def properties(self) -> Mapping[str, str]:
        return EncodedProperties(self.properties_raw) if self.properties_raw else {}


def encode_member(flag: int, body: bytes, properties: bytes, long: bool = False) -> bytes:
    """One batch member, as RocketMQ's client encodes it (magic and CRC filled in);
    with ``long``, as a member of a FORMAT_LONG_PROPERTIES batch (4-byte properties
    length)."""
    limit, plen = (MAX_LONG_PROPERTIES_BYTES, _I32) if long else (MAX_PROPERTIES_BYTES, _U16)
    if len(properties) > limit:
        raise RecordEncodeError("properties too long for the record layout")
    total = 20 + len(body) + plen.size + len(properties)
    return b"".join((_MEMBER_HEAD.pack(total, MAGIC, body_crc(body), flag, len(body)), body,
                     plen.pack(len(properties)), properties))


def iter_members(body: bytes | memoryview, skip: int = 0, long: bool = False
                 ) -> Iterator[BatchMember]:
    """The members of a native batch body, in order, from member ``skip`` on (the
    ones before are stepped over by their sizes, not built); ``long`` for the body of
    a FORMAT_LONG_PROPERTIES record. Raises RecordError on a member whose sizes do
    not add up (RocketMQ clients send magic and CRC as 0: not checked)."""
    plen = _I32 if long else _U16
    least = 20 + plen.size
    end = len(body)
    p = 0
    while skip > 0 and p < end:
        if end - p < least:
            raise RecordError("truncated batch member")
        total = _I32.unpack_from(body, p)[0]
        if total < least or p + total > end:
            raise RecordError("batch member size out of range")
        p += total
        skip -= 1
    while p < end:
        if end - p < least:
            raise RecordError("truncated batch member")
        total, _magic, _crc, flag, body_len = _MEMBER_HEAD.unpack_from(body, p)
        q = p + 20 + body_len
        if total < least or p + total > end or body_len < 0 or q + plen.size > p + total:
            raise RecordError("batch member size out of range")
        props_len = plen.unpack_from(body, q)[0]
        if q + plen.size + props_len != p + total:
            raise RecordError("batch member size does not match its fields")
        yield BatchMember(flag, bytes(body[p + 20:q]), bytes(body[q + plen.size:p + total]))
        p += total


def count_members(body: bytes | memoryview, long: bool = False) -> int:
    """How many members a native batch body holds (validating every size)."""
    n = 0
    for _ in iter_members(body, long=long):
        n += 1
    return n
