"""The MQTT codec, bytes in and bytes out: every packet round-trips in every version, and
every encoding rule the specifications state is enforced with the reason code they name."""

from __future__ import annotations

import contextlib

import pytest
from ferrymq.protocols.mqtt import codec
from ferrymq.protocols.mqtt.codec import MalformedPacket, MqttError, ProtocolViolation
from ferrymq.protocols.mqtt.constants import MQTT_3_1, MQTT_3_1_1, MQTT_5, Prop, Reason
from ferrymq.protocols.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)
from hypothesis import given, settings
from hypothesis import strategies as st

VERSIONS = (MQTT_3_1, MQTT_3_1_1, MQTT_5)


def roundtrip(packet, version):
    data = codec.encode(packet, version)
    first, start, end = codec.split_frame(data)
    assert end == len(data)
    return codec.decode(first, data[start:end], version)


PACKETS_ALL = [
    Publish("a/b", b"payload", 0),
    Publish("a/b", b"", 1, True, True, 7),
    Publish("x" * 300, b"y" * 70000, 2, False, False, 65535),
    Puback(1), Pubrec(2), Pubrel(3), Pubcomp(65535),
    Subscribe(5, (Subscription("a/+", 1), Subscription("#", 2))),
    Unsubscribe(6, ("a/+", "b")),
    Pingreq(), Disconnect(),
]


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("packet", PACKETS_ALL, ids=lambda p: type(p).__name__)
def test_every_packet_round_trips_in_every_version(packet, version) -> None:
    assert roundtrip(packet, version) == packet


PACKETS_V5 = [
    Publish("t", b"p", 1, False, False, 9, {
        Prop.PAYLOAD_FORMAT_INDICATOR: 1, Prop.MESSAGE_EXPIRY_INTERVAL: 60,
        Prop.CONTENT_TYPE: "text/plain", Prop.RESPONSE_TOPIC: "reply/here",
        Prop.CORRELATION_DATA: b"\x00\x01", Prop.TOPIC_ALIAS: 3,
        Prop.USER_PROPERTY: (("a", "1"), ("a", "2"), ("b", "")),
        Prop.SUBSCRIPTION_IDENTIFIER: (1, 268_435_455)}),
    Puback(1, Reason.NOT_AUTHORIZED, {Prop.REASON_STRING: "no"}),
    Pubrec(1, Reason.NO_MATCHING_SUBSCRIBERS),
    Subscribe(1, (Subscription("a", 2, True, True, 2),), {Prop.SUBSCRIPTION_IDENTIFIER: (42,)}),
    Suback(1, (0, 1, 2, Reason.NOT_AUTHORIZED)),
    Unsuback(1, (0, Reason.NO_SUBSCRIPTION_EXISTED)),
    Disconnect(Reason.SESSION_TAKEN_OVER, {Prop.REASON_STRING: "bye"}),
    Auth(0x18, {Prop.AUTHENTICATION_METHOD: "x"}),
    Connack(True, 0, {Prop.ASSIGNED_CLIENT_IDENTIFIER: "id", Prop.RECEIVE_MAXIMUM: 10}),
]


@pytest.mark.parametrize("packet", PACKETS_V5, ids=lambda p: type(p).__name__)
def test_mqtt5_properties_and_reason_codes_round_trip(packet) -> None:
    assert roundtrip(packet, MQTT_5) == packet


@pytest.mark.parametrize("version", VERSIONS)
def test_connect_round_trips_with_will_user_and_password(version) -> None:
    props = {Prop.SESSION_EXPIRY_INTERVAL: 30, Prop.RECEIVE_MAXIMUM: 5} if version == 5 else {}
    will_props = {Prop.WILL_DELAY_INTERVAL: 10} if version == 5 else {}
    c = Connect(version, "dev-1", False, 30, props, Will("w/t", b"gone", 1, True, will_props),
                "user", b"secret")
    assert roundtrip(c, version) == c
    assert codec.decode_connect(codec.encode(c, version)[2:]).version == version


def test_the_311_connack_and_suback_use_the_old_return_codes() -> None:
    assert codec.encode(Connack(False, Reason.BAD_USERNAME_OR_PASSWORD), 4) == b"\x20\x02\x00\x04"
    assert codec.encode(Connack(False, Reason.NOT_AUTHORIZED), 4) == b"\x20\x02\x00\x05"
    assert codec.encode(Suback(1, (1, Reason.NOT_AUTHORIZED)), 4) == b"\x90\x04\x00\x01\x01\x80"


