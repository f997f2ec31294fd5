"""The Broker API every door calls: produce, consume, long polling, offsets, admin, stats,
lookups, and the errors bad input gets."""

from __future__ import annotations

import os

import pytest
import trio
from ferrymq.core import Broker, BrokerConfig, Message, parse_filter
from ferrymq.core.errors import (
    FlushFailed,
    GroupNotFound,
    InvalidArgument,
    InvalidGroupName,
    InvalidTopicName,
    MessageTooLarge,
    OffsetOutOfRange,
    PermissionDenied,
    QueueNotFound,
    TopicExists,
    TopicNotFound,
)
from ferrymq.core.message import GetStatus
from ferrymq.core.metadata import PERM_READ, PERM_WRITE


def config(tmp_path, **over) -> BrokerConfig:
    base = dict(data_dir=str(tmp_path / "data"), segment_size=1 << 20,
                max_message_size=64 * 1024, cq_entries_per_file=64, index_slots=64,
                index_entries=256, default_queues=2)
    base.update(over)
    return BrokerConfig(**base)


@pytest.fixture
async def broker(tmp_path):
    async with Broker.open(config(tmp_path)) as b:
        yield b


def bodies(result) -> list[bytes]:
    return [m.body for m in result.messages()]


async def test_put_then_get_round_trip_with_properties(broker) -> None:
    r = await broker.put(Message.build("orders", b"one", tags="TagA", keys=["k1", "k2"],
                                       properties={"color": "red"}, queue_id=1))
    assert (r.topic, r.queue_id, r.queue_offset, r.count) == ("orders", 1, 0, 1)
    (m,) = broker.get("g", "orders", 1, 0).messages()
    assert (m.body, m.tags, m.keys, m.properties["color"]) == (b"one", "TagA", ["k1", "k2"], "red")
    assert m.msg_id == r.message_id() and len(m.msg_id) == 32
    assert m.store_timestamp == r.store_timestamp


async def test_topics_are_auto_created_with_the_default_queue_count(broker) -> None:
    await broker.put(Message("fresh", b"x"))
    assert broker.topic("fresh").queues == 2


async def test_round_robin_spreads_unassigned_messages_over_queues(broker) -> None:
    qids = [(await broker.put(Message("rr", b"x"))).queue_id for _ in range(6)]
    assert sorted(set(qids)) == [0, 1] and qids.count(0) == 3


async def test_a_batch_is_one_record_in_one_queue(broker) -> None:
    r = await broker.put([Message("b", b"%d" % i, queue_id=1) for i in range(4)])
    assert (r.queue_id, r.queue_offset, r.count) == (1, 0, 4)
    assert len(r.message_ids) == 4 and len(set(r.message_ids)) == 4
    g = broker.get(None, "b", 1, 2)
    assert [m.body for m in g.messages(2)] == [b"2", b"3"]
    for i, mid in enumerate(r.message_ids):
        assert broker.message_by_id(mid).body == b"%d" % i


@pytest.mark.parametrize("name", ["", "a/b", "a b", "x" * 128, "..", "naïve"])
async def test_invalid_topic_names_are_refused_and_nothing_is_stored(broker, name) -> None:
    end = broker.store.dispatched_pos  # the broker's own state records written at open
    with pytest.raises(InvalidTopicName):
        await broker.put(Message(name, b"x"))
    with pytest.raises(InvalidTopicName):
        await broker.create_topic(name)
    assert broker.topics() == []
    assert broker.store.dispatched_pos == end


async def test_oversized_messages_and_batches_are_refused(broker) -> None:
    with pytest.raises(MessageTooLarge):
        await broker.put(Message("t", bytes(64 * 1024 + 1)))
    with pytest.raises(MessageTooLarge):
        await broker.put([Message("t", bytes(40 * 1024)), Message("t", bytes(40 * 1024))])
    # No message record was stored (the CommitLog holds only the state log's record
    # of the auto-created topic).
    assert broker.topic_stats("t").messages == 0
    assert {r.topic for r in broker.store.commitlog.scan(0)} == {"RMQ_SYS_FERRY_STATE"}


