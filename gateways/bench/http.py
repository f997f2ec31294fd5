"""``ferrymq bench http``: wrk against the HTTP door and a bare peer on its stack, in one run.

The broker runs as a child process with only the HTTP door, on loopback, with
a fresh data directory (async flush unless ``--flush sync``). The peer is the
smallest server on the same stack (trio and ``protocols.http.h1``) that answers
every request with a fixed JSON body: the ceiling of this stack on this machine, measured by the same wrk in
the same run. Each scenario reports wrk's requests per second, messages per
second, latency percentiles, and the server's CPU per request (user + system
time of the server process over the run, from /proc): on a shared machine
CPU per request is steadier than wall-clock rates. Needs Debian's ``wrk``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import click

from .report import print_table

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
BODY_BYTES = 100

LUA_POST = """
wrk.method = "POST"
wrk.headers["Content-Type"] = "{ctype}"
wrk.body = {body}
"""

LUA_CONSUME = """
-- Pop with long polling; every answer's receipts are acked by the next request
-- this thread sends (POST /v1/acks), so the in-flight windows never fill.
local threads = {{}}
function setup(thread) table.insert(threads, thread) end
function init(args) msgs = 0; pending = {{}} end
function request()
  if #pending > 0 then
    local body = '{{"receipts":["' .. table.concat(pending, '","') .. '"]}}'
    pending = {{}}
    return wrk.format("POST", "/v1/acks", {{["Content-Type"] = "application/json"}}, body)
  end
  return wrk.format("GET", "{path}")
end
function response(status, headers, body)
  for r in string.gmatch(body, '"receipt":"([^"]+)"') do
    table.insert(pending, r)
    msgs = msgs + 1
  end
end
function done(summary, latency, requests)
  local total = 0
  for _, t in ipairs(threads) do total = total + t:get("msgs") end
  io.write(string.format("MESSAGES %d\\n", total))
