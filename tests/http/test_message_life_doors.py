"""Which door produced it: a message's life (GET /v1/messages/{id}/life) names the door it
came in by, for each door, with that door's own real client (docs/console.md)."""

from __future__ import annotations

import time

import httpx
import paho.mqtt.client as paho
import pytest
from confluent_kafka import Producer
from ferrymq.clients import Message, blocking

DOORS = ("namesrv", "remoting", "kafka", "mqtt", "http")


@pytest.fixture(scope="module")
def broker(start_module_broker):
    return start_module_broker(*DOORS, extra_args=("--segment-size", str(32 << 20)))


@pytest.fixture(scope="module")
def http(broker):
    with httpx.Client(base_url=f"http://{broker.address('http')}", timeout=30) as c:
        yield c


def first_message(http, topic: str, timeout: float = 20.0) -> dict:
    """The message at offset 0 of the topic's one queue, once it is there."""
    deadline = time.monotonic() + timeout
    while True:
        got = http.get(f"/v1/topics/{topic}/queues/0/messages", params={"offset": 0}).json()
        if got.get("messages"):
            return got["messages"][0]
        assert time.monotonic() < deadline, f"nothing arrived in {topic}"
        time.sleep(0.05)


def door_of(http, topic: str) -> str:
    m = first_message(http, topic)
    life = http.get(f"/v1/messages/{m['id']}/life").json()
    assert life["steps"][0]["message"]["topic"] == topic
    return life["door"]


def test_each_door_is_named_in_the_life_of_what_it_stored(broker, http) -> None:
    for topic in ("viahttp", "viakafka", "mq", "vianative"):
        assert http.post("/v1/topics", json={"name": topic, "queues": 1}).status_code == 201

    http.post("/v1/topics/viahttp/messages", json={"body": "h", "properties": {"FERRY_DOOR": "x"}})

    p = Producer({"bootstrap.servers": broker.address("kafka")})
    p.produce("viakafka", value=b"k", headers=[("FERRY_DOOR", b"http")])  # a claim, not the door
    assert p.flush(15) == 0

    c = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="life-test")
    c.connect("127.0.0.1", broker.port("mqtt"))
    c.loop_start()
    try:
        c.publish("mq/dev", b"m", qos=1).wait_for_publish(15)
    finally:
        c.loop_stop()
        c.disconnect()

    with blocking.Producer(broker.address("namesrv"), group="life-pg") as prod:
        prod.send(Message("vianative", b"n", properties={"FERRY_DOOR": "mqtt"}))

    assert door_of(http, "viahttp") == "http"
    assert door_of(http, "viakafka") == "kafka"
    assert door_of(http, "mq") == "mqtt"
    assert door_of(http, "vianative") == "remoting"
