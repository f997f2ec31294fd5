"""The RocketMQ C++ client (PyPI ``rocketmq``) with ``set_session_credentials``: its signed
requests (AccessKey + HMAC, what RocketMQ's ACL checks) pass FerryMQ's access model, and the
same client without credentials, or with a wrong secret, is refused (docs/security.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_cpp_client import FAST, PEER

AUTH = '[auth]\nenabled = true\n'


def _ferrymq(*args: str) -> list[dict]:
    out = subprocess.run([sys.executable, "-m", "ferrymq.gateways", *args],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def _peer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PEER), *args], capture_output=True, text=True,
                          timeout=90)


def test_cpp_client_with_session_credentials(start_broker, tmp_path: Path) -> None:
    conf = tmp_path / "b.toml"
    conf.write_text(FAST.replace("[remoting]", AUTH + "[remoting]"))
    data = tmp_path / "broker"
    where = ("--config", str(conf), "--data-dir", str(data))
    _ferrymq("user", "add", "cpp", "--new-password", "cpp-pw", *where)
    key = _ferrymq("user", "access-key", "cpp", *where)[0]
    _ferrymq("acl", "add", "--principal", "cpp", "--topic", "CppAuth", "--operation", "all",
             *where)
    _ferrymq("acl", "add", "--principal", "cpp", "--group", "GID-cpp-auth", "--operation",
             "read", *where)
    b = start_broker("namesrv", "remoting", extra_args=("--config", str(conf)), data_dir=data)
    ns = b.address("namesrv")
    creds = f"{key['access_key']}:{key['secret_key']}"

    sent = _peer("produce", ns, "CppAuth", "5", "--credentials", creds)
    assert sent.returncode == 0, sent.stderr
    assert [s["status"] for s in json.loads(sent.stdout.splitlines()[-1])] == [0] * 5

    anon = _peer("produce", ns, "CppAuth", "1")
    assert anon.returncode != 0, "an unsigned send is refused (NO_PERMISSION)"
    wrong = _peer("produce", ns, "CppAuth", "1", "--credentials", f"{key['access_key']}:nope")
    assert wrong.returncode != 0, "a wrong secret's signature is refused"

    got = _peer("consume", ns, "CppAuth", "GID-cpp-auth", "5", "60", "--credentials", creds)
    assert got.returncode == 0, got.stderr
    assert sorted(m["body"] for m in json.loads(got.stdout.splitlines()[-1])) == [
        f"cpp-{i}" for i in range(5)]
