"""The remoting codec with byte strings alone: frames, both header encodings, typed headers,
bodies, and the frames the real RocketMQ C++ client sends."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from ferrymq.protocols import record as rec
from ferrymq.protocols.remoting import (
    FrameDecoder,
    RemotingCommand,
    RemotingProtocolError,
    RequestCode,
    ResponseCode,
    SerializeType,
    bodies,
    encode,
    headers,
    messages,
    request,
    response_to,
)
from ferrymq.protocols.remoting.codes import LanguageCode
from ferrymq.protocols.sentinels import NEED_DATA

# Frames captured from the RocketMQ C++ client (PyPI `rocketmq`), kept with the tests.
TESTDATA = Path(__file__).resolve().parents[1] / "data" / "rocketmq"


def cpp_frame(header: dict, body: bytes = b"") -> bytes:
    """A frame as the C++ client writes it: jsoncpp's FastWriter (sorted keys, compact,
    a trailing newline), serialize type 0."""
    h = (json.dumps(header, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
         + "\n").encode()
    return struct.pack(">ii", 4 + len(h) + len(body), len(h)) + h + body


def decode_one(raw: bytes) -> RemotingCommand:
    d = FrameDecoder()
    d.receive_data(raw)
    cmd = d.next_command()
    assert isinstance(cmd, RemotingCommand)
    assert d.next_command() is NEED_DATA
    return cmd


# ------------------------------------------------------------------ C++ client captures


def captured_frames() -> list[dict]:
    lines = (TESTDATA / "cpp_frames.jsonl").read_text().splitlines()
    return [json.loads(x) for x in lines if '"header"' in x]


def test_cpp_client_route_queries_decode_byte_for_byte() -> None:
    frames = captured_frames()
    assert frames
    for f in frames:
        raw = cpp_frame(f["header"])
        assert len(raw) - 4 == f["total"], "the reconstruction matches the captured length"
        assert struct.unpack(">i", raw[4:8])[0] & 0xFFFFFF == f["header_len"]
        cmd = decode_one(raw)
        assert cmd.code == RequestCode.GET_ROUTEINFO_BY_TOPIC
        assert cmd.language == LanguageCode.CPP and cmd.version == 63
        assert cmd.opaque == f["header"]["opaque"] and not cmd.is_response
        topic = headers.TopicHeader.from_ext(cmd.ext_fields).topic
        assert topic == f["header"]["extFields"]["topic"]
        assert cmd.ext("Signature"), "signature fields are carried (and ignored)"


def test_cpp_client_send_message_with_int_fields_decodes() -> None:
    rows = [json.loads(x) for x in (TESTDATA / "rt_cpp.jsonl").read_text().splitlines()]
    send = next(r for r in rows if r["code"] == RequestCode.SEND_MESSAGE)
    raw = cpp_frame({"code": send["code"], "extFields": send["ext"], "flag": send["flag"],
                     "language": send["lang"], "opaque": 11, "remark": "",
                     "version": send["version"]}, send["body"].encode())
    cmd = decode_one(raw)
    h = headers.SendMessageRequestHeader.from_ext(cmd.ext_fields)
    assert h.topic == "ProbeTopic" and h.producerGroup == "PID-probe"
    assert h.queueId == 0 and h.defaultTopicQueueNums == 4, "ints where strings belong"
    assert h.batch is False, "'0' as a boolean"
    assert h.bornTimestamp == 1795305724072
    props = rec.decode_properties(h.properties or "")
    assert props["TAGS"] == "TagA" and props["KEYS"] == "k1" and "UNIQ_KEY" in props
    assert cmd.body == b"hello"
    unreg = next(r for r in rows if r["code"] == RequestCode.UNREGISTER_CLIENT)
    u = headers.UnregisterClientRequestHeader.from_ext(unreg["ext"])
    assert u.clientID == "12789-127.0.0.1@DEFAULT" and u.producerGroup == "PID-probe"


# ------------------------------------------------------------------ frames


@pytest.mark.parametrize("stype", [SerializeType.JSON, SerializeType.ROCKETMQ])
def test_command_round_trips_in_both_header_encodings(stype: int) -> None:
    cmd = RemotingCommand(RequestCode.PULL_MESSAGE, 42, 0, {"topic": "t", "queueId": "3"},
                          b"\x00body", "a remark é", LanguageCode.PYTHON, 7, stype)
    back = decode_one(encode(cmd))
    assert back == cmd


def test_binary_header_layout_is_rocketmqs() -> None:
    cmd = RemotingCommand(34, 5, 0, {"k": "v"}, b"", None, LanguageCode.JAVA, 9,
                          SerializeType.ROCKETMQ)
    raw = encode(cmd)
    header = (struct.pack(">hbhii", 34, 0, 9, 5, 0) + struct.pack(">i", 0)
              + struct.pack(">i", 2 + 1 + 4 + 1) + struct.pack(">h", 1) + b"k"
              + struct.pack(">i", 1) + b"v")
    assert raw == struct.pack(">ii", 4 + len(header), (1 << 24) | len(header)) + header


def test_json_header_is_what_rocketmq_emits() -> None:
    req = request(RequestCode.SEND_MESSAGE, 9, {"a": 1, "b": True, "c": None})
    resp = response_to(req, ResponseCode.SUCCESS, {"queueId": 2})
    doc = json.loads(encode(resp)[8:])
    assert doc == {"code": 0, "extFields": {"queueId": "2"}, "flag": 1, "language": "JAVA",
                   "opaque": 9, "serializeTypeCurrentRPC": "JSON", "version": 0}
    assert json.loads(encode(req)[8:])["extFields"] == {"a": "1", "b": "true"}


def test_decoder_splits_a_stream_fed_byte_by_byte() -> None:
    cmds = [request(10 + i, i, {"x": str(i)}, bytes(i)) for i in range(5)]
    stream = b"".join(encode(c) for c in cmds)
    d = FrameDecoder()
    got = []
    for i in range(len(stream)):
        d.receive_data(stream[i:i + 1])
        while (c := d.next_command()) is not NEED_DATA:
            got.append(c)
    assert got == cmds
    assert d.buffered == 0


def test_frame_announcing_2_gib_is_refused_at_its_length_word() -> None:
    d = FrameDecoder()
    with pytest.raises(RemotingProtocolError, match="frame length"):
        d.receive_data(struct.pack(">i", 0x7FFFFFFF))


def test_maximum_frame_is_configurable() -> None:
    d = FrameDecoder(max_frame=100)
    with pytest.raises(RemotingProtocolError):
        d.receive_data(encode(request(10, 1, body=b"x" * 200)))
    FrameDecoder(max_frame=300).receive_data(encode(request(10, 1, body=b"x" * 200)))


@pytest.mark.parametrize("raw", [
    struct.pack(">i", -5),  # negative length
    struct.pack(">ii", 8, 100) + b"xxxx",  # header longer than the frame
    struct.pack(">ii", 8, 4) + b"{{{{",  # not JSON
    struct.pack(">ii", 8, 4) + b"[12]",  # JSON, not an object
    struct.pack(">ii", 8, (7 << 24) | 4) + b"abcd",  # unknown serialize type
    struct.pack(">ii", 8, (1 << 24) | 4) + b"abcd",  # binary header truncated
    struct.pack(">ii", 4 + 21, (1 << 24) | 21) + struct.pack(">hbhii", 1, 0, 0, 1, 0)
    + struct.pack(">ii", 1000, 0),  # remark length past the header
    b"GET / HTTP/1.1\r\n\r\n",  # garbage
])
def test_garbage_is_a_protocol_error(raw: bytes) -> None:
    d = FrameDecoder()
    with pytest.raises(RemotingProtocolError):
        d.receive_data(raw)
        d.next_command()


def test_truncated_frame_waits_for_more() -> None:
    raw = encode(request(10, 1, {"a": "b"}, b"body"))
    d = FrameDecoder()
    d.receive_data(raw[:-1])
    assert d.next_command() is NEED_DATA
    d.receive_data(raw[-1:])
    assert d.next_command() is not NEED_DATA


# ------------------------------------------------------------------ headers


def test_send_message_v2_uses_single_letter_fields() -> None:
    h = headers.SendMessageRequestHeader("pg", "T", queueId=2, sysFlag=0, bornTimestamp=5,
                                         properties="TAGS\x01a\x02", batch=True)
    ext = h.to_ext_v2()
    assert ext == {"a": "pg", "b": "T", "c": "TBW102", "d": "4", "e": "2", "f": "0", "g": "5",
                   "h": "0", "i": "TAGS\x01a\x02", "m": "true"}
    assert headers.SendMessageRequestHeader.from_ext_v2(ext) == h


def test_headers_accept_loose_values() -> None:
    h = headers.PullMessageRequestHeader.from_ext({
        "consumerGroup": 12, "topic": "t", "queueId": "1", "queueOffset": 5, "maxMsgNums": " 32 ",
        "sysFlag": True, "commitOffset": 0, "suspendTimeoutMillis": 15000.0, "subVersion": "0"})
    assert h.consumerGroup == "12" and h.queueId == 1 and h.maxMsgNums == 32 and h.sysFlag == 1
    assert h.suspendTimeoutMillis == 15000


def test_missing_required_field_is_a_header_error() -> None:
    with pytest.raises(headers.HeaderError, match="queueId"):
        headers.QueueHeader.from_ext({"topic": "t"})
    with pytest.raises(headers.HeaderError, match="malformed"):
        headers.QueueHeader.from_ext({"topic": "t", "queueId": "one"})


# ------------------------------------------------------------------ bodies


def test_route_data_is_standard_json_and_fastjson_keys_are_read() -> None:
    route = bodies.TopicRouteData(
        (bodies.QueueData("b", 4, 4),),
        (bodies.BrokerData("c", "b", {0: "127.0.0.1:10911"}),))
    doc = json.loads(route.encode())
    assert doc["brokerDatas"][0]["brokerAddrs"] == {"0": "127.0.0.1:10911"}
    fast = (b'{"brokerDatas":[{"brokerAddrs":{0:"127.0.0.1:10911"},"brokerName":"b",'
            b'"cluster":"c"}],"filterServerTable":{},"queueDatas":[{"brokerName":"b",'
            b'"perm":6,"readQueueNums":4,"topicSysFlag":0,"writeQueueNums":4}]}')
    assert bodies.TopicRouteData.decode(fast) == route
    qs = bodies.queues_of("T", route, write=True)
    assert [q.queueId for q in qs] == [0, 1, 2, 3] and qs[0].brokerName == "b"


def test_heartbeat_round_trips() -> None:
    hb = bodies.HeartbeatData("cid", ("pg",), (bodies.ConsumerData(
        "cg", messageModel="BROADCASTING",
        subscriptionDataSet=(bodies.SubscriptionData("T", "a || b", tagsSet=("a", "b")),)),))
    assert bodies.HeartbeatData.decode(hb.encode()) == hb


def test_batch_body_and_pull_body() -> None:
    body = messages.encode_batch([(b"one", {"TAGS": "x"}, 0), (b"two", {}, 3)])
    members = list(rec.iter_members(body))
    assert [m.body for m in members] == [b"one", b"two"] and members[1].flag == 3
    r1 = rec.encode(queue_id=1, flag=0, queue_offset=7, physical_offset=100, sys_flag=0,
                    born_timestamp=1, born_host=rec.host_bytes("1.2.3.4", 5), store_timestamp=2,
                    store_host=rec.host_bytes("127.0.0.1", 10911), reconsume_times=0,
                    prepared_transaction_offset=0, body=b"hello", topic=b"T",
                    properties=rec.encode_properties({"UNIQ_KEY": "ABC"}))
    import zlib
    r2 = rec.encode(queue_id=1, flag=0, queue_offset=8, physical_offset=200,
                    sys_flag=rec.COMPRESSED_FLAG, born_timestamp=1,
                    born_host=rec.host_bytes("1.2.3.4", 5), store_timestamp=2,
                    store_host=rec.host_bytes("127.0.0.1", 10911), reconsume_times=2,
                    prepared_transaction_offset=0, body=zlib.compress(b"big" * 100), topic=b"T",
                    properties=b"")
    msgs = messages.decode_messages(r1 + r2)
    assert msgs[0].body == b"hello" and msgs[0].msg_id == "ABC" and msgs[0].queue_offset == 7
    assert msgs[1].body == b"big" * 100 and msgs[1].reconsume_times == 2
    assert messages.parse_offset_msg_id(msgs[1].msg_id) == ("127.0.0.1:10911", 200)


@pytest.mark.parametrize("stype", [SerializeType.JSON, SerializeType.ROCKETMQ])
def test_send_response_template_equals_the_generic_encoding(stype: int) -> None:
    from ferrymq.protocols.remoting.frame import encode_send_ok
    req = RemotingCommand(RequestCode.SEND_MESSAGE_V2, 1234, 0, {}, b"", None,
                          LanguageCode.PYTHON, 317, stype)
    generic = encode(response_to(req, ResponseCode.SUCCESS, {
        "msgId": "7F00000100002A9F0000000000000788", "queueId": "3", "queueOffset": "99",
        "MSG_REGION": "DefaultRegion", "TRACE_ON": "true"}))
    assert encode_send_ok(req, "7F00000100002A9F0000000000000788", 3, 99) == generic


def test_send_v2_fast_fields_agree_with_the_typed_header() -> None:
    h = headers.SendMessageRequestHeader("pg", "T", queueId=3, sysFlag=1, bornTimestamp=77,
                                         flag=2, properties="TAGS\x01a\x02", reconsumeTimes=4,
                                         batch=True)
    ext = h.to_ext_v2()
    assert headers.send_v2_fields(ext) == ("pg", "T", 3, 1, 77, 2, "TAGS\x01a\x02", 4, True)
    loose = {**ext, "e": 3}  # an int where a string belongs: the typed, loose path reads it
    assert headers.send_v2_fields(loose) is None
    assert headers.SendMessageRequestHeader.from_ext_v2(loose).queueId == 3
    assert headers.send_v2_fields({**ext, "e": "x"}) is None


def test_pulled_properties_decode_lazily_and_behave_as_a_mapping() -> None:
    r = rec.encode(queue_id=0, flag=0, queue_offset=0, physical_offset=0, sys_flag=0,
                   born_timestamp=1, born_host=rec.host_bytes("1.2.3.4", 5), store_timestamp=2,
                   store_host=rec.host_bytes("127.0.0.1", 10911), reconsume_times=0,
                   prepared_transaction_offset=0, body=b"b", topic=b"T",
                   properties=rec.encode_properties({"TAGS": "t", "KEYS": "a b"}))
    (m,) = messages.decode_messages(r)
    assert m.properties == {"TAGS": "t", "KEYS": "a b"} and dict(m.properties)["TAGS"] == "t"
    assert m.tags == "t" and m.keys == ["a", "b"] and m.properties.get("nope") is None
    assert "TAGS" in m.properties and len(m.properties) == 2


def test_decode_messages_fast_path_agrees_with_the_reference_decoder() -> None:
    """The fast path (plain IPv4 records) and the general one (compressed) give the
    same messages as ``record.decode``; a torn record is a RecordError."""
    import zlib

    from ferrymq.protocols.remoting.messages import decode_messages

    host = b"\x7f\x00\x00\x01\x00\x00\x10\x00"
    records = []
    for i, (body, sys_flag) in enumerate([(b"plain", 0), (zlib.compress(b"squeezed" * 50),
                                                          rec.COMPRESSED_FLAG),
                                          (b"", 0), (b"x" * 300, 0)]):
        records.append(rec.encode(
            queue_id=i, flag=7, queue_offset=100 + i, physical_offset=1000 * i,
            sys_flag=sys_flag, born_timestamp=11, born_host=host, store_timestamp=22,
            store_host=host, reconsume_times=i, prepared_transaction_offset=0, body=body,
            topic=b"t%d" % (i % 2), properties=rec.encode_properties({"KEYS": f"k{i}"})))
    got = decode_messages(b"".join(records))
    for m, raw in zip(got, records, strict=True):
        r = rec.decode(raw, 0, check_crc=False)
        body = zlib.decompress(r.body) if r.sys_flag & rec.COMPRESSED_FLAG else r.body
        assert (m.topic, m.queue_id, m.queue_offset, m.body, dict(m.properties),
                m.born_timestamp, m.store_timestamp, m.physical_offset, m.store_host,
                m.born_host, m.sys_flag, m.flag, m.reconsume_times) == (
            r.topic, r.queue_id, r.queue_offset, body, dict(r.properties), r.born_timestamp,
            r.store_timestamp, r.physical_offset, r.store_host, r.born_host, r.sys_flag,
            r.flag, r.reconsume_times)
    assert got[1].body == b"squeezed" * 50 and got[0].keys == ["k0"]
    with pytest.raises(rec.RecordError):
        decode_messages(b"".join(records)[:-3])
