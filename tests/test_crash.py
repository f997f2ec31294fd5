"""Crash tests: a broker process writing with sync flush is SIGKILLed at random moments;
after every restart each acknowledged message must be at its acknowledged queue offset,
in order, with no offset missing or doubled."""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path

import pytest
import trio
from ferrymq.core import Broker

sys.path.insert(0, str(Path(__file__).parent))
import crash_writer
from writer_process import WriterProcess

WRITER = str(Path(__file__).parent / "crash_writer.py")


class Writer(WriterProcess):
    """One life of the writing broker; its acknowledgements as (queue, offset, count, tag)."""

    def __init__(self, data_dir: Path, run: str) -> None:
        super().__init__(WRITER, data_dir, run)

    @property
    def acks(self) -> list[tuple[int, int, int, str]]:
        return [(int(q), int(off), int(n), tag) for q, off, n, tag in self.of_kind("ACK")]

    def wait_for_acks(self, n: int) -> None:
        self.wait_for("ACK", n)


def read_everything(data_dir: Path) -> dict[int, list[tuple[int, bytes]]]:
    """Every message of every queue as (queue offset, body), through a recovering broker."""

    async def main() -> dict[int, list[tuple[int, bytes]]]:
        async with Broker.open(crash_writer.config(str(data_dir))) as b:
            out = {}
            for q in range(crash_writer.QUEUES):
                msgs, offset = [], 0
                lo, hi = b.queue_bounds(crash_writer.TOPIC, q)
                assert lo == 0
                while offset < hi:
                    g = b.get(None, crash_writer.TOPIC, q, offset, 1000, 8 << 20)
                    msgs += [(m.queue_offset, m.body) for m in g.messages(offset)]
                    offset = g.next_offset
                out[q] = msgs
            return out

    return trio.run(main)


def check(data_dir: Path, acks: list[tuple[int, int, int, str]]) -> None:
    stored = read_everything(data_dir)
    tags_at = {}
    for q, msgs in stored.items():
        offsets = [off for off, _ in msgs]
        assert offsets == list(range(len(offsets))), f"queue {q}: offsets missing or doubled"
        seen = set()
        last_seq: dict[str, int] = {}
        for off, body in msgs:
            tag = body.split(b":", 3)
            run, w, seq = tag[0].decode(), tag[1].decode(), int(tag[2])
            key = f"{run}:{w}:{seq}"
            assert key not in seen, f"{key} stored twice"
            seen.add(key)
            if f"{run}:{w}" in last_seq:
                assert seq > last_seq[f"{run}:{w}"], f"{key} out of order in queue {q}"
            last_seq[f"{run}:{w}"] = seq
            tags_at[(q, off)] = key
    for q, off, n, first in acks:
        run, w, seq = first.split(":")
        for i in range(n):
            want = f"{run}:{w}:{int(seq) + i}"
            assert tags_at.get((q, off + i)) == want, \
                f"acknowledged {want} is not at queue {q} offset {off + i}"


@pytest.mark.slow
def test_acknowledged_messages_survive_repeated_sigkill(tmp_path) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random(os.environ.get("CRASH_SEED", "ferrymq"))
    acks: list[tuple[int, int, int, str]] = []
    for cycle in range(12):
        w = Writer(data_dir, f"r{cycle}")
        w.wait_for_acks(1)  # the writers are running: now kill at a random moment
        time.sleep(rng.uniform(0.0, 0.5))
        w.kill()
        acks += w.acks
    check(data_dir, acks)
    assert len(acks) > 100
    assert len(os.listdir(data_dir / "store" / "commitlog")) > 2, "segments rolled"


@pytest.mark.slow
def test_a_cut_and_garbage_tail_is_truncated_and_the_broker_serves_again(tmp_path) -> None:
    data_dir = tmp_path / "data"
    w = Writer(data_dir, "first")
    w.wait_for_acks(300)
    w.kill()
    seg_dir = data_dir / "store" / "commitlog"
    # The newest segment holding data (a segment may have just been rolled, empty):
    # cut that file inside its last record.
    for name in sorted(os.listdir(seg_dir), reverse=True):
        last = seg_dir / name
        data = last.read_bytes()
        end = len(data.rstrip(b"\x00"))
        if end > 100:
            break
        os.unlink(last)
    os.truncate(last, end - 50)
    with open(last, "ab") as f:
        f.write(os.urandom(4096))
    # The acknowledged messages before the damaged record must all be there; the one in
    # the damaged record is gone by construction, so only earlier acks are checked.
    stored = read_everything(data_dir)
    total = sum(len(m) for m in stored.values())
    assert total > 0
    surviving = [a for a in w.acks if any(off == a[1] for off, _ in stored[a[0]])]
    assert len(surviving) >= len(w.acks) - 8  # at most the writers' last, torn record
    check(data_dir, surviving)
    w2 = Writer(data_dir, "second")
    w2.wait_for_acks(50)
    w2.kill()
    check(data_dir, surviving + w2.acks)
