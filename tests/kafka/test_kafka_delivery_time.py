"""Delivery time through the Kafka door (docs/kafka.md, "Delivery time"): a record with the
header ``ferrymq-delay-ms`` or ``ferrymq-deliver-at-ms`` becomes a timer; the rest of its
batch is stored at once; a batch without them stays verbatim; bad values are INVALID_RECORD.

The broker and its Kafka door run in-process; the producer and consumer are kafka-python.
"""

from __future__ import annotations

import re
import time

import pytest
import trio
from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.kafka import serve
from ferrymq.gateways.kafka.handlers import DoorOptions, kafka_batch_view
from ferrymq.gateways.kafka.mapping import DELIVERY_MARK
from ferrymq.gateways.server import DoorContext
from ferrymq.protocols import record as rec
from ferrymq.protocols.kafka import records as kr
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

# kafka-python compresses a batch only when that makes it smaller: a repetitive value.
ZIPPABLE = b"zipped " * 200


async def _with_door(tmp_path, body, options=None) -> None:  # type: ignore[no-untyped-def]
    async with Broker.open(BrokerConfig(data_dir=str(tmp_path / "data"))) as broker, \
            trio.open_nursery() as nursery:
        port = await nursery.start(serve, DoorContext(broker, "127.0.0.1", 0, options or {},
                                                      ServerConfig()))
        await body(broker, f"127.0.0.1:{port}")
        nursery.cancel_scope.cancel()


def _produce(bootstrap: str, topic: str, records: list[tuple[bytes, list]], **kw) -> list:  # type: ignore[no-untyped-def]
    """Send the records (one batch: linger) and return each one's offset or exception."""
    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=100, retries=0, **kw)
    futures = [p.send(topic, value=v, headers=h, partition=0, key=b"k") for v, h in records]
    p.flush()
    out = []
    for f in futures:
        try:
            out.append(f.get(timeout=10).offset)
        except KafkaError as exc:
            out.append(exc)
    p.close()
    return out


def _read(bootstrap: str, topic: str, wait_s: float) -> list:
    c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      enable_auto_commit=False)
    c.assign([TopicPartition(topic, 0)])
    c.seek_to_beginning()
    out: list = []
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        for batch in c.poll(timeout_ms=100).values():
            out.extend(batch)
    c.close()
    return out


