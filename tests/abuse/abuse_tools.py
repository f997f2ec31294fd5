"""The abuse suite's tools: one small probe per door (a real request, a real answer), raw
clients that misbehave on purpose, and the process's memory.

Everything here is blocking sockets and byte strings built by hand or with the protocol
packages' request builders, so a test can send what no real client would."""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ferrymq.protocols.kafka import schema
from ferrymq.protocols.kafka.connection import parse_response, request_bytes
from ferrymq.protocols.remoting import FrameDecoder, RequestCode, ResponseCode, encode, request
from ferrymq.protocols.sentinels import NEED_DATA
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, Request

API_VERSIONS, SASL_HANDSHAKE, SASL_AUTHENTICATE, PRODUCE = 18, 17, 36, 0
GET_BROKER_RUNTIME_INFO = 28
TOKEN = "abuse-token"
SASL_USER, SASL_PASSWORD = "alice", "secret"


# ---------------------------------------------------------------- memory


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ---------------------------------------------------------------- sockets


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def connect(port: int, timeout: float = 5.0) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def reset(s: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0): the peer's next send fails."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def closed_by_peer(s: socket.socket, within: float = 15.0) -> bool:
    """Read (and drop) whatever comes until the peer closes; False if it does not within
    ``within`` seconds (a condition waited on, not a timing asserted)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        s.settimeout(max(0.05, deadline - time.monotonic()))
        try:
            if not s.recv(65536):
                return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
    return False


def still_open(s: socket.socket, wait: float = 0.2) -> bool:
    s.settimeout(wait)
    try:
        return s.recv(1, socket.MSG_PEEK) != b""
    except TimeoutError:
        return True
    except OSError:
        return False


def drain(s: socket.socket, wait: float = 0.3) -> bytes:
    """What the peer sends within ``wait`` seconds of silence."""
    out = b""
    s.settimeout(wait)
    with contextlib.suppress(OSError):
        while chunk := s.recv(65536):
            out += chunk
    return out


# ---------------------------------------------------------------- frames


def remoting_frame(header: bytes, body: bytes = b"", stype: int = 0) -> bytes:
    return struct.pack(">ii", 4 + len(header) + len(body), (stype << 24) | len(header)) + \
        header + body


def kafka_request(api: int, version: int, body: Any, corr: int = 1) -> bytes:
    return request_bytes(api, version, corr, body)


def kafka_body(api: int, **fields: Any) -> Any:
    return schema.request_class(api)(**fields)


def mqtt_connect(client_id: bytes = b"probe", keep_alive: int = 60) -> bytes:
    """MQTT 3.1.1 CONNECT, clean session, by hand."""
    var = b"\x00\x04MQTT\x04\x02" + struct.pack(">H", keep_alive)
    payload = struct.pack(">H", len(client_id)) + client_id
    rest = var + payload
    return bytes([0x10, len(rest)]) + rest


def http_get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nhost: x\r\n{extra}\r\n".encode()


# ---------------------------------------------------------------- probes


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise AssertionError("closed by the broker")
        buf += chunk
    return buf


def probe_remoting(port: int, code: int = GET_BROKER_RUNTIME_INFO, ext: dict | None = None
                   ) -> int:
    """One remoting request; the response code."""
    with connect(port) as s:
        s.sendall(encode(request(code, 4242, ext or {})))
        decoder = FrameDecoder()
        while (cmd := decoder.next_command()) is NEED_DATA:
            data = s.recv(65536)
            assert data, "closed by the broker"
            decoder.receive_data(data)
        assert cmd.opaque == 4242 and cmd.is_response
        return int(cmd.code)


def probe_namesrv(port: int) -> int:
    return probe_remoting(port, RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "probe"})


def probe_kafka(port: int) -> None:
    with connect(port) as s:
        s.sendall(kafka_request(API_VERSIONS, 0, kafka_body(API_VERSIONS)))
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        corr, resp = parse_response(API_VERSIONS, 0, _recv_exact(s, size))
        assert corr == 1 and resp.error_code == 0


def probe_mqtt(port: int) -> None:
    with connect(port) as s:
        s.sendall(mqtt_connect())
        assert _recv_exact(s, 4) == b"\x20\x02\x00\x00"


def ws_open(port: int, path: str = "/mqtt") -> tuple[socket.socket, WSConnection]:
    s = connect(port)
    ws = WSConnection(ConnectionType.CLIENT)
    s.sendall(ws.send(Request(host="127.0.0.1", target=path, subprotocols=["mqtt"])))
    while True:
        data = s.recv(65536)
        assert data, "closed during the WebSocket handshake"
        ws.receive_data(data)
        for ev in ws.events():
            if isinstance(ev, AcceptConnection):
                return s, ws
            raise AssertionError(f"WebSocket upgrade refused: {ev}")


def probe_mqtt_ws(port: int) -> None:
    s, ws = ws_open(port)
    with s:
        s.sendall(ws.send(BytesMessage(data=mqtt_connect(b"ws-probe"))))
        got = b""
        while len(got) < 4:
            data = s.recv(65536)
            assert data, "closed by the broker"
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, BytesMessage):
                    got += ev.data
        assert got[:4] == b"\x20\x02\x00\x00"


def probe_http(port: int) -> None:
    with connect(port) as s:
        s.sendall(http_get("/healthz", "connection: close\r\n"))
        reply = drain(s, 2.0)
        assert reply.startswith(b"HTTP/1.1 200"), reply[:100]


@dataclass
class Ports:
    namesrv: int
    remoting: int
    kafka: int
    mqtt: int
    mqtt_ws: int
    http: int

    def by_door(self) -> dict[str, int]:
        return {"namesrv": self.namesrv, "remoting": self.remoting, "kafka": self.kafka,
                "mqtt": self.mqtt, "mqtt-ws": self.mqtt_ws, "http": self.http}


PROBES: dict[str, Callable[[int], object]] = {
    "namesrv": probe_namesrv, "remoting": probe_remoting, "kafka": probe_kafka,
    "mqtt": probe_mqtt, "mqtt-ws": probe_mqtt_ws, "http": probe_http,
}


def every_door_serves(ports: Ports) -> None:
    """A client of every door is served (each probe is a real request and answer)."""
    for door, port in ports.by_door().items():
        try:
            PROBES[door](port)
        except (AssertionError, OSError) as exc:
            raise AssertionError(f"the {door} door no longer serves: {exc!r}") from exc


def sasl_login(s: socket.socket) -> None:
    """SASL PLAIN over Kafka's SaslHandshake v1 + SaslAuthenticate v0."""
    for corr, (api, version, body) in enumerate((
            (SASL_HANDSHAKE, 1, kafka_body(SASL_HANDSHAKE, mechanism="PLAIN")),
            (SASL_AUTHENTICATE, 0, kafka_body(
                SASL_AUTHENTICATE,
                auth_bytes=f"\0{SASL_USER}\0{SASL_PASSWORD}".encode()))), 10):
        s.sendall(kafka_request(api, version, body, corr))
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        got, resp = parse_response(api, version, _recv_exact(s, size))
        assert got == corr and resp.error_code == 0, resp