end
"""


@dataclass(frozen=True, slots=True)
class Row:
    scenario: str
    requests_per_s: float
    messages_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_us_per_request: float
    cpu_us_per_message: float  # the server's CPU over the messages moved (pop + ack: both)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise click.ClickException(f"server exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise click.ClickException(f"nothing listens on {port} after {timeout}s")


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


@contextlib.contextmanager
def _process(args: list[str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_port(port, proc)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _latency_ms(text: str, pct: str) -> float:
    m = re.search(rf"^\s+{pct}%\s+([\d.]+)(us|ms|s)\s*$", text, re.M)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def _wrk(url: str, pid: int, seconds: float, connections: int, script: str | None,
         name: str, per_request: int = 1) -> Row:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise click.ClickException("wrk is not installed (Debian package wrk)")
    args = [wrk, "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "--timeout", "30s"]
    if script:
        args += ["-s", script]
    cpu0 = _cpu_seconds(pid)
    out = subprocess.run([*args, url], capture_output=True, text=True, timeout=seconds + 60)
    cpu = _cpu_seconds(pid) - cpu0
    text = out.stdout
    rps_m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total_m = re.search(r"(\d+) requests in", text)
    if out.returncode != 0 or not rps_m or not total_m:
        raise click.ClickException(f"wrk failed:\n{text}\n{out.stderr}")
    rps, total = float(rps_m.group(1)), int(total_m.group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors:
        raise click.ClickException(f"{name}: {errors.group(1)} error responses\n{text}")
    counted = re.search(r"MESSAGES (\d+)", text)
    if counted:
        elapsed = total / rps if rps else float(seconds)
        moved = int(counted.group(1))
        msgs = moved / elapsed
    else:
        moved = total * per_request
        msgs = rps * per_request
    return Row(name, rps, msgs, _latency_ms(text, "50"), _latency_ms(text, "99"),
               cpu / total * 1e6 if total else float("nan"),
               cpu / moved * 1e6 if moved else float("nan"))


def _post(url: str, body: bytes, ctype: str = "application/json") -> dict[str, object]:
    import urllib.request

    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"content-type": ctype})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read() or b"{}")


def run_bench(seconds: float, connections: int, batch: int, flush: str) -> list[Row]:
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="ferrymq-bench-http-") as tmp:
        scripts = {}
        single = json.dumps({"body": "x" * BODY_BYTES})
        many = json.dumps({"messages": [{"body": "x" * BODY_BYTES}] * batch})
        ndjson = "\n".join([json.dumps({"body": "x" * BODY_BYTES})] * batch) + "\n"
        for name, ctype, body in (("single", "application/json", single),
                                  ("batch", "application/json", many),
                                  ("ndjson", "application/x-ndjson", ndjson)):
            path = os.path.join(tmp, f"{name}.lua")
            with open(path, "w") as f:
                f.write(LUA_POST.format(ctype=ctype, body=json.dumps(body)))
            scripts[name] = path
        consume_path = "/v1/topics/bench/messages?group=bench&max=32&wait=1&invisible=60"
        consume = os.path.join(tmp, "consume.lua")
        with open(consume, "w") as f:
            f.write(LUA_CONSUME.format(path=consume_path))

        peer_port = _free_port()
        with _process([sys.executable, "-m", "ferrymq.gateways.bench.http_peer",
                       str(peer_port)], peer_port) as peer:
            rows.append(_wrk(f"http://127.0.0.1:{peer_port}/", peer.pid, seconds, connections,
                             None, "peer: bare h1 server, GET"))
        port = _free_port()
        args = [sys.executable, "-m", "ferrymq.gateways", "serve", "--data-dir",
                os.path.join(tmp, "data"), "--host", "127.0.0.1", "--flush", flush,
                "--http-port", str(port)]
        args += [f"--{d}-port=0" for d in ("namesrv", "remoting", "kafka", "mqtt")]
        with _process(args, port) as broker:
            base = f"http://127.0.0.1:{port}"
            _post(f"{base}/v1/topics", json.dumps({"name": "bench", "queues": 4}).encode())
            rows.append(_wrk(f"{base}/healthz", broker.pid, seconds, connections, None,
                             "ferrymq GET /healthz"))
            rows.append(_wrk(f"{base}/v1/topics/bench/messages", broker.pid, seconds,
                             connections, scripts["single"], "produce, 1 message a request"))
            rows.append(_wrk(f"{base}/v1/topics/bench/messages", broker.pid, seconds,
                             max(2, connections // 4), scripts["batch"],
                             f"produce, JSON batch of {batch}", batch))
            rows.append(_wrk(f"{base}/v1/topics/bench/messages", broker.pid, seconds,
                             max(2, connections // 4), scripts["ndjson"],
                             f"produce, NDJSON batch of {batch}", batch))
            # Long-poll consume of what the produce scenarios left: pop up to 32
            # at a time waiting up to 1 s, each answer acked by the next request.
            rows.append(_wrk(f"{base}{consume_path}", broker.pid, seconds, connections,
                             consume, "consume: pop 32 (long poll) + ack"))
    return rows


def print_rows(rows: list[Row], as_json: bool) -> None:
    cols = ["scenario", "requests/s", "messages/s", "p50 ms", "p99 ms", "server CPU µs/request",
            "server CPU µs/message"]
    print_table("ferrymq bench http", cols,
                [[r.scenario, r.requests_per_s, r.messages_per_s, r.p50_ms, r.p99_ms,
                  r.cpu_us_per_request, r.cpu_us_per_message] for r in rows], as_json=as_json)


@click.command("http")
@click.option("--seconds", default=5, type=click.IntRange(1, 600), show_default=True,
              help="Duration of each scenario.")
@click.option("--connections", default=16, show_default=True,
              help="wrk connections (batches use a quarter).")
@click.option("--batch", default=1000, show_default=True, help="Messages per batch request.")
@click.option("--flush", type=click.Choice(["async", "sync"]), default="async",
              show_default=True)
@click.option("--json", "as_json", is_flag=True, help="JSON lines instead of a table.")
def http_bench(seconds: int, connections: int, batch: int, flush: str, as_json: bool) -> None:
    """wrk against the HTTP door and a bare peer on the same stack: produce, batch produce, long-poll
    consume; requests/s, messages/s, latency and server CPU per request."""
    print_rows(run_bench(seconds, connections, batch, flush), as_json)


COMMANDS = (http_bench,)
