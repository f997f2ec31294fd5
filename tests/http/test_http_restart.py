"""Pop state through a broker SIGKILL: acks stay acked, leases keep their deadlines,
receipts issued before the crash still ack, un-acked messages come back."""

from __future__ import annotations

import httpx

from waiting import wait_until


def test_pop_state_survives_sigkill(start_http_broker) -> None:
    b = start_http_broker("http")
    url = f"http://{b.address('http')}"
    with httpx.Client(base_url=url, timeout=10) as c:
        c.post("/v1/topics", json={"name": "jobs", "queues": 1})
        c.post("/v1/topics/jobs/messages", json={"messages": [{"body": f"j{i}"}
                                                               for i in range(3)]})
        popped = c.get("/v1/topics/jobs/messages",
                       params={"group": "w", "max": 3, "invisible": 2}).json()["messages"]
        assert [m["body"] for m in popped] == ["j0", "j1", "j2"]
        assert c.delete(f"/v1/topics/jobs/messages/{popped[0]['receipt']}").status_code == 204
        renewed = c.post(f"/v1/topics/jobs/messages/{popped[1]['receipt']}/invisible-time",
                         json={"invisible": 120}).json()
    b.kill()
    b.start()
    with httpx.Client(base_url=url, timeout=10) as c:
        r = c.delete(f"/v1/topics/jobs/messages/{popped[0]['receipt']}")
        assert r.status_code == 410, "acked before the crash, acked after it"
        # the 2 s lease of j2 runs out (polled: a pop that finds it takes it)
        again = wait_until(lambda: c.get("/v1/topics/jobs/messages", params={
            "group": "w", "max": 3, "wait": 1}).json()["messages"], what="j2's lease expired")
        assert [(m["body"], m["reconsume_times"]) for m in again] == [("j2", 1)]
        r = c.post("/v1/acks", json={"receipts": [renewed["receipt"], again[0]["receipt"]]})
        assert r.status_code == 204, r.text
        lag = c.get("/v1/groups/w").json()["lag"]
        assert lag == 0
