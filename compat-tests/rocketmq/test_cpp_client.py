"""The real Apache RocketMQ C++ client (inside PyPI's ``rocketmq`` package) against FerryMQ:
it produces through the NameServer and consumes with its push consumer; what it produces the
FerryMQ client consumes, and the other way round. It logs under ~/logs/rocketmq-cpp."""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from ferrymq.clients import Admin, Message, Producer, PushConsumer
from ferrymq.clients.message import MessageExt

PEER = Path(__file__).with_name("cpp_peer.py")
# Small store files (a shared CI disk), fast registration, short delay levels (a retry
# at level 3 comes back after 1 s, not 10 s).
FAST = ("segment_size = 67108864\ncq_entries_per_file = 20000\nindex_slots = 20000\n"
        "index_entries = 80000\n"
        'delay_levels = "1s 1s 1s 2s 2s 2s 3s 3s 3s 4s 4s 4s 5s 5s 5s 6s 6s 6s"\n'
        "[remoting]\nregister_interval_s = 1.0\n")
FAST_CLIENT = {"heartbeat_s": 1.0, "route_refresh_s": 1.0}


def test_the_rocketmq_package_is_installed() -> None:
    import rocketmq.client  # noqa: F401 - fails (never skips) when the client is missing


def peer(*args: str, timeout: float = 90) -> list[dict]:
    out = subprocess.run([sys.executable, str(PEER), *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"C++ client peer failed:\n{out.stdout}\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def broker(start_broker, tmp_path):  # type: ignore[no-untyped-def]
    conf = tmp_path / "b.toml"
    conf.write_text(FAST)
    return start_broker("namesrv", "remoting", extra_args=("--config", str(conf)))


async def create(ns: str, topic: str, queues: int = 4) -> None:
    async with Admin(ns, **FAST_CLIENT) as a:
        await a.create_topic(topic, queues)


async def test_cpp_producer_to_ferrymq_consumer(broker) -> None:
    ns = broker.address("namesrv")
    await create(ns, "CppToFerry")
    sent = await trio.to_thread.run_sync(peer, "produce", ns, "CppToFerry", "20")
    assert len(sent) == 20 and all(s["status"] == 0 for s in sent)
    batch = await trio.to_thread.run_sync(peer, "produce", ns, "CppToFerry", "5", "--batch")
    assert batch[0]["status"] == 0
    got: list[MessageExt] = []

    async def h(msgs: list[MessageExt]) -> None:
        got.extend(msgs)

    c = PushConsumer(ns, "ferry-reads-cpp", h, consume_from="FIRST", rebalance_s=1.0,
                     **FAST_CLIENT)
    c.subscribe("CppToFerry")
    async with c:
        with trio.fail_after(20):
            while len(got) < 25:
                await trio.sleep(0.1)
    bodies = collections.Counter(m.body.decode() for m in got)
    assert all(bodies[f"cpp-{i}"] == 2 for i in range(5)) and len(bodies) == 20
    by_body = {m.body.decode(): m for m in got}
    m7 = by_body["cpp-7"]
    assert m7.tags == "odd" and m7.keys == ["cpp-key-7"] and m7.properties["seq"] == "7"
    assert {s["msg_id"] for s in sent} <= {m.msg_id for m in got}, "same ids on both sides"


async def test_ferrymq_producer_to_cpp_push_consumer(broker) -> None:
    ns = broker.address("namesrv")
    await create(ns, "FerryToCpp")
    async with Producer(ns, "pg", **FAST_CLIENT) as p:
        ids = []
        for i in range(12):
            r = await p.send(Message("FerryToCpp", f"ferry-{i}".encode(), tags="t",
                                     keys=f"fk{i}", properties={"seq": str(i)}))
            ids.append(r.msg_id)
        # a batch is one stored record: the C++ consumer must get single messages back
        batch = await p.send_batch([Message("FerryToCpp", f"batch-{i}".encode(), tags="t",
                                            properties={"seq": str(100 + i)})
                                    for i in range(8)])
    got = await trio.to_thread.run_sync(peer, "consume", ns, "FerryToCpp", "CID-cpp-reads", "20",
                                        "60")
    bodies = sorted(g["body"] for g in got)
    assert set(bodies) == {f"ferry-{i}" for i in range(12)} | {f"batch-{i}" for i in range(8)}
    assert {g["id"] for g in got} >= set(ids) | {b.msg_id for b in batch}
    b3 = next(g for g in got if g["body"] == "batch-3")
    assert b3["offset"] == batch[3].queue_offset and b3["seq"] == "103"
    g5 = next(g for g in got if g["body"] == "ferry-5")
    assert g5["tags"] == "t" and g5["keys"] == "fk5"
    async with Admin(ns, **FAST_CLIENT) as a:  # the C++ consumer committed its offsets
        lag = await a.group_lag("CID-cpp-reads", "FerryToCpp")
        assert sum(r.lag for r in lag) == 0 and sum(r.broker_offset for r in lag) == 20


async def test_cpp_producer_and_cpp_push_consumer_through_ferrymq(broker) -> None:
    ns = broker.address("namesrv")
    await create(ns, "CppRoundTrip")
    sent = await trio.to_thread.run_sync(peer, "produce", ns, "CppRoundTrip", "10",
                                         "--orderly", "42")
    assert len({s["msg_id"] for s in sent}) == 10
    got = await trio.to_thread.run_sync(peer, "consume", ns, "CppRoundTrip", "CID-rt", "5", "60",
                                        "--expression", "cpp")
    assert sorted(g["body"] for g in got) == [f"cpp-{i}" for i in range(0, 10, 2)], \
        "the tag filter passed only 'cpp' messages"
    assert len({g["queue"] for g in got}) == 1, "one sharding key: one queue"


async def test_cpp_push_consumer_retry_by_send_back(broker) -> None:
    ns = broker.address("namesrv")
    await create(ns, "CppRetry", 1)
    async with Producer(ns, "pg", **FAST_CLIENT) as p:
        for i in range(3):
            await p.send(Message("CppRetry", f"r{i}".encode()))
    got = await trio.to_thread.run_sync(peer, "consume", ns, "CppRetry", "CID-retry", "3", "60",
                                        "--fail-first", "r1")
    by_body = {g["body"]: g for g in got}
    assert set(by_body) == {"r0", "r1", "r2"}
    assert by_body["r1"]["reconsume"] >= 1, "r1 came back through %RETRY%CID-retry"


async def test_cpp_orderly_push_consumer_locks_queues(broker) -> None:
    ns = broker.address("namesrv")
    await create(ns, "CppOrderly")
    async with Producer(ns, "pg", **FAST_CLIENT) as p:
        for i in range(20):
            await p.send(Message("CppOrderly", f"o{i}".encode(), properties={"seq": str(i)}),
                         sharding_key="only-key")
    got = await trio.to_thread.run_sync(peer, "consume", ns, "CppOrderly", "CID-orderly", "20",
                                        "60", "--orderly")
    assert [int(g["seq"]) for g in got] == list(range(20)), "in order, under the broker lock"


async def test_cpp_delay_level_is_honoured(broker) -> None:
    """Message::setDelayTimeLevel(1) through the C++ client: stored as a timer, delivered
    1 s after it was sent (level 1 on this broker too), never before."""
    ns = broker.address("namesrv")
    await create(ns, "CppDelay", 1)
    got: list[MessageExt] = []

    async def h(msgs: list[MessageExt]) -> None:
        got.extend(msgs)

    c = PushConsumer(ns, "ferry-reads-delayed", h, consume_from="FIRST", rebalance_s=1.0,
                     **FAST_CLIENT)
    c.subscribe("CppDelay")
    async with c:
        sent = await trio.to_thread.run_sync(peer, "produce", ns, "CppDelay", "2",
                                             "--delay", "1")
        assert [s["status"] for s in sent] == [0, 0]
        with trio.fail_after(20):
            while len(got) < 2:
                await trio.sleep(0.1)
    for m in got:
        due = int(m.properties["TIMER_OUT_MS"])
        assert due - m.born_timestamp >= 1000 - 50, "level 1: one second after it was sent"
        assert m.store_timestamp >= due, "not before its time"
        assert "DELAY" not in m.properties


@pytest.fixture
def rocketmq_timed_broker(start_broker, tmp_path):  # type: ignore[no-untyped-def]
    """RocketMQ's 30 s registration period (not the fast one above): only the broker's
    answer to the heartbeat can make the retry topic routable in time."""
    conf = tmp_path / "b.toml"
    conf.write_text(FAST.replace("register_interval_s = 1.0", "register_interval_s = 30.0"))
    return start_broker("namesrv", "remoting", extra_args=("--config", str(conf)))


async def test_cpp_consumer_retries_come_back_once_its_group_is_known(
        rocketmq_timed_broker) -> None:  # type: ignore[no-untyped-def]
    """The group's first heartbeat creates %RETRY%<group> and registers it before it is
    answered. A C++ consumer of a brand-new group looked the retry topic up before that
    heartbeat, so it starts consuming retries at its own next route refresh and rebalance
    (3 s and 10 s in this client); a consumer of a known group finds the route when it
    starts, and a retry comes back after its delay level alone (1 s here). Figures are
    printed (`pytest -s`), never asserted."""
    ns = rocketmq_timed_broker.address("namesrv")
    await create(ns, "CppRetryRoute", 1)
    async with Producer(ns, "pg", **FAST_CLIENT) as p:
        await p.send(Message("CppRetryRoute", b"first"))
    got = await trio.to_thread.run_sync(peer, "consume", ns, "CppRetryRoute", "CID-new", "1",
                                        "60", "--fail-first", "first")
    first = {g["body"]: g for g in got}["first"]
    assert first["reconsume"] >= 1, "the retry came back through %RETRY%CID-new"
    print(f"\nnew group: the retry came back {first['at'] - first['first_seen']:.1f} s "
          "after the failure")
    async with Producer(ns, "pg", **FAST_CLIENT) as p:  # the same group, started again
        await p.send(Message("CppRetryRoute", b"second"))
    got = await trio.to_thread.run_sync(peer, "consume", ns, "CppRetryRoute", "CID-new", "1",
                                        "60", "--fail-first", "second")
    second = {g["body"]: g for g in got}["second"]
    assert second["reconsume"] >= 1
    print(f"known group: the retry came back {second['at'] - second['first_seen']:.1f} s "
          "after the failure")