async def test_a_batch_must_stay_in_one_topic(broker) -> None:
    from ferrymq.core.errors import InvalidMessage
    with pytest.raises(InvalidMessage):
        await broker.put([Message("a", b"1"), Message("b", b"2")])
    with pytest.raises(InvalidMessage):
        await broker.put([])


async def test_unknown_topics_without_auto_create(tmp_path) -> None:
    async with Broker.open(config(tmp_path, auto_create_topics=False)) as b:
        with pytest.raises(TopicNotFound):
            await b.put(Message("nope", b"x"))
        with pytest.raises(TopicNotFound):
            b.get("g", "nope", 0, 0)
        await b.create_topic("yes", 1)
        await b.put(Message("yes", b"x"))


async def test_queue_ids_out_of_range(broker) -> None:
    await broker.create_topic("q", 2)
    with pytest.raises(QueueNotFound):
        await broker.put(Message("q", b"x", queue_id=2))
    with pytest.raises(QueueNotFound):
        broker.get("g", "q", 5, 0)
    with pytest.raises(InvalidArgument):
        broker.get("g", "q", 0, -1)


async def test_offsets_out_of_range_are_statuses_with_a_way_back(broker) -> None:
    await broker.create_topic("o", 1)
    for i in range(3):
        await broker.put(Message("o", b"%d" % i))
    g = broker.get("g", "o", 0, 10)
    assert (g.status, g.next_offset, g.max_offset) == (GetStatus.OFFSET_OVERFLOW_BADLY, 3, 3)
    assert broker.get("g", "o", 0, 3).status is GetStatus.NO_NEW_MESSAGE
    with pytest.raises(OffsetOutOfRange):
        broker.commit_offset("g", "o", 0, -5)


async def test_permissions_are_enforced(broker) -> None:
    await broker.create_topic("ro", 1, perm=PERM_READ)
    await broker.create_topic("wo", 1, perm=PERM_WRITE)
    with pytest.raises(PermissionDenied):
        await broker.put(Message("ro", b"x"))
    await broker.put(Message("wo", b"x"))
    with pytest.raises(PermissionDenied):
        broker.get("g", "wo", 0, 0)
    await broker.update_topic("wo", perm=PERM_READ | PERM_WRITE)
    assert bodies(broker.get("g", "wo", 0, 0)) == [b"x"]


async def test_topic_admin(broker) -> None:
    t = await broker.create_topic("admin", 3, message_type="FIFO", attributes={"owner": "me"})
    assert (t.queues, t.message_type, dict(t.attributes)) == (3, "FIFO", {"owner": "me"})
    with pytest.raises(TopicExists):
        await broker.create_topic("admin")
    t = await broker.update_topic("admin", queues=5)
    assert t.queues == 5
    with pytest.raises(InvalidArgument):
        await broker.update_topic("admin", queues=2)
    with pytest.raises(InvalidArgument):
        await broker.create_topic("bad", 0)
    with pytest.raises(InvalidArgument):
        await broker.create_topic("bad", 1, message_type="WEIRD")
    await broker.delete_topic("admin")
    with pytest.raises(TopicNotFound):
        broker.topic("admin")
    with pytest.raises(TopicNotFound):
        await broker.delete_topic("admin")


async def test_long_poll_wakes_on_put_and_times_out(broker) -> None:
    await broker.create_topic("lp", 1)
    assert await broker.wait("lp", 0, 0, 0.05) is False
    woke = []

    async def waiter() -> None:
        woke.append(await broker.wait("lp", 0, 0, 10))

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.sleep(0.05)
        assert woke == []
        with trio.fail_after(2):
            await broker.put(Message("lp", b"x"))
            while not woke:
                await trio.sleep(0.001)
    assert woke == [True]
    assert await broker.wait("lp", 0, 0, 0) is True
    assert broker._paths._waiters == {}, "woken and timed-out waiters leave nothing behind"


