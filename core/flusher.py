"""Flushing the CommitLog: group commit for sync flush, the interval flusher for async flush.

Group commit: a writer appends its record, then awaits ``wait_flushed(end)``.
The committer task runs one fsync at a time in a worker thread, each covering
everything appended when it started; writers arriving during an fsync are
served by the next one. So under load one fsync serves many writers, and with
one writer the latency is one fsync.

A failed fsync is final: the kernel may have dropped the dirty pages it could
not write (the "fsyncgate" lesson), so nothing written since the last good
flush can be promised durable. Every waiter gets FlushFailed, and ``on_failure``
lets the store refuse writes until a restart has recovered the log.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import trio

from .errors import FlushFailed

log = logging.getLogger("ferrymq.flush")


class GroupCommitter:
    def __init__(self, flush: Callable[[int], int], write_pos: Callable[[], int],
                 on_failure: Callable[[FlushFailed], None],
                 on_flushed: Callable[[int, float], None] = lambda pos, secs: None) -> None:
        self._flush = flush  # blocking: flush up to pos, return the flushed position
        self._write_pos = write_pos
        self._on_failure = on_failure
        self._on_flushed = on_flushed
        self.flushed_pos = 0
        self._wanted = 0
        self._wakeup = trio.Event()
        self._round = trio.Event()
        self.error: FlushFailed | None = None

    async def wait_flushed(self, pos: int) -> None:
        """Return once everything below CommitLog offset ``pos`` is on disk.
        Raises FlushFailed if the fsync covering it failed."""
        while self.flushed_pos < pos:
            if self.error is not None:
                raise self.error
            if pos > self._wanted:
                self._wanted = pos
                self._wakeup.set()
            await self._round.wait()
        if self.error is not None and self.flushed_pos < pos:
            raise self.error

    async def run(self) -> None:
        """The committer task: one fsync per round while writers wait."""
        while True:
            await self._wakeup.wait()
            # Yield once before choosing the target: the writers the last round
            # woke are runnable now, and each appends its next record in a few
            # microseconds; letting them do so first makes this fsync cover them
            # all instead of the first few (measured: 4 -> 16 writers per fsync).
            await trio.lowlevel.cancel_shielded_checkpoint()
            self._wakeup = trio.Event()
            target = self._write_pos()
            t0 = time.perf_counter()
            try:
                flushed = await trio.to_thread.run_sync(self._flush, target)
            except OSError as exc:
                self.error = FlushFailed(f"fsync failed: {exc}")
                log.error("CommitLog fsync failed; the store refuses writes until restart",
                          exc_info=exc)
                self._on_failure(self.error)
                self._finish_round()
                return
            self.flushed_pos = flushed
            self._on_flushed(flushed, time.perf_counter() - t0)
            self._finish_round()

    def _finish_round(self) -> None:
        done, self._round = self._round, trio.Event()
        done.set()


async def interval_flusher(flush: Callable[[], int], dirty: Callable[[], bool],
                           interval: float, on_failure: Callable[[FlushFailed], None],
                           on_flushed: Callable[[int, float], None]) -> None:
    """Async flush: every ``interval`` seconds, fsync what was appended, in a worker
    thread so the event loop never blocks on the disk."""
    while True:
        await trio.sleep(interval)
        if not dirty():
            continue
        t0 = time.perf_counter()
        try:
            pos = await trio.to_thread.run_sync(flush)
        except OSError as exc:
            err = FlushFailed(f"fsync failed: {exc}")
            log.error("CommitLog fsync failed; the store refuses writes until restart",
                      exc_info=exc)
            on_failure(err)
            return
        on_flushed(pos, time.perf_counter() - t0)
