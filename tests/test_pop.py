"""Pop consumption in the core: leases, receipts, revival, dead letters, restarts (docs/pop.md)."""

from __future__ import annotations

import os
import shutil
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio
from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.core.errors import (
    InvalidArgument,
    InvalidReceipt,
    ReceiptStale,
    TopicNotFound,
)
from ferrymq.core.filter import parse_filter
from ferrymq.core.message import (
    PROPERTY_DLQ_ORIGIN_MESSAGE_ID,
    PROPERTY_DLQ_ORIGIN_TOPIC,
    Message,
)
from trio.testing import MockClock


@pytest.fixture
def clock() -> MockClock:
    """Virtual time that jumps once every task has been idle for 20 ms of real time:
    the broker's worker threads (metadata saves, fsyncs) finish before time moves."""
    return MockClock(autojump_threshold=0.02)


@asynccontextmanager
async def broker_at(path: Path, **config: object):
    async with Broker.open(BrokerConfig(data_dir=str(path), segment_size=16 << 20,
                                        cq_entries_per_file=1000, index_slots=1000,
                                        index_entries=4000, checkpoint_interval_ms=60_000,
                                        flush_interval_ms=60_000,
                                        offset_persist_interval_ms=60_000,
                                        **config)) as b:  # type: ignore[arg-type]
        yield b


async def put_n(b: Broker, topic: str, n: int, queue_id: int = 0, **kw: object) -> None:
    for i in range(n):
        await b.put(Message.build(topic, f"m{i}".encode(), queue_id=queue_id, **kw))  # type: ignore[arg-type]


def bodies(popped) -> list[bytes]:
    return [p.message.body for p in popped]


async def test_popped_messages_are_invisible_until_acked_and_gone_after(tmp_path,
                                                                        clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 3)
        first = await b.pop("G", "T", 2, 10_000)
        assert bodies(first) == [b"m0", b"m1"]
        assert all(p.message.reconsume_times == 0 for p in first)
        second = await b.pop("G", "T", 10, 10_000)
        assert bodies(second) == [b"m2"], "leased messages are not handed out twice"
        b.ack(first[0].receipt)
        assert b.ack_batch([first[1].receipt, second[0].receipt]) == [None, None]
        await trio.sleep(60)
        assert await b.pop("G", "T", 10, 10_000) == [], "acked messages never come back"
        assert b.committed_offset("G", "T", 0) == 3, "pop progress is the group's offset"


async def test_unacked_message_comes_back_with_reconsume_count_raised(tmp_path,
                                                                      clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 1)
        first = await b.pop("G", "T", 1, 5_000)
        await trio.sleep(4.9)
        assert await b.pop("G", "T", 1, 5_000) == [], "still invisible"
        await trio.sleep(0.2)
        again = await b.pop("G", "T", 1, 5_000)
        assert bodies(again) == [b"m0"]
        assert again[0].message.reconsume_times == 1
        assert again[0].receipt != first[0].receipt
        assert b.committed_offset("G", "T", 0) == 0, "an unacked message holds the offset back"


async def test_ack_after_revival_is_stale_and_leaves_no_duplicate(tmp_path,
                                                                  clock) -> None:
    """apache/rocketmq #3787, #4153: the late ack of a revived message must not ack
    the redelivery, and the redelivery acked once is delivered no more."""
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 1)
        old = (await b.pop("G", "T", 1, 1_000))[0]
        await trio.sleep(1.5)
        with pytest.raises(ReceiptStale):
            b.ack(old.receipt)  # ran out: refused even before anybody popped again
        new = (await b.pop("G", "T", 1, 1_000))[0]
        with pytest.raises(ReceiptStale):
            b.ack(old.receipt)
        b.ack(new.receipt)
        with pytest.raises(ReceiptStale):
            b.ack(new.receipt)  # twice
        await trio.sleep(30)
        assert await b.pop("G", "T", 1, 1_000) == []
        assert b.pop_service.stats["stale_acks"] == 3


