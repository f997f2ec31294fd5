"""TLS under abuse: garbage instead of a ClientHello, a client that connects and never
starts its handshake, a handshake cut half way, a client certificate of another CA.
Every TLS entry point (Kafka's SSL listener, MQTT over TLS and WSS, HTTPS, and the
permissive NameServer and remoting ports) closes such a connection as TLS does (an
alert or a close), counts it, and keeps serving everyone else, over TLS and in
plaintext.

Its own broker (TLS on every door, a one-second TLS handshake timeout); certificates
made at test time (trustme)."""

from __future__ import annotations

import os
import socket
import ssl
import struct
from collections.abc import Callable
from typing import Any

import pytest
from abuse_tools import (
    PROBES,
    closed_by_peer,
    connect,
    metric,
    mqtt_connect,
    reset,
    still_open,
)
from ferrymq.protocols.remoting import FrameDecoder, RequestCode, encode, request
from ferrymq.protocols.sentinels import NEED_DATA

TLS_ONLY = ("kafka-tls", "mqtt-tls", "mqtt-wss", "http-tls")
PERMISSIVE = ("namesrv", "remoting")
PROTOCOL = {"kafka-tls": "kafka", "mqtt-tls": "mqtt", "mqtt-wss": "mqtt", "http-tls": "http",
            "namesrv": "namesrv", "remoting": "rocketmq"}
HANDSHAKE_S = 1.0


class TlsBroker:
    def __init__(self, broker: Any, ports: dict[str, int], files: Any) -> None:
        self.broker, self.ports, self.files = broker, ports, files

    def tls(self, name: str, with_cert: bool = True) -> ssl.SSLSocket:
        raw = connect(self.ports[name])
        return self.files.client_context(with_cert=with_cert).wrap_socket(
            raw, server_hostname="127.0.0.1")

    def closed(self, name: str, reason: str) -> float:
        return metric(self.ports["http"], "ferrymq_connections_closed_total",
                      protocol=PROTOCOL[name], reason=reason)

    def check(self) -> None:
        """Alive, and every door serves: in plaintext and over TLS."""
        assert self.broker.alive, f"the broker died:\n{self.broker.log()}"
        for door in ("namesrv", "remoting", "kafka", "mqtt", "mqtt-ws", "http"):
            PROBES[door](self.ports[door])
        for name in (*TLS_ONLY, *PERMISSIVE):
            TLS_PROBES[name](self)
        for protocol in ("kafka", "mqtt", "http", "rocketmq", "namesrv"):
            bugs = metric(self.ports["http"], "ferrymq_connection_errors_total",
                          protocol=protocol, kind="internal")
            assert bugs == 0, f"{protocol}: {bugs} connections failed on a bug:\n{self.broker.log()}"


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "closed by the broker"
        buf += chunk
    return buf


def _probe_kafka(b: TlsBroker) -> None:
    with b.tls("kafka-tls") as s:
        s.sendall(struct.pack(">ihhi", 10, 18, 0, 1) + b"\xff\xff")  # ApiVersions v0
        (size,) = struct.unpack(">i", _recv_exact(s, 4))
        assert _recv_exact(s, size)[4:6] == b"\x00\x00"


def _probe_mqtt(b: TlsBroker) -> None:
    with b.tls("mqtt-tls") as s:
        s.sendall(mqtt_connect(b"tls-probe"))
        assert _recv_exact(s, 4) == b"\x20\x02\x00\x00"


def _probe_wss(b: TlsBroker) -> None:
    with b.tls("mqtt-wss") as s:
        s.sendall(b"GET /mqtt HTTP/1.1\r\nhost: x\r\nupgrade: websocket\r\nconnection: upgrade\r\n"
                  b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n"
                  b"sec-websocket-protocol: mqtt\r\n\r\n")
        assert _recv_exact(s, 12) == b"HTTP/1.1 101"


def _probe_http(b: TlsBroker) -> None:
    with b.tls("http-tls") as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert _recv_exact(s, 12) == b"HTTP/1.1 200"


def _probe_remoting(name: str) -> Callable[[TlsBroker], None]:
    def probe(b: TlsBroker) -> None:
        with b.tls(name) as s:
            s.sendall(encode(request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 5, {"topic": "p"})))
            decoder = FrameDecoder()
            while (cmd := decoder.next_command()) is NEED_DATA:
                decoder.receive_data(_recv_exact(s, 1))
            assert cmd.is_response and cmd.opaque == 5
    return probe


