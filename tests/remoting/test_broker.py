"""The broker door request by request, through a real broker process: produce, long polling,
batch unpacking, offsets, filters, send-back, client table, locks, lookups, admin."""

from __future__ import annotations

import time

import trio
from ferrymq.clients.remoting import RemotingClient
from ferrymq.protocols import record as rec
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import bodies as B
from ferrymq.protocols.remoting import headers as H
from ferrymq.protocols.remoting.messages import decode_messages, encode_batch, encode_properties

from waiting import wait_until_async


def send_v2(topic: str, body: bytes, qid: int = 0, **props: str):  # type: ignore[no-untyped-def]
    ext = H.SendMessageRequestHeader("pg", topic, queueId=qid, bornTimestamp=1,
                                     properties=encode_properties(props)).to_ext_v2()
    return request(RequestCode.SEND_MESSAGE_V2, 0, ext, body)


def pull_req(topic: str, qid: int, offset: int, *, group: str = "g", n: int = 32,
             suspend_ms: int = 0, sub: str | None = None, kind: str = "TAG"):  # type: ignore[no-untyped-def]
    flag = (2 if suspend_ms else 0) | (4 if sub is not None else 0)
    return request(RequestCode.PULL_MESSAGE, 0, H.PullMessageRequestHeader(
        group, topic, qid, offset, n, flag, 0, suspend_ms, sub, 0, kind).to_ext())


async def test_send_then_pull_returns_the_stored_record(native) -> None:
    addr = native.address("remoting")
    async with RemotingClient() as rc:
        r = await rc.invoke(addr, send_v2("T1", b"hello", TAGS="a", KEYS="k1"))
        assert r.code == ResponseCode.SUCCESS and r.ext("queueOffset") == "0"
        assert len(r.ext("msgId") or "") == 32
        p = await rc.invoke(addr, pull_req("T1", 0, 0))
        assert p.code == ResponseCode.SUCCESS
        (m,) = decode_messages(p.body)
        assert (m.body, m.tags, m.keys, m.queue_offset) == (b"hello", "a", ["k1"], 0)
        assert m.offset_msg_id == r.ext("msgId")
        assert p.ext("nextBeginOffset") == "1" and p.ext("maxOffset") == "1"


async def test_pull_long_polls_until_a_message_arrives(native) -> None:
    addr = native.address("remoting")
    async with RemotingClient() as rc:
        await rc.invoke(addr, send_v2("T2", b"first"))
        got = {}

        async def poller() -> None:
            t0 = time.monotonic()
            got["resp"] = await rc.invoke(addr, pull_req("T2", 0, 1, suspend_ms=10_000), 15)
            got["waited"] = time.monotonic() - t0

        async with trio.open_nursery() as n:
            n.start_soon(poller)
            await trio.sleep(0.5)
            # the connection keeps serving other requests while the pull is suspended
            other = await rc.invoke(addr, request(RequestCode.GET_MAX_OFFSET, 0,
                                                  {"topic": "T2", "queueId": "0"}))
            assert other.ext("offset") == "1" and "resp" not in got
            await rc.invoke(addr, send_v2("T2", b"second"))
        assert got["resp"].code == ResponseCode.SUCCESS
        assert [m.body for m in decode_messages(got["resp"].body)] == [b"second"]
        assert 0.4 < got["waited"] < 5


async def test_pull_times_out_with_pull_not_found(native) -> None:
    addr = native.address("remoting")
    async with RemotingClient() as rc:
        await rc.invoke(addr, send_v2("T3", b"x"))
        t0 = time.monotonic()
        resp = await rc.invoke(addr, pull_req("T3", 0, 1, suspend_ms=400))
        assert resp.code == ResponseCode.PULL_NOT_FOUND and time.monotonic() - t0 >= 0.35
        moved = await rc.invoke(addr, pull_req("T3", 0, 99))
        assert moved.code == ResponseCode.PULL_OFFSET_MOVED and moved.ext("nextBeginOffset") == "1"


