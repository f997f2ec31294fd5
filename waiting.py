"""Waiting on a condition instead of sleeping (tests and compat tests).

A test that sleeps "long enough" for a subscription, a connection, a commit or an
expiry is slow when the machine is quiet and flaky when it is loaded; a test that
waits for the condition itself is neither. This module sits beside the root
conftest.py so that every test folder can import it (pytest puts the root on
sys.path for that conftest): ``from waiting import wait_until``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float = 10.0, what: str = "",
               interval: float = 0.02) -> T:
    """Call ``predicate`` until it returns something true and return that; fail the
    test (AssertionError) after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        time.sleep(interval)


async def wait_until_async(predicate: Callable[[], T | Awaitable[T]], timeout: float = 10.0,
                           what: str = "", interval: float = 0.02) -> T:
    """``wait_until`` for async tests (trio or asyncio): ``predicate`` may be a
    coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if isinstance(value, Awaitable):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        await anyio.sleep(interval)
