"""TLS on every door (docs/security.md, "TLS"): the settings, the supervisor's
handshake (permissive and enforcing), the client certificate handed to the door,
certificate reloads, and a broker serving every door over TLS to raw clients,
the native client and the CLI. Certificates are made at test time (trustme).

The garbage, cut handshakes and foreign certificates are in
tests/abuse/test_tls_abuse.py; real third-party clients in compat-tests/*/test_*tls*.py."""

from __future__ import annotations

import json
import os
import socket
import ssl
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
from ferrymq.gateways.config import ConfigError, ConnectionLimits, TlsConfig, load_config
from ferrymq.gateways.supervision import ConnectionSupervisor
from ferrymq.gateways.tls import TlsServer, reload_all
from ferrymq.protocols.kafka import schema
from ferrymq.protocols.kafka.connection import parse_response, request_bytes
from ferrymq.protocols.remoting import FrameDecoder, RequestCode, encode, request
from ferrymq.protocols.sentinels import NEED_DATA

API_VERSIONS, METADATA, PRODUCE = 18, 3, 0


# ---------------------------------------------------------------- settings


def _config(tmp_path: Path, text: str) -> Any:
    path = tmp_path / "ferrymq.toml"
    path.write_text(text)
    return load_config(str(path), env={})


def test_shared_tls_settings_apply_to_each_door_that_offers_tls(tmp_path, tls_files):
    cfg = _config(tmp_path, tls_files.server_toml("required")
                  + "[kafka]\nmax_frame_size = 1048576\n[kafka.tls]\nport = 9093\n"
                  + '[remoting.tls]\nmode = "permissive"\nclient_auth = "none"\n')
    assert set(cfg.tls) == {"kafka", "remoting"}  # [tls] alone switches no door on
    kafka = cfg.tls["kafka"]
    assert (kafka.port, kafka.mode, kafka.client_auth) == (9093, "disabled", "required")
    assert kafka.cert_file == str(tls_files.cert) and kafka.ca_file == str(tls_files.ca)
    assert cfg.tls["remoting"].client_auth == "none"  # a door's table wins
    assert cfg.tls["remoting"].mode == "permissive"
    assert "tls" not in cfg.options("kafka") and cfg.options("kafka")["max_frame_size"] == 1048576


def test_shared_mode_switches_tls_on_for_every_door(tmp_path, tls_files):
    cfg = _config(tmp_path, tls_files.server_toml() + 'mode = "enforcing"\n')
    assert set(cfg.tls) == {"namesrv", "remoting", "kafka", "mqtt", "http"}
    assert all(t.mode == "enforcing" for t in cfg.tls.values())


@pytest.mark.parametrize("table, message", [
    ('[kafka.tls]\nport = 9093\n', "needs cert_file"),
    ('[tls]\ncert_file = "{cert}"\n[kafka.tls]\nmode = "sometimes"\n', "mode: one of"),
    ('[tls]\ncert_file = "{cert}"\nclient_auth = "required"\n[kafka.tls]\nport = 1\n',
     "needs ca_file"),
    ('[tls]\ncert_file = "{cert}"\nclient_auth = "maybe"\n', "client_auth: one of"),
    ('[tls]\ncert_file = "/nonexistent/cert.pem"\n[http.tls]\nport = 8443\n', "no such file"),
    ('[tls]\ncert_file = "{cert}"\ncertfile = "x"\n', "unknown setting"),
    ('[tls]\ncert_file = "{cert}"\n[kafka.tls]\nws_port = 8084\n', "only the MQTT door"),
    ('[tls]\ncert_file = "{cert}"\n[kafka.tls]\nport = 70000\n', "a TCP port"),
    ('[tls]\ncert_file = "{cert}"\nhandshake_timeout_s = 0\n', "must be positive"),
    ('[tls]\ncert_file = "{cert}"\nmin_version = "SSLv3"\n', "min_version"),
])
def test_a_wrong_tls_setting_is_refused_by_name(tmp_path, tls_files, table, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, table.replace("{cert}", str(tls_files.cert)))


# ---------------------------------------------------------------- the supervisor


