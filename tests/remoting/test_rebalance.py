"""Rebalancing a clustering group hands queues over without rewinding anyone.

RocketMQ's RebalanceImpl: a member that gives a queue up persists its offset once,
while it still owns it, and forgets it; a member that takes a queue reads the group's
committed offset from the broker (computePullFromWhere), never a value it held before.
FerryMQ's client also holds the broker's queue lock while it consumes a queue and
finishes the batch in hand before it lets go, so a clean handover (a member joining or
leaving) delivers no message twice.
"""

from __future__ import annotations

import collections

import anyio
import pytest
import trio
from ferrymq.clients import Admin, Message, Producer, PullConsumer, PushConsumer
from ferrymq.clients.message import MessageExt
from ferrymq.protocols.remoting.bodies import MessageQueue

from .conftest import FAST_CLIENT, FAST_PUSH


async def wait_for(pred, timeout: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(timeout):
        while not pred():
            await trio.sleep(0.05)


class Group:
    """Members of one consumer group, each recording what its handler got."""

    def __init__(self, ns: str, group: str, topic: str) -> None:
        self.ns, self.group, self.topic = ns, group, topic
        self.seen: dict[str, list[bytes]] = collections.defaultdict(list)

    def member(self, name: str, work_s: float = 0.0) -> PushConsumer:
        async def handle(msgs: list[MessageExt]) -> None:
            for m in msgs:
                self.seen[name].append(m.body)
            if work_s:
                await anyio.sleep(work_s)  # a handler busy after it recorded: never cut short
        c = PushConsumer(self.ns, self.group, handle, consume_from="FIRST", **FAST_PUSH)
        c.subscribe(self.topic)
        return c

    def queues_of(self, c: PushConsumer) -> set[MessageQueue]:
        return {q for q in c.assigned if q.topic == self.topic}


async def committed(ns: str, group: str, mq: MessageQueue) -> int | None:
    async with PullConsumer(ns, group, **FAST_CLIENT) as pc:
        await pc.queues(mq.topic)  # learns the broker's address
        return await pc.committed(mq)


async def split_between(g: Group, a: PushConsumer, b: PushConsumer, n_queues: int
                        ) -> MessageQueue:
    """Wait until a and b share the topic's queues; the queue b took from a."""
    await wait_for(lambda: len(g.queues_of(a)) + len(g.queues_of(b)) == n_queues
                   and g.queues_of(b) and g.queues_of(a).isdisjoint(g.queues_of(b)))
    return sorted(g.queues_of(b), key=lambda q: q.queueId)[0]


async def test_a_queue_taken_back_resumes_from_the_groups_committed_offset(native) -> None:
    ns = native.address("namesrv")
    async with Admin(ns, **FAST_CLIENT) as admin:
        await admin.create_topic("TakeBack", 2)
    g = Group(ns, "take-back", "TakeBack")
    async with Producer(ns, "pg", **FAST_CLIENT) as p, trio.open_nursery() as nursery:
        a = g.member("a")
        await nursery.start(a.run)
        await wait_for(lambda: len(g.queues_of(a)) == 2)
        b = g.member("b")
        await nursery.start(b.run)
        q = await split_between(g, a, b, 2)
        moved = [f"while-b-owned-{i}".encode() for i in range(10)]
        for body in moved:
            await p.send(Message("TakeBack", body), queue=q)
        await wait_for(lambda: len(g.seen["b"]) == 10)
        await b.shutdown()  # a takes the queue back
        await wait_for(lambda: q in a.assigned)
        await p.send(Message("TakeBack", b"after-b-left"), queue=q)
        await wait_for(lambda: b"after-b-left" in g.seen["a"])
        await a.shutdown()
    redelivered = [m for m in g.seen["a"] if m in moved]
    assert redelivered == [], f"{len(redelivered)} of 10 consumed by b came again to a"


async def test_shutdown_persists_only_the_queues_still_owned(native) -> None:
    ns = native.address("namesrv")
    async with Admin(ns, **FAST_CLIENT) as admin:
        await admin.create_topic("Owned", 2)
    g = Group(ns, "owned", "Owned")
    async with Producer(ns, "pg", **FAST_CLIENT) as p, trio.open_nursery() as nursery:
        a = g.member("a")
        await nursery.start(a.run)
        await wait_for(lambda: len(g.queues_of(a)) == 2)
        b = g.member("b")
        await nursery.start(b.run)
        q = await split_between(g, a, b, 2)
        for i in range(10):
            await p.send(Message("Owned", f"o{i}".encode()), queue=q)
        await wait_for(lambda: len(g.seen["b"]) == 10)
        with trio.fail_after(10):
            while await committed(ns, "owned", q) != 10:
                await trio.sleep(0.1)
        await a.shutdown()  # a owned q once: it must not write its old offset back
        assert await committed(ns, "owned", q) == 10, "a rewound b's queue at shutdown"
        await b.shutdown()


async def test_members_joining_and_leaving_consume_every_message_once(native) -> None:
    """Three members join and leave one by one while a producer sends: every message is
    consumed, and none twice (no crash: every handover is clean)."""
    ns = native.address("namesrv")
    async with Admin(ns, **FAST_CLIENT) as admin:
        await admin.create_topic("Handover", 6)
    g = Group(ns, "handover", "Handover")
    sent: list[bytes] = []
    stop, stopped = trio.Event(), trio.Event()

    async def produce(p: Producer) -> None:
        while not stop.is_set():
            body = f"h{len(sent)}".encode()
            await p.send(Message("Handover", body))
            sent.append(body)
            await trio.sleep(0.003)
        stopped.set()

    def all_seen() -> bool:
        return set(sent) <= {b for bodies in g.seen.values() for b in bodies}

    async with Producer(ns, "pg", **FAST_CLIENT) as p, trio.open_nursery() as nursery:
        nursery.start_soon(produce, p)
        c1 = g.member("c1", work_s=0.01)
        await nursery.start(c1.run)
        await wait_for(lambda: len(sent) > 100)
        c2 = g.member("c2", work_s=0.01)
        await nursery.start(c2.run)
        await wait_for(lambda: g.queues_of(c2) and len(g.seen["c2"]) > 20)
        c3 = g.member("c3", work_s=0.01)
        await nursery.start(c3.run)
        await wait_for(lambda: g.queues_of(c3) and len(g.seen["c3"]) > 20)
        await c1.shutdown()
        n = len(sent)
        await wait_for(lambda: len(sent) > n + 150)
        await c2.shutdown()
        n = len(sent)
        await wait_for(lambda: len(sent) > n + 150)
        c1 = g.member("c1-again", work_s=0.01)
        await nursery.start(c1.run)
        await wait_for(lambda: len(g.seen["c1-again"]) > 20)
        stop.set()
        await stopped.wait()
        await wait_for(all_seen, 30)
        await c1.shutdown()
        await c3.shutdown()
    every = collections.Counter(b for bodies in g.seen.values() for b in bodies)
    assert set(every) == set(sent), f"lost: {sorted(set(sent) - set(every))[:10]}"
    twice = {b: n for b, n in every.items() if n > 1}
    assert not twice, f"{len(twice)} of {len(sent)} messages consumed more than once"
    assert all(g.seen[c] for c in ("c1", "c2", "c3", "c1-again")), "every member had a share"


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_handover_runs_under_asyncio_and_trio(native, backend: str) -> None:
    """The same handover (lock, committed offset, release) on either event loop."""
    ns = native.address("namesrv")
    topic = f"Handover{backend}"

    async def main() -> tuple[dict[str, list[bytes]], list[bytes]]:
        async with Admin(ns, **FAST_CLIENT) as admin:
            await admin.create_topic(topic, 2)
        g = Group(ns, f"handover-{backend}", topic)
        sent: list[bytes] = []
        async with Producer(ns, "pg", **FAST_CLIENT) as p, anyio.create_task_group() as tg:
            async def send(n: int) -> None:
                for _ in range(n):
                    body = f"m{len(sent)}".encode()
                    await p.send(Message(topic, body))
                    sent.append(body)

            a = g.member("a")
            await tg.start(a.run)
            await send(10)
            b = g.member("b")
            await tg.start(b.run)
            with anyio.fail_after(20):
                while not (g.queues_of(a) and g.queues_of(b)):
                    await anyio.sleep(0.05)
            await send(10)
            await b.shutdown()
            await send(10)
            with anyio.fail_after(20):
                while not set(sent) <= {m for ms in g.seen.values() for m in ms}:
                    await anyio.sleep(0.05)
            await a.shutdown()
        return g.seen, sent

    seen, sent = anyio.run(main, backend=backend)
    every = collections.Counter(m for ms in seen.values() for m in ms)
    assert set(every) == set(sent) and max(every.values()) == 1
