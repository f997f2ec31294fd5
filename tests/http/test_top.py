"""``ferrymq top`` against a real broker (click's CliRunner): JSON lines when piped, with
rates per door and topic computed from two scrapes of /metrics, numbers as numbers; a
table view with -o table; a bounded run with --iterations/--once; an unreachable or
wrong URL is an error message, not a traceback."""

from __future__ import annotations

import json
import threading
import time

import httpx
from click.testing import CliRunner
from ferrymq.gateways.cli import main
from ferrymq.gateways.top import Snapshot, parse_metrics, view


def test_parse_and_rates_from_two_scrapes() -> None:
    one = ('# TYPE ferrymq_door_messages_in_total counter\n'
           'ferrymq_door_messages_in_total{protocol="http",topic="a"} 10\n'
           'ferrymq_connections{protocol="kafka"} 3\n'
           'ferrymq_group_lag_messages{group="g",topic="a",queue="0"} 4\n'
           'ferrymq_group_lag_messages{group="g",topic="a",queue="1"} 5\n'
           'ferrymq_timers_pending 7\n')
    assert parse_metrics('x{a="q\\"x"} 1\n')["x"] == [({"a": 'q"x'}, 1.0)]
    two = one.replace("} 10", "} 30")
    doc = view(Snapshot.of(two, 12.0), Snapshot.of(one, 10.0))
    assert doc["doors"] == [{"door": "http", "in_per_s": 10.0, "out_per_s": 0.0,
                             "connections": 0},
                            {"door": "kafka", "in_per_s": 0.0, "out_per_s": 0.0,
                             "connections": 3}]
    assert doc["topics"] == [{"topic": "a", "in_per_s": 10.0, "out_per_s": 0.0}]
    assert doc["groups"] == [{"group": "g", "lag": 9}] and doc["timers_pending"] == 7


def test_top_against_a_broker(start_http_broker) -> None:
    b = start_http_broker("http")
    url = f"http://{b.address('http')}"
    stop = threading.Event()

    def produce() -> None:
        with httpx.Client(base_url=url, timeout=10) as c:
            while not stop.is_set():
                c.post("/v1/topics/live/messages", json={"body": "x"})
                time.sleep(0.01)

    t = threading.Thread(target=produce)
    t.start()
    runner = CliRunner()
    try:
        r = runner.invoke(main, ["top", "--url", url, "-n", "3", "-i", "0.3"],
                          catch_exceptions=False)
    finally:
        stop.set()
        t.join()
    assert r.exit_code == 0, r.output
    docs = [json.loads(x) for x in r.stdout.splitlines()]
    assert len(docs) == 2, "piped: one JSON line per refresh after the first scrape"
    assert any(d["door"] == "http" and d["in_per_s"] > 0 for doc in docs for d in doc["doors"])
    assert any(t["topic"] == "live" for doc in docs for t in doc["topics"])
    for doc in docs:
        assert isinstance(doc["timers_pending"], int)
        assert all(isinstance(d["connections"], int) for d in doc["doors"])
    table = runner.invoke(main, ["top", "--url", url, "--once", "-i", "0.1", "-o", "table"])
    assert table.exit_code == 0, table.output
    assert "DOOR" in table.stdout and "http" in table.stdout and "live" in table.stdout
    gone = runner.invoke(main, ["top", "--url", "http://127.0.0.1:1", "--once"])
    assert gone.exit_code == 1 and "cannot reach" in gone.output
    assert "Traceback" not in gone.output
    wrong = runner.invoke(main, ["top", "--url", url + "/v1/nothing", "--once"])
    assert wrong.exit_code == 1 and "404" in wrong.output
