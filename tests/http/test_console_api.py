"""The admin API the web console reads (docs/console.md): brokers, history, timers per hour,
a message's life, dead letters and their resend, offsets by time; and the console's pages."""

from __future__ import annotations

import sys
from pathlib import Path

import httpx
import pytest
import trio
from ferrymq.core.access import CLUSTER, GROUP, TOPIC
from ferrymq.core.broker import Broker
from ferrymq.core.message import Message, now_ms
from ferrymq.gateways import http as http_door
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.http import history, webconsole
from ferrymq.gateways.server import DoorContext
from http_doors import broker_config, open_door

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from access_helpers import record


@pytest.fixture
async def console(tmp_path):
    """A door sampling its history every 50 ms, with an httpx client."""
    async with Broker.open(broker_config(tmp_path / "data")) as broker, \
            trio.open_nursery() as nursery:
        port = await open_door(nursery, broker, {"console_sample_s": 0.05})
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield broker, client
        nursery.cancel_scope.cancel()


async def produce(client, topic: str, body: str = "x", **env) -> str:
    r = await client.post(f"/v1/topics/{topic}/messages", json={"body": body, **env})
    assert r.status_code == 201, r.text
    return r.json()["ids"][0]


async def eventually(fn, timeout: float = 10.0):
    """fn()'s first truthy answer (an awaitable's), checked until ``timeout``."""
    with trio.fail_after(timeout):
        while True:
            got = await fn()
            if got:
                return got
            await trio.sleep(0.02)


# ---------------------------------------------------------------- a message's life

async def test_life_names_the_door_and_where_the_message_is_stored(console) -> None:
    broker, client = console
    await broker.create_topic("orders", 1)
    mid = await produce(client, "orders", "order 1", key="o-1")
    doc = (await client.get(f"/v1/messages/{mid}/life")).json()
    assert doc["id"] == mid and doc["door"] == "http"
    [step] = doc["steps"]
    m = step["message"]
    assert (step["kind"], m["topic"], m["queue"], m["offset"], m["body"]) == \
        ("produced", "orders", 0, 0, "order 1")
    stored = broker.message_by_id(mid)
    assert m["physical_offset"] == stored.physical_offset
    assert m["store_host"] == "127.0.0.1:10911"
    assert step["consumers"] == []


async def test_life_tells_where_each_group_stands(console) -> None:
    broker, client = console
    await broker.create_topic("t", 1)
    first = await produce(client, "t", "a")
    await produce(client, "t", "b")
    broker.commit_offset("done", "t", 0, 2)   # past both
    broker.commit_offset("behind", "t", 0, 0)  # before both
    popped = await broker.pop("popper", "t", 1, 60_000)  # leases the first
    assert popped[0].message.msg_id == first
    doc = (await client.get(f"/v1/messages/{first}/life")).json()
    by_group = {c["group"]: c for c in doc["steps"][0]["consumers"]}
    assert by_group["done"]["consumed"] and by_group["done"]["committed"] == 2
    assert not by_group["behind"]["consumed"]
    assert by_group["popper"]["pop"] == "leased" and by_group["popper"]["deliveries"] == 1
    broker.ack(popped[0].receipt)
    doc = (await client.get(f"/v1/messages/{first}/life")).json()
    popper = {c["group"]: c for c in doc["steps"][0]["consumers"]}["popper"]
    assert popper["pop"] == "acked" and popper["consumed"]


