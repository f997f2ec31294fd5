"""Messages on the remoting wire: pull bodies (stored records back to back), batch bodies, ids.

A PULL_MESSAGE or QUERY_MESSAGE response body is RocketMQ CommitLog records
back to back (protocols/record.py); ``decode_messages`` reads them as a
RocketMQ client does, inflating bodies whose COMPRESSED flag is set. A
SEND_BATCH_MESSAGE body is RocketMQ's batch encoding (``encode_batch``).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .. import record as rec

PROPERTY_UNIQ_KEY = "UNIQ_KEY"
PROPERTY_KEYS = "KEYS"
PROPERTY_TAGS = "TAGS"
_OFFSET_ID = struct.Struct(">4sIq")


@dataclass(frozen=True, slots=True)
class MessageExt:
    """A message as a consumer receives it (RocketMQ MessageExt)."""

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


def decode_messages(body: bytes | memoryview) -> list[MessageExt]:
    """The records of a pull/query body. Raises record.RecordError on garbage."""
    out = []
    pos = 0
    end = len(body)
    while pos < end:
        r = rec.decode(body, pos, check_crc=False)
        payload = r.body
        if r.sys_flag & rec.COMPRESSED_FLAG:
            try:
                payload = zlib.decompress(payload)
            except zlib.error as exc:
                raise rec.RecordError(f"compressed body does not inflate: {exc}") from None
        out.append(MessageExt(r.topic, r.queue_id, r.queue_offset, payload, r.properties,
                              r.born_timestamp, r.store_timestamp, r.physical_offset,
                              r.store_host, r.born_host, r.sys_flag, r.flag, r.reconsume_times))
        pos += r.total_size
    return out


def encode_properties(properties: Mapping[str, str]) -> str:
    """The ``properties`` header field: ``name\\x01value\\x02`` pairs."""
    return "".join(f"{k}\x01{v}\x02" for k, v in properties.items())


def encode_batch(messages: Iterable[tuple[bytes, Mapping[str, str], int]]) -> bytes:
    """A SEND_BATCH_MESSAGE body from (body, properties, flag) triples."""
    return b"".join(rec.encode_member(flag, body, rec.encode_properties(props))
                    for body, props, flag in messages)
