"""A broker process that changes state: the state-log crash test runs it and SIGKILLs it.

Usage: python state_writer.py DATA_DIR RUN_ID

Sync flush (``STATE_WRITER_FLUSH=async`` for async), small segments, frequent
checkpoints and state snapshots (so that kills land between every kind of step). At
start it prints what it recovered: ``SEEN_TOPIC <name>`` per topic and
``SEEN_COMMIT <group> <queue> <offset>`` per committed offset of the topic
``offsets``, then ``READY``. Then, concurrently, and
one line per acknowledgement (each printed only once the call returned):

- ``CREATED <topic> <queues>`` / ``DELETED <topic>``: topics created, some deleted again
  (``DELETING <topic>`` first: a delete in flight at the kill may or may not be there);
- ``GROUP <name>``: groups created;
- ``COMMIT <group> <queue> <offset>``: offsets committed (``commit_offset`` then
  ``wait_durable``, as the doors acknowledge one), increasing per queue;
- ``POPACK <offset>``: messages of ``popq`` popped and acked;
- messages put to ``filler`` keep the CommitLog rolling.
"""

from __future__ import annotations

import os
import random
import sys

import trio
from ferrymq.core import Broker, BrokerConfig, Message

COMMIT_TOPIC = "offsets"
COMMIT_QUEUES = 4
COMMITTERS = 3
POP_TOPIC = "popq"
POP_GROUP = "poppers"


def config(data_dir: str) -> BrokerConfig:
    flush = os.environ.get("STATE_WRITER_FLUSH", "sync")  # a process crash loses nothing in either
    return BrokerConfig(data_dir=data_dir, flush=flush, segment_size=256 * 1024,
                        max_message_size=16 * 1024, cq_entries_per_file=512, index_slots=512,
                        index_entries=4096, checkpoint_interval_ms=200,
                        state_snapshot_records=300, state_snapshot_interval_s=0.5)


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(data_dir: str, run: str) -> None:
    async with Broker.open(config(data_dir)) as broker:
        await broker.create_topic(COMMIT_TOPIC, COMMIT_QUEUES, exist_ok=True)
        await broker.create_topic(POP_TOPIC, 1, exist_ok=True)
        await broker.create_topic("filler", 2, exist_ok=True)
        for t in broker.topics():
            say(f"SEEN_TOPIC {t.name}")
        for w in range(COMMITTERS):
            for q in range(COMMIT_QUEUES):
                off = broker.committed_offset(f"committer{w}", COMMIT_TOPIC, q)
                if off is not None:
                    say(f"SEEN_COMMIT committer{w} {q} {off}")
        say("READY")
        rng = random.Random(run)

        async def creator() -> None:
            made: list[str] = []
            i = 0
            while True:
                name = f"{run}-t{i}"
                queues = 1 + i % 4
                await broker.create_topic(name, queues)
                say(f"CREATED {name} {queues}")
                made.append(name)
                if i % 5 == 4:
                    victim = made.pop(rng.randrange(len(made)))
                    say(f"DELETING {victim}")  # from here on it may be gone, acked or not
                    await broker.delete_topic(victim)
                    say(f"DELETED {victim}")
                i += 1

        async def grouper() -> None:
            i = 0
            while True:
                name = f"{run}-g{i}"
                await broker.create_group(name, max_reconsume_times=i % 16)
                say(f"GROUP {name}")
                i += 1

        async def committer(w: int) -> None:
            group = f"committer{w}"
            while True:
                q = rng.randrange(COMMIT_QUEUES)
                off = (broker.committed_offset(group, COMMIT_TOPIC, q) or 0) + 1
                broker.commit_offset(group, COMMIT_TOPIC, q, off)
                await broker.wait_durable()
                say(f"COMMIT {group} {q} {off}")
                if not broker.sync_flush:
                    # A client's round trip: unpaced, async-flush commits (nothing to
                    # wait for) would fill this test's tiny files by the thousand.
                    await trio.sleep(0.001)

        async def popper() -> None:
            while True:
                await broker.put(Message(POP_TOPIC, b"p"))
                for p in await broker.pop(POP_GROUP, POP_TOPIC, 4, 60_000):
                    broker.ack(p.receipt)
                    await broker.wait_durable()
                    say(f"POPACK {p.message.queue_offset}")

        async def filler() -> None:
            while True:
                await broker.put(Message("filler", rng.randbytes(rng.choice((100, 3000)))))
                await trio.lowlevel.checkpoint()  # an async-flush put never yields

        async with trio.open_nursery() as nursery:
            nursery.start_soon(creator)
            nursery.start_soon(grouper)
            for w in range(COMMITTERS):
                nursery.start_soon(committer, w)
            nursery.start_soon(popper)
            nursery.start_soon(filler)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
