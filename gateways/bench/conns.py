"""``ferrymq bench conns``: many idle and slowloris connections at every door, Mosquitto beside MQTT.

For each door (NameServer, remoting, Kafka, MQTT, HTTP; then Mosquitto on
its MQTT port) the benchmark opens, from one process with non-blocking sockets
and one ``selectors`` loop (epoll: no thread per connection):

- ``--idle`` connections (10,000) that each complete their protocol's first
  exchange (a NameServer route query, GET_BROKER_RUNTIME_INFO, ApiVersions,
  CONNECT/CONNACK, GET /healthz) and then say nothing;
- ``--slowloris`` connections (1,000) that each send their first request one
  byte a second and never finish it;

and holds them ``--hold`` seconds while one live client sends a request every
``--probe-ms`` (the same request on one connection) and times the answers.
It reports the broker's RSS growth per idle connection, how many connections
of each kind the broker closed and after how long, the limits that closed
them (FerryMQ's ``ferrymq_connections_closed_total`` / ``_refused_total``),
and the live client's latency (p50/p99) while they were held.

FerryMQ runs with its default time limits (docs/operations.md, "Connection
limits": 10 s to complete the first request, RocketMQ's 120 s idle close,
Kafka's 10 minutes, MQTT's connect timeout and keep alive, HTTP's header and
keep-alive timeouts); only the connection caps are raised so that the
benchmark's connections, all from 127.0.0.1, are admitted. The file-descriptor
soft limit is raised to the hard limit in this process and in the brokers it
starts.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import resource
import selectors
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import click
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ...protocols.kafka import schema as kschema
from ...protocols.kafka.connection import request_bytes as kafka_request
from ...protocols.remoting import RequestCode, encode, request
from .mqtt import RunningBroker, free_port, rss_kib, start_mosquitto, wait_port
from .report import _fmt, print_table, progress_console

DOORS = ("namesrv", "remoting", "kafka", "mqtt", "http")
OPEN_IN_FLIGHT = 256  # connects (and first exchanges) under way at once
SLOW_PAD = 300  # bytes of padding in a slowloris request: five minutes at a byte a second


# ------------------------------------------------------------------ what each door is sent


def _remoting_frame_done(buf: bytes | bytearray) -> bool:
    return len(buf) >= 4 and len(buf) >= 4 + struct.unpack_from(">i", buf)[0]


def _http_done(buf: bytes | bytearray) -> bool:
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return False
    m = re.search(rb"content-length:\s*(\d+)", bytes(buf[:end]), re.I)
    return len(buf) >= end + 4 + (int(m.group(1)) if m else 0)


def _mqtt_connect(client_id: bytes, keep_alive: int = 0) -> bytes:
    body = (b"\x00\x04MQTT\x04\x02" + struct.pack(">H", keep_alive)
            + struct.pack(">H", len(client_id)) + client_id)
    n = len(body)
    length = bytes((n,)) if n < 128 else bytes(((n & 0x7F) | 0x80, n >> 7))
    return b"\x10" + length + body


def _kafka_api_versions(pad: str = "") -> bytes:
    body = kschema.request_class(18)(client_software_name="bench" + pad,
                                     client_software_version="1")
    return kafka_request(18, 3, 1, body, client_id="bench-conns")


@dataclass(frozen=True)
class Protocol:
    """The bytes a door is sent: the first exchange (``hello``, answered when
    ``hello_done``), the slowloris request (``slow``), the live client's request."""

    hello: Callable[[int], bytes]
    hello_done: Callable[[bytes | bytearray], bool]
    slow: bytes
    probe: bytes
    probe_done: Callable[[bytes | bytearray], bool]
    live_hello: bytes = b""  # sent once on the live client's connection first