async def test_batch_is_one_record_and_pulls_as_single_messages(native) -> None:
    addr = native.address("remoting")
    body = encode_batch((f"m{i}".encode(), {"UNIQ_KEY": f"U{i}", "TAGS": "b"}, 0)
                        for i in range(5))
    ext = H.SendMessageRequestHeader("pg", "TB", queueId=1, batch=True).to_ext_v2()
    async with RemotingClient() as rc:
        r = await rc.invoke(addr, request(RequestCode.SEND_BATCH_MESSAGE, 0, ext, body))
        assert r.code == ResponseCode.SUCCESS and len((r.ext("msgId") or "").split(",")) == 5
        p = await rc.invoke(addr, pull_req("TB", 1, 2, n=2))
        msgs = decode_messages(p.body)
        assert [(m.body, m.queue_offset) for m in msgs] == [(b"m2", 2), (b"m3", 3)]
        assert all(not m.sys_flag & rec.FORMAT_MASK for m in msgs), "no FerryMQ format bits"
        assert p.ext("nextBeginOffset") == "4"
        assert [m.msg_id for m in msgs] == ["U2", "U3"]
        p = await rc.invoke(addr, pull_req("TB", 1, 4))
        assert [m.body for m in decode_messages(p.body)] == [b"m4"]


async def test_tag_and_sql92_filters_on_pull(native) -> None:
    addr = native.address("remoting")
    async with RemotingClient() as rc:
        for i, tag in enumerate(["a", "b", "c", "a"]):
            await rc.invoke(addr, send_v2("TF", f"{tag}{i}".encode(), TAGS=tag, n=str(i)))
        p = await rc.invoke(addr, pull_req("TF", 0, 0, sub="a || c"))
        assert [m.body for m in decode_messages(p.body)] == [b"a0", b"c2", b"a3"]
        p = await rc.invoke(addr, pull_req("TF", 0, 0, sub="n >= 2 AND TAGS <> 'c'",
                                           kind="SQL92"))
        assert [m.body for m in decode_messages(p.body)] == [b"a3"]
        bad = await rc.invoke(addr, pull_req("TF", 0, 0, sub="n >>> 2", kind="SQL92"))
        assert bad.code == ResponseCode.SUBSCRIPTION_PARSE_FAILED


async def test_consumer_offsets_query_update_and_search(native) -> None:
    addr = native.address("remoting")
    q = {"consumerGroup": "og", "topic": "TO", "queueId": "0"}
    async with RemotingClient() as rc:
        missing = await rc.invoke(addr, request(RequestCode.QUERY_CONSUMER_OFFSET, 0,
                                                {**q, "setZeroIfNotFound": "false"}))
        assert missing.code in (ResponseCode.QUERY_NOT_FOUND, ResponseCode.TOPIC_NOT_EXIST)
        t_before = int(time.time() * 1000)
        await rc.invoke(addr, send_v2("TO", b"a"))
        # RocketMQ: a group without an offset on a queue that holds its first message is at 0
        zero = await rc.invoke(addr, request(RequestCode.QUERY_CONSUMER_OFFSET, 0, q))
        assert zero.code == ResponseCode.SUCCESS and zero.ext("offset") == "0"
        await trio.sleep(0.05)
        t_mid = int(time.time() * 1000)
        await rc.invoke(addr, send_v2("TO", b"b"))
        upd = await rc.invoke(addr, request(RequestCode.UPDATE_CONSUMER_OFFSET, 0,
                                            {**q, "commitOffset": "2"}))
        assert upd.code == ResponseCode.SUCCESS
        got = await rc.invoke(addr, request(RequestCode.QUERY_CONSUMER_OFFSET, 0, q))
        assert got.ext("offset") == "2"
        qh = {"topic": "TO", "queueId": "0"}
        s1 = await rc.invoke(addr, request(RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, 0,
                                           {**qh, "timestamp": str(t_before)}))
        s2 = await rc.invoke(addr, request(RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, 0,
                                           {**qh, "timestamp": str(t_mid)}))
        assert (s1.ext("offset"), s2.ext("offset")) == ("0", "1")
        mx = await rc.invoke(addr, request(RequestCode.GET_MAX_OFFSET, 0, qh))
        mn = await rc.invoke(addr, request(RequestCode.GET_MIN_OFFSET, 0, qh))
        assert (mn.ext("offset"), mx.ext("offset")) == ("0", "2")


