"""Exactly-once with the real Kafka clients: confluent-kafka's consume-transform-produce
loop, a producer killed mid-transaction, a fenced zombie, kafka-python's and aiokafka's
transactional producers; group members kept across a clean restart, static members."""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time

import httpx
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic
from ferrymq.protocols.kafka import schema
from ferrymq.protocols.kafka.connection import parse_response, request_bytes

DESCRIBE_TRANSACTIONS = 65


def create(bootstrap: str, *topics: str, partitions: int = 1) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(t, partitions) for t in topics]).values():
        f.result(30)


def committed_reader(bootstrap: str, topic: str, group: str) -> Consumer:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                  "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    return c


def drain(c: Consumer, want: int, timeout: float = 30.0) -> list[bytes]:
    """Poll until ``want`` records came (or, with want=0, for a quiet second)."""
    out: list[bytes] = []
    deadline = time.monotonic() + timeout
    quiet_until = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        m = c.poll(0.1)
        if m is not None and m.error() is None:
            out.append(m.value())
            if want and len(out) >= want:
                break
        if not want and time.monotonic() > quiet_until:
            break
    return out


def transaction_state(bootstrap: str, tid: str) -> str:
    """DescribeTransactions, raw (confluent-kafka's admin client has no call for it)."""
    host, port = bootstrap.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        body = schema.request_class(DESCRIBE_TRANSACTIONS)(transactional_ids=(tid,))
        s.sendall(request_bytes(DESCRIBE_TRANSACTIONS, 0, 1, body))
        head = s.recv(4, socket.MSG_WAITALL)
        frame = s.recv(struct.unpack(">i", head)[0], socket.MSG_WAITALL)
    _corr, resp = parse_response(DESCRIBE_TRANSACTIONS, 0, frame)
    return resp.transaction_states[0].transaction_state


@pytest.mark.slow
def test_confluent_consume_transform_produce_is_exactly_once(bootstrap) -> None:
    """Read from `in`, write upper-cased to `out` and commit the input offsets in the same
    transaction; one batch is aborted half-way and redone. A read_committed consumer of
    `out` sees every record once and nothing of the aborted attempt."""
    create(bootstrap, "eos-in", "eos-out")
    src = Producer({"bootstrap.servers": bootstrap})
    for i in range(30):
        src.produce("eos-in", value=b"m%02d" % i)
    assert src.flush(30) == 0

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "eos-app",
                         "isolation.level": "read_committed", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe(["eos-in"])
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": "eos-app-0"})
    producer.init_transactions(30)
    done, aborted_once = 0, False
    deadline = time.monotonic() + 60
    while done < 30 and time.monotonic() < deadline:
        msgs = [m for m in consumer.consume(10, 1.0) if m.error() is None]
        if not msgs:
            continue
        producer.begin_transaction()
        for m in msgs:
            producer.produce("eos-out", value=m.value().upper())
        if not aborted_once:  # a failure half-way: everything of this attempt is dropped
            producer.flush(30)
            producer.abort_transaction(30)
            aborted_once = True
            for tp in consumer.assignment():
                consumer.seek(TopicPartition(tp.topic, tp.partition, msgs[0].offset()))
            continue
        producer.send_offsets_to_transaction(
            [TopicPartition("eos-in", msgs[-1].partition(), msgs[-1].offset() + 1)],
            consumer.consumer_group_metadata(), 30)
        producer.commit_transaction(30)
        done += len(msgs)
    consumer.close()
    assert done == 30
    reader = committed_reader(bootstrap, "eos-out", "eos-check")
    got = drain(reader, 30)
    assert sorted(got) == [b"M%02d" % i for i in range(30)]
    assert drain(reader, 0) == [], "nothing twice, nothing of the aborted attempt"
    reader.close()
    check = Consumer({"bootstrap.servers": bootstrap, "group.id": "eos-app"})
    [tp] = check.committed([TopicPartition("eos-in", 0)], timeout=10)
    assert tp.offset == 30, "the input offsets were committed with the transactions"
    check.close()


