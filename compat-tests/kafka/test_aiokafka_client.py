"""aiokafka (asyncio) against FerryMQ's Kafka door, at the client's default settings."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

TOPIC = "aio-topic"
GROUP = "aio-group"


async def until(check, timeout: float = 40.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


class Member:
    def __init__(self, bootstrap: str, name: str) -> None:
        self.consumer = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=GROUP,
                                         client_id=name, auto_offset_reset="earliest")
        self.records: list = []
        self.task: asyncio.Task | None = None

    @property
    def assigned(self) -> set[int]:
        return {tp.partition for tp in self.consumer.assignment()}

    async def start(self) -> None:
        await self.consumer.start()
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            for batch in (await self.consumer.getmany(timeout_ms=100)).values():
                self.records.extend(batch)

    async def stop(self) -> None:
        assert self.task is not None
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.consumer.stop()  # commits and leaves the group


async def scenario(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, 2, 1)])
    assert TOPIC in await admin.list_topics()

    sent = []
    for codec in (None, "gzip", "lz4", "zstd"):
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, compression_type=codec)
        await producer.start()
        for i in range(5):
            md = await producer.send_and_wait(TOPIC, key=f"{codec}-{i}".encode(),
                                              value=f"v-{codec}-{i}".encode(),
                                              headers=[("codec", str(codec).encode())])
            sent.append((md.partition, md.offset))
        await producer.stop()
    assert len(set(sent)) == 20

    a = Member(bootstrap, "member-a")
    await a.start()
    await until(lambda: a.assigned == {0, 1}, what="first member owns both partitions")
    b = Member(bootstrap, "member-b")
    await b.start()
    await until(lambda: len(a.assigned) == 1 and len(b.assigned) == 1, what="rebalance on join")
    await until(lambda: len(a.records) + len(b.records) >= 20, what="all records")
    got = {(r.key, r.value, tuple(r.headers)) for r in a.records + b.records}
    assert got == {(f"{c}-{i}".encode(), f"v-{c}-{i}".encode(), (("codec", str(c).encode()),))
                   for c in (None, "gzip", "lz4", "zstd") for i in range(5)}

    groups = await admin.list_consumer_groups()
    assert (GROUP, "consumer") in groups
    described = await admin.describe_consumer_groups([GROUP])
    assert "Stable" in str(described) and "member-a" in str(described)

    await b.stop()
    await until(lambda: a.assigned == {0, 1}, what="rebalance on leave")
    await a.stop()

    ends = {p: max(o for q, o in sent if q == p) + 1 for p, _ in sent}
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    for i in range(4):
        await producer.send_and_wait(TOPIC, value=f"late-{i}".encode(), partition=i % 2)
    await producer.stop()
    again = AIOKafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=GROUP,
                             auto_offset_reset="earliest")
    await again.start()
    late: list = []

    async def read() -> None:
        while len(late) < 4:
            for batch in (await again.getmany(timeout_ms=200)).values():
                late.extend(batch)
    await asyncio.wait_for(read(), 40)
    assert sorted(r.value for r in late) == [f"late-{i}".encode() for i in range(4)]
    for p, end in ends.items():
        assert await again.committed(TopicPartition(TOPIC, p)) >= end
    await again.stop()

    await admin.delete_topics([TOPIC])
    assert TOPIC not in await admin.list_topics()
    await admin.close()


@pytest.mark.slow
def test_aiokafka_end_to_end(bootstrap) -> None:
    asyncio.run(scenario(bootstrap))