async def test_send_back_goes_to_retry_after_its_delay_then_dead_letter(native) -> None:
    """Retries are timers at level 3 + reconsume count (here 1 s, then 2 s: the test
    broker's short delay_levels); past maxReconsumeTimes the message is dead-lettered."""
    addr = native.address("remoting")
    async with RemotingClient() as rc:
        r = await rc.invoke(addr, send_v2("TR", b"poison", UNIQ_KEY="POISON1"))
        phys = int(r.ext("msgId")[16:], 16)  # type: ignore[index]
        back = {"group": "rg", "delayLevel": "0", "originMsgId": "POISON1",
                "originTopic": "TR", "maxReconsumeTimes": "2"}
        for expected, delay_s in ((1, 1.0), (2, 2.0)):
            t0 = time.monotonic()
            resp = await rc.invoke(addr, request(RequestCode.CONSUMER_SEND_MSG_BACK, 0,
                                                 {**back, "offset": str(phys)}))
            assert resp.code == ResponseCode.SUCCESS
            assert resp.ext("topic") == "%RETRY%rg" and resp.ext("delayLevel") == str(2 + expected)
            p = await rc.invoke(addr, pull_req("%RETRY%rg", 0, expected - 1))
            assert p.code == ResponseCode.PULL_NOT_FOUND, "not before its delay"
            p = await rc.invoke(addr, pull_req("%RETRY%rg", 0, expected - 1, suspend_ms=8000), 10)
            (m,) = decode_messages(p.body)
            assert time.monotonic() - t0 >= delay_s - 0.1
            assert m.reconsume_times == expected and m.body == b"poison"
            assert m.properties["RETRY_TOPIC"] == "TR" and m.msg_id == "POISON1"
            phys = m.physical_offset
        resp = await rc.invoke(addr, request(RequestCode.CONSUMER_SEND_MSG_BACK, 0,
                                             {**back, "offset": str(phys)}))
        assert resp.code == ResponseCode.SUCCESS and resp.ext("topic") == "%DLQ%rg"
        p = await rc.invoke(addr, pull_req("%DLQ%rg", 0, 0))
        (dead,) = decode_messages(p.body)
        assert dead.body == b"poison" and dead.reconsume_times == 3
        assert dead.properties["DLQ_ORIGIN_TOPIC"] == "TR"
        # a send-back naming nothing is an error, not a guess
        resp = await rc.invoke(addr, request(RequestCode.CONSUMER_SEND_MSG_BACK, 0, {
            "group": "rg", "offset": str(10**12), "originMsgId": "NOPE"}))
        assert resp.code != ResponseCode.SUCCESS and resp.remark


