#!/usr/bin/env python3
"""Run the kafka-python project's own integration suite (its ``test/integration``) against
a FerryMQ broker started here. The suite is not part of this repository: bring a checkout.

    git clone <kafka-python repository> kafka-python     # any recent main
    python3 -m venv kp-venv
    kp-venv/bin/pip install pytest pytest-mock pytest-timeout lz4 zstandard crc32c python-snappy
    python scripts/kafka_python_suite.py kafka-python --python kp-venv/bin/python

The checkout's own ``kafka`` package is what is tested (``PYTHONPATH`` points at the
checkout), the way its CI runs the suite; the FerryMQ broker runs from this repository
with the interpreter running this script. The suite is pointed at the broker as its
README says for an external broker: ``KAFKA_URI`` (the bootstrap address) and
``KAFKA_VERSION`` (the release whose behaviour it expects: FerryMQ advertises Kafka 3.8's
API ranges, docs/kafka.md). Extra arguments after ``--`` go to pytest. The exit code is
pytest's; the summary line is printed last. docs/kafka.md lists the tests that fail and
why.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

KAFKA_VERSION = "3.8.0"
# Modules that cannot run against an external broker: the TLS tests start a Kafka (and a
# ZooKeeper) of their own from a Kafka installation, whatever KAFKA_URI says. (The SASL
# tests skip themselves when KAFKA_URI is set.)
NOT_EXTERNAL = ("test/integration/test_ssl_integration.py",)
READY_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_broker(data: Path, port: int) -> subprocess.Popen[bytes]:
    """``ferrymq serve`` with the Kafka door alone; returns once it is ready."""
    ready = data / "ready.json"
    config = data / "ferrymq.toml"
    # What kafka-python's fixture configures on the brokers it starts itself
    # (servers/resources/default/kafka.properties): num.partitions = 4,
    # group.min.session.timeout.ms = 1000, group.initial.rebalance.delay.ms = 0.
    config.write_text("[kafka]\nnum_partitions = 4\ngroup_min_session_timeout_ms = 1000\n"
                      "group_initial_rebalance_delay_ms = 0\n")
    args = [sys.executable, "-m", "ferrymq.gateways", "serve", "--data-dir", str(data / "data"),
            "--host", "127.0.0.1", "--ready-file", str(ready), "--config", str(config),
            "--kafka-port", str(port), "--namesrv-port", "0", "--remoting-port", "0",
            "--mqtt-port", "0", "--http-port", "0", "--segment-size", str(64 << 20)]
    log = open(data / "broker.log", "ab")  # noqa: SIM115 - the child keeps it
    proc = subprocess.Popen(args, stdout=log, stderr=log)
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the broker exited with {proc.returncode}; see {data}/broker.log")
        if ready.exists() and json.loads(ready.read_text()).get("pid") == proc.pid:
            return proc
        time.sleep(0.05)
    proc.kill()
    raise SystemExit("the broker did not become ready")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkout", type=Path, help="a kafka-python checkout")
    parser.add_argument("--python", default=sys.executable,
                        help="the interpreter that runs the suite (pytest, pytest-mock, "
                             "pytest-timeout installed)")
    parser.add_argument("--data-dir", type=Path, help="where the broker keeps its data "
                        "(default: a temporary directory)")
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    opts = parser.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    checkout = opts.checkout.resolve()
    if not (checkout / "test" / "integration").is_dir() or not (checkout / "kafka").is_dir():
        parser.error(f"{checkout} is not a kafka-python checkout (no test/integration)")
    with tempfile.TemporaryDirectory(prefix="ferrymq-kp-") as tmp:
        data = opts.data_dir or Path(tmp)
        data.mkdir(parents=True, exist_ok=True)
        port = free_port()
        broker = start_broker(data, port)
        # The suite's fixtures insist on a Kafka installation directory even for an
        # external broker; an empty one will do (nothing is started from it).
        kafka_root = data / "kafka-bin"
        kafka_root.mkdir(exist_ok=True)
        env = dict(os.environ, KAFKA_VERSION=KAFKA_VERSION,
                   KAFKA_URI=f"PLAINTEXT://127.0.0.1:{port}", KAFKA_ROOT=str(kafka_root),
                   PYTHONPATH=str(checkout) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        try:
            done = subprocess.run([opts.python, "-m", "pytest", "test/integration",
                                   "-p", "no:cacheprovider", "-q", "-rfEs",
                                   *(f"--ignore={m}" for m in NOT_EXTERNAL), *extra],
                                  cwd=checkout, env=env, check=False)
        finally:
            broker.terminate()
            try:
                broker.wait(30)
            except subprocess.TimeoutExpired:
                broker.kill()
        print(f"broker log: {data / 'broker.log'}" if opts.data_dir else "", flush=True)
        return done.returncode


if __name__ == "__main__":
    sys.exit(main())
