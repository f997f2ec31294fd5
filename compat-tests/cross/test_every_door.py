"""One store, many doors: a message produced through any door is consumed through any other.

One broker process with every door; real clients on each side: the FerryMQ
client (native), confluent-kafka (Kafka), paho-mqtt (MQTT) and httpx (HTTP).
The mappings are those of docs/kafka.md, docs/mqtt.md and docs/http.md.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid

import httpx
import paho.mqtt.client as paho
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from ferrymq.clients import Message, blocking

DOORS = ("namesrv", "remoting", "kafka", "mqtt", "http")


@pytest.fixture(scope="module")
def broker(start_module_broker):
    """One broker with every door, started once for the whole module."""
    return start_module_broker(*DOORS)


def fresh(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


# ------------------------------------------------------------------ per-door helpers


def native_send(b, topic: str, body: bytes, **kw) -> None:
    with blocking.Producer(b.address("namesrv"), group=fresh("pg")) as p:
        p.send(Message(topic, body, **kw))


def native_read(b, topic: str, n: int, timeout: float = 15.0) -> list:
    """Every message of every queue of ``topic`` until ``n`` arrived."""
    got: list = []
    with blocking.PullConsumer(b.address("namesrv"), fresh("cg"), consume_from="FIRST") as c:
        deadline = time.monotonic() + timeout
        qs = []
        while not qs and time.monotonic() < deadline:
            try:
                qs = c.queues(topic)
            except Exception:
                time.sleep(0.2)
        c.assign(qs)
        for q in qs:
            c.seek_to_beginning(q)
        while len(got) < n and time.monotonic() < deadline:
            got += c.poll(max_messages=32, timeout=1.0)
    return got


def kafka_send(b, topic: str, value: bytes, key: bytes | None = None, headers=None) -> None:
    p = Producer({"bootstrap.servers": b.address("kafka")})
    p.produce(topic, value=value, key=key, headers=headers or [])
    assert p.flush(15) == 0


def kafka_read(b, topic: str, n: int, timeout: float = 20.0) -> list:
    c = Consumer({"bootstrap.servers": b.address("kafka"), "group.id": fresh("kg"),
                  "enable.auto.commit": False})
    try:
        deadline = time.monotonic() + timeout
        parts = []
        while not parts and time.monotonic() < deadline:
            md = c.list_topics(topic, timeout=5)
            t = md.topics.get(topic)
            if t is not None and t.error is None and t.partitions:
                parts = list(t.partitions)
            else:
                time.sleep(0.2)
        c.assign([TopicPartition(topic, p, 0) for p in parts])
        got = []
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m)
        return got
    finally:
        c.close()


class MqttSubscriber:
    """A paho client subscribed to ``filters`` before anything is published."""

    def __init__(self, b, *filters: str, protocol=paho.MQTTv311) -> None:
        self.messages: queue.Queue = queue.Queue()
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=fresh("sub"),
                                  protocol=protocol)
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", b.port("mqtt"))
        self.client.loop_start()
        self.client.subscribe([(f, 1) for f in filters])
        assert self.subscribed.wait(10), "no SUBACK"

    def take(self, n: int, timeout: float = 15.0) -> list:
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                out.append(self.messages.get(timeout=left))
            except queue.Empty:
                break
        return out

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def mqtt_publish(b, topic: str, payload: bytes, protocol=paho.MQTTv311, properties=None) -> None:
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=fresh("pub"), protocol=protocol)
    c.connect("127.0.0.1", b.port("mqtt"))
    c.loop_start()
    info = c.publish(topic, payload, qos=1, properties=properties)
    info.wait_for_publish(10)
    assert info.is_published()
    c.loop_stop()
    c.disconnect()


def http(b) -> httpx.Client:
    return httpx.Client(base_url=f"http://{b.address('http')}", timeout=30)


def http_pop(b, topic: str, n: int, timeout: float = 15.0) -> list:
    group = fresh("hg")
    got: list = []
    deadline = time.monotonic() + timeout
    with http(b) as h:
        while len(got) < n and time.monotonic() < deadline:
            r = h.get(f"/v1/topics/{topic}/messages", params={"group": group, "max": 32, "wait": 2})
            assert r.status_code == 200, r.text
            msgs = r.json()["messages"]
            got += msgs
            if msgs:
                r = h.post("/v1/acks", json={"receipts": [m["receipt"] for m in msgs]})
                assert r.status_code == 204, r.text
    return got


# -------------------------------------------------------------------------- tests


def test_native_to_kafka_keeps_key_properties_and_timestamp(broker) -> None:
    topic = fresh("n2k")
    before = int(time.time() * 1000)
    native_send(broker, topic, b"from native", keys="order-7", tags="paid",
                properties={"color": "red"})
    (m,) = kafka_read(broker, topic, 1)
    assert m.value() == b"from native"
    assert m.key() == b"order-7"
    headers = dict(m.headers())
    assert headers["color"] == b"red" and headers["TAGS"] == b"paid"
    _ts_type, ts = m.timestamp()
    assert before - 1000 <= ts <= int(time.time() * 1000) + 1000


def test_kafka_to_native_maps_key_and_headers_back(broker) -> None:
    topic = fresh("k2n")
    kafka_send(broker, topic, b"from kafka", key=b"k-1", headers=[("trace", b"abc")])
    (m,) = native_read(broker, topic, 1)
    assert m.body == b"from kafka"
    assert m.keys == ["k-1"]
    assert m.properties["trace"] == "abc"


def test_mqtt_to_kafka_carries_the_mqtt_topic_as_a_header(broker) -> None:
    base = fresh("m2k")
    mqtt_publish(broker, f"{base}/room1/temp", b"21.5")
    (m,) = kafka_read(broker, base, 1)
    assert m.value() == b"21.5"
    assert dict(m.headers())["MQTT_TOPIC"] == f"{base}/room1/temp".encode()


def test_kafka_to_mqtt_reaches_topic_wildcard_and_full_topic_subscribers(broker) -> None:
    base = fresh("k2m")
    plain = MqttSubscriber(broker, base)
    wild = MqttSubscriber(broker, f"{base}/#")
    exact = MqttSubscriber(broker, f"{base}/a/b")
    try:
        kafka_send(broker, base, b"no mqtt topic")
        kafka_send(broker, base, b"named", headers=[("MQTT_TOPIC", f"{base}/a/b".encode())])
        assert sorted(m.payload for m in plain.take(1)) == [b"no mqtt topic"]
        assert sorted(m.payload for m in wild.take(2)) == [b"named", b"no mqtt topic"]
        (m,) = exact.take(1)
        assert (m.topic, m.payload) == (f"{base}/a/b", b"named")
    finally:
        for s in (plain, wild, exact):
            s.close()


def test_mqtt_to_native(broker) -> None:
    base = fresh("m2n")
    props = paho.Properties(paho.PacketTypes.PUBLISH)
    props.UserProperty = [("site", "north")]
    mqtt_publish(broker, f"{base}/dev/1", b"on", protocol=paho.MQTTv5, properties=props)
    (m,) = native_read(broker, base, 1)
    assert m.body == b"on"
    assert m.properties["MQTT_TOPIC"] == f"{base}/dev/1"
    assert m.properties["site"] == "north", "MQTT 5 user properties are message properties"


def test_native_to_mqtt(broker) -> None:
    base = fresh("n2m")
    wild = MqttSubscriber(broker, f"{base}/#")
    exact = MqttSubscriber(broker, f"{base}/lamp")
    try:
        native_send(broker, base, b"switch", properties={"MQTT_TOPIC": f"{base}/lamp"})
        (w,) = wild.take(1)
        (e,) = exact.take(1)
        assert (w.topic, w.payload) == (f"{base}/lamp", b"switch")
        assert (e.topic, e.payload) == (f"{base}/lamp", b"switch")
    finally:
        wild.close()
        exact.close()


def test_http_to_kafka_and_mqtt(broker) -> None:
    topic = fresh("h2x")
    sub = MqttSubscriber(broker, topic, f"{topic}/#")
    try:
        with http(broker) as h:
            r = h.post(f"/v1/topics/{topic}/messages",
                       json={"body": "from http", "key": "h-1", "properties": {"p": "1"}})
            assert r.status_code == 201, r.text
        (k,) = kafka_read(broker, topic, 1)
        assert (k.value(), k.key(), dict(k.headers())["p"]) == (b"from http", b"h-1", b"1")
        got = sub.take(1)
        assert [m.payload for m in got] == [b"from http"], "one copy for overlapping filters"
    finally:
        sub.close()


def test_native_and_kafka_to_http(broker) -> None:
    topic = fresh("x2h")
    native_send(broker, topic, b"native body", keys="n-1", tags="T1")
    kafka_send(broker, topic, b"kafka body", key=b"k-1", headers=[("h", b"v")])
    got = {m["body"]: m for m in http_pop(broker, topic, 2)}
    assert set(got) == {"native body", "kafka body"}
    assert got["native body"]["keys"] == ["n-1"] and got["native body"]["tag"] == "T1"
    assert got["kafka body"]["keys"] == ["k-1"]
    assert got["kafka body"]["properties"]["h"] == "v"


def test_offsets_committed_through_kafka_are_the_native_groups_offsets(broker) -> None:
    topic = fresh("off")
    group = fresh("shared")
    for i in range(3):
        kafka_send(broker, topic, b"%d" % i)
    c = Consumer({"bootstrap.servers": broker.address("kafka"), "group.id": group,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic])
        seen = []
        deadline = time.monotonic() + 20
        while len(seen) < 3 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                seen.append(m)
        assert len(seen) == 3
        c.commit(asynchronous=False)
    finally:
        c.close()
    with blocking.Admin(broker.address("namesrv")) as admin:
        lag = admin.group_lag(group, topic)
    assert sum(max(row.consumer_offset, 0) for row in lag) == 3, \
        f"the native admin sees the offsets Kafka committed: {lag}"
    assert all(row.lag == 0 for row in lag)


def test_metrics_cover_every_door(broker) -> None:
    """GET /metrics reports connections and request latencies for all four doors."""
    topic = fresh("met")
    native_send(broker, topic, b"1")
    kafka_send(broker, topic, b"2")
    mqtt_publish(broker, f"{topic}/x", b"3")
    with http(broker) as h:
        assert h.post(f"/v1/topics/{topic}/messages", json={"body": "4"}).status_code == 201
        text = h.get("/metrics").text
    for protocol, request in (("rocketmq", "send_message_v2"), ("kafka", "produce"),
                              ("mqtt", "publish"), ("http", "produce")):
        assert f'ferrymq_connections_accepted_total{{protocol="{protocol}"}}' in text, protocol
        assert (f'ferrymq_request_duration_seconds_count{{protocol="{protocol}",'
                f'request="{request}"}}') in text, (protocol, request)
    assert f'ferrymq_messages_in_total{{topic="{topic}"}} 4' in text, \
        "one message in through each door, counted once in the core"


def test_mqtt_to_kafka_with_aiokafka(broker) -> None:
    """Issue 5 names aiokafka for MQTT -> Kafka: the same mapping through it."""
    import asyncio

    from aiokafka import AIOKafkaConsumer

    base = fresh("m2a")
    mqtt_publish(broker, f"{base}/line/7", b"on")

    async def read() -> list:
        c = AIOKafkaConsumer(base, bootstrap_servers=broker.address("kafka"),
                             auto_offset_reset="earliest", group_id=fresh("ag"))
        await c.start()
        try:
            got: list = []
            deadline = time.monotonic() + 20
            while not got and time.monotonic() < deadline:
                for records in (await c.getmany(timeout_ms=500)).values():
                    got += records
            return got
        finally:
            await c.stop()

    (m,) = asyncio.run(read())
    assert m.value == b"on"
    assert dict(m.headers)["MQTT_TOPIC"] == f"{base}/line/7".encode()
