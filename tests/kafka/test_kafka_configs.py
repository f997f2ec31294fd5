"""Topic configs through the Kafka door, on the wire: CreateTopics' configs validated and
kept, DescribeConfigs complete (sources, synonyms, documentation, broker configs),
AlterConfigs and IncrementalAlterConfigs, and ListOffsets by the records' CreateTime."""

from __future__ import annotations

from typing import Any

import trio
from ferrymq.core.access import SYSTEM
from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.kafka import serve
from ferrymq.gateways.server import DoorContext
from ferrymq.protocols.kafka import errors as ke
from ferrymq.protocols.kafka import records as kr
from kafka_wire import Body, Client, Req, create, produce, run

LIST_OFFSETS, CREATE_TOPICS, DESCRIBE_CONFIGS, ALTER_CONFIGS, INCREMENTAL_ALTER = 2, 19, 32, 33, 44
TOPIC, BROKER = 2, 4
SET, DELETE, APPEND, SUBTRACT = 0, 1, 2, 3
DYNAMIC_TOPIC, STATIC_BROKER, DEFAULT = 1, 4, 5


def create_with(c: Client, topic: str, configs: dict[str, str], validate_only: bool = False,
                version: int = 7) -> Any:
    R = Req(CREATE_TOPICS)
    resp = c.call(CREATE_TOPICS, version, R(topics=(R.CreatableTopic(
        name=topic, num_partitions=1, replication_factor=1, configs=tuple(
            R.CreatableTopicConfig(name=k, value=v) for k, v in configs.items())),),
        timeout_ms=5000, validate_only=validate_only))
    return resp.topics[0]


def describe(c: Client, kind: int, name: str, version: int = 4, keys: tuple[str, ...] | None = None
             ) -> Any:
    R = Req(DESCRIBE_CONFIGS)
    resp = c.call(DESCRIBE_CONFIGS, version, R(resources=(R.DescribeConfigsResource(
        resource_type=kind, resource_name=name, configuration_keys=keys),),
        include_synonyms=True, include_documentation=True))
    return resp.results[0]


def incremental(c: Client, topic: str, ops: list[tuple[str, int, str | None]],
                validate_only: bool = False, kind: int = TOPIC) -> Any:
    R = Req(INCREMENTAL_ALTER)
    resp = c.call(INCREMENTAL_ALTER, 1, R(resources=(R.AlterConfigsResource(
        resource_type=kind, resource_name=topic, configs=tuple(
            R.AlterableConfig(name=n, config_operation=op, value=v) for n, op, v in ops)),),
        validate_only=validate_only))
    return resp.responses[0]


def alter(c: Client, topic: str, configs: dict[str, str], version: int = 2) -> Any:
    R = Req(ALTER_CONFIGS)
    resp = c.call(ALTER_CONFIGS, version, R(resources=(R.AlterConfigsResource(
        resource_type=TOPIC, resource_name=topic, configs=tuple(
            R.AlterableConfig(name=k, value=v) for k, v in configs.items())),),
        validate_only=False))
    return resp.responses[0]


def list_offset(c: Client, topic: str, timestamp: int, version: int = 8) -> Any:
    R = Req(LIST_OFFSETS)
    resp = c.call(LIST_OFFSETS, version, R(replica_id=-1, isolation_level=0, topics=(
        R.ListOffsetsTopic(name=topic, partitions=(
            R.ListOffsetsPartition(partition_index=0, timestamp=timestamp),)),)))
    return resp.topics[0].partitions[0]


async def with_door(tmp_path: Any, body: Body) -> None:
    """kafka_wire's door on a broker with 2 MiB segments (a 1 GiB segment is allocated
    on disk whole: five tests would take 5 GB of a shared machine's disk)."""
    config = BrokerConfig(data_dir=str(tmp_path / "data"), segment_size=2 << 20,
                          max_message_size=1 << 20)
    async with Broker.open(config) as broker, trio.open_nursery() as nursery:
        port = await nursery.start(serve, DoorContext(broker, "127.0.0.1", 0, {},
                                                      ServerConfig()))
        await body(broker, f"127.0.0.1:{port}")
        nursery.cancel_scope.cancel()


def values(result: Any) -> dict[str, Any]:
    return {e.name: e for e in result.configs}


async def test_create_topics_refuses_unknown_and_invalid_configs(tmp_path) -> None:
    """Finding: cleanup.policy=compact, retention.ms=abc and no.such.config=1 all succeeded
    and were ignored."""
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        for bad in ({"retention.ms": "abc"}, {"no.such.config": "1"},
                    {"cleanup.policy": "compact,shred"}, {"segment.bytes": "1000"}):
            r = await run(create_with, c, "bad", bad)
            assert r.error_code == ke.INVALID_CONFIG, bad
            assert broker.find_topic("bad", principal=SYSTEM) is None
        r = await run(create_with, c, "bad", {"retention.ms": "abc"}, True)
        assert r.error_code == ke.INVALID_CONFIG  # validate_only validates the configs too
        r = await run(create_with, c, "dry", {"cleanup.policy": "compact"}, True)
        assert r.error_code == ke.NONE and broker.find_topic("dry", principal=SYSTEM) is None
        assert {e.name: e.value for e in r.configs}["cleanup.policy"] == "compact"
        c.close()
    await with_door(tmp_path, body)