async def test_wait_any_over_several_queues(broker) -> None:
    await broker.create_topic("w1", 2)
    result = []

    async def waiter() -> None:
        result.append(await broker.wait_any([("w1", 0, 0), ("w1", 1, 0)], 10))

    async with trio.open_nursery() as n:
        n.start_soon(waiter)
        await trio.sleep(0.02)
        await broker.put(Message("w1", b"x", queue_id=1))
    assert result == [True]


async def test_committed_offsets_survive_restart(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("c", 2)
        b.commit_offset("grp", "c", 1, 7)
        assert b.committed_offset("grp", "c", 1) == 7
        assert b.committed_offset("grp", "c", 0) is None
    async with Broker.open(config(tmp_path)) as b:
        assert b.committed_offset("grp", "c", 1) == 7
        assert b.group("grp").name == "grp"


async def test_a_committed_offset_survives_a_crash_as_soon_as_it_is_committed(tmp_path) -> None:
    """A copy of the data directory taken while the broker runs is what a SIGKILL leaves
    behind: the commit is there without any periodic save having run."""
    import shutil
    async with Broker.open(config(tmp_path, offset_persist_interval_ms=86_400_000)) as b:
        await b.create_topic("c", 1)
        b.commit_offset("grp", "c", 0, 3)
        shutil.copytree(tmp_path / "data", tmp_path / "crashed",
                        ignore=shutil.ignore_patterns("lock"))
    async with Broker.open(config(tmp_path, data_dir=str(tmp_path / "crashed"))) as b:
        assert b.committed_offset("grp", "c", 0) == 3
        assert b.group("grp").name == "grp"


async def test_group_names_and_unknown_groups(broker) -> None:
    await broker.create_topic("g", 1)
    with pytest.raises(InvalidGroupName):
        broker.commit_offset("bad\ngroup", "g", 0, 1)
    with pytest.raises(GroupNotFound):
        broker.group_stats("never-seen")
    with pytest.raises(TopicNotFound):
        broker.commit_offset("grp", "nope", 0, 1)


async def test_unknown_groups_are_refused_when_auto_create_is_off(tmp_path) -> None:
    async with Broker.open(config(tmp_path, auto_create_groups=False)) as b:
        await b.create_topic("g", 1)
        with pytest.raises(GroupNotFound):
            b.commit_offset("grp", "g", 0, 1)
        await b.create_group("grp")
        b.commit_offset("grp", "g", 0, 1)


async def test_stats_count_messages_and_lag(broker) -> None:
    await broker.create_topic("s", 2)
    for i in range(5):
        await broker.put(Message("s", b"x" * 10, queue_id=i % 2))
    broker.get("grp", "s", 0, 0)
    broker.commit_offset("grp", "s", 0, 2)
    ts = broker.topic_stats("s")
    assert (ts.messages_in, ts.messages) == (5, 5) and ts.bytes_in > 50
    assert ts.queues == ((0, 0, 3), (1, 0, 2))
    (gs,) = broker.group_stats("grp")
    assert [(q.queue_id, q.committed, q.lag) for q in gs.queues] == [(0, 2, 1), (1, None, None)]
    assert gs.lag == 1 and gs.messages_out == 3


async def test_tag_and_sql_filters_through_the_broker(broker) -> None:
    await broker.create_topic("f", 1)
    await broker.put(Message.build("f", b"a", tags="TagA", properties={"n": "1"}))
    await broker.put(Message.build("f", b"b", tags="TagB", properties={"n": "2"}))
    assert bodies(broker.get("g", "f", 0, 0, filter=parse_filter("TagB || TagC"))) == [b"b"]
    assert bodies(broker.get("g", "f", 0, 0, filter=parse_filter("n > 1", "SQL92"))) == [b"b"]


async def test_lookup_by_id_and_key(broker) -> None:
    r = await broker.put(Message.build("k", b"a", keys="order-9",
                                       properties={"UNIQ_KEY": "AABBCCDD00112233AABBCCDD00112233"}))
    assert broker.message_by_id("AABBCCDD00112233AABBCCDD00112233").body == b"a"
    assert broker.message_by_id(r.offset_message_id()).body == b"a"
    assert broker.message_by_id("00" * 16) is None
    assert broker.message_by_id("not-an-id") is None
    assert [m.body for m in broker.messages_by_key("k", "order-9")] == [b"a"]


async def test_offset_for_time(broker) -> None:
    await broker.create_topic("ts", 1)
    r = await broker.put(Message("ts", b"a"))
    assert broker.offset_for_time("ts", 0, r.store_timestamp) == 0
    assert broker.offset_for_time("ts", 0, r.store_timestamp + 10_000) == 1


async def test_deleting_and_recreating_a_topic_never_resurrects_old_messages(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("phoenix", 1)
        await b.put(Message("phoenix", b"old"))
        b.commit_offset("grp", "phoenix", 0, 1)
        await b.delete_topic("phoenix")
        await b.create_topic("phoenix", 1)
        await b.put(Message("phoenix", b"new"))
        assert bodies(b.get("g", "phoenix", 0, 0)) == [b"new"]
        assert b.committed_offset("grp", "phoenix", 0) is None
        store_dir = b.store.config.directory
    # Even a recovery that rebuilds every queue from the whole log keeps them dead.
    os.unlink(os.path.join(store_dir, "checkpoint"))
    import shutil
    shutil.rmtree(os.path.join(store_dir, "consumequeue"))
    async with Broker.open(config(tmp_path)) as b:
        assert bodies(b.get("g", "phoenix", 0, 0)) == [b"new"]


async def test_sync_flush_acknowledges_only_flushed_messages(tmp_path) -> None:
    async with Broker.open(config(tmp_path, flush="sync")) as b:
        results = []

        async def writer(i: int) -> None:
            results.append(await b.put(Message("sync", b"%d" % i)))

        async with trio.open_nursery() as n:
            for i in range(20):
                n.start_soon(writer, i)
        assert len(results) == 20
        flushed = b.store.commitlog.flushed_pos
        assert all(r.physical_offset < flushed for r in results)
        assert b.counters.flushes < 20, "group commit: one fsync serves several writers"
        assert sum(b.topic_stats("sync").queues[q][2] for q in range(2)) == 20


async def test_a_failed_fsync_fails_the_writer_and_later_writes(tmp_path, monkeypatch) -> None:
    async with Broker.open(config(tmp_path, flush="sync")) as b:
        await b.put(Message("x", b"fine"))

        def broken(fd: int) -> None:
            raise OSError(5, "Input/output error")

        monkeypatch.setattr(os, "fdatasync", broken)
        with pytest.raises(FlushFailed):
            await b.put(Message("x", b"lost?"))
        monkeypatch.undo()
        with pytest.raises(FlushFailed):
            await b.put(Message("x", b"refused"))
        assert b.counters.flush_failures == 1


async def test_unflushed_messages_are_invisible_under_sync_flush(tmp_path) -> None:
    async with Broker.open(config(tmp_path, flush="sync")) as b:
        await b.create_topic("v", 1)
        await b.put(Message("v", b"a"))
        # Append behind the committer's back: stored, not yet flushed.
        b.store.append_message("v", 0, b"b", {})
        assert bodies(b.get("g", "v", 0, 0)) == [b"a"]
        assert b.queue_bounds("v", 0) == (0, 1)
        assert not b.available("v", 0, 1)


async def test_metadata_reloads(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("m", 3, perm=PERM_READ | PERM_WRITE, attributes={"a": "1"})
        await b.create_group("grp", max_reconsume_times=3)
    async with Broker.open(config(tmp_path)) as b:
        t = b.topic("m")
        assert (t.queues, dict(t.attributes)) == (3, {"a": "1"})
        assert b.group("grp").max_reconsume_times == 3


async def test_the_body_of_the_context_sees_its_own_exception_unwrapped(tmp_path) -> None:
    with pytest.raises(KeyError):
        async with Broker.open(config(tmp_path)):
            raise KeyError("mine")