async def test_forged_and_malformed_receipts_are_refused(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 1)
        good = (await b.pop("G", "T", 1, 10_000))[0].receipt
        tampered = good[:20] + ("A" if good[20] != "A" else "B") + good[21:]
        for bad in (tampered, good[:-4], "not base64 !!", "", "x" * 5000, "AAAA"):
            with pytest.raises(InvalidReceipt):
                b.ack(bad)
        results = b.ack_batch([tampered, good, good])
        assert isinstance(results[0], InvalidReceipt)
        assert results[1] is None
        assert isinstance(results[2], ReceiptStale), "the same handle twice in one batch"


async def test_a_receipt_from_another_broker_is_forged(tmp_path, clock) -> None:
    async with broker_at(tmp_path / "a") as a:
        await put_n(a, "T", 1)
        receipt = (await a.pop("G", "T", 1, 10_000))[0].receipt
    async with broker_at(tmp_path / "b") as b:
        await put_n(b, "T", 1)
        with pytest.raises(InvalidReceipt):
            b.ack(receipt)


async def test_change_invisible_time_issues_a_new_handle(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 1)
        p = (await b.pop("G", "T", 1, 2_000))[0]
        renewal = b.change_invisible_time(p.receipt, 60_000)
        assert renewal.invisible_until > p.invisible_until
        await trio.sleep(10)
        assert await b.pop("G", "T", 1, 2_000) == [], "the longer lease holds"
        with pytest.raises(ReceiptStale):
            b.ack(p.receipt)
        b.ack(renewal.receipt)
        with pytest.raises(InvalidArgument):
            b.change_invisible_time(renewal.receipt, 10)


