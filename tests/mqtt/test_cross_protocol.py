"""MQTT <-> the core: what an MQTT client publishes is a broker message any door can read
(Broker.get), and what any door puts reaches MQTT subscribers (Broker.put), as
docs/mqtt.md's mapping says. The broker and the door run in this process."""

from __future__ import annotations

import zlib
from functools import partial

import pytest
import trio
from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.core.message import Message
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.mqtt import mapping, serve
from ferrymq.gateways.server import DoorContext
from ferrymq.protocols.mqtt.constants import Prop
from rawclient import RawClient

from waiting import wait_until_async


@pytest.fixture
async def door(tmp_path):
    config = BrokerConfig(data_dir=str(tmp_path / "data"), segment_size=8 << 20)
    async with Broker.open(config) as broker, \
            trio.open_nursery() as nursery:
        ctx = DoorContext(broker, "127.0.0.1", 0, {"ws_port": 0, "sys_interval": 0.0},
                          ServerConfig())
        port = await nursery.start(serve, ctx)
        yield broker, port
        nursery.cancel_scope.cancel()


def run(fn, *args):
    return trio.to_thread.run_sync(partial(fn, *args))


def connect(port, cid, version=5):
    c = RawClient(port, version)
    assert c.connect(cid).reason == 0
    return c


async def test_an_mqtt_publish_is_a_broker_message(door) -> None:
    broker, port = door

    def publish():
        c = connect(port, "dev-7")
        c.publish("sensors/kitchen/temp", b"21.5", 1, properties={
            Prop.USER_PROPERTY: (("unit", "C"), ("KEYS", "k-1")),
            Prop.CONTENT_TYPE: "text/plain", Prop.CORRELATION_DATA: b"\x01\x02"})
        c.close()

    await run(publish)
    t = broker.topic("sensors")
    q = zlib.crc32(b"sensors/kitchen/temp") % t.queues
    (m,) = list(broker.get("g", "sensors", q, 0).messages())
    assert m.body == b"21.5"
    assert dict(m.properties) == {
        "MQTT_TOPIC": "sensors/kitchen/temp", "MQTT_QOS": "1", "MQTT_PUBLISHER": "dev-7",
        "MQTT_CONTENT_TYPE": "text/plain", "MQTT_CORRELATION_DATA": "AQI=",
        "unit": "C", "KEYS": "k-1", "FERRY_DOOR": "mqtt"}
    assert [x.body for x in broker.messages_by_key("sensors", "k-1")] == [b"21.5"]


async def test_a_core_message_reaches_subscribers_of_its_topic_and_its_mqtt_topic(door) -> None:
    broker, port = door
    filters = ["sensors", "sensors/#", "#", "sensors/+", "sensors/kitchen/temp", "+/kitchen/+"]
    subs = await run(lambda: [connect(port, f"s{i}") for i in range(len(filters))])
    for s, f in zip(subs, filters, strict=True):
        await run(lambda s=s, f=f: s.subscribe(f, qos=1))
    await broker.put(Message("sensors", b"plain", {"origin": "kafka"}))
    await broker.put(Message("sensors", b"named", {mapping.MQTT_TOPIC: "sensors/kitchen/temp"}))

    def received(s):
        got = []
        try:
            while True:
                got.append(s.messages(1, timeout=0.5)[0])
        except AssertionError:
            return got

    results = [await run(received, s) for s in subs]
    summary = {f: [m.payload for m in r] for f, r in zip(filters, results, strict=True)}
    assert summary == {
        "sensors": [b"plain"], "sensors/#": [b"plain", b"named"], "#": [b"plain", b"named"],
        "sensors/+": [], "sensors/kitchen/temp": [b"named"], "+/kitchen/+": [b"named"]}
    plain = results[0][0]
    assert plain.qos == 1  # messages from other doors are QoS 1 (stored durably)
    assert plain.properties[Prop.USER_PROPERTY] == (("origin", "kafka"),)


async def test_a_native_batch_reaches_mqtt_message_by_message(door) -> None:
    broker, port = door
    s = await run(connect, port, "s", 4)
    await run(lambda: s.subscribe("batch/#"))
    await broker.put([Message("batch", b"m%d" % i, {mapping.MQTT_TOPIC: f"batch/{i}"})
                      for i in range(5)])
    got = await run(s.messages, 5)
    assert [(m.topic, m.payload) for m in got] == [(f"batch/{i}", b"m%d" % i) for i in range(5)]


async def test_mqtt_topic_characters_outside_the_topic_rules_are_escaped(door) -> None:
    broker, port = door
    s = await run(connect, port, "s")
    await run(lambda: s.subscribe("my room/#", qos=1))
    p = await run(connect, port, "p")
    await run(lambda: p.publish("my room/lamp", b"on", 1))
    (m,) = await run(s.messages, 1)
    assert m.topic == "my room/lamp"
    assert [x.properties["MQTT_TOPIC"] for q in range(broker.topic("my|20room").queues)
            for x in broker.get(None, "my|20room", q, 0).messages()] == ["my room/lamp"]


async def test_a_persistent_session_is_a_consumer_group_with_offsets_in_the_core(door) -> None:
    broker, port = door

    def session():
        c = RawClient(port, 4)
        c.connect("meter-1", clean=False)
        c.subscribe("meters/#", qos=1)
        return c

    c = await run(session)
    p = await run(connect, port, "p")
    for i in range(3):
        await run(lambda i=i: p.publish("meters/a", b"%d" % i, 1))
    assert len(await run(c.messages, 3)) == 3
    await run(c.close)
    q = zlib.crc32(b"meters/a") % broker.topic("meters").queues
    await wait_until_async(lambda: broker.committed_offset("mqtt-session-meter-1", "meters", q) == 3,
                           what="the session's acknowledgements committed")
    await broker.put(Message("meters", b"while away", {mapping.MQTT_TOPIC: "meters/a"},
                             queue_id=q))
    (stats,) = broker.group_stats("mqtt-session-meter-1", "meters")
    assert sum(lag.max_offset - lag.committed for lag in stats.queues
               if lag.committed is not None) == 1
    c = await run(lambda: RawClient(port, 4))
    assert (await run(lambda: c.connect("meter-1", clean=False))).session_present
    assert [m.payload for m in await run(c.messages, 1)] == [b"while away"]


async def test_mqtt_counts_messages_in_and_out_and_carries_the_trace_context(door) -> None:
    """Per-door counters (docs/observability.md): a PUBLISH in, one PUBLISH out per
    subscriber; the MQTT 5 user property traceparent is the message's property."""
    broker, port = door
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    subs = await run(lambda: [connect(port, f"m{i}") for i in range(2)])
    for s in subs:
        await run(lambda s=s: s.subscribe("meters/#", qos=1))

    def publish():
        c = connect(port, "meter-1")
        c.publish("meters/1", b"7", 1, properties={Prop.USER_PROPERTY: (("traceparent", tp),)})
        c.close()

    await run(publish)
    got = [await run(s.messages, 1) for s in subs]
    assert all(g[0].properties[Prop.USER_PROPERTY] == (("traceparent", tp),) for g in got)
    text = broker.metrics.render()
    assert 'ferrymq_door_messages_in_total{protocol="mqtt",topic="meters"} 1\n' in text
    assert 'ferrymq_door_messages_out_total{protocol="mqtt",topic="meters"} 2\n' in text
