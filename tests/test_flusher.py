"""Group commit (core/flusher.py): writers waiting together share one fsync, run by the
committer's own worker thread; a failed fsync fails every waiter and ends the committer."""

from __future__ import annotations

import threading

import pytest
import trio
from ferrymq.core.errors import FlushFailed
from ferrymq.core.flusher import GroupCommitter


class Log:
    """A stand-in CommitLog: ``append`` moves the end, ``flush`` (worker thread) records
    which thread flushed up to where."""

    def __init__(self, fail: bool = False) -> None:
        self.end = 0
        self.fail = fail
        self.flushes: list[tuple[int, str]] = []
        self.failures: list[FlushFailed] = []

    def append(self) -> int:
        self.end += 100
        return self.end

    def flush(self, upto: int) -> int:
        self.flushes.append((upto, threading.current_thread().name))
        if self.fail:
            raise OSError(5, "Input/output error")
        return upto

    def committer(self) -> GroupCommitter:
        return GroupCommitter(self.flush, lambda: self.end, self.failures.append)


async def test_writers_waiting_together_share_one_fsync_in_the_committers_thread() -> None:
    log = Log()
    c = log.committer()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.run)

        async def writer() -> None:
            for _ in range(5):
                await c.wait_flushed(log.append())

        async with trio.open_nursery() as writers:
            for _ in range(16):
                writers.start_soon(writer)
        assert c.flushed_pos == log.end == 16 * 5 * 100
        # 80 appends; every round covers what all runnable writers appended first.
        assert len(log.flushes) <= 10
        assert {name for _, name in log.flushes} == {"ferrymq-flush"}
        nursery.cancel_scope.cancel()
    with trio.fail_after(5):
        while any(t.name == "ferrymq-flush" for t in threading.enumerate()):
            await trio.sleep(0.01)  # the thread ends with the committer


async def test_a_failed_fsync_fails_every_waiter_and_ends_the_committer() -> None:
    log = Log(fail=True)
    c = log.committer()
    errors: list[BaseException] = []

    async def writer() -> None:
        try:
            await c.wait_flushed(log.append())
        except FlushFailed as exc:
            errors.append(exc)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(c.run)
        async with trio.open_nursery() as writers:
            for _ in range(4):
                writers.start_soon(writer)
    assert len(errors) == 4 and log.failures == [c.error]
    with pytest.raises(FlushFailed):
        await c.wait_flushed(log.append())
