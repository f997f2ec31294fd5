"""Real Kafka clients over TLS: confluent-kafka (SSL, SASL_SSL), kafka-python, aiokafka and
kcat against the Kafka door's TLS listener (docs/security.md, "TLS"). Certificates are
made at test time (trustme). Each client bootstraps on the TLS port and must be sent
back to it by Metadata: a client sent to the plaintext port would fail its handshake."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from typing import Any

import pytest


def _broker(start_module_broker: Any, tls_files: Any, tmp_path_factory: Any, name: str,
            kafka_table: str = "") -> tuple[Any, str]:
    conf = tmp_path_factory.mktemp(name) / "kafka-tls.toml"
    tls_files.broker_config(conf, extra=kafka_table)
    b = start_module_broker("kafka", extra_args=("--config", str(conf)), name=name)
    return b, f"127.0.0.1:{tls_files.ports_of(b)['kafka-tls']}"


@pytest.fixture(scope="module")
def ssl_bootstrap(start_module_broker, tls_files, tmp_path_factory) -> str:
    return _broker(start_module_broker, tls_files, tmp_path_factory, "kafka-ssl")[1]


@pytest.fixture(scope="module")
def sasl_ssl_bootstrap(start_module_broker, tls_files, tmp_path_factory) -> str:
    # SASL on the door: every listener wants it, so the TLS one is Kafka's SASL_SSL.
    return _broker(start_module_broker, tls_files, tmp_path_factory, "kafka-sasl-ssl",
                   '[kafka]\nsasl_plain_users = { alice = "alice-secret" }\n')[1]


def _confluent_round_trip(conf: dict[str, Any], topic: str) -> list[bytes]:
    from confluent_kafka import Consumer, Producer

    errors: list[Any] = []
    p = Producer(conf)
    for i in range(3):
        p.produce(topic, value=f"{topic}-{i}".encode(),
                  on_delivery=lambda err, _m: errors.append(err) if err else None)
    assert p.flush(30) == 0 and not errors, errors
    c = Consumer({**conf, "group.id": f"{topic}-group", "auto.offset.reset": "earliest"})
    c.subscribe([topic])
    got: list[bytes] = []
    for _ in range(300):
        m = c.poll(0.1)
        if m is not None and m.error() is None:
            got.append(m.value())
        if len(got) == 3:
            break
    c.close()
    return sorted(got)


def test_confluent_kafka_over_ssl(ssl_bootstrap, tls_files) -> None:
    conf = {"bootstrap.servers": ssl_bootstrap, "security.protocol": "SSL",
            "ssl.ca.location": str(tls_files.ca)}
    assert _confluent_round_trip(conf, "ck-ssl") == [b"ck-ssl-0", b"ck-ssl-1", b"ck-ssl-2"]


def test_confluent_kafka_over_ssl_with_a_client_certificate(ssl_bootstrap, tls_files) -> None:
    conf = {"bootstrap.servers": ssl_bootstrap, "security.protocol": "SSL",
            "ssl.ca.location": str(tls_files.ca),
            "ssl.certificate.location": str(tls_files.client_cert),
            "ssl.key.location": str(tls_files.client_key)}
    assert _confluent_round_trip(conf, "ck-mtls") == [b"ck-mtls-0", b"ck-mtls-1", b"ck-mtls-2"]


def test_confluent_kafka_sasl_ssl_plain(sasl_ssl_bootstrap, tls_files) -> None:
    conf = {"bootstrap.servers": sasl_ssl_bootstrap, "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(tls_files.ca), "sasl.mechanism": "PLAIN",
            "sasl.username": "alice", "sasl.password": "alice-secret"}
    assert _confluent_round_trip(conf, "ck-sasl") == [b"ck-sasl-0", b"ck-sasl-1", b"ck-sasl-2"]


@pytest.fixture
def scram_ssl_bootstrap(start_broker, tls_files, tmp_path) -> str:
    """A broker with the access model on (docs/security.md): the user alice, made
    offline with `ferrymq user add` (SCRAM verifiers), granted topics and groups named
    ck-scram*; Kafka's TLS listener is SASL_SSL."""
    import sys

    conf = tmp_path / "scram-tls.toml"
    tls_files.broker_config(conf, extra="[auth]\nenabled = true\n")
    data = tmp_path / "broker"
    where = ("--config", str(conf), "--data-dir", str(data))
    for args in (("user", "add", "alice", "--new-password", "alice-secret"),
                 ("acl", "add", "--principal", "alice", "--topic", "ck-scram", "--pattern",
                  "prefixed", "--operation", "all"),
                 ("acl", "add", "--principal", "alice", "--group", "ck-scram", "--pattern",
                  "prefixed", "--operation", "all")):
        out = subprocess.run([sys.executable, "-m", "ferrymq.gateways", *args, *where],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    b = start_broker("kafka", extra_args=("--config", str(conf)), data_dir=data)
    return f"127.0.0.1:{tls_files.ports_of(b)['kafka-tls']}"


def test_confluent_kafka_sasl_ssl_scram_sha_512(scram_ssl_bootstrap, tls_files) -> None:
    """The issue's "done means": SASL_SSL with SCRAM-SHA-512, a user of the one access
    model (issue 13, items 1-3) over the Kafka door's TLS listener."""
    conf = {"bootstrap.servers": scram_ssl_bootstrap, "security.protocol": "SASL_SSL",
            "ssl.ca.location": str(tls_files.ca), "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "alice", "sasl.password": "alice-secret",
            "message.timeout.ms": 10_000}  # an unsupported mechanism fails in 10 s, not 30
    assert _confluent_round_trip(conf, "ck-scram") == [b"ck-scram-0", b"ck-scram-1",
                                                       b"ck-scram-2"]


def test_kafka_python_over_ssl(ssl_bootstrap, tls_files) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    tls = {"security_protocol": "SSL", "ssl_cafile": str(tls_files.ca)}
    producer = KafkaProducer(bootstrap_servers=ssl_bootstrap, **tls)
    for i in range(3):
        producer.send("kp-ssl", f"kp-{i}".encode()).get(timeout=30)
    producer.close()
    consumer = KafkaConsumer("kp-ssl", bootstrap_servers=ssl_bootstrap, group_id="kp-ssl",
                             auto_offset_reset="earliest", consumer_timeout_ms=10_000, **tls)
    got = sorted(m.value for m in consumer)
    consumer.close()
    assert got == [b"kp-0", b"kp-1", b"kp-2"]


def test_aiokafka_over_ssl(ssl_bootstrap, tls_files) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
    from aiokafka.helpers import create_ssl_context

    async def go() -> list[bytes]:
        tls = {"security_protocol": "SSL",
               "ssl_context": create_ssl_context(cafile=str(tls_files.ca))}
        producer = AIOKafkaProducer(bootstrap_servers=ssl_bootstrap, **tls)
        await producer.start()
        try:
            for i in range(3):
                await producer.send_and_wait("ak-ssl", f"ak-{i}".encode())
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer("ak-ssl", bootstrap_servers=ssl_bootstrap, group_id="ak",
                                    auto_offset_reset="earliest", **tls)
        await consumer.start()
        got: list[bytes] = []
        try:
            while len(got) < 3:
                batch = await consumer.getmany(timeout_ms=30_000)
                assert batch, "nothing consumed over SSL"
                got += [m.value for msgs in batch.values() for m in msgs]
        finally:
            await consumer.stop()
        return sorted(got)

    assert asyncio.run(go()) == [b"ak-0", b"ak-1", b"ak-2"]


def test_kcat_over_ssl(ssl_bootstrap, tls_files) -> None:
    exe = shutil.which("kcat")
    assert exe, "kcat is missing: scripts/test installs Debian's kcat"
    tls = ["-X", "security.protocol=ssl", "-X", f"ssl.ca.location={tls_files.ca}"]

    def kcat(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run([exe, "-b", ssl_bootstrap, *tls, *args], input=stdin,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    kcat("-P", "-t", "kc-ssl", stdin="one\ntwo\n")
    listing = kcat("-L", "-t", "kc-ssl")
    assert f"at {ssl_bootstrap}" in listing  # Metadata names the TLS listener
    got = kcat("-C", "-t", "kc-ssl", "-e", "-o", "beginning", "-f", "%s\\n")
    assert sorted(got.split()) == ["one", "two"]
