"""waiting.py, the helper tests wait with instead of sleeping."""

from __future__ import annotations

import itertools

import pytest
import trio

from waiting import wait_until, wait_until_async


def test_wait_until_returns_the_first_true_value() -> None:
    calls = itertools.count()
    assert wait_until(lambda: next(calls) >= 3 and "ready", timeout=5, interval=0.001) == "ready"


def test_wait_until_fails_the_test_when_the_condition_never_holds() -> None:
    with pytest.raises(AssertionError, match="never"):
        wait_until(lambda: False, timeout=0.05, what="never", interval=0.01)


async def test_wait_until_async_takes_a_coroutine_function() -> None:
    ready = trio.Event()

    async def check() -> bool:
        return ready.is_set()

    async with trio.open_nursery() as n:
        n.start_soon(_set, ready)  # after the first check: nothing is set yet
        assert await wait_until_async(check, timeout=5, interval=0.001)


async def _set(event: trio.Event) -> None:
    event.set()


async def test_wait_until_async_fails_after_its_timeout() -> None:
    with pytest.raises(AssertionError, match="not within"):
        await wait_until_async(lambda: None, timeout=0.05, interval=0.01)
