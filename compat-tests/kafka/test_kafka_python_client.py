"""kafka-python (pure Python) against FerryMQ's Kafka door, at the client's default settings.

The scenario runs in a child interpreter: kafka-python keeps process-wide
network state that the other clients' tests in the same pytest process
disturbed (a fresh broker per test did not help; a fresh process did).
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

TOPIC = "kp-topic"
GROUP = "kp-group"


class Member(threading.Thread):
    """A group member polling in its own thread (kafka-python rejoins inside poll)."""

    def __init__(self, bootstrap: str, name: str) -> None:
        super().__init__(daemon=True, name=name)
        MEMBERS.append(self)
        self.bootstrap = bootstrap
        self.records: list = []
        self.stop = threading.Event()
        self.assigned: set[int] = set()
        self.error: BaseException | None = None
        self.polls = 0

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # shown by wait_for, not lost in a dead thread
            self.error = exc
            raise

    def _run(self) -> None:
        # kafka-python's network layer belongs to the thread that created the consumer.
        consumer = KafkaConsumer(TOPIC, bootstrap_servers=self.bootstrap, group_id=GROUP,
                                 client_id=self.name, auto_offset_reset="earliest")
        while not self.stop.is_set():
            for batch in consumer.poll(timeout_ms=100).values():
                self.records.extend(batch)
            self.polls += 1
            self.assigned = {tp.partition for tp in consumer.assignment()}
        consumer.close()  # commits (auto commit) and leaves the group


MEMBERS: list[Member] = []


def wait_for(check, timeout: float = 40.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        failed = [m for m in MEMBERS if m.error is not None]
        if failed:
            raise AssertionError(f"{failed[0].name} failed: {failed[0].error!r}")
        if time.monotonic() > deadline:
            seen = [(m.name, m.is_alive(), m.polls, m.assigned) for m in MEMBERS]
            raise AssertionError(f"timed out waiting for {what}; members (name, alive, "
                                 f"polls, assigned): {seen}")
        time.sleep(0.1)


@pytest.mark.slow
def test_kafka_python_end_to_end(bootstrap) -> None:
    out = subprocess.run([sys.executable, __file__, bootstrap], capture_output=True, text=True,
                         timeout=240)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-6000:]
    assert "scenario passed" in out.stdout


def scenario(bootstrap: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(TOPIC, 2, 1)])
    assert TOPIC in admin.list_topics()

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    gz = KafkaProducer(bootstrap_servers=bootstrap, compression_type="gzip")
    sent = []
    for i in range(20):
        p = producer if i % 2 else gz
        md = p.send(TOPIC, key=f"key-{i}".encode(), value=f"value-{i}".encode(),
                    headers=[("n", str(i).encode())]).get(timeout=10)
        sent.append((md.partition, md.offset))
    producer.flush()
    gz.flush()
    # Idempotence is on by default against a 0.11+ broker: the producer got an id.
    assert producer.config["enable_idempotence"]
    pid = producer._transaction_manager.producer_id_and_epoch.producer_id
    assert pid >= 0
    assert len(set(sent)) == 20, "every record got its own offset"

    a = Member(bootstrap, "member-a")
    a.start()
    wait_for(lambda: a.assigned == {0, 1}, timeout=90, what="first member owns both partitions")
    b = Member(bootstrap, "member-b")
    b.start()
    wait_for(lambda: len(a.assigned) == 1 and len(b.assigned) == 1
             and a.assigned | b.assigned == {0, 1}, what="rebalance on join")
    wait_for(lambda: len(a.records) + len(b.records) >= 20, what="all records consumed")
    got = {(r.key, r.value, tuple(r.headers)) for r in a.records + b.records}
    assert got == {(f"key-{i}".encode(), f"value-{i}".encode(), (("n", str(i).encode()),))
                   for i in range(20)}

    groups = admin.list_groups()
    assert GROUP in str(groups)
    described = admin.describe_groups([GROUP])
    assert "Stable" in str(described) and "member-a" in str(described)

    b.stop.set()
    b.join(30)
    wait_for(lambda: a.assigned == {0, 1}, what="rebalance on leave")
    a.stop.set()
    a.join(30)

    # The commits are the broker's offsets: a restarted consumer resumes there.
    ends = {p: max(o for q, o in sent if q == p) + 1 for p, _ in sent}
    for i in range(5):
        producer.send(TOPIC, key=b"late", value=f"late-{i}".encode(), partition=i % 2)
    producer.flush()
    again = KafkaConsumer(TOPIC, bootstrap_servers=bootstrap, group_id=GROUP,
                          auto_offset_reset="earliest")
    late: list = []
    wait_for(lambda: late.extend(r for bs in again.poll(timeout_ms=200).values() for r in bs)
             or len(late) >= 5, what="late records")
    assert sorted(r.value for r in late) == [f"late-{i}".encode() for i in range(5)]
    committed = {p: again.committed(TopicPartition(TOPIC, p)) for p in ends}
    assert all(committed[p] >= ends[p] for p in ends), (committed, ends)
    again.close()

    admin.delete_topics([TOPIC])
    wait_for(lambda: TOPIC not in admin.list_topics(), what="topic deleted")
    admin.close()
    producer.close()
    gz.close()


if __name__ == "__main__":
    scenario(sys.argv[1])
    print("scenario passed")