def _tls_config(tls_files, **kw: Any) -> TlsConfig:
    base = dict(cert_file=str(tls_files.cert), key_file=str(tls_files.key),
                ca_file=str(tls_files.ca), client_auth="optional", handshake_timeout_s=5.0)
    base.update(kw)
    return TlsConfig(**base)


async def _echo_server(nursery: trio.Nursery, tls: TlsServer, seen: list[Any]
                       ) -> tuple[ConnectionSupervisor, int]:
    """An echo door under a supervisor with ``tls``; what each handler saw goes to
    ``seen`` (its stream's type and the watch's TLS session)."""
    sup = ConnectionSupervisor("echo", ConnectionLimits(), None, tls=tls, host="127.0.0.1")

    async def handler(stream: Any, watch: Any) -> None:
        seen.append((type(stream).__name__, watch.tls, stream.socket.getpeername()))
        while data := await stream.receive_some(65536):
            await stream.send_all(data)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    await nursery.start(sup.serve, listeners, handler)
    return sup, listeners[0].socket.getsockname()[1]


async def _tls_echo(port: int, ctx: ssl.SSLContext, payload: bytes = b"ping") -> Any:
    stream = await trio.open_ssl_over_tcp_stream("127.0.0.1", port, ssl_context=ctx)
    async with stream:
        await stream.send_all(payload)
        got = b""
        while len(got) < len(payload):
            got += await stream.receive_some(65536)
        assert got == payload
        return stream.getpeercert()


async def _plain_echo(port: int, payload: bytes = b"ping") -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(payload)
        got = b""
        while len(got) < len(payload):
            data = await stream.receive_some(65536)
            if not data:
                break
            got += data
        return got


async def test_permissive_takes_tls_and_plaintext_on_one_port(tls_files):
    seen: list[Any] = []
    async with trio.open_nursery() as nursery:
        _, port = await _echo_server(
            nursery, TlsServer("echo", _tls_config(tls_files, mode="permissive")), seen)
        assert await _plain_echo(port) == b"ping"
        await _tls_echo(port, tls_files.client_context(), b"x" * 100_000)
        nursery.cancel_scope.cancel()
    assert [s[0] for s in seen] == ["SocketStream", "TlsStream"]
    assert seen[0][1] is None and seen[1][1].version.startswith("TLSv1.")
    assert seen[1][2][0] == "127.0.0.1"  # the door still sees the peer's address


async def test_enforcing_closes_plaintext_and_counts_it(tls_files):
    seen: list[Any] = []
    async with trio.open_nursery() as nursery:
        sup, port = await _echo_server(
            nursery, TlsServer("echo", _tls_config(tls_files, mode="enforcing")), seen)
        assert await _plain_echo(port, b"\x00\x00\x00\x10garbage") == b""
        await _tls_echo(port, tls_files.client_context())
        nursery.cancel_scope.cancel()
    assert sup.counts == {"tls_handshake_failed": 1}
    assert [s[0] for s in seen] == ["TlsStream"]


async def test_the_door_sees_the_verified_client_certificate(tls_files):
    seen: list[Any] = []
    async with trio.open_nursery() as nursery:
        _, port = await _echo_server(
            nursery, TlsServer("echo", _tls_config(tls_files, mode="enforcing")), seen)
        await _tls_echo(port, tls_files.client_context(with_cert=True))
        await _tls_echo(port, tls_files.client_context())  # optional: none given is fine
        nursery.cancel_scope.cancel()
    with_cert, without = seen[0][1], seen[1][1]
    assert with_cert.peer_common_name == "alice"
    assert with_cert.peer_subject.startswith("CN=alice,")  # RFC 4514: most specific first
    assert without.peer_subject is None and without.peer_common_name is None


async def test_required_client_auth_refuses_a_client_without_certificate(tls_files):
    seen: list[Any] = []
    async with trio.open_nursery() as nursery:
        sup, port = await _echo_server(nursery, TlsServer(
            "echo", _tls_config(tls_files, mode="enforcing", client_auth="required")), seen)
        with pytest.raises((trio.BrokenResourceError, ssl.SSLError, AssertionError)):
            # TLS 1.3: the client's handshake ends first; the refusal arrives on the read.
            await _tls_echo(port, tls_files.client_context())
        await _tls_echo(port, tls_files.client_context(with_cert=True))
        nursery.cancel_scope.cancel()
    assert sup.counts == {"tls_handshake_failed": 1}
    assert len(seen) == 1