def test_remaining_length_is_a_variable_byte_integer() -> None:
    # 2.1.4's table: the boundaries of one to four bytes.
    for value, raw in [(0, b"\x00"), (127, b"\x7f"), (128, b"\x80\x01"), (16383, b"\xff\x7f"),
                       (16384, b"\x80\x80\x01"), (2097151, b"\xff\xff\x7f"),
                       (2097152, b"\x80\x80\x80\x01"), (268435455, b"\xff\xff\xff\x7f")]:
        assert codec.encode_varint(value) == raw
        assert codec.decode_varint(raw, 0) == (value, len(raw))


def test_a_fifth_remaining_length_byte_is_malformed() -> None:
    with pytest.raises(MalformedPacket):
        codec.split_frame(b"\x30\xff\xff\xff\xff\x01")


def test_an_incomplete_header_asks_for_more_bytes() -> None:
    assert codec.split_frame(b"\x30") is None
    assert codec.split_frame(b"\x30\xff\xff") is None


@pytest.mark.parametrize("raw, why", [
    (b"\x00\x03a\xffb", "invalid UTF-8"),
    (b"\x00\x03a\x00b", "U+0000"),
    (b"\x00\x03\xed\xa0\x80", "an encoded surrogate"),
    (b"\x00\x02a\x01", "a control character"),
    (b"\x00\x03\xef\xbf\xbf", "a non-character"),
    (b"\x00\x05ab", "a length past the packet"),
])
def test_topic_names_must_be_well_formed_utf8(raw, why) -> None:
    with pytest.raises(MalformedPacket):
        codec.decode(0x30, raw + b"payload"[:0], MQTT_3_1_1)


@pytest.mark.parametrize("first, body, error", [
    (0x36, b"\x00\x01a\x00\x01", MalformedPacket),  # QoS 3
    (0x38, b"\x00\x01a", MalformedPacket),  # DUP on QoS 0
    (0x32, b"\x00\x01a\x00\x00", MalformedPacket),  # packet id 0
    (0x32, b"\x00\x01a", MalformedPacket),  # no packet id
    (0x60, b"\x00\x01", MalformedPacket),  # PUBREL flags must be 0010
    (0x80, b"\x00\x01\x00\x01a\x00", MalformedPacket),  # SUBSCRIBE flags
    (0x82, b"\x00\x01", ProtocolViolation),  # SUBSCRIBE without filters
    (0x82, b"\x00\x01\x00\x01a\x03", MalformedPacket),  # subscription QoS 3
    (0x82, b"\x00\x01\x00\x01a\x04", MalformedPacket),  # 3.1.1 reserved option bits
    (0xA2, b"\x00\x01", ProtocolViolation),  # UNSUBSCRIBE without filters
    (0xC1, b"", MalformedPacket),  # PINGREQ flags
    (0xC0, b"\x00", MalformedPacket),  # PINGREQ with a body
    (0xE0, b"\x00", MalformedPacket),  # 3.1.1 DISCONNECT with a body
    (0x00, b"", MalformedPacket),  # reserved packet type 0
    (0xF0, b"\x00", MalformedPacket),  # AUTH before 5.0
    (0x40, b"\x00\x01\x00", MalformedPacket),  # 3.1.1 PUBACK with trailing bytes
])
def test_malformed_packets_are_refused(first, body, error) -> None:
    with pytest.raises(error):
        codec.decode(first, body, MQTT_3_1_1)


@pytest.mark.parametrize("first, body, reason", [
    # a property not allowed in PUBLISH (Session Expiry)
    (0x30, b"\x00\x01a\x05\x11\x00\x00\x00\x01", Reason.MALFORMED_PACKET),
    # Content Type twice
    (0x30, b"\x00\x01a\x08\x03\x00\x01x\x03\x00\x01y", Reason.PROTOCOL_ERROR),
    # property length past the packet
    (0x30, b"\x00\x01a\x09\x03\x00\x01x", Reason.MALFORMED_PACKET),
    # payload format indicator 2
    (0x30, b"\x00\x01a\x02\x01\x02", Reason.PROTOCOL_ERROR),
    # subscription identifier 0 in SUBSCRIBE
    (0x82, b"\x00\x01\x02\x0b\x00\x00\x01a\x00", Reason.PROTOCOL_ERROR),
    # 5.0 reserved subscription option bits
    (0x82, b"\x00\x01\x00\x00\x01a\xc0", Reason.MALFORMED_PACKET),
    # Retain Handling 3
    (0x82, b"\x00\x01\x00\x00\x01a\x30", Reason.PROTOCOL_ERROR),
])
def test_mqtt5_property_rules(first, body, reason) -> None:
    with pytest.raises(MqttError) as err:
        codec.decode(first, body, MQTT_5)
    assert err.value.reason == reason