async def test_heartbeat_client_table_notifications_and_locks(native) -> None:
    addr = native.address("remoting")
    notified = []

    async def on_request(conn, cmd):  # type: ignore[no-untyped-def]
        notified.append((cmd.code, cmd.ext("consumerGroup")))

    def hb(cid: str) -> bytes:
        return B.HeartbeatData(cid, (), (B.ConsumerData(
            "hg", subscriptionDataSet=(B.SubscriptionData("TH", "x || y", tagsSet=("x", "y")),)),
        )).encode()

    async with RemotingClient(on_request=on_request) as one, RemotingClient() as two:
        r = await one.invoke(addr, request(RequestCode.HEART_BEAT, 0, {}, hb("c1")))
        assert r.code == ResponseCode.SUCCESS
        await two.invoke(addr, request(RequestCode.HEART_BEAT, 0, {}, hb("c2")))
        ids = await one.invoke(addr, request(RequestCode.GET_CONSUMER_LIST_BY_GROUP, 0,
                                             {"consumerGroup": "hg"}))
        assert B.decode_consumer_ids(ids.body) == ["c1", "c2"]
        await wait_until_async(lambda: (RequestCode.NOTIFY_CONSUMER_IDS_CHANGED, "hg") in notified,
                               what="the first client told of the second")
        # the retry topic of a clustering group exists after its first heartbeat
        route = await one.invoke(addr, request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 0,
                                               {"topic": "%RETRY%hg"}))
        assert route.code == ResponseCode.SUCCESS
        mqs = tuple(B.MessageQueue("TH", "broker-a", i) for i in range(2))
        lock1 = await one.invoke(addr, request(RequestCode.LOCK_BATCH_MQ, 0, {},
                                               B.LockBatchRequestBody("hg", "c1", mqs).encode()))
        assert set(B.decode_lock_ok(lock1.body)) == set(mqs)
        lock2 = await two.invoke(addr, request(RequestCode.LOCK_BATCH_MQ, 0, {},
                                               B.LockBatchRequestBody("hg", "c2", mqs).encode()))
        assert B.decode_lock_ok(lock2.body) == []
        await one.invoke(addr, request(RequestCode.UNLOCK_BATCH_MQ, 0, {},
                                       B.LockBatchRequestBody("hg", "c1", mqs[:1]).encode()))
        lock3 = await two.invoke(addr, request(RequestCode.LOCK_BATCH_MQ, 0, {},
                                               B.LockBatchRequestBody("hg", "c2", mqs).encode()))
        assert B.decode_lock_ok(lock3.body) == [mqs[0]]
        unreg = await two.invoke(addr, request(RequestCode.UNREGISTER_CLIENT, 0, {
            "clientID": "c2", "consumerGroup": "hg"}))
        assert unreg.code == ResponseCode.SUCCESS
        ids = await one.invoke(addr, request(RequestCode.GET_CONSUMER_LIST_BY_GROUP, 0,
                                             {"consumerGroup": "hg"}))
        assert B.decode_consumer_ids(ids.body) == ["c1"]


async def test_lookup_by_id_and_key_and_admin_queries(native) -> None:
    addr = native.address("remoting")
    async with RemotingClient() as rc:
        create = await rc.invoke(addr, request(RequestCode.UPDATE_AND_CREATE_TOPIC, 0,
                                               H.CreateTopicRequestHeader(
                                                   "TA", readQueueNums=3,
                                                   writeQueueNums=3).to_ext()))
        assert create.code == ResponseCode.SUCCESS
        r = await rc.invoke(addr, send_v2("TA", b"findme", qid=2, KEYS="order-1 x",
                                          UNIQ_KEY="UNIQ-A"))
        view = await rc.invoke(addr, request(RequestCode.VIEW_MESSAGE_BY_ID, 0, {
            "offset": str(int(r.ext("msgId")[16:], 16))}))  # type: ignore[index]
        assert decode_messages(view.body)[0].body == b"findme"
        view = await rc.invoke(addr, request(RequestCode.VIEW_MESSAGE_BY_ID, 0, {
            "offset": "-1", "msgId": "UNIQ-A"}))
        assert decode_messages(view.body)[0].queue_id == 2
        q = await rc.invoke(addr, request(RequestCode.QUERY_MESSAGE, 0, H.QueryMessageRequestHeader(
            "TA", "order-1").to_ext()))
        assert [m.body for m in decode_messages(q.body)] == [b"findme"]
        none = await rc.invoke(addr, request(RequestCode.QUERY_MESSAGE, 0,
                                             H.QueryMessageRequestHeader("TA", "nope").to_ext()))
        assert none.code == ResponseCode.QUERY_NOT_FOUND
        stats = await rc.invoke(addr, request(RequestCode.GET_TOPIC_STATS_INFO, 0,
                                              {"topic": "TA"}))
        table = {mq.queueId: v for mq, v in B.decode_queue_table(stats.body)}
        assert table[2]["maxOffset"] == 1 and table[0]["maxOffset"] == 0 and len(table) == 3
        ns = native.address("namesrv")
        async def routed() -> object:  # the broker re-registers within its (fast) interval
            r = await rc.invoke(ns, request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 0, {"topic": "TA"}))
            return r if r.code == ResponseCode.SUCCESS else None
        route = await wait_until_async(routed, what="TA routed by the NameServer")
        rd = B.TopicRouteData.decode(route.body)
        assert rd.queueDatas[0].writeQueueNums == 3 and rd.brokerDatas[0].master_addr == addr
        gone = await rc.invoke(addr, request(RequestCode.DELETE_TOPIC_IN_BROKER, 0,
                                             {"topic": "TA"}))
        assert gone.code == ResponseCode.SUCCESS
        again = await rc.invoke(addr, request(RequestCode.GET_MAX_OFFSET, 0,
                                              {"topic": "TA", "queueId": "0"}))
        assert again.code == ResponseCode.TOPIC_NOT_EXIST


