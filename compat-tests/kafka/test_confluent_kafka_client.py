"""confluent-kafka (librdkafka) against FerryMQ's Kafka door, at the client's default settings."""

from __future__ import annotations

import threading

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

TOPIC = "ck-topic"
GROUP = "ck-group"


class Member(threading.Thread):
    def __init__(self, bootstrap: str, name: str) -> None:
        super().__init__(daemon=True, name=name)
        self.conf = {"bootstrap.servers": bootstrap, "group.id": GROUP, "client.id": name,
                     "auto.offset.reset": "earliest"}
        self.records: list = []
        self.assigned: set[int] = set()
        self.stop = threading.Event()

    def run(self) -> None:
        c = Consumer(self.conf)
        c.subscribe([TOPIC])
        while not self.stop.is_set():
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                self.records.append((m.key(), m.value(), tuple(m.headers() or ())))
            self.assigned = {tp.partition for tp in c.assignment()}
        c.close()  # commits and leaves the group


def _delivered(errors: list):
    def report(err, msg) -> None:
        if err is not None:
            errors.append(err)
    return report


@pytest.mark.slow
def test_confluent_kafka_end_to_end(bootstrap, wait_for) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(TOPIC, 2)])[TOPIC].result(30)
    assert TOPIC in admin.list_topics(timeout=10).topics

    errors: list = []
    for codec in ("none", "gzip", "snappy", "lz4", "zstd"):
        p = Producer({"bootstrap.servers": bootstrap, "compression.type": codec})
        for i in range(4):
            p.produce(TOPIC, key=f"{codec}-{i}".encode(), value=f"v-{codec}-{i}".encode(),
                      headers=[("codec", codec.encode())], on_delivery=_delivered(errors))
        assert p.flush(30) == 0
    assert not errors

    a = Member(bootstrap, "member-a")
    a.start()
    wait_for(lambda: a.assigned == {0, 1}, what="first member owns both partitions")
    b = Member(bootstrap, "member-b")
    b.start()
    wait_for(lambda: len(a.assigned) == 1 and len(b.assigned) == 1, timeout=60,
             what="rebalance on join")
    wait_for(lambda: len(a.records) + len(b.records) >= 20, what="all records")
    assert set(a.records + b.records) == {
        (f"{c}-{i}".encode(), f"v-{c}-{i}".encode(), (("codec", c.encode()),))
        for c in ("none", "gzip", "snappy", "lz4", "zstd") for i in range(4)}

    listed = admin.list_consumer_groups().result(10)
    assert GROUP in {g.group_id for g in listed.valid}
    desc = admin.describe_consumer_groups([GROUP])[GROUP].result(10)
    assert len(desc.members) == 2 and "STABLE" in str(desc.state)

    b.stop.set()
    b.join(30)
    wait_for(lambda: a.assigned == {0, 1}, timeout=60, what="rebalance on leave")
    a.stop.set()
    a.join(30)

    p = Producer({"bootstrap.servers": bootstrap})
    for i in range(4):
        p.produce(TOPIC, value=f"late-{i}".encode(), partition=i % 2)
    assert p.flush(30) == 0
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP,
                  "auto.offset.reset": "earliest"})
    c.subscribe([TOPIC])
    late: list = []
    wait_for(lambda: late.extend(m.value() for m in c.consume(10, 0.2) if m.error() is None)
             or len(late) >= 4, what="late records")
    assert sorted(late) == [f"late-{i}".encode() for i in range(4)], "resumed at the commit"
    committed = c.committed([TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)], timeout=10)
    assert all(tp.offset >= 0 for tp in committed)
    with pytest.raises(KafkaException) as err:  # a live member: the group stays
        admin.delete_consumer_groups([GROUP])[GROUP].result(10)
    assert err.value.args[0].code() == KafkaError.NON_EMPTY_GROUP
    c.close()
    admin.delete_consumer_groups([GROUP])[GROUP].result(10)
    assert GROUP not in {g.group_id for g in admin.list_consumer_groups().result(10).valid}
    with pytest.raises(KafkaException) as err:
        admin.delete_consumer_groups([GROUP])[GROUP].result(10)
    assert err.value.args[0].code() == KafkaError.GROUP_ID_NOT_FOUND

    admin.delete_topics([TOPIC])[TOPIC].result(30)
    wait_for(lambda: TOPIC not in admin.list_topics(timeout=10).topics, what="topic deleted")
