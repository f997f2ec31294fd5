"""MQTT topic names up to the specification's 65,535 bytes (1.5.4, 4.7.3): stored, and
delivered unchanged through every door, by a real broker process.

The whole MQTT topic travels in the MQTT_TOPIC property; past 32,767 bytes the record
takes the long property form (docs/storage.md). A RocketMQ client cannot read that form:
it gets the record re-encoded with the topic left out and named in
FERRYMQ_OMITTED_PROPERTIES, while FerryMQ's own client gets it whole."""

from __future__ import annotations

import struct
import zlib

import httpx
import pytest
import trio
from ferrymq.clients.remoting import RemotingClient
from ferrymq.protocols import record as rec
from ferrymq.protocols.mqtt.packets import Puback, Publish
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import headers as H
from ferrymq.protocols.remoting.messages import decode_messages
from rawclient import RawClient

LONG = "dev1/" + "t" * (65_535 - len("dev1/"))  # the longest topic name MQTT allows
HALF = "dev1/" + "h" * 40_000  # past the 32,767 bytes a RocketMQ property area holds
DOORS = ("namesrv", "remoting", "kafka", "mqtt", "http")


@pytest.fixture
def broker(mqtt_broker):
    return mqtt_broker(doors=DOORS)


def queue_of(topic: str) -> int:
    return zlib.crc32(topic.encode()) % 4  # the MQTT door's queue choice, 4 queues


def publish(port: int, topic: str, payload: bytes, version: int = 4) -> None:
    c = RawClient(port, version)
    try:
        assert c.connect("pub-" + payload.decode()).reason == 0
        ack = c.publish(topic, payload, 1)
        assert isinstance(ack, Puback) and ack.packet_id == 1
    finally:
        c.close()


def test_a_311_qos1_publisher_of_a_65535_byte_topic_gets_its_puback(broker) -> None:
    """It was disconnected (the store refused properties past 32,767 bytes and 3.1.1 has
    no reason code) and reconnected in a loop."""
    c = RawClient(broker.port("mqtt"), 4)
    try:
        assert c.connect("dev1").reason == 0
        for pid in (1, 2):
            ack = c.publish(LONG, b"21.5", 1, pid=pid)
            assert isinstance(ack, Puback) and ack.packet_id == pid
    finally:
        c.close()


@pytest.mark.parametrize("version", [4, 5])
def test_mqtt_subscribers_get_the_topic_unchanged(broker, version) -> None:
    port = broker.port("mqtt")
    sub = RawClient(port, version)
    sub.connect(f"sub{version}")
    sub.subscribe("dev1/#", qos=1)
    pub = RawClient(port, version)
    try:
        pub.connect(f"pub{version}")
        # Pipelined: the door stores a run of publishes to one topic as a batch record.
        for pid in range(1, 6):
            pub.send(Publish(LONG if pid % 2 else HALF, b"m%d" % pid, 1, False, False, pid, {}))
        acks = [pub.recv(5) for _ in range(5)]
        assert sorted(a.packet_id for a in acks) == [1, 2, 3, 4, 5]  # type: ignore[union-attr]
        got = sub.messages(5)
    finally:
        pub.close()
        sub.close()
    assert sorted((p.payload, p.topic) for p in got) == sorted(
        (b"m%d" % i, LONG if i % 2 else HALF) for i in range(1, 6))


def test_a_kafka_consumer_gets_the_topic_in_a_header(broker) -> None:
    from kafka import KafkaConsumer, TopicPartition

    publish(broker.port("mqtt"), LONG, b"k")
    c = KafkaConsumer(bootstrap_servers=broker.address("kafka"), auto_offset_reset="earliest",
                      enable_auto_commit=False, consumer_timeout_ms=10_000,
                      fetch_max_bytes=1 << 20, max_partition_fetch_bytes=1 << 20)
    try:
        c.assign([TopicPartition("dev1", queue_of(LONG))])
        (m,) = [m for _, m in zip(range(1), c, strict=False)]
    finally:
        c.close()
    assert m.value == b"k"
    assert dict(m.headers)["MQTT_TOPIC"] == LONG.encode()


