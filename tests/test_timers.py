"""Timers: a message with a delivery time or a delay becomes consumable at that time and
not before, exactly once, across restarts and a rebuild; the on-disk wheel; bad input.

Real-clock tests use delays of about a second; the long horizons and the delay levels
run on trio's MockClock (the broker's wall clock follows it, see timer_helpers)."""

from __future__ import annotations

import os
import shutil

import pytest
import trio
from ferrymq.core import Broker, BrokerConfig, Message
from ferrymq.core.errors import InvalidDelay, InvalidMessage, PermissionDenied, TimerNotFound
from ferrymq.core.message import now_ms
from ferrymq.core.timers import (
    DELAY_LEVELS_MS,
    TIMER_TOPIC,
    parse_delay_levels,
    parse_delivery,
    timer_from_offsets,
)
from ferrymq.core.timerwheel import TimerWheel, WheelCorrupt
from timer_helpers import DAY_MS, config, quiet_config, read_queue, wall_clock_follows

MAX = 365 * DAY_MS


# ====================================================================== properties


@pytest.mark.parametrize(("props", "expected"), [
    ({"TIMER_DELIVER_MS": "1000500"}, 1000500),
    ({"TIMER_DELAY_MS": "2500"}, 1_002_500),
    ({"TIMER_DELAY_SEC": "3"}, 1_003_000),
    ({"DELAY": "1"}, 1_001_000),
    ({"DELAY": "18"}, 1_000_000 + 2 * 3600_000),
    ({"DELAY": "0"}, None),
    ({"TIMER_DELAY_MS": "0"}, 1_000_000),
    ({"TIMER_DELIVER_MS": "5"}, 5),  # in the past: deliver now
    ({"KEYS": "k"}, None),
])
def test_every_delivery_property_names_an_absolute_time(props, expected) -> None:
    assert parse_delivery(props, 1_000_000, MAX) == expected


def test_the_eighteen_delay_levels_are_rocketmqs() -> None:
    assert [ms // 1000 for ms in DELAY_LEVELS_MS] == [
        1, 5, 10, 30, 60, 120, 180, 240, 300, 360, 420, 480, 540, 600, 1200, 1800, 3600, 7200]
    for level, ms in enumerate(DELAY_LEVELS_MS, 1):
        assert parse_delivery({"DELAY": str(level)}, 0, MAX) == ms


def test_delay_levels_are_configurable_as_rocketmqs_message_delay_level() -> None:
    default = "1s 5s 10s 30s 1m 2m 3m 4m 5m 6m 7m 8m 9m 10m 20m 30m 1h 2h"
    assert parse_delay_levels(default) == DELAY_LEVELS_MS
    assert BrokerConfig().delay_levels == default
    fast = parse_delay_levels(" ".join(f"{100 * i}ms" for i in range(1, 19)))
    assert parse_delivery({"DELAY": "3"}, 1000, MAX, fast) == 1300
    for bad in ("1s 5s", default + " 3h", default.replace("5s", "5x"),
                default.replace("5s", "0s"), default.replace("5s", "-5s")):
        with pytest.raises(ValueError):
            parse_delay_levels(bad)
    with pytest.raises(ValueError):
        BrokerConfig(delay_levels="1s")


@pytest.mark.parametrize("props", [
    {"TIMER_DELAY_MS": "-1"},
    {"TIMER_DELAY_SEC": "-5"},
    {"TIMER_DELIVER_MS": "-1700000000000"},
    {"DELAY": "-1"},
    {"DELAY": "19"},
    {"DELAY": "99999"},
    {"TIMER_DELAY_MS": "1.5"},
    {"TIMER_DELAY_MS": "soon"},
    {"TIMER_DELAY_MS": ""},
    {"TIMER_DELAY_MS": "1e9"},
    {"TIMER_DELAY_MS": "9" * 40},
    {"TIMER_DELAY_SEC": str(366 * 86400)},
    {"TIMER_DELIVER_MS": str(1_000_000 + MAX + 1)},
    {"TIMER_DELAY_MS": "10", "DELAY": "3"},
])
def test_negative_malformed_absurd_or_conflicting_delays_are_clear_errors(props) -> None:
    with pytest.raises(InvalidDelay) as err:
        parse_delivery(props, 1_000_000, MAX)
    assert err.value.code == "invalid_delay"


