"""Pop consumption through the native door with real processes: the SimpleConsumer receives,
acks, batch-acks and changes invisible durations; a message comes back after its consumer
dies without acking; forged, stale and RocketMQ-form receipts are refused; long polling;
a delayed message is not popped before its time."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
import trio
from ferrymq.clients import Admin, BrokerError, Message, Producer, SimpleConsumer, blocking
from ferrymq.clients.remoting import RemotingClient
from ferrymq.clients.simple import receipt_of
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import headers as H
from ferrymq.protocols.remoting import pop as P

from .conftest import FAST_CLIENT


async def produce(ns: str, topic: str, bodies: list[bytes], queues: int = 2, **kw) -> None:  # type: ignore[no-untyped-def]
    async with Admin(ns, **FAST_CLIENT) as a:
        await a.create_topic(topic, queues)
    async with Producer(ns, "pop-pg", **FAST_CLIENT) as p:
        for b in bodies:
            await p.send(Message(topic, b, **kw))


async def receive_all(c: SimpleConsumer, n: int, **kw) -> list:  # type: ignore[no-untyped-def]
    out: list = []
    with trio.fail_after(15):
        while len(out) < n:
            out.extend(await c.receive(**kw))
    return out


async def test_receive_ack_and_nothing_comes_back(native) -> None:
    ns = native.address("namesrv")
    await produce(ns, "PopT", [f"m{i}".encode() for i in range(6)], tags="t")
    async with SimpleConsumer(ns, "pop-g", {"PopT": "*"}, await_duration=0.5,
                              **FAST_CLIENT) as c:
        got = await receive_all(c, 6, max_messages=4, invisible_duration=2.0)
        assert sorted(m.body for m in got) == [f"m{i}".encode() for i in range(6)]
        assert all(m.reconsume_times == 0 and m.topic == "PopT" for m in got)
        info = receipt_of(got[0])
        assert info.broker_name == "broker-a" and info.invisible_time == 2000
        assert info.queue_offset == got[0].queue_offset and info.receipt
        for m in got[:4]:
            await c.ack(m)
        assert await c.ack_batch(got[4:]) == [None, None]
        await trio.sleep(2.3)  # past the invisible time: acked messages stay acked
        assert await c.receive(await_duration=0.3) == []
        assert await c.peek("PopT") == []
        again = await c.ack_batch(got[4:])
        assert all(isinstance(e, BrokerError) and e.code == ResponseCode.NO_MESSAGE
                   for e in again)
    async with Admin(ns, **FAST_CLIENT) as a:
        lag = await a.group_lag("pop-g", "PopT")
    assert sum(q.lag for q in lag) == 0, "pop progress is the group's committed offset"


DYING_CONSUMER = textwrap.dedent("""
    import os, sys, anyio
    from ferrymq.clients import SimpleConsumer

    async def main():
        async with SimpleConsumer(sys.argv[1], "pop-die", {"PopDie": "*"}) as c:
            got = []
            while not got:
                got = await c.receive(invisible_duration=1.5, await_duration=1.0)
            print(",".join(m.body.decode() for m in got), flush=True)
            os._exit(9)  # dies holding the lease, never acks

    anyio.run(main)
