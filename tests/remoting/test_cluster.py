"""Two brokers and one NameServer on one machine: one topic's queues served by both, clients
routing by the NameServer, a broker killed mid-stream and the producer moving on, and a
silent broker leaving the routes."""

from __future__ import annotations

import collections

import trio
from ferrymq.clients import Admin, Message, Producer, PushConsumer
from ferrymq.clients.message import MessageExt
from ferrymq.gateways.namesrv.routes import RouteTable
from ferrymq.protocols.remoting import bodies as B

from .conftest import FAST_CLIENT, FAST_PUSH, broker_config


def two_brokers(start_broker, tmp_path):  # type: ignore[no-untyped-def]
    a = start_broker("namesrv", "remoting", name="a",
                     extra_args=("--config", broker_config(tmp_path, "a", "broker-a")))
    b = start_broker("remoting", name="b", extra_args=(
        "--config", broker_config(tmp_path, "b", "broker-b"),
        "--namesrv", a.address("namesrv")))
    return a, b


async def wait_for(pred, timeout: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not await pred():
            await trio.sleep(0.1)


async def test_one_topic_spread_over_two_brokers(start_broker, tmp_path) -> None:
    a, b = two_brokers(start_broker, tmp_path)
    ns = a.address("namesrv")
    async with Admin(ns, **FAST_CLIENT) as admin:
        async def both_registered() -> bool:
            return len((await admin.cluster()).brokerAddrTable) == 2
        await wait_for(both_registered)
        assert sorted(await admin.create_topic("Spread", 2)) == ["broker-a", "broker-b"]
        route = await admin.route("Spread")
        assert sorted(q.brokerName for q in route.queueDatas) == ["broker-a", "broker-b"]
    got: list[MessageExt] = []

    async def h(msgs: list[MessageExt]) -> None:
        got.extend(msgs)

    c = PushConsumer(ns, "spread", h, consume_from="FIRST", **FAST_PUSH)
    c.subscribe("Spread")
    async with Producer(ns, "pg", **FAST_CLIENT) as p, c:
        brokers = collections.Counter()
        for i in range(40):
            r = await p.send(Message("Spread", f"s{i}".encode()))
            brokers[r.queue.brokerName] += 1
        assert brokers["broker-a"] == brokers["broker-b"] == 20, "round-robin over 4 queues"
        with trio.fail_after(15):
            while len({m.body for m in got}) < 40:
                await trio.sleep(0.1)
    assert {m.store_host_str for m in got} == {a.address("remoting"), b.address("remoting")}


async def test_producer_moves_on_when_a_broker_is_killed(start_broker, tmp_path) -> None:
    a, b = two_brokers(start_broker, tmp_path)
    ns = a.address("namesrv")
    async with Admin(ns, **FAST_CLIENT) as admin:
        async def both_registered() -> bool:
            return len((await admin.cluster()).brokerAddrTable) == 2
        await wait_for(both_registered)
        await admin.create_topic("Failover", 2)
    acked: list[tuple[str, str]] = []
    async with Producer(ns, "pg", timeout=1.0, **FAST_CLIENT) as p:
        for i in range(100):
            if i == 30:
                b.kill()  # mid-stream, without unregistering
            r = await p.send(Message("Failover", f"f{i}".encode()))
            acked.append((r.msg_id, r.queue.brokerName))
        after = [name for _, name in acked[30:]]
        assert set(after) == {"broker-a"}, "every send after the kill landed on the survivor"
        assert p.faulty_brokers == {"broker-b"}, "the dead broker is passed over for a while"
    assert len(acked) == 100
    async with Admin(ns, **FAST_CLIENT) as admin:
        async def b_gone() -> bool:  # silent past broker_expiry_s (3 s here): out of the routes
            route = await admin.route("Failover")
            return [q.brokerName for q in route.queueDatas] == ["broker-a"]
        await wait_for(b_gone, 15)
        for msg_id, broker in acked[30:35]:
            m = await admin.message_by_id(msg_id)
            assert m is not None and broker == "broker-a"


def test_route_table_expires_silent_brokers() -> None:
    t = RouteTable(broker_expiry_s=120)
    topics = (B.TopicConfigData("T", 4, 4),)
    t.register("c", "b1", 0, "h1:1", topics, now=0)
    t.register("c", "b2", 0, "h2:1", topics, now=0)
    route = t.route("T")
    assert route is not None and [q.brokerName for q in route.queueDatas] == ["b1", "b2"]
    t.register("c", "b1", 0, "h1:1", topics, now=100)  # b1 re-registers, b2 stays silent
    assert t.expire(now=121) == ["h2:1"]
    route = t.route("T")
    assert route is not None and [b.brokerName for b in route.brokerDatas] == ["b1"]
    assert t.unregister("h1:1") and t.route("T") is None
    assert t.cluster_info().brokerAddrTable == {}


async def test_standalone_namesrv_command(start_broker, tmp_path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as probe:  # a free port for the NameServer
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    ns = subprocess.Popen([sys.executable, "-m", "ferrymq.gateways", "namesrv", "--host",
                           "127.0.0.1", "--port", str(port), "--broker-expiry", "5"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        with trio.fail_after(15):
            while True:  # wait until it listens
                try:
                    s = await trio.open_tcp_stream("127.0.0.1", port)
                    await s.aclose()
                    break
                except OSError:
                    await trio.sleep(0.05)
        b = start_broker("remoting", extra_args=(
            "--config", broker_config(tmp_path, "alone", "broker-z"),
            "--namesrv", f"127.0.0.1:{port}"))
        async with Admin(f"127.0.0.1:{port}", **FAST_CLIENT) as admin:
            info = await admin.cluster()
            assert info.brokerAddrTable["broker-z"].master_addr == b.address("remoting")
            await admin.create_topic("AloneT", 2)
            assert "AloneT" in await admin.topics()
        b.stop()
        async with Admin(f"127.0.0.1:{port}", **FAST_CLIENT) as admin:
            # a broker that stops cleanly unregisters at once
            assert (await admin.cluster()).brokerAddrTable == {}
    finally:
        ns.terminate()
        ns.wait(10)
