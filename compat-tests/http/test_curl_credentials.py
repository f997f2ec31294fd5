"""curl with a bearer token and with Basic credentials against FerryMQ's access model
(docs/security.md): 401 with both challenges without credentials or with wrong ones, 403
problem+json for a user without a grant, success for a granted one; the admin API makes
tokens and rules that take effect at once."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CURL = shutil.which("curl")


def curl(*args: str) -> tuple[int, dict[str, str], str]:
    """(status, headers lower-cased, body)."""
    assert CURL, "curl is required (scripts/test installs it)"
    out = subprocess.run([CURL, "-sS", "-D", "-", *args], capture_output=True, text=True,
                         timeout=30)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition("\n\n")  # (text mode: CRLF read as LF)
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = (headers.get(k.strip().lower(), "") + " " + v.strip()).strip()
    return status, headers, body


@pytest.fixture
def base(start_http_broker, tmp_path: Path) -> str:
    conf = tmp_path / "b.toml"
    conf.write_text("segment_size = 33554432\n[auth]\nenabled = true\n")
    data = tmp_path / "broker"
    where = ("--config", str(conf), "--data-dir", str(data))
    for args in (("user", "add", "root", "--super", "--new-password", "root-pw"),
                 ("user", "add", "app", "--new-password", "app-pw")):
        out = subprocess.run([sys.executable, "-m", "ferrymq.gateways", *args, *where],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    b = start_http_broker("http", extra_args=("--config", str(conf)), data_dir=data)
    return f"http://{b.address('http')}"


def test_curl_basic_and_bearer(base: str) -> None:
    status, headers, body = curl(f"{base}/v1/topics/curl-auth")
    assert status == 401 and headers["content-type"].startswith("application/problem+json")
    assert "Bearer" in headers["www-authenticate"] and "Basic" in headers["www-authenticate"]
    assert curl("-u", "app:wrong", f"{base}/v1/topics")[0] == 401
    assert curl(f"{base}/v1/topics")[0] == 200  # a listing shows what anonymous may see
    # The super user makes a topic, a token for app and a rule, through the admin API.
    assert curl("-u", "root:root-pw", "-H", "Content-Type: application/json", "-d",
                '{"name": "curl-auth", "queues": 1}', f"{base}/v1/topics")[0] == 201
    status, _, body = curl("-u", "root:root-pw", "-X", "POST", "-H",
                           "Content-Type: application/json", "-d", "{}",
                           f"{base}/v1/users/app/tokens")
    assert status == 201
    token = json.loads(body)["token"]
    bearer = ("-H", f"Authorization: Bearer {token}")
    status, headers, body = curl(*bearer, "-H", "Content-Type: application/json", "-d",
                                 '{"body": "x"}', f"{base}/v1/topics/curl-auth/messages")
    assert status == 403 and json.loads(body)["status"] == 403
    rule = {"rules": [{"principal": "User:app", "resource_type": "topic",
                       "resource": "curl-auth", "operation": op} for op in ("write", "read")]
            + [{"principal": "User:app", "resource_type": "group", "resource": "curl-g",
                "operation": "read"}]}
    assert curl("-u", "root:root-pw", "-H", "Content-Type: application/json", "-d",
                json.dumps(rule), f"{base}/v1/acls")[0] == 201
    status, _, body = curl(*bearer, "-H", "Content-Type: application/json", "-d",
                           '{"body": "x"}', f"{base}/v1/topics/curl-auth/messages")
    assert status in (200, 201), body
    status, _, body = curl("-u", "app:app-pw",
                           f"{base}/v1/topics/curl-auth/messages?group=curl-g&wait=5")
    assert status == 200 and [m["body"] for m in json.loads(body)["messages"]] == ["x"]
