"""``ferrymq bench timers``: timer lateness under bursts, pending-timer memory, transaction throughput.

All in-process on a real broker (async flush unless said), on the real clock:

- **Lateness.** N timers (100-byte bodies, one topic of 4 queues) due at the
  same millisecond (N = 10k and 100k), N due within the same second, and N
  spread evenly over ``--spread-seconds``, into a topic already in use (one
  message per queue first). A consumer task in the same event
  loop long-polls the destination queues; a message's lateness is the moment
  that consumer could first read it minus its due time (what a consumer sees),
  and beside it the broker's own figure (store timestamp minus due time). The
  timers are put well ahead of time, so the bursts are pending, not arriving.
  The peer figure is ``put`` of the same N messages as batches of 1024 right
  now, in the same run: what appending them costs without the timers'
  preparation ahead of time.
- **Memory.** 1,000,000 timers pending (an hour ahead) in a fresh process: RSS
  before and after, split into anonymous memory (the Python heap: what the
  wheel must not grow) and file-backed pages (the mapped CommitLog, timer log
  and wheel, which the kernel may drop).
- **Transactions.** Half message plus commit, msgs/s, with 1 and 16 producers,
  beside plain puts of the same messages (with a client id, as a half gets)
  in the same run: a transaction is three appends (half, message, op record)
  plus reading the half back, so a third of the plain rate is par.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import click
import trio

from ...core.broker import Broker, BrokerConfig
from ...core.message import Message, StoredRecord, now_ms
from ...core.timers import new_message_id
from .report import print_table, progress_console

BODY = bytes(range(100))
TOPIC = "timed"
QUEUES = 4
LEAD_S = 3.0  # the burst falls due this long after the last timer was put
MIB = 2 ** 20


def _config(directory: str, **over: object) -> BrokerConfig:
    base: dict[str, object] = dict(data_dir=directory, segment_size=256 << 20,
                                   index_entries=4_000_000, index_slots=1_000_000)
    base.update(over)
    return BrokerConfig(**base)  # type: ignore[arg-type]


# ====================================================================== lateness


@dataclass(frozen=True)
class Lateness:
    name: str
    n: int
    put_us: float  # wall µs per timer put
    delivered: int
    p50: float
    p99: float
    max: float
    broker_p50: float | None
    broker_p99: float | None
    broker_max: int | None
    peer_ms: float


def _pct(values: list[int], p: float) -> float:
    """The value at rank ceil(p% of n), as the broker's histogram computes it."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))
    return float(ordered[int(rank) - 1])


async def _lateness(directory: str, name: str, n: int, spread_ms: int) -> Lateness:
    async with Broker.open(_config(directory)) as broker:
        await broker.create_topic(TOPIC, QUEUES)
        await broker.create_topic("probe", 1)
        # A topic in use: its ConsumeQueue files exist and their current page is
        # mapped (the first entry of a fresh queue costs a page fault of ~4 ms here).
        for q in range(QUEUES):
            await broker.put(Message(TOPIC, b"warm", queue_id=q))
        # Measure the put rate first, to choose a due time after the last put.
        probe = min(2000, n)
        far = now_ms() + 3600_000
        t0 = time.perf_counter()
        for i in range(probe):
            await broker.put(Message("probe", BODY, {"TIMER_DELIVER_MS": str(far + i)}))
        per_put = (time.perf_counter() - t0) / probe
        due0 = now_ms() + int((n * per_put * 1.5 + LEAD_S) * 1000)
        t0 = time.perf_counter()
        for i in range(n):
            due = due0 + (i * spread_ms) // n if spread_ms else due0
            await broker.put(Message(TOPIC, BODY, {"TIMER_DELIVER_MS": str(due)},
                                     queue_id=i % QUEUES))
        put_us = (time.perf_counter() - t0) / n * 1e6
        if now_ms() > due0 - 1000:
            progress_console().print(f"[yellow]{name}: the puts ran late; figures include it")
        broker.timers.lateness.reset()
        # Exact tuples, not StoredRecords: the collector stops tracking tuples of
        # plain values, and 100,000 tracked records would make full collections slow.
        seen: list[tuple[Any, ...]] = []
        offsets = [1] * QUEUES
        got = 0
        with trio.move_on_after((due0 + spread_ms - now_ms()) / 1000 + 60):
            while got < n:
                await broker.wait_any([(TOPIC, q, offsets[q]) for q in range(QUEUES)], 1.0)
                for q in range(QUEUES):
                    while True:
                        g = broker.get(None, TOPIC, q, offsets[q], 1 << 20, 1 << 30)
                        at = now_ms()
                        if not g.records:
                            break
                        for rec in g.records:
                            seen.append((at, *rec[:8]))
                            got += rec.count
                        offsets[q] = g.next_offset
        late = [row[0] - int(m.properties["TIMER_OUT_MS"]) for row in seen
                for m in StoredRecord(*row[1:]).messages()]
        if len(late) < n:
            progress_console().print(f"[red]{name}: only {len(late)} of {n} delivered in time")
        s = broker.timer_stats()
        # The peer: the same messages put at once as batches of 1024.
        members = [Message(TOPIC, BODY)] * 1024
        t0 = time.perf_counter()
        for q in range(QUEUES):
            batch = [m._replace(queue_id=q) for m in members]
            for _ in range(0, n // QUEUES, 1024):
                await broker.put(batch)
        peer_ms = (time.perf_counter() - t0) * 1000
    return Lateness(name, n, put_us, len(late), _pct(late, 50), _pct(late, 99),
                    float(max(late, default=0)), s.lateness_p50_ms, s.lateness_p99_ms,
                    s.lateness_max_ms, peer_ms)


# ====================================================================== memory


def _rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) * 1024
    return out


