"""A broker process with timers and transactions in flight: the timer crash tests SIGKILL it.

Usage: python timer_crash_writer.py DATA_DIR RUN_ID

It opens the broker with sync flush, small segments and frequent checkpoints, then:
four tasks put timed messages (0.1-2.5 s ahead) into ``timed``; one puts timers and
cancels them at once; one prepares halves for ``txreal`` and commits, rolls back or
leaves them open. After each call returns (durable: sync flush) it prints a line:
``TIMER <id> <deliver ms>``, ``CANCEL <id>``, ``HALF <id> <offset>``, ``COMMIT <id>``,
``ROLLBACK <id>``.
"""

from __future__ import annotations

import random
import sys

import trio
from ferrymq.core import Broker, BrokerConfig, Message
from ferrymq.core.message import now_ms

TOPIC = "timed"
TX_TOPIC = "txreal"
QUEUES = 4


def config(data_dir: str) -> BrokerConfig:
    return BrokerConfig(data_dir=data_dir, flush="sync", segment_size=256 * 1024,
                        max_message_size=16 * 1024, cq_entries_per_file=1024, index_slots=1024,
                        index_entries=1 << 15, checkpoint_interval_ms=150,
                        timer_log_segment_entries=256, transaction_check_timeout_ms=3_600_000)


def out(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def main(data_dir: str, run: str) -> None:
    async with Broker.open(config(data_dir)) as broker:
        await broker.create_topic(TOPIC, QUEUES, exist_ok=True)
        await broker.create_topic(TX_TOPIC, 1, exist_ok=True)
        out("READY")

        async def timers(w: int) -> None:
            rng = random.Random(f"{run}-{w}")
            seq = 0
            while True:
                mid = f"{run}:{w}:{seq}"
                deliver = now_ms() + rng.randint(100, 2500)
                await broker.put(Message(TOPIC, mid.encode() + rng.randbytes(rng.choice((10, 500))),
                                         {"UNIQ_KEY": mid, "TIMER_DELIVER_MS": str(deliver)},
                                         queue_id=w % QUEUES))
                out(f"TIMER {mid} {deliver}")
                seq += 1
                await trio.sleep(rng.uniform(0, 0.004))

        async def cancels() -> None:
            rng = random.Random(f"{run}-c")
            seq = 0
            while True:
                mid = f"{run}:c:{seq}"
                await broker.put(Message(TOPIC, mid.encode(), {
                    "UNIQ_KEY": mid, "TIMER_DELAY_MS": str(rng.randint(300, 2000))}, queue_id=0))
                await broker.cancel_timer(mid)
                out(f"CANCEL {mid}")
                seq += 1
                await trio.sleep(rng.uniform(0, 0.02))

        async def transactions() -> None:
            rng = random.Random(f"{run}-t")
            seq = 0
            while True:
                mid = f"tx:{run}:{seq}"
                h = await broker.prepare(Message(TX_TOPIC, mid.encode(), {"UNIQ_KEY": mid}), "pg")
                out(f"HALF {mid} {h.physical_offset}")
                choice = rng.random()
                if choice < 0.5:
                    await broker.end_transaction(h, "commit", producer_group="pg")
                    out(f"COMMIT {mid}")
                elif choice < 0.8:
                    await broker.end_transaction(h.physical_offset, "rollback")
                    out(f"ROLLBACK {mid}")
                seq += 1
                await trio.sleep(rng.uniform(0, 0.01))

        async with trio.open_nursery() as nursery:
            for w in range(4):
                nursery.start_soon(timers, w)
            nursery.start_soon(cancels)
            nursery.start_soon(transactions)


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2])
