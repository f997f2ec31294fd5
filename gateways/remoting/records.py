"""Stored messages as RocketMQ message records on the remoting wire (pure: no I/O, no broker).

A pull of natively produced messages copies the stored bytes; these build the
records a RocketMQ consumer needs when the stored record is not one already: a
batch member unpacked (``unpack_native_batch``, ``encode_message``), and the
offset message ids of a batch's members (``batch_offset_ids``).
"""

from __future__ import annotations

import struct

from ...core.message import ConsumedMessage
from ...protocols import record as rec


def host_bytes_of(peer: str) -> bytes:
    host, _, port = peer.rpartition(":")
    try:
        return rec.host_bytes(host, int(port))
    except ValueError:
        return b"\x00" * 8


def batch_offset_ids(store_host: bytes, phys: int, count: int) -> str:
    """The offset ids of a batch record's members, comma-separated (what
    ``PutResult.offset_message_id(i)`` gives for each i, built as text at once)."""
    addr = store_host[:4].hex().upper()
    port = int.from_bytes(store_host[4:8], "big", signed=True) & 0xFFFF
    tail = f"{phys & 0xFFFFFFFFFFFFFFFF:016X}"
    return ",".join(f"{addr}{((i << 16) | port) & 0xFFFFFFFF:08X}{tail}" for i in range(count))


def encode_message(m: ConsumedMessage, long_properties: bool = False) -> bytes:
    """One message as a RocketMQ record (a batch member unpacked for a RocketMQ
    consumer): its own queue offset, FerryMQ's format bits cleared, and the member
    index in the store host's port field so its offset id is the core's id.
    Properties past 32,767 bytes are fitted (record.fit_properties) unless
    ``long_properties`` (FerryMQ's client asked for the long form)."""
    store_host = m.store_host
    if m.batch_index:
        port = int.from_bytes(store_host[4:8], "big", signed=True) & 0xFFFF
        store_host = store_host[:4] + ((m.batch_index << 16) | port).to_bytes(4, "big",
                                                                             signed=True)
    return rec.encode(
        queue_id=m.queue_id, flag=m.flag, queue_offset=m.queue_offset,
        physical_offset=m.physical_offset, sys_flag=m.sys_flag & ~rec.FORMAT_MASK,
        born_timestamp=m.born_timestamp, born_host=m.born_host[:8] if len(m.born_host) >= 8
        else b"\x00" * 8, store_timestamp=m.store_timestamp, store_host=store_host[:8],
        reconsume_times=m.reconsume_times, prepared_transaction_offset=0, body=m.body,
        topic=m.topic.encode(), properties=rec.encode_properties(m.properties),
        long_properties=long_properties)


_MEMBER_HEAD = struct.Struct(">iiiii")  # total size, magic, CRC, flag, body length
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")


def unpack_native_batch(data: bytes, start: int, limit: int, out: list[bytes]) -> tuple[int, int]:
    """Append to ``out`` the members of a stored native batch record at queue offsets
    >= ``start`` (at most ``limit``), each as a RocketMQ record of its own: the fast path
    of ``encode_message`` for unfiltered pulls, working on the bytes without decoding
    properties. Returns (members appended, queue offset of the last one)."""
    (_total, _magic, _crc, qid, _flag, qoff, phys, sys_flag, born_ts, born_host, store_ts,
     store_host, reconsume, _prepared, body_len) = rec.HEADER.unpack_from(data, 0)
    body_end = rec.HEADER_SIZE + body_len
    tail = data[body_end:body_end + 1 + data[body_end]]  # topic length byte and topic
    sys_flag &= ~rec.FORMAT_MASK
    port = _I32.unpack_from(store_host, 4)[0] & 0xFFFF
    pack, crc = rec.HEADER.pack, rec.body_crc
    p = rec.HEADER_SIZE
    i = n = 0
    last = qoff - 1
    while p < body_end and n < limit:
        mtotal, _m, _c, mflag, mlen = _MEMBER_HEAD.unpack_from(data, p)
        if qoff + i >= start:
            b0 = p + 20
            body = data[b0:b0 + mlen]
            props_end = p + mtotal
            props = data[b0 + mlen:props_end]  # length (2 bytes) and properties
            host = store_host if i == 0 else store_host[:4] + _I32.pack((i << 16) | port)
            out.append(pack(rec.HEADER_SIZE + mlen + len(tail) + len(props), rec.MAGIC, crc(body),
                            qid, mflag, qoff + i, phys, sys_flag, born_ts, born_host, store_ts,
                            host, reconsume, 0, mlen))
            out.append(body)
            out.append(tail)
            out.append(props)
            n += 1
            last = qoff + i
        p += mtotal
        i += 1
    return n, last
