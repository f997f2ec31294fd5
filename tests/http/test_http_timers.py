"""Timers over HTTP (issue 17): a batch with timed messages is stored, the timed ones as
timers one by one and the others as one batch, instead of refused; a pending timer is
cancelled with DELETE /v1/timers/{id}, and then never delivered; garbage ids are problems;
the counters of GET /v1/timers (the console's) count it. And the W3C trace context of a produce
request is stored with each message it carries."""

from __future__ import annotations

import trio
from ferrymq.core.message import now_ms
from ferrymq.core.timers import TIMER_TOPIC


def stored(door, topic: str, queue: int = 0, offset: int = 0):
    return list(door.broker.get(None, topic, queue, offset, 100).messages(offset))


async def test_a_batch_with_timed_messages_is_split_not_refused(door) -> None:
    await door.broker.create_topic("split", 1)
    later = now_ms() + 3_600_000
    r = await door.client.post("/v1/topics/split/messages", json={"messages": [
        {"body": "now-1"}, {"body": "later-1", "deliver_at": later},
        {"body": "now-2"}, {"body": "later-2", "delay_ms": 3_600_000}]})
    assert r.status_code == 201, r.text
    doc = r.json()
    assert doc["count"] == 4 and len(doc["ids"]) == 4 and len(set(doc["ids"])) == 4
    assert doc["timers"] == [doc["ids"][1], doc["ids"][3]]
    assert (doc["queue"], doc["base_offset"]) == (0, 0)
    assert [m.body for m in stored(door, "split")] == [b"now-1", b"now-2"]
    assert [m.msg_id for m in stored(door, "split")] == [doc["ids"][0], doc["ids"][2]]
    timer_q = door.broker.store.queues[(TIMER_TOPIC, 0)]
    assert timer_q.next_entry - timer_q.first_entry == 2
    assert door.broker.timer_stats().scheduled == 2
    # All timed: no batch at all, every id a timer.
    r = await door.client.post("/v1/topics/split/messages", json={"messages": [
        {"body": "a", "delay_ms": 60_000}, {"body": "b", "delay_ms": 60_000}]})
    assert r.status_code == 201 and r.json()["timers"] == r.json()["ids"]
    # One bad delivery time refuses the whole batch before anything is stored.
    r = await door.client.post("/v1/topics/split/messages", json={"messages": [
        {"body": "x"}, {"body": "y", "delay_ms": 10**15}]})
    assert r.status_code == 400
    assert len(stored(door, "split")) == 2


async def test_a_timer_is_cancelled_over_http(door) -> None:
    await door.broker.create_topic("tc", 1)
    r = await door.client.post("/v1/topics/tc/messages",
                               json={"body": "never", "delay_ms": 1500})
    [tid] = r.json()["ids"]
    r = await door.client.delete(f"/v1/timers/{tid}")
    assert r.status_code == 200, r.text
    assert r.json()["id"] == tid and isinstance(r.json()["deliver_at"], int)
    again = await door.client.delete(f"/v1/timers/{tid}")
    assert again.status_code == 404 and again.json()["code"] == "timer_not_found"
    stats = (await door.client.get("/v1/timers")).json()["stats"]  # the console's route
    assert stats["cancelled"] == 1 and stats["scheduled"] == 1
    for bad in ("x" * 300, "%00", "nope"):
        r = await door.client.delete(f"/v1/timers/{bad}")
        assert r.status_code in (400, 404), (bad, r.status_code)
        assert r.headers["content-type"].startswith("application/problem+json")
    # Past its time, still nothing: a delivered timer shows in the counters.
    r = await door.client.post("/v1/topics/tc/messages", json={"body": "due", "delay_ms": 200})
    with trio.fail_after(10):
        while door.broker.timer_stats().delivered < 1:
            await trio.sleep(0.05)
    assert [m.body for m in stored(door, "tc")] == [b"due"]


TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_the_request_trace_context_goes_with_each_message(door) -> None:
    await door.broker.create_topic("tr", 1)
    await door.client.post("/v1/topics/tr/messages", json={"messages": [
        {"body": "a"}, {"body": "b", "properties": {"traceparent": TP.replace("01", "00", 1)}}]},
        headers={"traceparent": TP, "tracestate": "ferry=1"})
    a, b = stored(door, "tr")
    assert a.properties["traceparent"] == TP and a.properties["tracestate"] == "ferry=1"
    assert b.properties["traceparent"] != TP, "a message's own context stands"
    for bad in ("garbage", "00-" + "0" * 32 + "-00f067aa0ba902b7-01", "ff-" + TP[3:],
                TP + "-extra"):
        r = await door.client.post("/v1/topics/tr/messages", json={"body": "c"},
                                   headers={"traceparent": bad})
        assert r.status_code == 201, "an invalid traceparent is ignored (W3C), not refused"
        assert "traceparent" not in stored(door, "tr")[-1].properties
