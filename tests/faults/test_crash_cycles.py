"""SIGKILL cycles under sync flush: every acknowledged write, commit and ack is there after
the restart (issue 12, "a crash and fault suite").

One broker with every door runs seven workloads at once, each a client that waits for
its acknowledgement before the next request: native sends (RocketMQ remoting), MQTT
QoS 1 and QoS 2 publishes, HTTP produce, Kafka offset commits, pop acks (HTTP) and
transaction commits (HTTP). Once each has been acknowledged at least once, the broker
is SIGKILLed mid-stream and started again, and the shared history checker
(``history.py``) compares what the clients were told with what the broker holds:
nothing acknowledged lost, each queue in acknowledgement order, no duplicates where the
protocol allows none, no acked pop message delivered again, no committed Kafka offset
going back. Ten cycles; the broker's start-up is most of each cycle's time.
"""

from __future__ import annotations

import contextlib
import random
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from fault_history import History
from ferrymq.clients import Message as ClientMessage
from ferrymq.clients import Producer
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

sys.path.insert(0, str(Path(__file__).parent.parent / "mqtt"))
from rawclient import RawClient

CYCLES = 10
DOORS = ("namesrv", "remoting", "kafka", "mqtt", "http")
ONE_QUEUE = ("ch", "cn", "cp", "ctx", "ck")  # HTTP, native, pop, transactions, Kafka
STREAMS = ("http", "native", "mqtt1", "mqtt2", "kafka", "pop", "tx")


class Cycle:
    """One cycle's signals: ``stop`` (the workloads end), ``killed`` (set just before
    the SIGKILL: errors after it are the kill's), and the errors seen before it."""

    def __init__(self) -> None:
        self.stop = threading.Event()
        self.killed = threading.Event()
        self.errors: list[str] = []

    def is_set(self) -> bool:
        return self.stop.is_set()

    def failed(self, where: str, exc: BaseException) -> None:
        if not self.killed.is_set():
            self.errors.append(f"{where}: {exc!r}")


def _run(stop: Cycle, step: Callable[[int], None]) -> None:
    """Call ``step(i)`` for i = 0, 1, ... until told to stop or the broker is gone."""
    i = 0
    try:
        while not stop.is_set():
            step(i)
            i += 1
    except Exception as exc:  # the kill ends every workload with some error
        stop.failed(getattr(step, "__qualname__", "workload"), exc)


def http_produce(url: str, c: int, h: History, stop: Cycle) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        def step(i: int) -> None:
            body = f"h{c}-{i}"
            r = http.post("/v1/topics/ch/messages", json={"body": body, "queue": 0})
            if r.status_code == 201:
                h.ack("http", body)
        _run(stop, step)


def native_send(namesrv: str, c: int, h: History, stop: Cycle) -> None:
    async def main() -> None:
        async with Producer(namesrv, "crash-pg", retries=0, heartbeat_s=1.0,
                            route_refresh_s=1.0) as p:
            i = 0
            while not stop.is_set():
                body = f"n{c}-{i}"
                await p.send(ClientMessage("cn", body.encode()))  # retries=0: no resend
                h.ack("native", body)
                i += 1
    try:
        trio.run(main)
    except BaseException as exc:  # the kill ends it with some error
        stop.failed("native", exc)


def mqtt_publish(port: int, qos: int, c: int, h: History, stop: Cycle) -> None:
    stream = f"mqtt{qos}"
    client = RawClient(port, 4)
    try:
        client.connect(f"crash-{stream}-{c}", clean=True)
    except Exception as exc:
        stop.failed(stream, exc)
        return

    def step(i: int) -> None:
        body = f"q{qos}-{c}-{i}"
        ack = client.publish(f"cm{qos}", body.encode(), qos, pid=i % 65535 + 1)
        if ack is not None and not getattr(ack, "reason", 0):
            h.ack(stream, body)
    _run(stop, step)


def kafka_commits(bootstrap: str, c: int, h: History, stop: Cycle) -> None:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="crash-kg",
                             enable_auto_commit=False, request_timeout_ms=5000)
    tp = TopicPartition("ck", 0)
    consumer.assign([tp])
    base = (c + 1) * 100_000

    def step(i: int) -> None:
        consumer.commit({tp: OffsetAndMetadata(base + i, "", -1)})
        h.ack("kafka", str(base + i))
    try:
        _run(stop, step)
    finally:
        with contextlib.suppress(Exception):
            consumer.close(autocommit=False)


def pop_acks(url: str, h: History, stop: Cycle) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        def step(_: int) -> None:
            r = http.get("/v1/topics/cp/messages", params={"group": "crash-pop", "max": 1,
                                                            "invisible": 60})
            for m in r.json().get("messages", ()):
                if http.delete(f"/v1/topics/cp/messages/{m['receipt']}").status_code == 204:
                    h.ack("pop", m["body"])
        _run(stop, step)


def tx_commits(url: str, c: int, h: History, stop: Cycle) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        def step(i: int) -> None:
            body = f"t{c}-{i}"
            r = http.post("/v1/topics/ctx/transactions", params={"group": "crash-tg"},
                          json={"body": body})
            tx = r.json()["transaction_id"]
            if http.post(f"/v1/transactions/{tx}/commit").status_code == 200:
                h.ack("tx", body)
        _run(stop, step)


