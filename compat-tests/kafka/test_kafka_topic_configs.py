"""Topic configs and lookups by time through real Kafka admin clients: confluent-kafka's
AdminClient and kafka-python's KafkaAdminClient create, alter (incrementally and not)
and describe configs; offsets_for_times finds records by their CreateTime."""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Consumer as CKConsumer
from confluent_kafka import KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    ConfigSource,
    NewTopic,
)
from kafka import KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition
from kafka.admin import ConfigResource as KConfigResource
from kafka.admin import ConfigResourceType, KafkaAdminClient
from kafka.admin import NewTopic as KNewTopic
from kafka.errors import InvalidConfigurationError

T0 = 1_600_000_000_000


def _wait(futures: dict) -> dict:
    return {k: f.result(timeout=30) for k, f in futures.items()}


def _described(admin: AdminClient, topic: str) -> dict:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return admin.describe_configs([res])[res].result(timeout=30)


def test_confluent_admin_creates_alters_and_describes_configs(bootstrap) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    _wait(admin.create_topics([NewTopic("ck-compacted", 1, 1, config={
        "cleanup.policy": "compact", "retention.ms": "86400000"})]))
    d = _described(admin, "ck-compacted")
    assert d["cleanup.policy"].value == "compact"
    assert d["cleanup.policy"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert d["retention.ms"].value == "86400000"
    assert d["segment.bytes"].is_read_only
    for bad in ({"retention.ms": "abc"}, {"no.such.config": "1"}):
        with pytest.raises(KafkaException) as err:
            _wait(admin.create_topics([NewTopic("ck-bad", 1, 1, config=bad)]))
        assert err.value.args[0].code() == 40  # INVALID_CONFIG
    res = ConfigResource(ConfigResource.Type.TOPIC, "ck-compacted", incremental_configs=[
        ConfigEntry("cleanup.policy", "delete", incremental_operation=AlterConfigOpType.APPEND),
        ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE)])
    _wait(admin.incremental_alter_configs([res]))
    d = _described(admin, "ck-compacted")
    assert d["cleanup.policy"].value == "compact,delete"
    assert d["retention.ms"].source != ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    bad = ConfigResource(ConfigResource.Type.TOPIC, "ck-compacted", incremental_configs=[
        ConfigEntry("max.message.bytes", "lots", incremental_operation=AlterConfigOpType.SET)])
    with pytest.raises(KafkaException):
        _wait(admin.incremental_alter_configs([bad]))
    broker = ConfigResource(ConfigResource.Type.BROKER, "0")
    b = admin.describe_configs([broker])[broker].result(timeout=30)
    assert b["num.partitions"].value == "1"


def test_confluent_offsets_for_times_uses_create_time(bootstrap) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    _wait(admin.create_topics([NewTopic("ck-times", 1, 1)]))
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0})
    for i in range(3):
        p.produce("ck-times", b"v%d" % i, partition=0, timestamp=T0 + i * 1000)
        p.flush(30)
    c = CKConsumer({"bootstrap.servers": bootstrap, "group.id": "ck-times"})
    (tp,) = c.offsets_for_times([TopicPartition("ck-times", 0, T0 + 1000)], timeout=30)
    assert tp.offset == 1
    (tp,) = c.offsets_for_times([TopicPartition("ck-times", 0, T0 + 1001)], timeout=30)
    assert tp.offset == 2
    c.close()


def test_kafka_python_admin_and_offsets_for_times(bootstrap) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([KNewTopic("kp-configs", 1, 1, topic_configs={
        "cleanup.policy": "compact", "min.compaction.lag.ms": "1000"})])
    with pytest.raises(InvalidConfigurationError):
        admin.create_topics([KNewTopic("kp-bad", 1, 1, topic_configs={"retention.ms": "abc"})])
    admin.alter_configs([KConfigResource(ConfigResourceType.TOPIC, "kp-configs",
                                         configs={"retention.bytes": "1048576"})])
    described = admin.describe_configs([KConfigResource(ConfigResourceType.TOPIC, "kp-configs")],
                                       config_filter="all")
    (by_name,) = described.values()
    entries = by_name["kp-configs"]
    value = {k: (v["value"] if isinstance(v, dict) else v) for k, v in entries.items()}
    # kafka-python alters incrementally (SET) where the broker offers it: the rest stays.
    assert (value["retention.bytes"], value["cleanup.policy"]) == ("1048576", "compact")
    assert entries["retention.bytes"]["config_source"] == "DYNAMIC_TOPIC_CONFIG"
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(3):
        producer.send("kp-configs", b"v%d" % i, partition=0, timestamp_ms=T0 + i * 1000).get(30)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    found = consumer.offsets_for_times({KTopicPartition("kp-configs", 0): T0 + 1000})
    got = found[KTopicPartition("kp-configs", 0)]
    assert (got.offset, got.timestamp) == (1, T0 + 1000)
    consumer.close()
    admin.close()


