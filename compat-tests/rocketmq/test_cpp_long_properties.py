"""A record whose property area exceeds RocketMQ's 32,767 bytes (an MQTT topic name may be
65,535) reaches the real RocketMQ C++ client re-encoded, never as bytes it would misread:
the property that does not fit is left out and named in FERRYMQ_OMITTED_PROPERTIES, and
the messages around it arrive intact (docs/storage.md, "Long property areas")."""

from __future__ import annotations

import pytest
import trio
from ferrymq.clients import Message, Producer
from test_cpp_client import FAST, FAST_CLIENT, create, peer


@pytest.fixture
def broker(start_broker, tmp_path):  # type: ignore[no-untyped-def]
    conf = tmp_path / "b.toml"
    conf.write_text(FAST)
    return start_broker("namesrv", "remoting", extra_args=("--config", str(conf)))


async def test_cpp_push_consumer_reads_around_a_long_property_area(broker) -> None:
    ns = broker.address("namesrv")
    await create(ns, "CppLongProps", 1)
    async with Producer(ns, "pg", **FAST_CLIENT) as p:
        for i in range(5):
            props = {"seq": str(i)}
            if i == 2:
                props["MQTT_TOPIC"] = "dev1/" + "t" * 65_530
            await p.send(Message("CppLongProps", f"m{i}".encode(), properties=props))
    got = await trio.to_thread.run_sync(peer, "consume", ns, "CppLongProps", "CID-long", "5",
                                        "60")
    assert [(g["body"], g["seq"]) for g in sorted(got, key=lambda g: g["offset"])] == [
        (f"m{i}", str(i)) for i in range(5)], "every message, in order, fields intact"
    assert {g["body"]: g["omitted"] for g in got} == {
        "m0": "", "m1": "", "m2": "MQTT_TOPIC", "m3": "", "m4": ""}