def test_timer_from_offsets_finds_every_marker_and_ignores_lookalikes() -> None:
    raw = b"A\x01b\x02TIMER_FROM\x0112\x02XTIMER_FROM\x0199\x02TIMER_FROM\x0134\x02"
    assert list(timer_from_offsets(raw)) == [12, 34]


# ====================================================================== the wheel


def test_wheel_links_a_slots_entries_and_keeps_them_across_reopen(tmp_path) -> None:
    w = TimerWheel(str(tmp_path / "w"), slots=1024, segment_entries=4)
    assert w.open() is False
    for i in range(10):  # spills over three log segments
        w.insert(100 + i % 2, 100_000 + i, i * 10, 50)
    assert [e[2] for e in w.walk(100)] == [80, 60, 40, 20, 0]  # offsets, newest first
    assert w.count(101) == 5 and w.pending == 10
    w.close()
    w = TimerWheel(str(tmp_path / "w"), slots=1024, segment_entries=4)
    assert w.open() is True
    assert w.next_entry == 10 and w.pending == 10
    assert [e[1] for e in w.walk(101)] == [100_009, 100_007, 100_005, 100_003, 100_001]
    assert w.cancel(101, 30) == (1, 0) and w.cancel(101, 30) == (0, 1)
    assert [e[4] for e in w.walk(101)] == [False, False, False, True, False]
    assert w.entry(3).cancelled and w.entry(3).phys == 30
    assert w.validate() is None
    w.close()


def test_wheel_ring_holds_laps_and_finds_nonempty_seconds_across_the_wrap(tmp_path) -> None:
    w = TimerWheel(str(tmp_path / "w"), slots=1024, segment_entries=64)
    w.open()
    w.insert(1020, 1, 1, 1)
    w.insert(1020 + 1024, 2, 2, 1)  # a later lap shares the slot
    w.insert(1030, 3, 3, 1)  # ring index 6, after the wrap
    assert [e[2] for e in w.walk(1020)] == [2, 1]
    assert list(w.nonempty_slots(1000, 1100)) == [1020, 1030]
    assert list(w.nonempty_slots(1021, 1100)) == [1030]
    w.clear(1020)
    assert w.walk(1020 + 1024) == [] and w.pending == 1
    w.close()


