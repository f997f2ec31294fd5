"""The HTTP API against the broker it fronts: what goes in over HTTP is what the core
stores, and what the core stores comes out over HTTP (docs/http.md)."""

from __future__ import annotations

import base64
import json
import re
from datetime import UTC, datetime

import trio
from ferrymq.core.message import Message, now_ms
from ferrymq.core.timers import TIMER_TOPIC


def stored(door, topic: str, queue: int = 0, offset: int = 0):
    return list(door.broker.get(None, topic, queue, offset, 100).messages(offset))


# ---------------------------------------------------------------- producing

async def test_json_envelope_is_stored_as_a_core_message(door) -> None:
    await door.broker.create_topic("orders", 1)
    r = await door.client.post("/v1/topics/orders/messages", json={
        "body": "order 1", "key": "o-1", "tag": "created", "properties": {"region": "eu"}})
    assert r.status_code == 201
    doc = r.json()
    assert (doc["topic"], doc["queue"], doc["base_offset"], doc["count"]) == ("orders", 0, 0, 1)
    [m] = stored(door, "orders")
    assert m.body == b"order 1"
    assert m.keys == ["o-1"] and m.tags == "created"
    assert m.properties["region"] == "eu"
    assert doc["ids"] == [m.msg_id]


async def test_body_forms_text_json_and_base64(door) -> None:
    await door.broker.create_topic("t", 1)
    for env in ({"body": "héllo"}, {"body": {"a": [1, 2]}}, {"body_base64": "AAEC/w=="}):
        assert (await door.client.post("/v1/topics/t/messages", json=env)).status_code == 201
    text, js, raw = stored(door, "t")
    assert text.body == "héllo".encode()
    assert json.loads(js.body) == {"a": [1, 2]}
    assert js.properties["content-type"] == "application/json"
    assert raw.body == b"\x00\x01\x02\xff"
    r = await door.client.get("/v1/topics/t/queues/0/messages", params={"offset": 0})
    bodies = [m.get("body", m.get("body_base64")) for m in r.json()["messages"]]
    assert bodies == ["héllo", {"a": [1, 2]}, "AAEC/w=="], "each body comes back in its form"


async def test_batch_is_one_record_in_one_queue(door) -> None:
    await door.broker.create_topic("b", 4)
    r = await door.client.post("/v1/topics/b/messages", json={
        "queue": 2, "messages": [{"body": f"m{i}", "key": f"k{i}"} for i in range(5)]})
    assert r.status_code == 201
    doc = r.json()
    assert (doc["queue"], doc["base_offset"], doc["count"], len(doc["ids"])) == (2, 0, 5, 5)
    res = door.broker.get(None, "b", 2, 0, 100)
    assert len(res.records) == 1 and res.records[0].count == 5
    assert [m.body for m in res.messages()] == [f"m{i}".encode() for i in range(5)]


async def test_ndjson_batch(door) -> None:
    await door.broker.create_topic("n", 1)
    lines = "\n".join(json.dumps({"body": f"line {i}", "tag": "nd"}) for i in range(3)) + "\n"
    r = await door.client.post("/v1/topics/n/messages", content=lines,
                               headers={"content-type": "application/x-ndjson"})
    assert r.status_code == 201 and r.json()["count"] == 3
    assert [m.body for m in stored(door, "n")] == [b"line 0", b"line 1", b"line 2"]


async def test_raw_body_with_metadata_headers(door) -> None:
    await door.broker.create_topic("raw", 2)
    r = await door.client.post("/v1/topics/raw/messages", content=b"\x89PNG...",
                               headers={"content-type": "image/png", "ferrymq-key": "a,b",
                                        "ferrymq-tag": "img", "ferrymq-queue": "1",
                                        "ferrymq-property-camera": "front%20door"})
    assert r.status_code == 201 and r.json()["queue"] == 1
    [m] = stored(door, "raw", 1)
    assert m.body == b"\x89PNG..."
    assert m.keys == ["a", "b"] and m.tags == "img"
    assert m.properties["camera"] == "front door"
    assert m.properties["content-type"] == "image/png"