async def test_life_follows_a_retry_a_dead_letter_and_its_resend(console) -> None:
    broker, client = console
    await broker.create_topic("pay", 1)
    await broker.create_group("billing", max_reconsume_times=1)
    mid = await produce(client, "pay", "charge")
    m = broker.message_by_id(mid)
    retry = await broker.send_back("billing", m)  # a timer for %RETRY%billing, 10 s out
    assert not retry.dead
    kinds = [s["kind"] for s in (await client.get(f"/v1/messages/{mid}/life")).json()["steps"]]
    assert kinds == ["produced", "timer"]
    timer = (await client.get(f"/v1/messages/{mid}/life")).json()["steps"][1]
    assert timer["due"] >= now_ms() + 5000
    dead = await broker.send_back("billing", m._replace(reconsume_times=1))  # its last try
    assert dead.dead
    doc = (await client.get(f"/v1/messages/{mid}/life")).json()
    letter = doc["steps"][-1]
    assert (letter["kind"], letter["group"], letter["resent"]) == ("dead_letter", "billing", False)

    r = await client.get("/v1/groups/billing/dead-letters")
    [d] = r.json()["dead_letters"]
    assert (d["id"], d["origin_topic"], d["resent"]) == (mid, "pay", False)
    r = await client.post("/v1/groups/billing/dead-letters/resend", json={"letters": [d["offset"]]})
    assert r.status_code == 200, r.text
    [done] = r.json()["resent"]
    assert (done["topic"], done["queue"], done["queue_offset"]) == ("pay", 0, 1)
    doc = (await client.get(f"/v1/messages/{mid}/life")).json()
    assert [s["kind"] for s in doc["steps"]][-2:] == ["dead_letter", "resent"]
    assert doc["steps"][-2]["resent"] is True
    assert doc["door"] == "http", "the copies keep the door of the original"
    again = await client.post("/v1/groups/billing/dead-letters/resend", json={"letters": [mid]})
    assert (again.status_code, again.json()["code"]) == (400, "invalid_argument")
    forced = await client.post("/v1/groups/billing/dead-letters/resend",
                               json={"letters": [mid], "force": True})
    assert forced.status_code == 200 and len(forced.json()["resent"]) == 1


async def test_a_pop_dead_letter_keeps_the_id_of_its_message(tmp_path) -> None:
    """A message without a client id (an HTTP one) leased until it is dead-lettered: the
    letter, its resend and the message's life all go by the message's own id."""
    async with Broker.open(broker_config(tmp_path / "data")) as broker, \
            trio.open_nursery() as nursery:
        port = await open_door(nursery, broker)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            await broker.create_topic("jobs", 1)
            await broker.create_group("fragile", max_reconsume_times=0)
            mid = await produce(client, "jobs", "job 1")
            assert await broker.pop("fragile", "jobs", 1, 100)  # never acked

            async def dead():
                return (await client.get("/v1/groups/fragile/dead-letters")).json()["dead_letters"]

            [letter] = await eventually(dead)
            assert letter["id"] == mid
            r = await client.post("/v1/groups/fragile/dead-letters/resend", json={"letters": [mid]})
            assert r.json()["resent"][0]["id"] == mid
            doc = (await client.get(f"/v1/messages/{mid}/life")).json()
            assert [s["kind"] for s in doc["steps"]] == ["produced", "dead_letter", "resent"]
        nursery.cancel_scope.cancel()


async def test_life_of_an_unknown_message_is_a_404_problem(console) -> None:
    _, client = console
    r = await client.get("/v1/messages/7F00000100002A9F0000000000999999/life")
    assert (r.status_code, r.json()["code"]) == (404, "message_not_found")


async def test_life_checks_the_topic_and_hides_groups_that_may_not_be_seen(tmp_path) -> None:
    async with Broker.open(broker_config(tmp_path / "data")) as broker:
        await broker.create_topic("t", 1)
        r = await broker.put(Message("t", b"x"))
        broker.commit_offset("secret", "t", 0, 1)
        broker.commit_offset("open", "t", 0, 1)
        rec = record(broker, lambda p, kind, name, op: kind is GROUP and name == "secret")
        life = broker.message_life(r.message_ids[0])
        assert [c.group for c in life.steps[0].consumers] == ["open"]
        assert (TOPIC, "t") in {(c[1], c[2]) for c in rec.calls}
        record(broker, lambda p, kind, name, op: kind is TOPIC)
        with pytest.raises(Exception, match="may not read topic t"):
            broker.message_life(r.message_ids[0])


# ---------------------------------------------------------------- brokers, timers, history