def read_topic(http: httpx.Client, topic: str) -> list[list[str]]:
    """Every queue of ``topic``, its bodies in offset order."""
    info = http.get(f"/v1/topics/{topic}")
    if info.status_code == 404:
        return []
    queues = []
    for q in info.json()["queue_offsets"]:
        offset, bodies = q["min_offset"], []
        while offset < q["max_offset"]:
            r = http.get(f"/v1/topics/{topic}/queues/{q['queue']}/messages",
                         params={"offset": offset, "max": 1000}).json()
            bodies += [m["body"] for m in r["messages"]]
            if r["next_offset"] <= offset:
                break
            offset = r["next_offset"]
        queues.append(bodies)
    return queues


REPORT = re.compile(r'report="RecoveryReport\(clean_shutdown=False.*?scanned_from=(\d+), '
                    r'end=(\d+).*?seconds=([0-9.e-]+), validated_from=(\d+)')


@pytest.mark.slow
def test_every_acknowledged_write_commit_and_ack_survives_sigkill_cycles(
        start_broker: Callable[..., Any]) -> None:
    b = start_broker(*DOORS, extra_args=("--flush", "sync"), name="crash")
    url = f"http://{b.address('http')}"
    h = History()
    rnd = random.Random(12)
    with httpx.Client(base_url=url, timeout=10) as http:
        for t in ONE_QUEUE:
            assert http.post("/v1/topics", json={"name": t, "queues": 1}).status_code == 201
    starts: list[float] = []
    recoveries: list[tuple[int, int, float, int]] = []
    last_kafka = -1
    for c in range(CYCLES):
        with httpx.Client(base_url=url, timeout=10) as http:
            r = http.post("/v1/topics/cp/messages",
                          json={"messages": [{"body": f"p{c}-{i}"} for i in range(100)]})
            assert r.status_code == 201, r.text
        stop = Cycle()
        counts = {s: h.count(s) for s in STREAMS}
        work = [
            threading.Thread(target=http_produce, args=(url, c, h, stop)),
            threading.Thread(target=native_send, args=(b.address("namesrv"), c, h, stop)),
            threading.Thread(target=mqtt_publish, args=(b.port("mqtt"), 1, c, h, stop)),
            threading.Thread(target=mqtt_publish, args=(b.port("mqtt"), 2, c, h, stop)),
            threading.Thread(target=kafka_commits, args=(b.address("kafka"), c, h, stop)),
            threading.Thread(target=pop_acks, args=(url, h, stop)),
            threading.Thread(target=tx_commits, args=(url, c, h, stop)),
        ]
        for t in work:
            t.start()
        deadline = time.monotonic() + 30
        while any(h.count(s) == counts[s] for s in STREAMS):
            assert time.monotonic() < deadline and not stop.errors, (
                stop.errors, [s for s in STREAMS if h.count(s) == counts[s]])
            time.sleep(0.01)
        time.sleep(rnd.uniform(0, 0.2))
        stop.killed.set()
        b.kill()
        stop.stop.set()
        for t in work:
            t.join(30)
        assert not stop.errors, stop.errors
        t0 = time.monotonic()
        b.start()
        starts.append(time.monotonic() - t0)
        found = REPORT.findall(b.log())
        assert len(found) == c + 1, "one recovery report per kill"
        scanned, end, secs, validated = found[-1]
        recoveries.append((int(scanned), int(end), float(secs), int(validated)))
        with httpx.Client(base_url=url, timeout=10) as http:
            for stream, topics, once in (("http", ["ch"], True), ("native", ["cn"], True),
                                         ("mqtt1", ["cm1"], False), ("mqtt2", ["cm2"], True),
                                         ("tx", ["ctx"], True)):
                queues = [q for t in topics for q in read_topic(http, t)]
                v = h.check(stream, queues, once=once)
                assert v.ok, v
            group = http.get("/v1/groups/crash-kg").json()
            [committed] = [q["committed"] for t in group["topics"] if t["topic"] == "ck"
                           for q in t["queues"]]
            acked = int(h.acked["kafka"][-1])
            assert committed >= acked >= last_kafka, (committed, acked)
            last_kafka = acked
            r = http.get("/v1/topics/cp/messages", params={"group": "crash-pop", "max": 32,
                                                            "invisible": 60}).json()
            again = [m["body"] for m in r["messages"] if m["body"] in set(h.acked["pop"])]
            assert not again, f"acked pop messages delivered again: {again}"
            for m in r["messages"]:
                assert http.delete(f"/v1/topics/cp/messages/{m['receipt']}").status_code == 204
                h.ack("pop", m["body"])
    totals = {s: h.count(s) for s in STREAMS}
    print(f"\ncrash cycles: {CYCLES}, acknowledged {totals}, lost 0; "
          f"restart to ready {min(starts):.2f}-{max(starts):.2f} s; recovery "
          f"{min(r[2] for r in recoveries) * 1000:.0f}-{max(r[2] for r in recoveries) * 1000:.0f}"
          f" ms, validated {[r[1] - r[3] for r in recoveries]} bytes")
    # The checkpoint follows the production: no recovery after the first cycles
    # validates from the start of the log (the finding: "scanned from offset 0").
    assert all(validated > 0 for _, _, _, validated in recoveries[2:]), recoveries
