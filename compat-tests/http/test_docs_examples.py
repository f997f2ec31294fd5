"""Every curl example of docs/http.md runs, in order, against a real broker; together
they call every route of the API (a route without an example fails this test)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.gateways import http as http_door
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.http.problems import Problem
from ferrymq.gateways.server import DoorContext

DOC = Path(__file__).resolve().parents[2] / "docs" / "http.md"


def sh_blocks() -> list[str]:
    return re.findall(r"```sh\n(.*?)```", DOC.read_text(), re.S)


def curl_calls(block: str) -> list[tuple[str, str]]:
    """(method, path) of each curl command in a shell block."""
    text = block.replace("\\\n", " ")
    calls = []
    for m in re.finditer(r"curl\b[^\n|;)]*", text):
        cmd = m.group(0)
        url = re.search(r'\$FERRYMQ(/[^"\'?\s]*)', cmd)
        if not url:
            continue
        method = re.search(r"-X\s+([A-Z]+)", cmd)
        verb = method.group(1) if method else ("POST" if re.search(r"\s(-d|--data-binary)\s",
                                                                  cmd) else "GET")
        calls.append((verb, re.sub(r"\$[A-Z]+", "x", url.group(1))))
    return calls


def test_every_route_has_a_curl_example(tmp_path) -> None:
    # The door's whole route table, as it serves it (the console's routes included).
    app, _ = http_door.build_app(DoorContext(Broker(BrokerConfig(data_dir=str(tmp_path))),
                                             "", 0, {}, ServerConfig()))
    router = app.router
    covered = set()
    for block in sh_blocks():
        for method, path in curl_calls(block):
            if method == "OPTIONS":
                continue  # answered for every path by the application (CORS), not a route
            try:
                route, _ = router.match(method, path)
            except Problem as exc:
                raise AssertionError(f"docs example {method} {path}: {exc.code}") from None
            covered.add(route.operation_id)
    assert {r.operation_id for r in router.routes} - covered == set()


def test_docs_examples_run_against_a_real_broker(start_http_broker) -> None:
    assert shutil.which("curl"), "curl is required (scripts/test installs it)"
    assert shutil.which("jq"), "jq is required (scripts/test installs it)"
    b = start_http_broker("http")
    env = {**os.environ, "FERRYMQ": f"http://{b.address('http')}"}
    for block in sh_blocks():
        out = subprocess.run(["bash", "-eu", "-c", block], capture_output=True, text=True,
                             env=env, timeout=60)
        assert out.returncode == 0, f"{block}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
        assert '"status": 5' not in out.stdout, f"{block}\n{out.stdout}"
        assert "Traceback" not in out.stdout + out.stderr
    assert b.alive
