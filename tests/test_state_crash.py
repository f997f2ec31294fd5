"""Crash tests of the state log: a broker process creating and deleting topics and groups,
committing offsets and acking pops under sync flush is SIGKILLed at random moments; after
every restart each acknowledged change is there (docs/storage.md, "The state log")."""

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
import state_writer
from writer_process import WriterProcess

WRITER = str(Path(__file__).parent / "state_writer.py")
CYCLES = 10


class History:
    """What every life of the writer acknowledged, and what the next one saw."""

    def __init__(self) -> None:
        self.topics: dict[str, int] = {}  # acknowledged, not deleted since: queues
        self.deleted: set[str] = set()
        self.groups: set[str] = set()
        self.commits: dict[tuple[str, int], int] = {}  # highest acknowledged
        self.popacks: set[int] = set()

    def absorb(self, w: WriterProcess) -> None:
        for kind, *rest in (line for line in list(w.lines) if line):
            if kind == "CREATED":
                self.topics[rest[0]] = int(rest[1])
            elif kind == "DELETING":
                self.topics.pop(rest[0], None)  # acknowledged or not, it may be gone now
            elif kind == "DELETED":
                self.topics.pop(rest[0], None)
                self.deleted.add(rest[0])
            elif kind == "GROUP":
                self.groups.add(rest[0])
            elif kind == "COMMIT":
                key = (rest[0], int(rest[1]))
                self.commits[key] = max(self.commits.get(key, 0), int(rest[2]))
            elif kind == "POPACK":
                self.popacks.add(int(rest[0]))

    def check_seen(self, w: WriterProcess, cycle: int) -> None:
        """What the next life recovered holds every acknowledged change."""
        seen = {p[0] for p in w.of_kind("SEEN_TOPIC")}
        missing = set(self.topics) - seen
        assert not missing, f"cycle {cycle}: acknowledged topics lost: {sorted(missing)[:5]}"
        back = self.deleted & seen
        assert not back, f"cycle {cycle}: deleted topics came back: {sorted(back)[:5]}"
        commits = {(g, int(q)): int(o) for g, q, o in w.of_kind("SEEN_COMMIT")}
        for key, off in self.commits.items():
            assert commits.get(key, -1) >= off, \
                f"cycle {cycle}: {key} committed {off}, recovered {commits.get(key)}"


def check_final(data_dir: Path, h: History) -> None:
    async def main() -> None:
        async with Broker.open(state_writer.config(str(data_dir))) as b:
            for name, queues in h.topics.items():
                assert b.topic(name).queues == queues
            assert not h.deleted & {t.name for t in b.topics()}
            for g in h.groups:
                assert b.group(g).name == g
            for (g, q), off in h.commits.items():
                assert b.committed_offset(g, state_writer.COMMIT_TOPIC, q) >= off
            [status] = b.pop_status(state_writer.POP_GROUP, state_writer.POP_TOPIC)
            qs = b.pop_service.queues[(state_writer.POP_GROUP, state_writer.POP_TOPIC, 0)]
            for off in h.popacks:
                assert off < status.pop_offset and off not in qs.leases, \
                    f"acked pop of offset {off} is leased again"

    trio.run(main)


@pytest.mark.slow
@pytest.mark.parametrize("flush", ["sync", "async"])
def test_acknowledged_state_changes_survive_repeated_sigkill(tmp_path, monkeypatch,
                                                            flush) -> None:
    """Sync flush as the issue asks; async flush too, since a process crash (not a
    power cut) must lose nothing acknowledged there either."""
    monkeypatch.setenv("STATE_WRITER_FLUSH", flush)
    data_dir = tmp_path / "data"
    rng = random.Random(os.environ.get("CRASH_SEED", "ferrymq-state"))
    h = History()
    for cycle in range(CYCLES):
        w = WriterProcess(WRITER, data_dir, f"r{cycle}")
        h.check_seen(w, cycle)
        w.wait_for("COMMIT", 20)  # every writer is running: kill at a random moment
        time.sleep(rng.uniform(0.0, 0.5))
        w.kill()
        h.absorb(w)
    check_final(data_dir, h)
    print(f"\n{len(h.topics)} topics, {len(h.deleted)} deleted, {len(h.groups)} groups, "
          f"{sum(h.commits.values())} commits, {len(h.popacks)} pop acks acknowledged")
    assert len(h.topics) > 50 and h.deleted and len(h.groups) > 50 and len(h.popacks) > 20
    assert len(os.listdir(data_dir / "store" / "commitlog")) > 2, "segments rolled"
    assert len(os.listdir(data_dir / "state")) >= 1, "snapshots were taken"
