"""Property areas past RocketMQ's 32,767 bytes (an MQTT topic name may be 65,535 bytes):
stored in the long form, read back whole, recovered, indexed, and inside batches."""

from __future__ import annotations

import os

import pytest
from ferrymq.core.errors import InvalidMessage
from ferrymq.core.message import Message
from ferrymq.core.store.store import MessageStore, StoreConfig
from ferrymq.protocols import record as rec

LONG_TOPIC = "dev1/" + "x" * (65_535 - 5)  # the longest MQTT topic name (1.5.4)


@pytest.fixture
def store(tmp_path):
    s = MessageStore(StoreConfig(directory=str(tmp_path / "s"), segment_size=1 << 20,
                                 cq_entries_per_file=64, index_slots=64, index_entries=256))
    s.open()
    yield s
    s.close()


def reopen_from_scratch(s: MessageStore) -> MessageStore:
    """Close, forget the checkpoint (every record is re-dispatched), open again."""
    cfg = s.config
    s.close()
    os.unlink(os.path.join(cfg.directory, "checkpoint"))
    s2 = MessageStore(cfg)
    s2.open()
    return s2


def test_a_65535_byte_topic_property_is_stored_and_read_back_whole(store) -> None:
    props = {"MQTT_TOPIC": LONG_TOPIC, "MQTT_QOS": "1", "KEYS": "device-1"}
    r = store.append_message("dev1", 0, b"21.5", props)
    (sr,) = store.get("dev1", 0, 0, 10, 1 << 20).records
    assert sr.sys_flag & rec.FORMAT_LONG_PROPERTIES
    assert sr.is_batch, "not a record RocketMQ clients can read as stored"
    (m,) = list(sr.messages())
    assert (m.body, dict(m.properties)) == (b"21.5", props)
    assert not m.sys_flag & rec.FORMAT_MASK, "the storage form does not leak to consumers"
    assert [x.body for x in store.lookup_key("device-1")] == [b"21.5"]
    assert store.message_at(r.physical_offset).properties["MQTT_TOPIC"] == LONG_TOPIC


def test_long_records_are_recovered_and_indexed_again(store) -> None:
    store.append_message("dev1", 0, b"before", {"MQTT_TOPIC": "dev1/short"})
    store.append_message("dev1", 0, b"long", {"MQTT_TOPIC": LONG_TOPIC, "KEYS": "k-long"})
    store.append_message("dev1", 0, b"after", {"MQTT_TOPIC": "dev1/short"})
    s = reopen_from_scratch(store)
    try:
        msgs = list(s.get("dev1", 0, 0, 10, 1 << 20).messages())
        assert [m.body for m in msgs] == [b"before", b"long", b"after"]
        assert msgs[1].properties["MQTT_TOPIC"] == LONG_TOPIC
        assert [m.body for m in s.lookup_key("k-long")] == [b"long"]
    finally:
        s.close()


def test_a_batch_with_a_long_member_is_one_record_of_long_members(store) -> None:
    batch = [Message("dev1", b"m%d" % i, {"MQTT_TOPIC": LONG_TOPIC if i == 1 else "dev1/a"})
             for i in range(3)]
    r = store.append_batch("dev1", 0, batch)
    assert (r.queue_offset, r.count) == (0, 3)
    (sr,) = store.get("dev1", 0, 0, 10, 1 << 20).records
    assert sr.sys_flag & rec.FORMAT_MASK == rec.FORMAT_NATIVE_BATCH | rec.FORMAT_LONG_PROPERTIES
    got = [(m.queue_offset, m.body, m.properties["MQTT_TOPIC"]) for m in sr.messages()]
    assert got == [(0, b"m0", "dev1/a"), (1, b"m1", LONG_TOPIC), (2, b"m2", "dev1/a")]
    assert [m.body for m in sr.messages(2)] == [b"m2"]
    s = reopen_from_scratch(store)
    try:
        assert s.queue_bounds("dev1", 0) == (0, 3)
        assert [m.body for m in s.get("dev1", 0, 1, 10, 1 << 20).messages(1)] == [b"m1", b"m2"]
    finally:
        s.close()


def test_a_short_batch_stays_in_rocketmqs_encoding(store) -> None:
    store.append_batch("t", 0, [Message("t", b"a", {"K": "v"}), Message("t", b"b", {"K": "w"})])
    (sr,) = store.get("t", 0, 0, 10, 1 << 20).records
    assert sr.sys_flag & rec.FORMAT_MASK == rec.FORMAT_NATIVE_BATCH


def test_property_areas_past_the_long_limit_are_refused(store) -> None:
    with pytest.raises(InvalidMessage):
        store.append_message("t", 0, b"x", {"P": "p" * rec.MAX_LONG_PROPERTIES_BYTES})
    with pytest.raises(InvalidMessage):
        store.append_batch("t", 0, [Message("t", b"x", {"P": "p" * rec.MAX_LONG_PROPERTIES_BYTES}),
                                    Message("t", b"y")])
    assert store.queue_bounds("t", 0) == (0, 0)
