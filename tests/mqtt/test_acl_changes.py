"""An ACL change reaches MQTT clients that are already connected, at once: the decisions
the door remembers per client and topic (``auth.ClientAccess``) and the core's decision
cache (``core/access.py``) are both forgotten when a rule changes (docs/security.md).
A connected publisher that loses WRITE gets 0x87 on its very next PUBLISH; a subscriber
that loses READ gets no further message; both come back when the rule does."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from brokerproc import TEST_SEGMENT_SIZE, BrokerProcess
from ferrymq.core import Broker, BrokerConfig
from ferrymq.core.access import LITERAL, READ, SYSTEM, TOPIC, WRITE, Rule
from ferrymq.protocols.mqtt.constants import Reason
from ferrymq.protocols.mqtt.packets import Puback
from rawclient import RawClient

ADMIN = "Basic " + base64.b64encode(b"admin:admin-pw").decode()


def _rule(op: str) -> dict[str, Any]:
    return {"principal": "User:alice", "resource_type": "topic", "pattern_type": "literal",
            "resource": "sensors", "operation": op, "permission": "allow"}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    data = tmp_path / "broker"
    conf = tmp_path / "auth.toml"
    conf.write_text("[auth]\nenabled = true\n[mqtt]\nws_port = 0\nsys_interval = 0.0\n")

    async def bootstrap() -> None:
        async with Broker.open(BrokerConfig(data_dir=str(data),
                                            segment_size=TEST_SEGMENT_SIZE)) as b:
            await b.put_user("admin", password="admin-pw", super_user=True, principal=SYSTEM)
            await b.put_user("alice", password="alice-pw", principal=SYSTEM)
            await b.create_topic("sensors", 1, principal=SYSTEM)
            await b.add_acls([Rule("User:alice", TOPIC, LITERAL, "sensors", op, True)
                              for op in (READ, WRITE)], principal=SYSTEM)

    trio.run(bootstrap)
    b = BrokerProcess(data, ("mqtt", "http"), ("--config", str(conf)))
    b.start()
    try:
        yield b
    finally:
        b.stop()


def _acls(b: BrokerProcess, path: str, op: str) -> None:
    r = httpx.post(f"http://{b.address('http')}{path}", json={"rules": [_rule(op)]},
                   headers={"Authorization": ADMIN}, timeout=20)
    assert r.status_code in (200, 201), r.text


def _alice(b: BrokerProcess, cid: str) -> RawClient:
    c = RawClient(b.port("mqtt"), 5)
    assert c.connect(cid, username="alice", password=b"alice-pw").reason == 0
    return c


def test_a_revoked_write_refuses_the_next_publish_of_a_connected_client(broker) -> None:
    pub = _alice(broker, "pub")
    assert pub.publish("sensors/a", b"1", 1, pid=1) == Puback(1)  # decision remembered
    _acls(broker, "/v1/acls/delete", "write")
    assert pub.publish("sensors/a", b"2", 1, pid=2) == Puback(2, Reason.NOT_AUTHORIZED)
    _acls(broker, "/v1/acls", "write")
    assert pub.publish("sensors/a", b"3", 1, pid=3) == Puback(3)


def test_a_revoked_read_stops_deliveries_to_a_connected_subscriber(broker) -> None:
    sub = _alice(broker, "sub")
    assert sub.subscribe("sensors/#", qos=1).reasons == (1,)
    # A super user sees every message: once it has one, the dispatcher has routed it
    # to alice too (one pass routes a message to every subscriber).
    witness = RawClient(broker.port("mqtt"), 5)
    assert witness.connect("witness", username="admin", password=b"admin-pw").reason == 0
    assert witness.subscribe("sensors/#", qos=1).reasons == (1,)
    pub = _alice(broker, "pub")
    assert pub.publish("sensors/a", b"1", 1, pid=1) == Puback(1)
    assert [m.payload for m in sub.messages(1)] == [b"1"]  # decision remembered
    assert [m.payload for m in witness.messages(1)] == [b"1"]
    _acls(broker, "/v1/acls/delete", "read")
    assert pub.publish("sensors/a", b"2", 1, pid=2) == Puback(2)
    assert [m.payload for m in witness.messages(1)] == [b"2"]
    _acls(broker, "/v1/acls", "read")
    assert pub.publish("sensors/a", b"3", 1, pid=3) == Puback(3)
    # The message stored while READ was revoked is never delivered; the next one is.
    assert [m.payload for m in sub.messages(1)] == [b"3"]
    sub.nothing()
