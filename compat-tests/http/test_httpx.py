"""httpx, a real HTTP/1.1 client with connection pooling, against a real broker: many
concurrent keep-alive clients producing and consuming, every message acked once."""

from __future__ import annotations

import threading

import httpx


def test_concurrent_keepalive_clients_produce_and_consume_everything(start_http_broker) -> None:
    b = start_http_broker("http")
    base = f"http://{b.address('http')}"
    with httpx.Client(base_url=base) as c:
        c.post("/v1/topics", json={"name": "work", "queues": 4})

    def producer(n: int) -> None:
        with httpx.Client(base_url=base) as c:
            for i in range(50):
                r = c.post("/v1/topics/work/messages", json={"body": f"p{n}-{i}"})
                assert r.status_code == 201

    seen: list[str] = []
    lock = threading.Lock()

    def consumer() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            empty = 0
            while empty < 2:
                msgs = c.get("/v1/topics/work/messages",
                             params={"group": "g", "max": 32, "wait": 1}).json()["messages"]
                if not msgs:
                    empty += 1
                    continue
                empty = 0
                r = c.post("/v1/acks", json={"receipts": [m["receipt"] for m in msgs]})
                assert r.status_code == 204, r.text
                with lock:
                    seen.extend(m["body"] for m in msgs)

    threads = [threading.Thread(target=producer, args=(n,)) for n in range(4)]
    threads += [threading.Thread(target=consumer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(seen) == sorted(f"p{n}-{i}" for n in range(4) for i in range(50))
    with httpx.Client(base_url=base) as c:
        assert c.get("/v1/groups/g").json()["lag"] == 0