PROTOCOLS: dict[str, Protocol] = {
    "namesrv": Protocol(
        lambda i: encode(request(RequestCode.GET_ROUTEINFO_BY_TOPIC, i, {"topic": "bench"})),
        _remoting_frame_done,
        encode(request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 1, {"topic": "b" * SLOW_PAD})),
        encode(request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 7, {"topic": "bench"})),
        _remoting_frame_done),
    "remoting": Protocol(
        lambda i: encode(request(RequestCode.GET_BROKER_RUNTIME_INFO, i)),
        _remoting_frame_done,
        encode(request(RequestCode.GET_BROKER_RUNTIME_INFO, 1, {"pad": "p" * SLOW_PAD})),
        encode(request(RequestCode.GET_BROKER_RUNTIME_INFO, 7)),
        _remoting_frame_done),
    "kafka": Protocol(
        lambda i: _kafka_api_versions(), _remoting_frame_done,
        _kafka_api_versions("p" * SLOW_PAD), _kafka_api_versions(), _remoting_frame_done),
    "mqtt": Protocol(
        lambda i: _mqtt_connect(b"idle-%d" % i), lambda b: len(b) >= 4,
        _mqtt_connect(b"s" * SLOW_PAD), b"\xc0\x00", lambda b: len(b) >= 2,
        live_hello=_mqtt_connect(b"bench-live")),
    "http": Protocol(
        lambda i: b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n", _http_done,
        b"GET /healthz HTTP/1.1\r\nhost: bench\r\nx-pad: " + b"p" * SLOW_PAD + b"\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nhost: bench\r\n\r\n", _http_done),
}


# ------------------------------------------------------------------ brokers


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit; the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


BENCH_CONFIG = """
[namesrv]
max_connections = 100000
max_connections_per_address = 0
[remoting]
max_connections = 100000
max_connections_per_address = 0
[kafka]
max_connections = 100000
max_connections_per_address = 0
[mqtt]
ws_port = 0
sys_interval = 0.0
max_connections = 1000000
[http]
max_connections = 100000
"""


def start_ferrymq() -> tuple[RunningBroker, dict[str, int]]:
    work = tempfile.mkdtemp(prefix="ferrymq-bench-conns-")
    ports = {door: free_port() for door in DOORS}
    conf = os.path.join(work, "ferrymq.toml")
    with open(conf, "w") as f:
        f.write(BENCH_CONFIG)
    args = [sys.executable, "-m", "ferrymq.gateways", "serve", "--config", conf, "--data-dir",
            os.path.join(work, "data"), "--host", "127.0.0.1", "--segment-size", str(64 << 20)]
    for door, port in ports.items():
        args += [f"--{door}-port", str(port)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=raise_fd_limit)
    for port in ports.values():
        wait_port(port, proc)
    return RunningBroker("ferrymq", ports["http"], proc, work), ports


def _metrics(http_port: int) -> dict[tuple[str, str, str], float]:
    """(name, protocol, reason) -> value of the broker's supervision counters."""
    out: dict[tuple[str, str, str], float] = {}
    with socket.create_connection(("127.0.0.1", http_port), timeout=10) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nhost: bench\r\nconnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    for m in re.finditer(rb'^(ferrymq_connections_(?:closed|refused)_total)\{protocol="([^"]+)",'
                         rb'reason="([^"]+)"\} (\S+)$', data, re.M):
        out[(m.group(1).decode(), m.group(2).decode(), m.group(3).decode())] = float(m.group(4))
    return out


# ------------------------------------------------------------------ the connections


@dataclass(slots=True)
class Conn:
    sock: socket.socket
    kind: str  # idle | slow | live
    opened: float
    state: str = "connecting"  # connecting | hello | open | closed
    buf: bytearray = field(default_factory=bytearray)
    sent: int = 0
    closed_after: float | None = None
    probe_t0: float = 0.0
    index: int = 0  # unique per door's run: MQTT client ids must not collide


