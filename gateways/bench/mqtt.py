"""``ferrymq bench mqtt``: FerryMQ's MQTT door against Mosquitto and amqtt, same machine, same run.

The load generator is raw sockets and ``selectors`` (no MQTT library: paho
tops out near 20-40k messages/s and would measure itself). Every broker gets
the same bytes: MQTT 3.1.1, topic ``bench/t``, 100-byte payloads. Scenarios:

- ``qos0``: one publisher -> one QoS 0 subscriber. The publisher keeps at most
  ``WINDOW`` messages ahead of the subscriber, so no broker has to drop.
- ``qos1``: one publisher with ``QOS1_WINDOW`` unacknowledged QoS 1 PUBLISHes,
  at most ``QOS1_AHEAD`` ahead of one QoS 1 subscriber that acknowledges each
  message.
- ``fanout``: one QoS 0 publisher -> ``--fanout`` subscribers (deliveries/s).
- ``idle``: ``--idle-clients`` connected clients; RSS growth per connection.
- ``connect``: CONNECT/CONNACK/DISCONNECT cycles per second, 64 in parallel.

Figures: messages/s received by the subscribers over ``--seconds`` after a
one-second warm-up, and the broker's CPU (user + system, from /proc) per
message. Targets (issue 5) are printed beside the figures.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import click

TOPIC = b"bench/t"
WINDOW = 5_000  # QoS 0: messages the publisher may run ahead of its slowest subscriber
QOS1_WINDOW = 64  # QoS 1: unacknowledged PUBLISHes per publisher (FerryMQ's Receive Maximum)
QOS1_AHEAD = 500  # QoS 1: messages the publisher may run ahead of its subscriber
CONNECT_PARALLEL = 64
CLK_TCK = os.sysconf("SC_CLK_TCK")
PEERS = ("mosquitto", "amqtt")


# ------------------------------------------------------------------ brokers

def proc_cpu(pid: int) -> float:
    """user + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"broker exited with {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@dataclass