async def test_a_silent_client_is_closed_at_the_handshake_timeout(tls_files):
    async with trio.open_nursery() as nursery:
        sup, port = await _echo_server(nursery, TlsServer(
            "echo", _tls_config(tls_files, mode="permissive", handshake_timeout_s=0.3)), [])
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        assert await stream.receive_some(10) == b""  # closed, nothing sent
        await stream.aclose()
        nursery.cancel_scope.cancel()
    assert sup.counts == {"handshake_timeout": 1}


async def test_certificates_reload_when_their_files_change(tls_files, tmp_path):
    import trustme
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(tls_files.cert.read_bytes())
    key.write_bytes(tls_files.key.read_bytes())
    server = TlsServer("echo", _tls_config(tls_files, cert_file=str(cert), key_file=str(key),
                                           mode="enforcing"))
    other = trustme.CA()
    issued = other.issue_cert("127.0.0.1")
    async with trio.open_nursery() as nursery:
        _, port = await _echo_server(nursery, server, [])
        first = await _tls_echo(port, tls_files.client_context())
        # Half written (the key missing): the old certificate stays.
        cert.write_bytes(b"".join(b.bytes() for b in issued.cert_chain_pems))
        assert reload_all() == 0
        await _tls_echo(port, tls_files.client_context())
        issued.private_key_pem.write_to_path(str(key))
        assert server.reload()
        ctx = ssl.create_default_context()
        other.configure_trust(ctx)
        second = await _tls_echo(port, ctx)
        nursery.cancel_scope.cancel()
    assert first["serialNumber"] != second["serialNumber"]


# ---------------------------------------------------------------- a broker over TLS


@pytest.fixture(scope="module")
def tls_broker(start_module_broker, tls_files, tmp_path_factory):
    conf = tmp_path_factory.mktemp("tls") / "tls.toml"
    return tls_files.start_tls_broker(start_module_broker, conf, "namesrv", "remoting", "kafka",
                                      "mqtt", "http", name="tls")