async def test_raw_query_stores_json_verbatim(door) -> None:
    await door.broker.create_topic("rj", 1)
    r = await door.client.post("/v1/topics/rj/messages?raw=true", content=b'{"not":"envelope"}',
                               headers={"content-type": "application/json"})
    assert r.status_code == 201
    assert stored(door, "rj")[0].body == b'{"not":"envelope"}'


async def test_delivery_time_is_stored_as_timer_properties(door) -> None:
    await door.broker.create_topic("d", 1)
    sent = now_ms()
    await door.client.post("/v1/topics/d/messages", json={"body": "a", "delay_ms": 5000})
    answered = now_ms()
    at = (now_ms() // 1000 + 86400) * 1000
    rfc3339 = datetime.fromtimestamp(at / 1000, UTC).isoformat().replace("+00:00", "Z")
    await door.client.post("/v1/topics/d/messages", json={"body": "b", "deliver_at": rfc3339})
    await door.client.post("/v1/topics/d/messages", content=b"c",
                           headers={"ferrymq-deliver-at": str(at)})
    # They are timers now (issue 6): nothing in the topic yet, three timer records
    # that name it and their delivery times.
    assert stored(door, "d") == []
    timer_q = door.broker.store.queues[(TIMER_TOPIC, 0)]
    a, b, c = (door.broker.store.message_at(timer_q.entry(i).physical_offset)
               for i in range(timer_q.first_entry, timer_q.next_entry))
    assert all(m.properties["REAL_TOPIC"] == "d" for m in (a, b, c))
    # 5 s after the door took the request: between the send and the answer.
    assert sent + 5000 <= int(a.properties["TIMER_OUT_MS"]) <= answered + 5000
    assert b.properties["TIMER_OUT_MS"] == c.properties["TIMER_OUT_MS"] == str(at)
    for bad in ({"body": "x", "delay_ms": -1}, {"body": "x", "delay_ms": 10**15},
                {"body": "x", "deliver_at": "tomorrow"},
                {"body": "x", "deliver_at": 1, "delay_ms": 1}):
        r = await door.client.post("/v1/topics/d/messages", json=bad)
        assert r.status_code == 400, bad
        assert r.json()["code"] == "invalid_body"


# ---------------------------------------------------------------- CloudEvents

async def test_cloudevent_binary_mode_becomes_properties(door) -> None:
    await door.broker.create_topic("ce", 1)
    r = await door.client.post("/v1/topics/ce/messages", content=b'{"temp": 21}', headers={
        "ce-specversion": "1.0", "ce-id": "e-1", "ce-source": "/sensors/7",
        "ce-type": "com.example.reading", "ce-subject": "room%201",
        "content-type": "application/json"})
    assert r.status_code == 201, r.text
    [m] = stored(door, "ce")
    assert m.properties["ce_id"] == "e-1"
    assert m.properties["ce_source"] == "/sensors/7"
    assert m.properties["ce_subject"] == "room 1"
    assert m.properties["content-type"] == "application/json"
    assert m.body == b'{"temp": 21}'


async def test_cloudevent_structured_and_batch_round_trip(door) -> None:
    await door.broker.create_topic("ce", 1)
    ev = {"specversion": "1.0", "id": "s-1", "source": "urn:x", "type": "t.created",
          "datacontenttype": "application/json", "data": {"n": 1}, "myext": "v"}
    r = await door.client.post("/v1/topics/ce/messages", content=json.dumps(ev),
                               headers={"content-type": "application/cloudevents+json"})
    assert r.status_code == 201
    batch = [{"specversion": "1.0", "id": f"b-{i}", "source": "urn:x", "type": "t",
              "data_base64": base64.b64encode(bytes([i, 255])).decode()} for i in range(2)]
    r = await door.client.post("/v1/topics/ce/messages", content=json.dumps(batch),
                               headers={"content-type": "application/cloudevents-batch+json"})
    assert r.status_code == 201 and r.json()["count"] == 2
    r = await door.client.get("/v1/topics/ce/messages",
                              params={"group": "g", "max": 10},
                              headers={"accept": "application/cloudevents+json"})
    assert r.headers["content-type"] == "application/cloudevents-batch+json"
    events = r.json()
    assert events[0]["id"] == "s-1" and events[0]["data"] == {"n": 1}
    assert events[0]["myext"] == "v" and events[0]["specversion"] == "1.0"
    assert events[0]["ferrymqreceipt"]
    assert [e["data_base64"] for e in events[1:]] == [b["data_base64"] for b in batch]


async def test_plain_message_comes_back_as_a_synthesised_cloudevent(door) -> None:
    await door.broker.put(Message.build("p", b"plain", keys="k", queue_id=0))
    r = await door.client.get("/v1/topics/p/messages", params={"group": "g"},
                              headers={"accept": "application/cloudevents-batch+json"})
    [ev] = r.json()
    assert ev["type"] == "ferrymq.message" and ev["source"] == "/topics/p"
    assert ev["data"] == "plain" and ev["subject"] == "k" and ev["specversion"] == "1.0"


async def test_invalid_cloudevents_are_refused(door) -> None:
    r = await door.client.post("/v1/topics/ce/messages", content=b"x",
                               headers={"ce-specversion": "1.0", "ce-id": "1"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_cloudevent"
    r = await door.client.post("/v1/topics/ce/messages", content=b'{"specversion":"0.3"}',
                               headers={"content-type": "application/cloudevents+json"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_cloudevent"


# ---------------------------------------------------------------- consuming

async def test_native_put_is_popped_over_http_and_acked(door) -> None:
    await door.broker.create_topic("x", 2)
    await door.broker.put(Message.build("x", b"from core", tags="T", keys="k1", queue_id=1))
    r = await door.client.get("/v1/topics/x/messages", params={"group": "g", "max": 5})
    [m] = r.json()["messages"]
    assert (m["body"], m["tag"], m["keys"], m["queue"]) == ("from core", "T", ["k1"], 1)
    assert m["reconsume_times"] == 0 and m["invisible_until"] > 0
    r = await door.client.delete(f"/v1/topics/x/messages/{m['receipt']}")
    assert r.status_code == 204
    r = await door.client.delete(f"/v1/topics/x/messages/{m['receipt']}")
    assert r.status_code == 410 and r.json()["code"] == "receipt_stale"
    assert door.broker.committed_offset("g", "x", 1) == 1


async def test_unacked_message_is_redelivered_and_late_ack_is_refused(door) -> None:
    await door.client.post("/v1/topics/r/messages", json={"body": "again"})
    first = (await door.client.get("/v1/topics/r/messages",
                                   params={"group": "g", "invisible": 0.3})).json()["messages"]
    again = (await door.client.get("/v1/topics/r/messages",
                                   params={"group": "g", "wait": 3})).json()["messages"]
    assert [m["body"] for m in again] == ["again"]
    assert again[0]["reconsume_times"] == 1
    r = await door.client.post("/v1/acks", json={"receipts": [first[0]["receipt"],
                                                              again[0]["receipt"]]})
    assert r.status_code == 200
    doc = r.json()
    assert doc["acked"] == 1
    assert [(f["index"], f["problem"]["code"]) for f in doc["failed"]] == [(0, "receipt_stale")]
    r = await door.client.get("/v1/topics/r/messages", params={"group": "g", "wait": 1})
    assert r.json()["messages"] == []


async def test_change_invisible_time_and_ack_with_the_new_receipt(door) -> None:
    await door.client.post("/v1/topics/c/messages", json={"body": "slow job"})
    [m] = (await door.client.get("/v1/topics/c/messages",
                                 params={"group": "g", "invisible": 1})).json()["messages"]
    r = await door.client.post(f"/v1/topics/c/messages/{m['receipt']}/invisible-time",
                               json={"invisible": 60})
    assert r.status_code == 200
    renewed = r.json()
    assert renewed["invisible_until"] > m["invisible_until"]
    await trio.sleep(1.2)  # the subject: the first lease's 1 s passes, and nothing revives
    r = await door.client.get("/v1/topics/c/messages", params={"group": "g"})
    assert r.json()["messages"] == [], "still invisible under the longer lease"
    r = await door.client.post("/v1/acks", json={"receipts": [renewed["receipt"]]})
    assert r.status_code == 204


async def test_long_poll_is_woken_by_a_core_put(door) -> None:
    await door.broker.create_topic("lp", 2)
    got = {}

    async def consumer() -> None:
        t0 = trio.current_time()
        r = await door.client.get("/v1/topics/lp/messages", params={"group": "g", "wait": 10})
        got["elapsed"] = trio.current_time() - t0
        got["messages"] = r.json()["messages"]

    async with trio.open_nursery() as n:
        n.start_soon(consumer)
        await door.wait_for_metric('ferrymq_long_polls{protocol="http"}', 1)
        await door.broker.put(Message("lp", b"wake", queue_id=1))
    assert [m["body"] for m in got["messages"]] == ["wake"]
    assert got["elapsed"] < 5


async def test_long_poll_times_out_with_an_empty_list(door) -> None:
    await door.broker.create_topic("empty", 1)
    t0 = trio.current_time()
    r = await door.client.get("/v1/topics/empty/messages", params={"group": "g", "wait": 0.5})
    assert r.status_code == 200 and r.json() == {"messages": []}
    assert 0.4 < trio.current_time() - t0 < 3


async def test_filters_and_peek(door) -> None:
    await door.broker.create_topic("f", 1)
    for i, tag in enumerate("ABA"):
        await door.broker.put(Message.build("f", f"{tag}{i}".encode(), tags=tag, queue_id=0,
                                            properties={"n": str(i)}))
    r = await door.client.get("/v1/topics/f/peek", params={"group": "g"})
    assert [m["body"] for m in r.json()["messages"]] == ["A0", "B1", "A2"]
    r = await door.client.get("/v1/topics/f/messages", params={"group": "g", "sql": "n > 0"})
    assert [m["body"] for m in r.json()["messages"]] == ["B1", "A2"]
    r = await door.client.get("/v1/topics/f/messages", params={"group": "h", "tag": "A"})
    assert [m["body"] for m in r.json()["messages"]] == ["A0", "A2"]
    r = await door.client.get("/v1/topics/f/messages", params={"group": "h", "sql": "a >"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_filter"


async def test_read_by_offset_and_base64_encoding(door) -> None:
    await door.broker.create_topic("o", 1)
    for i in range(5):
        await door.broker.put(Message("o", bytes([i]) * 3, queue_id=0))
    r = await door.client.get("/v1/topics/o/queues/0/messages",
                              params={"offset": 2, "max": 2, "encoding": "base64"})
    doc = r.json()
    assert [m["offset"] for m in doc["messages"]] == [2, 3]
    assert base64.b64decode(doc["messages"][0]["body_base64"]) == b"\x02\x02\x02"
    assert (doc["next_offset"], doc["min_offset"], doc["max_offset"]) == (4, 0, 5)
    r = await door.client.get("/v1/topics/o/queues/0/messages", params={"offset": 5})
    assert r.json()["status"] == "no_new_message" and r.json()["messages"] == []
    r = await door.client.get("/v1/topics/o/queues/9/messages", params={"offset": 0})
    assert r.status_code == 404 and r.json()["code"] == "queue_not_found"


# ---------------------------------------------------------------- admin

async def test_topic_and_group_admin(door) -> None:
    c = door.client
    r = await c.post("/v1/topics", json={"name": "adm", "queues": 3})
    assert r.status_code == 201 and r.json()["queues"] == 3
    assert (await c.post("/v1/topics", json={"name": "adm"})).status_code == 409
    assert "adm" in [t["name"] for t in (await c.get("/v1/topics")).json()["topics"]]
    await c.post("/v1/topics/adm/messages", json={"messages": [{"body": "1"}, {"body": "2"}],
                                                  "queue": 0})
    d = (await c.get("/v1/topics/adm")).json()
    assert d["messages"] == 2 and d["queue_offsets"][0] == {"queue": 0, "min_offset": 0,
                                                            "max_offset": 2}
    r = await c.post("/v1/groups", json={"name": "workers", "max_reconsume_times": 3})
    assert r.status_code == 201 and r.json()["max_reconsume_times"] == 3
    [m, _] = (await c.get("/v1/topics/adm/messages",
                          params={"group": "workers", "max": 2})).json()["messages"]
    await c.delete(f"/v1/topics/adm/messages/{m['receipt']}")
    g = (await c.get("/v1/groups/workers")).json()
    assert g["lag"] == 1, "one of two messages acked"
    assert g["pop"] == [{"topic": "adm", "queue": 0, "pop_offset": 2, "in_flight": 1,
                         "ready": 0}]
    assert "workers" in [x["name"] for x in (await c.get("/v1/groups")).json()["groups"]]
    assert (await c.delete("/v1/groups/workers")).status_code == 204
    assert (await c.get("/v1/groups/workers")).status_code == 404
    assert (await c.delete("/v1/topics/adm")).status_code == 204
    assert (await c.get("/v1/topics/adm")).status_code == 404


async def test_message_lookup_by_id_and_key(door) -> None:
    r = await door.client.post("/v1/topics/k/messages", json={"body": "find me", "key": "K42"})
    mid = r.json()["ids"][0]
    r = await door.client.get(f"/v1/messages/{mid}")
    assert r.status_code == 200 and r.json()["body"] == "find me"
    r = await door.client.get("/v1/topics/k/keys/K42")
    assert [m["body"] for m in r.json()["messages"]] == ["find me"]
    r = await door.client.get("/v1/messages/0123456789ABCDEF0123456789ABCDEF")
    assert r.status_code == 404 and r.json()["code"] == "message_not_found"


async def test_health_readiness_and_metrics(door) -> None:
    assert (await door.client.get("/healthz")).json() == {"status": "ok"}
    assert (await door.client.get("/readyz")).json() == {"status": "ready"}
    await door.client.post("/v1/topics/m/messages", json={"body": "12345"})
    await door.client.get("/v1/topics/m/messages", params={"group": "g"})
    r = await door.client.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = r.text
    assert 'ferrymq_messages_in_total{topic="m"} 1' in text
    [bytes_in] = [ln for ln in text.splitlines() if ln.startswith('ferrymq_bytes_in_total{topic="m"}')]
    assert int(bytes_in.split()[-1]) > 5, "the record as stored, body and headers"
    assert 'ferrymq_messages_out_total{group="g",topic="m"} 1' in text
    assert "ferrymq_pop_inflight_messages 1" in text
    assert 'ferrymq_request_duration_seconds_count{protocol="http",request="produce"} 1' in text
    assert 'ferrymq_connections{protocol="http"} 1' in text
    assert "# TYPE ferrymq_store_flush_duration_seconds histogram" in text
    assert re.search(r'ferrymq_group_lag_messages\{group="g",topic="m",queue="\d"\} 1', text)


async def test_openapi_document_matches_the_routes(door) -> None:
    from ferrymq.gateways import http as http_door
    from ferrymq.gateways.config import ServerConfig
    from ferrymq.gateways.server import DoorContext

    doc = (await door.client.get("/openapi.json")).json()
    assert doc["openapi"] == "3.1.0"
    app, _ = http_door.build_app(DoorContext(door.broker, "", 0, {}, ServerConfig()))
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert documented == {(r.method, r.path) for r in app.router.routes}
    assert ("GET", "/console") in documented and ("GET", "/v1/messages/{id}/life") in documented
    ops = [op for ops in doc["paths"].values() for op in ops.values()]
    assert len({op["operationId"] for op in ops}) == len(ops)
    assert all("default" not in op["responses"] for op in ops)


async def test_topic_deleted_under_a_long_poll_is_a_problem_not_a_crash(door) -> None:
    await door.broker.create_topic("gone", 1)
    got = {}

    async def consumer() -> None:
        got["r"] = await door.client.get("/v1/topics/gone/messages",
                                         params={"group": "g", "wait": 10})

    async with trio.open_nursery() as n:
        n.start_soon(consumer)
        await door.wait_for_metric('ferrymq_long_polls{protocol="http"}', 1)
        await door.broker.delete_topic("gone")
    assert got["r"].status_code == 404 and got["r"].json()["code"] == "topic_not_found"
    assert (await door.client.get("/healthz")).status_code == 200


# ---------------------------------------------------------------- transactions

async def test_a_prepared_half_is_invisible_until_committed_then_delivered_once(door) -> None:
    await door.broker.create_topic("pay", 1)
    r = await door.client.post("/v1/topics/pay/transactions", params={"group": "checkout"},
                               json={"body": "charge 5", "key": "order-5"})
    assert r.status_code == 201
    tx = r.json()["transaction_id"]
    assert stored(door, "pay") == [], "a half is invisible"
    pending = (await door.client.get("/v1/transactions", params={"group": "checkout"})).json()
    assert [t["transaction_id"] for t in pending["transactions"]] == [tx]
    assert (await door.client.get("/v1/transactions",
                                  params={"group": "other"})).json()["transactions"] == []
    r = await door.client.post(f"/v1/transactions/{tx}/commit")
    assert r.status_code == 200 and r.json()["topic"] == "pay"
    [m] = stored(door, "pay")
    assert (m.body, m.keys) == (b"charge 5", ["order-5"])
    again = await door.client.post(f"/v1/transactions/{tx}/commit")
    assert again.status_code == 409 and again.json()["code"] == "transaction_already_ended"
    assert len(stored(door, "pay")) == 1, "nothing delivered twice"
    assert (await door.client.get("/v1/transactions",
                                  params={"group": "checkout"})).json()["transactions"] == []


async def test_a_rolled_back_half_is_never_delivered(door) -> None:
    await door.broker.create_topic("pay", 1)
    r = await door.client.post("/v1/topics/pay/transactions", params={"group": "checkout"},
                               json={"body": "charge 6"})
    tx = r.json()["transaction_id"]
    assert (await door.client.post(f"/v1/transactions/{tx}/rollback")).status_code == 204
    assert (await door.client.post(f"/v1/transactions/{tx}/commit")).status_code == 409
    assert stored(door, "pay") == []
    missing = await door.client.post("/v1/transactions/no-such-transaction/commit")
    assert missing.status_code == 404 and missing.json()["code"] == "transaction_not_found"
    no_group = await door.client.post("/v1/topics/pay/transactions", json={"body": "x"})
    assert no_group.status_code == 400


async def test_topic_configs_are_validated_described_and_altered(door) -> None:
    c = door.client
    r = await c.post("/v1/topics", json={"name": "cfg", "attributes": {"retention.ms": "abc"}})
    assert r.status_code == 400 and r.json()["code"] == "invalid_config"
    r = await c.post("/v1/topics", json={"name": "cfg", "attributes": {"no.such.config": "1"}})
    assert r.status_code == 400 and r.json()["code"] == "invalid_config"
    r = await c.post("/v1/topics", json={"name": "cfg", "queues": 1,
                                         "attributes": {"cleanup.policy": "compact"}})
    assert r.status_code == 201
    configs = {e["name"]: e for e in (await c.get("/v1/topics/cfg/configs")).json()["configs"]}
    assert (configs["cleanup.policy"]["value"], configs["cleanup.policy"]["source"]) == (
        "compact", "topic")
    assert configs["segment.bytes"]["read_only"]
    r = await c.patch("/v1/topics/cfg/configs", json={
        "set": {"retention.ms": "60000"}, "append": {"cleanup.policy": "delete"}})
    assert r.status_code == 200
    configs = {e["name"]: e["value"] for e in r.json()["configs"]}
    assert (configs["retention.ms"], configs["cleanup.policy"]) == ("60000", "compact,delete")
    r = await c.patch("/v1/topics/cfg/configs", json={"delete": ["retention.ms"],
                                                      "validate_only": True})
    assert r.status_code == 200
    assert (await c.get("/v1/topics/cfg")).json()["attributes"]["retention.ms"] == "60000"
    for bad in ({"set": {"segment.bytes": "1"}}, {"set": {"retention.ms": "-9"}}):
        r = await c.patch("/v1/topics/cfg/configs", json=bad)
        assert r.status_code == 400 and r.json()["code"] == "invalid_config", bad
    for garbage in ({"set": ["x"]}, {"frobnicate": 1}, [], {"validate_only": "yes"}):
        r = await c.patch("/v1/topics/cfg/configs", json=garbage)
        assert r.status_code == 400 and r.json()["code"] == "invalid_body", garbage
    assert (await c.get("/v1/topics/nope/configs")).status_code == 404
