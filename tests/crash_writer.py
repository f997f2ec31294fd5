"""A broker process that writes: the crash tests run it and SIGKILL it.

Usage: python crash_writer.py DATA_DIR RUN_ID

It opens the broker with sync flush and small segments, then 8 writer tasks put
messages continuously (some single, some batches of 3, sizes varying so that
segments roll often). After each put returns, i.e. once the message is durable,
it prints one line: ``ACK <queue id> <queue offset> <count> <run>:<writer>:<seq>``.
"""

from __future__ import annotations

import random
import sys

import trio
from ferrymq.core import Broker, BrokerConfig, Message

TOPIC = "crash"
QUEUES = 4
WRITERS = 8


def config(data_dir: str) -> BrokerConfig:
    return BrokerConfig(data_dir=data_dir, flush="sync", segment_size=256 * 1024,
                        max_message_size=16 * 1024, cq_entries_per_file=512, index_slots=512,
                        index_entries=4096, checkpoint_interval_ms=200)


def body(tag: str, rng: random.Random) -> bytes:
    return tag.encode() + b":" + rng.randbytes(rng.choice((10, 100, 700, 3000)))


async def main(data_dir: str, run: str) -> None:
    async with Broker.open(config(data_dir)) as broker:
        await broker.create_topic(TOPIC, QUEUES, exist_ok=True)
        print("READY", flush=True)

        async def writer(w: int) -> None:
            rng = random.Random(f"{run}-{w}")
            seq = 0
            while True:
                if w % 3 == 0:
                    tags = [f"{run}:{w}:{seq + i}" for i in range(3)]
                    r = await broker.put([Message(TOPIC, body(t, rng), {"KEYS": t},
                                                  queue_id=w % QUEUES) for t in tags])
                else:
                    tags = [f"{run}:{w}:{seq}"]
                    r = await broker.put(Message(TOPIC, body(tags[0], rng), {"KEYS": tags[0]},
                                                 queue_id=w % QUEUES))
                sys.stdout.write(f"ACK {r.queue_id} {r.queue_offset} {r.count} {tags[0]}\n")
                sys.stdout.flush()
                seq += len(tags)

        async with trio.open_nursery() as nursery:
            for w in range(WRITERS):
                nursery.start_soon(writer, w)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
