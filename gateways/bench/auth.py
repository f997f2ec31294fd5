"""``ferrymq bench auth``: produce throughput per door with access control off and on, in one run.

Two brokers on loopback (each in its own process and temporary directory):
one with ``[auth]`` off, one with ``[auth] enabled``, a user ``bench`` and the
rules it needs (WRITE and CREATE on topics prefixed ``bench``). Against each,
per door, one producer for ``--seconds``: Kafka Produce v8 (batches of 100,
acks=1, 8 in flight; SASL PLAIN on the second broker), MQTT QoS 1 publishes
(64 in flight; user name and password), HTTP batches of 100 messages on one
keep-alive connection (Basic credentials), RocketMQ SEND_MESSAGE_V2 (32 in
flight; signed with the user's access key). 100-byte bodies. Prints messages/s
off, on, and on/off, and the broker's CPU (user + system, from /proc) per
message: what the per-call check, the cached decisions and the authentication
cost at the door. Figures are printed, never asserted.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import click
import trio

from .report import print_table

BODY = b"x" * 100
DOORS = ("kafka", "mqtt", "http", "remoting")
USER, PASSWORD = "bench", "bench-password"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _broker(auth: bool) -> Iterator[tuple[dict[str, int], dict[str, str], int]]:
    """(ports by door, credentials, process id) of a broker with access control ``auth``."""
    from ...core.access import CREATE, PREFIXED, TOPIC, WRITE, Rule
    from ...core.access import SYSTEM as SYS
    from ...core.broker import Broker, BrokerConfig

    with tempfile.TemporaryDirectory(prefix="ferrymq-bench-auth-") as d:
        data = os.path.join(d, "data")
        creds: dict[str, str] = {}
        conf = os.path.join(d, "b.toml")
        with open(conf, "w") as f:
            f.write(f"[auth]\nenabled = {'true' if auth else 'false'}\n"
                    "[mqtt]\nws_port = 0\nsys_interval = 0.0\n")
        if auth:
            async def bootstrap() -> None:
                cfg = BrokerConfig(data_dir=data, segment_size=256 << 20)
                async with Broker.open(cfg) as b:
                    await b.put_user(USER, password=PASSWORD, principal=SYS)
                    await b.add_acls([Rule(f"User:{USER}", TOPIC, PREFIXED, "bench", op, True)
                                      for op in (WRITE, CREATE)], principal=SYS)
                    creds["ak"], creds["sk"] = await b.create_access_key(USER, principal=SYS)
            trio.run(bootstrap)
        ports = {door: _free_port() for door in ("namesrv", *DOORS)}
        ready = os.path.join(d, "ready.json")
        args = [sys.executable, "-m", "ferrymq.gateways", "serve", "--config", conf,
                "--data-dir", data, "--host", "127.0.0.1", "--ready-file", ready,
                "--segment-size", str(256 << 20)]
        for door, port in ports.items():
            args += [f"--{door}-port", str(port)]
        log = open(os.path.join(d, "broker.log"), "wb")  # noqa: SIM115
        proc = subprocess.Popen(args, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + 60
            while not os.path.exists(ready):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise click.ClickException("the benchmark broker did not start")
                time.sleep(0.05)
            yield ports, creds, proc.pid
        except BaseException:
            log.flush()
            with open(os.path.join(d, "broker.log"), "rb") as logged:
                sys.stderr.write(logged.read()[-3000:].decode("utf-8", "replace"))
            raise
        finally:
            log.close()
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return bytes(buf)


# ---------------------------------------------------------------- Kafka

def _kafka(port: int, auth: bool, seconds: float) -> int:
    from ...protocols.kafka import records as kr
    from ...protocols.kafka import schema
    from ...protocols.kafka.connection import request_bytes

    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    corr = 0

    def call(api: int, version: int, body: Any) -> None:
        nonlocal corr
        corr += 1
        s.sendall(request_bytes(api, version, corr, body, "bench"))

    def read() -> None:
        n = struct.unpack(">i", _recv_exact(s, 4))[0]
        _recv_exact(s, n)

    if auth:
        call(17, 1, schema.request_class(17)(mechanism="PLAIN"))
        read()
        call(36, 1, schema.request_class(36)(auth_bytes=f"\0{USER}\0{PASSWORD}".encode()))
        read()
    batch = kr.encode_batch(0, [(i, None, BODY, []) for i in range(100)])
    R = schema.request_class(0)
    req = R(acks=1, timeout_ms=5000, topic_data=(R.TopicProduceData(
        name="bench-kafka", partition_data=(R.PartitionProduceData(index=0, records=batch),)),))
    call(0, 8, req)  # the topic is created by the first produce
    read()
    sent = inflight = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        while inflight < 8:
            call(0, 8, req)
            inflight += 1
        read()
        inflight -= 1
        sent += 100
    while inflight:
        read()
        inflight -= 1
    s.close()
    return sent


# ---------------------------------------------------------------- MQTT

def _utf8(b: bytes) -> bytes:
    return struct.pack(">H", len(b)) + b


def _mqtt(port: int, auth: bool, seconds: float) -> int:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    flags = 0x02 | (0xC0 if auth else 0)
    body = _utf8(b"MQTT") + bytes((4, flags)) + struct.pack(">H", 0) + _utf8(b"bench-auth")
    if auth:
        body += _utf8(USER.encode()) + _utf8(PASSWORD.encode())
    s.sendall(bytes((0x10, len(body))) + body)
    ack = _recv_exact(s, 4)
    if ack[3] != 0:
        raise click.ClickException(f"MQTT CONNACK {ack[3]}")
    topic = _utf8(b"bench-mqtt/t")
    sent = inflight = 0
    pid = 0
    pending = b""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        # The window is refilled with every PUBACK that arrived, not one per PUBACK:
        # one PUBLISH per round trip would measure the machine's scheduling latency.
        out = []
        while inflight < 64:
            pid = pid % 65535 + 1
            payload = topic + struct.pack(">H", pid) + BODY
            out.append(bytes((0x32, len(payload))) + payload)
            inflight += 1
        s.sendall(b"".join(out))
        data = s.recv(4 * 64)
        if not data:
            raise ConnectionError("closed")
        pending += data
        acks = len(pending) // 4  # PUBACKs, 4 bytes each (3.1.1)
        pending = pending[acks * 4:]
        inflight -= acks
        sent += acks
    while inflight:
        _recv_exact(s, 4)
        inflight -= 1
    s.close()
    return sent


# ---------------------------------------------------------------- HTTP

def _http(port: int, auth: bool, seconds: float) -> int:
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    doc = json.dumps({"messages": [{"body": BODY.decode()}] * 100}).encode()
    head = (f"POST /v1/topics/bench-http/messages HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(doc)}\r\n")
    if auth:
        head += "Authorization: Basic " + base64.b64encode(
            f"{USER}:{PASSWORD}".encode()).decode() + "\r\n"
    request = (head + "\r\n").encode() + doc
    buf = b""

    def response() -> int:
        nonlocal buf
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            buf += chunk
        h, _, rest = buf.partition(b"\r\n\r\n")
        length = 0
        for line in h.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        while len(rest) < length:
            rest += s.recv(65536)
        buf = rest[length:]
        return int(h.split(b" ", 2)[1])

    sent = 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.sendall(request)
        status = response()
        if status not in (200, 201):
            raise click.ClickException(f"HTTP produce answered {status}")
        sent += 100
    s.close()
    return sent


# ---------------------------------------------------------------- RocketMQ remoting

def _remoting(port: int, creds: dict[str, str], seconds: float) -> int:
    from ...clients.remoting import RemotingClient
    from ...protocols.remoting import RequestCode, request
    from ...protocols.remoting import headers as H

    cmd = request(RequestCode.SEND_MESSAGE_V2, 0, H.SendMessageRequestHeader(
        "bench", "bench-remoting", queueId=0, bornTimestamp=1).to_ext_v2(), BODY)
    sent = 0

    async def go() -> None:
        nonlocal sent
        credentials = (creds["ak"], creds["sk"]) if creds else None
        async with RemotingClient(credentials=credentials) as rc:
            addr = f"127.0.0.1:{port}"
            first = await rc.invoke(addr, cmd, 30)  # creates the topic
            if first.code != 0:
                raise click.ClickException(f"remoting send answered {first.code}")
            end = trio.current_time() + seconds

            async def sender() -> None:
                nonlocal sent
                while trio.current_time() < end:
                    await rc.invoke(addr, cmd, 30)
                    sent += 1

            async with trio.open_nursery() as n:
                for _ in range(32):
                    n.start_soon(sender)

    trio.run(go)
    return sent


def _cpu(pid: int) -> float:
    """user + system CPU seconds of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run(seconds: float) -> list[dict[str, Any]]:
    rates: dict[tuple[str, bool], float] = {}
    cpu: dict[tuple[str, bool], float | None] = {}
    for auth in (False, True):
        with _broker(auth) as (ports, creds, pid):
            runs: dict[str, Callable[[], int]] = {
                "kafka": functools.partial(_kafka, ports["kafka"], auth, seconds),
                "mqtt": functools.partial(_mqtt, ports["mqtt"], auth, seconds),
                "http": functools.partial(_http, ports["http"], auth, seconds),
                "remoting": functools.partial(_remoting, ports["remoting"], creds, seconds),
            }
            for door, fn in runs.items():
                t0 = time.monotonic()
                c0 = _cpu(pid)
                n = fn()
                rates[door, auth] = n / (time.monotonic() - t0)
                # Broker CPU per message: steadier than messages/s on a shared machine.
                cpu[door, auth] = round((_cpu(pid) - c0) / n * 1e6, 1) if n else None
    return [{"door": d, "auth_off": round(rates[d, False]), "auth_on": round(rates[d, True]),
             "on_off": round(rates[d, True] / rates[d, False], 3) if rates[d, False] else None,
             "cpu_us_off": cpu[d, False], "cpu_us_on": cpu[d, True]}
            for d in DOORS]


@click.command("auth")
@click.option("--seconds", type=float, default=3.0, show_default=True, help="Per door and mode.")
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def auth_bench(seconds: float, as_json: bool) -> None:
    """Produce throughput per door with access control off and on (docs/security.md)."""
    rows = run(seconds)
    if as_json:
        for r in rows:
            click.echo(json.dumps(r))
        return
    print_table("produce msgs/s, [auth] off vs on (100-byte bodies)",
                ["door", "auth off", "auth on", "on/off", "CPU us/msg off", "CPU us/msg on"],
                [[r["door"], r["auth_off"], r["auth_on"], r["on_off"], r["cpu_us_off"],
                  r["cpu_us_on"]] for r in rows])


COMMANDS = (auth_bench,)
