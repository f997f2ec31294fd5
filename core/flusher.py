"""Flushing the CommitLog: group commit for sync flush, the interval flusher for async flush.

Group commit: a writer appends its record, then awaits ``wait_flushed(end)``.
The committer task runs one fsync at a time in a worker thread, each covering
everything appended when it started; writers arriving during an fsync are
served by the next one. So under load one fsync serves many writers, and with
one writer the latency is one fsync.

The worker is one thread of the committer's own, kept for its lifetime and
handed each round through a ``SimpleQueue``; it reports back with
``run_sync_soon``. ``trio.to_thread.run_sync`` per round cost about twice the
CPU and latency of that hand-off (measured 57 vs 26 us CPU, 110 vs 50 us wall
per round trip on the shared 2-core machine), and with 16 writers each waiting
on its one message a round is fsync + hand-offs + the writers' next appends:
the hand-offs are what sync flush pays beyond the disk (docs/storage.md,
"Performance").

A failed fsync is final: the kernel may have dropped the dirty pages it could
not write (the "fsyncgate" lesson), so nothing written since the last good
flush can be promised durable. Every waiter gets FlushFailed, and ``on_failure``
lets the store refuse writes until a restart has recovered the log.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable

import outcome
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
        worker: _FlushThread | None = None  # started at the first round
        try:
            while True:
                await self._wakeup.wait()
                # Yield once before choosing the target: the writers the last round
                # woke are runnable now, and each appends its next record in a few
                # microseconds; letting them do so first makes this fsync cover them
                # all instead of the first few (measured: 4 -> 16 writers per fsync).
                await trio.lowlevel.cancel_shielded_checkpoint()
                self._wakeup = trio.Event()
                target = self._write_pos()
                if worker is None:
                    worker = _FlushThread(self._flush)
                if not await self._round_trip(worker, target):
                    return
        finally:
            if worker is not None:
                worker.stop()

    async def _round_trip(self, worker: _FlushThread, target: int) -> bool:
        """One fsync up to ``target`` in the worker; False once it failed (final)."""
        t0 = time.perf_counter()
        try:
            flushed = await worker.run(target)
        except OSError as exc:
            self.error = FlushFailed(f"fsync failed: {exc}")
            log.error("CommitLog fsync failed; the store refuses writes until restart",
                      exc_info=exc)
            self._on_failure(self.error)
            self._finish_round()
            return False
        self.flushed_pos = flushed
        self._on_flushed(flushed, time.perf_counter() - t0)
        self._finish_round()
        return True

    def _finish_round(self) -> None:
        done, self._round = self._round, trio.Event()
        done.set()


class _FlushThread:
    """The committer's own worker thread: ``run`` hands it one flush and sleeps until
    it reports back. Like ``trio.to_thread.run_sync`` the wait is not cancellable (an
    fsync cannot be taken back): a cancel lands once the fsync returned."""

    def __init__(self, flush: Callable[[int], int]) -> None:
        self._flush = flush
        self._token = trio.lowlevel.current_trio_token()
        self._jobs: queue.SimpleQueue[tuple[int, trio.lowlevel.Task] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._main, name="ferrymq-flush", daemon=True)
        self._thread.start()

    def _main(self) -> None:
        reschedule, run_soon, flush = trio.lowlevel.reschedule, self._token.run_sync_soon, self._flush
        while (job := self._jobs.get()) is not None:
            target, task = job
            try:
                run_soon(reschedule, task, outcome.capture(flush, target))
            except trio.RunFinishedError:
                return  # the event loop is gone (interrupted): nobody waits any more

    async def run(self, target: int) -> int:
        self._jobs.put((target, trio.lowlevel.current_task()))
        result: int = await trio.lowlevel.wait_task_rescheduled(
            lambda _: trio.lowlevel.Abort.FAILED)
        return result

    def stop(self) -> None:
        """Let the thread end (it is idle: ``run`` never leaves before its report)."""
        self._jobs.put(None)


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