async def test_message_goes_to_the_dlq_past_max_reconsume_times(tmp_path,
                                                               clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await b.create_group("G", max_reconsume_times=2)
        await b.put(Message.build("T", b"poison", keys="k1", queue_id=0))
        seen = []
        for _ in range(5):
            got = await b.pop("G", "T", 1, 1_000, wait_ms=3_000)
            seen += [p.message.reconsume_times for p in got]
        assert seen == [0, 1, 2], "three deliveries (reconsume 0..max), then no more"
        await trio.sleep(2)
        dlq = b.get(None, "%DLQ%G", 0, 0, 10)
        [dead] = list(dlq.messages())
        assert dead.body == b"poison"
        assert dead.properties[PROPERTY_DLQ_ORIGIN_TOPIC] == "T"
        assert dead.properties[PROPERTY_DLQ_ORIGIN_MESSAGE_ID]
        assert dead.reconsume_times == 3
        assert b.committed_offset("G", "T", 0) == 1, "a dead letter no longer holds the offset"
        assert b.pop_service.stats["dead_lettered"] == 1


async def test_tag_filter_pops_only_matching_messages(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        for i, tag in enumerate("ABAB"):
            await b.put(Message.build("T", f"{tag}{i}".encode(), tags=tag, queue_id=0))
        got = await b.pop("G", "T", 10, 10_000, parse_filter("B"))
        assert bodies(got) == [b"B1", b"B3"]
        assert await b.pop("G", "T", 10, 10_000) == [], "filtered-out messages are passed"


async def test_peek_leases_nothing(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 2)
        assert [m.body for m in b.peek("G", "T", 10)] == [b"m0", b"m1"]
        got = await b.pop("G", "T", 1, 1_000)
        assert [m.body for m in b.peek("G", "T", 10)] == [b"m1"]
        await trio.sleep(2)
        peeked = b.peek("G", "T", 10)
        assert [m.body for m in peeked] == [b"m0", b"m1"], "a revived message is next again"
        assert peeked[0].reconsume_times == 1
        assert bodies(await b.pop("G", "T", 10, 1_000)) == [b"m0", b"m1"]
        assert got


async def test_long_poll_returns_when_a_message_arrives(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 2)
        result = []

        async def consumer() -> None:
            got = await b.pop("G", "T", 4, 10_000, wait_ms=20_000)
            result.append((trio.current_time(), got))

        t0 = trio.current_time()
        async with trio.open_nursery() as n:
            n.start_soon(consumer)
            await trio.sleep(3)
            await b.put(Message("T", b"late", queue_id=1))
        at, got = result[0]
        assert bodies(got) == [b"late"]
        assert at - t0 == pytest.approx(3, abs=0.1)
        t1 = trio.current_time()
        assert await b.pop("G", "T", 4, 10_000, wait_ms=5_000) == []
        assert trio.current_time() - t1 == pytest.approx(5, abs=0.1)


async def test_long_poll_wakes_for_a_revived_message(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 1)
        await b.pop("G", "T", 1, 2_000)
        t0 = trio.current_time()
        got = await b.pop("G", "T", 1, 2_000, wait_ms=20_000)
        assert bodies(got) == [b"m0"]
        assert trio.current_time() - t0 < 2.5


async def test_in_flight_window_is_bounded_per_queue(tmp_path, clock) -> None:
    async with broker_at(tmp_path, extra={"pop_max_inflight_per_queue": 3}) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 5)
        first = await b.pop("G", "T", 10, 10_000)
        assert len(first) == 3
        assert await b.pop("G", "T", 10, 10_000) == []
        b.ack(first[0].receipt)
        assert bodies(await b.pop("G", "T", 10, 10_000)) == [b"m3"]


async def test_batch_members_are_leased_and_revived_one_by_one(tmp_path,
                                                              clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await b.put([Message("T", f"b{i}".encode(), queue_id=0) for i in range(4)])
        got = await b.pop("G", "T", 3, 1_000)
        assert bodies(got) == [b"b0", b"b1", b"b2"]
        b.ack(got[0].receipt)
        b.ack(got[2].receipt)
        await trio.sleep(1.5)
        again = await b.pop("G", "T", 10, 1_000)
        assert bodies(again) == [b"b1", b"b3"], "the revived member, then the rest"
        assert [p.message.reconsume_times for p in again] == [1, 0]


async def test_pop_of_an_unknown_topic_and_bad_arguments(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        with pytest.raises(TopicNotFound):
            await b.pop("G", "nope", 1, 10_000)
        await b.create_topic("T", 1)
        for kwargs in ({"max_messages": 0}, {"invisible_time_ms": 1},
                       {"wait_ms": -1}, {"init": "middle"}):
            with pytest.raises(InvalidArgument):
                await b.pop("G", "T", **{"max_messages": 1, **kwargs})  # type: ignore[arg-type]


async def test_init_latest_skips_what_is_there(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 2)
        assert await b.pop("G", "T", 10, 10_000, init="latest") == []
        await b.put(Message("T", b"new", queue_id=0))
        assert bodies(await b.pop("G", "T", 10, 10_000)) == [b"new"]


async def test_pop_state_survives_a_clean_restart(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 3)
        got = await b.pop("G", "T", 3, 60_000)
        b.ack(got[0].receipt)
    async with broker_at(tmp_path) as b:
        b.ack(got[1].receipt)  # a handle issued before the restart still acks
        assert await b.pop("G", "T", 10, 60_000) == [], "m2 is still leased"
        await trio.sleep(61)
        again = await b.pop("G", "T", 10, 60_000)
        assert bodies(again) == [b"m2"]
        assert again[0].message.reconsume_times == 1


async def test_pop_state_survives_a_crash(tmp_path, clock) -> None:
    """A copy of the data directory taken while the broker runs is what a SIGKILL
    leaves behind: the journal (not yet snapshotted) must bring the state back."""
    async with broker_at(tmp_path / "live") as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 4)
        got = await b.pop("G", "T", 4, 60_000)
        b.ack(got[0].receipt)
        renewed = b.change_invisible_time(got[1].receipt, 600_000)
        await trio.to_thread.run_sync(b.store.checkpoint)
        shutil.copytree(tmp_path / "live", tmp_path / "crashed",
                        ignore=shutil.ignore_patterns("lock"))
    assert os.path.exists(tmp_path / "crashed" / "store" / "abort")
    async with broker_at(tmp_path / "crashed") as b:
        with pytest.raises(ReceiptStale):
            b.ack(got[0].receipt)  # acked before the crash
        with pytest.raises(ReceiptStale):
            b.ack(got[1].receipt)  # superseded before the crash
        await trio.sleep(61)
        again = await b.pop("G", "T", 10, 60_000)
        assert bodies(again) == [b"m2", b"m3"], "m0 acked, m1 renewed: not redelivered"
        b.ack(renewed.receipt)


async def test_pop_state_is_compacted_into_the_state_snapshot(tmp_path, clock) -> None:
    """Pop state lives in the broker's state log: its records are compacted by the
    state snapshots, and a restart replays only what came after the last one."""
    async with broker_at(tmp_path, state_snapshot_records=20) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 60)
        for _ in range(30):
            got = await b.pop("G", "T", 2, 60_000)
            b.ack(got[0].receipt)
        await trio.sleep(3)  # the compaction task snapshots once 20 records are past
        assert b.state.stats["snapshots"] >= 1
        assert b.state.since_snapshot < 20
        snapshots = [n for n in os.listdir(tmp_path / "state") if n.startswith("snapshot-")]
        assert 1 <= len(snapshots) <= 2
        assert not list((tmp_path / "pop").glob("journal-*"))  # no pop files at all
    async with broker_at(tmp_path) as b:
        [status] = b.pop_status("G", "T")
        assert (status.pop_offset, status.in_flight) == (60, 30)
        assert b.state.stats["recovered"] == 0, "the shutdown snapshot holds everything"


async def test_deleting_a_topic_forgets_its_pop_state(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 1)
        p = (await b.pop("G", "T", 1, 60_000))[0]
        await b.delete_topic("T")
        assert b.pop_status("G") == []
        with pytest.raises(TopicNotFound):
            b.ack(p.receipt)
        await b.create_topic("T", 1)
        await put_n(b, "T", 1)
        assert bodies(await b.pop("G", "T", 1, 60_000)) == [b"m0"]


async def test_deleting_a_group_forgets_its_pop_state(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 2)
        await b.pop("G", "T", 2, 60_000)
        await b.delete_group("G")
        assert b.pop_status("G") == []
        assert bodies(await b.pop("G", "T", 2, 60_000)) == [b"m0", b"m1"]


async def test_a_latest_start_is_remembered_across_a_restart(tmp_path, clock) -> None:
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 2)
        assert await b.pop("G", "T", 10, 60_000, init="latest") == []
        await b.put(Message("T", b"after", queue_id=0))
    async with broker_at(tmp_path) as b:
        assert bodies(await b.pop("G", "T", 10, 60_000, init="latest")) == [b"after"]


