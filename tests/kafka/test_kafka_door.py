"""The Kafka door over real sockets with raw frames: old versions, bad input, idempotence, SASL."""

from __future__ import annotations

import contextlib
import struct

import pytest
from ferrymq.protocols.kafka import records as kr
from ferrymq.protocols.kafka.connection import parse_response, request_bytes
from kafka_wire import Client, Req, create, fetch, produce

PRODUCE, FETCH, LIST_OFFSETS, METADATA, API_VERSIONS, INIT_PRODUCER_ID = 0, 1, 2, 3, 18, 22
SASL_HANDSHAKE, SASL_AUTHENTICATE = 17, 36


@pytest.fixture
def door(start_broker):
    return start_broker("kafka")


@pytest.fixture
def client(door):
    c = Client(door.address("kafka"))
    yield c
    c.close()


def test_api_versions_lists_kafka_3_8s_ranges_so_clients_infer_3_8(client) -> None:
    """Finding: the ranges made clients infer Kafka 2.4. Now every API offered has the
    range Apache Kafka 3.8's brokers advertise (kafka-python's recorded table of a real
    3.8 broker), and kafka-python infers 3.8."""
    from kafka.protocol.broker_version_data import (
        BROKER_API_VERSIONS,
        infer_broker_version_from_api_versions,
    )

    resp = client.call(API_VERSIONS, 3, Req(API_VERSIONS)(client_software_name="t",
                                                          client_software_version="1"))
    got = {k.api_key: (k.min_version, k.max_version) for k in resp.api_keys}
    assert infer_broker_version_from_api_versions(got) == (3, 8)
    real = BROKER_API_VERSIONS[(3, 8)]
    kraft_only = {75}  # DescribeTopicPartitions: 3.8's KRaft brokers only (not in that table)
    assert {k: v for k, v in got.items() if k not in kraft_only} == \
        {k: real[k] for k in got if k not in kraft_only}
    assert got[75] == (0, 0)
    for txn_api in (22, 24, 25, 26, 28):  # InitProducerId, the transaction APIs
        assert txn_api in got


def test_unsupported_api_versions_version_is_answered_in_v0_with_error_35(client) -> None:
    client.send_raw(struct.pack(">ihhih", 10, API_VERSIONS, 9, 77, -1))
    frame = client.read_frame()
    corr, resp = parse_response(API_VERSIONS, 0, frame)
    assert corr == 77 and resp.error_code == 35
    assert any(k.api_key == API_VERSIONS and k.max_version == 3 for k in resp.api_keys)


def test_unknown_api_key_closes_only_that_connection(door, client) -> None:
    client.send_raw(struct.pack(">ihhih", 10, 4242, 0, 1, -1))
    assert client.closed_by_peer()
    other = Client(door.address("kafka"))
    assert other.call(API_VERSIONS, 0, Req(API_VERSIONS)()).error_code == 0
    other.close()


def test_frame_announcing_2_gib_is_closed_without_reading_it(door, client) -> None:
    client.send_raw(struct.pack(">i", 0x7FFFFFFF) + b"\x00\x03\x00\x01")
    assert client.closed_by_peer()
    other = Client(door.address("kafka"))
    assert other.call(API_VERSIONS, 0, Req(API_VERSIONS)()).error_code == 0
    other.close()


def test_malformed_request_body_closes_the_connection(client) -> None:
    payload = struct.pack(">hhih", METADATA, 1, 5, -1) + struct.pack(">i", 3)  # 3 topics, none
    client.send_raw(struct.pack(">i", len(payload)) + payload)
    assert client.closed_by_peer()


def test_disconnect_mid_request_leaves_the_broker_serving(door) -> None:
    c = Client(door.address("kafka"))
    frame = request_bytes(METADATA, 1, 1, Req(METADATA)(topics=None))
    c.send_raw(frame[:7])
    c.close()
    c = Client(door.address("kafka"))
    c.send_raw(struct.pack(">i", 1 << 20) + b"\x00" * 1000)  # a big frame, cut short
    c.close()
    other = Client(door.address("kafka"))
    assert other.call(METADATA, 1, Req(METADATA)(topics=None)).brokers
    other.close()


