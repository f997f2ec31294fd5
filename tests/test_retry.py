"""Retry and dead letters: a failed message goes to %RETRY%<group> with a growing delay,
past the group's maximum to %DLQ%<group>; dead letters are listed, shown and resent to
their original topic, once unless forced, also after a restart.

The delays run on trio's MockClock (the broker's wall clock follows it)."""

from __future__ import annotations

import pytest
import trio
from ferrymq.core import Broker, Message
from ferrymq.core.errors import GroupNotFound, InvalidArgument, InvalidGroupName, MessageNotFound
from ferrymq.core.timers import DELAY_LEVELS_MS, TIMER_TOPIC
from timer_helpers import config, quiet_config, read_queue, read_topic, wall_clock_follows


async def test_send_back_retries_with_growing_delays_then_dead_letters(
        tmp_path, autojump_clock, monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        async with Broker.open(quiet_config(tmp_path)) as b:
            await b.create_group("g", max_reconsume_times=3, retry_queues=2)
            await b.create_topic("orders", 1)
            await b.create_topic("%RETRY%g", 2)
            await b._paths.system_topic(TIMER_TOPIC)
            original = await b.put(Message("orders", b"boom", {"KEYS": "k1", "UNIQ_KEY": "m-1"},
                                           queue_id=0))
            m = read_queue(b, "orders", 0)[0]
            for attempt in range(3):
                sent_at = b.timers.clock()
                r = await b.send_back("g", m)
                assert (r.topic, r.dead, r.reconsume_times) == ("%RETRY%g", False, attempt + 1)
                assert r.delay_level == 3 + attempt  # 10 s, 30 s, 1 min
                delay = DELAY_LEVELS_MS[r.delay_level - 1]
                await trio.sleep(delay / 1000 - 0.5)
                assert len(read_topic(b, "%RETRY%g")) == attempt  # not before its delay
                await trio.sleep(1.0)
                retries = read_topic(b, "%RETRY%g")
                assert len(retries) == attempt + 1
                m = max(retries, key=lambda x: x.store_timestamp)
                assert m.store_timestamp - sent_at >= delay
                assert m.msg_id == original.message_id() == "m-1"  # the same id each time
                assert (m.reconsume_times, m.body, m.keys) == (attempt + 1, b"boom", ["k1"])
                assert m.properties["RETRY_TOPIC"] == "orders"
                assert m.properties["ORIGIN_MESSAGE_ID"] == "m-1"
                assert "DELAY" not in m.properties
            r = await b.send_back("g", m)  # reconsumed 3 times: the maximum
            assert (r.topic, r.dead, r.reconsume_times) == ("%DLQ%g", True, 4)
            (d,) = read_topic(b, "%DLQ%g")
            assert d.properties["DLQ_ORIGIN_TOPIC"] == "orders"
            assert d.properties["DLQ_ORIGIN_MESSAGE_ID"] == "m-1"
            assert d.msg_id == "m-1" and d.reconsume_times == 4
            assert b.retry.retried["g"] == 3 and b.retry.dead_lettered["g"] == 1


@pytest.fixture
async def broker(tmp_path):
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("orders", 1)
        yield b


async def test_the_delay_level_grows_with_the_reconsume_count_up_to_two_hours(broker) -> None:
    for reconsume, level in ((0, 3), (1, 4), (5, 8), (15, 18), (40, 18)):
        m = Message("orders", b"x", {"UNIQ_KEY": f"u{reconsume}"}, queue_id=0,
                    reconsume_times=reconsume)
        await broker.put(m)
        (stored,) = [c for c in read_queue(broker, "orders", 0) if c.msg_id == f"u{reconsume}"]
        r = await broker.send_back("big", stored, max_reconsume_times=100)
        assert (r.delay_level, r.dead) == (level, False)


async def test_explicit_levels_and_negative_levels(broker) -> None:
    await broker.put(Message("orders", b"x", {"UNIQ_KEY": "a"}, queue_id=0))
    r = await broker.send_back("g", "a", delay_level=1)
    assert r.delay_level == 1 and not r.dead
    r = await broker.send_back("g", "a", delay_level=-1)  # RocketMQ: straight to the DLQ
    assert r.dead and r.topic == "%DLQ%g"


async def test_send_back_by_offset_id_and_commitlog_offset(broker) -> None:
    p = await broker.put(Message("orders", b"plain", queue_id=0))  # no client id
    r1 = await broker.send_back("g", p.offset_message_id(), delay_level=-1)
    r2 = await broker.send_back("g", p.physical_offset, delay_level=-1)
    assert r1.dead and r2.dead
    letters = broker.dead_letters("g")
    assert [d.msg_id for d in letters] == [p.offset_message_id()] * 2
    assert letters[0].origin_topic == "orders"


async def test_send_back_bad_input(broker) -> None:
    with pytest.raises(MessageNotFound):
        await broker.send_back("g", "no-such-message")
    with pytest.raises(MessageNotFound):
        await broker.send_back("g", 10_000_000)
    await broker.put(Message("orders", b"x", {"UNIQ_KEY": "a"}, queue_id=0))
    with pytest.raises(InvalidGroupName):
        await broker.send_back("", "a")
    with pytest.raises(InvalidArgument):
        await broker.send_back("g", "a", max_reconsume_times=-1)


async def test_send_back_needs_the_group_when_groups_are_not_auto_created(tmp_path) -> None:
    async with Broker.open(config(tmp_path, auto_create_groups=False)) as b:
        await b.put(Message("orders", b"x", {"UNIQ_KEY": "a"}, queue_id=0))
        with pytest.raises(GroupNotFound):
            await b.send_back("nobody", "a")


async def test_dead_letters_are_listed_shown_and_resent_once(tmp_path) -> None:
    cfg = config(tmp_path)
    async with Broker.open(cfg) as b:
        await b.create_topic("orders", 1)
        for i in range(3):
            await b.put(Message("orders", b"dead %d" % i, {"UNIQ_KEY": f"d{i}", "TAGS": "t"},
                                queue_id=0, reconsume_times=16))
        for m in read_queue(b, "orders", 0):
            r = await b.send_back("g", m)
            assert r.dead  # reconsumed 16 times already: the default maximum
        letters = b.dead_letters("g")
        assert [d.msg_id for d in letters] == ["d0", "d1", "d2"]
        assert [d.queue_offset for d in letters] == [0, 1, 2]
        assert all(d.origin_topic == "orders" and not d.resent for d in letters)
        assert b.dead_letters("g", offset=1, limit=1)[0].msg_id == "d1"
        assert b.dead_letter("g", "d2").message.body == b"dead 2"
        assert b.dead_letter("g", 0).msg_id == "d0"
        with pytest.raises(MessageNotFound):
            b.dead_letter("g", "nope")
        assert b.dead_letters("nobody") == []

        (res,) = await b.resend_dead_letters("g", ["d1"])
        assert res.put.topic == "orders"
        back = [m for m in read_queue(b, "orders", 0) if m.queue_offset >= 3]
        assert [(m.msg_id, m.body, m.reconsume_times, m.tags) for m in back] == [
            ("d1", b"dead 1", 0, "t")]
        assert not {"DLQ_ORIGIN_TOPIC", "DLQ_ORIGIN_MESSAGE_ID", "RETRY_TOPIC"} & \
            set(back[0].properties)
        with pytest.raises(InvalidArgument):
            await b.resend_dead_letters("g", ["d1"])  # once, unless forced
        assert b.dead_letter("g", "d1").resent
    async with Broker.open(cfg) as b:  # the resend marker is durable
        assert [d.resent for d in b.dead_letters("g")] == [False, True, False]
        done = await b.resend_dead_letters("g")  # every letter not resent yet
        assert sorted(r.letter.msg_id for r in done) == ["d0", "d2"]
        assert await b.resend_dead_letters("g") == []
        forced = await b.resend_dead_letters("g", ["d0"], force=True)
        assert len(forced) == 1
        assert len([m for m in read_queue(b, "orders", 0) if m.msg_id == "d0"]) == 3