@dataclass
class DoorResult:
    name: str
    idle: int = 0
    idle_failed: int = 0
    kib_per_conn: float | None = None
    idle_closed: list[float] = field(default_factory=list)
    slow: int = 0
    slow_closed: list[float] = field(default_factory=list)
    reasons: dict[str, float] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    probe_failures: int = 0
    fd_limit: int = 0


class Load:
    """One door's connections in one selector loop."""

    def __init__(self, port: int, proto: Protocol) -> None:
        self.port = port
        self.proto = proto
        self.sel = selectors.DefaultSelector()
        self.conns: list[Conn] = []
        self.live: Conn | None = None

    def _connect(self, kind: str) -> Conn:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        err = s.connect_ex(("127.0.0.1", self.port))
        if err not in (0, errno.EINPROGRESS):
            s.close()
            raise OSError(err, os.strerror(err))
        c = Conn(s, kind, time.monotonic(), index=len(self.conns))
        self.sel.register(s, selectors.EVENT_WRITE, c)
        self.conns.append(c)
        return c

    def _closed(self, c: Conn) -> None:
        if c.state == "closed":
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        c.sock.close()
        c.state = "closed"
        c.closed_after = time.monotonic() - c.opened

    def _event(self, c: Conn, ev: int) -> None:
        if c.state == "connecting":
            if c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._closed(c)
                return
            first = (self.proto.hello(c.index) if c.kind == "idle"
                     else self.proto.live_hello if c.kind == "live" else self.proto.slow[:1])
            try:
                c.sock.send(first)
            except OSError:
                self._closed(c)
                return
            c.sent = 1
            c.state = "hello" if c.kind == "idle" or (c.kind == "live" and first) else "open"
            self.sel.modify(c.sock, selectors.EVENT_READ, c)
            return
        try:
            data = c.sock.recv(1 << 16)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._closed(c)
            return
        if c.state == "hello":
            c.buf += data
            done = self.proto.hello_done if c.kind == "idle" else (lambda b: len(b) >= 4)
            if done(c.buf):
                c.state = "open"
                c.buf.clear()
        elif c.kind == "live" and c.probe_t0:
            c.buf += data
            if self.proto.probe_done(c.buf):
                self.latencies.append((time.monotonic() - c.probe_t0) * 1000)
                c.probe_t0 = 0.0
                c.buf.clear()

    def poll(self, timeout: float) -> None:
        for key, ev in self.sel.select(timeout):
            self._event(key.data, ev)

    def open_idle(self, n: int, progress: Callable[[int], None]) -> int:
        """Open ``n`` connections through their first exchange; how many made it."""
        started = 0
        while True:
            pending = sum(1 for c in self.conns if c.kind == "idle" and c.state in (
                "connecting", "hello"))
            while started < n and pending < OPEN_IN_FLIGHT:
                try:
                    self._connect("idle")
                except OSError:
                    break
                started += 1
                pending += 1
            if started >= n and not pending:
                break
            self.poll(0.2)
            progress(sum(1 for c in self.conns if c.kind == "idle" and c.state == "open"))
            if started < n and pending >= OPEN_IN_FLIGHT:
                continue
            if pending and not self.sel.get_map():
                break
        return sum(1 for c in self.conns if c.kind == "idle" and c.state == "open")

    def open_slow(self, n: int) -> int:
        opened = 0
        for _ in range(n):
            try:
                self._connect("slow")
                opened += 1
            except OSError:
                break
            if opened % OPEN_IN_FLIGHT == 0:
                self.poll(0)
        return opened

    def hold(self, seconds: float, probe_every: float, progress: Callable[[float], None]
             ) -> None:
        """Trickle the slowloris bytes (one a second each), probe, note closures."""
        self.latencies: list[float] = []
        self.probe_failures = 0
        self.live = self._connect("live")
        t0 = time.monotonic()
        next_byte = t0 + 1.0
        next_probe = t0 + 0.5
        while (now := time.monotonic()) < t0 + seconds:
            if now >= next_byte:
                next_byte += 1.0
                for c in self.conns:
                    if c.kind == "slow" and c.state == "open" and c.sent < len(self.proto.slow):
                        try:
                            c.sock.send(self.proto.slow[c.sent:c.sent + 1])
                            c.sent += 1
                        except BlockingIOError:
                            pass
                        except OSError:
                            self._closed(c)
            live = self.live
            if now >= next_probe and live.state == "open":
                next_probe = now + probe_every
                if live.probe_t0:  # no answer in a whole period: a failure, reconnect
                    if now - live.probe_t0 > 5.0:
                        self.probe_failures += 1
                        self._closed(live)
                        self.live = self._connect("live")
                else:
                    live.probe_t0 = now
                    try:
                        live.sock.send(self.proto.probe)
                    except OSError:
                        self.probe_failures += 1
                        self._closed(live)
                        self.live = self._connect("live")
            elif live.state == "closed":
                self.probe_failures += 1
                self.live = self._connect("live")
            self.poll(min(0.05, probe_every / 2))
            progress(now - t0)

    def close(self) -> None:
        for c in self.conns:
            if c.state != "closed":
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(c.sock)
                c.sock.close()
        self.sel.close()