def test_bad_crc_is_corrupt_message(client) -> None:
    create(client, "crc-topic")
    batch = bytearray(kr.encode_batch(0, [(1000, b"k", b"v", [])]))
    batch[-1] ^= 0x55
    assert produce(client, "crc-topic", bytes(batch)).error_code == 2  # CORRUPT_MESSAGE
    assert produce(client, "crc-topic", b"\x00" * 70).error_code == 2


def test_produce_v2_then_fetch_every_format(client) -> None:
    create(client, "fmt-topic")
    rows = [(1000 + i, f"k{i}".encode(), f"v{i}".encode(), [("h", b"x")]) for i in range(3)]
    batch = kr.encode_batch(0, rows, compression=kr.GZIP)
    first = produce(client, "fmt-topic", batch)
    assert (first.error_code, first.base_offset) == (0, 0)
    # A v0/v1 message set in an old Produce version is up-converted to v2.
    legacy = kr.encode_message(0, 1, 2000, b"old", b"v1msg") + kr.encode_message(1, 0, -1, None,
                                                                                 b"v0msg")
    second = produce(client, "fmt-topic", legacy, version=2)
    assert (second.error_code, second.base_offset) == (0, 3)
    p = fetch(client, "fmt-topic", 0)
    assert p.error_code == 0 and p.high_watermark == 5
    got = [r for s, e in kr.split_batches(p.records)
           for r in kr.decode_batch(bytes(p.records[s:e])).records]
    assert [r.value for r in got] == [b"v0", b"v1", b"v2", b"v1msg", b"v0msg"]
    assert bytes(p.records[:len(batch)])[12:] == batch[12:], "stored batch returned verbatim"
    # Fetch v0-v3 down-convert to message sets of magic 0 and 1.
    for version, magic in ((0, 0), (2, 1), (3, 1)):
        p = fetch(client, "fmt-topic", 1, version=version)
        msgs = kr.decode_message_set(bytes(p.records))
        assert [m.value for m in msgs] == [b"v1", b"v2", b"v1msg", b"v0msg"]
        assert {m.magic for m in msgs} == {magic}


def test_fetch_out_of_range_and_long_poll(client, door) -> None:
    create(client, "poll-topic")
    assert fetch(client, "poll-topic", 99).error_code == 1  # OFFSET_OUT_OF_RANGE
    import threading
    import time

    def later() -> None:
        time.sleep(0.3)  # the subject: the message comes after the fetch started waiting
        c2 = Client(door.address("kafka"))
        produce(c2, "poll-topic", kr.encode_batch(0, [(1, None, b"late", [])]))
        c2.close()
    t = threading.Thread(target=later)
    t.start()
    t0 = time.monotonic()
    p = fetch(client, "poll-topic", 0, max_wait=5000)
    t.join()
    assert p.records and time.monotonic() - t0 < 4, "the fetch returned when data arrived"


def test_list_offsets_earliest_latest_and_by_time(client) -> None:
    create(client, "lo-topic")
    produce(client, "lo-topic", kr.encode_batch(0, [(1, None, b"a", []), (2, None, b"b", [])]))
    R = Req(LIST_OFFSETS)

    def lo(ts: int, version: int = 5):
        return client.call(LIST_OFFSETS, version, R(replica_id=-1, topics=(R.ListOffsetsTopic(
            name="lo-topic", partitions=(R.ListOffsetsPartition(partition_index=0,
                                                                timestamp=ts),)),))
                           ).topics[0].partitions[0]
    assert lo(-2).offset == 0 and lo(-1).offset == 2
    assert lo(0).offset == 0, "by store time: everything is newer than 0"
    assert lo(1 << 50).offset == -1
    assert lo(-1, version=0).old_style_offsets == (2,)


