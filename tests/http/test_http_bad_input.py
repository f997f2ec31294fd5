"""Garbage, giants, slow clients, forgeries and unknowns against a real broker process: each
gets a problem+json with the right status, and the broker keeps serving everyone else."""

from __future__ import annotations

import re
import socket
import time

import httpx
import pytest

from waiting import wait_until


def config_args(tmp_path, text: str) -> tuple[str, ...]:
    path = tmp_path / "http.toml"
    path.write_text(text)
    return ("--config", str(path))


def raw_exchange(address: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send bytes on a fresh connection; everything the server answers until it closes."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            out += chunk
        return out


def assert_problem(r: httpx.Response, status: int, code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    doc = r.json()
    assert doc["type"] == f"urn:ferrymq:problem:{code}"
    assert (doc["status"], doc["code"]) == (status, code)
    assert doc["title"]


@pytest.fixture
def broker(start_http_broker, tmp_path):
    b = start_http_broker("http", extra_args=config_args(tmp_path, (
        "[http]\nmax_body_bytes = 65536\nheader_timeout_s = 1.0\nbody_timeout_s = 1.0\n"
        "max_long_polls_per_group = 2\nmax_long_polls = 3\n")))
    with httpx.Client(base_url=f"http://{b.address('http')}", timeout=10) as c:
        yield b, c


def wait_for_long_polls(c: httpx.Client, n: int) -> None:
    """Until the door reports ``n`` long polls waiting (its own gauge)."""
    deadline = time.monotonic() + 10
    while f'ferrymq_long_polls{{protocol="http"}} {n}\n' not in c.get("/metrics").text:
        assert time.monotonic() < deadline, f"never {n} long polls"
        time.sleep(0.02)


def still_serving(c: httpx.Client) -> None:
    r = c.post("/v1/topics/alive/messages", json={"body": "still here"})
    assert r.status_code == 201


def test_malformed_json_and_wrong_shapes(broker) -> None:
    _, c = broker
    for body in (b"{not json", b"\xff\xfe", b"[1,2"):
        r = c.post("/v1/topics/t/messages", content=body,
                   headers={"content-type": "application/json"})
        assert_problem(r, 400, "malformed_json")
    for doc in ([1, 2], {"bodyy": "x"}, {"messages": []}, {"messages": [{"body": 1}], "x": 1},
                {"body": "x", "properties": {"a": 1}}, {"body": "x", "queue": "1"},
                {"body": "x", "tag": "a||b"}, {"body": "x", "key": "has space"}):
        assert_problem(c.post("/v1/topics/t/messages", json=doc), 400, "invalid_body")
    r = c.post("/v1/topics/t/messages", content=b'{"body":"x"}\nnot json\n',
               headers={"content-type": "application/x-ndjson"})
    assert_problem(r, 400, "malformed_json")
    still_serving(c)


def test_bad_metadata_headers_on_a_raw_body(broker) -> None:
    _, c = broker
    for headers in ({"ferrymq-queue": "one"}, {"ferrymq-key": ","}, {"ferrymq-delay-ms": "-1"},
                    {"ferrymq-deliver-at": "soon"}, {"ferrymq-tag": "a||b"},
                    {"ferrymq-property-x": "%01"}):
        r = c.post("/v1/topics/t/messages", content=b"raw",
                   headers={"content-type": "text/plain", **headers})
        assert r.status_code == 400, headers
        assert r.json()["code"] in ("invalid_parameter", "invalid_body"), headers
    still_serving(c)


def test_bad_base64(broker) -> None:
    _, c = broker
    for bad in ("not base64!", "QUJ", 17):
        assert_problem(c.post("/v1/topics/t/messages", json={"body_base64": bad}), 400,
                       "invalid_base64")


def test_wrong_content_types(broker) -> None:
    _, c = broker
    r = c.post("/v1/acks", content=b"receipts", headers={"content-type": "text/plain"})
    assert_problem(r, 415, "unsupported_media_type")
    r = c.post("/v1/topics", content=b"name=x",
               headers={"content-type": "application/x-www-form-urlencoded"})
    assert_problem(r, 415, "unsupported_media_type")
    r = c.get("/v1/topics/t/messages", params={"group": "g"}, headers={"accept": "text/html"})
    c.post("/v1/topics/t/messages", json={"body": "x"})
    r = c.get("/v1/topics/t/messages", params={"group": "g"}, headers={"accept": "text/html"})
    assert_problem(r, 406, "not_acceptable")


def test_giant_bodies_are_refused_before_or_while_reading(broker) -> None:
    b, c = broker
    r = c.post("/v1/topics/t/messages", content=b"x" * 200_000)
    assert_problem(r, 413, "body_too_large")

    def chunks():
        for _ in range(40):
            yield b"y" * 4096

    r = c.post("/v1/topics/t/messages", content=chunks())
    assert_problem(r, 413, "body_too_large")
    # Content-Length announcing a giant: refused from the head alone.
    out = raw_exchange(b.address("http"), b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\n"
                                         b"Content-Length: 99999999999\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 413 ")
    still_serving(c)


def test_message_larger_than_the_broker_allows(start_http_broker, tmp_path) -> None:
    b = start_http_broker("http", extra_args=config_args(tmp_path, "max_message_size = 1000\n"
                                                              "segment_size = 1048576\n"))
    with httpx.Client(base_url=f"http://{b.address('http')}") as c:
        r = c.post("/v1/topics/t/messages", json={"body": "x" * 2000})
        assert_problem(r, 413, "message_too_large")


def test_unknown_topics_groups_routes_and_methods(start_http_broker, tmp_path) -> None:
    b = start_http_broker("http", extra_args=config_args(tmp_path, "auto_create_topics = false\n"))
    with httpx.Client(base_url=f"http://{b.address('http')}") as c:
        assert_problem(c.post("/v1/topics/nope/messages", json={"body": "x"}), 404,
                       "topic_not_found")
        assert_problem(c.get("/v1/topics/nope/messages", params={"group": "g"}), 404,
                       "topic_not_found")
        assert_problem(c.get("/v1/topics/nope"), 404, "topic_not_found")
        assert_problem(c.get("/v1/groups/nobody"), 404, "group_not_found")
        assert_problem(c.get("/v1/nothing/here"), 404, "not_found")
        assert_problem(c.post("/v1/topics/bad name!/messages", json={"body": "x"}), 400,
                       "invalid_parameter")
        r = c.put("/v1/topics")
        assert_problem(r, 405, "method_not_allowed")
        assert r.headers["allow"] == "GET, HEAD, POST"
        assert_problem(c.get("/v1/topics/t/messages"), 400, "invalid_parameter")  # no group
        assert_problem(c.get("/v1/topics/t/messages", params={"group": "g", "max": "0"}), 400,
                       "invalid_parameter")
        assert_problem(c.get("/v1/topics/t/messages?group=g&group=h"), 400, "invalid_parameter")


def test_forged_and_stale_receipts(broker) -> None:
    _, c = broker
    c.post("/v1/topics/t/messages", json={"body": "x"})
    [m] = c.get("/v1/topics/t/messages", params={"group": "g"}).json()["messages"]
    receipt = m["receipt"]
    forged = receipt[:-3] + ("AAA" if not receipt.endswith("AAA") else "BBB")
    assert_problem(c.delete(f"/v1/topics/t/messages/{forged}"), 400, "invalid_receipt")
    assert_problem(c.delete("/v1/topics/t/messages/%FF%FE"), 400, "invalid_parameter")
    assert_problem(c.delete("/v1/topics/t/messages/garbage"), 400, "invalid_receipt")
    assert_problem(c.delete(f"/v1/topics/other/messages/{receipt}"), 400, "invalid_parameter")
    r = c.post("/v1/acks", json={"receipts": [forged, "x", receipt]})
    assert r.status_code == 200
    assert [f["problem"]["code"] for f in r.json()["failed"]] == ["invalid_receipt",
                                                                  "invalid_receipt"]
    assert_problem(c.delete(f"/v1/topics/t/messages/{receipt}"), 410, "receipt_stale")
    assert_problem(c.post(f"/v1/topics/t/messages/{receipt}/invisible-time",
                          json={"invisible": 5}), 410, "receipt_stale")
    for body in ({"receipts": []}, {"receipts": "x"}, {"receipt": ["x"]}, [1]):
        assert_problem(c.post("/v1/acks", json=body), 400, "invalid_body")


def test_garbage_bytes_get_400_and_a_closed_connection(broker) -> None:
    b, c = broker
    for junk, status in (
            (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n", 400),
            (b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n", 400),
            (b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n", 505)):
        out = raw_exchange(b.address("http"), junk)
        assert out.startswith(b"HTTP/1.1 %d " % status), out[:100]
        assert b"application/problem+json" in out
    still_serving(c)


def test_smuggling_shapes_get_400_and_a_closed_connection(broker) -> None:
    b, c = broker
    for junk in (b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /healthz HTTP/1.1\r\n\r\n",
                 b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                 b"Content-Length: 30\r\n\r\n{}GET /healthz HTTP/1.1\r\n\r\n"):
        out = raw_exchange(b.address("http"), junk)
        assert out.startswith(b"HTTP/1.1 400 ") and out.count(b"HTTP/1.1") == 1, out
        assert b"connection: close" in out
    still_serving(c)


def test_wire_level_http_pipelining_chunked_continue_and_1_0(broker) -> None:
    b, c = broker
    address = b.address("http")
    body = b'{"body": "piped"}'
    out = raw_exchange(address, (
        b"POST /v1/topics/wire/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        + b"POST /v1/topics/wire/messages HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
        b"\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"bod\r\nc\r\ny\": \"chunk\"}\r\n0\r\n\r\n"
        + b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
    assert re.findall(rb"HTTP/1.1 (\d{3}) ", out) == [b"201", b"201", b"200"], out
    assert out.rstrip().endswith(b"}") and b"connection: close" in out
    # HTTP/1.0 without keep-alive: one answer, then the server closes.
    out = raw_exchange(address, b"GET /healthz HTTP/1.0\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 200 ") and b"connection: close" in out
    # Expect: 100-continue: the interim answer comes before the body is sent.
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=5) as s:
        s.sendall(b"POST /v1/topics/wire/messages HTTP/1.1\r\nHost: x\r\n"
                  b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body))
        assert s.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(body)
        assert s.recv(65536).startswith(b"HTTP/1.1 201 ")
    got = c.get("/v1/topics/wire/messages", params={"group": "g", "max": 10}).json()
    assert sorted(m["body"] for m in got["messages"]) == ["chunk", "piped", "piped"]


def test_oversized_headers_get_431(broker) -> None:
    b, c = broker
    out = raw_exchange(b.address("http"), b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: "
                       + b"a" * 40_000 + b"\r\n\r\n")
    assert out.startswith(b"HTTP/1.1 431 ")
    still_serving(c)


def test_slow_clients_are_cut_off(broker) -> None:
    b, c = broker
    host, port = b.address("http").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\n")  # head never ends
        still_serving(c)  # the slow client holds nobody up
        t0 = time.monotonic()
        out = slow.recv(65536)
        assert out.startswith(b"HTTP/1.1 408 "), out[:80]
        assert time.monotonic() - t0 < 5
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        slow.sendall(b"POST /v1/topics/t/messages HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Length: 100\r\n\r\n{\"body\"")  # body never completes
        assert slow.recv(65536).startswith(b"HTTP/1.1 408 ")


def test_long_polls_are_bounded_per_group_and_in_total(broker) -> None:
    import threading

    b, c = broker
    c.post("/v1/topics", json={"name": "lp", "queues": 1})
    results: list[int] = []

    def poll(group: str) -> None:
        with httpx.Client(base_url=f"http://{b.address('http')}", timeout=10) as cc:
            results.append(cc.get("/v1/topics/lp/messages",
                                  params={"group": group, "wait": 3}).status_code)

    threads = [threading.Thread(target=poll, args=(g,)) for g in ("a", "a", "b")]
    for t in threads:
        t.start()
    wait_for_long_polls(c, 3)
    r = c.get("/v1/topics/lp/messages", params={"group": "a", "wait": 1})
    assert r.status_code == 429 and r.headers["retry-after"] == "1"
    assert_problem(r, 429, "too_many_long_polls")
    assert_problem(c.get("/v1/topics/lp/messages", params={"group": "c", "wait": 1}), 429,
                   "too_many_long_polls")
    assert c.get("/v1/topics/lp/messages", params={"group": "c"}).status_code == 200, \
        "a poll that does not wait is not limited"
    for t in threads:
        t.join()
    assert results == [200, 200, 200]


def test_a_client_leaving_a_long_poll_frees_its_slot(broker) -> None:
    b, c = broker
    c.post("/v1/topics", json={"name": "lp", "queues": 1})
    for _ in range(5):  # more than the limits, one after another
        raw_exchange(b.address("http"), b"GET /v1/topics/lp/messages?group=a&wait=20 HTTP/1.1\r\n"
                     b"Host: x\r\n\r\n", timeout=0.3)
    wait_for_long_polls(c, 0)
    r = c.get("/v1/topics/lp/messages", params={"group": "a", "wait": 0.2})
    assert r.status_code == 200


def test_bearer_token_auth(start_http_broker, tmp_path) -> None:
    b = start_http_broker("http", extra_args=config_args(
        tmp_path, '[http]\nauth_tokens = ["s3cret", "other"]\n'))
    with httpx.Client(base_url=f"http://{b.address('http')}") as c:
        r = c.post("/v1/topics/t/messages", json={"body": "x"})
        assert_problem(r, 401, "unauthorized")
        assert r.headers["www-authenticate"].startswith("Bearer")
        r = c.get("/v1/topics", headers={"authorization": "Bearer wrong"})
        assert_problem(r, 401, "unauthorized")
        r = c.post("/v1/topics/t/messages", json={"body": "x"},
                   headers={"authorization": "Bearer s3cret"})
        assert r.status_code == 201
        assert c.get("/healthz").status_code == 200, "probes stay open"
        assert c.get("/openapi.json").json()["components"]["securitySchemes"]["bearer"]


@pytest.mark.parametrize("text, message", [
    ("[http]\nmax_body_bytes = -1\n", "max_body_bytes"),
    ("[http]\nmax_body_bytes = 'big'\n", "max_body_bytes"),
    ("[http]\nmax_bodybytes = 1\n", "unknown option"),
])
def test_bad_http_options_stop_the_server_with_a_message(start_http_broker, tmp_path, text,
                                                         message) -> None:
    with pytest.raises(RuntimeError, match=message):
        start_http_broker("http", extra_args=config_args(tmp_path, text))


def test_connections_past_the_limit_get_503(start_http_broker, tmp_path) -> None:
    b = start_http_broker("http", extra_args=config_args(tmp_path, "[http]\nmax_connections = 2\n"))
    host, port = b.address("http").split(":")
    held = [socket.create_connection((host, int(port)), timeout=5) for _ in range(2)]
    try:
        # the door accepts the two held connections in its own time: until it has,
        # a third one is still served
        out = wait_until(lambda: (o := raw_exchange(
            b.address("http"), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")).startswith(
                b"HTTP/1.1 503 ") and o, what="the connection cap reached")
        assert b"too_many_connections" in out
    finally:
        for s in held:
            s.close()
    # and once they are closed (the door notices in its own time) it serves again
    wait_until(lambda: raw_exchange(b.address("http"), b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
                                    b"Connection: close\r\n\r\n").startswith(b"HTTP/1.1 200 "),
               what="served again")


def test_a_client_that_stops_reading_is_disconnected(start_http_broker, tmp_path) -> None:
    b = start_http_broker("http", extra_args=config_args(tmp_path, "[http]\nsend_timeout_s = 1\n"))
    with httpx.Client(base_url=f"http://{b.address('http')}", timeout=30) as c:
        c.post("/v1/topics", json={"name": "big", "queues": 1})
        body = "x" * 60_000
        for _ in range(4):
            c.post("/v1/topics/big/messages", json={"messages": [{"body": body}] * 50,
                                                    "queue": 0})
        host, port = b.address("http").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as lazy:
            lazy.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            lazy.sendall(b"GET /v1/topics/big/queues/0/messages?offset=0&max=200 HTTP/1.1\r\n"
                         b"Host: x\r\n\r\n")
            time.sleep(3)  # never read: the 4 MB answer cannot be written
            still_serving(c)
            data = b""
            while True:
                try:
                    chunk = lazy.recv(1 << 20)
                except (ConnectionResetError, TimeoutError):
                    break
                if not chunk:
                    break
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length")))
        assert length > 3_000_000
        assert len(body) < length, "the server gave up on the reader and closed"
