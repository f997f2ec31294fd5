"""docs/mqtt.md's mapping rules, one by one."""

from __future__ import annotations

import pytest
from ferrymq.core.metadata import validate_topic_name
from ferrymq.gateways.mqtt import mapping
from ferrymq.protocols.mqtt.constants import Prop
from hypothesis import given
from hypothesis import strategies as st


@pytest.mark.parametrize("mqtt_topic, broker_topic", [
    ("sensors/kitchen/temp", "sensors"),
    ("sensors", "sensors"),
    ("a.b-c_d/x", "a.b-c_d"),
    ("my room/x", "my|20room"),
    ("caf\u00e9/x", "caf|C3|A9"),
    ("a|b", "a|7Cb"),
    ("%RETRY%g/x", "|25RETRY|25g"),
    ("/leading/slash", "|"),
    ("./x", "|2E"),
    ("../x", "|2E|2E"),
    ("TBW102/x", "|TBW102"),
    ("RMQ_SYS_TRACE/x", "|RMQ_SYS_TRACE"),
])
def test_the_first_level_is_the_broker_topic(mqtt_topic, broker_topic) -> None:
    assert mapping.broker_topic(mqtt_topic) == broker_topic


def test_long_first_levels_are_cut_and_hashed() -> None:
    t = mapping.broker_topic("x" * 300 + "/y")
    assert len(t) == 127 and t.startswith("x" * 109 + "|H")
    assert t != mapping.broker_topic("x" * 299 + "z/y")


@given(st.text(min_size=0, max_size=150))
def test_every_first_level_maps_to_a_valid_topic_name(level) -> None:
    validate_topic_name(mapping.broker_topic(level + "/rest"))


def test_user_properties_with_reserved_or_repeated_names_travel_as_json() -> None:
    m = mapping.to_message("t/x", 0, b"", 1, False, "c", {
        Prop.USER_PROPERTY: (("DELAY", "3"), ("a", "1"))})
    assert "DELAY" not in m.properties  # must never steer the core
    assert mapping.user_properties(m.properties) == (("DELAY", "3"), ("a", "1"))
    m = mapping.to_message("t/x", 0, b"", 1, False, "c", {
        Prop.USER_PROPERTY: (("a", "1"), ("a", "2"))})
    assert mapping.user_properties(m.properties) == (("a", "1"), ("a", "2"))


def test_message_expiry_is_absolute_in_the_store() -> None:
    m = mapping.to_message("t", 0, b"", 1, False, "c", {Prop.MESSAGE_EXPIRY_INTERVAL: 10},
                           now=1_000_000)
    assert m.properties[mapping.MQTT_EXPIRY_AT] == "1010000"
    props, expired = mapping.message_properties(m.properties, 1_004_500)
    assert props[Prop.MESSAGE_EXPIRY_INTERVAL] == 6 and not expired
    assert mapping.message_properties(m.properties, 1_010_000)[1]


def test_queue_choice_is_stable_per_mqtt_topic() -> None:
    assert mapping.queue_for("a/b", 8) == mapping.queue_for("a/b", 8)
    assert len({mapping.queue_for(f"a/{i}", 8) for i in range(100)}) == 8


def test_delivery_time_user_properties_become_the_timer_properties() -> None:
    m = mapping.to_message("a/b", 0, b"x", 1, False, "c1", {Prop.USER_PROPERTY: [
        ("ferrymq-delay-ms", "1500"), ("color", "red")]})
    assert m.properties["TIMER_DELAY_MS"] == "1500" and m.properties["color"] == "red"
    assert "ferrymq-delay-ms" not in m.properties and mapping.is_timed(m)
    at = mapping.to_message("a/b", 0, b"x", 1, False, "c1", {Prop.USER_PROPERTY: [
        ("ferrymq-deliver-at-ms", "1700000000000"), ("k", "1"), ("k", "2")]})
    assert at.properties["TIMER_DELIVER_MS"] == "1700000000000"
    assert "ferrymq" not in at.properties["MQTT_USER_PROPERTIES"], "the rest keeps its form"
    # RocketMQ's own names never steer the core from MQTT
    plain = mapping.to_message("a/b", 0, b"x", 1, False, "c1", {Prop.USER_PROPERTY: [
        ("DELAY", "3"), ("TIMER_DELAY_MS", "5")]})
    assert not mapping.is_timed(plain) and "DELAY" not in plain.properties


@pytest.mark.parametrize("users, retain", [
    ([("ferrymq-delay-ms", "1"), ("ferrymq-deliver-at-ms", "2")], False),
    ([("ferrymq-delay-ms", "1"), ("ferrymq-delay-ms", "2")], False),
    ([("ferrymq-delay-ms", "1000")], True),
])
def test_conflicting_or_retained_delivery_times_are_refused(users, retain) -> None:
    from ferrymq.core.errors import InvalidDelay
    with pytest.raises(InvalidDelay):
        mapping.to_message("a/b", 0, b"x", 1, retain, "c1", {Prop.USER_PROPERTY: users})
