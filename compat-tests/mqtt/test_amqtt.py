"""amqtt's client (asyncio) against FerryMQ: QoS round trips, retained, will, persistent session."""

from __future__ import annotations

import asyncio

import pytest
from amqtt.client import MQTTClient


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


async def connected(port: int, client_id: str | None = None, clean: bool = True,
                    **config) -> MQTTClient:
    c = MQTTClient(client_id=client_id, config={"auto_reconnect": False, **config})
    await c.connect(f"mqtt://127.0.0.1:{port}/", cleansession=clean)
    return c


async def take(c: MQTTClient, n: int) -> list[tuple[str, bytes, int]]:
    out = []
    for _ in range(n):
        m = await c.deliver_message(timeout_duration=5)
        assert m is not None
        out.append((m.topic, bytes(m.data), m.qos))
    return out


def test_qos_0_1_2_round_trips(broker) -> None:
    port = broker.port("mqtt")

    async def scenario():
        sub = await connected(port)
        await sub.subscribe([("plant/#", 2)])
        pub = await connected(port)
        for qos in (0, 1, 2):
            await pub.publish(f"plant/q{qos}", b"qos %d" % qos, qos=qos)
        got = await take(sub, 3)
        await pub.disconnect()
        await sub.disconnect()
        return got

    assert run(scenario()) == [("plant/q0", b"qos 0", 0), ("plant/q1", b"qos 1", 1),
                               ("plant/q2", b"qos 2", 2)]


def test_retained_and_will(broker) -> None:
    port = broker.port("mqtt")

    async def scenario():
        pub = await connected(port)
        await pub.publish("line/state", b"running", qos=1, retain=True)
        await pub.disconnect()
        watch = await connected(port)
        await watch.subscribe([("line/#", 1)])
        retained = await take(watch, 1)
        dev = await connected(port, will={"topic": "line/will", "message": "lost", "qos": 1,
                                          "retain": False}, keep_alive=5)
        dev.session.transitions.disconnect()  # abnormal: close the socket without DISCONNECT
        await dev._handler.stop()
        await dev.cancel_tasks()
        writer = dev.session.writer if hasattr(dev.session, "writer") else None
        if writer is not None:
            writer.close()
        will = await take(watch, 1)
        await watch.disconnect()
        return retained, will

    try:
        retained, will = run(scenario())
    except AttributeError as exc:  # amqtt internals moved: say so, loudly
        pytest.fail(f"amqtt's internals changed: {exc}")
    assert retained == [("line/state", b"running", 1)]
    assert will == [("line/will", b"lost", 1)]


def test_persistent_session_across_reconnect(broker) -> None:
    port = broker.port("mqtt")

    async def scenario():
        dev = await connected(port, "amqtt-dev", clean=False)
        await dev.subscribe([("orders/#", 1)])
        await dev.disconnect()
        pub = await connected(port)
        await pub.publish("orders/1", b"queued", qos=1)
        await pub.disconnect()
        dev = await connected(port, "amqtt-dev", clean=False)
        got = await take(dev, 1)
        await dev.disconnect()
        return got

    assert run(scenario()) == [("orders/1", b"queued", 1)]
