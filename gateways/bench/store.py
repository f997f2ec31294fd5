"""``ferrymq bench store``: the store in-process, beside a bare append-and-index loop run in the same process.

Scenarios (100-byte messages): single puts and batches of 16 and 256, each
under async flush and under sync flush with 1 and 16 concurrent writers.
The ceiling for each batch size is the least any store must do: append the same
bytes the store appended for that batch to a file with one write, and pack one
20-byte index entry per message (RocketMQ's ConsumeQueue entry) — no record
encoding, no CRC, no queues, no event loop. For sync flush the ceiling adds one
fdatasync per append (1 writer) or per 16 appends (16 writers: ideal group
commit). Figures: messages/s and MB/s of payload, CPU µs per
message (process time, robust when other work shares the machine), and the
ratio to the ceiling.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import click
import trio

from ...core.broker import Broker, BrokerConfig
from ...core.message import Message
from .report import print_table, progress_console

BODY = bytes(range(100))
_IDX = struct.Struct("<qiq")  # 20 bytes: offset, size, tag code (the ceiling's index entry)


@dataclass(frozen=True)
class Scenario:
    payload: str
    flush: str
    batch: int
    writers: int

    @property
    def name(self) -> str:
        return f"{self.payload}, {self.flush} flush, {self.writers} writer(s)"


def _scenarios() -> tuple[Scenario, ...]:
    out = []
    for batch, label in ((1, "single"), (16, "batch 16"), (256, "batch 256")):
        out.append(Scenario(label, "async", batch, 1))
        out.append(Scenario(label, "sync", batch, 1))
        out.append(Scenario(label, "sync", batch, 16))
    return tuple(out)


SCENARIOS = _scenarios()


@dataclass(frozen=True)
class Result:
    messages: int
    seconds: float
    cpu_seconds: float
    record_bytes: bytes  # what the store appended for one put (for the ceiling)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_us(self) -> float:
        return self.cpu_seconds / max(1, self.messages) * 1e6


# A producer's W3C trace context, on every message with --tracing all.
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _tracer(mode: str) -> Any:
    """--tracing: off (no hook), idle (the OpenTelemetry hook installed, the messages
    untraced: what a broker with [tracing] pays for untraced traffic), all (every
    message traced; the spans built and dropped by an exporter that discards them)."""
    if mode == "off":
        return None
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    from ..tracing import tracer_from_config

    class Discard(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    return tracer_from_config({}, exporter=Discard())


async def _run_store(directory: str, sc: Scenario, seconds: float, tracing: str = "off"
                     ) -> Result:
    cfg = BrokerConfig(data_dir=directory, flush=sc.flush)
    async with Broker.open(cfg) as broker:
        broker.set_tracer(_tracer(tracing))
        await broker.create_topic("bench", 4)
        one = Message("bench", BODY, {"traceparent": TRACEPARENT} if tracing == "all" else {})
        batch = [one] * sc.batch
        payload: Message | list[Message] = one if sc.batch == 1 else batch
        first = await broker.put(payload)
        record = broker.store.read_record(first.physical_offset) or b""
        count = [0]
        deadline = time.perf_counter() + seconds

        async def writer() -> None:
            put = broker.put
            n = 0
            while True:
                for _ in range(64):
                    await put(payload)
                n += 64
                if time.perf_counter() >= deadline:
                    break
                if sc.flush == "async":
                    await trio.lowlevel.checkpoint()  # let the flusher run
            count[0] += n * sc.batch

        t0, c0 = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(sc.writers):
                nursery.start_soon(writer)
        return Result(count[0], time.perf_counter() - t0, time.process_time() - c0, record)


def _run_ceiling(directory: str, record: bytes, batch: int, seconds: float,
                 sync_every: int) -> Result:
    """The bare loop; ``sync_every`` > 0 adds one fdatasync per that many appends
    (1 = a lone sync writer, 16 = ideal group commit of 16 writers)."""
    os.makedirs(directory, exist_ok=True)
    log_fd = os.open(os.path.join(directory, "log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    idx_fd = os.open(os.path.join(directory, "idx"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    idx = bytearray(20 * batch)
    pack_into, write = _IDX.pack_into, os.write
    size = len(record) // batch
    pos = n = 0
    t0, c0 = time.perf_counter(), time.process_time()
    deadline = t0 + seconds
    try:
        while True:
            for _ in range(16):
                write(log_fd, record)
                for i in range(batch):
                    pack_into(idx, i * 20, pos + i * size, size, 0)
                write(idx_fd, idx)
                pos += len(record)
                n += batch
                if sync_every and n // batch % sync_every == 0:
                    os.fdatasync(log_fd)
            if time.perf_counter() >= deadline:
                break
    finally:
        os.close(log_fd)
        os.close(idx_fd)
    return Result(n, time.perf_counter() - t0, time.process_time() - c0, record)


@click.command("store")
@click.option("--seconds", type=click.FloatRange(0.2), default=3.0, show_default=True,
              help="Duration of each scenario.")
@click.option("--dir", "base_dir", type=click.Path(file_okay=False),
              help="Where to put the scratch stores (default: the system temp directory).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.option("--tracing", type=click.Choice(["off", "idle", "all"]), default="off",
              show_default=True,
              help="off: no span hook; idle: the OpenTelemetry hook, messages untraced; all: "
                   "every message traced (needs ferrymq[otel]).")
@click.option("--payload", "payloads", multiple=True,
              type=click.Choice(["single", "batch 16", "batch 256"]),
              help="Only these payloads (repeatable; default all).")
def store_command(seconds: float, base_dir: str | None, as_json: bool, tracing: str,
                  payloads: tuple[str, ...]) -> None:
    """The store in-process: messages/s and MB/s beside a bare append-and-index loop."""
    console = progress_console()
    root = tempfile.mkdtemp(prefix="ferrymq-bench-", dir=base_dir)
    rows = []
    scenarios = [sc for sc in SCENARIOS if not payloads or sc.payload in payloads]
    try:
        for i, sc in enumerate(scenarios):
            with console.status(f"[{i + 1}/{len(scenarios)}] {sc.name}: FerryMQ"):
                res = trio.run(_run_store, os.path.join(root, f"s{i}"), sc, seconds, tracing)
            with console.status(f"[{i + 1}/{len(scenarios)}] {sc.name}: ceiling"):
                ceil = _run_ceiling(os.path.join(root, f"c{i}"), res.record_bytes, sc.batch,
                                    seconds, sc.writers if sc.flush == "sync" else 0)
            shutil.rmtree(os.path.join(root, f"s{i}"), ignore_errors=True)
            shutil.rmtree(os.path.join(root, f"c{i}"), ignore_errors=True)
            rows.append((sc.payload, sc.flush, sc.writers, res.rate,
                         res.rate * len(BODY) / 2**20, res.cpu_us, ceil.rate, ceil.cpu_us,
                         res.rate / ceil.rate))
            console.print(f"{sc.name}: {res.rate:,.0f} msgs/s (ceiling {ceil.rate:,.0f})")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(f"ferrymq bench store (100-byte messages, in-process, tracing {tracing})",
                ("payload", "flush", "writers", "msgs/s", "MB/s", "CPU µs/msg",
                 "ceiling msgs/s", "ceiling CPU µs/msg", "ratio"), rows, as_json=as_json)
    if not as_json:
        rate = {(r[0], r[1], r[2]): r[3] for r in rows}
        for label in ("single", "batch 16", "batch 256"):
            if (label, "sync", 16) not in rate:
                continue
            ratio = rate[(label, "sync", 16)] / rate[(label, "async", 1)]
            click.echo(f"{label}: sync flush with 16 writers = {ratio:.0%} of async")


COMMANDS = (store_command,)
