"""Topic configs (core/topicconfig.py): validated once for every door, stored with the
topic in the state log, described with their sources, and honoured by the broker
(message size, timestamp type, retention per topic on a shared CommitLog)."""

from __future__ import annotations

import pytest
import trio
from ferrymq.core import Broker, BrokerConfig, Message
from ferrymq.core import topicconfig as tc
from ferrymq.core.errors import InvalidConfig, MessageTooLarge
from ferrymq.core.message import now_ms
from ferrymq.protocols.kafka import batch_header as bh
from ferrymq.protocols.kafka import records as kr


def config(tmp_path, **over) -> BrokerConfig:
    base = dict(data_dir=str(tmp_path / "data"), segment_size=1 << 20,
                max_message_size=64 * 1024, cq_entries_per_file=64, index_slots=64,
                index_entries=256, default_queues=1)
    base.update(over)
    return BrokerConfig(**base)


@pytest.fixture
async def broker(tmp_path):
    async with Broker.open(config(tmp_path)) as b:
        yield b


@pytest.mark.parametrize("attrs", [
    {"no.such.config": "1"},
    {"retention.ms": "abc"},
    {"retention.ms": "-2"},
    {"cleanup.policy": "shred"},
    {"cleanup.policy": ""},
    {"message.timestamp.type": "BrokerTime"},
    {"max.message.bytes": "999999999"},  # above the broker's limit
    {"segment.bytes": "1048576"},  # read-only: the CommitLog's segments are shared
    {"compression.type": "gzip"},  # the broker never recompresses
    {"min.insync.replicas": "2"},  # one replica
])
async def test_unknown_or_invalid_configs_are_refused_and_nothing_is_created(broker, attrs) -> None:
    with pytest.raises(InvalidConfig):
        await broker.create_topic("t", 1, attributes=attrs)
    assert broker.find_topic("t") is None


