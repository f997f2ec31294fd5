"""The per-connection state machine: rules that span packets, checked with bytes alone."""

from __future__ import annotations

import pytest
from ferrymq.protocols.mqtt import codec
from ferrymq.protocols.mqtt.codec import MqttError
from ferrymq.protocols.mqtt.connection import ServerConnection, ServerLimits, State
from ferrymq.protocols.mqtt.constants import Prop, Reason
from ferrymq.protocols.mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Publish,
    Suback,
)
from ferrymq.protocols.sentinels import NEED_DATA


def connected(version=5, limits=None, props=None) -> ServerConnection:
    c = ServerConnection(limits or ServerLimits())
    c.receive_data(codec.encode(Connect(version, "c", properties=props or {}), version))
    assert isinstance(c.next_event(), Connect)
    c.send(Connack(False, 0))
    assert c.state is State.CONNECTED
    return c


def feed(c: ServerConnection, *packets, version=5):
    for p in packets:
        c.receive_data(codec.encode(p, version))
    out = []
    while (ev := c.next_event()) is not NEED_DATA:
        out.append(ev)
    return out


def test_bytes_may_arrive_one_at_a_time() -> None:
    c = connected()
    data = codec.encode(Publish("a/b", b"x" * 300, 1, packet_id=5), 5)
    events = []
    for i in range(len(data)):
        c.receive_data(data[i:i + 1])
        ev = c.next_event()
        if ev is not NEED_DATA:
            events.append(ev)
    assert events == [Publish("a/b", b"x" * 300, 1, packet_id=5)]


def test_the_first_packet_must_be_connect() -> None:
    c = ServerConnection()
    c.receive_data(codec.encode(Pingreq(), 4))
    with pytest.raises(MqttError) as err:
        c.next_event()
    assert err.value.reason == Reason.PROTOCOL_ERROR
    assert c.state is State.CLOSED


def test_a_second_connect_is_a_protocol_error() -> None:
    c = connected()
    with pytest.raises(MqttError) as err:
        feed(c, Connect(5, "again"))
    assert err.value.reason == Reason.PROTOCOL_ERROR
    assert c.error_bytes(err.value) == b"\xe0\x02\x82\x00"


def test_a_packet_announcing_256_mib_is_refused_from_its_header() -> None:
    c = connected(limits=ServerLimits(max_packet_size=1 << 20))
    c.receive_data(b"\x30" + codec.encode_varint((256 << 20) - 1) + b"\x00\x01a")
    with pytest.raises(MqttError) as err:
        c.next_event()
    assert err.value.reason == Reason.PACKET_TOO_LARGE
    assert len(c._buf) + len(c._partial) < 100  # the announced body was never awaited


def test_a_packet_trickling_in_byte_by_byte_costs_linear_time() -> None:
    c = connected(limits=ServerLimits(max_packet_size=2 << 20))
    data = codec.encode(Publish("t", b"x" * (1 << 20)), 5)
    for i in range(0, len(data), 7):
        c.receive_data(data[i:i + 7])
        assert c.next_event() is NEED_DATA or i + 7 >= len(data)
    assert len(c._partial) <= len(data)


def test_inbound_topic_aliases_are_resolved() -> None:
    c = connected(limits=ServerLimits(topic_alias_maximum=2))
    evs = feed(c, Publish("a/long/topic", b"1", properties={Prop.TOPIC_ALIAS: 2}),
               Publish("", b"2", properties={Prop.TOPIC_ALIAS: 2}))
    assert [(e.topic, e.payload) for e in evs] == [("a/long/topic", b"1"), ("a/long/topic", b"2")]
    assert Prop.TOPIC_ALIAS not in evs[1].properties


