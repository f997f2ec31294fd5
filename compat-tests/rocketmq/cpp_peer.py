"""Drive PyPI's ``rocketmq`` package (the Apache RocketMQ C++ client) from a child process.

Each test runs this script so that the C library, its threads and its signal
handling stay out of the pytest process. Output: one JSON document on stdout (a
consumed message's ``at`` and ``first_seen``: when the callback had it, and when it
first had it, in seconds since the epoch).

    cpp_peer.py produce NAMESRV TOPIC N [--batch] [--orderly KEY] [--delay LEVEL]
                        [--credentials AK:SK]
    cpp_peer.py consume NAMESRV TOPIC GROUP N TIMEOUT [--orderly] [--expression EXPR]
                        [--fail-first BODY] [--credentials AK:SK]

``--credentials``: the client signs every request (``set_session_credentials``, the
RocketMQ ACL signature; docs/security.md).
"""

from __future__ import annotations

import json
import sys
import threading
import time

CONSUME_SUCCESS = 0  # the C client's CConsumeStatus
RECONSUME_LATER = 1


def produce(ns: str, topic: str, n: int, batch: bool, orderly_key: str | None,
            delay_level: int = 0, credentials: str | None = None) -> None:
    from rocketmq.client import Message, Producer

    p = Producer("PID-compat")
    p.set_namesrv_addr(ns)
    if credentials:
        ak, sk = credentials.split(":", 1)
        p.set_session_credentials(ak, sk, "ALIYUN")
    p.start()
    out = []
    try:
        msgs = []
        for i in range(n):
            m = Message(topic)
            m.set_keys(f"cpp-key-{i}")
            m.set_tags("cpp" if i % 2 == 0 else "odd")
            m.set_property("seq", str(i))
            m.set_body(f"cpp-{i}")
            if delay_level:
                m.set_delay_time_level(delay_level)
            msgs.append(m)
        if batch:
            r = p.send_batch(msgs)
            out.append({"status": int(r.status), "msg_id": r.msg_id, "offset": r.offset})
        else:
            for m in msgs:
                r = (p.send_orderly(m, int(orderly_key)) if orderly_key is not None
                     else p.send_sync(m))
                out.append({"status": int(r.status), "msg_id": r.msg_id, "offset": r.offset})
    finally:
        p.shutdown()
    print(json.dumps(out))


def consume(ns: str, topic: str, group: str, n: int, timeout: float, orderly: bool,
            expression: str, fail_first: str | None = None,
            credentials: str | None = None) -> None:
    from rocketmq.client import PushConsumer, RecvMessage, dll, ffi_check

    got = []
    failed = set()
    first_seen: dict[str, float] = {}  # body -> when the callback first had it
    lock = threading.Lock()

    def callback(msg) -> int:  # type: ignore[no-untyped-def]
        body = msg.body.decode()
        now = time.time()
        with lock:
            first_seen.setdefault(body, now)
        if body == fail_first and body not in failed:
            failed.add(body)
            return RECONSUME_LATER  # the C++ client sends it back for a retry
        with lock:
            got.append({"id": msg.id, "body": msg.body.decode(), "tags": msg.tags.decode(),
                        "keys": msg.keys.decode(), "queue": msg.queue_id,
                        "offset": msg.queue_offset,
                        "seq": (msg.get_property("seq") or b"").decode(),
                        "omitted": (msg.get_property("FERRYMQ_OMITTED_PROPERTIES")
                                    or b"").decode(),
                        "reconsume": msg.reconsume_times,
                        "first_seen": first_seen[body], "at": now})
        return CONSUME_SUCCESS

    c = PushConsumer(group, orderly=orderly)
    c.set_namesrv_addr(ns)
    if credentials:
        ak, sk = credentials.split(":", 1)
        c.set_session_credentials(ak, sk, "ALIYUN")
    c.set_thread_count(2)
    # The binding's subscribe() cannot answer RECONSUME_LATER (an exception in its
    # wrapper reaches ctypes, which returns 0 = success), so register the callback
    # with the C library directly: it returns the C ConsumeStatus.
    ffi_check(dll.Subscribe(c._handle, topic.encode(), expression.encode()))
    c._register_callback(lambda _consumer, raw: callback(RecvMessage(raw)))
    c.start()
    deadline = time.time() + timeout
    while time.time() < deadline:
        with lock:
            if len(got) >= n:
                break
        time.sleep(0.1)
    time.sleep(0.5)  # let the offsets be committed
    c.shutdown()
    print(json.dumps(got))


if __name__ == "__main__":
    a = sys.argv[1:]
    creds = a[a.index("--credentials") + 1] if "--credentials" in a else None
    if a[0] == "produce":
        key = a[a.index("--orderly") + 1] if "--orderly" in a else None
        delay = int(a[a.index("--delay") + 1]) if "--delay" in a else 0
        produce(a[1], a[2], int(a[3]), "--batch" in a, key, delay, creds)
    else:
        expr = a[a.index("--expression") + 1] if "--expression" in a else "*"
        fail = a[a.index("--fail-first") + 1] if "--fail-first" in a else None
        consume(a[1], a[2], a[3], int(a[4]), float(a[5]), "--orderly" in a, expr, fail, creds)