def _tls_socket(port: int, ctx: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return ctx.wrap_socket(raw, server_hostname="127.0.0.1")


def _recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "closed by the broker"
        buf += chunk
    return buf


def _kafka_call(s: socket.socket, api: int, version: int, corr: int = 1, **fields: Any) -> Any:
    s.sendall(request_bytes(api, version, corr, schema.request_class(api)(**fields)))
    (size,) = struct.unpack(">i", _recv_exact(s, 4))
    got, resp = parse_response(api, version, _recv_exact(s, size))
    assert got == corr
    return resp


def _remoting_call(s: socket.socket, code: int, ext: dict[str, str]) -> Any:
    s.sendall(encode(request(code, 77, ext)))
    decoder = FrameDecoder()
    while (cmd := decoder.next_command()) is NEED_DATA:
        data = s.recv(65536)
        assert data, "closed by the broker"
        decoder.receive_data(data)
    return cmd


def test_kafka_tls_listener_advertises_itself_and_takes_large_requests(tls_broker, tls_files):
    _, ports = tls_broker
    with _tls_socket(ports["kafka-tls"], tls_files.client_context()) as s:
        assert _kafka_call(s, API_VERSIONS, 0).error_code == 0
        meta = _kafka_call(s, METADATA, 1, 2, topics=None)
        assert [b.port for b in meta.brokers] == [ports["kafka-tls"]]
        # A request far above one read: the door reads it straight into its buffer.
        from ferrymq.protocols.kafka import records
        batch = records.encode_batch(0, [(1, None, b"v" * 300_000, ())])
        R = schema.request_class(PRODUCE)
        resp = _kafka_call(s, PRODUCE, 3, 3, transactional_id=None, acks=1, timeout_ms=5000,
                           topic_data=(R.TopicProduceData(name="tls-big", partition_data=(
                               R.PartitionProduceData(index=0, records=batch),)),))
        assert resp.responses[0].partition_responses[0].error_code == 0
    with socket.create_connection(("127.0.0.1", ports["kafka"]), timeout=10) as s:
        meta = _kafka_call(s, METADATA, 1, 2, topics=None)
        assert [b.port for b in meta.brokers] == [ports["kafka"]]  # plaintext stays plaintext


def test_mqtt_over_tls_and_wss(tls_broker, tls_files):
    _, ports = tls_broker
    connect = b"\x10\x11\x00\x04MQTT\x04\x02\x00\x3c\x00\x05tls-1"
    with _tls_socket(ports["mqtt-tls"], tls_files.client_context()) as s:
        s.sendall(connect)
        assert _recv_exact(s, 4) == b"\x20\x02\x00\x00"
    from wsproto import ConnectionType, WSConnection
    from wsproto.events import AcceptConnection, BytesMessage, Request
    with _tls_socket(ports["mqtt-wss"], tls_files.client_context()) as s:
        ws = WSConnection(ConnectionType.CLIENT)
        s.sendall(ws.send(Request(host="127.0.0.1", target="/mqtt", subprotocols=["mqtt"])))
        got, accepted = b"", False
        while len(got) < 4:
            data = s.recv(65536)
            assert data, "closed by the broker"
            ws.receive_data(data)
            for ev in ws.events():
                if isinstance(ev, AcceptConnection):
                    accepted = True
                    s.sendall(ws.send(BytesMessage(data=connect.replace(b"tls-1", b"tls-2"))))
                elif isinstance(ev, BytesMessage):
                    got += ev.data
        assert accepted and got[:4] == b"\x20\x02\x00\x00"


def test_https_wants_a_client_certificate_of_its_ca(tls_broker, tls_files):
    _, ports = tls_broker
    with _tls_socket(ports["http-tls"], tls_files.client_context(with_cert=True)) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 200")
    # A response far larger than a socket buffer goes through the TLS stream whole.
    with _tls_socket(ports["http-tls"], tls_files.client_context(with_cert=True)) as s:
        s.sendall(b"GET /openapi.json HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and json.loads(body)["openapi"]
    with pytest.raises((ssl.SSLError, OSError, AssertionError)), \
            _tls_socket(ports["http-tls"], tls_files.client_context()) as s:
        s.sendall(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
        assert s.recv(65536), "closed by the broker"


@pytest.mark.parametrize("door", ["namesrv", "remoting"])
def test_rocketmq_ports_are_permissive(tls_broker, tls_files, door):
    _, ports = tls_broker
    code = (RequestCode.GET_ROUTEINFO_BY_TOPIC if door == "namesrv"
            else RequestCode.GET_BROKER_RUNTIME_INFO)
    with socket.create_connection(("127.0.0.1", ports[door]), timeout=10) as plain:
        plain_reply = _remoting_call(plain, code, {"topic": "TBW102"})
    with _tls_socket(ports[door], tls_files.client_context()) as s:
        tls_reply = _remoting_call(s, code, {"topic": "TBW102"})
    assert tls_reply.is_response and tls_reply.code == plain_reply.code


def test_native_client_over_tls(tls_broker, tls_files):
    from ferrymq.clients import Admin, Message, Producer, PullConsumer
    _, ports = tls_broker
    ns = f"127.0.0.1:{ports['namesrv']}"
    ctx = tls_files.client_context(with_cert=True)

    async def go() -> list[bytes]:
        async with Admin(ns, tls=ctx) as admin:
            await admin.create_topic("tls-native", queues=1)
        async with Producer(ns, "tls-producer", tls=ctx) as p:
            await p.send(Message("tls-native", b"over tls"))
        async with PullConsumer(ns, "tls-consumer", consume_from="FIRST", tls=ctx) as c:
            c.assign(await c.queues("tls-native"))
            for _ in range(100):
                got = await c.poll(timeout=1.0)
                if got:
                    return [m.body for m in got]
        return []

    assert trio.run(go) == [b"over tls"]


def test_cli_over_tls(tls_broker, tls_files):
    _, ports = tls_broker
    ns = f"127.0.0.1:{ports['namesrv']}"
    env = {**os.environ, "FERRYMQ_NAMESRV": ns}
    cli = [sys.executable, "-m", "ferrymq.gateways"]
    out = subprocess.run([*cli, "produce", "--tls-ca", str(tls_files.ca), "tls-cli", "hello"],
                         env=env, capture_output=True, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout.splitlines()[0])["topic"] == "tls-cli"
    # A client that trusts another CA does not get through.
    out = subprocess.run([*cli, "topic", "list", "--tls-ca", str(tls_files.rogue_cert)],
                         env=env, capture_output=True, timeout=60)
    assert out.returncode != 0


def test_an_enforcing_nameserver_with_the_broker_registering_over_tls(start_broker, tls_files,
                                                                       tmp_path):
    """RocketMQ's enforcing mode on the NameServer and the broker: the broker registers
    over TLS (``namesrv_tls_ca_file``), TLS clients route through it, plaintext gets
    nothing."""
    from ferrymq.clients import Admin, Message, Producer
    conf = tmp_path / "enforcing.toml"
    conf.write_text(tls_files.server_toml("none")
                    + '[namesrv.tls]\nmode = "enforcing"\n[remoting.tls]\nmode = "enforcing"\n'
                    + f'[remoting]\nnamesrv_tls_ca_file = "{tls_files.ca}"\n')
    b = start_broker("namesrv", "remoting", extra_args=("--config", str(conf)))
    ns = b.address("namesrv")
    ctx = tls_files.client_context()

    async def go() -> str:
        async with Admin(ns, tls=ctx) as admin:
            await admin.create_topic("enforced", queues=1)
        async with Producer(ns, "enforcing-producer", tls=ctx) as p:
            return (await p.send(Message("enforced", b"x"))).queue.topic

    assert trio.run(go) == "enforced"
    with socket.create_connection(("127.0.0.1", b.port("namesrv")), timeout=10) as plain:
        plain.sendall(encode(request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 1, {"topic": "x"})))
        assert plain.recv(65536) == b""  # closed: TLS only


def test_sighup_reloads_certificates_and_the_broker_keeps_serving(tls_broker, tls_files):
    import signal
    b, ports = tls_broker
    b.proc.send_signal(signal.SIGHUP)
    with _tls_socket(ports["kafka-tls"], tls_files.client_context()) as s:
        assert _kafka_call(s, API_VERSIONS, 0).error_code == 0
    assert b.alive


def test_a_standalone_nameserver_takes_its_tls_from_a_config_file(tls_files, tmp_path):
    from brokerproc import free_port
    conf = tmp_path / "ns.toml"
    conf.write_text(tls_files.server_toml("none") + '[namesrv.tls]\nmode = "enforcing"\n')
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ferrymq.gateways", "namesrv", "--host",
                             "127.0.0.1", "--port", str(port), "--config", str(conf)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        import time
        deadline = time.monotonic() + 30
        while True:  # wait until it listens
            try:
                s = _tls_socket(port, tls_files.client_context())
                break
            except (ConnectionRefusedError, ssl.SSLError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.05)
        with s:
            reply = _remoting_call(s, RequestCode.GET_ROUTEINFO_BY_TOPIC, {"topic": "none"})
        assert reply.is_response
    finally:
        proc.terminate()
        proc.wait(30)


async def test_a_connection_refused_on_a_tls_listener_gets_no_plaintext_answer(tls_files):
    refusals: list[str] = []

    async def refuse(stream: Any, reason: str) -> None:
        refusals.append(reason)
        await stream.send_all(b"HTTP/1.1 503 Service Unavailable\r\n\r\n")

    sup = ConnectionSupervisor("echo", ConnectionLimits(max_connections=1), None, refuse=refuse,
                               tls=TlsServer("echo", _tls_config(tls_files, mode="enforcing")),
                               host="127.0.0.1")

    async def handler(stream: Any, watch: Any) -> None:
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        await nursery.start(sup.serve, listeners, handler)
        port = listeners[0].socket.getsockname()[1]
        first = await trio.open_ssl_over_tcp_stream("127.0.0.1", port,
                                                    ssl_context=tls_files.client_context())
        await first.do_handshake()
        second = await trio.open_tcp_stream("127.0.0.1", port)
        assert await second.receive_some(100) == b""  # closed, no plaintext 503
        await second.aclose()
        await first.aclose()
        nursery.cancel_scope.cancel()
    assert sup.counts == {"max_connections": 1} and refusals == []
