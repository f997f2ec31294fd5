"""The time index (core/store/timeindex.py): offsets by the records' own timestamps, with
Kafka's rule (the first offset whose timestamp is >= t), kept across restarts."""

from __future__ import annotations

import ferrymq.gateways.kafka  # noqa: F401  (registers the Kafka batch decoder)
import pytest
from ferrymq.core import Broker, BrokerConfig, Message
from ferrymq.core.store import timeindex
from ferrymq.protocols.kafka import records as kr

T0 = 1_600_000_000_000


def config(tmp_path, **over) -> BrokerConfig:
    base = dict(data_dir=str(tmp_path / "data"), segment_size=1 << 20,
                max_message_size=64 * 1024, cq_entries_per_file=64, index_slots=64,
                index_entries=256, default_queues=1)
    base.update(over)
    return BrokerConfig(**base)


def batch(*timestamps: int) -> bytes:
    return kr.encode_batch(0, [(ts, None, b"v%d" % ts, ()) for ts in timestamps])


@pytest.fixture(params=[1 << 20, 1], ids=["one-entry", "entry-per-record"])
def interval(request, monkeypatch):
    monkeypatch.setattr(timeindex, "INTERVAL_BYTES", request.param)
    return request.param


async def test_a_lookup_finds_the_first_record_at_or_after_the_time_by_create_time(
        tmp_path, interval) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("k", 1)
        await b.put_kafka_batch("k", 0, batch(T0, T0 + 500))  # offsets 0, 1
        await b.put_kafka_batch("k", 0, batch(T0 + 1000, T0 + 1600))  # 2, 3
        await b.put_kafka_batch("k", 0, batch(T0 + 2000))  # 4
        assert b.offset_for_timestamp("k", 0, T0 + 1000) == (2, T0 + 1000)
        assert b.offset_for_timestamp("k", 0, T0 + 1001) == (3, T0 + 1600)
        assert b.offset_for_timestamp("k", 0, 0) == (0, T0)
        assert b.offset_for_timestamp("k", 0, T0 + 2001) == (5, -1)
        assert b.max_timestamp("k", 0) == (4, T0 + 2000)


async def test_timestamps_that_go_back_are_found_by_the_maximum_so_far(tmp_path, interval) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("k", 1)
        for ts in (5000, 3000, 7000, 6000):
            await b.put_kafka_batch("k", 0, batch(ts))
        assert b.offset_for_timestamp("k", 0, 4000)[0] == 0
        assert b.offset_for_timestamp("k", 0, 6000)[0] == 2
        assert b.offset_for_timestamp("k", 0, 6500)[0] == 2
        assert b.max_timestamp("k", 0) == (2, 7000)


async def test_native_messages_are_found_by_their_born_time(tmp_path, interval) -> None:
    async with Broker.open(config(tmp_path)) as b:
        for i in range(4):
            await b.put(Message("n", b"x", born_timestamp=T0 + i * 10))
        assert b.offset_for_timestamp("n", 0, T0 + 15)[0] == 2


async def test_the_index_is_the_same_after_a_restart_and_after_a_crash(tmp_path, interval) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("k", 1)
        for i in range(20):
            await b.put_kafka_batch("k", 0, batch(T0 + i * 100, T0 + i * 100 + 50))
    checkpoint = tmp_path / "data" / "store" / "checkpoint"
    old = checkpoint.read_bytes()
    async with Broker.open(config(tmp_path)) as b:
        assert b.offset_for_timestamp("k", 0, T0 + 1025) == (21, T0 + 1050)
        for i in range(20, 30):
            await b.put_kafka_batch("k", 0, batch(T0 + i * 100, T0 + i * 100 + 50))
    # As after a crash: the checkpoint behind the index's file, recovery re-dispatches.
    checkpoint.write_bytes(old)
    (tmp_path / "data" / "store" / "abort").write_text("running")
    async with Broker.open(config(tmp_path)) as b:
        assert b.recovery is not None and b.recovery.records_redispatched >= 10
        assert b.offset_for_timestamp("k", 0, T0 + 2525) == (51, T0 + 2550)
        assert b.max_timestamp("k", 0) == (58, T0 + 2950)


async def test_a_log_append_time_topic_is_looked_up_by_store_time(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("lat", 1, attributes={"message.timestamp.type": "LogAppendTime"})
        r = await b.put_kafka_batch("lat", 0, batch(T0))
        assert b.offset_for_timestamp("lat", 0, T0 + 1) == (0, r.store_timestamp)
        assert b.offset_for_timestamp("lat", 0, r.store_timestamp + 1) == (1, -1)