async def test_small_pops_from_a_big_batch_read_on_where_the_last_stopped(tmp_path,
                                                                         clock) -> None:
    """A batch of 1,000 popped 7 at a time: every member once, in order, and each pop
    starts at the member the last one stopped at (the queue's batch cursor), not by
    stepping over the batch's start again."""
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await b.put([Message("T", f"m{i}".encode() * (i % 5 + 1), {"k": str(i)} if i % 2 else {})
                     for i in range(1000)])
        await put_n(b, "T", 3)  # a single record after the batch
        got = []
        while popped := await b.pop("G", "T", 7, 60_000):
            got += popped
            cursor = b.pop_service.queues[("G", "T", 0)].cursor
            if len(got) < 1000:
                assert cursor.member == len(got)  # the next pop starts at its first member
        assert bodies(got) == [f"m{i}".encode() * (i % 5 + 1) for i in range(1000)] + [
            b"m0", b"m1", b"m2"]
        assert [dict(p.message.properties).get("k") for p in got[:4]] == [None, "1", None, "3"]
        assert [p.message.queue_offset for p in got] == list(range(1003))
        assert b.ack_batch([p.receipt for p in got]) == [None] * 1003


async def test_receipts_issued_here_ack_without_decoding_and_others_still_decode(
        tmp_path, clock) -> None:
    """A pop remembers the receipts it signed, so their ack skips base64 and HMAC; an
    acked one is forgotten (and stale again if reused); one signed before a restart,
    which nothing remembers, is decoded and checked in full."""
    async with broker_at(tmp_path) as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 3)
        first, second, third = await b.pop("G", "T", 3, 60_000)
        codec = b.pop_service.codec
        assert codec.decode(first.receipt) is codec._issued[first.receipt]
        b.ack(first.receipt)
        assert first.receipt not in codec._issued
        with pytest.raises(ReceiptStale):
            b.ack(first.receipt)
        tampered = second.receipt[:-1] + ("A" if second.receipt[-1] != "A" else "B")
        with pytest.raises(InvalidReceipt):
            b.ack(tampered)
        assert b.ack_batch([second.receipt]) == [None]
    async with broker_at(tmp_path) as b:
        assert not b.pop_service.codec._issued
        b.ack(third.receipt)
        assert b.pop_status("G")[0].in_flight == 0