def test_wheel_finds_a_damaged_entry_and_reaps_processed_segments(tmp_path) -> None:
    w = TimerWheel(str(tmp_path / "w"), slots=1024, segment_entries=4)
    w.open()
    for i in range(12):
        w.insert(10 + i // 4, i, i, 1)  # segment k holds slot 10 + k
    assert len(w.segments) == 3
    w.clear(10)
    w.clear(11)
    assert len(w.reap(12)) == 2 and len(w.segments) == 1  # the newest is always kept
    seg = w.segments[0]
    seg.mm[32 + 8:32 + 16] = b"\xff" * 8  # a torn entry
    with pytest.raises(WheelCorrupt):
        w.walk(12)
    assert "CRC" in w.validate()
    w.close()


def test_the_wheel_file_is_sparse(tmp_path) -> None:
    w = TimerWheel(str(tmp_path / "w"))  # 2^22 slots: 64 MiB apparent size
    w.open()
    w.insert(1_000_000, 1, 1, 1)
    w.close()
    st = os.stat(tmp_path / "w" / "wheel")
    assert st.st_size == (1 << 22) * 16 and st.st_blocks * 512 < 1 << 20


# ====================================================================== delivery (real clock)


async def until(pred, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.01)


@pytest.fixture
async def broker(tmp_path):
    async with Broker.open(config(tmp_path)) as b:
        yield b


async def test_a_timed_message_is_invisible_until_due_then_consumable_once(broker) -> None:
    await broker.create_topic("orders", 2)
    due = now_ms() + 800
    r = await broker.put(Message("orders", b"pay?", {"TIMER_DELIVER_MS": str(due),
                                                     "TAGS": "check", "KEYS": "o-1"}, queue_id=1))
    assert (r.topic, r.queue_id, r.queue_offset) == ("orders", 1, -1)
    assert broker.store.queue_bounds("orders", 1) == (0, 0)
    assert not await broker.wait("orders", 1, 0, 0.3)
    assert broker.store.queue_bounds("orders", 1) == (0, 0)
    assert await broker.wait("orders", 1, 0, 3.0)
    (m,) = read_queue(broker, "orders", 1)
    assert m.store_timestamp >= due
    assert m.body == b"pay?" and m.tags == "check" and m.keys == ["o-1"]
    assert m.msg_id == r.message_id()  # the id the producer got is the id consumers see
    assert m.properties["TIMER_OUT_MS"] == str(due)
    assert int(m.properties["TIMER_FROM"]) == r.physical_offset
    assert not {"TIMER_DELIVER_MS", "REAL_TOPIC", "REAL_QID"} & set(m.properties)
    await trio.sleep(0.3)
    assert len(read_queue(broker, "orders", 1)) == 1
    found = broker.message_by_id(r.message_id())
    await until(lambda: broker.message_by_id(r.message_id()).topic == "orders")
    assert found is not None and broker.messages_by_key("orders", "o-1")[0].body == b"pay?"


@pytest.mark.parametrize("prop", ["TIMER_DELIVER_MS", "TIMER_DELAY_MS", "TIMER_DELAY_SEC", "DELAY"])
async def test_each_door_property_delays_delivery(broker, prop) -> None:
    value = {"TIMER_DELIVER_MS": str(now_ms() + 1000), "TIMER_DELAY_MS": "1000",
             "TIMER_DELAY_SEC": "1", "DELAY": "1"}[prop]
    t0 = now_ms()
    await broker.put(Message("t", b"x", {prop: value}, queue_id=0))
    assert broker.store.queue_bounds("t", 0) == (0, 0)
    assert await broker.wait("t", 0, 0, 3.0)
    (m,) = read_queue(broker, "t", 0)
    assert m.store_timestamp - t0 >= 1000 - 1 and prop not in m.properties


async def test_a_delivery_time_in_the_past_is_delivered_at_once(broker) -> None:
    r = await broker.put(Message("t", b"late", {"TIMER_DELIVER_MS": "1000"}, queue_id=0))
    assert r.queue_offset == 0
    (m,) = read_queue(broker, "t", 0)
    assert m.body == b"late" and "TIMER_DELIVER_MS" not in m.properties


async def test_bad_delays_are_refused_and_nothing_is_stored(broker) -> None:
    await broker.create_topic("t", 1)
    before = broker.store.dispatched_pos
    for props in ({"TIMER_DELAY_MS": "-5"}, {"DELAY": "42"}, {"TIMER_DELAY_SEC": "x"},
                  {"TIMER_DELIVER_MS": str(now_ms() + 400 * 86400_000)}):
        with pytest.raises(InvalidDelay):
            await broker.put(Message("t", b"x", props))
    with pytest.raises(InvalidMessage):
        await broker.put([Message("t", b"a"), Message("t", b"b", {"DELAY": "1"})])
    assert broker.store.dispatched_pos == before


async def test_producers_cannot_write_or_read_the_timer_topic(broker) -> None:
    await broker.put(Message("t", b"x", {"DELAY": "2"}))
    with pytest.raises(PermissionDenied):
        await broker.put(Message(TIMER_TOPIC, b"forged", {"TIMER_OUT_MS": "1"}))
    with pytest.raises(PermissionDenied):
        broker.get("g", TIMER_TOPIC, 0, 0)
    with pytest.raises(PermissionDenied):
        await broker.delete_topic(TIMER_TOPIC)


async def test_cancel_a_pending_timer_by_its_message_id(broker) -> None:
    keep = await broker.put(Message("t", b"keep", {"TIMER_DELAY_MS": "600"}, queue_id=0))
    drop = await broker.put(Message("t", b"drop", {"TIMER_DELAY_MS": "600",
                                                   "UNIQ_KEY": "client-id-1"}, queue_id=0))
    assert drop.message_id() == "client-id-1"
    c = await broker.cancel_timer("client-id-1")
    assert c.timer_offset == drop.physical_offset
    with pytest.raises(TimerNotFound):
        await broker.cancel_timer("client-id-1")  # twice
    with pytest.raises(TimerNotFound):
        await broker.cancel_timer("no-such-id")
    await until(lambda: broker.store.queue_bounds("t", 0)[1] == 1)
    await trio.sleep(0.3)
    assert [m.body for m in read_queue(broker, "t", 0)] == [b"keep"]
    with pytest.raises(TimerNotFound):
        await broker.cancel_timer(keep.message_id())  # delivered already
    s = broker.timer_stats()
    assert (s.delivered, s.cancelled) == (1, 1)


async def test_cancel_works_on_a_timer_already_read_ahead(broker) -> None:
    r = await broker.put(Message("t", b"x", {"TIMER_DELAY_MS": "900"}, queue_id=0))
    await until(lambda: broker.timer_stats().prepared == 1)  # in memory, ready to fire
    await broker.cancel_timer(r.message_id())
    await trio.sleep(1.2)
    assert read_queue(broker, "t", 0) == [] and broker.timer_stats().prepared == 0


async def test_timers_due_at_the_same_millisecond_go_out_as_batch_records_in_order(broker) -> None:
    await broker.create_topic("burst", 2)
    due = now_ms() + 1500
    for i in range(3000):
        await broker.put(Message("burst", b"%d" % i, {"TIMER_DELIVER_MS": str(due),
                                                      "UNIQ_KEY": f"id-{i}"}, queue_id=i % 2))
    await until(lambda: broker.store.queue_bounds("burst", 0)[1] == 1500
                and broker.store.queue_bounds("burst", 1)[1] == 1500)
    for q in (0, 1):
        msgs = read_queue(broker, "burst", q)
        assert [int(m.body) for m in msgs] == list(range(q, 3000, 2))  # arrival order
        assert min(m.store_timestamp for m in msgs) >= due
    q = broker.store.queues[("burst", 0)]
    assert q.next_entry - q.first_entry < 10  # a few batch records, not 1500
    await until(lambda: broker.message_by_id("id-2999").topic == "burst")
    assert broker.timer_stats().lateness_p99_ms is not None


async def test_messages_without_properties_never_touch_the_timers(broker) -> None:
    await broker.put(Message("t", b"plain"))
    await broker.put(Message("t", b"props", {"KEYS": "k", "TIMER_OUT_MS": "5"}))
    assert TIMER_TOPIC not in broker.meta.topics and broker.timer_stats().scheduled == 0


# ====================================================================== restarts


async def test_timers_survive_a_clean_restart_and_those_due_while_down_fire_at_start(
        tmp_path) -> None:
    cfg = config(tmp_path)
    async with Broker.open(cfg) as b:
        await b.create_topic("t", 1)
        soon = await b.put(Message("t", b"while-down", {"TIMER_DELAY_MS": "300"}))
        later = await b.put(Message("t", b"after", {"TIMER_DELAY_MS": "1800"}))
        gone = await b.put(Message("t", b"cancelled", {"TIMER_DELAY_MS": "400"}))
        await b.cancel_timer(gone.message_id())
    await trio.sleep(0.6)  # the first falls due while the broker is down
    async with Broker.open(cfg) as b:
        await until(lambda: b.store.queue_bounds("t", 0)[1] == 1, 3.0)
        assert [m.body for m in read_queue(b, "t", 0)] == [b"while-down"]
        await until(lambda: b.store.queue_bounds("t", 0)[1] == 2, 5.0)
        msgs = read_queue(b, "t", 0)
        assert [m.body for m in msgs] == [b"while-down", b"after"]
        assert [m.msg_id for m in msgs] == [soon.message_id(), later.message_id()]
    async with Broker.open(cfg) as b:
        await trio.sleep(0.5)
        assert len(read_queue(b, "t", 0)) == 2  # none twice


async def test_the_wheel_is_rebuilt_from_the_commitlog_when_lost(tmp_path) -> None:
    cfg = config(tmp_path)
    async with Broker.open(cfg) as b:
        await b.create_topic("t", 1)
        await b.put(Message("t", b"done", {"TIMER_DELAY_MS": "100"}))
        await until(lambda: b.store.queue_bounds("t", 0)[1] == 1)
        await b.put(Message("t", b"pending", {"TIMER_DELAY_MS": "1200"}))
        gone = await b.put(Message("t", b"cancelled", {"TIMER_DELAY_MS": "1000"}))
        await b.cancel_timer(gone.message_id())
    shutil.rmtree(tmp_path / "data" / "timer")  # wheel, log and checkpoint
    async with Broker.open(cfg) as b:
        assert b.timer_stats().pending >= 1
        await until(lambda: b.store.queue_bounds("t", 0)[1] == 2, 5.0)
        await trio.sleep(0.4)
        assert [m.body for m in read_queue(b, "t", 0)] == [b"done", b"pending"]


async def test_a_damaged_wheel_after_a_crash_is_rebuilt_from_the_timer_queue(tmp_path) -> None:
    cfg = config(tmp_path)
    async with Broker.open(cfg) as b:
        await b.create_topic("t", 1)
        for i in range(20):
            await b.put(Message("t", b"%d" % i, {"TIMER_DELAY_MS": str(1000 + i * 20)}))
        await b.timers.checkpoint()
    log_dir = tmp_path / "data" / "timer" / "log"
    seg = log_dir / sorted(os.listdir(log_dir))[0]
    with open(seg, "r+b") as f:  # tear the entries (an unflushed page after a power cut)
        f.seek(32 + 5 * 32)
        f.write(b"\x00" * 64)
    open(tmp_path / "data" / "store" / "abort", "wb").close()  # and say it was a crash
    async with Broker.open(cfg) as b:
        await until(lambda: b.store.queue_bounds("t", 0)[1] == 20, 6.0)
        await trio.sleep(0.3)
        assert sorted(int(m.body) for m in read_queue(b, "t", 0)) == list(range(20))


# ====================================================================== MockClock: long horizons


async def sleep_until_wall(b: Broker, wall: int) -> None:
    """Sleep on the MockClock until the broker's wall clock reads ``wall`` (a worker
    thread lets the autojumping clock run ahead, so durations are not to be trusted)."""
    while b.timers.clock() < wall:
        await trio.sleep((wall - b.timers.clock()) / 1000)


async def test_a_thirty_day_timer_fires_on_time_after_rolling_daily(
        tmp_path, autojump_clock, monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        async with Broker.open(quiet_config(tmp_path)) as b:
            b.timers.idle_wake_s = 3600
            await b.create_topic("t", 1)
            await b._paths.system_topic(TIMER_TOPIC)
            due = b.timers.clock() + 30 * DAY_MS + 1234
            r = await b.put(Message("t", b"month", {"TIMER_DELIVER_MS": str(due)}, queue_id=0))
            await sleep_until_wall(b, due - 50)
            assert read_queue(b, "t", 0) == []
            assert await b.wait("t", 0, 0, 2.0)
            (m,) = read_queue(b, "t", 0)
            assert due <= m.store_timestamp <= due + 100  # no drift after 30 days
            assert m.msg_id == r.message_id()
            s = b.timer_stats()
            assert 29 <= s.rolled <= 31 and s.delivered == 1  # re-appended once a day
            # Cancel finds the newest copy of a rolled timer.
            r2 = await b.put(Message("t", b"x", {"TIMER_DELAY_SEC": str(3 * 86400)}, queue_id=0))
            await sleep_until_wall(b, b.timers.clock() + 2 * DAY_MS + DAY_MS // 2)
            assert b.timer_stats().rolled >= s.rolled + 2
            await b.cancel_timer(r2.message_id())
            await sleep_until_wall(b, b.timers.clock() + DAY_MS)
            assert len(read_queue(b, "t", 0)) == 1


async def test_delay_levels_fire_at_their_offsets(tmp_path, autojump_clock, monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        async with Broker.open(quiet_config(tmp_path)) as b:
            await b.create_topic("lv", 1)
            await b._paths.system_topic(TIMER_TOPIC)
            put_at = {}
            for level in range(1, 19):
                r = await b.put(Message("lv", b"%d" % level, {"DELAY": str(level)}, queue_id=0))
                put_at[level] = r.store_timestamp
            await sleep_until_wall(b, b.timers.clock() + 7201_000)
            msgs = read_queue(b, "lv", 0)
            assert [int(m.body) for m in msgs] == list(range(1, 19))
            for m in msgs:
                level = int(m.body)
                late = m.store_timestamp - put_at[level] - DELAY_LEVELS_MS[level - 1]
                assert 0 <= late <= 50, (level, late)


async def test_a_store_refusing_writes_delays_timers_but_loses_none(broker) -> None:
    from ferrymq.core.errors import StoreError

    await broker.put(Message("t", b"x", {"TIMER_DELAY_MS": "300"}, queue_id=0))
    broker.store.failed = StoreError("disk full (simulated)")
    await trio.sleep(0.8)  # due meanwhile: the delivery is refused and kept
    assert broker.store.queue_bounds("t", 0) == (0, 0)
    broker.store.failed = None
    await until(lambda: broker.store.queue_bounds("t", 0)[1] == 1, 3.0)
    assert [m.body for m in read_queue(broker, "t", 0)] == [b"x"]


async def test_cancelling_members_of_a_batch_built_ahead_leaves_the_rest_in_order(broker) -> None:
    from ferrymq.core import parse_filter

    due = now_ms() + 1200
    ids = []
    for i in range(50):
        r = await broker.put(Message("t", b"%d" % i, {"TIMER_DELIVER_MS": str(due),
                                                      "TAGS": "odd" if i % 2 else "even"},
                                     queue_id=0))
        ids.append(r.message_id())
    await until(lambda: broker.timer_stats().prepared == 50)  # built, waiting for its ms
    for i in (0, 7, 49):
        await broker.cancel_timer(ids[i])
    await until(lambda: broker.store.queue_bounds("t", 0)[1] == 47)
    assert [int(m.body) for m in read_queue(broker, "t", 0)] == [
        i for i in range(50) if i not in (0, 7, 49)]
    odd = broker.get(None, "t", 0, 0, 100, 1 << 20, parse_filter("odd"))
    assert {int(m.body) % 2 for m in odd.messages()} == {1}
    assert broker.timer_stats().prepared == 0
    # Their generated ids are RocketMQ-shaped: the batch record is indexed once per
    # id prefix, as the store indexes batches, and each id still finds its member.
    await until(lambda: broker.message_by_id(ids[48]).topic == "t")
    assert broker.message_by_id(ids[48]).body == b"48"
    assert broker.message_by_id(ids[1]).body == b"1"