async def test_delays_absurd_or_fallback_through_the_retry_topic(native) -> None:
    """A DELAY the broker cannot honour is MESSAGE_ILLEGAL, nothing stored; a client's own
    re-send into %RETRY% (RocketMQ's fallback when send-back fails) is delayed too."""
    addr = native.address("remoting")
    async with RemotingClient() as rc:
        for props in ({"DELAY": "19"}, {"TIMER_DELAY_MS": "-1"}, {"TIMER_DELAY_SEC": "x"},
                      {"TIMER_DELIVER_MS": str(10**15)}, {"DELAY": "1", "TIMER_DELAY_MS": "5"}):
            r = await rc.invoke(addr, send_v2("TAbsurd", b"x", **props))
            assert r.code == ResponseCode.MESSAGE_ILLEGAL and r.remark, props
        mx = await rc.invoke(addr, request(RequestCode.GET_MAX_OFFSET, 0,
                                           {"topic": "TAbsurd", "queueId": "0"}))
        assert mx.code != ResponseCode.SUCCESS or mx.ext("offset") == "0"
        t0 = time.monotonic()
        r = await rc.invoke(addr, send_v2("%RETRY%fb", b"again", DELAY="3", RETRY_TOPIC="T0"))
        assert r.code == ResponseCode.SUCCESS and r.ext("queueOffset") == "-1", "a timer"
        p = await rc.invoke(addr, pull_req("%RETRY%fb", 0, 0, suspend_ms=8000), 10)
        (m,) = decode_messages(p.body)
        assert m.body == b"again" and time.monotonic() - t0 >= 0.9  # level 3: 1 s here


async def test_topic_attributes_in_rocketmq_5s_form_and_garbage(native) -> None:
    """UPDATE_AND_CREATE_TOPIC's attributes (+name=value, -name; RocketMQ's own names
    message.type and cleanup.policy=COMPACTION too); anything else is INVALID_PARAMETER."""
    import json
    addr = native.address("remoting")

    def create(attributes: str, topic: str = "TA"):  # type: ignore[no-untyped-def]
        return request(RequestCode.UPDATE_AND_CREATE_TOPIC, 0, H.CreateTopicRequestHeader(
            topic, readQueueNums=1, writeQueueNums=1, attributes=attributes).to_ext())

    async with RemotingClient() as rc:
        ok = await rc.invoke(addr, create("+message.type=FIFO,+cleanup.policy=COMPACTION,"
                                          "+retention.ms=5000"))
        assert ok.code == ResponseCode.SUCCESS, ok.remark
        got = await rc.invoke(addr, request(RequestCode.GET_TOPIC_CONFIG, 0, {"topic": "TA"}))
        doc = json.loads(got.body)
        assert doc["order"] is True
        assert doc["attributes"] == {"cleanup.policy": "compact", "retention.ms": "5000"}
        ok = await rc.invoke(addr, create("-retention.ms,+cleanup.policy=compact,delete"))
        assert ok.code == ResponseCode.SUCCESS, ok.remark
        doc = json.loads((await rc.invoke(addr, request(RequestCode.GET_TOPIC_CONFIG, 0,
                                                        {"topic": "TA"}))).body)
        assert doc["attributes"] == {"cleanup.policy": "compact,delete"}
        for garbage in ("retention.ms", "+retention.ms=abc", "+no.such=1", "=,=", "-"):
            bad = await rc.invoke(addr, create(garbage, "TB"))
            assert bad.code == ResponseCode.INVALID_PARAMETER, garbage
        missing = await rc.invoke(addr, request(RequestCode.GET_TOPIC_CONFIG, 0, {"topic": "no"}))
        assert missing.code != ResponseCode.SUCCESS
