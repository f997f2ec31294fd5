"""The RocketMQ C++ client (PyPI ``rocketmq``) and TLS. Its bundled librocketmq has no TLS:
the library links no OpenSSL and its C API has no TLS switch (RocketMQ C++ 2.x). What a
user of it needs from a TLS-enabled broker is RocketMQ's ``permissive`` mode: the C++
client keeps talking plaintext on the NameServer and broker ports while TLS clients (the
FerryMQ client here) use the same ports over TLS, and each reads what the other wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import trio
from ferrymq.clients import Admin, Message, Producer, PullConsumer

PEER = Path(__file__).with_name("cpp_peer.py")
FAST = "[remoting]\nregister_interval_s = 1.0\n"
FAST_CLIENT = {"heartbeat_s": 1.0, "route_refresh_s": 1.0}


def test_the_bundled_cpp_library_has_no_tls() -> None:
    import rocketmq.client
    lib = Path(rocketmq.client.__file__).with_name("librocketmq.so").read_bytes()
    assert b"SSL_CTX_new" not in lib and b"libssl" not in lib  # if this fails: test TLS here


def peer(*args: str, timeout: float = 90) -> list[dict]:
    out = subprocess.run([sys.executable, str(PEER), *args], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, f"C++ client peer failed:\n{out.stdout}\n{out.stderr}"
    return json.loads(out.stdout.strip().splitlines()[-1])


async def test_cpp_client_in_plaintext_and_ferrymq_client_over_tls_on_one_port(
        start_broker, tls_files, tmp_path) -> None:
    conf = tmp_path / "b.toml"
    tls_files.broker_config(conf, extra=FAST)
    b = start_broker("namesrv", "remoting", extra_args=("--config", str(conf)))
    ns = b.address("namesrv")
    ctx = tls_files.client_context()
    async with Admin(ns, tls=ctx, **FAST_CLIENT) as a:
        await a.create_topic("CppPermissive", 1)
    sent = await trio.to_thread.run_sync(peer, "produce", ns, "CppPermissive", "3")
    assert [s["status"] for s in sent] == [0, 0, 0]
    async with Producer(ns, "tls-pg", tls=ctx, **FAST_CLIENT) as p:
        await p.send(Message("CppPermissive", b"ferry-0"))
    got: list[bytes] = []
    async with PullConsumer(ns, "tls-reader", consume_from="FIRST", tls=ctx, **FAST_CLIENT) as c:
        c.assign(await c.queues("CppPermissive"))
        with trio.fail_after(30):
            while len(got) < 4:
                got += [m.body for m in await c.poll(timeout=1.0)]
    assert sorted(got) == [b"cpp-0", b"cpp-1", b"cpp-2", b"ferry-0"]
    read = await trio.to_thread.run_sync(peer, "consume", ns, "CppPermissive", "CID-cpp-tls",
                                         "4", "60")
    assert sorted(r["body"] for r in read) == ["cpp-0", "cpp-1", "cpp-2", "ferry-0"]
