"""Every door refuses a producer's write under disk pressure with its protocol's own error
(docs/operations.md, "Disk"): HTTP 507, Kafka KAFKA_STORAGE_ERROR (56, retriable: the
clients back off and retry), RocketMQ remoting SYSTEM_BUSY with a remark, MQTT 5 PUBACK
0x97 Quota exceeded, MQTT 3.1.1 the connection closed (it has no negative PUBACK: the
client sends the message again on its next connection).

The broker runs with a high watermark of 1% of this machine's disk, far below its use:
it refuses writes from its first disk check on, and stays up for reads and commits.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from ferrymq.clients import Message as ClientMessage
from ferrymq.clients import Producer
from ferrymq.clients.remoting import BrokerError
from ferrymq.protocols.mqtt.constants import Reason
from ferrymq.protocols.mqtt.packets import Publish
from ferrymq.protocols.remoting import ResponseCode
from kafka import KafkaProducer
from kafka.errors import KafkaStorageError

sys.path.insert(0, str(Path(__file__).parent.parent / "mqtt"))
from rawclient import Closed, RawClient

CONFIG = """
max_disk_ratio = 0.01
disk_resume_ratio = 0.005
disk_check_interval_s = 0.05
"""


@pytest.fixture(scope="module")
def full(start_module_broker: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
         ) -> Any:
    conf = tmp_path_factory.mktemp("conf") / "full.toml"
    conf.write_text(CONFIG)
    b = start_module_broker("namesrv", "remoting", "kafka", "mqtt", "http",
                            extra_args=("--config", str(conf)), name="full")
    url = f"http://{b.address('http')}"
    deadline = time.monotonic() + 10
    while True:  # the first disk check comes 50 ms after the start
        r = httpx.post(f"{url}/v1/topics/T/messages", content=b"probe",
                       headers={"content-type": "text/plain"})
        if r.status_code == 507 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return b


def test_http_answers_507_with_a_problem(full: Any) -> None:
    r = httpx.post(f"http://{full.address('http')}/v1/topics/T/messages", content=b"x",
                   headers={"content-type": "text/plain"})
    assert r.status_code == 507, r.text
    problem = r.json()
    assert r.headers["content-type"].startswith("application/problem+json")
    assert problem["code"] == "disk_pressure" and "max_disk_ratio" in problem["detail"]


def test_kafka_answers_kafka_storage_error(full: Any) -> None:
    p = KafkaProducer(bootstrap_servers=full.address("kafka"), retries=0)
    try:
        with pytest.raises(KafkaStorageError) as err:
            p.send("T", b"x", partition=0).get(timeout=10)
        assert err.value.errno == 56 and err.value.retriable
    finally:
        p.close()


def test_remoting_answers_system_busy_with_a_remark(full: Any) -> None:
    async def main() -> None:
        async with Producer(full.address("namesrv"), "pg", heartbeat_s=1.0,
                            route_refresh_s=1.0, retries=0) as p:
            with pytest.raises(BrokerError) as err:
                await p.send(ClientMessage("T", b"x"))
            assert err.value.code == ResponseCode.SYSTEM_BUSY
            assert "max_disk_ratio" in err.value.remark

    trio.run(main)


def test_mqtt5_answers_quota_exceeded(full: Any) -> None:
    c = RawClient(full.port("mqtt"), version=5)
    c.connect("v5")
    ack = c.publish("T/a", b"x", qos=1)
    assert ack.reason == Reason.QUOTA_EXCEEDED  # type: ignore[union-attr]
    c.disconnect()


def test_mqtt311_closes_the_connection_unacknowledged(full: Any) -> None:
    c = RawClient(full.port("mqtt"), version=4)
    c.connect("v311")
    c.send(Publish("T/a", b"x", 1, False, False, 1, {}))
    assert c.recv_until_closed() == [], "no PUBACK: the client will send it again"
    with pytest.raises((Closed, OSError)):
        c.publish("T/a", b"y", qos=1)
