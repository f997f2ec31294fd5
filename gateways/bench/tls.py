"""``ferrymq bench tls``: each door's throughput in plaintext and over TLS, one broker, one run.

One broker is started with TLS on every door (docs/security.md): a TLS-only
listener for Kafka, MQTT and HTTP, the NameServer and remoting ports
permissive. Each door gets the same workload twice, through the same client
code, once over a plain socket and once over TLS (the stdlib's ssl on the
client side too), back to back:

- Kafka: pipelined Produce requests (acks=1, 8 in flight) of 100-record batches;
- MQTT: QoS 1 PUBLISHes, 32 unacknowledged at most;
- HTTP: one message per POST on a keep-alive connection;
- RocketMQ remoting: the FerryMQ client's ``send`` from 32 concurrent tasks.

Plain and TLS alternate for ``--rounds`` rounds and each transport's best
round is reported: on a shared machine a burst of someone else's work lands in
one round, not in one transport. Certificates are made on the fly with trustme
(``pip install trustme``). The figures are what this machine gives, printed,
never asserted.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import anyio
import click

from ...clients import Admin, Message, Producer
from ...protocols.kafka import records as kr
from ...protocols.kafka import schema
from ...protocols.kafka.connection import parse_response, request_bytes
from .report import print_table, progress_console

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
PRODUCE = 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Certs:
    def __init__(self, d: str) -> None:
        try:
            import trustme
        except ImportError:
            raise click.ClickException("bench tls makes its certificates with trustme: "
                                       "pip install trustme") from None
        ca = trustme.CA()
        self.ca = os.path.join(d, "ca.pem")
        self.server = os.path.join(d, "server.pem")
        ca.cert_pem.write_to_path(self.ca)
        ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
            self.server)

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=self.ca)


@contextlib.contextmanager
def _broker(d: str, certs: _Certs) -> Iterator[dict[str, int]]:
    ports = {door: _free_port() for door in ("namesrv", "remoting", "kafka", "mqtt", "http")}
    conf = os.path.join(d, "bench-tls.toml")
    with open(conf, "w") as f:
        f.write(f'[tls]\ncert_file = "{certs.server}"\n'
                '[namesrv.tls]\nmode = "permissive"\n[remoting.tls]\nmode = "permissive"\n'
                "[kafka.tls]\nport = 0\n"  # TLS-only listeners: any free port (ready file)
                "[mqtt]\nws_port = 0\nsys_interval = 0.0\n"
                "[mqtt.tls]\nport = 0\n"
                "[http.tls]\nport = 0\n")
    ready = os.path.join(d, "ready.json")
    args = [sys.executable, "-m", "ferrymq.gateways", "serve", "--data-dir",
            os.path.join(d, "data"), "--host", "127.0.0.1", "--ready-file", ready,
            "--segment-size", str(256 << 20), "--config", conf]
    for door in ("namesrv", "remoting", "kafka", "mqtt", "http"):
        args += [f"--{door}-port", str(ports[door])]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(ready):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise click.ClickException("the benchmark broker did not start")
            time.sleep(0.05)
        with open(ready) as f:
            yield dict(json.load(f)["ports"])
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _connect(port: int, ctx: ssl.SSLContext | None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return ctx.wrap_socket(s, server_hostname="127.0.0.1") if ctx is not None else s


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise click.ClickException("the broker closed the connection")
        buf += chunk
    return bytes(buf)


def _kafka(port: int, ctx: ssl.SSLContext | None, seconds: float, size: int) -> int:
    R: Any = schema.request_class(PRODUCE)
    batch = kr.encode_batch(0, [(int(time.time() * 1000), None, b"k" * size, ())] * 100)
    body = R(transactional_id=None, acks=1, timeout_ms=30_000, topic_data=(
        R.TopicProduceData(name="bench-tls-kafka", partition_data=(
            R.PartitionProduceData(index=0, records=batch),)),))
    sent = 0
    with _connect(port, ctx) as s:
        inflight, corr = 0, itertools.count(1)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or inflight:
            while inflight < 8 and time.perf_counter() < end:
                s.sendall(request_bytes(PRODUCE, 3, next(corr), body))
                inflight += 1
            (n,) = struct.unpack(">i", _recv_exact(s, 4))
            _, resp = parse_response(PRODUCE, 3, _recv_exact(s, n))
            if resp.responses[0].partition_responses[0].error_code:
                raise click.ClickException("Kafka produce failed")
            inflight -= 1
            sent += 100
    return sent


def _varint(n: int) -> bytes:
    out = b""
    while True:
        byte, n = n & 0x7F, n >> 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def _mqtt(port: int, ctx: ssl.SSLContext | None, seconds: float, size: int) -> int:
    cid = f"bench-{os.getpid()}-{time.monotonic_ns()}".encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x3c" + struct.pack(">H", len(cid)) + cid
    topic = b"bench/tls"
    payload = b"m" * size
    sent = 0
    with _connect(port, ctx) as s:
        s.sendall(b"\x10" + _varint(len(var)) + var)
        if _recv_exact(s, 4) != b"\x20\x02\x00\x00":
            raise click.ClickException("MQTT CONNECT refused")
        inflight, pid = 0, 0
        end = time.perf_counter() + seconds
        buf = b""
        while time.perf_counter() < end or inflight:
            out = []
            while inflight < 32 and time.perf_counter() < end:
                pid = pid % 65535 + 1
                body = struct.pack(">H", len(topic)) + topic + struct.pack(">H", pid) + payload
                out.append(b"\x32" + _varint(len(body)) + body)
                inflight += 1
            if out:
                s.sendall(b"".join(out))
            buf += s.recv(65536)
            acks, buf = divmod(len(buf), 4)[0], buf[len(buf) - len(buf) % 4:]
            inflight -= acks
            sent += acks
    return sent


def _http(port: int, ctx: ssl.SSLContext | None, seconds: float, size: int) -> int:
    body = b"h" * size
    req = (b"POST /v1/topics/bench-tls-http/messages HTTP/1.1\r\nhost: x\r\n"
           b"content-type: application/octet-stream\r\ncontent-length: "
           + str(len(body)).encode() + b"\r\n\r\n" + body)
    sent = 0
    with _connect(port, ctx) as s:
        end = time.perf_counter() + seconds
        buf = b""
        while time.perf_counter() < end:
            s.sendall(req)
            while b"\r\n\r\n" not in buf:
                buf += s.recv(65536)
            head, _, buf = buf.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 201"):
                raise click.ClickException(f"HTTP produce failed: {head[:40]!r}")
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(buf) < length:
                buf += s.recv(65536)
            buf = buf[length:]
            sent += 1
    return sent


def _remoting(ns: str, ctx: ssl.SSLContext | None, seconds: float, size: int) -> int:
    topic = "bench-tls-remoting"

    async def run() -> int:
        async with Admin(ns, tls=ctx) as admin:
            await admin.create_topic(topic, 4)
        count = 0
        async with Producer(ns, "bench-tls", tls=ctx) as p:
            end = time.perf_counter() + seconds

            async def worker() -> None:
                nonlocal count
                while time.perf_counter() < end:
                    await p.send(Message(topic, b"r" * size))
                    count += 1

            async with anyio.create_task_group() as tg:
                for _ in range(32):
                    tg.start_soon(worker)
        return count

    return anyio.run(run)


@click.command("tls", context_settings=CONTEXT)
@click.option("--seconds", type=float, default=3.0, show_default=True,
              help="How long each workload runs, per door and transport.")
@click.option("--size", type=int, default=1024, show_default=True, help="Message bytes.")
@click.option("--rounds", type=click.IntRange(1, 20), default=3, show_default=True,
              help="Plain and TLS alternate this many times; the best round of each counts.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def tls(seconds: float, size: int, rounds: int, as_json: bool) -> None:
    """Each door's throughput in plaintext and over TLS, in one run."""
    runs: list[tuple[str, str, str, Callable[[int | str, ssl.SSLContext | None], int]]] = [
        ("kafka", "kafka", "kafka-tls", lambda p, c: _kafka(int(p), c, seconds, size)),
        ("mqtt", "mqtt", "mqtt-tls", lambda p, c: _mqtt(int(p), c, seconds, size)),
        ("http", "http", "http-tls", lambda p, c: _http(int(p), c, seconds, size)),
        ("remoting", "namesrv", "namesrv", lambda p, c: _remoting(str(p), c, seconds, size)),
    ]
    rows: list[list[Any]] = []
    with tempfile.TemporaryDirectory(prefix="ferrymq-bench-tls-") as d:
        certs = _Certs(d)
        with _broker(d, certs) as ports:
            for door, plain_port, tls_port, fn in runs:
                figures = [0.0, 0.0]
                for r in range(rounds):
                    for i, (transport, port, ctx) in enumerate(
                            (("plain", plain_port, None), ("tls", tls_port, certs.context()))):
                        target: int | str = ports[port]
                        if door == "remoting":
                            target = f"127.0.0.1:{ports[port]}"
                        with progress_console().status(f"{door} over {transport}, "
                                                       f"round {r + 1}/{rounds}"):
                            t0 = time.perf_counter()
                            n = fn(target, ctx)
                            figures[i] = max(figures[i], n / (time.perf_counter() - t0))
                plain, over_tls = figures
                rows.append([door, plain, over_tls, plain * size / 1e6, over_tls * size / 1e6,
                             100.0 * over_tls / plain if plain else None])
    columns = ["door", "plain msg/s", "tls msg/s", "plain MB/s", "tls MB/s", "tls/plain %"]
    if as_json:
        for row in rows:
            print(json.dumps(dict(zip(columns, row, strict=True))))
        return
    print_table(f"Throughput, plaintext and TLS ({size}-byte messages, best of {rounds} "
                f"rounds of {seconds:g} s)", columns, rows)


COMMANDS = (tls,)