async def test_a_timed_record_is_held_back_and_its_batch_mates_are_not(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        await broker.create_topic("kd", 1)
        sent_ms = int(time.time() * 1000)
        offsets = await trio.to_thread.run_sync(_produce, bootstrap, "kd", [
            (b"now-1", [("color", b"red")]),
            (b"later", [("ferrymq-delay-ms", b"1500"), ("color", b"blue")]),
            (b"now-2", [])])
        assert offsets[0] == 0 and offsets[2] == 2, "the batch's immediate records are stored"
        early = await trio.to_thread.run_sync(_read, bootstrap, "kd", 0.6)
        assert [r.value for r in early] == [b"now-1", b"now-2"]
        assert dict(early[0].headers)["color"] == b"red"
        late = await trio.to_thread.run_sync(_read, bootstrap, "kd", 2.0)
        assert [r.value for r in late] == [b"now-1", b"now-2", b"later"]
        later = late[2]
        headers = dict(later.headers)
        assert headers["color"] == b"blue" and later.key == b"k"
        assert int(headers["TIMER_OUT_MS"]) >= sent_ms + 1500
        assert "ferrymq-delay-ms" not in headers and "TIMER_DELAY_MS" not in headers
        (m,) = broker.get(None, "kd", 0, 2, 1).messages(2)
        assert m.store_timestamp >= int(headers["TIMER_OUT_MS"]), "never early"
    await _with_door(tmp_path, body)


async def test_compressed_batches_and_absolute_times_too(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        await broker.create_topic("kz", 1)
        at = int(time.time() * 1000) + 1200
        offsets = await trio.to_thread.run_sync(lambda: _produce(
            bootstrap, "kz", [(ZIPPABLE, [("ferrymq-deliver-at-ms", str(at).encode())])],
            compression_type="gzip"))
        assert offsets == [-1], "a timed record's offset is assigned at delivery"
        assert await trio.to_thread.run_sync(_read, bootstrap, "kz", 0.5) == []
        (r,) = await trio.to_thread.run_sync(_read, bootstrap, "kz", 2.0)
        assert r.value == ZIPPABLE and int(dict(r.headers)["TIMER_OUT_MS"]) == at
    await _with_door(tmp_path, body)


async def test_ordinary_batches_stay_verbatim_and_bad_times_are_invalid_records(tmp_path
                                                                                ) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        await broker.create_topic("kb", 1)
        plain = await trio.to_thread.run_sync(_produce, bootstrap, "kb", [
            (b"a", [("ferrymq-note", b"not a delivery header")]), (b"b", [])])
        assert plain == [0, 1]
        (stored,) = broker.get(None, "kb", 0, 0, 10).records
        assert stored.format == rec.FORMAT_KAFKA_BATCH, "no delivery header: stored verbatim"
        for headers in ([("ferrymq-delay-ms", b"-5")], [("ferrymq-delay-ms", b"soon")],
                        [("ferrymq-delay-ms", b"\xff")],
                        [("ferrymq-delay-ms", str(400 * 86_400_000).encode())],
                        [("ferrymq-delay-ms", b"5"), ("ferrymq-deliver-at-ms", b"5")],
                        [("ferrymq-delay-ms", b"5"), ("DELAY", b"3")],
                        [("ferrymq-delay-ms", b"5"), ("TRAN_MSG", b"true")]):
            (result,) = await trio.to_thread.run_sync(_produce, bootstrap, "kb",
                                                      [(b"bad", headers)])
            assert isinstance(result, KafkaError) and result.errno == 87, headers
        assert broker.queue_bounds("kb", 0) == (0, 2), "nothing of a refused batch is stored"
        assert broker.timer_stats().pending == 0
    await _with_door(tmp_path, body)


async def test_the_search_can_skip_compressed_batches_or_be_off(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        await broker.create_topic("ko", 1)
        header = [("ferrymq-delay-ms", b"60000")]
        zipped = await trio.to_thread.run_sync(lambda: _produce(
            bootstrap, "ko", [(ZIPPABLE, header)], compression_type="gzip"))
        plain = await trio.to_thread.run_sync(_produce, bootstrap, "ko", [(b"timed", header)])
        assert zipped == [0] and plain == [-1]
        (r,) = broker.get(None, "ko", 0, 0, 10).records
        assert r.format == rec.FORMAT_KAFKA_BATCH, "the compressed batch was not searched"
        assert kr.decode_batch(kafka_batch_view(r), verify=False).compression == kr.GZIP
        assert broker.timer_stats().pending == 1
    await _with_door(tmp_path, body, {"delivery_headers": "uncompressed"})

    async def off(broker: Broker, bootstrap: str) -> None:
        await broker.create_topic("kf", 1)
        assert await trio.to_thread.run_sync(_produce, bootstrap, "kf", [
            (b"inert", [("ferrymq-delay-ms", b"60000")])]) == [0]
    await _with_door(tmp_path / "off", off, {"delivery_headers": "off"})
    with pytest.raises(ValueError):
        DoorOptions.from_mapping({"delivery_headers": "sometimes"})


@pytest.mark.parametrize("codec", [kr.NO_COMPRESSION, kr.GZIP, kr.LZ4, kr.ZSTD, kr.SNAPPY])
def test_the_cheap_test_finds_the_header_names_in_any_codec(codec: int) -> None:
    plain = kr.encode_batch(0, [(1, b"k", b"v", [("x", b"y")])], compression=codec)
    timed = kr.encode_batch(0, [(1, None, b"v", [("ferrymq-delay-ms", b"10")])], compression=codec)
    at = kr.encode_batch(0, [(1, None, b"v", [("ferrymq-deliver-at-ms", b"10")])], compression=codec)
    assert not kr.batch_mentions(memoryview(plain), DELIVERY_MARK)
    assert kr.batch_mentions(memoryview(timed), DELIVERY_MARK)
    assert kr.batch_mentions(at, DELIVERY_MARK)
    assert not kr.batch_mentions(plain, re.compile(rb"ferrymq"))