def kafka_call(s: socket.socket, api: int, version: int, body: Any, corr: int = 99) -> Any:
    s.sendall(kafka_request(api, version, body, corr))
    (size,) = struct.unpack(">i", _recv_exact(s, 4))
    got, resp = parse_response(api, version, _recv_exact(s, size))
    assert got == corr
    return resp


__all__ = ["PROBES", "ResponseCode", "every_door_serves"]


def peak_rss_kib(pid: int) -> int:
    """VmHWM: the most the process has held (a spike that was freed again shows here)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError("no VmHWM")


def kafka_bomb_batch(mib: int = 512) -> bytes:
    """A RecordBatch v2 whose zstd-compressed records section (16 KB) inflates to ``mib``
    MiB of zeros. Its CRC is right: only decompressing it tells what it is."""
    import zstandard
    from crc32c import crc32c
    from ferrymq.protocols.kafka import batch_header as bh

    c = zstandard.ZstdCompressor().compressobj()
    zeros = b"\0" * (1 << 20)
    compressed = b"".join([c.compress(zeros) for _ in range(mib)] + [c.flush()])
    now = int(time.time() * 1000)
    size = bh.HEADER_SIZE + len(compressed)
    head = bh.HEADER.pack(0, size - 12, 0, 2, 0, 4, 0, now, now, -1, -1, -1, 1)
    body = head[21:] + compressed  # the CRC covers everything after its own field
    return head[:17] + struct.pack(">I", crc32c(body)) + body


def metric(port: int, name: str, **labels: str) -> float:
    """One sample of the broker's /metrics (HTTP door, bearer token), 0 when absent."""
    import re

    with connect(port) as s:
        s.sendall(http_get("/metrics", f"authorization: Bearer {TOKEN}\r\nconnection: close\r\n"))
        text = drain(s, 2.0).decode()
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        m = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if m and m.group(1) == name:
            got = ",".join(sorted((m.group(2) or "").split(","))) if m.group(2) else ""
            if got == want:
                return float(m.group(3))
    return 0.0


def wait_for(condition: Callable[[], bool], within: float = 15.0, what: str = "") -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.05)


def trickle(s: socket.socket, data: bytes, every: float = 0.25) -> bool:
    """Send ``data`` a byte at a time, ``every`` seconds apart (slowloris); True if the
    peer closed before the end. What the peer answers meanwhile (a 408) is read and
    dropped, so that its end of the stream is seen, not the answer in front of it."""
    for i in range(len(data)):
        try:
            s.sendall(data[i:i + 1])
        except OSError:
            return True
        deadline = time.monotonic() + every
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                if not s.recv(65536):
                    return True
            except TimeoutError:
                break
            except OSError:
                return True
    return False
