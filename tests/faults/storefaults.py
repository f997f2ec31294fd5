"""Helpers of the fault suite: a broker's data directory filled in-process, its files
damaged on purpose, and everything read back.

Every message written here has a body that names it (``m<number>``, padded to
``BODY_BYTES``), so a read-back can say exactly which messages are there, which
are missing and which came back changed.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import trio
from ferrymq.core import Broker, BrokerConfig, Message

TOPIC = "faults"
QUEUES = 4
BODY_BYTES = 100
SEGMENT = 1 << 20  # FILL messages take four segments
FILL = 20_000


def config(data_dir: Path | str, **over: object) -> BrokerConfig:
    base: dict[str, object] = dict(
        data_dir=str(data_dir), segment_size=SEGMENT, max_message_size=64 << 10,
        checkpoint_interval_ms=200, state_snapshot_interval_s=3600,
        retention_check_interval_s=3600)
    base.update(over)
    return BrokerConfig(**base)  # type: ignore[arg-type]


def body(n: int) -> bytes:
    return f"m{n}".encode().ljust(BODY_BYTES, b".")


def number(b: bytes) -> int:
    return int(b.split(b".", 1)[0][1:])


@dataclass(frozen=True)
class Written:
    """Where each message landed: (queue, offset) -> number, and each record's place."""

    at: dict[tuple[int, int], int]
    records: list[tuple[int, int, int, int, int]]  # (phys, size, queue, offset, count)


def fill(data_dir: Path, n: int = FILL, batch_every: int = 10, keys: bool = False,
         **over: object) -> Written:
    """Write ``n`` messages (every ``batch_every``-th put a batch of 3) round-robin over
    the topic's queues and shut the broker down cleanly; ``keys``: each message has the
    key ``k<number>`` (so the key index holds them)."""

    async def main() -> Written:
        at: dict[tuple[int, int], int] = {}
        records = []
        async with Broker.open(config(data_dir, **over)) as b:
            await b.create_topic(TOPIC, QUEUES, exist_ok=True)
            i = put = 0
            while i < n:
                q = put % QUEUES
                if batch_every and put % batch_every == batch_every - 1 and i + 3 <= n:
                    msgs = [Message(TOPIC, body(i + k), {"KEYS": f"k{i + k}"} if keys else {},
                                    queue_id=q) for k in range(3)]
                    r = await b.put(msgs)
                else:
                    msgs = [Message(TOPIC, body(i), {"KEYS": f"k{i}"} if keys else {},
                                    queue_id=q)]
                    r = await b.put(msgs[0])
                for k in range(len(msgs)):
                    at[(r.queue_id, r.queue_offset + k)] = i + k
                records.append((r.physical_offset, 0, r.queue_id, r.queue_offset, len(msgs)))
                i += len(msgs)
                put += 1
                if put % 100 == 0:
                    # A put under async flush does not yield; a door's connection does
                    # (socket I/O): so does this loop, and the checkpoints run.
                    await trio.sleep(0)
            # Two checkpoints at the end: the next recovery validates only the last
            # few records (what it does after a clean stop of a long-running broker).
            await trio.to_thread.run_sync(b.store.checkpoint)
            await b.create_group("fill-done", exist_ok=True)
            await trio.to_thread.run_sync(b.store.checkpoint)
        # The records' sizes, from where the next one starts (same topic, no others
        # in between but state records, which are skipped by offset order).
        return Written(at, records)

    return trio.run(main)


@dataclass
class ReadBack:
    """What ``read_all`` found: the messages, the store's damage counts, the metrics."""

    messages: dict[tuple[int, int], bytes]
    damage: object
    metrics: str


def read_all(data_dir: Path, **over: object) -> ReadBack:
    """Every message of the topic as {(queue, offset): body}, through a broker that
    recovers the directory; with its damage statistics and metrics after the reads."""

    async def main() -> ReadBack:
        out: dict[tuple[int, int], bytes] = {}
        async with Broker.open(config(data_dir, **over)) as b:
            for q in range(QUEUES):
                lo, hi = b.queue_bounds(TOPIC, q)
                off = lo
                while off < hi:
                    g = b.get(None, TOPIC, q, off, 500, 8 << 20)
                    for m in g.messages(off):
                        out[(q, m.queue_offset)] = m.body
                    assert g.next_offset > off or not g.records, "a read made no progress"
                    if g.next_offset <= off:
                        break
                    off = g.next_offset
            return ReadBack(out, getattr(b.store, "damage", None), b.metrics.render())

    return trio.run(main)


def segments(data_dir: Path) -> list[Path]:
    d = data_dir / "store" / "commitlog"
    return sorted(d / n for n in os.listdir(d))


def flip(path: Path, at: int, n: int) -> None:
    """Invert ``n`` bytes of ``path`` from byte ``at`` on."""
    with open(path, "r+b") as f:
        f.seek(at)
        raw = f.read(n)
        f.seek(at)
        f.write(bytes(b ^ 0xFF for b in raw))


def records_in(data_dir: Path) -> list[tuple[int, int, str, int, int, int]]:
    """Every record of the log as (phys, size, topic, queue, offset, count), read with
    the store's own walk on a copy (the directory is not touched)."""
    from ferrymq.core.store.commitlog import CommitLog
    from ferrymq.protocols.record import FORMAT_NATIVE_BATCH, count_members

    cl = CommitLog(str(data_dir / "store" / "commitlog"), SEGMENT)
    cl.open()
    out = []
    try:
        for item in cl.scan(cl.min_offset):
            count = count_members(item.body) if item.sys_flag & FORMAT_NATIVE_BATCH else 1
            out.append((item.physical_offset, item.total_size, item.topic, item.queue_id,
                        item.queue_offset, count))
    finally:
        cl.close()
    return out


def messages_of(recs: Iterable[tuple[int, int, str, int, int, int]], lo: int, hi: int
                ) -> set[tuple[int, int]]:
    """(queue, offset) of every message of TOPIC whose record overlaps bytes [lo, hi)."""
    out = set()
    for phys, size, topic, q, off, count in recs:
        if topic == TOPIC and phys < hi and phys + size > lo:
            out.update((q, off + k) for k in range(count))
    return out


def copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    (dst / "store" / "lock").unlink(missing_ok=True)
    return dst
