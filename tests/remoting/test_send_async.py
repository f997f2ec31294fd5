"""``Producer.send_async(msg, callback)``: RocketMQ's asynchronous send. Called as a plain
function it starts the send at once and returns; the callback gets the SendResult or the
exception, exactly once; closing the producer waits for every send it started. Under
asyncio and trio alike; the blocking facade hands out a Future of the same send."""

from __future__ import annotations

import threading

import anyio
import pytest
from ferrymq.clients import (
    BrokerError,
    Message,
    Producer,
    PullConsumer,
    SendResult,
    TooManyInFlightError,
    blocking,
)

from .conftest import FAST_CLIENT

BACKENDS = ["asyncio", "trio"]


async def stored_bodies(ns: str, topic: str) -> list[bytes]:
    out: list[bytes] = []
    async with PullConsumer(ns, "check-" + topic, consume_from="FIRST", **FAST_CLIENT) as c:
        qs = await c.queues(topic)
        with anyio.fail_after(10):
            while not qs:  # an auto-created topic: its registration is on its way
                await anyio.sleep(0.05)
                qs = await c.queues(topic)
        c.assign(qs)
        for _ in range(4 * len(qs)):
            out += [m.body for m in await c.poll(max_messages=64, timeout=0.2)]
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_async_called_as_documented_sends_and_calls_back(native, backend: str) -> None:
    ns = native.address("namesrv")
    topic = f"SendAsync{backend}"

    async def main() -> tuple[list[object], list[bytes]]:
        results: list[object] = []
        async with Producer(ns, "pg", **FAST_CLIENT) as p:
            for i in range(20):
                # Not awaited: fire-and-forget with a callback, as RocketMQ users write it.
                started = p.send_async(Message(topic, f"a{i}".encode()), results.append)
                assert started is None, "send_async returns nothing to await"
            await p.send(Message(topic, b"after"))  # the route is known: the fast path
            for i in range(20, 40):
                p.send_async(Message(topic, f"a{i}".encode()), results.append)
        # The producer's close waited for every send in flight: all called back.
        return results, await stored_bodies(ns, topic)

    results, stored = anyio.run(main, backend=backend)
    assert len(results) == 40 and all(isinstance(r, SendResult) for r in results)
    assert sorted(stored) == sorted([b"after", *(f"a{i}".encode() for i in range(40))])


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_async_failures_reach_the_callback(native, backend: str) -> None:
    ns = native.address("namesrv")

    async def main() -> list[object]:
        results: list[object] = []
        async with Producer(ns, "pg", **FAST_CLIENT) as p:
            await p.send(Message("SendAsyncOk", b"x"))
            p.send_async(Message("bad topic!", b"x"), results.append)

            def broken(_: object) -> None:
                raise RuntimeError("a callback that fails")

            p.send_async(Message("SendAsyncOk", b"y"), broken)  # logged, nothing else
            p.send_async(Message("SendAsyncOk", b"z"), results.append)

            async def later(r: object) -> None:  # an async callback: a task of the producer
                await anyio.sleep(0.05)
                results.append(r)

            p.send_async(Message("SendAsyncOk", b"w"), later)
        return results  # the close waited for the async callback too

    results = anyio.run(main, backend=backend)
    assert len(results) == 3
    errors = [r for r in results if isinstance(r, BaseException)]
    assert len(errors) == 1 and isinstance(errors[0], BrokerError)
    assert any(isinstance(r, SendResult) for r in results), "the producer kept working"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_full_window_refuses_send_async_and_throttles_the_awaitable_form(
        native, backend: str) -> None:
    ns = native.address("namesrv")

    async def main() -> tuple[int, int]:
        results: list[object] = []
        async with Producer(ns, "pg", max_in_flight=4, **FAST_CLIENT) as p:
            await p.send(Message("Window", b"route"))
            for i in range(4):
                p.send_async(Message("Window", f"w{i}".encode()), results.append)
            with pytest.raises(TooManyInFlightError):
                p.send_async(Message("Window", b"one too many"), results.append)
            assert p.in_flight == 4
            # The awaitable form waits for room instead of refusing.
            for i in range(40):
                await p.throttled_send_async(Message("Window", f"t{i}".encode()),
                                             results.append)
                assert p.in_flight <= 4
        return len(results), p.in_flight

    n, left = anyio.run(main, backend=backend)
    assert (n, left) == (44, 0)


def test_blocking_send_async_returns_a_future_and_calls_back(native) -> None:
    ns = native.address("namesrv")
    called: list[object] = []
    done = threading.Event()

    def cb(r: object) -> None:
        called.append(r)
        done.set()

    with blocking.Producer(ns, "pg", **FAST_CLIENT) as p:
        fut = p.send_async(Message("BlockingAsync", b"one"), cb)
        r = fut.result(10)
        assert isinstance(r, SendResult) and r.queue.topic == "BlockingAsync"
        assert done.wait(10) and called == [r]
        futs = [p.send_async(Message("BlockingAsync", f"n{i}".encode())) for i in range(10)]
    assert all(f.done() and isinstance(f.result(), SendResult) for f in futs), \
        "closing waited for the sends in flight"