async def test_created_configs_are_kept_and_described_with_their_source(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        r = await run(create_with, c, "cmp", {"cleanup.policy": "compact",
                                              "retention.ms": "3600000"})
        assert r.error_code == ke.NONE
        assert {e.name: e.value for e in r.configs}["cleanup.policy"] == "compact"
        d = values(await run(describe, c, TOPIC, "cmp"))
        assert len(d) >= 20  # the configs Kafka users expect, not five
        cp = d["cleanup.policy"]
        assert (cp.value, cp.config_source, cp.read_only) == ("compact", DYNAMIC_TOPIC, False)
        assert [(s.name, s.source) for s in cp.synonyms] == [
            ("cleanup.policy", DYNAMIC_TOPIC), ("log.cleanup.policy", DEFAULT)]
        assert d["retention.ms"].value == "3600000"
        assert d["retention.bytes"].config_source == DEFAULT
        assert d["segment.bytes"].read_only and d["segment.bytes"].documentation
        assert d["max.message.bytes"].config_type == 3  # INT
        v0 = values(await run(describe, c, TOPIC, "cmp", 0))
        assert v0["cleanup.policy"].is_default is False and v0["retention.bytes"].is_default
        one = await run(describe, c, TOPIC, "cmp", 4, ("retention.ms",))
        assert [e.name for e in one.configs] == ["retention.ms"]
        missing = await run(describe, c, TOPIC, "nope")
        assert missing.error_code == ke.UNKNOWN_TOPIC_OR_PARTITION
        b = values(await run(describe, c, BROKER, "0"))
        assert b["num.partitions"].value == "1" and b["log.retention.ms"].read_only
        assert b["message.max.bytes"].value == str(1 << 20)
        assert b["advertised.listeners"].value == f"PLAINTEXT://{bootstrap}"
        c.close()
    await with_door(tmp_path, body)


async def test_incremental_alter_configs_set_delete_append_subtract(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "inc")
        r = await run(incremental, c, "inc", [("retention.ms", SET, "1000"),
                                              ("cleanup.policy", APPEND, "compact")])
        assert r.error_code == ke.NONE
        d = values(await run(describe, c, TOPIC, "inc"))
        assert (d["retention.ms"].value, d["cleanup.policy"].value) == ("1000", "delete,compact")
        r = await run(incremental, c, "inc", [("cleanup.policy", SUBTRACT, "delete"),
                                              ("retention.ms", DELETE, None)])
        assert r.error_code == ke.NONE
        d = values(await run(describe, c, TOPIC, "inc"))
        assert d["cleanup.policy"].value == "compact"
        assert d["retention.ms"].config_source != DYNAMIC_TOPIC
        for ops in ([("retention.ms", SET, "-7")], [("retention.ms", APPEND, "1")],
                    [("no.such", SET, "1")], [("retention.ms", 9, "1")]):
            assert (await run(incremental, c, "inc", ops)).error_code == ke.INVALID_CONFIG, ops
        r = await run(incremental, c, "inc", [("retention.ms", SET, "5")], True)
        assert r.error_code == ke.NONE
        assert "retention.ms" not in broker.topic("inc", principal=SYSTEM).attributes
        assert (await run(incremental, c, "0", [("log.retention.ms", SET, "1")], False, BROKER)
                ).error_code == ke.INVALID_REQUEST
        assert (await run(incremental, c, "x", [], False, 77)).error_code == ke.INVALID_REQUEST
        assert (await run(incremental, c, "nope", [("retention.ms", SET, "5")])
                ).error_code == ke.UNKNOWN_TOPIC_OR_PARTITION
        c.close()
    await with_door(tmp_path, body)


async def test_alter_configs_replaces_every_config(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create_with, c, "rep", {"retention.ms": "1000", "cleanup.policy": "compact"})
        assert (await run(alter, c, "rep", {"retention.bytes": "4096"})).error_code == ke.NONE
        assert dict(broker.topic("rep", principal=SYSTEM).attributes) == {"retention.bytes": "4096"}
        assert (await run(alter, c, "rep", {"retention.bytes": "x"}, 0)
                ).error_code == ke.INVALID_CONFIG
        c.close()
    await with_door(tmp_path, body)


async def test_list_offsets_finds_records_by_their_create_time(tmp_path) -> None:
    """Finding: offsets_for_times looked up the broker's store time: for a record produced
    with timestamp 1600000001000 it returned offset 0."""
    t0 = 1_600_000_000_000
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "ts")
        for ts in (t0, t0 + 1000, t0 + 2000):
            await run(produce, c, "ts", kr.encode_batch(0, [(ts, None, b"v", [])]))
        p = await run(list_offset, c, "ts", t0 + 1000)
        assert (p.offset, p.timestamp) == (1, t0 + 1000)
        p = await run(list_offset, c, "ts", t0 + 1)
        assert (p.offset, p.timestamp) == (1, t0 + 1000)
        p = await run(list_offset, c, "ts", t0 + 5000)
        assert (p.offset, p.timestamp) == (-1, -1)
        p = await run(list_offset, c, "ts", -3)  # MAX_TIMESTAMP
        assert (p.offset, p.timestamp) == (2, t0 + 2000)
        c.close()
    await with_door(tmp_path, body)
