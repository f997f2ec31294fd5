"""`ferrymq serve` under `ulimit -n 1024` keeps serving with 40,000 queues holding data
(issue 10: every queue's files used to hold descriptors for good, and past about 450
queues accept, checkpoints and puts failed with EMFILE)."""

from __future__ import annotations

import os

import httpx
import trio

NOFILE = (1024, 1024)
TOPICS = 10_000
"""Topics of 4 queues, each queue holding data: the issue's 40,000 queues (about a minute
here; 2,000 topics take 15 s)."""
CONCURRENCY = 8


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def metric(text: str, name: str) -> float:
    (line,) = [x for x in text.splitlines() if x.startswith(name + " ")]
    return float(line.split()[-1])


async def produce_everywhere(base: str) -> None:
    todo = [(t, q) for t in range(TOPICS) for q in range(4)]

    async def worker(client: httpx.AsyncClient) -> None:
        while todo:
            t, q = todo.pop()
            r = await client.post(f"/v1/topics/dev{t}/messages",
                                  json={"body": f"dev{t}:{q}", "queue": q})
            assert r.status_code == 201, r.text

    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        # queue 0 of each topic first, one at a time: the topic is created once
        for t in range(TOPICS):
            todo.remove((t, 0))
            r = await client.post(f"/v1/topics/dev{t}/messages", json={"body": f"dev{t}:0",
                                                                        "queue": 0})
            assert r.status_code == 201, r.text
        async with trio.open_nursery() as n:
            for _ in range(CONCURRENCY):
                n.start_soon(worker, client)


async def read_everything(base: str, topics: range) -> list[tuple[int, int]]:
    bad = []
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        for t in topics:
            for q in range(4):
                r = await client.get(f"/v1/topics/dev{t}/queues/{q}/messages",
                                     params={"offset": 0, "max": 10})
                bodies = [m["body"] for m in r.json()["messages"]] if r.status_code == 200 else r
                if bodies != [f"dev{t}:{q}"]:
                    bad.append((t, q))
    return bad


async def test_a_broker_under_ulimit_1024_serves_thousands_of_queues(
        start_broker, tmp_path_factory) -> None:
    # Not tmp_path: a passed test's tmp_path is removed as it ends, and removing 40,000
    # queue directories can take minutes on a slow disk; the session's directory stays.
    where = tmp_path_factory.mktemp("many-queues")
    conf = where / "b.toml"  # small ConsumeQueue files: cheaper to create, same count
    conf.write_text("cq_entries_per_file = 1000\nindex_slots = 1000\nindex_entries = 4000\n")
    b = start_broker("http", nofile=NOFILE, data_dir=where / "broker",
                     extra_args=("--config", str(conf), "--log-level", "INFO"))
    base = f"http://{b.address('http')}"
    await produce_everywhere(base)
    assert open_descriptors(b.proc.pid) < NOFILE[0]
    sample = range(0, TOPICS, max(1, TOPICS // 700))
    assert await read_everything(base, sample) == [], "the queues read back"
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        text = (await client.get("/metrics")).text
        assert (await client.post("/v1/topics/late/messages", json={"body": "x"})).status_code \
            == 201, "new connections, new topics, puts: all still served"
    budget = metric(text, "ferrymq_store_open_files_budget")
    assert budget == NOFILE[0] // 4, "the automatic budget: a quarter of the limit"
    assert metric(text, 'ferrymq_store_open_files{kind="consumequeue"}') <= budget
    assert metric(text, 'ferrymq_store_file_evictions_total{kind="consumequeue"}') > 4 * TOPICS
    assert metric(text, "ferrymq_store_file_descriptors") <= budget + 2

    # A clean stop (a checkpoint through closed files) and a start under the limit, which
    # reads every queue's newest file once.
    b.stop()
    b.start(timeout=180)
    assert open_descriptors(b.proc.pid) < NOFILE[0]
    sample = range(0, TOPICS, max(1, TOPICS // 300))
    assert await read_everything(f"http://{b.address('http')}", sample) == []
    log = b.log()
    assert "Too many open files" not in log and "level=error" not in log, log[-3000:]
