"""``ferrymq bench compaction``: a compaction pass's throughput and what it costs producers.

In process, data on disk (a temporary directory): a compacted topic gets
``--rounds`` rounds of updates over ``--keys`` keys (Kafka batches of 10 records of
100 bytes, as a producer would send them); one compaction pass is timed (MB/s of
queue data read, records kept). Then producers' latency: single-batch puts to another
topic, timed one by one, first with nothing else running, then while a second pass
(over the compacted log and one more round of updates) runs in its worker thread.
Figures: pass MB/s, records in/out, produce p50/p99/max in both phases.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import click
import trio

from ...core.broker import Broker, BrokerConfig
from ...protocols.kafka import records as kr
from .report import print_table

VALUE = bytes(100)
PER_BATCH = 10


def _batch(keys: range, rnd: int) -> bytes:
    return kr.encode_batch(0, [(1_600_000_000_000 + rnd, b"key-%08d" % k, VALUE, ())
                               for k in keys])


async def _fill(b: Broker, topic: str, keys: int, rounds: int) -> int:
    n = 0
    for rnd in range(rounds):
        for start in range(0, keys, PER_BATCH):
            await b.put_kafka_batch(topic, 0, _batch(range(start, min(keys, start + PER_BATCH)),
                                                     rnd))
            n += 1
    b.store.flush()
    return n


async def _latencies(b: Broker, until: trio.Event | None, seconds: float) -> list[float]:
    out = []
    one = _batch(range(PER_BATCH), 0)
    deadline = time.perf_counter() + seconds
    while (until is None and time.perf_counter() < deadline) or (
            until is not None and not until.is_set()):
        t0 = time.perf_counter()
        await b.put_kafka_batch("bench-plain", 0, one)
        out.append(time.perf_counter() - t0)
        await trio.sleep(0)
    return out


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] * 1e3 if xs else 0.0


@click.command("compaction")
@click.option("--keys", type=click.IntRange(10), default=50_000, show_default=True)
@click.option("--rounds", type=click.IntRange(1), default=4, show_default=True)
@click.option("--seconds", type=click.FloatRange(0.5), default=3.0, show_default=True,
              help="Length of the produce phase without compaction.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def compaction_command(keys: int, rounds: int, seconds: float, as_json: bool) -> None:
    """Compaction throughput and its effect on produce latency, in one run."""
    directory = tempfile.mkdtemp(prefix="ferrymq-bench-compaction-")
    rows: list[list[object]] = []

    async def main() -> None:
        cfg = BrokerConfig(data_dir=directory, compaction_check_interval_s=3600.0)
        async with Broker.open(cfg) as b:
            await b.create_topic("bench-compact", 1, attributes={"cleanup.policy": "compact"})
            await b.create_topic("bench-plain", 1)
            await _fill(b, "bench-compact", keys, rounds)
            t0 = time.perf_counter()
            (first,) = await b.compact("bench-compact")
            secs = time.perf_counter() - t0
            rows.append(["pass 1 (log only)", first.records_in, first.records_out,
                         round(first.bytes_in / 1e6, 1), round(first.bytes_in / 1e6 / secs, 1),
                         round(secs, 2)])
            quiet = await _latencies(b, None, seconds)
            await _fill(b, "bench-compact", keys, 1)
            done = trio.Event()
            busy: list[float] = []
            result: list[object] = []

            async def run_pass() -> None:
                t = time.perf_counter()
                result.extend(await b.compact("bench-compact"))
                result.append(time.perf_counter() - t)
                done.set()

            async with trio.open_nursery() as n:
                n.start_soon(run_pass)
                busy.extend(await _latencies(b, done, 0))
            second, secs2 = result[0], float(result[1])  # type: ignore[arg-type]
            rows.append(["pass 2 (compacted log + a round)", second.records_in,  # type: ignore[attr-defined]
                         second.records_out, round(second.bytes_in / 1e6, 1),  # type: ignore[attr-defined]
                         round(second.bytes_in / 1e6 / secs2, 1), round(secs2, 2)])  # type: ignore[attr-defined]
            lat.append(["produce, no compaction", len(quiet), round(_pct(quiet, 0.5), 3),
                        round(_pct(quiet, 0.99), 3), round(max(quiet) * 1e3, 3)])
            lat.append(["produce, during pass 2", len(busy), round(_pct(busy, 0.5), 3),
                        round(_pct(busy, 0.99), 3), round(max(busy, default=0) * 1e3, 3)])

    lat: list[list[object]] = []
    try:
        trio.run(main)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    print_table(f"compaction: {keys} keys x {rounds} rounds, batches of {PER_BATCH} x 100 B",
                ["pass", "records in", "records out", "MB read", "MB/s", "seconds"], rows,
                as_json=as_json)
    print_table("produce latency (one 10-record batch per put, ms)",
                ["phase", "puts", "p50", "p99", "max"], lat, as_json=as_json)


COMMANDS = (compaction_command,)
