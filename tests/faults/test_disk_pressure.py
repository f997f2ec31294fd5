"""Disk pressure never deletes unconsumed, unexpired data by default (issue 12, item 4;
docs/operations.md, "Disk").

The finding: with ``max_disk_ratio`` 0.75, once another file filled the disk,
retention deleted acknowledged, unconsumed, unexpired messages (520 of 1,200 within
13 s), logged at INFO only. Now, above the high watermark producers' writes are
refused with DiskPressure (each door's own error: tests/faults/test_disk_pressure_doors.py)
and nothing is deleted; consumers keep reading and committing; writes resume below the
low watermark. RocketMQ's "delete the oldest" is there when configured, and says what
each deleted segment held that groups had not consumed.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest
import storefaults as sf
import trio
from ferrymq.core import Broker, Message
from ferrymq.core import broker as broker_module
from ferrymq.core.errors import DiskPressure

SMALL = dict(segment_size=80 << 10, max_message_size=16 << 10)


async def write(b: Broker, n: int) -> None:
    """``n`` messages of 200 bytes over two queues, then a state snapshot (so that
    retention may delete the segments: the state records are in the snapshot)."""
    await b.create_topic(sf.TOPIC, 2, exist_ok=True)
    for i in range(n):
        await b.put(Message(sf.TOPIC, sf.body(i) * 2, queue_id=i % 2))
    await b.state.snapshot()


def stored(b: Broker) -> int:
    return sum(hi - lo for lo, hi in (b.queue_bounds(sf.TOPIC, q) for q in range(2)))


async def test_a_disk_above_the_watermark_refuses_writes_and_deletes_nothing(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The finding's setting, on this machine's real disk: a watermark far below its use
    (1%) stands for "another file filled the disk"."""
    data = tmp_path / "data"
    async with Broker.open(sf.config(data, **SMALL)) as b:
        await write(b, 1200)
    segments = sf.segments(data)
    assert len(segments) >= 4
    with caplog.at_level(logging.INFO, logger="ferrymq"):
        async with Broker.open(sf.config(data, max_disk_ratio=0.01, disk_resume_ratio=0.005,
                                         **SMALL)) as b:
            b.run_retention()
            b.check_disk()
            assert stored(b) == 1200, "nothing unconsumed and unexpired is deleted"
            assert sf.segments(data) == segments
            with pytest.raises(DiskPressure):
                await b.put(Message(sf.TOPIC, b"more"))
            assert not b.health().ready
            # Consumers drain: reads, commits (the state log) and their durability work.
            got = b.get("g", sf.TOPIC, 0, 0, 600, 1 << 20)
            assert len(list(got.messages(0))) == 600
            b.commit_offset("g", sf.TOPIC, 0, 600)
            await b.wait_durable()
            assert b.committed_offset("g", sf.TOPIC, 0) == 600
            assert "ferrymq_store_writes_refused 1\n" in b.metrics.render()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "max_disk_ratio" in r.getMessage()]
    assert any("writes are refused" in w for w in warnings), warnings


async def test_writes_resume_below_the_low_watermark_and_the_warning_repeats(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
        ) -> None:
    monkeypatch.setattr(broker_module, "_DISK_WARN_EVERY_S", 0.0)
    used = [80]
    async with Broker.open(sf.config(tmp_path / "data", max_disk_ratio=0.75,
                                     disk_resume_ratio=0.70)) as b:
        b.disk_usage = lambda: (used[0], 100)
        await write(b, 10)
        with caplog.at_level(logging.WARNING, logger="ferrymq.broker"):
            b.check_disk()
            with pytest.raises(DiskPressure) as refused:
                await b.put(Message(sf.TOPIC, b"x"))
            assert refused.value.retriable
            used[0] = 72  # below the high watermark, above the low one: still refused
            b.check_disk()
            with pytest.raises(DiskPressure):
                await b.put_kafka_batch(sf.TOPIC, 0, b"")
            used[0] = 69
            b.check_disk()
            await b.put(Message(sf.TOPIC, b"x"))
        lines = [r.getMessage() for r in caplog.records]
        assert sum("refused" in m and "still" in m for m in lines) == 1, lines
        assert any("writes resume (2 refused meanwhile)" in m for m in lines), lines


async def test_the_background_check_notices_by_itself(tmp_path: Path) -> None:
    used = [10]
    async with Broker.open(sf.config(tmp_path / "data", disk_check_interval_s=0.02)) as b:
        b.disk_usage = lambda: (used[0], 100)
        await write(b, 1)
        used[0] = 99
        with trio.fail_after(5):
            while b.health().ready:
                await trio.sleep(0.01)
        used[0] = 1
        with trio.fail_after(5):
            while not b.health().ready:
                await trio.sleep(0.01)
        await b.put(Message(sf.TOPIC, b"again"))


async def test_delete_oldest_deletes_and_says_what_each_segment_held_per_group(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with Broker.open(sf.config(tmp_path / "data", disk_full_policy="delete_oldest",
                                     **SMALL)) as b:
        await write(b, 1200)
        b.commit_offset("readers", sf.TOPIC, 0, 100)
        b.commit_offset("readers", sf.TOPIC, 1, 0)
        before = len(b.store.commitlog.segments)
        # 76% full, 74% once a segment is gone.
        b.disk_usage = lambda: (76 - 2 * (before - len(b.store.commitlog.segments)), 100)
        with caplog.at_level(logging.WARNING, logger="ferrymq.broker"):
            b.check_disk()  # above: the oldest segment goes (one segment's worth of excess)
        assert len(b.store.commitlog.segments) == before - 1
        assert b.health().ready, "deleting was enough: writes go on"
        (line,) = [r.getMessage() for r in caplog.records if "deleted the" in r.getMessage()]
        lo0, _ = b.queue_bounds(sf.TOPIC, 0)
        lo1, _ = b.queue_bounds(sf.TOPIC, 1)
        assert f"readers={lo0 - 100 + lo1}" in line, (line, lo0, lo1)


async def test_age_retention_logs_each_segment_it_deletes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async with Broker.open(sf.config(tmp_path / "data", retention_hours=1, **SMALL)) as b:
        await write(b, 1200)
        old = time.time() - 7200
        segs = b.store.commitlog.segments
        for s in segs[:2]:
            os.utime(s.path, (old, old))
        with caplog.at_level(logging.INFO, logger="ferrymq.store"):
            deleted = b.run_retention()
        assert len(deleted) == 2
        lines = [r.getMessage() for r in caplog.records if "retention deleted" in r.getMessage()]
        assert len(lines) == 2 and all("older than the retention time" in m for m in lines)