@pytest.mark.parametrize("publish, reason", [
    (Publish("t", b"", properties={Prop.TOPIC_ALIAS: 3}), Reason.TOPIC_ALIAS_INVALID),
    (Publish("t", b"", properties={Prop.TOPIC_ALIAS: 0}), Reason.TOPIC_ALIAS_INVALID),
    (Publish("", b"", properties={Prop.TOPIC_ALIAS: 1}), Reason.PROTOCOL_ERROR),
    (Publish("", b""), Reason.PROTOCOL_ERROR),
    (Publish("a/+", b""), Reason.TOPIC_NAME_INVALID),
    (Publish("a/#", b""), Reason.TOPIC_NAME_INVALID),
])
def test_bad_topics_and_aliases(publish, reason) -> None:
    c = connected(limits=ServerLimits(topic_alias_maximum=2))
    with pytest.raises(MqttError) as err:
        feed(c, publish)
    assert err.value.reason == reason


def test_outbound_topic_aliases_within_the_clients_maximum() -> None:
    c = connected(props={Prop.TOPIC_ALIAS_MAXIMUM: 1})
    first = c.send_publish("a/b", b"1", 0, False, False, None, b"\x00")
    second = c.send_publish("a/b", b"2", 0, False, False, None, b"\x00")
    other = c.send_publish("c/d", b"3", 0, False, False, None, b"\x00")
    p1, p2, p3 = (codec.decode(d[0], d[2:], 5) for d in (first, second, other))
    assert (p1.topic, p1.properties[Prop.TOPIC_ALIAS]) == ("a/b", 1)
    assert (p2.topic, p2.properties[Prop.TOPIC_ALIAS]) == ("", 1)
    assert (p3.topic, dict(p3.properties)) == ("c/d", {})  # no alias left


def test_publishes_over_the_clients_maximum_packet_size_are_dropped() -> None:
    c = connected(props={Prop.MAXIMUM_PACKET_SIZE: 50})
    assert c.send(Publish("t", b"x" * 10)) is not None
    assert c.send(Publish("t", b"x" * 100)) is None
    big = c.send(Suback(1, (0,), {Prop.REASON_STRING: "r" * 100}))
    assert len(big) <= 50  # the reason string went


def test_disconnect_may_not_raise_a_zero_session_expiry() -> None:
    c = connected()
    with pytest.raises(MqttError) as err:
        feed(c, Disconnect(0, {Prop.SESSION_EXPIRY_INTERVAL: 10}))
    assert err.value.reason == Reason.PROTOCOL_ERROR
    c = connected(props={Prop.SESSION_EXPIRY_INTERVAL: 5})
    assert feed(c, Disconnect(0, {Prop.SESSION_EXPIRY_INTERVAL: 10}))
    assert c.state is State.CLOSED


def test_errors_during_connect_are_answered_with_connack() -> None:
    c = ServerConnection()
    c.receive_data(codec.encode(Connect(5, "c"), 5)[:6])  # a CONNECT still arriving
    assert c.next_event() is NEED_DATA and c.state is State.AWAIT_CONNECT
    c2 = ServerConnection()
    raw = bytearray(codec.encode(Connect(4, "c"), 4))
    raw[8] = 6  # protocol level 6
    c2.receive_data(bytes(raw))
    with pytest.raises(MqttError) as err:
        c2.next_event()
    assert c2.error_bytes(err.value) == b"\x20\x02\x00\x01"  # 3.1.1 CONNACK 0x01
    c3 = ServerConnection()
    c3.receive_data(codec.encode(Connect(5, "c", will=None), 5))
    c3.next_event()
    refused = c3.error_bytes(MqttError("x", Reason.BAD_USERNAME_OR_PASSWORD))
    assert refused == b"\x20\x03\x00\x86\x00"


def test_a_will_topic_with_wildcards_is_refused() -> None:
    from ferrymq.protocols.mqtt.packets import Will
    c = ServerConnection()
    c.receive_data(codec.encode(Connect(5, "c", will=Will("a/#", b"")), 5))
    with pytest.raises(MqttError) as err:
        c.next_event()
    assert err.value.reason == Reason.TOPIC_NAME_INVALID
