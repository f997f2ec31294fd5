"""The checkpoint advances under steady load, and a restart never sends the next recovery
back to the start of the log (issue 12: "the checkpoint did not advance during several
seconds of steady production, so recovery after a kill scanned from offset 0").

The cause: the checkpoint written when a store opens recorded 0 as the previous
checkpoint (the store forgot the one it had recovered from), and recovery validates
from the previous checkpoint; until the second checkpoint of a process's life, a kill
meant a scan of the whole log.
"""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import storefaults as sf
import trio
from ferrymq.core import Broker, Message
from ferrymq.core.store.checkpoint import read_checkpoint


def crash_copy(data: Path, to: Path) -> Path:
    """The files as a SIGKILL would leave them now (abort marker included)."""
    shutil.copytree(data, to)
    (to / "store" / "lock").unlink(missing_ok=True)
    return to


async def produce(b: Broker, seconds: float) -> int:
    """Put messages for ``seconds``, yielding after each as a door's connection does."""
    n = 0
    with trio.move_on_after(seconds):
        while True:
            await b.put(Message(sf.TOPIC, sf.body(n)))
            n += 1
            await trio.sleep(0)
    return n


async def test_the_checkpoint_advances_under_continuous_production(tmp_path: Path) -> None:
    data = tmp_path / "data"
    seen: list[int] = []
    async with Broker.open(sf.config(data, checkpoint_interval_ms=100)) as b:
        await b.create_topic(sf.TOPIC, 2)
        async with trio.open_nursery() as n:
            n.start_soon(produce, b, 1.2)
            for _ in range(10):
                await trio.sleep(0.1)
                cp = read_checkpoint(str(data / "store"))
                assert cp is not None
                seen.append(cp.physical_offset)
    advances = sum(1 for a, b_ in itertools.pairwise(seen) if b_ > a)
    assert advances >= 4, seen
    assert seen == sorted(seen)


async def test_a_restart_keeps_the_checkpoint_it_recovered_from(tmp_path: Path) -> None:
    """The checkpoint a starting broker writes names the one it recovered from as the
    previous one: a kill right after a restart validates only the records since."""
    data = tmp_path / "data"
    async with Broker.open(sf.config(data, checkpoint_interval_ms=60_000)) as b:
        await b.create_topic(sf.TOPIC, 2)
        for i in range(2000):
            await b.put(Message(sf.TOPIC, sf.body(i)))
    before = read_checkpoint(str(data / "store"))
    assert before is not None and before.physical_offset > 0
    async with Broker.open(sf.config(data, checkpoint_interval_ms=60_000)) as b:
        at_open = read_checkpoint(str(data / "store"))
        assert at_open is not None
        assert at_open.previous_offset == before.physical_offset, (before, at_open)
        for i in range(100):
            await b.put(Message(sf.TOPIC, sf.body(i)))
        killed = crash_copy(data, tmp_path / "killed")
    async with Broker.open(sf.config(killed, checkpoint_interval_ms=60_000)) as b:
        r = b.recovery
        assert r is not None and not r.clean_shutdown
        assert r.validated_from >= before.physical_offset, r