async def test_the_native_client_gets_the_record_whole(broker) -> None:
    from ferrymq.clients import consumer
    from ferrymq.clients.instance import ClientInstance
    from ferrymq.protocols.remoting import bodies as B

    await trio.to_thread.run_sync(publish, broker.port("mqtt"), LONG, b"native")
    async with ClientInstance(broker.address("namesrv")) as inst:
        with trio.fail_after(20):  # the broker registers the new topic with the NameServer
            while (route := await inst.route("dev1", refresh=True)) is None:
                await trio.sleep(0.1)
        mq = B.MessageQueue("dev1", route.brokerDatas[0].brokerName, queue_of(LONG))
        code, _nxt, msgs = await consumer.pull(inst, "g-native", mq, 0)
    assert code == ResponseCode.SUCCESS
    (m,) = msgs
    assert m.body == b"native" and m.properties["MQTT_TOPIC"] == LONG


async def test_a_rocketmq_pull_gets_a_record_it_can_read(broker) -> None:
    """A pull without FerryMQ's ext field (what every RocketMQ client sends): each record is
    a RocketMQ 4.x record (16-bit properties length) whose sizes add up; the topic that
    does not fit is left out and named, the rest of the message is intact."""
    port = broker.port("mqtt")
    q = queue_of(LONG)
    for i, topic in enumerate(("dev1/short", LONG, "dev1/short")):
        if queue_of(topic) != q:
            topic = next(t for t in (f"dev1/s{n}" for n in range(100)) if queue_of(t) == q)
        await trio.to_thread.run_sync(publish, port, topic, b"r%d" % i)
    async with RemotingClient() as rc:
        p = await rc.invoke(broker.address("remoting"), request(
            RequestCode.PULL_MESSAGE, 0, H.PullMessageRequestHeader(
                "g-rocketmq", "dev1", q, 0, 32, 0, 0, 0, None, 0, "TAG").to_ext()))
    assert p.code == ResponseCode.SUCCESS
    body, pos, records = p.body, 0, []
    while pos < len(body):
        total = struct.unpack_from(">i", body, pos)[0]
        sys_flag = struct.unpack_from(">i", body, pos + rec.POS_SYS_FLAG)[0]
        assert not sys_flag & rec.FORMAT_MASK, "no FerryMQ format bit reaches a RocketMQ client"
        parsed = rec.RECORD.parse(body[pos:pos + total])  # the 4.x layout, byte for byte
        assert parsed.total_size == total
        records.append(parsed)
        pos += total
    assert [r.body for r in records] == [b"r0", b"r1", b"r2"]
    props = rec.decode_properties(records[1].properties)
    assert "MQTT_TOPIC" not in props and props[rec.OMITTED_PROPERTIES] == "MQTT_TOPIC"
    assert props["MQTT_QOS"] == "1" and props["MQTT_PUBLISHER"] == "pub-r1"
    assert rec.decode_properties(records[0].properties)["MQTT_TOPIC"].startswith("dev1/")
    assert [m.body for m in decode_messages(body)] == [b"r0", b"r1", b"r2"]


async def test_an_http_reader_gets_the_topic_unchanged(broker) -> None:
    await trio.to_thread.run_sync(publish, broker.port("mqtt"), LONG, b"http")
    async with httpx.AsyncClient(base_url=f"http://{broker.address('http')}", timeout=30) as h:
        r = await h.get(f"/v1/topics/dev1/queues/{queue_of(LONG)}/messages",
                        params={"offset": 0, "max": 10})
    assert r.status_code == 200, r.text
    (m,) = r.json()["messages"]
    assert m["properties"]["MQTT_TOPIC"] == LONG