VICTIM = textwrap.dedent("""
    import sys, time
    from confluent_kafka import Producer
    p = Producer({"bootstrap.servers": sys.argv[1], "transactional.id": "victim",
                  "transaction.timeout.ms": 2000})
    p.init_transactions(30)
    p.begin_transaction()
    for i in range(20):
        p.produce("victim-out", value=b"doomed-%d" % i)
    p.flush(30)
    print("produced", flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_a_producer_killed_mid_transaction_is_aborted_on_timeout(start_broker, tmp_path,
                                                                  wait_for) -> None:
    """SIGKILL the producer between its records and its commit: after transaction.timeout.ms
    the broker aborts the transaction; no read_committed consumer, and no consumer of
    another door (HTTP here), ever sees a record of it."""
    conf = tmp_path / "txn.toml"
    conf.write_text("[kafka]\ntransaction_abort_check_interval_ms = 200\n")
    broker = start_broker("kafka", "http", extra_args=("--config", str(conf)))
    bootstrap = broker.address("kafka")
    create(bootstrap, "victim-out")
    proc = subprocess.Popen([sys.executable, "-c", VICTIM, bootstrap], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"produced"
        assert transaction_state(bootstrap, "victim") == "Ongoing"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: transaction_state(bootstrap, "victim") == "CompleteAbort",
             what="the timed-out transaction to be aborted")
    reader = committed_reader(bootstrap, "victim-out", "victim-check")
    assert drain(reader, 0) == []
    reader.close()
    uncommitted = Consumer({"bootstrap.servers": bootstrap, "group.id": "victim-raw",
                            "isolation.level": "read_uncommitted",
                            "auto.offset.reset": "earliest"})
    uncommitted.subscribe(["victim-out"])
    assert drain(uncommitted, 0) == [], "aborted records never reached the partition"
    uncommitted.close()
    http = f"http://{broker.address('http')}"
    r = httpx.get(f"{http}/v1/topics/victim-out/messages", params={"group": "h", "max": 10},
                  timeout=10)
    assert r.status_code == 200 and r.json()["messages"] == [], r.text


@pytest.mark.slow
def test_a_zombie_producer_is_fenced(bootstrap) -> None:
    create(bootstrap, "zombie-out")
    zombie = Producer({"bootstrap.servers": bootstrap, "transactional.id": "twin"})
    zombie.init_transactions(30)
    zombie.begin_transaction()
    zombie.produce("zombie-out", value=b"from-the-zombie")
    zombie.flush(30)
    successor = Producer({"bootstrap.servers": bootstrap, "transactional.id": "twin"})
    successor.init_transactions(30)  # fences the zombie, aborting its transaction
    successor.begin_transaction()
    successor.produce("zombie-out", value=b"from-the-successor")
    successor.commit_transaction(30)
    with pytest.raises(KafkaException) as info:
        zombie.commit_transaction(30)
    assert info.value.args[0].fatal(), info.value
    reader = committed_reader(bootstrap, "zombie-out", "zombie-check")
    assert drain(reader, 1) == [b"from-the-successor"]
    assert drain(reader, 0) == []
    reader.close()


def test_kafka_python_transactional_producer(bootstrap) -> None:
    from kafka import KafkaConsumer, KafkaProducer

    create(bootstrap, "kp-txn")
    p = KafkaProducer(bootstrap_servers=bootstrap, transactional_id="kp-1")
    p.init_transactions()
    p.begin_transaction()
    p.send("kp-txn", b"kept-1")
    p.send("kp-txn", b"kept-2")
    p.commit_transaction()
    p.begin_transaction()
    p.send("kp-txn", b"dropped")
    p.abort_transaction()
    p.close()
    c = KafkaConsumer("kp-txn", bootstrap_servers=bootstrap, isolation_level="read_committed",
                      auto_offset_reset="earliest", consumer_timeout_ms=3000)
    assert [m.value for m in c] == [b"kept-1", b"kept-2"]
    c.close()


def test_aiokafka_transactional_producer(bootstrap) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

    create(bootstrap, "aio-txn")

    async def main() -> list[bytes]:
        p = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id="aio-1")
        await p.start()
        try:
            async with p.transaction():
                await p.send_and_wait("aio-txn", b"kept")
            with pytest.raises(RuntimeError):
                async with p.transaction():
                    await p.send_and_wait("aio-txn", b"dropped")
                    raise RuntimeError("the application fails: the transaction aborts")
        finally:
            await p.stop()
        c = AIOKafkaConsumer("aio-txn", bootstrap_servers=bootstrap,
                             isolation_level="read_committed", auto_offset_reset="earliest")
        await c.start()
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                for records in (await c.getmany(timeout_ms=300)).values():
                    got += [r.value for r in records]
                if got and time.monotonic() > deadline - 8:
                    break
            return got
        finally:
            await c.stop()
    assert asyncio.run(main()) == [b"kept"]


class Member(threading.Thread):
    """A confluent-kafka group member counting its rebalances."""

    def __init__(self, bootstrap: str, topic: str, group: str, **conf: str) -> None:
        super().__init__(daemon=True)
        self.conf = {"bootstrap.servers": bootstrap, "group.id": group,
                     "auto.offset.reset": "earliest", "session.timeout.ms": "10000",
                     "heartbeat.interval.ms": "500", **conf}
        self.topic = topic
        self.assigns = self.revokes = 0
        self.records: list[bytes] = []
        self.stop = threading.Event()
        self.leave = True

    def run(self) -> None:
        c = Consumer(self.conf)

        def on_assign(_c: Consumer, parts: list) -> None:
            self.assigns += 1

        def on_revoke(_c: Consumer, parts: list) -> None:
            self.revokes += 1
        c.subscribe([self.topic], on_assign=on_assign, on_revoke=on_revoke)
        while not self.stop.is_set():
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                self.records.append(m.value())
                c.commit(m, asynchronous=False)
        c.close()


@pytest.mark.slow
def test_group_members_are_kept_across_a_clean_broker_restart(start_broker, wait_for) -> None:
    """Finding: after a clean restart every member got UNKNOWN_MEMBER_ID and rejoined. Now
    the member keeps heart-beating and committing in the generation it had: no rebalance."""
    broker = start_broker("kafka")
    bootstrap = broker.address("kafka")
    create(bootstrap, "kept", partitions=2)
    p = Producer({"bootstrap.servers": bootstrap})
    member = Member(bootstrap, "kept", "kept-group")
    member.start()
    try:
        p.produce("kept", value=b"before", partition=0)
        p.flush(30)
        wait_for(lambda: member.records == [b"before"], what="the first record")
        broker.restart()
        p2 = Producer({"bootstrap.servers": bootstrap})
        p2.produce("kept", value=b"after", partition=1)
        p2.flush(30)
        wait_for(lambda: member.records == [b"before", b"after"], what="the record after")
        time.sleep(2)  # heartbeats after the restart (500 ms apart) had their answers
        assert (member.assigns, member.revokes) == (1, 0), "no rebalance after the restart"
    finally:
        member.stop.set()
        member.join(30)


@pytest.mark.slow
def test_a_static_member_restarting_within_its_session_costs_no_rebalance(bootstrap,
                                                                          wait_for) -> None:
    """group.instance.id (KIP-345): a static member that comes back within its session
    timeout gets its partitions back; the other member never rebalances."""
    create(bootstrap, "static", partitions=2)
    other = Member(bootstrap, "static", "static-group")
    other.start()
    wait_for(lambda: other.assigns == 1, what="the first member's assignment")
    first = Member(bootstrap, "static", "static-group", **{"group.instance.id": "s-1"})
    first.start()
    wait_for(lambda: first.assigns == 1, what="the static member's assignment")
    settled = other.assigns
    first.stop.set()
    first.join(30)  # a static member's close does not leave the group
    again = Member(bootstrap, "static", "static-group", **{"group.instance.id": "s-1"})
    again.start()
    try:
        wait_for(lambda: again.assigns == 1, what="the restarted static member's assignment")
        time.sleep(2)  # the subject: a window in which a rebalance would have come
        assert other.assigns == settled, "the other member saw no rebalance"
    finally:
        again.stop.set()
        other.stop.set()
        again.join(30)
        other.join(30)