async def test_cluster_lists_the_broker_its_role_and_each_doors_connections(console) -> None:
    _, client = console
    doc = (await client.get("/v1/cluster")).json()
    [b] = doc["brokers"]
    assert (b["name"], b["role"], b["flush"]) == ("broker-a", "master", "async")
    assert b["commitlog"]["max_offset"] >= b["commitlog"]["flushed"] >= 0
    http = {d["door"]: d for d in doc["doors"]}["http"]
    assert http["connections"] >= 1 and http["accepted"] >= 1


async def test_timers_are_counted_by_the_hour_they_are_due(console) -> None:
    broker, client = console
    await broker.create_topic("later", 1)
    for hours, n in ((2, 3), (5, 1)):
        for _ in range(n):
            await produce(client, "later", delay_ms=hours * 3600_000)
    gone = await produce(client, "later", delay_ms=5 * 3600_000)
    await broker.cancel_timer(gone)
    await produce(client, "later", delay_ms=30 * 86_400_000)  # waits at its roll point
    doc = (await client.get("/v1/timers", params={"hours": 48})).json()
    assert doc["start"] % 3600_000 == 0 and doc["start"] <= now_ms()
    assert len(doc["hours"]) == 48
    assert (doc["hours"][2], doc["hours"][5], sum(doc["hours"])) == (3, 1, 4)
    assert doc["later"] == 1 and not doc["approximate"]
    assert doc["stats"]["scheduled"] == 6 and doc["stats"]["cancelled"] == 1
    r = await client.get("/v1/timers", params={"hours": 0})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter")


async def test_history_samples_throughput_connections_rates_and_lags(console) -> None:
    broker, client = console
    await broker.create_topic("busy", 2)
    for i in range(20):
        await produce(client, "busy", f"m{i}")
    broker.commit_offset("slow", "busy", 0, 0)

    async def sampled():
        doc = (await client.get("/v1/stats/history")).json()
        lags = [x for x in doc["lags"] if x["group"] == "slow"]
        return doc if lags and lags[0]["lag"][-1] and any(doc["messages_in"][1:]) else None

    doc = await eventually(sampled)
    assert doc["interval_s"] == 0.05
    assert len(doc["times"]) == len(doc["messages_in"]) == len(doc["topics"]["busy"])
    assert doc["messages_in"][0] is None, "no rate before the first sample"
    assert max(v for v in doc["messages_in"] if v is not None) > 0
    assert doc["connections"]["http"][-1] >= 1
    [lag] = [x for x in doc["lags"] if x["group"] == "slow"]
    assert (lag["topic"], lag["queue"]) == ("busy", 0)
    assert lag["lag"][-1] == broker.queue_bounds("busy", 0)[1]
    only = (await client.get("/v1/stats/history", params={"group": "other", "lags": "true"})).json()
    assert only["lags"] == []


async def test_history_shows_only_what_the_principal_may_see(console) -> None:
    broker, client = console
    await broker.create_topic("shown", 1)
    await broker.create_topic("hidden", 1)
    await produce(client, "shown")
    await produce(client, "hidden")
    broker.commit_offset("g", "hidden", 0, 0)
    await eventually(lambda: _has_topic(client, "hidden"))
    record(broker, lambda p, kind, name, op: p.anonymous and (
        kind is CLUSTER or name in ("hidden", "g")))
    doc = (await client.get("/v1/stats/history")).json()
    assert "hidden" not in doc["topics"] and "shown" in doc["topics"]
    assert doc["lags"] == [] and "messages_in" not in doc and "connections" not in doc


async def _has_topic(client, name: str) -> bool:
    return name in (await client.get("/v1/stats/history")).json()["topics"]


def test_history_is_bounded_to_the_busiest_series() -> None:
    class Fake:
        def traffic(self, principal):
            from ferrymq.core.stats import Traffic
            return Traffic({f"t{i}": (i, i) for i in range(10)}, {})

        def door_connections(self, principal):
            return {}

        def group_lags(self, principal):
            from ferrymq.core.stats import GroupLag
            return [GroupLag("g", "t", q, 0, q) for q in range(10)]

    h = history.History(Fake(), {"console_max_series": 3, "console_history": 2})  # type: ignore[arg-type]
    for t in range(5):
        h.sample(t * 1000)
    assert len(h.samples) == 2, "only the last console_history samples are kept"
    s = h.samples[-1]
    assert sorted(s.topics) == ["t7", "t8", "t9"] and s.truncated
    assert sorted(q for _, _, q in s.lags) == [7, 8, 9]


