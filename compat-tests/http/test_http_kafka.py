"""HTTP and Kafka on one broker (docs/http.md, docs/kafka.md): what curl-style HTTP
produces, kafka-python consumes with key and headers; what kafka-python produces, the
HTTP door pops with its key and properties."""

from __future__ import annotations

import httpx
from kafka import KafkaConsumer, KafkaProducer, TopicPartition


def test_http_produce_kafka_consume_and_back(start_http_broker) -> None:
    b = start_http_broker("http", "kafka")
    bootstrap = b.address("kafka")
    with httpx.Client(base_url=f"http://{b.address('http')}", timeout=30) as c:
        c.post("/v1/topics", json={"name": "bridge", "queues": 1})
        r = c.post("/v1/topics/bridge/messages", json={
            "body": "from http", "key": "order-1", "properties": {"region": "eu"}})
        assert r.status_code == 201

        consumer = KafkaConsumer(bootstrap_servers=bootstrap, consumer_timeout_ms=10_000,
                                 auto_offset_reset="earliest", enable_auto_commit=False)
        try:
            tp = TopicPartition("bridge", 0)
            consumer.assign([tp])
            consumer.seek_to_beginning(tp)
            [record] = [next(consumer)]
        finally:
            consumer.close()
        assert record.value == b"from http"
        assert record.key == b"order-1"
        assert ("region", b"eu") in record.headers

        producer = KafkaProducer(bootstrap_servers=bootstrap)
        try:
            producer.send("bridge", value=b"from kafka", key=b"order-2",
                          headers=[("source", b"kafka-python")], partition=0).get(30)
        finally:
            producer.close()
        popped = c.get("/v1/topics/bridge/messages",
                       params={"group": "http-side", "max": 10, "wait": 5}).json()["messages"]
        assert [m["body"] for m in popped] == ["from http", "from kafka"]
        kafka_made = popped[1]
        assert kafka_made["keys"] == ["order-2"]
        assert kafka_made["properties"]["source"] == "kafka-python"
        r = c.post("/v1/acks", json={"receipts": [m["receipt"] for m in popped]})
        assert r.status_code == 204
