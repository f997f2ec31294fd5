"""A pull unpacks a stored native batch into single RocketMQ records; the byte-level fast path
must give exactly what decoding and re-encoding each member gives."""

from __future__ import annotations

from ferrymq.core.message import StoredRecord
from ferrymq.gateways.remoting.processor import encode_message, unpack_native_batch
from ferrymq.protocols import record as rec
from ferrymq.protocols.remoting.messages import decode_messages, encode_batch


def stored_batch(n: int, qoff: int = 10) -> StoredRecord:
    body = encode_batch((f"body-{i}".encode() * (i + 1), {"TAGS": f"t{i}", "UNIQ_KEY": f"U{i}"},
                         i) for i in range(n))
    data = rec.encode(queue_id=3, flag=0, queue_offset=qoff, physical_offset=4096,
                      sys_flag=rec.FORMAT_NATIVE_BATCH | rec.MULTI_TAGS_FLAG, born_timestamp=11,
                      born_host=rec.host_bytes("10.0.0.1", 5000), store_timestamp=22,
                      store_host=rec.host_bytes("127.0.0.1", 10911), reconsume_times=0,
                      prepared_transaction_offset=0, body=body, topic=b"TopicX", properties=b"")
    return StoredRecord("TopicX", 3, qoff, n, 4096, rec.FORMAT_NATIVE_BATCH, 22, data)


def test_fast_unpack_equals_decode_and_reencode() -> None:
    sr = stored_batch(7)
    for start, limit in [(10, 100), (13, 100), (10, 2), (15, 5), (16, 1)]:
        fast: list[bytes] = []
        n, last = unpack_native_batch(sr.data, start, limit, fast)
        slow = [encode_message(m) for m in sr.messages(start)][:limit]
        assert b"".join(fast) == b"".join(slow)
        assert n == len(slow) and last == ((slow and decode_messages(slow[-1])[0].queue_offset)
                                           or 9)


def test_unpacked_records_carry_member_offsets_ids_and_no_format_bits() -> None:
    out: list[bytes] = []
    unpack_native_batch(stored_batch(3).data, 0, 10, out)
    msgs = decode_messages(b"".join(out))
    assert [m.queue_offset for m in msgs] == [10, 11, 12]
    assert [m.flag for m in msgs] == [0, 1, 2] and [m.tags for m in msgs] == ["t0", "t1", "t2"]
    assert all(m.sys_flag == rec.MULTI_TAGS_FLAG for m in msgs)
    assert len({m.offset_msg_id for m in msgs}) == 3, "each member has its own offset id"
    assert all(rec.body_crc(m.body) == rec.decode(r, check_crc=True).body_crc
               for m, r in zip(msgs, [b"".join(out[i:i + 4]) for i in range(0, 12, 4)],
                               strict=True))


def test_batch_offset_ids_are_the_cores() -> None:
    from ferrymq.core.message import offset_message_id
    from ferrymq.gateways.remoting.processor import batch_offset_ids
    host = rec.host_bytes("127.0.0.1", 10911)
    ids = batch_offset_ids(host, 123456789, 40).split(",")
    assert ids == [offset_message_id(host, 123456789, i) for i in range(40)]
