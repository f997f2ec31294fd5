"""Delivery time from every door, with real clients against one broker process (docs/timers.md,
"Asking for a delivery time"): a Kafka header (confluent-kafka), an MQTT 5 user property
(paho-mqtt), an HTTP header (httpx) and the native DELAY property (the FerryMQ client). Each
message is not consumable before its time, and is after it, through another door too."""

from __future__ import annotations

import queue
import time
import uuid

import httpx
import paho.mqtt.client as paho
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from ferrymq.clients import Message, blocking

DOORS = ("namesrv", "remoting", "kafka", "mqtt", "http")
DELAY_MS = 1500


@pytest.fixture(scope="module")
def broker(start_module_broker):
    return start_module_broker(*DOORS, name="delivery")


def fresh(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def native_read(b, topic: str, wait_s: float) -> list:
    """Every message of ``topic`` that arrives within ``wait_s`` seconds, from the start."""
    got: list = []
    with blocking.PullConsumer(b.address("namesrv"), fresh("cg"), consume_from="FIRST") as c:
        deadline = time.monotonic() + wait_s
        qs: list = []
        while not qs and time.monotonic() < deadline:
            try:
                qs = c.queues(topic)
            except Exception:
                time.sleep(0.1)
        c.assign(qs)
        for q in qs:
            c.seek_to_beginning(q)
        while time.monotonic() < deadline:
            got += c.poll(max_messages=32, timeout=0.2)
    return got


def test_kafka_header_delays_a_record(broker) -> None:
    topic = fresh("kdelay")
    p = Producer({"bootstrap.servers": broker.address("kafka")})
    sent = time.monotonic()
    p.produce(topic, value=b"kafka-later", headers=[("ferrymq-delay-ms", str(DELAY_MS).encode()),
                                                    ("trace", b"t-1")])
    assert p.flush(15) == 0
    c = Consumer({"bootstrap.servers": broker.address("kafka"), "group.id": fresh("kg"),
                  "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, q, 0) for q in range(4)])
        got = []
        while not got and time.monotonic() - sent < 10:
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                got.append((time.monotonic() - sent, m))
    finally:
        c.close()
    waited, m = got[0]
    assert waited >= DELAY_MS / 1000 - 0.05, "not consumable before its time"
    assert m.value() == b"kafka-later"
    headers = dict(m.headers())
    assert headers["trace"] == b"t-1" and "TIMER_OUT_MS" in headers
    (n,) = native_read(broker, topic, 0.5)  # and through the native door
    assert n.body == b"kafka-later"


def test_mqtt5_user_property_delays_a_publish(broker) -> None:
    topic = fresh("mdelay")
    received: queue.Queue = queue.Queue()
    sub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=fresh("sub"),
                      protocol=paho.MQTTv5)
    sub.on_message = lambda c, u, msg: received.put((time.monotonic(), msg))
    subscribed = queue.Queue()
    sub.on_subscribe = lambda *a: subscribed.put(1)
    sub.connect("127.0.0.1", broker.port("mqtt"))
    sub.loop_start()
    pub = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=fresh("pub"),
                      protocol=paho.MQTTv5)
    acks: queue.Queue = queue.Queue()
    pub.on_publish = lambda c, u, mid, reason, props: acks.put((mid, reason))
    pub.connect("127.0.0.1", broker.port("mqtt"))
    pub.loop_start()
    try:
        sub.subscribe(f"{topic}/#", qos=1)
        subscribed.get(timeout=10)
        props = paho.Properties(paho.PacketTypes.PUBLISH)
        props.UserProperty = [("ferrymq-delay-ms", str(DELAY_MS)), ("room", "kitchen")]
        sent = time.monotonic()
        info = pub.publish(f"{topic}/lamp", b"mqtt-later", qos=1, properties=props)
        info.wait_for_publish(10)
        _mid, reason = acks.get(timeout=10)
        assert reason.value == 0
        at, msg = received.get(timeout=10)
        assert at - sent >= DELAY_MS / 1000 - 0.05, "not delivered before its time"
        assert msg.payload == b"mqtt-later" and msg.topic == f"{topic}/lamp"
        users = dict(msg.properties.UserProperty)
        assert users["room"] == "kitchen" and "ferrymq-delay-ms" not in users
        assert not {"TIMER_OUT_MS", "TIMER_FROM"} & set(users), "bookkeeping stays inside"
        # a bad delivery time is refused with a reason code, nothing stored
        bad = paho.Properties(paho.PacketTypes.PUBLISH)
        bad.UserProperty = [("ferrymq-delay-ms", "-3")]
        pub.publish(f"{topic}/lamp", b"never", qos=1, properties=bad).wait_for_publish(10)
        _mid, reason = acks.get(timeout=10)
        assert reason.value == 0x83
        with pytest.raises(queue.Empty):
            received.get(timeout=0.5)
    finally:
        for c in (sub, pub):
            c.loop_stop()
            c.disconnect()


def test_http_header_delays_a_message(broker) -> None:
    topic = fresh("hdelay")
    with httpx.Client(base_url=f"http://{broker.address('http')}", timeout=30) as h:
        sent = time.monotonic()
        r = h.post(f"/v1/topics/{topic}/messages", content=b"http-later",
                   headers={"content-type": "text/plain", "FerryMQ-Delay-Ms": str(DELAY_MS)})
        assert r.status_code == 201, r.text
        group = fresh("hg")
        early = h.get(f"/v1/topics/{topic}/messages", params={"group": group, "max": 4})
        assert early.status_code == 200 and early.json()["messages"] == []
        got = []
        while not got and time.monotonic() - sent < 10:
            got = h.get(f"/v1/topics/{topic}/messages",
                        params={"group": group, "max": 4, "wait": 2}).json()["messages"]
        assert time.monotonic() - sent >= DELAY_MS / 1000 - 0.05
        assert len(got) == 1
        bad = h.post(f"/v1/topics/{topic}/messages", content=b"x",
                     headers={"content-type": "text/plain", "FerryMQ-Delay-Ms": "-1"})
        assert bad.status_code == 400


def test_native_delay_level_and_deliver_time(broker) -> None:
    topic = fresh("ndelay")
    with blocking.Producer(broker.address("namesrv"), group=fresh("pg")) as p:
        sent = time.monotonic()
        p.send(Message(topic, b"level-1", delay_level=1))
        p.send(Message(topic, b"at", deliver_at_ms=int(time.time() * 1000) + DELAY_MS))
    assert native_read(broker, topic, 0.6) == []
    got = native_read(broker, topic, 2.5)
    assert sorted(m.body for m in got) == [b"at", b"level-1"]
    assert time.monotonic() - sent >= DELAY_MS / 1000
