"""JSON at the HTTP door, and JSON kept in message properties, within limits: a nested request
body is malformed JSON (400), not an internal error, and a stored message labelled JSON that
no parser should follow is shown as text instead of failing every read of its queue."""

from __future__ import annotations

from ferrymq.core.message import ConsumedMessage
from ferrymq.gateways.http import codec
from ferrymq.gateways.mqtt import mapping

NESTED = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 3000 + b"1" + b"}" * 3000


async def test_a_nested_json_body_is_malformed_json(door) -> None:
    for ct in ("application/json", "application/cloudevents+json",
               "application/cloudevents-batch+json", "application/x-ndjson"):
        r = await door.client.post("/v1/topics/t/messages", content=NESTED,
                                   headers={"content-type": ct})
        assert r.status_code == 400, (ct, r.text)
        assert r.json()["code"] == "malformed_json"


async def test_a_stored_deep_json_message_is_read_as_text(door) -> None:
    """Produced raw (any door could have), labelled JSON: reading it used to answer 500
    on every read and pop of its queue."""
    r = await door.client.post("/v1/topics/deep/messages?raw=true", content=DEEP_OBJECT,
                               headers={"content-type": "application/json"})
    assert r.status_code == 201, r.text
    queue = r.json()["queue"]
    r = await door.client.get(f"/v1/topics/deep/queues/{queue}/messages", params={"offset": 0})
    assert r.status_code == 200, r.text
    assert r.json()["messages"][0]["body"] == DEEP_OBJECT.decode()
    r = await door.client.get("/v1/topics/deep/messages",
                              params={"group": "g", "init": "earliest"})
    assert r.status_code == 200, r.text
    assert r.json()["messages"][0]["body"] == DEEP_OBJECT.decode()


def _message(body: bytes, props: dict[str, str]) -> ConsumedMessage:
    return ConsumedMessage(topic="t", queue_id=0, queue_offset=0, body=body, properties=props,
                           born_timestamp=0, store_timestamp=0, physical_offset=0,
                           store_host=b"\0" * 8, born_host=b"\0" * 8, flag=0, sys_flag=0,
                           reconsume_times=0, batch_index=0)


def test_cloudevent_and_message_views_fall_back_to_text() -> None:
    m = _message(NESTED[:20_000], {"content-type": "application/json"})
    assert codec.message_json(m)["body"] == NESTED[:20_000].decode()
    assert codec.to_cloudevent(m)["data"] == NESTED[:20_000].decode()
    ok = _message(b'{"a": [1, 2]}', {"content-type": "application/json"})
    assert codec.message_json(ok)["body"] == {"a": [1, 2]}


def test_mqtt_user_properties_from_another_door_are_bounded() -> None:
    """MQTT_USER_PROPERTIES can be set by any door (a Kafka header): a nested one used to
    raise RecursionError in the MQTT dispatcher, and the message was never delivered."""
    nested = (b"[" * 5000 + b"]" * 5000).decode()
    assert mapping.user_properties({mapping.MQTT_USER_PROPERTIES: nested}) == ()
    assert mapping.user_properties({mapping.MQTT_USER_PROPERTIES: '[["k","v"]]'}) == (("k", "v"),)
    assert mapping.user_properties({mapping.MQTT_USER_PROPERTIES: '[[["k"],"v"]]'}) == ()