def run_door(name: str, port: int, proto: Protocol, broker_pid: int, idle: int, slow: int,
             hold: float, probe_ms: float, metrics_port: int | None,
             progress: Progress) -> DoorResult:
    result = DoorResult(name, fd_limit=resource.getrlimit(resource.RLIMIT_NOFILE)[0])
    before = _metrics(metrics_port) if metrics_port else {}
    load = Load(port, proto)
    try:
        task = progress.add_task(f"{name}: idle connections", total=idle)
        rss0 = rss_kib(broker_pid)
        result.idle = load.open_idle(idle, lambda n: progress.update(task, completed=n))
        result.idle_failed = idle - result.idle
        time.sleep(1.0)  # let the broker settle before reading its memory
        if result.idle:
            result.kib_per_conn = (rss_kib(broker_pid) - rss0) / result.idle
        progress.update(task, completed=idle, description=f"{name}: slowloris connections")
        result.slow = load.open_slow(slow)
        task2 = progress.add_task(f"{name}: holding", total=hold)
        load.hold(hold, probe_ms / 1000, lambda t: progress.update(task2, completed=t))
        progress.update(task2, completed=hold)
        result.latencies_ms = load.latencies
        result.probe_failures = load.probe_failures
        result.idle_closed = [c.closed_after for c in load.conns
                              if c.kind == "idle" and c.closed_after is not None
                              and c.state == "closed"]
        result.slow_closed = [c.closed_after for c in load.conns
                              if c.kind == "slow" and c.closed_after is not None]
        if metrics_port:
            after = _metrics(metrics_port)
            proto_label = {"remoting": "rocketmq"}.get(name, name)
            for key, value in after.items():
                if key[1] == proto_label and value - before.get(key, 0):
                    kind = "refused" if "refused" in key[0] else "closed"
                    result.reasons[f"{kind}:{key[2]}"] = value - before.get(key, 0)
    finally:
        load.close()
    time.sleep(2.0)  # the broker notices the closes before the next door's run
    return result


# ------------------------------------------------------------------ the command


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, int(p / 100 * len(s)))]


@click.command("conns")
@click.option("--idle", default=10_000, show_default=True, help="Idle connections per door.")
@click.option("--slowloris", default=1_000, show_default=True,
              help="Connections per door that send their first request a byte a second.")
@click.option("--hold", default=45.0, show_default=True,
              help="Seconds the connections are held (past the 10 s and 30 s limits).")
@click.option("--probe-ms", default=50.0, show_default=True,
              help="The live client's request period.")
@click.option("--doors", default=",".join(DOORS), show_default=True)
@click.option("--mosquitto/--no-mosquitto", default=True, show_default=True,
              help="Run the MQTT load against Mosquitto too (Debian package mosquitto).")