def _memory_child(directory: str, n: int, result: Any) -> None:
    """In a fresh process: RSS before and after ``n`` timers are pending."""

    async def main() -> None:
        async with Broker.open(_config(directory)) as broker:
            await broker.create_topic(TOPIC, QUEUES)
            await broker.put(Message(TOPIC, BODY, {"TIMER_DELAY_SEC": "3600"}, queue_id=0))
            before = _rss()
            due = now_ms() + 3600_000
            t0 = time.perf_counter()
            for i in range(n):
                await broker.put(Message(TOPIC, BODY, {"TIMER_DELIVER_MS": str(due + i % 600_000)},
                                         queue_id=i % QUEUES))
            put_s = time.perf_counter() - t0
            await trio.sleep(1.5)  # a checkpoint goes by; the preparer looks ahead and idles
            after = _rss()
            s = broker.timer_stats()
            result.put((before, after, s.pending, put_s, s.log_bytes))

    trio.run(main)


# ====================================================================== transactions


async def _transactions(directory: str, n: int, producers: int, flush: str
                        ) -> tuple[float, float]:
    """(transactions/s, plain puts/s) for ``n`` messages over ``producers`` tasks."""
    async with Broker.open(_config(directory, flush=flush)) as broker:
        await broker.create_topic("tx", QUEUES)
        await broker.create_topic("plain", QUEUES)
        warm = await broker.prepare(Message("tx", BODY), "pg")
        await broker.end_transaction(warm, "commit")
        per = n // producers

        async def tx_producer(p: int) -> None:
            for i in range(per):
                h = await broker.prepare(Message("tx", BODY, queue_id=(p + i) % QUEUES), "pg")
                await broker.end_transaction(h, "commit", producer_group="pg")

        async def plain_producer(p: int) -> None:
            # The same messages as plain puts, with the client id every RocketMQ
            # client sends (and a half gets): what a transaction is compared with.
            for i in range(per):
                await broker.put(Message("plain", BODY, {"UNIQ_KEY": new_message_id()},
                                         queue_id=(p + i) % QUEUES))

        rates = []
        for job in (tx_producer, plain_producer):
            t0 = time.perf_counter()
            async with trio.open_nursery() as nursery:
                for p in range(producers):
                    nursery.start_soon(job, p)
            rates.append(per * producers / (time.perf_counter() - t0))
        return rates[0], rates[1]


# ====================================================================== command


@click.command("timers")
@click.option("--counts", default="10000,100000", show_default=True,
              help="Timers per burst (comma-separated).")
@click.option("--spread-seconds", type=click.IntRange(1), default=20, show_default=True,
              help="The spread scenario's length.")
@click.option("--pending", type=click.IntRange(0), default=1_000_000, show_default=True,
              help="Pending timers for the memory figure (0 skips it).")
@click.option("--transactions", "tx_count", type=click.IntRange(0), default=20_000,
              show_default=True, help="Transactions per throughput run (0 skips them).")
