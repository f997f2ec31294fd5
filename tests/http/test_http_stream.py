"""Server-sent event streams: one event per message, ids that resume, groups that commit."""

from __future__ import annotations

import json

import trio
from ferrymq.core.message import Message

from waiting import wait_until_async


async def read_events(client, url: str, n: int, headers: dict[str, str] | None = None,
                      params: dict[str, object] | None = None) -> list[dict[str, str]]:
    """The first ``n`` message events of a stream (then the client hangs up)."""
    events: list[dict[str, str]] = []
    with trio.fail_after(10):
        async with client.stream("GET", url, headers=headers or {}, params=params) as r:
            assert r.status_code == 200
            assert r.headers["content-type"] == "text/event-stream"
            current: dict[str, str] = {}
            async for line in r.aiter_lines():
                if line == "":
                    if current.get("event") == "message":
                        events.append(current)
                        if len(events) == n:
                            break
                    current = {}
                elif not line.startswith(":"):
                    field, _, value = line.partition(": ")
                    current[field] = value
    return events


async def test_single_queue_stream_uses_offsets_as_ids_and_resumes(door) -> None:
    await door.broker.create_topic("s", 2)
    for i in range(4):
        await door.broker.put(Message("s", f"q1-{i}".encode(), queue_id=1))
    evs = await read_events(door.client, "/v1/topics/s/stream", 2,
                            params={"queue": 1, "from": "earliest"})
    assert [e["id"] for e in evs] == ["0", "1"]
    assert [json.loads(e["data"])["body"] for e in evs] == ["q1-0", "q1-1"]
    evs = await read_events(door.client, "/v1/topics/s/stream", 2, params={"queue": 1},
                            headers={"last-event-id": "1"})
    assert [json.loads(e["data"])["body"] for e in evs] == ["q1-2", "q1-3"]


async def test_topic_stream_id_carries_every_queue_position(door) -> None:
    await door.broker.create_topic("m", 2)
    await door.broker.put(Message("m", b"a", queue_id=0))
    await door.broker.put(Message("m", b"b", queue_id=1))
    [first] = await read_events(door.client, "/v1/topics/m/stream", 1,
                                params={"from": "earliest"})
    assert first["id"] == "0:1,1:0"
    await door.broker.put(Message("m", b"c", queue_id=0))
    evs = await read_events(door.client, "/v1/topics/m/stream", 2,
                            headers={"last-event-id": first["id"]})
    assert sorted(json.loads(e["data"])["body"] for e in evs) == ["b", "c"]


async def test_stream_waits_for_new_messages(door) -> None:
    await door.broker.create_topic("w", 1)
    got: list[dict[str, str]] = []

    async def reader() -> None:
        got.extend(await read_events(door.client, "/v1/topics/w/stream", 1))

    async with trio.open_nursery() as n:
        n.start_soon(reader)
        await door.wait_for_metric('ferrymq_streams{protocol="http"}', 1)
        await door.broker.put(Message("w", b"live", queue_id=0))
    assert json.loads(got[0]["data"])["body"] == "live"


async def test_group_stream_commits_and_restarts_where_it_stopped(door) -> None:
    await door.broker.create_topic("g", 1)
    for i in range(3):
        await door.broker.put(Message("g", f"{i}".encode(), queue_id=0))
    evs = await read_events(door.client, "/v1/topics/g/stream", 2, params={"group": "viewer"})
    assert [json.loads(e["data"])["body"] for e in evs] == ["0", "1"]
    # the door ended the first stream (its own gauge), which commits where it stopped
    await door.wait_for_metric('ferrymq_streams{protocol="http"}', 0)
    await wait_until_async(lambda: door.broker.committed_offset("viewer", "g", 0) in (1, 2, 3),
                           what="the stream's commit")
    committed = door.broker.committed_offset("viewer", "g", 0)
    await door.broker.put(Message("g", b"3", queue_id=0))
    evs = await read_events(door.client, "/v1/topics/g/stream", 1, params={"group": "viewer"})
    assert json.loads(evs[0]["data"])["offset"] == committed


async def test_stream_as_cloudevents(door) -> None:
    await door.broker.put(Message.build("c", b'{"x":1}', queue_id=0,
                                        properties={"content-type": "application/json"}))
    [ev] = await read_events(door.client, "/v1/topics/c/stream", 1,
                             params={"from": "earliest"},
                             headers={"accept": "application/cloudevents+json"})
    doc = json.loads(ev["data"])
    assert doc["specversion"] == "1.0" and doc["data"] == {"x": 1}
    assert doc["datacontenttype"] == "application/json"


async def test_bad_stream_requests(door) -> None:
    await door.broker.create_topic("b", 1)
    r = await door.client.get("/v1/topics/b/stream", headers={"last-event-id": "x:y"})
    assert r.status_code == 400 and r.json()["code"] == "invalid_parameter"
    r = await door.client.get("/v1/topics/b/stream", params={"queue": 5})
    assert r.status_code == 404 and r.json()["code"] == "queue_not_found"
    r = await door.client.get("/v1/topics/none/stream")
    assert r.status_code == 404


async def test_a_departed_stream_client_is_noticed(door) -> None:
    await door.broker.create_topic("d", 1)
    async with door.client.stream("GET", "/v1/topics/d/stream") as r:
        assert r.status_code == 200
        text = (await door.client.get("/metrics")).text
        assert 'ferrymq_streams{protocol="http"} 1' in text
    # The client closed the connection: the stream ends and gives its slot back.
    with trio.fail_after(5):
        while 'ferrymq_streams{protocol="http"} 0' not in (await door.client.get("/metrics")).text:
            await trio.sleep(0.05)