@click.option("--json", "json_out", is_flag=True, help="One JSON object per door on stdout.")
def conns(idle: int, slowloris: int, hold: float, probe_ms: float, doors: str, mosquitto: bool,
          json_out: bool) -> None:
    """Idle and slowloris connections at every door: memory per connection, what the
    broker closes and when, and a live client's latency meanwhile; Mosquitto beside MQTT."""
    fd_limit = raise_fd_limit()
    if idle + slowloris + 64 > fd_limit:
        raise click.UsageError(f"{idle + slowloris} connections need more than the "
                               f"{fd_limit} file descriptors this process may open")
    wanted = [d.strip() for d in doors.split(",") if d.strip()]
    results: list[DoorResult] = []
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn(
            "{task.completed:,.0f}/{task.total:,.0f}"), TimeElapsedColumn(),
            console=progress_console(), transient=True) as progress:
        for door in wanted:
            # A broker of its own per door: memory one door's run freed would hide
            # what the next one's connections cost.
            broker, ports = start_ferrymq()
            try:
                results.append(run_door(door, ports[door], PROTOCOLS[door], broker.pid, idle,
                                        slowloris, hold, probe_ms, ports["http"], progress))
            finally:
                broker.stop()
        if mosquitto and "mqtt" in wanted:
            if shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
                click.echo("# mosquitto is not installed (apt-get install mosquitto): "
                           "skipped", err=True)
            else:
                peer = start_mosquitto()
                try:
                    results.append(run_door("mosquitto", peer.port, PROTOCOLS["mqtt"],
                                            peer.pid, idle, slowloris, hold, probe_ms,
                                            None, progress))
                finally:
                    peer.stop()
    _report(results, idle, slowloris, hold, json_out)


def _report(results: list[DoorResult], idle: int, slow: int, hold: float, json_out: bool
            ) -> None:
    """One column per door, one row per figure (a door's figures read down a column)."""
    figures: list[tuple[str, Callable[[DoorResult], object]]] = [
        ("idle connections open", lambda r: r.idle),
        ("  broker RSS KiB per idle connection", lambda r: r.kib_per_conn),
        ("  closed by the broker while held", lambda r: len(r.idle_closed)),
        ("slowloris connections", lambda r: r.slow),
        ("  closed by the broker while held", lambda r: len(r.slow_closed)),
        ("  closed after, p50 s", lambda r: _pct(r.slow_closed, 50)),
        ("  closed after, max s", lambda r: max(r.slow_closed, default=None)),
        ("limits that closed or refused them", lambda r: "; ".join(
            f"{k.split(':', 1)[1]} {v:,.0f}" for k, v in sorted(r.reasons.items()))
            or {"mosquitto": "-", "mqtt": "MQTT's own (connect timeout, keep alive)"}.get(
                r.name, "none")),
        ("live client p50 ms", lambda r: _pct(r.latencies_ms, 50)),
        ("live client p99 ms", lambda r: _pct(r.latencies_ms, 99)),
        ("live client answers / failures", lambda r: f"{len(r.latencies_ms):,} / "
                                                     f"{r.probe_failures}"),
    ]
    if json_out:
        for r in results:
            print_table("", ("door", *(f[0].strip() for f in figures)),
                        [(r.name, *(f[1](r) for f in figures))], as_json=True)
        return
    table = Table(title=f"{idle:,} idle + {slow:,} slowloris connections per door, "
                        f"held {hold:.0f} s")
    table.add_column("")
    for r in results:
        table.add_column(r.name, justify="right")
    for label, get in figures:
        table.add_row(label, *(_fmt(get(r)) for r in results))
    Console(file=sys.stdout, width=max(150, Console().width)).print(table)


COMMANDS = (conns,)  # gateways/bench/__init__.py adds these to the ``bench`` group
