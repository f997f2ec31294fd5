"""Cross-protocol mapping (docs/kafka.md, "Mapping"): native messages to Kafka and back.

The broker and its Kafka door run in-process (trio); the native side calls
``Broker.put``/``Broker.get``, the Kafka side is the real kafka-python client in
a worker thread.
"""

from __future__ import annotations

import base64

import trio
from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.core.message import Message
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.kafka import serve
from ferrymq.gateways.kafka.mapping import (
    HEADER_BASE64_PREFIX,
    PROPERTY_KAFKA_KEY_BASE64,
    kafka_to_properties,
    properties_to_kafka,
)
from ferrymq.gateways.server import DoorContext
from kafka import KafkaConsumer, KafkaProducer, TopicPartition


async def _with_door(tmp_path, body) -> None:
    async with Broker.open(BrokerConfig(data_dir=str(tmp_path / "data"))) as broker, \
            trio.open_nursery() as nursery:
        port = await nursery.start(serve, DoorContext(broker, "127.0.0.1", 0, {}, ServerConfig()))
        await body(broker, f"127.0.0.1:{port}")
        nursery.cancel_scope.cancel()


def _consume_all(bootstrap: str, topic: str, n: int) -> list:
    c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      enable_auto_commit=False)
    c.assign([TopicPartition(topic, 0)])
    c.seek_to_beginning()
    out: list = []
    for _ in range(100):
        for batch in c.poll(timeout_ms=200).values():
            out.extend(batch)
        if len(out) >= n:
            break
    c.close()
    return out


async def test_native_messages_reach_a_kafka_consumer_with_key_headers_and_timestamp(tmp_path
                                                                                     ) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        await broker.create_topic("x-native", 1)
        await broker.put(Message.build("x-native", b"single", keys="order-1", tags="TagA",
                                       properties={"color": "red"}, queue_id=0,
                                       born_timestamp=1_700_000_000_123))
        await broker.put([Message("x-native", f"b{i}".encode(), {"i": str(i)}, queue_id=0,
                                  born_timestamp=1_700_000_000_200) for i in range(3)])
        got = await trio.to_thread.run_sync(_consume_all, bootstrap, "x-native", 4)
        assert [(r.offset, r.value) for r in got] == [(0, b"single"), (1, b"b0"), (2, b"b1"),
                                                      (3, b"b2")]
        first = got[0]
        assert first.key == b"order-1"
        assert dict(first.headers) == {"TAGS": b"TagA", "color": b"red"}
        assert first.timestamp == 1_700_000_000_123
        assert dict(got[2].headers) == {"i": b"1"} and got[2].key is None
    await _with_door(tmp_path, body)


async def test_kafka_records_reach_native_consumers_with_keys_and_properties(tmp_path) -> None:
    def produce(bootstrap: str) -> None:
        p = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip", linger_ms=50)
        p.send("x-kafka", key=b"user-7", value=b"text", headers=[("lang", b"en")],
               partition=0, timestamp_ms=1_700_000_000_999)
        p.send("x-kafka", key=b"\xff\x00bin", value=b"binary key",
               headers=[("blob", b"\x00\xff")], partition=0)
        p.send("x-kafka", key=None, value=b"", partition=0)
        p.flush()
        p.close()

    async def body(broker: Broker, bootstrap: str) -> None:
        await broker.create_topic("x-kafka", 1)
        await trio.to_thread.run_sync(produce, bootstrap)
        msgs = list(broker.get("native", "x-kafka", 0, 0, 10).messages())
        assert [m.queue_offset for m in msgs] == [0, 1, 2]
        a, b, c = msgs
        assert (a.body, a.keys, a.properties["lang"]) == (b"text", ["user-7"], "en")
        assert a.born_timestamp == 1_700_000_000_999
        assert b.keys == []
        assert base64.b64decode(b.properties[PROPERTY_KAFKA_KEY_BASE64]) == b"\xff\x00bin"
        assert base64.b64decode(b.properties[HEADER_BASE64_PREFIX + "blob"]) == b"\x00\xff"
        assert (c.body, dict(c.properties)) == (b"", {})
        assert broker.get("native", "x-kafka", 0, 1, 1).records[0].count == 3, \
            "one producer batch is one stored record"
    await _with_door(tmp_path, body)


async def test_offsets_committed_through_kafka_are_the_brokers(tmp_path) -> None:
    def commit(bootstrap: str) -> None:
        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id="shared-group",
                          enable_auto_commit=False)
        from kafka.structs import OffsetAndMetadata
        c.commit({TopicPartition("x-offsets", 1): OffsetAndMetadata(2, "", -1)})
        c.close()

    async def body(broker: Broker, bootstrap: str) -> None:
        await broker.create_topic("x-offsets", 2)
        for i in range(3):
            await broker.put(Message("x-offsets", b"m%d" % i, queue_id=1))
        await trio.to_thread.run_sync(commit, bootstrap)
        assert broker.committed_offset("shared-group", "x-offsets", 1) == 2
    await _with_door(tmp_path, body)


def test_mapping_round_trips_keys_and_headers() -> None:
    for key, headers in [(b"k", [("a", b"1")]), (b"\x80bin", [("b", b"\x00")]),
                         (b"two words", []), (None, [("x", b"y")])]:
        props = kafka_to_properties(key, headers)
        assert properties_to_kafka(props) == (key, headers)
    assert kafka_to_properties(None, [("null", None)]) == {"null": ""}
    assert kafka_to_properties(b"k", [("KEYS", b"header")]) == {"KEYS": "k"}, "the key wins"