@click.option("--dir", "base_dir", type=click.Path(file_okay=False),
              help="Where to put the scratch stores (default: the system temp directory).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of tables.")
def timers_command(counts: str, spread_seconds: int, pending: int, tx_count: int,
                   base_dir: str | None, as_json: bool) -> None:
    """Timer lateness (p50/p99/max) under bursts, pending-timer memory, transaction throughput."""
    console = progress_console()
    root = tempfile.mkdtemp(prefix="ferrymq-bench-timers-", dir=base_dir)
    try:
        ns = [int(c) for c in counts.split(",") if c.strip()]
        scenarios = [(f"{n:,} at 1 instant", n, 0) for n in ns]
        if ns:
            big = max(ns)
            scenarios.append((f"{big:,} in 1 second", big, 1000))
            scenarios.append((f"{big:,} over {spread_seconds} s", big, spread_seconds * 1000))
        rows = []
        for i, (name, n, spread) in enumerate(scenarios):
            with console.status(f"[{i + 1}/{len(scenarios)}] {name}"):
                r = trio.run(_lateness, os.path.join(root, f"l{i}"), name, n, spread)
            shutil.rmtree(os.path.join(root, f"l{i}"), ignore_errors=True)
            console.print(f"{name}: p50 {r.p50:.0f} ms, p99 {r.p99:.0f} ms, max {r.max:.0f} ms")
            if r.delivered < r.n:
                console.print(f"[red]{name}: {r.n - r.delivered} timers not delivered")
            rows.append((r.name, r.put_us, r.p50, r.p99, r.max, r.broker_p50, r.broker_p99,
                         r.broker_max, r.peer_ms))
        if rows:
            print_table("ferrymq bench timers: lateness in ms (real clock; consumer in-process; "
                        "broker = store time; peer = put them as batches now)",
                        ("scenario", "put µs", "p50", "p99", "max", "broker p50", "broker p99",
                         "broker max", "peer ms"), rows, as_json=as_json)
        if pending:
            with console.status(f"{pending:,} pending timers (a fresh process)"):
                ctx = multiprocessing.get_context("spawn")
                q = ctx.Queue()
                proc = ctx.Process(target=_memory_child,
                                   args=(os.path.join(root, "mem"), pending, q))
                proc.start()
                before, after, wheel_pending, put_s, log_bytes = q.get(timeout=3600)
                proc.join(60)
            shutil.rmtree(os.path.join(root, "mem"), ignore_errors=True)
            print_table(f"ferrymq bench timers: memory with {pending:,} timers pending",
                        ("", "RSS MiB", "anonymous (heap) MiB", "file-backed MiB"),
                        [("before", before["VmRSS"] / MIB, before["RssAnon"] / MIB,
                          before["RssFile"] / MIB),
                         ("after", after["VmRSS"] / MIB, after["RssAnon"] / MIB,
                          after["RssFile"] / MIB),
                         ("bytes per pending timer",
                          (after["VmRSS"] - before["VmRSS"]) / pending,
                          (after["RssAnon"] - before["RssAnon"]) / pending,
                          (after["RssFile"] - before["RssFile"]) / pending)],
                        as_json=as_json)
            if not as_json:
                click.echo(f"{wheel_pending:,} entries in the wheel; timer log "
                           f"{log_bytes / MIB:.0f} MiB on disk; {pending / put_s:,.0f} timer "
                           "puts/s")
        if tx_count:
            tx_rows = []
            for producers, flush in ((1, "async"), (16, "async"), (16, "sync")):
                with console.status(f"transactions: {producers} producer(s), {flush} flush"):
                    n = tx_count if flush == "async" else tx_count // 4
                    where = os.path.join(root, f"t{producers}{flush}")
                    tx, plain = trio.run(_transactions, where, n, producers, flush)
                shutil.rmtree(where, ignore_errors=True)
                tx_rows.append((f"{producers} producer(s), {flush} flush", tx, plain, tx / plain))
            print_table("ferrymq bench timers: transactions (half + commit), 100-byte messages",
                        ("producers", "transactions/s", "plain puts/s (same run)", "ratio"),
                        tx_rows, as_json=as_json)
    finally:
        shutil.rmtree(root, ignore_errors=True)


COMMANDS = (timers_command,)