class RunningBroker:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    workdir: str

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> None:
        """Stop the broker we started, by its own process id."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


def start_ferrymq() -> RunningBroker:
    work = tempfile.mkdtemp(prefix="ferrymq-bench-")
    port = free_port()
    conf = os.path.join(work, "ferrymq.toml")
    with open(conf, "w") as f:
        f.write("[mqtt]\nws_port = 0\nsys_interval = 0.0\nmax_connections = 1000000\n")
    args = [sys.executable, "-m", "ferrymq.gateways", "serve", "--config", conf, "--data-dir",
            os.path.join(work, "data"), "--host", "127.0.0.1", "--mqtt-port", str(port)]
    for door in ("namesrv", "remoting", "kafka", "http"):
        args += [f"--{door}-port", "0"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return RunningBroker("ferrymq", port, proc, work)


def start_mosquitto() -> RunningBroker:
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(exe):
        raise RuntimeError("mosquitto is not installed (Debian: apt-get install mosquitto)")
    work = tempfile.mkdtemp(prefix="mosquitto-bench-")
    os.chmod(work, 0o755)
    port = free_port()
    conf = os.path.join(work, "mosquitto.conf")
    with open(conf, "w") as f:
        # Loopback only, no persistence, defaults otherwise (max_inflight 20,
        # max_queued_messages 1000), like FerryMQ's defaults.
        f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                "log_dest none\nmax_connections -1\n")
    proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return RunningBroker("mosquitto", port, proc, work)


def start_amqtt() -> RunningBroker:
    exe = shutil.which("amqtt") or os.path.join(os.path.dirname(sys.executable), "amqtt")
    if not os.path.exists(exe):
        raise RuntimeError("amqtt is not installed (pip install amqtt)")
    work = tempfile.mkdtemp(prefix="amqtt-bench-")
    port = free_port()
    conf = os.path.join(work, "amqtt.yaml")
    with open(conf, "w") as f:
        # Anonymous access and nothing else: no packet logging, no $SYS plugin.
        f.write(f"listeners:\n  default:\n    type: tcp\n    bind: 127.0.0.1:{port}\n"
                "    max_connections: 0\nplugins:\n"
                "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n"
                "    allow_anonymous: true\n")
    proc = subprocess.Popen([exe, "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, cwd=work)
    wait_port(port, proc)
    return RunningBroker("amqtt", port, proc, work)


STARTERS: dict[str, Callable[[], RunningBroker]] = {
    "ferrymq": start_ferrymq, "mosquitto": start_mosquitto, "amqtt": start_amqtt}


# ------------------------------------------------------------------ wire bytes

def _utf8(s: bytes) -> bytes:
    return struct.pack(">H", len(s)) + s


def connect_packet(client_id: str, keep_alive: int = 0) -> bytes:
    body = _utf8(b"MQTT") + bytes((4, 0x02)) + struct.pack(">H", keep_alive) + _utf8(
        client_id.encode())
    return bytes((0x10, len(body))) + body


def subscribe_packet(pid: int, topic: bytes, qos: int) -> bytes:
    body = struct.pack(">H", pid) + _utf8(topic) + bytes((qos,))
    return bytes((0x82, len(body))) + body


def publish_packet(topic: bytes, payload: bytes, qos: int, pid: int = 0) -> bytes:
    body = _utf8(topic) + (struct.pack(">H", pid) if qos else b"") + payload
    n = len(body)
    assert n < 16384
    length = bytes((n,)) if n < 128 else bytes(((n & 0x7F) | 0x80, n >> 7))
    return bytes((0x30 | (qos << 1),)) + length + body


DISCONNECT = b"\xe0\x00"


def open_client(port: int, client_id: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(connect_packet(client_id))
    ack = _recv_exact(s, 4)
    if ack[0] != 0x20 or ack[3] != 0:
        raise RuntimeError(f"CONNACK refused: {ack!r}")
    return s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("connection closed")
        buf += chunk
    return buf


def subscribe(s: socket.socket, topic: bytes, qos: int) -> None:
    s.sendall(subscribe_packet(1, topic, qos))
    ack = _recv_exact(s, 5)
    if ack[0] != 0x90 or ack[4] & 0x80:
        raise RuntimeError(f"SUBACK refused: {ack!r}")


# ------------------------------------------------------------------ flows

@dataclass
class FlowResult:
    msgs_per_s: float
    published_per_s: float
    broker_cpu_s: float
    client_cpu_s: float
    seconds: float
    deliveries: int

    @property
    def cpu_us_per_msg(self) -> float:
        return self.broker_cpu_s / self.deliveries * 1e6 if self.deliveries else float("nan")


@dataclass
class _Conn:
    sock: socket.socket
    out: bytearray = field(default_factory=bytearray)
    pend: bytearray = field(default_factory=bytearray)
    received: int = 0
    writing: bool = False


def run_flow(broker: RunningBroker, qos: int, subscribers: int, seconds: float,
             payload_size: int, warmup: float = 1.0) -> FlowResult:
    """One publisher -> ``subscribers`` on ``bench/t`` at ``qos``; see the module docstring."""
    payload = b"x" * payload_size
    subs = []
    for i in range(subscribers):
        s = open_client(broker.port, f"bench-sub-{i}")
        subscribe(s, TOPIC, qos)
        subs.append(_Conn(s))
    pub = _Conn(open_client(broker.port, "bench-pub"))
    time.sleep(0.2)
    size = len(publish_packet(TOPIC, payload, qos, 1))
    pid_off = size - payload_size - 2  # where the packet id sits in a QoS 1 PUBLISH
    sel = selectors.DefaultSelector()
    for c in (*subs, pub):
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ, c)
    q0_chunk = publish_packet(TOPIC, payload, 0) * 200
    q1_packets = [publish_packet(TOPIC, payload, 1, pid) for pid in range(1, 65536)]
    next_pid = 0
    sent = 0
    acked = 0

    def flush(c: _Conn) -> None:
        if c.out:
            try:
                n = c.sock.send(c.out)
            except BlockingIOError:
                n = 0
            del c.out[:n]
        want = bool(c.out)
        if want != c.writing:
            c.writing = want
            sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0), c)

    def top_up() -> None:
        nonlocal sent, next_pid
        if qos == 0:
            slowest = min(c.received for c in subs)
            while sent - slowest < WINDOW and len(pub.out) < 1 << 20:
                pub.out += q0_chunk
                sent += 200
        else:
            # Unacknowledged publishes, and no further ahead of the subscriber than
            # its broker queue holds (1,000 by default everywhere): nobody drops.
            slowest = min(c.received for c in subs)
            k = min(QOS1_WINDOW - (sent - acked), QOS1_AHEAD - (sent - slowest))
            if k > 0:
                pids = [(next_pid + i) % 65535 for i in range(k)]
                pub.out += b"".join(q1_packets[p] for p in pids)
                next_pid = (next_pid + k) % 65535
                sent += k
        flush(pub)

    t_start = time.perf_counter()
    t0 = t_start + warmup
    t1 = t0 + seconds
    measuring = False
    base_recv = base_sent = 0
    cpu0 = cpu_self0 = 0.0
    top_up()
    while True:
        now = time.perf_counter()
        if not measuring and now >= t0:
            measuring = True
            base_recv = sum(c.received for c in subs)
            base_sent = sent
            cpu0 = proc_cpu(broker.pid)
            cpu_self0 = time.process_time()
        if now >= t1:
            break
        for key, ev in sel.select(0.2):
            c = key.data
            if ev & selectors.EVENT_WRITE:
                flush(c)
            if not ev & selectors.EVENT_READ:
                continue
            data = c.sock.recv(1 << 18)
            if not data:
                raise RuntimeError(f"{broker.name} closed a connection")
            if c is pub:
                acked += len(data) // 4  # PUBACKs, 4 bytes each (3.1.1)
                continue
            pend = c.pend
            pend += data
            n = len(pend) // size
            if n:
                if qos:
                    c.out += b"".join(b"\x40\x02" + pend[i * size + pid_off:i * size + pid_off + 2]
                                      for i in range(n))
                    flush(c)
                del pend[:n * size]
                c.received += n
        top_up()
    cpu1 = proc_cpu(broker.pid)
    cpu_self1 = time.process_time()
    total = sum(c.received for c in subs) - base_recv
    elapsed = time.perf_counter() - t0
    for c in (*subs, pub):
        sel.unregister(c.sock)
        c.sock.close()
    return FlowResult(total / elapsed, (sent - base_sent) / elapsed, cpu1 - cpu0,
                      cpu_self1 - cpu_self0, elapsed, total)


# ------------------------------------------------------------------ connections

def raise_fd_limit(n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, n))
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def idle_connections(broker: RunningBroker, n: int) -> tuple[float, int]:
    """(KiB of broker RSS per connected idle client, clients connected)."""
    time.sleep(0.5)
    rss0 = rss_kib(broker.pid)
    socks: list[socket.socket] = []
    try:
        for start in range(0, n, 250):
            batch = []
            for i in range(start, min(n, start + 250)):
                s = socket.create_connection(("127.0.0.1", broker.port), timeout=60)
                s.sendall(connect_packet(f"idle-{i}"))
                batch.append(s)
            for s in batch:
                if _recv_exact(s, 4)[3] != 0:
                    raise RuntimeError("CONNACK refused")
            socks += batch
        time.sleep(1.0)
        rss1 = rss_kib(broker.pid)
        return (rss1 - rss0) / len(socks), len(socks)
    finally:
        for s in socks:
            s.close()


def connect_rate(broker: RunningBroker, n: int) -> tuple[float, float]:
    """(CONNECT/CONNACK/DISCONNECT cycles per second, ``CONNECT_PARALLEL`` at a time;
    broker CPU microseconds per cycle)."""
    sel = selectors.DefaultSelector()
    started = done = 0
    cpu0 = proc_cpu(broker.pid)
    t0 = time.perf_counter()

    def begin() -> None:
        nonlocal started
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", broker.port))
        sel.register(s, selectors.EVENT_WRITE, [f"rate-{started}", b""])
        started += 1

    for _ in range(min(CONNECT_PARALLEL, n)):
        begin()
    while done < n:
        for key, ev in sel.select(5):
            s = key.fileobj
            state = key.data
            if ev & selectors.EVENT_WRITE:
                s.send(connect_packet(state[0]))  # type: ignore[union-attr]
                sel.modify(s, selectors.EVENT_READ, state)
                continue
            data = s.recv(16)  # type: ignore[union-attr]
            state[1] += data
            if len(state[1]) >= 4 or not data:
                if not data or state[1][3] != 0:
                    raise RuntimeError(f"{broker.name} refused a connection")
                with contextlib.suppress(OSError):
                    s.send(DISCONNECT)  # type: ignore[union-attr]
                sel.unregister(s)
                s.close()  # type: ignore[union-attr]
                done += 1
                if started < n:
                    begin()
    elapsed = time.perf_counter() - t0
    return n / elapsed, (proc_cpu(broker.pid) - cpu0) / n * 1e6


# ------------------------------------------------------------------ the command

@contextlib.contextmanager
def running(name: str) -> Iterator[RunningBroker]:
    b = STARTERS[name]()
    try:
        yield b
    finally:
        b.stop()


def _fmt(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:,.{digits}f}"


def _ratio(a: float | None, b: float | None, invert: bool = False) -> str:
    if not a or not b:
        return "-"
    return f"{(b / a if invert else a / b):.2f}x"


@click.command("mqtt")
@click.option("--seconds", default=5.0, show_default=True, help="Measured seconds per flow.")
@click.option("--peers", default=",".join(PEERS), show_default=True,
              help="Comma-separated peers to run beside FerryMQ (mosquitto, amqtt; '' for none).")
@click.option("--scenarios", default="qos0,qos1,fanout,idle,connect", show_default=True)
@click.option("--fanout", "fanout_n", default=100, show_default=True)
@click.option("--idle-clients", default=10_000, show_default=True)
@click.option("--connects", default=3000, show_default=True)
@click.option("--payload", default=100, show_default=True, help="Payload bytes.")
@click.option("--json", "json_out", is_flag=True, help="One JSON object per figure on stdout.")
def mqtt(seconds: float, peers: str, scenarios: str, fanout_n: int, idle_clients: int,
         connects: int, payload: int, json_out: bool) -> None:
    """MQTT throughput (QoS 0, QoS 1, fan-out), idle-connection memory and connect rate,
    FerryMQ against Mosquitto and amqtt in the same run."""
    names = ["ferrymq", *[p.strip() for p in peers.split(",") if p.strip()]]
    wanted = [s.strip() for s in scenarios.split(",") if s.strip()]
    raise_fd_limit(idle_clients * 2 + 1000)
    results: dict[str, dict[str, object]] = {n: {} for n in names}
    for name in names:
        for scenario in wanted:
            try:
                with running(name) as b:
                    click.echo(f"# {name}: {scenario} ...", err=True)
                    if scenario == "qos0":
                        results[name]["qos0"] = run_flow(b, 0, 1, seconds, payload)
                    elif scenario == "qos1":
                        results[name]["qos1"] = run_flow(b, 1, 1, seconds, payload)
                    elif scenario == "fanout":
                        results[name]["fanout"] = run_flow(b, 0, fanout_n, seconds, payload)
                    elif scenario == "idle":
                        results[name]["idle"] = idle_connections(b, idle_clients)
                    elif scenario == "connect":
                        results[name]["connect"] = connect_rate(b, connects)
            except (RuntimeError, OSError) as exc:
                click.echo(f"# {name}: {scenario} failed: {exc}", err=True)
                results[name][scenario] = None
    _report(results, names, wanted, json_out, fanout_n, idle_clients)


def _report(results: dict[str, dict[str, object]], names: list[str], wanted: list[str],
            json_out: bool, fanout_n: int, idle_clients: int) -> None:
    rows: list[tuple[str, dict[str, float | None], bool]] = []

    def flow(name: str, key: str) -> FlowResult | None:
        v = results.get(name, {}).get(key)
        return v if isinstance(v, FlowResult) else None

    def measured(name: str, key: str) -> tuple[Any, ...]:
        v = results.get(name, {}).get(key)
        return v if isinstance(v, tuple) else ()

    labels = {"qos0": "QoS 0, 1 -> 1 (msgs/s)", "qos1": "QoS 1, 1 -> 1 (msgs/s)",
              "fanout": f"QoS 0, 1 -> {fanout_n} (deliveries/s)"}
    for key in ("qos0", "qos1", "fanout"):
        if key not in wanted:
            continue
        vals = {n: flow(n, key) for n in names}
        rows.append((labels[key], {n: v.msgs_per_s if v else None for n, v in vals.items()},
                     False))
        rows.append(("  broker CPU us/msg", {n: v.cpu_us_per_msg if v else None
                                             for n, v in vals.items()}, True))
        rows.append(("  load generator CPU s", {n: v.client_cpu_s if v else None
                                                for n, v in vals.items()}, True))
    if "idle" in wanted:
        rows.append((f"RSS KiB per idle client ({idle_clients:,})",
                     {n: (measured(n, "idle") or (None,))[0] for n in names}, True))
    if "connect" in wanted:
        rows.append(("connects/s", {n: (measured(n, "connect") or (None,))[0]
                                    for n in names}, False))
        rows.append(("  broker CPU us/connect", {n: (measured(n, "connect") or (0, None))[1]
                                                 for n in names}, True))
    if json_out:
        for label, row, _ in rows:
            for n, v in row.items():
                click.echo(json.dumps({"name": label.strip(), "broker": n, "value": v}))
        return
    peers = names[1:]
    head = f"{'':42}" + "".join(f"{n:>14}" for n in names) + "".join(
        f"{'vs ' + p:>14}" for p in peers)
    click.echo(head)
    for label, row, lower_better in rows:
        digits = 1 if lower_better else 0
        line = f"{label:42}" + "".join(f"{_fmt(row.get(n), digits):>14}" for n in names)
        line += "".join(f"{_ratio(row.get('ferrymq'), row.get(p), lower_better):>14}"
                        for p in peers)
        click.echo(line)
    click.echo("\nratios: FerryMQ's figure relative to the peer's (higher is better for "
               "FerryMQ, CPU and RSS rows inverted).")
    click.echo("targets (issue 5): QoS 0 >= 0.5x Mosquitto and >= 10x amqtt; QoS 1 >= 0.4x "
               "Mosquitto; <= 15 us broker CPU per QoS 0 message; <= 8 KiB per idle client; "
               ">= 3,000 connects/s.")


COMMANDS = (mqtt,)  # gateways/bench/__init__.py adds these to the ``bench`` group
