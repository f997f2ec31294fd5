"""The ceiling: the bare trio append-and-ack loop a Python broker can at best approach here.

``ferrymq bench produce`` and ``bench consume`` run it with the same shapes as
FerryMQ, in the same run, and print the ratio. It is a broker stripped to what
no broker can skip: receive length-prefixed batches of 100-byte messages, walk
every message (its length and an 8-byte tag code), pack one 20-byte index entry
per message (offset, size, tag code: a ConsumeQueue entry without its
extras), append the batch with one ``write`` to a log file and the entries
with one ``write`` to an index file, then ack each batch with 16 bytes (the
acks of everything one receive completed go out in one send). With
``fdatasync`` it syncs the log once per receive before acking: group commit.

Wire, both directions little-endian:
    batch = <u32 payload length><u32 count> + count x (<u32 length> + body)
    ack   = <u64 messages in the batch><u64 log end offset>

Run as a module (a separate process, so that neither side slows the other):
    python -m ferrymq.gateways.bench.ceiling run BATCH CONNS WINDOW [SECONDS] [none|fdatasync] [sel]
WINDOW 1 is a producer that waits for each ack; ``sel`` drives the load with
``selector_load`` (non-blocking sockets, no event loop) instead of a trio
client, so that the client is not the bound. It prints one JSON line, as every
``ferrymq bench`` result.
"""

from __future__ import annotations

import functools
import json
import os
import selectors
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections import deque
from typing import Any

import trio

BATCH_HEAD = struct.Struct("<II")
MESSAGE_LEN = struct.Struct("<I")
TAG = struct.Struct("<q")
INDEX_ENTRY = struct.Struct("<qiq")  # 20 bytes: log offset, size, tag code
ACK = struct.Struct("<QQ")
BODY_SIZE = 100
RECEIVE_SIZE = 256 * 1024
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def process_cpu(pid: int) -> float:
    """User + system CPU seconds of a process, from /proc (10 ms resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu() -> float:
    t = os.times()
    return t.user + t.system


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))]


# ================================================================ the server

def serve(log_path: str, index_path: str, sync: str) -> None:
    """Serve on a free loopback port; prints ``READY <port>`` once listening."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    log_fd = os.open(log_path, flags, 0o644)
    index_fd = os.open(index_path, flags, 0o644)
    fdatasync = sync == "fdatasync"
    log_end = [0]  # one event loop thread: no lock
    write = os.write
    length_at = MESSAGE_LEN.unpack_from
    tag_at = TAG.unpack_from
    entry_into = INDEX_ENTRY.pack_into
    head_at = BATCH_HEAD.unpack_from

    async def connection(stream: trio.SocketStream) -> None:
        buf = bytearray()
        entries = bytearray(INDEX_ENTRY.size * 1024)
        try:
            while data := await stream.receive_some(RECEIVE_SIZE):
                buf += data
                pos, acks = 0, []
                while len(buf) - pos >= BATCH_HEAD.size:
                    size, count = head_at(buf, pos)
                    start, end = pos + BATCH_HEAD.size, pos + BATCH_HEAD.size + size
                    if end > len(buf):
                        break
                    if len(entries) < INDEX_ENTRY.size * count:
                        entries = bytearray(INDEX_ENTRY.size * count)
                    base, p, e = log_end[0] - start, start, 0
                    while p < end:
                        (n,) = length_at(buf, p)
                        (tag,) = tag_at(buf, p + 4)
                        entry_into(entries, e, base + p, n, tag)
                        e += INDEX_ENTRY.size
                        p += 4 + n
                    with memoryview(buf) as view, memoryview(entries) as ev:
                        write(log_fd, view[start:end])
                        write(index_fd, ev[:e])
                    log_end[0] += size
                    acks.append(ACK.pack(count, log_end[0]))
                    pos = end
                del buf[:pos]
                if acks:
                    if fdatasync:
                        os.fdatasync(log_fd)
                    await stream.send_all(b"".join(acks))
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(
                functools.partial(trio.serve_tcp, connection, 0, host="127.0.0.1"))
            print("READY", listeners[0].socket.getsockname()[1], flush=True)

    trio.run(main)


# ================================================================ load generators

def make_batch(count: int) -> bytes:
    """``count`` 100-byte messages, each starting with a distinct tag code."""
    messages = [MESSAGE_LEN.pack(BODY_SIZE) + TAG.pack(i * 7919)
                + bytes((i + j) & 0xFF for j in range(BODY_SIZE - TAG.size)) for i in range(count)]
    payload = b"".join(messages)
    return BATCH_HEAD.pack(len(payload), count) + payload


async def trio_load(port: int, batch: bytes, conns: int, window: int, seconds: float
                    ) -> tuple[int, float, list[float]]:
    """``conns`` trio connections, each with ``window`` batches un-acked at most.
    Returns (batches acked before the deadline, seconds, latencies when window is 1)."""
    acked = [0]
    latencies: list[float] = []
    clock = time.perf_counter
    start = clock()
    deadline = start + seconds

    async def one() -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        pending = 0
        if window == 1:
            while True:
                t = clock()
                await stream.send_all(batch)
                while pending < ACK.size:
                    pending += len(await stream.receive_some(RECEIVE_SIZE))
                pending -= ACK.size
                now = clock()
                if now > deadline:
                    break
                acked[0] += 1
                latencies.append(now - t)
        else:
            room = trio.Semaphore(window)

            async def send() -> None:
                while True:
                    await room.acquire()
                    await stream.send_all(batch)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(send)
                while (data := await stream.receive_some(RECEIVE_SIZE)) and clock() <= deadline:
                    pending += len(data)
                    done, pending = divmod(pending, ACK.size)
                    acked[0] += done
                    for _ in range(done):
                        room.release()
                nursery.cancel_scope.cancel()
        await stream.aclose()

    async with trio.open_nursery() as nursery:
        for _ in range(conns):
            nursery.start_soon(one)
    return acked[0], deadline - start, latencies


