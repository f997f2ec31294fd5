"""A page of another origin as a client of the HTTP door, in headless Chromium: it produces
with fetch and receives the message through EventSource (the door's SSE stream) when its
origin is allowed; from an origin that is not, the browser refuses it and nothing is stored."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

TIMEOUT_MS = 20_000

PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>app</title></head>
<body><pre id="log"></pre><script>
const broker = %(broker)s;
const log = (line) => { document.getElementById("log").textContent += line + "\\n"; };
function follow() {  // the door's SSE stream of the topic, from its first message
  const stream = new EventSource(broker + "/v1/topics/web/stream?from=earliest");
  stream.addEventListener("message", (e) => { log("received: " + JSON.parse(e.data).body); stream.close(); });
  stream.onerror = () => { log("stream error"); stream.close(); };
}
fetch(broker + "/v1/topics/web/messages", {method: "POST",
      headers: {"content-type": "application/json"},
      body: JSON.stringify({body: "hello from " + location.origin})})
  .then((r) => r.json().then((doc) => log("produced: " + r.status + " " + doc.ids[0])))
  .catch((e) => log("fetch refused: " + e.name))
  .finally(follow);
</script></body></html>"""


class PageServer:
    """Another origin: a tiny HTTP server of one page that calls the broker at
    ``broker_url`` (set once the broker runs: the broker needs this server's port
    for its allowed origins first)."""

    def __init__(self) -> None:
        self.broker_url = ""
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = (PAGE % {"broker": json.dumps(outer.broker_url)}).encode()
                self.send_response(200)
                self.send_header("content-type", "text/html; charset=utf-8")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]


@pytest.fixture
def pages() -> Iterator[PageServer]:
    ps = PageServer()
    thread = threading.Thread(target=ps.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield ps
    finally:
        ps.server.shutdown()
        ps.server.server_close()


@pytest.fixture
def broker(start_broker, tmp_path, pages):
    """A broker whose HTTP door allows the page server's origin (as 127.0.0.1 only)."""
    conf = tmp_path / "ferrymq.toml"
    conf.write_text("[http]\ncors_origins = %s\n" % json.dumps([f"http://127.0.0.1:{pages.port}"]))
    b = start_broker("http", extra_args=("--config", str(conf), "--segment-size", str(32 << 20)))
    pages.broker_url = f"http://{b.address('http')}"
    return b


def log_lines(page, until: str) -> list[str]:
    page.wait_for_function("text => document.getElementById('log').textContent.includes(text)",
                           arg=until, timeout=TIMEOUT_MS)
    return page.inner_text("#log").splitlines()


def test_a_page_of_an_allowed_origin_produces_and_streams(browser, broker, pages) -> None:
    page = browser.new_page()
    page.goto(f"http://127.0.0.1:{pages.port}/")
    lines = log_lines(page, "received:")
    origin = f"http://127.0.0.1:{pages.port}"
    assert f"received: hello from {origin}" in lines
    [produced] = [x for x in log_lines(page, "produced:") if x.startswith("produced:")]
    assert produced.startswith("produced: 201 ")
    assert "stream error" not in lines
    assert browser.problems == []
    mid = produced.split()[2]
    with httpx.Client(base_url=pages.broker_url) as http:
        assert http.get(f"/v1/messages/{mid}").json()["body"] == f"hello from {origin}"


def test_the_same_page_from_another_origin_is_refused(browser, broker, pages) -> None:
    page = browser.new_page()
    page.goto(f"http://localhost:{pages.port}/")  # localhost is not 127.0.0.1: another origin
    lines = log_lines(page, "fetch refused:")
    assert "fetch refused: TypeError" in lines
    log_lines(page, "stream error")
    assert not any(x.startswith(("produced", "received")) for x in page.inner_text("#log").splitlines())
    assert any("CORS" in p for p in browser.problems), browser.problems
    with httpx.Client(base_url=pages.broker_url) as http:
        r = http.get("/v1/topics/web")
        assert r.status_code == 404, "the refused preflight kept the POST from being sent"
