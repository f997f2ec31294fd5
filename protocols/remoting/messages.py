"""Messages on the remoting wire: pull bodies (stored records back to back), batch bodies, ids.

A PULL_MESSAGE or QUERY_MESSAGE response body is RocketMQ CommitLog records
back to back (protocols/record.py); ``decode_messages`` reads them as a
RocketMQ client does, inflating bodies whose COMPRESSED flag is set. A
SEND_BATCH_MESSAGE body is RocketMQ's batch encoding (``encode_batch``).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

from .. import record as rec

PROPERTY_UNIQ_KEY = "UNIQ_KEY"
PROPERTY_KEYS = "KEYS"
PROPERTY_TAGS = "TAGS"
_OFFSET_ID = struct.Struct(">4sIq")


class MessageExt(NamedTuple):
    """A message as a consumer receives it (RocketMQ MessageExt). Immutable; a named
    tuple rather than a frozen dataclass because a consumer builds hundreds of
    thousands per second and tuple construction is several times cheaper."""

    topic: str
    queue_id: int
    queue_offset: int
    body: bytes
    properties: Mapping[str, str]
    born_timestamp: int
    store_timestamp: int
    physical_offset: int
    store_host: bytes
    born_host: bytes
    sys_flag: int = 0
    flag: int = 0
    reconsume_times: int = 0

    @property
    def tags(self) -> str | None:
        return self.properties.get(PROPERTY_TAGS)

    @property
    def keys(self) -> list[str]:
        return [k for k in self.properties.get(PROPERTY_KEYS, "").split(" ") if k]

    @property
    def offset_msg_id(self) -> str:
        return offset_msg_id(self.store_host, self.physical_offset)

    @property
    def msg_id(self) -> str:
        """The producer's id (UNIQ_KEY) when it set one, else the offset id."""
        return self.properties.get(PROPERTY_UNIQ_KEY) or self.offset_msg_id

    @property
    def born_host_str(self) -> str:
        return rec.host_str(self.born_host)

    @property
    def store_host_str(self) -> str:
        return rec.host_str(self.store_host)


def offset_msg_id(store_host: bytes, physical_offset: int) -> str:
    """RocketMQ's offsetMsgId: store address, port and CommitLog offset in hex (IPv4)."""
    return (store_host[:8] + struct.pack(">q", physical_offset)).hex().upper()


def parse_offset_msg_id(msg_id: str) -> tuple[str, int] | None:
    """(``address:port`` of the storing broker, CommitLog offset) of an offset id, or None.

    FerryMQ marks a batch member in the upper 16 bits of the port field; the port
    returned is the lower 16 bits (the broker's real port)."""
    if len(msg_id) != 32:
        return None
    try:
        raw = bytes.fromhex(msg_id)
    except ValueError:
        return None
    addr, port_field, phys = _OFFSET_ID.unpack(raw)
    return ".".join(str(b) for b in addr) + f":{port_field & 0xFFFF}", phys


def _properties(raw: bytes) -> dict[str, str]:
    if not raw:
        return {}
    out = {}
    for pair in raw.decode("utf-8", "replace").split("\x02"):
        name, sep, value = pair.partition("\x01")
        if sep:
            out[name] = value
    return out


class LazyProperties(Mapping[str, str]):
    """A record's properties, decoded on first use: a consumer that never looks at
    them (or only at some messages') does not pay for the dict. Read-only."""

    __slots__ = ("_d", "_raw")

    def __init__(self, raw: bytes) -> None:
        self._raw = raw
        self._d: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        d = self._d
        if d is None:
            d = self._d = _properties(self._raw)
        return d

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self._dict().get(key, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __eq__(self, other: object) -> bool:
        return self._dict() == (dict(other) if isinstance(other, Mapping) else other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._dict())


_TOPICS: dict[bytes, str] = {}
_FAST_MIN = rec.HEADER_SIZE + 3


def decode_messages(body: bytes | memoryview) -> list[MessageExt]:
    """The records of a pull/query body. Raises record.RecordError on garbage.

    The common record (IPv4 hosts, not compressed) is read with one struct unpack
    and slices, and its MessageExt built by ``tuple.__new__`` (the named tuple's own
    ``__new__`` is a Python function: a third of the time per message); anything else
    goes through ``record.decode``, the reference decoder. About 1.5 us a message."""
    body = bytes(body)
    out: list[MessageExt] = []
    pos = 0
    end = len(body)
    unpack = rec.HEADER.unpack_from
    head = rec.HEADER_SIZE
    slow_flags = rec.BORNHOST_V6_FLAG | rec.STOREHOST_V6_FLAG | rec.COMPRESSED_FLAG
    magic_ok = rec.MAGIC
    append = out.append
    topics = _TOPICS
    new = tuple.__new__
    ext = MessageExt
    lazy = LazyProperties
    while pos < end:
        if end - pos >= head:
            (total, magic, _crc, qid, flag, qoff, phys, sys_flag, born_ts, born_host, store_ts,
             store_host, reconsume, _prep, body_len) = unpack(body, pos)
            rend = pos + total
            if (magic == magic_ok and not sys_flag & slow_flags and rend <= end
                    and 0 <= body_len <= total - _FAST_MIN):
                p = pos + head + body_len  # the topic's length byte
                q = p + 1 + body[p]  # the properties' length
                if q + 2 <= rend and q + 2 + ((body[q] << 8) | body[q + 1]) == rend:
                    traw = body[p + 1:q]
                    topic = topics.get(traw)
                    if topic is None:
                        if len(topics) >= 10_000:
                            topics.clear()
                        topic = topics[traw] = traw.decode("utf-8", "replace")
                    append(new(ext, (topic, qid, qoff, body[pos + head:p], lazy(body[q + 2:rend]),
                                     born_ts, store_ts, phys, store_host, born_host, sys_flag,
                                     flag, reconsume)))
                    pos = rend
                    continue
        r = rec.decode(body, pos, check_crc=False)
        payload = r.body
        if r.sys_flag & rec.COMPRESSED_FLAG:
            payload = _inflate(payload)
        append(MessageExt(r.topic, r.queue_id, r.queue_offset, payload, r.properties,
                          r.born_timestamp, r.store_timestamp, r.physical_offset,
                          r.store_host, r.born_host, r.sys_flag, r.flag, r.reconsume_times))
        pos += r.total_size
    return out


# A compressed body inflates to at most this: RocketMQ's maxMessageSize is 4 MiB, and a
# zlib stream can claim a thousand times its size.
MAX_INFLATED = 64 << 20


def _inflate(payload: bytes) -> bytes:
    try:
        d = zlib.decompressobj()
        out = d.decompress(payload, MAX_INFLATED + 1)
    except zlib.error as exc:
        raise rec.RecordError(f"compressed body does not inflate: {exc}") from None
    if len(out) > MAX_INFLATED:
        raise rec.RecordError(f"compressed body inflates past {MAX_INFLATED} bytes")
    return out


def encode_properties(properties: Mapping[str, str]) -> str:
    """The ``properties`` header field: ``name\\x01value\\x02`` pairs."""
    return "".join(f"{k}\x01{v}\x02" for k, v in properties.items())


def encode_batch(messages: Iterable[tuple[bytes, Mapping[str, str], int]]) -> bytes:
    """A SEND_BATCH_MESSAGE body from (body, properties, flag) triples."""
    return b"".join(rec.encode_member(flag, body, rec.encode_properties(props))
                    for body, props, flag in messages)
