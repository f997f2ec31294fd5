"""``ferrymq bench admin``: topic metadata at scale — creating N topics, restarting with them, memory.

Scenarios, each under the chosen flush policy, the broker in-process:

- *one by one*: ``create_topic`` N times, each acknowledged on its own (an fsync
  each: the admin-change rule of the state log, docs/storage.md);
- *one batch*: the same inside ``broker.admin_batch()``, as a Kafka CreateTopics
  with N topics is served (one fsync for all);
- *restart, clean*: opening a broker that holds N topics after a clean shutdown
  (its state snapshot), in a fresh process: seconds and RSS;
- *restart, crashed*: the same from a copy of the data directory taken while the
  broker ran (what a SIGKILL leaves): the state records are replayed from the log.

Figures are printed, never asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import click
import trio

from ...core.broker import Broker, BrokerConfig
from .report import print_table, progress_console

SEGMENT = 64 << 20


def _config(directory: str, flush: str) -> BrokerConfig:
    return BrokerConfig(data_dir=directory, flush=flush, segment_size=SEGMENT)


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _create(directory: str, flush: str, n: int, batch: bool, crash_copy: str | None
                  ) -> float:
    async with Broker.open(_config(directory, flush)) as broker:
        t0 = time.perf_counter()
        if batch:
            async with broker.admin_batch():
                for i in range(n):
                    await broker.create_topic(f"topic-{i}", 4)
        else:
            for i in range(n):
                await broker.create_topic(f"topic-{i}", 4)
        seconds = time.perf_counter() - t0
        if crash_copy is not None:
            shutil.copytree(directory, crash_copy, ignore=shutil.ignore_patterns("lock"))
        return seconds


async def _open(directory: str, flush: str) -> dict[str, float]:
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    async with Broker.open(_config(directory, flush)) as broker:
        seconds = time.perf_counter() - t0
        return {"seconds": seconds, "topics": len(broker.topics()),
                "replayed": broker.state.stats["recovered"], "rss_mb": _rss_mb(),
                "rss_delta_mb": _rss_mb() - rss0}


def _restart_in_child(directory: str, flush: str) -> dict[str, float]:
    """A restart measured in a fresh interpreter, so RSS is the broker's alone."""
    out = subprocess.run([sys.executable, "-m", __name__, directory, flush],
                         capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@click.command("admin")
@click.option("--topics", "n", type=click.IntRange(1), default=10_000, show_default=True,
              help="How many topics to create.")
@click.option("--flush", type=click.Choice(["sync", "async"]), default="sync", show_default=True)
@click.option("--dir", "base_dir", type=click.Path(file_okay=False),
              help="Where to put the scratch stores (default: the system temp directory).")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def admin_command(n: int, flush: str, base_dir: str | None, as_json: bool) -> None:
    """Create N topics one by one and in one batch; restart with them; RSS."""
    console = progress_console()
    root = tempfile.mkdtemp(prefix="ferrymq-bench-admin-", dir=base_dir)
    rows: list[tuple[str, float, float | None, float | None]] = []
    try:
        one, batch = os.path.join(root, "one"), os.path.join(root, "batch")
        crashed = os.path.join(root, "crashed")
        with console.status(f"creating {n:,} topics one by one"):
            s = trio.run(_create, one, flush, n, False, crashed)
        rows.append((f"create {n:,} topics, one by one", s, n / s, None))
        with console.status(f"creating {n:,} topics in one batch"):
            s = trio.run(_create, batch, flush, n, True, None)
        rows.append((f"create {n:,} topics, one batch", s, n / s, None))
        for label, directory in (("restart, clean (snapshot)", one),
                                 ("restart after a crash (log replay)", crashed)):
            with console.status(label):
                r = _restart_in_child(directory, flush)
            if r["topics"] != n:
                raise click.ClickException(f"{label}: {r['topics']} topics, expected {n}")
            rows.append((f"{label}: {int(r['replayed']):,} records replayed", r["seconds"],
                         None, r["rss_mb"]))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print_table(f"ferrymq bench admin ({n:,} topics x 4 queues, {flush} flush, in-process)",
                ("scenario", "seconds", "topics/s", "RSS MB"), rows, as_json=as_json)


COMMANDS = (admin_command,)


if __name__ == "__main__":  # the child of _restart_in_child
    print(json.dumps(trio.run(_open, sys.argv[1], sys.argv[2])))
