"""``ferrymq bench produce`` / ``ferrymq bench consume``: the native door's throughput and latency.

Produce shapes (the issue's): (a) one producer waiting for each ack, (b) 16
producers each waiting for its acks, (c) one producer pipelining async sends,
(d) batches of 32 (pipelined). Consume: pulls of stored messages, decoded as a
consumer sees them. Figures are msgs/s and ack latency p50/p99/p999, with the
CPU each side used. Without ``--namesrv`` a broker is started on a free port,
pinned to CPU 0 while the load runs on CPU 1 (2 cores: broker on one, load on
the other). The bare trio append-and-ack loop (``ceiling.py`` beside this module)
runs with the same shapes and placement, for the same run's upper bound. Prints a table (``--json``:
JSON lines); never pass/fail.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import anyio
import click

from ...clients import Admin, Message, Producer
from ...clients.consumer import pull
from ...clients.instance import ClientInstance
from ...protocols.remoting import RequestCode, encode, request
from .report import print_table, progress_console

BODY = b"x" * 100  # the ceiling's message size
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return float("nan")
    return sorted_vals[min(len(sorted_vals) - 1, round(q * (len(sorted_vals) - 1)))]


def _cpu_of(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _self_cpu() -> float:
    t = os.times()
    return t.user + t.system


LABELS = {  # short table labels for the result names
    "native.produce.a.sync_1_producer": "(a) 1 sync",
    "native.produce.a.raw_socket": "(a) raw socket", "native.produce.b.sync_16_producers":
    "(b) 16 sync", "native.produce.c.async_pipelined": "(c) pipelined",
    "native.produce.d.batch_32": "(d) batch 32", "native.consume.pull_decoded.single":
    "consume", "native.consume.pull_decoded.batched": "consume batches"}


def result(name: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "value": round(value, 1), "unit": unit,
            **{k: round(v, 2) if isinstance(v, float) else v for k, v in extra.items()}}


def _show(title: str, results: list[dict[str, Any]], as_json: bool) -> None:
    """JSON lines, or a table with each shape beside its ceiling and the ratio."""
    if as_json:
        for r in results:
            click.echo(json.dumps(r))
        return
    ceilings = {r["shape"]: r for r in results if r["name"].startswith("ceiling.")}
    rows = []
    for r in results:
        if r["name"].startswith("ceiling."):
            continue
        c = ceilings.get(r.get("shape", ""))
        rows.append((LABELS.get(r["name"], r["name"]), r["value"], r.get("p50_us"),
                     r.get("p99_us"), r.get("p999_us"), r.get("broker_cpu"), r.get("client_cpu"),
                     r.get("broker_us_per_msg"), r.get("client_us_per_msg"),
                     c["value"] if c else None,
                     f"{r['value'] / c['value']:.0%}" if c and c["value"] else None))
    print_table(title, ("shape", "msgs/s", "p50 µs", "p99 µs", "p999 µs", "broker CPU",
                        "client CPU", "broker µs/msg", "client µs/msg", "ceiling msgs/s",
                        "ratio"), rows)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def spawned_broker(flush: str, pin: bool = True) -> Iterator[tuple[str, int]]:
    """A broker on free loopback ports in a temporary directory, pinned to CPU 0
    (and this process to the others) unless ``pin`` is off."""
    ncpu = (os.cpu_count() or 1) if pin else 1
    with tempfile.TemporaryDirectory(prefix="ferrymq-bench-") as d:
        ports = {"namesrv": _free_port(), "remoting": _free_port()}
        ready = os.path.join(d, "ready.json")
        args = [sys.executable, "-m", "ferrymq.gateways", "serve", "--data-dir",
                os.path.join(d, "data"), "--host", "127.0.0.1", "--flush", flush,
                "--ready-file", ready, "--segment-size", str(256 << 20)]
        for door in ("namesrv", "remoting", "kafka", "mqtt", "http"):
            args += [f"--{door}-port", str(ports.get(door, 0))]

        def pin_to_cpu0() -> None:
            if ncpu > 1:
                os.sched_setaffinity(0, {0})

        proc = subprocess.Popen(args, preexec_fn=pin_to_cpu0, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(ready):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise click.ClickException("the benchmark broker did not start")
                time.sleep(0.05)
            if ncpu > 1:
                os.sched_setaffinity(0, set(range(1, ncpu)))
            yield f"127.0.0.1:{ports['namesrv']}", proc.pid
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _measure(name: str, broker_pid: int | None, run: Callable[[], Any]) -> dict[str, Any]:
    c0 = _self_cpu()
    b0 = _cpu_of(broker_pid) if broker_pid else 0.0
    t0 = time.perf_counter()
    msgs, lats, unit_name = anyio.run(run)
    dt = time.perf_counter() - t0
    client_cpu = _self_cpu() - c0
    # CPU seconds per message as well as per second: on a shared machine the rate moves
    # with the neighbours, the cost of a message much less (session figures: docs/remoting.md).
    extra: dict[str, Any] = {"client_cpu": client_cpu / dt, "seconds": dt,
                             "client_us_per_msg": client_cpu / max(msgs, 1) * 1e6}
    if broker_pid:
        broker_cpu = _cpu_of(broker_pid) - b0
        extra["broker_cpu"] = broker_cpu / dt
        extra["broker_us_per_msg"] = broker_cpu / max(msgs, 1) * 1e6
    if lats:
        lats.sort()
        extra.update(p50_us=_pct(lats, 0.5) * 1e6, p99_us=_pct(lats, 0.99) * 1e6,
                     p999_us=_pct(lats, 0.999) * 1e6, latency_of=unit_name)
    return result(name, msgs / dt, "msgs/s", messages=msgs, **extra)


def _produce_runs(ns: str, topic: str, seconds: float, window: int
                  ) -> dict[str, Callable[[], Any]]:
    pc = time.perf_counter

    async def sync_one() -> tuple[int, list[float], str]:
        lats: list[float] = []
        async with Producer(ns, "bench") as p:
            await p.send(Message(topic, BODY))
            end = pc() + seconds
            while (t := pc()) < end:
                await p.send(Message(topic, BODY))
                lats.append(pc() - t)
        return len(lats), lats, "message"

    async def sync_16() -> tuple[int, list[float], str]:
        lats: list[float] = []
        end = pc() + seconds

        async def one() -> None:
            async with Producer(ns, "bench") as p:
                while (t := pc()) < end:
                    await p.send(Message(topic, BODY))
                    lats.append(pc() - t)

        async with anyio.create_task_group() as tg:
            for _ in range(16):
                tg.start_soon(one)
        return len(lats), lats, "message"

    async def pipelined() -> tuple[int, list[float], str]:
        lats: list[float] = []
        async with Producer(ns, "bench", max_in_flight=window) as p:
            await p.send(Message(topic, BODY))
            end = pc() + seconds
            while pc() < end:
                t = pc()

                def sent(_result: object, t: float = t) -> None:
                    lats.append(pc() - t)

                await p.throttled_send_async(Message(topic, BODY), sent)
        return len(lats), lats, "message"

    async def batches() -> tuple[int, list[float], str]:
        lats: list[float] = []
        batch = [Message(topic, BODY) for _ in range(32)]
        async with Producer(ns, "bench") as p:
            await p.send_batch(batch)
            end = pc() + seconds
            sem = anyio.Semaphore(max(1, window // 32))

            async def one() -> None:
                t = pc()
                try:
                    await p.send_batch(batch)
                    lats.append(pc() - t)
                finally:
                    sem.release()

            async with anyio.create_task_group() as tg:
                while pc() < end:
                    await sem.acquire()
                    tg.start_soon(one)
        return len(lats) * 32, lats, "batch of 32"

    async def raw_sync() -> tuple[int, list[float], str]:
        """Shape (a) without the client: a blocking socket sends one SEND_MESSAGE_V2
        frame and reads its answer, so the figure is the broker's alone, comparable
        with the ceiling run with its own raw-socket client (``sel``)."""
        async with Admin(ns) as admin:
            route = await admin.route(topic)
        addr = next(bd.master_addr for bd in route.brokerDatas if bd.master_addr)
        return await anyio.to_thread.run_sync(_raw_sync_sends, addr, topic, seconds)

    return {"a.sync_1_producer": sync_one, "a.raw_socket": raw_sync,
            "b.sync_16_producers": sync_16, "c.async_pipelined": pipelined,
            "d.batch_32": batches}


def _raw_sync_sends(addr: str, topic: str, seconds: float) -> tuple[int, list[float], str]:
    host, port = addr.rsplit(":", 1)
    ext = {"a": "bench", "b": topic, "c": "TBW102", "d": "4", "e": "0", "f": "0",
           "g": str(int(time.time() * 1000)), "h": "0", "i": "WAIT\x01true\x02", "j": "0",
           "k": "false", "l": "16", "m": "false"}
    frames = [encode(request(RequestCode.SEND_MESSAGE_V2, i, ext, BODY)) for i in range(1024)]
    lats: list[float] = []
    pc = time.perf_counter
    with socket.create_connection((host, int(port))) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        end = pc() + seconds
        i = 0
        while (t := pc()) < end:
            s.sendall(frames[i & 1023])
            head = b""
            while len(head) < 4:
                chunk = s.recv(4 - len(head))
                if not chunk:
                    raise ConnectionError("the broker closed the connection")
                head += chunk
            left = struct.unpack(">i", head)[0]
            while left:
                chunk = s.recv(left)
                if not chunk:
                    raise ConnectionError("the broker closed the connection")
                left -= len(chunk)
            lats.append(pc() - t)
            i += 1
    return len(lats), lats, "message"


CEILING_SHAPES = {  # batch, connections, window, raw client: the same shapes for the bare loop
    "a.sync_1_producer": (1, 1, 1, False), "a.raw_socket": (1, 1, 1, True),
    "b.sync_16_producers": (1, 16, 1, False), "c.async_pipelined": (1, 1, 64, False),
    "d.batch_32": (32, 1, 8, False)}


def _ceiling(shape: str, seconds: float, pin: bool) -> list[dict[str, Any]]:
    """Run the bare loop (ceiling.py) with the same shape and the same placement: its
    server on CPU 0 (pinned as soon as it is spawned), its load generator beside ours."""
    b, c, w, raw = CEILING_SHAPES[shape]
    args = [str(b), str(c), str(w), str(seconds)] + (["none", "sel"] if raw else [])
    proc = subprocess.Popen([sys.executable, "-m", f"{__package__}.ceiling", "run", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    if pin and (os.cpu_count() or 1) > 1:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with open(f"/proc/{proc.pid}/task/{proc.pid}/children") as f:
                    kids = f.read().split()
            except OSError:
                kids = []
            if kids:
                os.sched_setaffinity(int(kids[0]), {0})
                break
            time.sleep(0.002)
    stdout, _ = proc.communicate(timeout=seconds * 4 + 60)
    out = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            doc = json.loads(line)
            doc["name"] = f"ceiling.{shape}:{doc['name']}"
            doc["shape"] = shape
            out.append(doc)
    return out


@click.command("produce", context_settings=CONTEXT)
@click.option("-n", "--namesrv", help="Measure this server (default: start one, pinned).")
@click.option("--seconds", type=float, default=5.0, show_default=True, help="Per shape.")
@click.option("--shape", "shapes", multiple=True,
              type=click.Choice(["a.sync_1_producer", "a.raw_socket", "b.sync_16_producers",
                                 "c.async_pipelined", "d.batch_32"]),
              help="Run only these shapes (repeat).")
@click.option("--window", type=int, default=256, show_default=True,
              help="Messages in flight for the pipelined shapes.")
@click.option("--flush", type=click.Choice(["async", "sync"]), default="async", show_default=True)
@click.option("--no-ceiling", is_flag=True, help="Do not run the ceiling.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
@click.option("--pin/--no-pin", default=True, show_default=True,
              help="Broker on CPU 0, load on the other CPUs.")
def produce(namesrv: str | None, seconds: float, shapes: tuple[str, ...], window: int,
            flush: str, no_ceiling: bool, as_json: bool,
            pin: bool) -> None:
    """Produce 100-byte messages in the four shapes; msgs/s and ack latency."""
    results: list[dict[str, Any]] = []
    with _server(namesrv, flush, pin) as (ns, pid):
        topic = f"bench-{int(time.time())}"

        async def create() -> None:
            async with Admin(ns) as admin:
                await admin.create_topic(topic, 4)

        anyio.run(create)
        runs = _produce_runs(ns, topic, seconds, window)
        for name, fn in runs.items():
            if shapes and name not in shapes:
                continue
            with progress_console().status(f"{name}"):
                results.append(dict(_measure(f"native.produce.{name}", pid, fn), shape=name))
                if not no_ceiling:
                    results.extend(_ceiling(name, seconds,
                                            pin and namesrv is None))
    _show("native produce (100-byte messages)", results, as_json)


@contextmanager
def _server(namesrv: str | None, flush: str, pin: bool = True
            ) -> Iterator[tuple[str, int | None]]:
    if namesrv:
        yield namesrv, None
    else:
        with spawned_broker(flush, pin) as (ns, pid):
            yield ns, pid


@click.command("consume", context_settings=CONTEXT)
@click.option("-n", "--namesrv", help="Measure this server (default: start one, pinned).")
@click.option("--messages", type=int, default=500_000, show_default=True,
              help="Stored first (in batches), then consumed.")
@click.option("--pull-size", type=int, default=1024, show_default=True,
              help="Messages per PULL_MESSAGE.")
@click.option("--batched/--single", default=False, show_default=True,
              help="Store the messages as batches of 256 (pulls unpack them) or one by one.")
@click.option("--pin/--no-pin", default=True, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def consume(namesrv: str | None, messages: int, pull_size: int, batched: bool,
            pin: bool, as_json: bool) -> None:
    """Store messages, then pull them all back (decoded): consume msgs/s."""
    topic = f"bench-consume-{int(time.time())}"
    with _server(namesrv, "async", pin) as (ns, pid):
        async def fill() -> None:
            async with Admin(ns) as admin:  # routed before the first send
                await admin.create_topic(topic, 4)
            async with Producer(ns, "bench", max_in_flight=512) as p:
                # Spread over the topic's queues (the producer's round robin), as a
                # topic is written: a consumer then has a pull in flight per queue.
                if not batched:
                    await p.send(Message(topic, BODY))
                    for _ in range(messages - 1):
                        await p.throttled_send_async(Message(topic, BODY))
                    return
                batch = [Message(topic, BODY) for _ in range(256)]
                async with anyio.create_task_group() as tg:
                    sem = anyio.Semaphore(8)

                    async def one() -> None:
                        try:
                            await p.send_batch(batch)
                        finally:
                            sem.release()

                    for _ in range(messages // 256):
                        await sem.acquire()
                        tg.start_soon(one)

        anyio.run(fill)

        async def drain() -> tuple[int, list[float], str]:
            # One pull in flight per queue, all queues at once: how a consumer of the
            # topic reads (RocketMQ's PushConsumer keeps a pull request per queue).
            async with ClientInstance(ns) as inst:
                queues = await inst.subscribe_queues(topic, refresh=True)
                counts: list[int] = []
                lats: list[float] = []

                async def drain_queue(mq: Any) -> None:
                    offset = n = 0
                    while True:
                        t = time.perf_counter()
                        _code, nxt, msgs = await pull(inst, "bench-consumer", mq, offset,
                                                      max_msgs=pull_size)
                        if not msgs:
                            break
                        lats.append(time.perf_counter() - t)
                        n += len(msgs)
                        offset = nxt
                    counts.append(n)

                async with anyio.create_task_group() as tg:
                    for mq in queues:
                        tg.start_soon(drain_queue, mq)
                total = sum(counts)
            return total, lats, f"pull of up to {pull_size}"

        r = _measure(f"native.consume.pull_decoded.{'batched' if batched else 'single'}", pid,
                     drain)
    _show("native consume (100-byte messages)", [r], as_json)


def register(group: click.Group) -> None:
    group.add_command(produce)
    group.add_command(consume)