TLS_PROBES: dict[str, Callable[[TlsBroker], None]] = {
    "kafka-tls": _probe_kafka, "mqtt-tls": _probe_mqtt, "mqtt-wss": _probe_wss,
    "http-tls": _probe_http, "namesrv": _probe_remoting("namesrv"),
    "remoting": _probe_remoting("remoting"),
}


@pytest.fixture(scope="module")
def tls_broker(start_module_broker, tls_files, tmp_path_factory):
    conf = tmp_path_factory.mktemp("tls-abuse") / "tls.toml"
    b, ports = tls_files.start_tls_broker(start_module_broker, conf, "namesrv", "remoting",
                                          "kafka", "mqtt", "http", name="tls-hostile",
                                          handshake_timeout_s=HANDSHAKE_S)
    broker = TlsBroker(b, ports, tls_files)
    broker.check()
    return broker


def client_hello() -> bytes:
    """The first flight of a real TLS client: a ClientHello record."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="x")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


@pytest.mark.parametrize("name", [*TLS_ONLY, *PERMISSIVE])
def test_garbage_instead_of_a_client_hello(tls_broker, name):
    before = tls_broker.closed(name, "tls_handshake_failed")
    # On a permissive port the first byte says TLS (a handshake record); then garbage.
    garbage = b"\x16\x03\x01\x00\x20" + os.urandom(32) if name in PERMISSIVE else \
        b"\x16\x03\x01\xff\xff" + os.urandom(200)
    with connect(tls_broker.ports[name]) as s:
        s.sendall(garbage)
        assert closed_by_peer(s)
    if name in TLS_ONLY:  # plaintext on a TLS-only port is garbage too
        with connect(tls_broker.ports[name]) as s:
            s.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n" if name.startswith("http")
                      else mqtt_connect())
            assert closed_by_peer(s)
    assert tls_broker.closed(name, "tls_handshake_failed") >= before + 1
    tls_broker.check()


@pytest.mark.parametrize("name", [*TLS_ONLY, *PERMISSIVE])
def test_a_client_that_never_starts_its_handshake_is_closed(tls_broker, name):
    before = tls_broker.closed(name, "handshake_timeout")
    with connect(tls_broker.ports[name]) as s:
        assert closed_by_peer(s), "a silent TLS client was left open"
    assert tls_broker.closed(name, "handshake_timeout") >= before + 1
    tls_broker.check()


@pytest.mark.parametrize("name", ["kafka-tls", "http-tls", "remoting"])
def test_a_handshake_cut_half_way(tls_broker, name):
    hello = client_hello()
    with connect(tls_broker.ports[name]) as s:  # half a ClientHello, then silence
        s.sendall(hello[:len(hello) // 2])
        assert closed_by_peer(s), "a stalled handshake was left open"
    s = connect(tls_broker.ports[name])  # half a ClientHello, then a reset
    s.sendall(hello[:len(hello) // 2])
    assert still_open(s)
    reset(s)
    tls_broker.check()


@pytest.mark.parametrize("name", ["http-tls", "kafka-tls", "mqtt-tls"])
def test_a_client_certificate_of_another_ca_is_refused(tls_broker, tls_files, name):
    """HTTPS requires a client certificate; the others take one optionally: either way
    a certificate the CA does not vouch for ends the handshake."""
    before = tls_broker.closed(name, "tls_handshake_failed")
    raw = connect(tls_broker.ports[name])
    ctx = tls_files.client_context(rogue=True)
    with pytest.raises((ssl.SSLError, OSError, AssertionError)), \
            ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
        # TLS 1.3: the client is done first; the broker's alert ends the next read.
        s.sendall(b"\x00" * 8)
        assert s.recv(10), "closed"
    raw.close()
    assert tls_broker.closed(name, "tls_handshake_failed") >= before + 1
    tls_broker.check()


def test_https_without_a_client_certificate_is_refused(tls_broker):
    with pytest.raises((ssl.SSLError, OSError, AssertionError)), \
            tls_broker.tls("http-tls", with_cert=False) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert s.recv(10), "closed"
    tls_broker.check()
