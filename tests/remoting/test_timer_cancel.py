"""Timer cancel through the native door (FerryMQ's CANCEL_TIMER, 900020): a producer
cancels a timed message by the id its send returned and the message is never delivered;
a second cancel, an unknown id and a missing id are refused with RocketMQ's codes; the
timer counters come back with GET_TIMER_STATS (900021)."""

from __future__ import annotations

import time

import pytest
import trio
from ferrymq.clients import Admin, Message, Producer
from ferrymq.clients.remoting import BrokerError, RemotingClient
from ferrymq.protocols.remoting import ResponseCode, request
from ferrymq.protocols.remoting.codes import FerryRequestCode

from .conftest import FAST_CLIENT
from .test_transactions import drain


async def test_a_producer_cancels_a_timed_message_before_its_time(native) -> None:
    ns = native.address("namesrv")
    async with Admin(ns, **FAST_CLIENT) as admin:
        await admin.create_topic("Later", queues=1)
    async with Producer(ns, "pg-timers", **FAST_CLIENT) as p:
        soon = int(time.time() * 1000) + 3_000
        cancelled = await p.send(Message("Later", b"never", deliver_at_ms=soon))
        kept = await p.send(Message("Later", b"kept", deliver_at_ms=soon))
        done = await p.cancel_timer(cancelled.msg_id, topic="Later")
        assert done["msgId"] == cancelled.msg_id
        assert done["deliverMs"] == soon and done["timerOffset"] >= 0
        with pytest.raises(BrokerError) as again:
            await p.cancel_timer(cancelled.msg_id)  # every broker is asked: none has it
        assert again.value.code == ResponseCode.QUERY_NOT_FOUND
    got = await drain(ns, "Later", expect=1, settle=1.0)
    assert [m.body for m in got] == [b"kept"]
    assert kept.msg_id in {m.msg_id for m in got}
    async with Admin(ns, **FAST_CLIENT) as admin:
        [stats] = await admin.timer_stats()
    assert stats["cancelled"] == 1 and stats["delivered"] >= 1
    assert isinstance(stats["pending"], int)


async def test_cancel_timer_garbage_is_answered_with_rocketmq_codes(native) -> None:
    addr = native.address("remoting")
    async with RemotingClient() as client:
        missing = await client.invoke(addr, request(FerryRequestCode.CANCEL_TIMER, 0))
        assert missing.code != ResponseCode.SUCCESS and missing.remark
        unknown = await client.invoke(addr, request(FerryRequestCode.CANCEL_TIMER, 0,
                                                    {"msgId": "no-such-timer"}))
        assert unknown.code == ResponseCode.QUERY_NOT_FOUND
        huge = await client.invoke(addr, request(FerryRequestCode.CANCEL_TIMER, 0,
                                                 {"msgId": "x" * 5000}))
        assert huge.code != ResponseCode.SUCCESS
        with trio.fail_after(5):
            ok = await client.invoke(addr, request(FerryRequestCode.GET_TIMER_STATS, 0))
        assert ok.code == ResponseCode.SUCCESS
