"""Suite-wide guards: CI must never pass on a run that tested nothing, and a compat
test whose third-party client is missing fails instead of skipping."""

from __future__ import annotations

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus == 0 and session.testscollected == 0:
        session.exitstatus = pytest.ExitCode.NO_TESTS_COLLECTED


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    report = outcome.get_result()
    if report.skipped and "compat-tests" in str(item.fspath):
        report.outcome = "failed"
        report.longrepr = f"compat tests never skip: {report.longrepr}"


# --------------------------------------------------------------------------
# Real broker processes for integration and compat tests.

import sys  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent / "tests"))
from brokerproc import DOOR_NAMES, TEST_SEGMENT_SIZE, BrokerProcess, free_port  # noqa: E402

__all__ = ["DOOR_NAMES", "TEST_SEGMENT_SIZE", "BrokerProcess", "free_port"]


@pytest.fixture
def start_broker(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """Factory: ``start_broker("kafka", "http", extra_args=("--flush", "sync"))`` starts
    a broker with those doors on free loopback ports; every broker is stopped after the test."""
    started: list[BrokerProcess] = []

    def start(*doors: str, extra_args: tuple[str, ...] = (), name: str = "broker",
              data_dir: Path | None = None, nofile: tuple[int, int] | None = None,
              prepare: Callable[[], object] | None = None) -> BrokerProcess:
        b = BrokerProcess(data_dir or tmp_path / name, tuple(doors), tuple(extra_args),
                          nofile=nofile, prepare=prepare)
        started.append(b)
        return b.start()

    yield start
    for b in started:
        try:
            b.stop()
        except Exception:
            b.kill()


@pytest.fixture(scope="module")
def start_module_broker(tmp_path_factory: pytest.TempPathFactory
                        ) -> Iterator[Callable[..., BrokerProcess]]:
    """Like ``start_broker``, but the brokers live for the whole test module (for
    modules whose tests can share one broker, started once)."""
    started: list[BrokerProcess] = []

    def start(*doors: str, extra_args: tuple[str, ...] = (), name: str = "broker",
              prepare: Callable[[], object] | None = None) -> BrokerProcess:
        b = BrokerProcess(tmp_path_factory.mktemp(name) / name, tuple(doors), tuple(extra_args),
                          prepare=prepare)
        started.append(b)
        return b.start()

    yield start
    for b in started:
        try:
            b.stop()
        except Exception:  # never let cleanup hide the tests' own failures
            b.kill()


# --------------------------------------------------------------------------
# TLS: certificates made at test time (PyPI trustme), never committed.


@dataclass(frozen=True)
class TlsFiles:
    """PEM files of a test CA, the broker's certificate (127.0.0.1 and localhost),
    a client certificate of the same CA (``CN=alice``) and one of another CA."""

    ca: Path
    cert: Path  # the server's chain
    key: Path
    client_cert: Path  # chain and key of a client the CA vouches for
    client_key: Path
    rogue_cert: Path  # a client certificate of another CA
    rogue_key: Path

    def server_toml(self, client_auth: str = "optional", handshake_timeout_s: float = 10.0
                    ) -> str:
        """The shared ``[tls]`` table of a broker's config file."""
        return (f'[tls]\ncert_file = "{self.cert}"\nkey_file = "{self.key}"\n'
                f'ca_file = "{self.ca}"\nclient_auth = "{client_auth}"\n'
                f"handshake_timeout_s = {handshake_timeout_s}\n")

    def broker_config(self, path: Path, *, client_auth: str = "optional",
                      http_client_auth: str = "required", handshake_timeout_s: float = 10.0,
                      extra: str = "") -> dict[str, int]:
        """Write a broker config file with TLS on every door: the NameServer and
        remoting ports permissive, TLS-only ports for Kafka, MQTT (and WSS) and HTTP
        (which wants a client certificate). The TLS-only ports are bound by the broker
        (port 0, no race with other processes picking free ports): ``ports_of(broker)``
        reads them from its ready file. Returns the one port chosen here (``mqtt-ws``);
        pass ``start_tls_broker`` the writing, so that a taken port is chosen again."""
        ports = {"mqtt-ws": free_port()}
        path.write_text(
            self.server_toml(client_auth, handshake_timeout_s)
            + '[namesrv.tls]\nmode = "permissive"\n[remoting.tls]\nmode = "permissive"\n'
            + "[kafka.tls]\nport = 0\n"
            + f"[mqtt]\nws_port = {ports['mqtt-ws']}\nsys_interval = 0.0\n"
            + "[mqtt.tls]\nport = 0\nws_port = 0\n"
            + f'[http.tls]\nport = 0\nclient_auth = "{http_client_auth}"\n'
            + extra)
        return ports

    def start_tls_broker(self, start: Callable[..., BrokerProcess], conf: Path, *doors: str,
                         name: str, **config: Any) -> tuple[BrokerProcess, dict[str, int]]:
        """Start a broker (``start``: the ``start_broker`` or ``start_module_broker``
        factory) on a config file ``broker_config(conf, **config)`` writes, the port it
        picks written again on each try; returns the broker and all its ports."""
        ports: dict[str, int] = {}
        b = start(*doors, extra_args=("--config", str(conf)), name=name,
                  prepare=lambda: ports.update(self.broker_config(conf, **config)))
        ports.update(self.ports_of(b))
        return b, ports

    @staticmethod
    def ports_of(broker: BrokerProcess) -> dict[str, int]:
        """Every port a started broker reports in its ready file (``kafka-tls``,
        ``mqtt-tls``, ``mqtt-wss``, ``http-tls``... and the doors')."""
        import json
        ready = broker.data_dir.parent / f"{broker.data_dir.name}.ready.json"
        return dict(json.loads(ready.read_text())["ports"])

    def client_context(self, with_cert: bool = False, rogue: bool = False) -> Any:
        import ssl
        ctx = ssl.create_default_context(cafile=str(self.ca))
        if with_cert:
            ctx.load_cert_chain(str(self.client_cert), str(self.client_key))
        if rogue:
            ctx.load_cert_chain(str(self.rogue_cert), str(self.rogue_key))
        return ctx


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    import trustme  # a test dependency: its absence fails the test, never skips it

    d = tmp_path_factory.mktemp("tls")
    ca, other = trustme.CA(), trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost", "::1")
    client = ca.issue_cert("alice@example.com", common_name="alice")
    rogue = other.issue_cert("mallory@example.com", common_name="mallory")
    files = TlsFiles(d / "ca.pem", d / "server.pem", d / "server.key", d / "client.pem",
                     d / "client.key", d / "rogue.pem", d / "rogue.key")
    ca.cert_pem.write_to_path(str(files.ca))
    server.private_key_pem.write_to_path(str(files.key))
    with open(files.cert, "wb") as f:
        for blob in server.cert_chain_pems:
            f.write(blob.bytes())
    for cert, chain, key in ((client, files.client_cert, files.client_key),
                             (rogue, files.rogue_cert, files.rogue_key)):
        cert.private_key_pem.write_to_path(str(key))
        with open(chain, "wb") as f:
            for blob in cert.cert_chain_pems:
                f.write(blob.bytes())
    return files