async def test_configs_are_normalized_stored_and_survive_a_restart(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        t = await b.create_topic("t", 1, attributes={
            "cleanup.policy": "compact, delete", "retention.ms": " 60000", "owner": "me"})
        assert dict(t.attributes) == {"cleanup.policy": "compact,delete",
                                      "retention.ms": "60000", "owner": "me"}
    async with Broker.open(config(tmp_path)) as b:
        assert b.topic("t").attributes["cleanup.policy"] == "compact,delete"


async def test_incremental_operations_set_delete_append_subtract(broker) -> None:
    await broker.create_topic("t", 1)
    t = await broker.alter_topic_configs("t", [("retention.ms", tc.OP_SET, "1000"),
                                               ("cleanup.policy", tc.OP_APPEND, "compact")])
    assert dict(t.attributes) == {"retention.ms": "1000", "cleanup.policy": "delete,compact"}
    t = await broker.alter_topic_configs("t", [("cleanup.policy", tc.OP_SUBTRACT, "delete"),
                                               ("retention.ms", tc.OP_DELETE, None)])
    assert dict(t.attributes) == {"cleanup.policy": "compact"}
    with pytest.raises(InvalidConfig):
        await broker.alter_topic_configs("t", [("retention.ms", tc.OP_APPEND, "5")])
    with pytest.raises(InvalidConfig):
        await broker.alter_topic_configs("t", [("cleanup.policy", tc.OP_SUBTRACT, "compact")])
    assert dict(broker.topic("t").attributes) == {"cleanup.policy": "compact"}


async def test_validate_only_changes_nothing(broker) -> None:
    await broker.create_topic("t", 1)
    t = await broker.alter_topic_configs("t", [("retention.ms", tc.OP_SET, "5")],
                                         validate_only=True)
    assert t.attributes["retention.ms"] == "5"
    assert "retention.ms" not in broker.topic("t").attributes


async def test_replacing_configs_resets_the_ones_not_given(broker) -> None:
    await broker.create_topic("t", 1, attributes={"retention.ms": "5", "owner": "me"})
    t = await broker.alter_topic_configs("t", replace_with={"retention.bytes": "100"})
    assert dict(t.attributes) == {"retention.bytes": "100", "owner": "me"}


async def test_describe_lists_every_config_with_its_source(broker) -> None:
    await broker.create_topic("t", 1, attributes={"retention.ms": "5"})
    entries = {e.name: e for e in broker.describe_topic_configs("t")}
    assert set(tc.SPECS) <= set(entries)
    r = entries["retention.ms"]
    assert (r.value, r.source, r.read_only) == ("5", tc.SOURCE_DYNAMIC_TOPIC, False)
    assert [s[0] for s in r.synonyms] == ["retention.ms", "log.retention.ms"]
    assert entries["cleanup.policy"].value == "delete"
    assert entries["cleanup.policy"].source == tc.SOURCE_DEFAULT
    seg = entries["segment.bytes"]
    assert (seg.value, seg.read_only) == (str(1 << 20), True)
    broker_entries = {e.name: e for e in broker.describe_broker_configs()}
    assert broker_entries["num.partitions"].value == "1"
    assert broker_entries["log.retention.ms"].source == tc.SOURCE_STATIC_BROKER


async def test_max_message_bytes_is_honoured_by_every_put(broker) -> None:
    await broker.create_topic("small", 1, attributes={"max.message.bytes": "100"})
    await broker.put(Message("small", b"x" * 100))
    with pytest.raises(MessageTooLarge):
        await broker.put(Message("small", b"x" * 101))
    with pytest.raises(MessageTooLarge):
        await broker.put([Message("small", b"x" * 60), Message("small", b"y" * 60)])
    with pytest.raises(MessageTooLarge):
        await broker.put_kafka_batch("small", 0, kr.encode_batch(0, [(1, None, b"z" * 200, ())]))


async def test_log_append_time_rewrites_the_batch_timestamp(broker) -> None:
    await broker.create_topic("lat", 1, attributes={"message.timestamp.type": "LogAppendTime"})
    before = now_ms()
    await broker.put_kafka_batch("lat", 0, kr.encode_batch(0, [(1000, None, b"v", ())]))
    (r,) = broker.get(None, "lat", 0, 0).records
    stored = bytes(r.decode().body)
    h = bh.read_header(stored)
    assert h.attributes & bh.TIMESTAMP_TYPE_LOG_APPEND
    assert h.max_timestamp >= before
    kr.check_crc(stored)  # recomputed over the rewritten header


async def test_a_topics_retention_moves_its_queue_start_but_not_other_topics(broker) -> None:
    await broker.create_topic("short", 1, attributes={"retention.bytes": "0"})
    await broker.create_topic("long", 1)
    for i in range(3):
        await broker.put(Message("short", b"s%d" % i))
        await broker.put(Message("long", b"l%d" % i))
    broker.run_retention()
    assert broker.queue_bounds("short", 0) == (3, 3)
    assert broker.queue_bounds("long", 0) == (0, 3)
    r = await broker.put(Message("short", b"new"))
    await broker.alter_topic_configs("short", [("retention.bytes", tc.OP_DELETE, None),
                                               ("retention.ms", tc.OP_SET, "0")])
    while now_ms() <= r.store_timestamp:  # retention.ms 0 removes what is older than now
        await trio.sleep(0.001)
    broker.run_retention()
    assert broker.queue_bounds("short", 0) == (4, 4)


async def test_retention_bytes_keeps_the_newest_records_that_fit(broker) -> None:
    await broker.create_topic("b", 1)
    for _i in range(10):
        await broker.put(Message("b", b"x" * 100))
    size = len(broker.get(None, "b", 0, 0, 1).records[0].data)
    await broker.alter_topic_configs("b", [("retention.bytes", tc.OP_SET, str(size * 4))])
    broker.run_retention()
    assert broker.queue_bounds("b", 0) == (6, 10)
    for _i in range(2):
        await broker.put(Message("b", b"x" * 100))
    broker.run_retention()
    assert broker.queue_bounds("b", 0) == (8, 12)


async def test_a_topics_retention_start_holds_after_a_restart(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("short", 1, attributes={"retention.bytes": "0"})
        await b.put(Message("short", b"gone"))
        b.run_retention()
        assert b.queue_bounds("short", 0) == (1, 1)
    async with Broker.open(config(tmp_path)) as b:
        assert b.queue_bounds("short", 0) == (1, 1)
