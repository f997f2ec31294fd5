"""A trace begun by an HTTP producer continues at a Kafka consumer (issue 17).

The broker, its HTTP and Kafka doors run in this process with the OpenTelemetry tracer
(gateways/tracing.py) exporting to an in-memory exporter; the producer is a real HTTP
client (httpx) sending a W3C ``traceparent`` header, the consumer the real kafka-python
client in a worker thread. The consumer sees the producer's trace id in the record's
``traceparent`` header; the broker's spans are ``receive`` (child of the producer's
span), ``store`` (child of receive, with the CommitLog offset) and ``deliver`` (linked
to the producer's context), with OpenTelemetry's messaging attributes."""

from __future__ import annotations

from pathlib import Path

import httpx
import trio
from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.gateways import http as http_door
from ferrymq.gateways import kafka as kafka_door
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.server import DoorContext
from ferrymq.gateways.tracing import tracer_from_config
from kafka import KafkaConsumer, TopicPartition
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PRODUCER_SPAN = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PRODUCER_SPAN}-01"


def consume_one(bootstrap: str, topic: str) -> list:
    c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      enable_auto_commit=False, request_timeout_ms=10_000)
    try:
        c.assign([TopicPartition(topic, 0)])
        c.seek_to_beginning()
        for _ in range(100):
            for batch in c.poll(timeout_ms=200).values():
                if batch:
                    return batch
        return []
    finally:
        c.close()


