"""Real etcd and real broker groups for the cluster tests: processes on ephemeral ports,
each with its own data directory, and small async helpers to drive them.

``Etcd`` runs Debian's ``etcd`` (package ``etcd-server``; scripts/test installs it) on
loopback with its own data directory. ``Node`` is a ``ferrymq serve`` process with a
``[cluster]`` table; its ready file is rewritten at every life of its core with the
role, so ``await node.wait_role("master")`` needs no etcd client. ``Sender`` is a
raw remoting producer that follows the master (any node's refusal, or a dead
connection, sends it to look again) and records every acknowledgement for the
history checker (tests/history.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio
from ferrymq.clients.remoting import ClientError, RemotingClient
from ferrymq.gateways.replication.etcd import EtcdClient
from ferrymq.protocols.remoting import RemotingCommand, RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import headers as H
from ferrymq.protocols.remoting.messages import decode_messages, encode_properties

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/: brokerproc.py
from brokerproc import BrokerProcess, free_port

ETCD = shutil.which("etcd") or "/usr/bin/etcd"


class Etcd:
    """One etcd member on loopback ports of its own."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.client_port = free_port()
        self.peer_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    def start(self, timeout: float = 20.0) -> Etcd:
        self.directory.mkdir(parents=True, exist_ok=True)
        peer = f"http://127.0.0.1:{self.peer_port}"
        log = open(self.directory / "etcd.log", "ab")  # noqa: SIM115 - the child keeps it
        self.proc = subprocess.Popen(
            [ETCD, "--name", "test", "--data-dir", str(self.directory / "data"),
             "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
             "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
             "--initial-cluster", f"test={peer}", "--log-level", "error"],
            stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {(self.directory / 'etcd.log').read_text()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=0.5) as r:
                    if json.loads(r.read()).get("health") == "true":
                        return self
            except (OSError, ValueError):  # not listening yet
                pass
            time.sleep(0.05)
        raise RuntimeError("etcd did not start")

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Node:
    """One broker of a group: a ``ferrymq serve`` process with a [cluster] table."""

    name: str
    process: BrokerProcess
    config_path: Path

    @property
    def ready_path(self) -> Path:
        d = self.process.data_dir
        return d.parent / f"{d.name}.ready.json"

    @property
    def data_dir(self) -> Path:
        return self.process.data_dir

    def info(self) -> dict[str, Any]:
        try:
            info = json.loads(self.ready_path.read_text())
        except (OSError, ValueError):
            return {}
        if self.process.proc is None or info.get("pid") != self.process.proc.pid:
            return {}
        return info

    @property
    def role(self) -> str | None:
        return self.info().get("role") if self.process.alive else None

    @property
    def remoting(self) -> str:
        return self.process.address("remoting")

    async def start(self) -> Node:
        await trio.to_thread.run_sync(self.process.start)
        return self

    def kill(self) -> None:
        self.process.kill()

    def pause(self) -> None:
        assert self.process.proc is not None
        self.process.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process.proc is not None
        self.process.proc.send_signal(signal.SIGCONT)

    async def wait_role(self, role: str, timeout: float = 40.0, life_after: int = 0) -> None:
        """Until the node's current life has ``role`` (and is later than ``life_after``)."""
        with trio.fail_after(timeout):
            while True:
                info = self.info()
                if info.get("role") == role and info.get("life", 0) > life_after:
                    return
                if not self.process.alive:
                    raise RuntimeError(f"{self.name} died:\n{self.process.log()}")
                await trio.sleep(0.02)

    def commitlog_bytes(self) -> bytes:
        d = self.data_dir / "store" / "commitlog"
        return b"".join((d / n).read_bytes() for n in sorted(os.listdir(d)))

    def log(self) -> str:
        return self.process.log()


@dataclass
class Group:
    """A broker group's nodes, sharing an etcd and a broker name."""

    etcd: Etcd
    tmp: Path
    name: str = "g1"
    settings: dict[str, Any] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    cluster_name: str = ""

    def __post_init__(self) -> None:
        self.cluster_name = self.cluster_name or f"c{os.getpid()}-{time.monotonic_ns()}"

    def node(self, name: str, doors: Sequence[str] = ("remoting",), *,
             namesrv: str | None = None, remoting: dict[str, Any] | None = None,
             **settings: Any) -> Node:
        cluster = {"etcd": self.etcd.url, "node_id": name,
                   "replication_listen": "127.0.0.1:0", "lease_ttl_s": 2,
                   "fence_margin_ms": 600, "replica_lag_max_ms": 2000,
                   "replication_timeout_ms": 4000, **self.settings, **settings}
        lines = [f'broker_name = "{self.name}"', f'cluster_name = "{self.cluster_name}"',
                 "cq_entries_per_file = 20000",
                 "index_slots = 4096", "index_entries = 20000", "max_message_size = 65536",
                 "checkpoint_interval_ms = 200"]
        if namesrv:
            lines.append(f'namesrv_addr = "{namesrv}"')
        if remoting:
            lines.append("[remoting]")
            lines += [f"{k} = {json.dumps(v)}" for k, v in remoting.items()]
        lines.append("[cluster]")
        for k, v in cluster.items():
            lines.append(f"{k} = {json.dumps(v)}")
        path = self.tmp / f"{name}.toml"
        path.write_text("\n".join(lines) + "\n")
        bp = BrokerProcess(self.tmp / name, tuple(doors),
                           ("--config", str(path), "--segment-size", "1048576"))
        n = self.nodes[name] = Node(name, bp, path)
        return n

    def master(self) -> Node | None:
        for n in self.nodes.values():
            if n.role == "master":
                return n
        return None

    async def wait_master(self, timeout: float = 20.0, other_than: Node | None = None) -> Node:
        with trio.fail_after(timeout):
            while True:
                m = self.master()
                if m is not None and m is not other_than:
                    return m
                await trio.sleep(0.02)

    async def state(self) -> dict[str, Any]:
        kv = await EtcdClient([self.etcd.url]).get(
            f"/ferrymq/{self.cluster_name}/groups/{self.name}/state")
        return kv.json() if kv is not None else {}

    async def wait_isr(self, isr: set[str], timeout: float = 20.0) -> None:
        with trio.fail_after(timeout):
            while set((await self.state()).get("isr", ())) != isr:
                await trio.sleep(0.05)

    def stop(self) -> None:
        for n in self.nodes.values():
            try:
                if n.process.alive:
                    n.resume()
                n.process.stop(timeout=15)
            except Exception:
                n.process.kill()


# ---------------------------------------------------------------- raw remoting

def send_request(topic: str, body: bytes, qid: int) -> RemotingCommand:
    ext = H.SendMessageRequestHeader("pg", topic, queueId=qid, bornTimestamp=int(time.time() * 1000),
                                     properties=encode_properties({})).to_ext_v2()
    return request(RequestCode.SEND_MESSAGE_V2, 0, ext, body)


def pull_request(topic: str, qid: int, offset: int, n: int = 256) -> RemotingCommand:
    return request(RequestCode.PULL_MESSAGE, 0, H.PullMessageRequestHeader(
        "history", topic, qid, offset, n, 0, 0, 0, None, 0, "TAG").to_ext())


async def read_queue(rc: RemotingClient, address: str, topic: str, qid: int
                     ) -> list[tuple[int, bytes]]:
    """Every visible message of a queue through PULL_MESSAGE."""
    out: list[tuple[int, bytes]] = []
    offset = 0
    while True:
        r = await rc.invoke(address, pull_request(topic, qid, offset), 10)
        if r.code == ResponseCode.PULL_OFFSET_MOVED:
            offset = int(r.ext("nextBeginOffset") or 0)
            continue
        if r.code != ResponseCode.SUCCESS:
            return out
        msgs = decode_messages(r.body)
        out += [(m.queue_offset, m.body) for m in msgs if m.queue_offset >= offset]
        offset = int(r.ext("nextBeginOffset") or offset)


@dataclass
class Ack:
    queue: int
    offset: int
    body: bytes
    sent_at: float
    acked_at: float
    node: str


class Sender:
    """A sequential producer of unique bodies ``run:seq:attempt`` that follows the group's
    master: an error or a refusal makes it find the master again and send the next
    attempt. Every acknowledgement is recorded (``acks``); so is every refusal."""

    def __init__(self, group: Group, topic: str, queues: int = 4, run: str = "r") -> None:
        self.group = group
        self.topic = topic
        self.queues = queues
        self.run = run
        self.acks: list[Ack] = []
        self.refusals: list[tuple[float, int, str]] = []  # (time, code, node)
        self.attempts = 0
        self.seq = 0

    async def send_forever(self, rc: RemotingClient, stop: trio.Event,
                           on_ack: Callable[[Ack], None] | None = None) -> None:
        while not stop.is_set():
            m = self.group.master()
            if m is None:
                await trio.sleep(0.01)
                continue
            q = self.seq % self.queues
            self.attempts += 1
            body = f"{self.run}:{self.seq}:{self.attempts}".encode()
            t0 = time.monotonic()
            try:
                r = await rc.invoke(m.remoting, send_request(self.topic, body, q), 6)
            except (ClientError, OSError, trio.BrokenResourceError):
                await trio.sleep(0.02)
                continue
            if r.code != ResponseCode.SUCCESS:
                self.refusals.append((time.monotonic(), r.code, m.name))
                await trio.sleep(0.02)
                continue
            ack = Ack(q, int(r.ext("queueOffset") or -1), body, t0, time.monotonic(), m.name)
            self.acks.append(ack)
            self.seq += 1
            if on_ack is not None:
                on_ack(ack)