def test_idempotent_duplicates_get_their_original_offset_and_gaps_are_rejected(client) -> None:
    create(client, "idem-topic")
    init = client.call(INIT_PRODUCER_ID, 2, Req(INIT_PRODUCER_ID)(transactional_id=None,
                                                                   transaction_timeout_ms=60000))
    pid, epoch = init.producer_id, init.producer_epoch
    assert init.error_code == 0 and pid >= 0

    def batch(seq: int, n: int = 2) -> bytes:
        return kr.encode_batch(0, [(1, None, f"s{seq + i}".encode(), []) for i in range(n)],
                               producer_id=pid, producer_epoch=epoch, base_sequence=seq)
    assert produce(client, "idem-topic", batch(0)).base_offset == 0
    assert produce(client, "idem-topic", batch(2)).base_offset == 2
    dup = produce(client, "idem-topic", batch(0))
    assert (dup.error_code, dup.base_offset) == (0, 0), "a retry gets its original offset"
    assert produce(client, "idem-topic", batch(9)).error_code == 45  # OUT_OF_ORDER_SEQUENCE
    assert fetch(client, "idem-topic", 0).high_watermark == 4, "nothing stored twice"


def test_acks_zero_gets_no_response_but_is_stored(client) -> None:
    create(client, "acks0-topic")
    produce(client, "acks0-topic", kr.encode_batch(0, [(1, None, b"fire", [])]), acks=0)
    p = fetch(client, "acks0-topic", 0, max_wait=2000)
    assert p.high_watermark == 1


def test_metadata_v0_lists_topics_and_this_broker(client, door) -> None:
    create(client, "meta-topic", partitions=3)
    resp = client.call(METADATA, 0, Req(METADATA)(topics=()))
    assert resp.brokers[0].port == door.port("kafka")
    t = {t.name: t for t in resp.topics}["meta-topic"]
    assert [p.partition_index for p in t.partitions] == [0, 1, 2]


def test_sasl_plain(tmp_path, start_broker) -> None:
    conf = tmp_path / "sasl.toml"
    conf.write_text('[kafka]\nsasl_plain_users = { alice = "secret" }\n')
    b = start_broker("kafka", extra_args=("--config", str(conf)))
    with contextlib.nullcontext():
        c = Client(b.address("kafka"))
        assert c.call(SASL_HANDSHAKE, 1, Req(SASL_HANDSHAKE)(mechanism="PLAIN")).error_code == 0
        bad = c.call(SASL_AUTHENTICATE, 1, Req(SASL_AUTHENTICATE)(auth_bytes=b"\0alice\0nope"))
        assert bad.error_code == 58
        assert c.closed_by_peer(), "Kafka closes a connection whose authentication failed"
        c.close()
        c = Client(b.address("kafka"))
        assert c.call(SASL_HANDSHAKE, 1, Req(SASL_HANDSHAKE)(mechanism="PLAIN")).error_code == 0
        ok = c.call(SASL_AUTHENTICATE, 1, Req(SASL_AUTHENTICATE)(auth_bytes=b"\0alice\0secret"))
        assert ok.error_code == 0
        assert c.call(METADATA, 1, Req(METADATA)(topics=None)).brokers
        c.close()
        anon = Client(b.address("kafka"))
        anon.send_raw(request_bytes(METADATA, 1, 1, Req(METADATA)(topics=None)))
        assert anon.closed_by_peer(), "no requests before authentication"
        anon.close()


@pytest.mark.parametrize("api", [21, 23, 24, 25, 26, 28, 34, 35, 43, 45, 46, 47, 60, 61, 65, 66, 75])
def test_garbage_in_a_new_api_closes_only_that_connection(door, api: int) -> None:
    """Every API added for transactions and the cluster answers a body that does not decode
    as Kafka does: that connection is closed, every other one is served."""
    c = Client(door.address("kafka"))
    payload = struct.pack(">hhih", api, 0, 9, -1) + b"\xff\xff\xff\x7f\x01"
    c.send_raw(struct.pack(">i", len(payload)) + payload)
    assert c.closed_by_peer()
    c.close()
    other = Client(door.address("kafka"))
    assert other.call(API_VERSIONS, 0, Req(API_VERSIONS)()).error_code == 0
    other.close()
