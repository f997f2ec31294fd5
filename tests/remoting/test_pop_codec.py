"""Sans-I/O pieces of issue 6 on the remoting wire, bytes and strings only: POP_CK strings,
BatchAck bodies (fastjson's short names, java.util.BitSet bytes), the transaction and pop
headers read loosely, and FerryMQ's own request codes outside RocketMQ's."""

from __future__ import annotations

import base64
import json

import pytest
from ferrymq.protocols.remoting import RequestCode
from ferrymq.protocols.remoting import headers as H
from ferrymq.protocols.remoting import pop as P
from ferrymq.protocols.remoting.bodies import BodyError
from ferrymq.protocols.remoting.codes import FERRY_CODE_MAX, FERRY_CODE_MIN, FerryRequestCode


def test_pop_ck_is_rocketmqs_eight_fields_and_the_receipt() -> None:
    info = P.ExtraInfo(5, 1700000000000, 30000, 0, "0", "broker-a", 3, 7, "AbC-_9")
    text = info.encode()
    assert text == "5 1700000000000 30000 0 0 broker-a 3 7 AbC-_9"
    assert P.parse_extra_info(text) == info
    # what RocketMQ's ExtraInfoUtil reads by index is there, in its places
    fields = text.split(" ")
    assert (fields[0], fields[3], fields[5], fields[6], fields[7]) == ("5", "0", "broker-a",
                                                                      "3", "7")
    assert P.receipt_of(text) == "AbC-_9"
    assert P.receipt_of("AbC-_9") == "AbC-_9", "a bare handle is accepted"
    eight = " ".join(fields[:8])
    assert P.parse_extra_info(eight).receipt is None
    with pytest.raises(P.ExtraInfoError, match="receipt"):
        P.receipt_of(eight)


@pytest.mark.parametrize("bad", ["", "1 2 3", "a b c d e f g h", "1 2 3 4 0 b x 7 r",
                                 "1 2 3 4 0 b 1 2 r extra", "x" * 3000, "1 2 3 4 0 b 1 2 " + "r" * 3000])
def test_malformed_pop_ck_strings_are_refused(bad: str) -> None:
    with pytest.raises(P.ExtraInfoError):
        P.receipt_of(bad)


def test_offset_infos_are_rocketmqs_forms() -> None:
    start, offsets = P.offset_info({0: [4, 5, 6], 2: [9]})
    assert start == "0 0 4;0 2 9" and offsets == "0 0 4,5,6;0 2 9"


def test_batch_ack_round_trip_uses_javas_bitset_bytes() -> None:
    ack = P.BatchAck("g", "T", "0", 100, 1, 0, 1700000000000, 30000, (100, 102, 109),
                     ("r1", "r2", "r3"))
    body = P.BatchAckBody("broker-a", (ack,))
    doc = json.loads(body.encode())
    raw = base64.b64decode(doc["acks"][0]["b"])
    assert raw == bytes([0b101, 0b10]), "BitSet.toByteArray: little-endian, bit i = offset i"
    assert doc["acks"][0]["so"] == 100 and doc["brokerName"] == "broker-a"
    assert P.BatchAckBody.decode(body.encode()) == body
    # RocketMQ's long names are read too (fastjson's alternateNames)
    long_form = json.dumps({"brokerName": "b", "acks": [{
        "consumerGroup": "g", "topic": "T", "retry": "0", "startOffset": 7, "queueId": 2,
        "reviveQueueId": 0, "popTime": 1, "invisibleTime": 2, "bitSet": "Aw=="}]}).encode()
    (a,) = P.BatchAckBody.decode(long_form).acks
    assert (a.consumer_group, a.queue_id, a.offsets, a.receipts) == ("g", 2, (7, 8), ())


@pytest.mark.parametrize("raw", [b"nope", b"[]", b'{"acks": [1]}', b'{"acks": [{"b": "!!"}]}',
                                 b'{"acks": [{"so": "x"}]}',
                                 b'{"acks": [{"b": "' + base64.b64encode(b"\x01" * 9000) + b'"}]}'])
def test_garbage_batch_ack_bodies_are_body_errors(raw: bytes) -> None:
    with pytest.raises(BodyError):
        P.BatchAckBody.decode(raw)


def test_ack_results_round_trip() -> None:
    rows = [("r1", 0, None), ("r2", 208, "stale")]
    assert P.decode_ack_results(P.encode_ack_results(rows)) == rows


def test_transaction_and_pop_headers_read_loose_input() -> None:
    h = H.EndTransactionRequestHeader.from_ext({
        "producerGroup": "pg", "tranStateTableOffset": 3, "commitLogOffset": "120",
        "commitOrRollback": "8", "msgId": "ID", "fromTransactionCheck": "1", "bname": "b"})
    assert (h.commitLogOffset, h.commitOrRollback, h.fromTransactionCheck) == (120, 8, True)
    assert h.transactionId is None
    with pytest.raises(H.HeaderError):
        H.EndTransactionRequestHeader.from_ext({"producerGroup": "pg", "msgId": "x"})
    c = H.CheckTransactionStateRequestHeader(4, 120, "U", "U", "OFF", "RMQ_SYS_TRANS_HALF_TOPIC",
                                             "broker-a")
    assert H.CheckTransactionStateRequestHeader.from_ext(c.to_ext()) == c
    assert c.to_ext()["bname"] == "broker-a"
    p = H.PopMessageRequestHeader.from_ext({"consumerGroup": "g", "topic": "T", "queueId": -1,
                                            "maxMsgNums": "32", "invisibleTime": 60000,
                                            "pollTime": "15000", "bornTime": "1",
                                            "initMode": "0", "order": "false"})
    assert (p.queueId, p.maxMsgNums, p.order, p.exp) == (-1, 32, False, None)
    with pytest.raises(H.HeaderError):
        H.PopMessageRequestHeader.from_ext({"consumerGroup": "g", "topic": "T"})
    r = H.ChangeInvisibleTimeResponseHeader(1, 2, 0, "ck")
    assert r.to_ext() == {"popTime": "1", "invisibleTime": "2", "reviveQid": "0",
                          "extraInfo": "ck"}


def test_ferrymq_codes_stay_out_of_rocketmqs() -> None:
    assert RequestCode.POP_MESSAGE == 200050 and RequestCode.BATCH_ACK_MESSAGE == 200151
    assert all(FERRY_CODE_MIN <= c <= FERRY_CODE_MAX for c in FerryRequestCode)
    assert not {int(c) for c in FerryRequestCode} & {int(c) for c in RequestCode}
    assert max(RequestCode) < FERRY_CODE_MIN
