"""The real curl binary against a real broker: produce JSON and raw, batches, long-polling
consume, acks, and server-sent events with ``curl -N``."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time

import pytest

from waiting import wait_until

CURL = shutil.which("curl")


def curl(*args: str, timeout: float = 30) -> tuple[int, str]:
    """Run curl; (HTTP status, body)."""
    assert CURL, "curl is required (scripts/test installs it)"
    out = subprocess.run([CURL, "-sS", "-w", "\n%{http_code}", *args], capture_output=True,
                         text=True, timeout=timeout)
    assert out.returncode == 0, out.stderr
    body, _, status = out.stdout.rpartition("\n")
    return int(status), body


@pytest.fixture
def base(start_http_broker) -> str:
    return f"http://{start_http_broker('http').address('http')}"


def test_produce_json_and_raw_then_consume_and_ack(base: str) -> None:
    status, body = curl("-X", "POST", f"{base}/v1/topics/t/messages",
                        "-H", "content-type: application/json",
                        "-d", '{"body": {"id": 1}, "key": "k-1", "tag": "json"}')
    assert status == 201 and json.loads(body)["count"] == 1
    status, _ = curl("-X", "POST", f"{base}/v1/topics/t/messages", "-H", "FerryMQ-Tag: raw",
                     "-H", "content-type: application/octet-stream",
                     "--data-binary", "raw \x01 bytes")
    assert status == 201
    status, body = curl(f"{base}/v1/topics/t/messages?group=g&max=10&wait=2")
    msgs = json.loads(body)["messages"]
    assert sorted((m.get("tag"), m.get("body")) for m in msgs) == [
        ("json", {"id": 1}), ("raw", "raw \x01 bytes")]
    for m in msgs:
        status, _ = curl("-X", "DELETE", f"{base}/v1/topics/t/messages/{m['receipt']}")
        assert status == 204
    status, body = curl(f"{base}/v1/topics/t/messages?group=g&wait=0.5")
    assert json.loads(body) == {"messages": []}


def test_batch_and_ndjson(base: str, tmp_path) -> None:
    batch = {"messages": [{"body": f"b{i}"} for i in range(100)], "queue": 0}
    status, body = curl("-X", "POST", f"{base}/v1/topics/b/messages",
                        "-H", "content-type: application/json", "-d", json.dumps(batch))
    assert status == 201 and json.loads(body)["count"] == 100
    nd = tmp_path / "batch.ndjson"
    nd.write_text("".join(json.dumps({"body": f"n{i}", "queue": 1}) + "\n" for i in range(50)))
    status, body = curl("-X", "POST", f"{base}/v1/topics/b/messages",
                        "-H", "content-type: application/x-ndjson", "--data-binary", f"@{nd}")
    doc = json.loads(body)
    assert status == 201 and (doc["queue"], doc["count"]) == (1, 50)
    status, body = curl(f"{base}/v1/topics/b/queues/1/messages?offset=48")
    assert [m["body"] for m in json.loads(body)["messages"]] == ["n48", "n49"]


def test_long_poll_answers_when_a_message_is_produced(base: str) -> None:
    curl("-X", "POST", f"{base}/v1/topics", "-H", "content-type: application/json",
         "-d", '{"name": "lp", "queues": 2}')
    result: dict[str, object] = {}

    def poll() -> None:
        t0 = time.monotonic()
        result["answer"] = curl(f"{base}/v1/topics/lp/messages?group=g&wait=20")
        result["seconds"] = time.monotonic() - t0

    t = threading.Thread(target=poll)
    t.start()
    wait_until(lambda: 'ferrymq_long_polls{protocol="http"} 1\n' in curl(f"{base}/metrics")[1],
               what="the long poll waiting (the door's own gauge)")
    curl("-X", "POST", f"{base}/v1/topics/lp/messages", "-H", "content-type: text/plain",
         "--data-binary", "wake up")
    t.join(30)
    status, body = result["answer"]  # type: ignore[misc]
    assert status == 200
    assert [m["body"] for m in json.loads(body)["messages"]] == ["wake up"]
    assert result["seconds"] < 10  # type: ignore[operator]


def test_server_sent_events_with_curl_n(base: str) -> None:
    for i in range(3):
        curl("-X", "POST", f"{base}/v1/topics/s/messages", "-H", "content-type: application/json",
             "-d", json.dumps({"body": f"e{i}", "queue": 0}))
    assert CURL
    proc = subprocess.Popen([CURL, "-sS", "-N", f"{base}/v1/topics/s/stream?queue=0&from=earliest"],
                            stdout=subprocess.PIPE, text=True)
    try:
        events, data = [], []
        deadline = time.monotonic() + 10
        assert proc.stdout is not None
        while len(events) < 4 and time.monotonic() < deadline:
            line = proc.stdout.readline().rstrip("\n")
            if line.startswith("id: "):
                ids = line[4:]
            elif line.startswith("data: "):
                data.append(json.loads(line[6:])["body"])
                events.append(ids)
            if len(events) == 3:
                curl("-X", "POST", f"{base}/v1/topics/s/messages",
                     "-H", "content-type: application/json",
                     "-d", json.dumps({"body": "live", "queue": 0}))
                events.append("sent")
        while len(data) < 4 and time.monotonic() < deadline:
            line = proc.stdout.readline().rstrip("\n")
            if line.startswith("data: "):
                data.append(json.loads(line[6:])["body"])
    finally:
        proc.terminate()
        proc.wait(10)
    assert events[:3] == ["0", "1", "2"]
    assert data == ["e0", "e1", "e2", "live"]
    out = subprocess.run([CURL, "-sS", "-N", "--max-time", "1", "-H", "Last-Event-ID: 2",
                          f"{base}/v1/topics/s/stream?queue=0"], capture_output=True, text=True)
    assert out.returncode == 28  # curl's own timeout: the stream stays open
    assert [json.loads(x[6:])["body"] for x in out.stdout.splitlines()
            if x.startswith("data: ")] == ["live"]


def test_errors_are_problem_json_for_curl(base: str) -> None:
    out = subprocess.run([CURL, "-sS", "-i", "-X", "POST", f"{base}/v1/topics/t/messages",
                          "-H", "content-type: application/json", "-d", "{broken"],
                         capture_output=True)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["type"] == "urn:ferrymq:problem:malformed_json"
