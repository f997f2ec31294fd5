"""Crash tests for timers and transactions: a broker process with timers pending, halves
open and deliveries under way is SIGKILLed at random moments, again and again. After
the last life a broker runs until every timer is due, then: every acknowledged timer
was delivered exactly once and not before its time, no cancelled timer was delivered,
every committed transaction is visible exactly once, no rolled-back one ever, and the
halves left open are still open (and commit exactly once)."""

from __future__ import annotations

import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import trio
from ferrymq.core import Broker
from ferrymq.core.errors import TransactionAlreadyEnded
from ferrymq.core.message import now_ms

sys.path.insert(0, str(Path(__file__).parent))
import timer_crash_writer as writer
from timer_helpers import read_topic
from writer_process import WriterProcess

WRITER = str(Path(__file__).parent / "timer_crash_writer.py")


@pytest.mark.slow
def test_timers_and_transactions_survive_repeated_sigkill(tmp_path) -> None:
    data_dir = tmp_path / "data"
    rng = random.Random(os.environ.get("CRASH_SEED", "ferrymq-timers"))
    lines: list[list[str]] = []
    for cycle in range(8):
        life = WriterProcess(WRITER, data_dir, f"r{cycle}")
        life.wait_for("TIMER", 20)
        life.wait_for("HALF", 2)
        time.sleep(rng.uniform(0.0, 1.2))  # some timers fall due in this life, some later
        life.kill()
        lines += life.lines
        time.sleep(rng.choice((0.0, 0.0, 0.8)))  # sometimes timers fall due while down

    timers = {p[1]: int(p[2]) for p in lines if p[0] == "TIMER"}
    cancelled = {p[1] for p in lines if p[0] == "CANCEL"}
    halves = {p[1]: int(p[2]) for p in lines if p[0] == "HALF"}
    committed = {p[1] for p in lines if p[0] == "COMMIT"}
    rolled_back = {p[1] for p in lines if p[0] == "ROLLBACK"}
    assert len(timers) > 200 and cancelled and committed and rolled_back

    async def final() -> None:
        async with Broker.open(writer.config(str(data_dir))) as b:
            while now_ms() < max(timers.values()) + 1500:
                await trio.sleep(0.1)
            delivered = read_topic(b, writer.TOPIC)
            ids = Counter(m.msg_id for m in delivered)
            twice = [i for i, n in ids.items() if n > 1]
            assert not twice, f"delivered twice: {twice[:10]}"
            at = {m.msg_id: m.store_timestamp for m in delivered}
            missing = [i for i in timers if i not in at]
            assert not missing, f"acknowledged timers never delivered: {missing[:10]}"
            early = [i for i, due in timers.items() if at[i] < due]
            assert not early, f"delivered before their time: {early[:10]}"
            assert not cancelled & set(at), "a cancelled timer was delivered"
            assert b.timer_stats().pending == 0 or b.timer_stats().prepared == 0

            real = Counter(m.msg_id for m in read_topic(b, writer.TX_TOPIC))
            assert all(n == 1 for n in real.values()), "a transaction delivered twice"
            assert committed <= set(real), "a committed transaction is missing"
            assert not rolled_back & set(real), "a rolled-back transaction was delivered"
            open_ids = {p.msg_id for p in b.pending_transactions(10_000)}
            last_half = {}  # run -> its last half: the only one whose END may be unacknowledged
            for p in lines:
                if p[0] == "HALF":
                    last_half[p[1].split(":")[1]] = p[1]
            for mid in halves:
                if mid in committed or mid in rolled_back:
                    assert mid not in open_ids
                elif mid not in real and mid not in open_ids:
                    # Rolled back just before the kill, the acknowledgement unprinted.
                    assert last_half[mid.split(":")[1]] == mid, f"half {mid} lost"
                    with pytest.raises(TransactionAlreadyEnded):
                        await b.end_transaction(mid, "commit")
            for mid in sorted(open_ids):
                await b.end_transaction(mid, "commit")
            with pytest.raises(TransactionAlreadyEnded):
                await b.end_transaction(next(iter(committed)), "commit")
            real = Counter(m.msg_id for m in read_topic(b, writer.TX_TOPIC))
            assert all(n == 1 for n in real.values())
            assert set(real) >= open_ids

    trio.run(final)