def test_connect_rules() -> None:
    good = codec.encode(Connect(4, "c"), 4)[2:]
    assert codec.decode_connect(good).client_id == "c"
    with pytest.raises(MalformedPacket):  # reserved flag
        codec.decode_connect(good[:7] + bytes((good[7] | 1,)) + good[8:])
    with pytest.raises(MalformedPacket):  # will QoS without will flag
        codec.decode_connect(good[:7] + bytes((good[7] | 0x08,)) + good[8:])
    with pytest.raises(MalformedPacket):  # 3.1.1: password without user name
        codec.decode_connect(good[:7] + bytes((good[7] | 0x40,)) + good[8:] + b"\x00\x00")
    with pytest.raises(MqttError) as err:  # protocol level 6
        codec.decode_connect(good[:6] + b"\x06" + good[7:])
    assert err.value.reason == Reason.UNSUPPORTED_PROTOCOL_VERSION
    with pytest.raises(ProtocolViolation):  # unknown protocol name
        codec.decode_connect(b"\x00\x04MQTX" + good[6:])
    with pytest.raises(MalformedPacket):  # trailing bytes
        codec.decode_connect(good + b"\x00")


# ------------------------------------------------------------------ fuzzing

@settings(max_examples=3000, deadline=None)
@given(first=st.integers(0, 255), body=st.binary(max_size=200),
       version=st.sampled_from((*VERSIONS, 0)))
def test_decoding_random_bytes_raises_only_mqtt_errors(first, body, version) -> None:
    with contextlib.suppress(MqttError):
        codec.decode(first, body, version)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=64), version=st.sampled_from(VERSIONS))
def test_decoding_a_mutated_valid_packet_raises_only_mqtt_errors(data, version) -> None:
    base = codec.encode(PACKETS_V5[0] if version == 5 else PACKETS_ALL[1], version)
    for i in range(0, len(base), 3):
        mutated = base[:i] + data + base[i + len(data):]
        try:
            frame = codec.split_frame(mutated)
            if frame is not None:
                codec.decode(frame[0], mutated[frame[1]:frame[2]], version)
        except MqttError:
            pass


_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"),
                              blacklist_characters="\ufffe\uffff"),
                max_size=20).filter(lambda s: not any(0xFDD0 <= ord(c) <= 0xFDEF for c in s))


@settings(max_examples=500, deadline=None)
@given(topic=_text.filter(bool), payload=st.binary(max_size=300), qos=st.integers(0, 2),
       retain=st.booleans(), pid=st.integers(1, 65535),
       users=st.lists(st.tuples(_text, _text), max_size=3), ctype=st.none() | _text,
       expiry=st.none() | st.integers(0, 2**32 - 1))
def test_any_publish_round_trips(topic, payload, qos, retain, pid, users, ctype, expiry) -> None:
    props = {}
    if users:
        props[Prop.USER_PROPERTY] = tuple(users)
    if ctype is not None:
        props[Prop.CONTENT_TYPE] = ctype
    if expiry is not None:
        props[Prop.MESSAGE_EXPIRY_INTERVAL] = expiry
    p = Publish(topic, payload, qos, retain, bool(qos) and retain, pid if qos else None, props)
    assert roundtrip(p, MQTT_5) == p
    p4 = Publish(topic, payload, qos, retain, False, pid if qos else None)
    assert roundtrip(p4, MQTT_3_1_1) == p4


def test_ping_and_connack_wire_bytes() -> None:
    assert codec.encode(Pingresp(), 4) == b"\xd0\x00"
    assert codec.encode(Connack(True, 0), 4) == b"\x20\x02\x01\x00"
    assert codec.encode(Connack(False, 0), 5) == b"\x20\x03\x00\x00\x00"
