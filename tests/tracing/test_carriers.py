"""The W3C trace context on each door's own carrier, stored once as the message
properties ``traceparent``/``tracestate`` (core/tracing.py): MQTT 5 user properties
(kept by name even when the others are stored as one JSON list), and RocketMQ's trace
topic, which RocketMQ clients with enableMsgTrace write to whatever auto-create says."""

from __future__ import annotations

from pathlib import Path

from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.core.message import Message
from ferrymq.core.metadata import PERM_READ_WRITE
from ferrymq.core.tracing import TRACE_TOPIC, parse_traceparent
from ferrymq.gateways.mqtt import mapping
from ferrymq.protocols.mqtt.constants import Prop

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_mqtt5_user_property_traceparent_is_the_message_property() -> None:
    m = mapping.to_message("s/1", 0, b"x", 1, False, "dev", {
        Prop.USER_PROPERTY: (("traceparent", TP), ("unit", "C"))})
    assert m.properties["traceparent"] == TP
    out, _ = mapping.message_properties({**m.properties, "FERRY_DOOR": "mqtt"}, 0)
    assert ("traceparent", TP) in out[Prop.USER_PROPERTY], "handed back to MQTT 5 subscribers"


def test_mqtt5_traceparent_survives_user_properties_stored_as_json() -> None:
    users = (("a", "1"), ("a", "2"), ("traceparent", TP), ("tracestate", "k=v"))
    m = mapping.to_message("s/1", 0, b"x", 1, False, "dev", {Prop.USER_PROPERTY: users})
    assert mapping.MQTT_USER_PROPERTIES in m.properties  # duplicate names: one JSON list
    assert m.properties["traceparent"] == TP and m.properties["tracestate"] == "k=v"
    assert mapping.user_properties(m.properties) == users, "delivered once, in order"


def test_parse_traceparent_follows_w3c() -> None:
    ctx = parse_traceparent(TP, "a=1")
    assert ctx is not None and ctx.sampled and ctx.traceparent() == TP and ctx.state == "a=1"
    assert parse_traceparent("01-" + TP[3:] + "-future") is not None, "a later version's fields"
    for bad in (None, "", "x", TP.upper(), TP + "-x", "ff" + TP[2:],
                TP.replace("4bf92f3577b34da6a3ce929d0e0e4736", "0" * 32),
                TP.replace("00f067aa0ba902b7", "0" * 16)):
        assert parse_traceparent(bad) is None, bad


async def test_rocketmq_trace_topic_takes_writes_without_auto_create(tmp_path: Path) -> None:
    cfg = BrokerConfig(data_dir=str(tmp_path / "d"), segment_size=16 << 20,
                       cq_entries_per_file=1000, index_slots=1000, index_entries=4000,
                       auto_create_topics=False)
    async with Broker.open(cfg) as broker:
        assert broker.find_topic(TRACE_TOPIC) is None, "no topic until a client traces"
        await broker.put(Message(TRACE_TOPIC, b"trace data", {"KEYS": "k"}))
        t = broker.topic(TRACE_TOPIC)
        assert (t.queues, t.perm) == (1, PERM_READ_WRITE)
        assert [m.body for m in broker.get(None, TRACE_TOPIC, 0, 0).messages()] == [b"trace data"]