def selector_load(port: int, hello: bytes, unit: bytes, reply_size: int, conns: int,
                  window: int, seconds: float) -> tuple[int, float, list[float]]:
    """A load generator with no event-loop framework: non-blocking sockets and a
    selector. Each of ``conns`` connections keeps ``window`` units in flight; each
    ``reply_size`` bytes received acknowledge one unit, which is replaced at once.
    Returns (units acknowledged before the deadline, seconds, latencies when window is 1)."""
    selector = selectors.DefaultSelector()
    clock = time.perf_counter
    timed = window == 1
    latencies: list[float] = []
    conns_state: list[dict[str, Any]] = []
    for _ in range(conns):
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if hello:
            s.sendall(hello)
        s.setblocking(False)
        state: dict[str, Any] = {"sock": s, "out": bytearray(unit * window), "partial": 0,
                                 "sent_at": deque(), "want_write": False}
        conns_state.append(state)
        selector.register(s, selectors.EVENT_READ, state)

    def flush(state: dict[str, Any]) -> None:
        out = state["out"]
        try:
            n = state["sock"].send(out)
        except BlockingIOError:
            n = 0
        del out[:n]
        if bool(out) != state["want_write"]:
            state["want_write"] = bool(out)
            selector.modify(state["sock"], selectors.EVENT_READ
                            | (selectors.EVENT_WRITE if out else 0), state)

    total = 0
    start = clock()
    deadline = start + seconds
    for state in conns_state:
        if timed:
            state["sent_at"].append(clock())
        flush(state)
    while clock() <= deadline:
        for key, events in selector.select(0.5):
            state = key.data
            if events & selectors.EVENT_READ:
                data = state["sock"].recv(RECEIVE_SIZE)
                if not data:
                    raise ConnectionError("the server closed the connection")
                now = clock()
                if now > deadline:
                    break
                done, state["partial"] = divmod(state["partial"] + len(data), reply_size)
                if done:
                    total += done
                    if timed:
                        latencies.append(now - state["sent_at"].popleft())
                        state["sent_at"].append(now)
                    state["out"] += unit * done
                    flush(state)
            elif events & selectors.EVENT_WRITE:
                flush(state)
    for state in conns_state:
        selector.unregister(state["sock"])
        state["sock"].close()
    return total, deadline - start, latencies


# ================================================================ one measured run

def run(batch_size: int, conns: int, window: int, seconds: float, sync: str,
        selector_client: bool) -> dict[str, Any]:
    """Start the server as a child process, drive it, return one result document."""
    with tempfile.TemporaryDirectory(prefix="ferrymq-ceiling-") as tmp:
        log_path, index_path = os.path.join(tmp, "log"), os.path.join(tmp, "index")
        server = subprocess.Popen(
            [sys.executable, "-m", __spec__.name if __spec__ else "ferrymq.gateways.bench.ceiling",
             "serve", log_path, index_path, sync], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None
            line = server.stdout.readline()
            if not line.startswith("READY"):
                raise RuntimeError(f"the ceiling server did not start: {line!r}")
            port = int(line.split()[1])
            batch = make_batch(batch_size)
            cpu0, server_cpu0 = own_cpu(), process_cpu(server.pid)
            if selector_client:
                batches, elapsed, latencies = selector_load(port, b"", batch, ACK.size, conns,
                                                            window, seconds)
            else:
                batches, elapsed, latencies = trio.run(trio_load, port, batch, conns, window,
                                                       seconds)
            cpu1, server_cpu1 = own_cpu(), process_cpu(server.pid)
        finally:
            server.terminate()
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(5)
        logged = os.path.getsize(index_path) // INDEX_ENTRY.size
    messages = batches * batch_size
    if logged < messages:  # the server may have stored batches acked after the deadline
        raise RuntimeError(f"acked {messages} messages but only {logged} reached the log")
    name = f"broker.b{batch_size}.c{conns}.w{window}" + ("" if sync == "none" else f".{sync}")
    doc: dict[str, Any] = {
        "name": name + (".selclient" if selector_client else ""),
        "value": messages / elapsed, "unit": "msgs/s",
        "batches_per_s": batches / elapsed, "client_cpu": (cpu1 - cpu0) / elapsed,
        "server_cpu": (server_cpu1 - server_cpu0) / elapsed,
        "server_us_per_msg": (server_cpu1 - server_cpu0) / max(messages, 1) * 1e6,
        "mib_per_s": messages * (BODY_SIZE + MESSAGE_LEN.size) / elapsed / 2**20}
    if latencies:
        latencies.sort()
        doc.update(p50_us=percentile(latencies, 0.5) * 1e6,
                   p99_us=percentile(latencies, 0.99) * 1e6)
    return doc


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"]:
        serve(argv[1], argv[2], argv[3])
        return
    if argv[:1] != ["run"] or len(argv) < 4:
        raise SystemExit(__doc__)
    args = argv[1:]
    selector_client = args[-1] == "sel"
    if selector_client:
        args.pop()
    batch_size, conns, window = map(int, args[:3])
    seconds = float(args[3]) if len(args) > 3 else 3.0
    sync = args[4] if len(args) > 4 else "none"
    print(json.dumps(run(batch_size, conns, window, seconds, sync, selector_client)), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
