"""A RocketMQ pull of a Kafka-produced batch record: unpacked into one RocketMQ record per
member, each with its own queue offset and no FerryMQ format bits (the decoder is the one the
Kafka door registers; a stand-in here)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from ferrymq.core import message as core_message
from ferrymq.core.broker import BrokerConfig
from ferrymq.core.message import ConsumedMessage, GetResult, GetStatus, StoredRecord
from ferrymq.core.metrics import MetricsRegistry
from ferrymq.gateways.remoting.client_table import ClientTable
from ferrymq.gateways.remoting.processor import Processor
from ferrymq.protocols import record as rec
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import headers as H
from ferrymq.protocols.remoting.messages import decode_messages

HOST = rec.host_bytes("127.0.0.1", 10911)


def fake_kafka_decoder(sr: StoredRecord, r: rec.Record) -> Iterator[ConsumedMessage]:
    for i, value in enumerate(r.body.split(b"|")):
        yield ConsumedMessage(r.topic, r.queue_id, r.queue_offset + i, value,
                              {"KEYS": f"k{i}"}, 5, r.store_timestamp, r.physical_offset,
                              r.store_host, r.born_host, 0, r.sys_flag, 0, i)


class FakeBroker:
    config = BrokerConfig()
    metrics = MetricsRegistry()
    auth_enabled = False  # the remoting door asks before checking signatures
    tracer = None  # Broker.tracer: tracing off

    def __init__(self, record: StoredRecord) -> None:
        self.record = record

    def get(self, group, topic, queue_id, offset, max_messages, max_bytes, filter, *, principal):  # type: ignore[no-untyped-def]
        return GetResult(GetStatus.FOUND, (self.record,), 13, 0, 13)


@pytest.fixture
def kafka_decoder() -> Iterator[None]:
    previous = core_message._BATCH_DECODERS.get(rec.FORMAT_KAFKA_BATCH)
    core_message.register_batch_decoder(rec.FORMAT_KAFKA_BATCH, fake_kafka_decoder)
    yield
    if previous is None:
        core_message._BATCH_DECODERS.pop(rec.FORMAT_KAFKA_BATCH, None)
    else:
        core_message.register_batch_decoder(rec.FORMAT_KAFKA_BATCH, previous)


async def test_kafka_batch_is_unpacked_on_pull(kafka_decoder: None) -> None:
    data = rec.encode(queue_id=0, flag=0, queue_offset=10, physical_offset=777,
                      sys_flag=rec.FORMAT_KAFKA_BATCH, born_timestamp=5, born_host=HOST,
                      store_timestamp=6, store_host=HOST, reconsume_times=0,
                      prepared_transaction_offset=0, body=b"a|b|c", topic=b"K",
                      properties=b"")
    sr = StoredRecord("K", 0, 10, 3, 777, rec.FORMAT_KAFKA_BATCH, 6, data)
    p = Processor(FakeBroker(sr), broker_addr="127.0.0.1:10911",  # type: ignore[arg-type]
                  client_table=ClientTable())
    cmd = request(RequestCode.PULL_MESSAGE, 1, H.PullMessageRequestHeader(
        "g", "K", 0, 11, 32).to_ext())
    resp = await p.handle(None, cmd)  # type: ignore[arg-type]
    assert resp.code == ResponseCode.SUCCESS  # type: ignore[union-attr]
    msgs = decode_messages(resp.body)  # type: ignore[union-attr]
    assert [(m.body, m.queue_offset, m.keys) for m in msgs] == [(b"b", 11, ["k1"]),
                                                                (b"c", 12, ["k2"])]
    assert all(m.sys_flag & rec.FORMAT_MASK == 0 for m in msgs)