@pytest.mark.parametrize("options", [
    {"console_sample_s": 0}, {"console_sample_s": "5"}, {"console_history": 1},
    {"console_max_series": True}, {"console": "yes"}])
async def test_bad_console_options_stop_the_door(tmp_path, options) -> None:
    async with Broker.open(broker_config(tmp_path / "data")) as broker:
        with pytest.raises(ValueError, match=r"\[http\] console"):
            http_door.build_app(DoorContext(broker, "127.0.0.1", 0, options, ServerConfig()))


# ---------------------------------------------------------------- listings and lookups

async def test_topics_and_groups_with_their_stats(console) -> None:
    broker, client = console
    await broker.create_topic("orders", 2)
    for _ in range(3):
        await produce(client, "orders", queue=1)
    await broker.create_group("made")
    broker.commit_offset("committer", "orders", 1, 1)  # created by its first commit
    [t] = (await client.get("/v1/topics", params={"stats": "true"})).json()["topics"]
    assert (t["name"], t["messages"], t["messages_in"]) == ("orders", 3, 3)
    assert t["bytes_in"] > 0
    groups = {g["name"]: g for g in
              (await client.get("/v1/groups", params={"stats": "true"})).json()["groups"]}
    assert groups["committer"]["lag"] == 2
    assert groups["committer"]["topics"] == [{"topic": "orders"}]
    assert groups["made"]["created"] is True and groups["made"]["lag"] == 0
    assert groups["made"]["topics"] == []


async def test_offsets_for_a_time_per_queue(console) -> None:
    broker, client = console
    await broker.create_topic("t", 2)
    await produce(client, "t", queue=0)
    await trio.sleep(0.01)
    cut = now_ms()
    await trio.sleep(0.01)
    await produce(client, "t", queue=0)
    doc = (await client.get("/v1/topics/t/offsets", params={"time": str(cut)})).json()
    assert doc["queues"] == [{"queue": 0, "offset": 1, "min_offset": 0, "max_offset": 2},
                             {"queue": 1, "offset": 0, "min_offset": 0, "max_offset": 0}]
    iso = (await client.get("/v1/topics/t/offsets", params={"time": "1970-01-01T00:00:00Z"})).json()
    assert iso["time"] == 0 and iso["queues"][0]["offset"] == 0
    for bad in ("yesterday", "2030-01-01T00:00:00"):
        r = await client.get("/v1/topics/t/offsets", params={"time": bad})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_parameter"), bad


async def test_pending_transactions_of_every_producer_group(console) -> None:
    _, client = console
    for group in ("a", "b"):
        r = await client.post("/v1/topics/pay/transactions", params={"group": group},
                              json={"body": group})
        assert r.status_code == 201
    every = (await client.get("/v1/transactions")).json()["transactions"]
    assert sorted(t["group"] for t in every) == ["a", "b"]
    one = (await client.get("/v1/transactions", params={"group": "a"})).json()["transactions"]
    assert [t["group"] for t in one] == ["a"]


@pytest.mark.parametrize(("body", "ctype", "status", "code"), [
    (b"{", "application/json", 400, "malformed_json"),
    (b"[]", "application/json", 400, "invalid_body"),
    (b'{"letters": []}', "application/json", 400, "invalid_body"),
    (b'{"letters": [-1]}', "application/json", 400, "invalid_body"),
    (b'{"letters": [true]}', "application/json", 400, "invalid_body"),
    (b'{"all": false}', "application/json", 400, "invalid_body"),
    (b'{"all": true, "letters": [1]}', "application/json", 400, "invalid_body"),
    (b'{"all": true, "force": "yes"}', "application/json", 400, "invalid_body"),
    (b'{"all": true, "extra": 1}', "application/json", 400, "invalid_body"),
    (b'{"letters": [99]}', "application/json", 404, "message_not_found"),
    (b"all", "text/plain", 415, "unsupported_media_type"),
])
async def test_resend_answers_garbage_with_a_problem(console, body, ctype, status, code) -> None:
    _, client = console
    r = await client.post("/v1/groups/g/dead-letters/resend", content=body,
                          headers={"content-type": ctype})
    assert (r.status_code, r.headers["content-type"], r.json()["code"]) == \
        (status, "application/problem+json", code)