async def test_http_produce_to_kafka_consume_is_one_trace(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    tracer = tracer_from_config({}, exporter=exporter)
    assert tracer is not None
    config = BrokerConfig(data_dir=str(tmp_path / "data"), segment_size=16 << 20,
                          cq_entries_per_file=1000, index_slots=1000, index_entries=4000)
    async with Broker.open(config) as broker, trio.open_nursery() as nursery:
        broker.set_tracer(tracer)
        await broker.create_topic("orders", 1)
        http_port = await nursery.start(http_door.serve, DoorContext(
            broker, "127.0.0.1", 0, {}, ServerConfig()))
        kafka_port = await nursery.start(kafka_door.serve, DoorContext(
            broker, "127.0.0.1", 0, {}, ServerConfig()))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
            r = await client.post("/v1/topics/orders/messages", json={"body": "paid"},
                                  headers={"traceparent": TRACEPARENT, "tracestate": "shop=1"})
            assert r.status_code == 201
            [msg_id] = r.json()["ids"]
        records = await trio.to_thread.run_sync(consume_one, f"127.0.0.1:{kafka_port}",
                                                "orders")
        nursery.cancel_scope.cancel()
    tracer.shutdown()

    [record] = records
    headers = dict(record.headers)
    assert record.value == b"paid"
    assert headers["traceparent"] == TRACEPARENT.encode(), "the consumer continues the trace"
    assert headers["tracestate"] == b"shop=1"

    spans = {s.name: s for s in exporter.get_finished_spans()}
    receive, store, deliver = spans["receive orders"], spans["store orders"], \
        spans["deliver orders"]
    trace_id = int(TRACE_ID, 16)
    # receive: a child of the producer's span, in its trace
    assert receive.context.trace_id == trace_id
    assert receive.parent is not None and receive.parent.span_id == int(PRODUCER_SPAN, 16)
    assert receive.parent.is_remote and receive.kind is SpanKind.SERVER
    assert receive.attributes["messaging.system"] == "http"
    assert receive.attributes["messaging.destination.name"] == "orders"
    assert receive.attributes["messaging.destination.partition.id"] == "0"
    assert receive.attributes["messaging.operation.type"] == "send"
    assert receive.attributes["messaging.message.id"] == msg_id
    # store: a child of receive, with where the record landed
    assert store.context.trace_id == trace_id
    assert store.parent.span_id == receive.context.span_id
    assert store.attributes["ferrymq.commitlog.offset"] >= 0
    assert store.attributes["ferrymq.queue.offset"] == 0
    assert receive.start_time <= store.start_time <= store.end_time <= receive.end_time
    # deliver: the Kafka fetch, linked to the producer's context
    assert deliver.attributes["messaging.system"] == "kafka"
    assert deliver.attributes["messaging.operation.type"] == "receive"
    assert deliver.attributes["messaging.kafka.offset"] == 0
    assert deliver.attributes["messaging.destination.partition.id"] == "0"
    [link] = deliver.links
    assert (link.context.trace_id, link.context.span_id) == (trace_id, int(PRODUCER_SPAN, 16))
    assert deliver.parent is None, "the Kafka consumer's request carried no context of its own"


async def test_untraced_messages_cost_no_spans(tmp_path: Path) -> None:
    """With sample_ratio 0 (the default), a message without a traceparent makes no span:
    only traced messages are exported."""
    exporter = InMemorySpanExporter()
    tracer = tracer_from_config({"sample_ratio": 0.0}, exporter=exporter)
    config = BrokerConfig(data_dir=str(tmp_path / "data"), segment_size=16 << 20,
                          cq_entries_per_file=1000, index_slots=1000, index_entries=4000)
    from ferrymq.core.message import Message
    async with Broker.open(config) as broker:
        broker.set_tracer(tracer)
        await broker.put(Message("plain", b"x"))
        await broker.put([Message("plain", b"y"), Message("plain", b"z",
                                                          {"traceparent": TRACEPARENT})])
    tracer.shutdown()
    names = [s.name for s in exporter.get_finished_spans()]
    assert names == ["store plain", "receive plain"], names


def produce_traced(bootstrap: str) -> None:
    from kafka import KafkaProducer
    p = KafkaProducer(bootstrap_servers=bootstrap)
    p.send("events", b"from kafka", partition=0,
           headers=[("traceparent", TRACEPARENT.encode())])
    p.flush()
    p.close()


async def test_kafka_produce_to_http_pop_links_the_consumers_own_span(tmp_path: Path) -> None:
    """The other way round: a Kafka producer's header (a Kafka batch stored verbatim, its
    records searched for the context), and an HTTP consumer that sends its own context:
    the deliver span is the consumer's child, linked to the producer."""
    exporter = InMemorySpanExporter()
    tracer = tracer_from_config({}, exporter=exporter)
    consumer_span = "b7ad6b7169203331"
    config = BrokerConfig(data_dir=str(tmp_path / "data"), segment_size=16 << 20,
                          cq_entries_per_file=1000, index_slots=1000, index_entries=4000)
    async with Broker.open(config) as broker, trio.open_nursery() as nursery:
        broker.set_tracer(tracer)
        await broker.create_topic("events", 1)
        http_port = await nursery.start(http_door.serve, DoorContext(
            broker, "127.0.0.1", 0, {}, ServerConfig()))
        kafka_port = await nursery.start(kafka_door.serve, DoorContext(
            broker, "127.0.0.1", 0, {}, ServerConfig()))
        await trio.to_thread.run_sync(produce_traced, f"127.0.0.1:{kafka_port}")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
            r = await client.get("/v1/topics/events/messages", params={"group": "web"},
                                 headers={"traceparent": f"00-{'1' * 32}-{consumer_span}-01"})
        nursery.cancel_scope.cancel()
    tracer.shutdown()
    [m] = r.json()["messages"]
    assert m["body"] == "from kafka" and m["properties"]["traceparent"] == TRACEPARENT
    spans = {s.name: s for s in exporter.get_finished_spans()}
    receive, deliver = spans["receive events"], spans["deliver events"]
    assert receive.attributes["messaging.system"] == "kafka"
    assert receive.parent.span_id == int(PRODUCER_SPAN, 16)
    assert spans["store events"].parent.span_id == receive.context.span_id
    assert deliver.attributes["messaging.system"] == "http"
    assert deliver.attributes["messaging.consumer.group.name"] == "web"
    assert deliver.parent.span_id == int(consumer_span, 16)
    assert deliver.context.trace_id == int("1" * 32, 16), "the consumer's trace"
    [link] = deliver.links
    assert link.context.trace_id == int(TRACE_ID, 16)