""")


async def test_a_message_comes_back_after_its_consumer_dies_without_acking(native) -> None:
    ns = native.address("namesrv")
    await produce(ns, "PopDie", [b"precious"], queues=1)
    out = await trio.to_thread.run_sync(lambda: subprocess.run(
        [sys.executable, "-c", DYING_CONSUMER, ns], capture_output=True, text=True,
        timeout=60))
    assert out.returncode == 9 and out.stdout.strip() == "precious", out.stderr
    died_at = time.monotonic()
    async with SimpleConsumer(ns, "pop-die", {"PopDie": "*"}, **FAST_CLIENT) as c:
        (m,) = await receive_all(c, 1, invisible_duration=5.0, await_duration=3.0)
        assert m.body == b"precious" and m.reconsume_times == 1, "revived, count raised"
        assert time.monotonic() - died_at < 5
        await c.ack(m)
        assert await c.receive(await_duration=0.5) == []


async def test_forged_stale_and_rocketmq_form_receipts_are_refused(native) -> None:
    ns = native.address("namesrv")
    addr = native.address("remoting")
    await produce(ns, "PopBad", [b"a", b"b", b"c"], queues=1)
    async with SimpleConsumer(ns, "pop-bad", {"PopBad": "*"}, await_duration=0.5,
                              **FAST_CLIENT) as c:
        a, b, _c = sorted(await receive_all(c, 3, invisible_duration=1.0),
                          key=lambda m: m.body)
        # forged: one character of the signed handle changed
        ck = a.properties[P.PROPERTY_POP_CK]
        flip = "A" if ck[-3] != "A" else "B"
        forged = a._replace(properties={**dict(a.properties),
                                        P.PROPERTY_POP_CK: ck[:-3] + flip + ck[-2:]})
        with pytest.raises(BrokerError) as err:
            await c.ack(forged)
        assert err.value.code == ResponseCode.INVALID_PARAMETER
        # stale: superseded by a change of invisible time
        a2 = await c.change_invisible_duration(a, 5.0)
        with pytest.raises(BrokerError) as err:
            await c.ack(a)
        assert err.value.code == ResponseCode.NO_MESSAGE
        await c.ack(a2)
        # stale: the invisible time ran out and b was delivered again (#3787, #4153);
        # receive_all polls until both came back
        (b_again, c_again) = sorted(await receive_all(c, 2, invisible_duration=5.0),
                                    key=lambda m: m.body)
        assert (b_again.body, b_again.reconsume_times) == (b"b", 1)
        with pytest.raises(BrokerError) as err:
            await c.ack(b)
        assert err.value.code == ResponseCode.NO_MESSAGE
        await c.ack(b_again)  # the redelivery is still acked by its own receipt
        async with RemotingClient() as rc:
            # RocketMQ's eight-field extraInfo (what its client rebuilds) proves nothing
            eight = " ".join(c_again.properties[P.PROPERTY_POP_CK].split(" ")[:8])
            resp = await rc.invoke(addr, request(RequestCode.ACK_MESSAGE, 0,
                                                 H.AckMessageRequestHeader(
                "pop-bad", "PopBad", 0, eight, c_again.queue_offset).to_ext()))
            assert resp.code == ResponseCode.INVALID_PARAMETER and "receipt" in resp.remark
            # a BatchAck with a bitset and no handles acks nothing
            info = receipt_of(c_again)
            body = P.BatchAckBody("broker-a", (P.BatchAck(
                "pop-bad", "PopBad", "0", info.ck_offset, 0, 0, info.pop_time,
                info.invisible_time, (info.queue_offset,)),)).encode()
            resp = await rc.invoke(addr, request(RequestCode.BATCH_ACK_MESSAGE, 0, {}, body))
            assert resp.code == ResponseCode.INVALID_PARAMETER
            for garbage in (b"not json", b"[]", b'{"acks": [{"b": "!!"}]}'):
                resp = await rc.invoke(addr, request(RequestCode.BATCH_ACK_MESSAGE, 0, {},
                                                     garbage))
                assert resp.code == ResponseCode.SYSTEM_ERROR and resp.remark
            for bad in ({"consumerGroup": "pop-bad", "topic": "PopBad", "queueId": "0",
                         "extraInfo": "x" * 5000, "offset": "0"},
                        {"consumerGroup": "pop-bad", "topic": "PopBad", "queueId": "0",
                         "extraInfo": "1 2 3", "offset": "0"},
                        {"consumerGroup": "pop-bad", "topic": "PopBad"}):
                resp = await rc.invoke(addr, request(RequestCode.ACK_MESSAGE, 0, bad))
                assert resp.code != ResponseCode.SUCCESS and resp.remark
            # absurd pop requests: each answered with an error, the door keeps serving
            for ext in ({"maxMsgNums": "0"}, {"invisibleTime": "5"}, {"order": "true"},
                        {"topic": "NoSuchTopicHere"}, {"maxMsgNums": "x"}):
                resp = await rc.invoke(addr, request(RequestCode.POP_MESSAGE, 0, {
                    **H.PopMessageRequestHeader("pop-bad", "PopBad", -1, 4, 5000).to_ext(),
                    **ext}))
                assert resp.code not in (ResponseCode.SUCCESS, ResponseCode.POLLING_TIMEOUT)
        await c.ack(c_again)  # the valid handle still works after all that
        assert await c.receive(await_duration=0.3) == []


async def test_pop_long_polls_and_peek_shows_what_is_next(native) -> None:
    ns = native.address("namesrv")
    addr = native.address("remoting")
    await produce(ns, "PopWait", [b"first"], queues=1)
    async with SimpleConsumer(ns, "pop-wait", {"PopWait": "*"}, **FAST_CLIENT) as c:
        (first,) = await c.peek("PopWait")
        assert first.body == b"first" and P.PROPERTY_POP_CK not in first.properties
        await c.ack((await receive_all(c, 1))[0])
        got: list = []

        async def waiter() -> None:
            t0 = time.monotonic()
            got.extend(await c.receive(await_duration=8.0))
            got.append(time.monotonic() - t0)

        async with trio.open_nursery() as n, RemotingClient() as rc:
            n.start_soon(waiter)
            await trio.sleep(0.8)
            # the broker's connection keeps serving while the pop waits
            other = await rc.invoke(addr, request(RequestCode.GET_MAX_OFFSET, 0,
                                                  {"topic": "PopWait", "queueId": "0"}))
            assert other.ext("offset") == "1"
            async with Producer(ns, "pop-pg", **FAST_CLIENT) as p:
                await p.send(Message("PopWait", b"second"))
        m, waited = got
        assert m.body == b"second" and 0.7 < waited < 6


async def test_a_delayed_message_is_not_popped_before_its_time(native) -> None:
    ns = native.address("namesrv")
    sent = time.monotonic()
    await produce(ns, "PopLater", [b"later"], queues=1, delay_level=1)  # 1 s
    async with SimpleConsumer(ns, "pop-later", {"PopLater": "*"}, **FAST_CLIENT) as c:
        if time.monotonic() - sent < 0.8:
            assert await c.peek("PopLater") == []
        (m,) = await receive_all(c, 1, await_duration=3.0)
        assert time.monotonic() - sent >= 0.95 and m.body == b"later"
        assert "TIMER_OUT_MS" in m.properties and "DELAY" not in m.properties
        await c.ack(m)


def test_blocking_simple_consumer(native) -> None:
    ns = native.address("namesrv")
    trio.run(produce, ns, "PopBlocking", [b"x"], 1)
    with blocking.SimpleConsumer(ns, "pop-blocking", {"PopBlocking": "*"},
                                 **FAST_CLIENT) as c:
        got = []
        while not got:
            got = c.receive(await_duration=1.0)
        c.ack(got[0])
    assert len(got[0].properties[P.PROPERTY_POP_CK].split(" ")) == 9