async def test_resend_of_every_letter_not_resent_yet(console) -> None:
    broker, client = console
    await broker.create_topic("t", 1)
    await broker.create_group("g", max_reconsume_times=0)
    for i in range(3):
        await broker.send_back("g", broker.message_by_id(await produce(client, "t", f"m{i}")))
    r = await client.post("/v1/groups/g/dead-letters/resend", json={"all": True})
    assert len(r.json()["resent"]) == 3
    r = await client.post("/v1/groups/g/dead-letters/resend", json={"all": True})
    assert r.json()["resent"] == []
    page = (await client.get("/v1/groups/g/dead-letters", params={"offset": 1, "max": 1})).json()
    assert [d["offset"] for d in page["dead_letters"]] == [1] and page["next_offset"] == 2


# ---------------------------------------------------------------- the pages

async def test_the_pages_are_served_with_a_strict_content_policy(console) -> None:
    _, client = console
    r = await client.get("/console")
    assert (r.status_code, r.headers["location"]) == (308, "console/")
    r = await client.get("/console/")
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    assert "script-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff"
    assert b'<script type="module" src="app.js">' in r.content
    for name, ctype in (("app.js", "text/javascript"), ("charts.js", "text/javascript"),
                        ("style.css", "text/css"), ("favicon.svg", "image/svg+xml")):
        r = await client.get(f"/console/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype), name
    for bad in ("../api.py", "nope.js", "%2e%2e%2fapi.py"):
        r = await client.get(f"/console/{bad}")
        assert r.status_code in (400, 404) and r.json()["type"].startswith("urn:ferrymq"), bad


async def test_the_pages_need_no_token_but_the_data_does(tmp_path) -> None:
    async with Broker.open(broker_config(tmp_path / "data")) as broker, \
            trio.open_nursery() as nursery:
        port = await open_door(nursery, broker, {"auth_tokens": ["s3cret"]})
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/console/")).status_code == 200
            assert (await client.get("/v1/cluster")).status_code == 401
            ok = await client.get("/v1/cluster", headers={"authorization": "Bearer s3cret"})
            assert ok.status_code == 200
        nursery.cancel_scope.cancel()


async def test_console_false_serves_no_pages_and_samples_nothing(tmp_path) -> None:
    async with Broker.open(broker_config(tmp_path / "data")) as broker, \
            trio.open_nursery() as nursery:
        port = await open_door(nursery, broker, {"console": False})
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/console/")).status_code == 404
            assert (await client.get("/v1/stats/history")).status_code == 404
            assert (await client.get("/v1/cluster")).status_code == 200
        nursery.cancel_scope.cancel()


def test_every_console_file_is_shipped_as_package_data() -> None:
    import tomllib
    root = Path(__file__).resolve().parents[2]
    data = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["ferrymq.gateways.http"]
    on_disk = {p.name for p in (root / "gateways/http/console").iterdir()}
    shipped = {p.name for pattern in data for p in root.joinpath("gateways/http").glob(pattern)}
    assert on_disk == shipped
    assert set(webconsole.load_assets()) == on_disk


async def test_a_failing_sample_costs_a_sample_not_the_door(autojump_clock) -> None:
    class Broken:
        def traffic(self, principal):
            raise RuntimeError("a bug")

    h = history.History(Broken(), {"console_sample_s": 1})  # type: ignore[arg-type]
    with trio.move_on_after(3.5):
        await h.run()
    assert h.failures == 4 and not h.samples
