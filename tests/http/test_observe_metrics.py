"""Metrics for people (issue 17): per-door message counters with a capped topic label,
OpenTelemetry-style names beside the Prometheus ones, timers and transactions pending,
lag capped, and the Grafana dashboard in docs/grafana/ queries only metrics /metrics has."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import trio
from ferrymq.core.broker import Broker
from ferrymq.core.message import Message
from ferrymq.gateways import http as http_door
from ferrymq.gateways import kafka as kafka_door
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.server import DoorContext, apply_metrics_options
from http_doors import broker_config
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "ferrymq.json"
_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def samples(text: str) -> dict[str, float]:
    """``name{labels}`` -> value of a Prometheus text body."""
    out = {}
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def families(text: str) -> set[str]:
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def kafka_roundtrip(bootstrap: str) -> int:
    p = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(3):
        p.send("kt", f"k{i}".encode(), partition=0)
    p.flush()
    p.close()
    c = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                      enable_auto_commit=False)
    c.assign([TopicPartition("kt", 0)])
    c.seek_to_beginning()
    got = 0
    for _ in range(100):
        got += sum(len(b) for b in c.poll(timeout_ms=200).values())
        if got >= 3:
            break
    c.close()
    return got


async def test_door_counters_otel_names_caps_and_the_dashboard(tmp_path: Path) -> None:
    async with Broker.open(broker_config(tmp_path / "data")) as broker, \
            trio.open_nursery() as nursery:
        apply_metrics_options(broker, {"max_topic_labels": 2, "max_lag_series": 1})
        http_port = await nursery.start(http_door.serve, DoorContext(
            broker, "127.0.0.1", 0, {}, ServerConfig()))
        kafka_port = await nursery.start(kafka_door.serve, DoorContext(
            broker, "127.0.0.1", 0, {}, ServerConfig()))
        await broker.create_topic("kt", 1)
        await broker.create_topic("lagged", 2)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}") as client:
            for topic in ("a", "b", "c", "c"):  # the third topic is past the cap of 2
                r = await client.post(f"/v1/topics/{topic}/messages", json={"body": "x"})
                assert r.status_code == 201
            await client.post("/v1/topics/a/messages", json={"body": "later",
                                                              "delay_ms": 600_000})
            r = await client.get("/v1/topics/a/messages", params={"group": "g", "max": 4})
            assert len(r.json()["messages"]) == 1
            assert (await client.get("/v1/topics/nope/messages",
                                     params={"group": "g"})).status_code == 404
            got = await trio.to_thread.run_sync(kafka_roundtrip, f"127.0.0.1:{kafka_port}")
            assert got == 3
            for q in (0, 1):
                await broker.put(Message("lagged", b"m", queue_id=q))
                broker.commit_offset("lg", "lagged", q, 0)
            await broker.prepare(Message("a", b"half"), "pg")
            text = (await client.get("/metrics")).text
        nursery.cancel_scope.cancel()

    s = samples(text)
    assert s['ferrymq_door_messages_in_total{protocol="http",topic="a"}'] == 2
    assert s['ferrymq_door_messages_in_total{protocol="http",topic="b"}'] == 1
    assert s['ferrymq_door_messages_in_total{protocol="http",topic="_other"}'] == 2, \
        "topics past max_topic_labels are summed under _other"
    assert s['ferrymq_door_messages_out_total{protocol="http",topic="a"}'] == 1
    assert s['ferrymq_door_messages_in_total{protocol="kafka",topic="kt"}'] == 3
    assert s['ferrymq_door_messages_out_total{protocol="kafka",topic="kt"}'] >= 3
    # The same counts under OpenTelemetry-style names and attribute names.
    assert s['messaging_client_sent_messages_total'
             '{messaging_system="http",messaging_destination_name="a"}'] == 2
    assert s['messaging_client_consumed_messages_total'
             '{messaging_system="kafka",messaging_destination_name="kt"}'] >= 3
    assert any(k.startswith("messaging_client_operation_duration_seconds_bucket{"
                            'messaging_system="http"') for k in s)
    assert s["ferrymq_timers_pending"] == 1
    assert s["ferrymq_transactions_half"] == 1
    # Lag: one series allowed, the group's two queues summed under _other.
    assert s['ferrymq_group_lag_messages{group="lg",topic="lagged",queue="_other"}'] == 2
    assert 'messaging_consumer_lag_messages{messaging_consumer_group_name="lg",' \
           'messaging_destination_name="lagged",messaging_destination_partition_id="_other"}' in s

    # Every metric the dashboard queries is on /metrics.
    have = families(text)
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(dash["panels"]) >= 10 and exprs
    queried = {n for e in exprs for n in re.findall(r"\b(ferrymq_[a-z0-9_]+|messaging_[a-z0-9_]+)", e)}
    missing = {n for n in queried
               if n not in have and re.sub(r"_(bucket|sum|count)$", "", n) not in have}
    assert not missing, f"the dashboard queries metrics /metrics does not have: {missing}"
    titles = " ".join(p["title"].lower() for p in dash["panels"])
    for needed in ("in per door", "out per door", "lag per group", "connections per door",
                   "flush", "timers pending", "transactions pending", "errors"):
        assert needed in titles, needed
