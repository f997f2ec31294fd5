"""``ferrymq bench replication``: what replication costs a producer, and how long a failover takes.

In one run, on this machine, with a real etcd (Debian's ``etcd``) and real broker
processes on loopback:

- produce throughput through the remoting door with no slave (a standalone broker),
  one async slave, and one sync slave (``replication_mode``; min_insync_replicas 1),
  for single messages (SEND_MESSAGE_V2) and batches (SEND_BATCH_MESSAGE of
  ``--batch`` messages), each shape with ``--producers`` senders waiting for their
  acks;
- RTO: a producer sends continuously to a sync group of two; the master is
  SIGKILLed ``--kills`` times; the time from the kill to the first write the new
  master acknowledges, p50 and p99. The killed node is restarted and back in the
  in-sync set before the next kill.

Figures, never pass/fail (docs/cluster.md has a run's table). Every process on the
same cores: a slave competes with its master for CPU here, as it would not on a
machine of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import click
import trio

from ...clients.remoting import ClientError, RemotingClient
from ...protocols.remoting import RequestCode, ResponseCode, request
from ...protocols.remoting import headers as H
from ...protocols.remoting.messages import encode_batch
from ..replication.etcd import EtcdClient, EtcdError
from .report import print_table, progress_console

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
BODY = b"x" * 100
TOPIC = "BenchRepl"
QUEUES = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, round(q * (len(v) - 1)))]


@contextmanager
def _etcd(directory: str) -> Iterator[str]:
    binary = shutil.which("etcd")
    if binary is None:
        raise click.ClickException("etcd is not installed (Debian: apt-get install etcd-server)")
    client, peer = _free_port(), _free_port()
    url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    proc = subprocess.Popen(
        [binary, "--name", "bench", "--data-dir", os.path.join(directory, "etcd"),
         "--listen-client-urls", url, "--advertise-client-urls", url,
         "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
         "--initial-cluster", f"bench={peer_url}", "--log-level", "error"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=0.5) as r:
                    if json.loads(r.read()).get("health") == "true":
                        break
            except (OSError, ValueError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException("etcd did not start")
            time.sleep(0.05)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@dataclass
class _Node:
    name: str
    directory: str
    config: str
    port: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def ready(self) -> str:
        return os.path.join(self.directory, f"{self.name}.ready.json")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        if os.path.exists(self.ready):
            os.unlink(self.ready)
        args = [sys.executable, "-m", "ferrymq.gateways", "serve", "--config", self.config,
                "--data-dir", os.path.join(self.directory, self.name), "--host", "127.0.0.1",
                "--ready-file", self.ready, "--segment-size", str(64 << 20),
                "--remoting-port", str(self.port)]
        for door in ("namesrv", "kafka", "mqtt", "http"):
            args += [f"--{door}-port", "0"]
        log = open(os.path.join(self.directory, f"{self.name}.log"), "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()

    def info(self) -> dict[str, Any]:
        try:
            with open(self.ready) as f:
                info: dict[str, Any] = json.load(f)
        except (OSError, ValueError):
            return {}
        return info if self.proc is not None and info.get("pid") == self.proc.pid else {}

    def wait(self, role: str | None = None, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            info = self.info()
            if info and (role is None or info.get("role") == role):
                return
            if self.proc is None or self.proc.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException(f"broker {self.name} did not become {role or 'ready'}")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _write_config(directory: str, name: str, cluster: dict[str, Any] | None) -> str:
    lines = [f'broker_name = "{name.split("-", 1)[1]}"', f'cluster_name = "bench-{os.getpid()}"',
             f"default_queues = {QUEUES}"]
    if cluster is not None:
        lines.append("[cluster]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in cluster.items()]
    path = os.path.join(directory, f"{name}.toml")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


@contextmanager
def _group(directory: str, etcd: str | None, mode: str | None, nodes: int,
           lease_ttl_s: int = 3, group: str = "") -> Iterator[list[_Node]]:
    """``nodes`` brokers: standalone when ``mode`` is None, else a group in ``mode``
    (the broker group is named ``group``, by default the mode)."""
    started: list[_Node] = []
    try:
        for i in range(nodes):
            name = f"n{i}-{group or mode or 'none'}"
            cluster = None if mode is None else {
                "etcd": etcd, "node_id": name, "replication_listen": "127.0.0.1:0",
                "replication_mode": mode, "lease_ttl_s": lease_ttl_s, "fence_margin_ms": 800}
            node = _Node(name, directory, _write_config(directory, name, cluster), _free_port())
            node.start()
            node.wait("master" if mode is not None and i == 0 else None)
            if mode is not None and i > 0:
                node.wait("slave")
            started.append(node)
        yield started
    finally:
        for n in started:
            n.stop()


def _send_request(batch: int, qid: int) -> Any:
    if batch <= 1:
        ext = H.SendMessageRequestHeader("bench", TOPIC, queueId=qid).to_ext_v2()
        return request(RequestCode.SEND_MESSAGE_V2, 0, ext, BODY)
    ext = H.SendMessageRequestHeader("bench", TOPIC, queueId=qid, batch=True).to_ext_v2()
    return request(RequestCode.SEND_BATCH_MESSAGE, 0, ext,
                   encode_batch((BODY, {}, 0) for _ in range(batch)))


async def _produce(address: str, batch: int, producers: int, seconds: float
                   ) -> tuple[float, float, float]:
    """(messages per second, ack latency p50 ms, p99 ms) of ``producers`` senders, each
    on a connection of its own (the remoting door serves one connection's sends in
    order, as RocketMQ producers expect)."""
    latencies: list[float] = []
    sent = 0
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(RemotingClient()) for _ in range(producers)]
        # Warm up: the topic exists and every connection is open before the clock starts.
        for rc in clients:
            r = await rc.invoke(address, _send_request(batch, 0), 10)
            if r.code != ResponseCode.SUCCESS:
                raise click.ClickException(f"the broker refused a warm-up send: {r.remark}")
        deadline = time.perf_counter() + seconds
        t0 = time.perf_counter()

        async def sender(i: int) -> None:
            nonlocal sent
            rc = clients[i]
            req = _send_request(batch, i % QUEUES)
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                r = await rc.invoke(address, req, 10)
                if r.code != ResponseCode.SUCCESS:
                    raise click.ClickException(f"send refused: {r.code} {r.remark}")
                latencies.append(time.perf_counter() - t)
                sent += max(batch, 1)

        async with trio.open_nursery() as n:
            for i in range(producers):
                n.start_soon(sender, i)
        elapsed = time.perf_counter() - t0
    return sent / elapsed, _pct(latencies, 0.5) * 1000, _pct(latencies, 0.99) * 1000


async def _isr(etcd: str, size: int, group: str, timeout: float = 30) -> None:
    client = EtcdClient([etcd])
    with trio.fail_after(timeout):
        while True:
            try:
                kv = await client.get(f"/ferrymq/bench-{os.getpid()}/groups/{group}/state")
            except EtcdError:
                kv = None
            if kv is not None and len(kv.json().get("isr", ())) >= size:
                return
            await trio.sleep(0.05)


async def _rto(nodes: list[_Node], etcd: str, kills: int) -> list[float]:
    """Seconds from each SIGKILL of the master to the first write the next one acks."""
    out: list[float] = []
    console = progress_console()
    async with RemotingClient() as rc:
        for k in range(kills):
            await _isr(etcd, 2, "rto")
            master = next(n for n in nodes if n.info().get("role") == "master")
            other = next(n for n in nodes if n is not master)
            ok = await rc.invoke(master.address, _send_request(1, 0), 10)
            if ok.code != ResponseCode.SUCCESS:
                raise click.ClickException(f"the master refused a send: {ok.remark}")
            killed = time.perf_counter()
            master.kill()
            while True:
                try:
                    with trio.move_on_after(2):
                        r = await rc.invoke(other.address, _send_request(1, 0), 2)
                        if r.code == ResponseCode.SUCCESS:
                            break
                except (ClientError, OSError):
                    pass
                await trio.sleep(0.01)
            out.append(time.perf_counter() - killed)
            console.print(f"kill {k + 1}/{kills}: RTO {out[-1]:.2f} s")
            master.start()
            await trio.to_thread.run_sync(master.wait, "slave")
    return out


@click.command("replication", context_settings=CONTEXT)
@click.option("--seconds", type=float, default=5.0, show_default=True, help="Per shape.")
@click.option("--producers", type=int, default=8, show_default=True,
              help="Senders, each waiting for its acks.")
@click.option("--batch", type=int, default=64, show_default=True,
              help="Messages per batch in the batch shape.")
@click.option("--kills", type=int, default=5, show_default=True, help="Failovers for the RTO.")
@click.option("--lease-ttl", type=int, default=3, show_default=True,
              help="The etcd lease TTL (s) of the RTO group.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def replication(seconds: float, producers: int, batch: int, kills: int, lease_ttl: int,
                as_json: bool) -> None:
    """Produce throughput with no slave, an async slave and a sync slave; failover RTO."""
    console = progress_console()
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="ferrymq-bench-repl-") as d, _etcd(d) as etcd:
        base: dict[str, float] = {}
        for mode, label in ((None, "no slave"), ("async", "async slave"),
                            ("sync", "sync slave")):
            sub = os.path.join(d, label.replace(" ", "-"))
            os.makedirs(sub)
            with _group(sub, etcd, mode, 1 if mode is None else 2) as nodes:
                if mode is not None:
                    trio.run(_isr, etcd, 2, mode)
                for shape, size in (("single", 1), (f"batch of {batch}", batch)):
                    console.print(f"{label}: {shape} ...")
                    rate, p50, p99 = trio.run(_produce, nodes[0].address, size, producers,
                                              seconds)
                    key = shape
                    if mode is None:
                        base[key] = rate
                    rows.append([label, shape, rate, rate / base[key] * 100, p50, p99])
        columns = ["replication", "shape", "msgs/s", "% of no slave", "ack p50 ms",
                   "ack p99 ms"]
        print_table(f"produce, {producers} senders waiting for acks, 100-byte messages",
                    columns, rows, as_json=as_json)
        if kills > 0:
            sub = os.path.join(d, "rto")
            os.makedirs(sub)
            with _group(sub, etcd, "sync", 2, lease_ttl, "rto") as nodes:
                rto = trio.run(_rto, nodes, etcd, kills)
            print_table(f"failover: SIGKILL the master of a sync group of 2, lease TTL "
                        f"{lease_ttl} s", ["kills", "RTO p50 s", "RTO p99 s", "max s"],
                        [[len(rto), _pct(rto, 0.5), _pct(rto, 0.99), max(rto)]],
                        as_json=as_json)


COMMANDS = (replication,)
