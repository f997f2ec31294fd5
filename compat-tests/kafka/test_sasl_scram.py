"""Real Kafka clients with credentials against FerryMQ's access model (docs/security.md):
confluent-kafka (SCRAM-SHA-512), kafka-python (SCRAM-SHA-256), aiokafka (SCRAM-SHA-512) and
kcat (PLAIN and SCRAM) produce and consume as a granted user; a user without a grant gets
TOPIC_AUTHORIZATION_FAILED, a wrong password SASL_AUTHENTICATION_FAILED."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

USER, PASSWORD = "kuser", "kuser-secret"


def _ferrymq(*args: str) -> None:
    out = subprocess.run([sys.executable, "-m", "ferrymq.gateways", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


@pytest.fixture
def sasl_bootstrap(start_broker, tmp_path: Path) -> str:
    conf = tmp_path / "b.toml"
    conf.write_text("segment_size = 8388608\n[auth]\nenabled = true\n")
    data = tmp_path / "broker"
    where = ("--config", str(conf), "--data-dir", str(data))
    _ferrymq("user", "add", USER, "--new-password", PASSWORD, *where)
    _ferrymq("user", "add", "nogrant", "--new-password", "nogrant-pw", *where)
    for kind in ("--topic", "--group"):
        _ferrymq("acl", "add", "--principal", USER, kind, "scram-", "--pattern", "prefixed",
                 "--operation", "all", *where)
    b = start_broker("kafka", extra_args=("--config", str(conf)), data_dir=data)
    return b.address("kafka")


def test_confluent_kafka_scram_sha_512(sasl_bootstrap: str) -> None:
    from confluent_kafka import Consumer, KafkaError, Producer

    sasl = {"bootstrap.servers": sasl_bootstrap, "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanisms": "SCRAM-SHA-512", "sasl.username": USER,
            "sasl.password": PASSWORD}
    p = Producer(sasl)
    for i in range(5):
        p.produce("scram-ck", f"m{i}".encode())
    assert p.flush(30) == 0
    c = Consumer({**sasl, "group.id": "scram-ck-group", "auto.offset.reset": "earliest"})
    c.subscribe(["scram-ck"])
    got: list[bytes] = []
    for _ in range(300):
        m = c.poll(0.2)
        if m is not None and not m.error():
            got.append(m.value())
        if len(got) == 5:
            break
    c.close()
    assert sorted(got) == [f"m{i}".encode() for i in range(5)]

    errors: list[KafkaError] = []
    bad = Producer({**sasl, "sasl.password": "wrong", "error_cb": errors.append})
    bad.produce("scram-ck", b"x")
    bad.flush(5)
    assert any(e.code() == KafkaError._AUTHENTICATION for e in errors), errors


def test_kafka_python_scram_sha_256_and_a_refusal(sasl_bootstrap: str) -> None:
    from kafka import KafkaConsumer, KafkaProducer
    from kafka.errors import TopicAuthorizationFailedError

    sasl = {"bootstrap_servers": sasl_bootstrap, "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": USER,
            "sasl_plain_password": PASSWORD}
    p = KafkaProducer(**sasl)
    p.send("scram-kp", b"hello").get(timeout=30)
    p.close()
    c = KafkaConsumer("scram-kp", group_id="scram-kp-group", auto_offset_reset="earliest",
                      consumer_timeout_ms=15000, **sasl)
    assert [m.value for m in c] [:1] == [b"hello"]
    c.close()
    other = KafkaProducer(**{**sasl, "sasl_plain_username": "nogrant",
                             "sasl_plain_password": "nogrant-pw"}, max_block_ms=10000)
    with pytest.raises(Exception) as e:
        other.send("scram-kp", b"no").get(timeout=30)
    assert isinstance(e.value, TopicAuthorizationFailedError) or "Authorization" in repr(e.value)
    other.close()


def test_aiokafka_scram_sha_512(sasl_bootstrap: str) -> None:
    import asyncio

    asyncio.run(_aiokafka(sasl_bootstrap))


async def _aiokafka(sasl_bootstrap: str) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    sasl = {"bootstrap_servers": sasl_bootstrap, "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-512", "sasl_plain_username": USER,
            "sasl_plain_password": PASSWORD}
    p = AIOKafkaProducer(**sasl)
    await p.start()
    try:
        await p.send_and_wait("scram-aio", b"aio")
    finally:
        await p.stop()
    c = AIOKafkaConsumer("scram-aio", group_id="scram-aio-group", auto_offset_reset="earliest",
                         **sasl)
    await c.start()
    try:
        m = await c.getone()
        assert m.value == b"aio"
    finally:
        await c.stop()


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_kcat_with_sasl(sasl_bootstrap: str, mechanism: str) -> None:
    exe = shutil.which("kcat")
    assert exe, "kcat is missing: scripts/test installs Debian's kcat"
    sasl = ["-b", sasl_bootstrap, "-X", "security.protocol=SASL_PLAINTEXT",
            "-X", f"sasl.mechanisms={mechanism}", "-X", f"sasl.username={USER}",
            "-X", f"sasl.password={PASSWORD}"]
    topic = f"scram-kcat-{mechanism.lower()}"

    def run(*args: str, stdin: str | None = None) -> str:
        out = subprocess.run([exe, *sasl, *args], input=stdin, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    run("-P", "-t", topic, stdin="one\ntwo\n")
    assert run("-C", "-t", topic, "-e", "-o", "beginning", "-f", "%s\\n").split() == [
        "one", "two"]
    wrong = subprocess.run([exe, *sasl[:-1], "sasl.password=wrong", "-L", "-m", "5"],
                           capture_output=True, text=True, timeout=60)
    assert wrong.returncode != 0 and "uthentication" in wrong.stderr + wrong.stdout
    json.dumps(wrong.stderr)  # (the message is librdkafka's own)