@pytest.fixture
def compacting_bootstrap(tmp_path, start_broker) -> str:
    """A broker that runs a compaction pass every 0.2 s and flushes every 50 ms."""
    conf = tmp_path / "compaction.toml"
    conf.write_text("compaction_check_interval_s = 0.2\nflush_interval_ms = 50\n")
    return start_broker("kafka", extra_args=("--config", str(conf))).address("kafka")


def _history(send) -> dict[str, str | None]:  # type: ignore[no-untyped-def]
    """Three rounds over ten keys, then a tombstone for k3: what the log must keep."""
    final: dict[str, str | None] = {}
    for rnd in range(3):
        for i in range(10):
            send(f"k{i}", f"v{rnd}-{i}")
            final[f"k{i}"] = f"v{rnd}-{i}"
    send("k3", None)
    final["k3"] = None
    return final


def _read_all_confluent(bootstrap: str, topic: str, end: int) -> list[tuple[int, str, str | None]]:
    c = CKConsumer({"bootstrap.servers": bootstrap, "group.id": f"read-{topic}-{end}",
                    "auto.offset.reset": "earliest", "enable.auto.commit": False})
    c.assign([TopicPartition(topic, 0, 0)])
    out: list[tuple[int, str, str | None]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = c.poll(0.2)
        if m is None or m.error() is not None:
            if out and out[-1][0] >= end - 1:
                break
            continue
        out.append((m.offset(), m.key().decode(), None if m.value() is None else
                    m.value().decode()))
        if m.offset() >= end - 1:
            break
    c.close()
    return out


def test_confluent_compacted_topic_round_trip(compacting_bootstrap, wait_for) -> None:
    bootstrap = compacting_bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    _wait(admin.create_topics([NewTopic("ck-compact", 1, 1, config={
        "cleanup.policy": "compact", "delete.retention.ms": "600000"})]))
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})

    def send(key: str, value: str | None) -> None:
        p.produce("ck-compact", value.encode() if value is not None else None, key.encode(),
                  partition=0)
    final = _history(send)
    p.flush(30)
    # Compacted: one record per key, each at the offset it was written at; the tombstone
    # is still there (delete.retention.ms is ten minutes).
    def compacted():  # type: ignore[no-untyped-def]
        got = _read_all_confluent(bootstrap, "ck-compact", 31)
        return got if len(got) == 10 else None
    got = wait_for(compacted, what="a compacted log")
    assert {k: v for _o, k, v in got} == final
    assert [o for o, _k, _v in got] == sorted({o for o, _k, _v in got})
    assert got[-1] == (30, "k3", None)
    # Tombstones go once delete.retention.ms has passed.
    res = ConfigResource(ConfigResource.Type.TOPIC, "ck-compact", incremental_configs=[
        ConfigEntry("delete.retention.ms", "0", incremental_operation=AlterConfigOpType.SET)])
    _wait(admin.incremental_alter_configs([res]))
    send("k0", "last")  # offset 31: makes the next pass run
    p.flush(30)

    def tombstone_gone():  # type: ignore[no-untyped-def]
        got = _read_all_confluent(bootstrap, "ck-compact", 32)
        return got if "k3" not in {k for _o, k, _v in got} else None
    got = wait_for(tombstone_gone, what="the tombstone removed")
    assert {k: v for _o, k, v in got} == {k: v for k, v in final.items() if v is not None} | {
        "k0": "last"}


def test_kafka_python_compacted_topic_round_trip(compacting_bootstrap, wait_for) -> None:
    bootstrap = compacting_bootstrap
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([KNewTopic("kp-compact", 1, 1, topic_configs={
        "cleanup.policy": "compact", "delete.retention.ms": "0"})])
    producer = KafkaProducer(bootstrap_servers=bootstrap)

    def send(key: str, value: str | None) -> None:
        producer.send("kp-compact", value.encode() if value is not None else None,
                      key=key.encode(), partition=0)
    final = _history(send)
    producer.flush(30)
    producer.close()

    def compacted():  # type: ignore[no-untyped-def]
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                 consumer_timeout_ms=1500)
        tp = KTopicPartition("kp-compact", 0)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        got = [(m.offset, m.key.decode(), m.value) for m in consumer]
        consumer.close()
        return got if len(got) == 9 else None  # the tombstone is gone at once
    got = wait_for(compacted, what="a compacted log")
    assert {k: v.decode() for _o, k, v in got} == {k: v for k, v in final.items()
                                                   if v is not None}
    admin.close()
