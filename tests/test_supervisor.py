"""Background tasks under supervision: a failure is logged, counted and the task restarted
with backoff; only a critical (store) task's failure stops the broker, and cleanly."""

from __future__ import annotations

import itertools
import logging
import os

import pytest
import trio
from ferrymq.core import Broker, BrokerConfig, Message
from ferrymq.core.metrics import MetricsRegistry
from ferrymq.core.supervisor import Backoff, StoreFailure, TaskSupervisor


def failures(registry: MetricsRegistry, task: str) -> float:
    for fam in registry.families():
        if fam.name == "ferrymq_task_failures_total":
            for s in fam.samples:
                if dict(s.labels).get("task") == task:
                    return s.value
    return 0


async def test_a_failing_task_is_restarted_with_growing_backoff(autojump_clock, caplog) -> None:
    registry = MetricsRegistry()
    starts: list[float] = []

    async def flaky() -> None:
        starts.append(trio.current_time())
        if len(starts) < 5:
            raise RuntimeError(f"bug number {len(starts)}")
        await trio.sleep_forever()

    with caplog.at_level(logging.ERROR, "ferrymq.tasks"):
        async with trio.open_nursery() as nursery:
            tasks = TaskSupervisor(nursery, registry, prefix="t",
                                   backoff=Backoff(first_s=1.0, max_s=4.0))
            tasks.start_soon(flaky, name="flaky")
            await trio.sleep(60)
            nursery.cancel_scope.cancel()
    assert len(starts) == 5
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert gaps == [1.0, 2.0, 4.0, 4.0]  # doubling, capped
    assert failures(registry, "t.flaky") == 4
    logged = [r for r in caplog.records if "t.flaky" in r.getMessage()]
    assert len(logged) == 4 and all(r.exc_info for r in logged)  # once per failure, traceback


async def test_the_backoff_starts_over_after_a_healthy_run(autojump_clock) -> None:
    starts: list[float] = []

    async def fails_after_a_while() -> None:
        starts.append(trio.current_time())
        await trio.sleep(100 if len(starts) == 3 else 0)
        raise RuntimeError("again")

    async with trio.open_nursery() as nursery:
        tasks = TaskSupervisor(nursery, backoff=Backoff(first_s=1.0, max_s=8.0, healthy_s=50))
        tasks.start_soon(fails_after_a_while)
        await trio.sleep(110)
        nursery.cancel_scope.cancel()
    gaps = [round(b - a, 3) for a, b in itertools.pairwise(starts)]
    assert gaps[:3] == [1.0, 2.0, 101.0]  # the third ran 100 s: the next delay is 1 s again


async def test_a_task_that_returns_is_done(autojump_clock) -> None:
    runs = 0

    async def once() -> None:
        nonlocal runs
        runs += 1

    async with trio.open_nursery() as nursery:
        TaskSupervisor(nursery).start_soon(once)
        await trio.sleep(100)
        nursery.cancel_scope.cancel()
    assert runs == 1


async def test_a_failing_periodic_job_keeps_its_period(autojump_clock) -> None:
    registry = MetricsRegistry()
    runs: list[float] = []

    def job() -> None:
        runs.append(trio.current_time())
        if len(runs) % 2:
            raise ValueError("odd run")

    async with trio.open_nursery() as nursery:
        TaskSupervisor(nursery, registry).every(10, job, name="job")
        await trio.sleep(61)
        nursery.cancel_scope.cancel()
    assert len(runs) == 6  # every 10 s; a backoff below the period changes nothing
    assert failures(registry, "job") == 3


async def test_start_reports_started_and_restarts_without_it(autojump_clock) -> None:
    runs = 0

    async def service(task_status=trio.TASK_STATUS_IGNORED) -> None:
        nonlocal runs
        runs += 1
        task_status.started(runs)
        await trio.sleep(1)
        raise RuntimeError("died after starting")

    async with trio.open_nursery() as nursery:
        tasks = TaskSupervisor(nursery, backoff=Backoff(first_s=1.0))
        assert await tasks.start(service) == 1
        await trio.sleep(30)
        nursery.cancel_scope.cancel()
    assert runs > 3


async def test_a_task_that_cannot_start_fails_its_starter(autojump_clock) -> None:
    async def broken(task_status=trio.TASK_STATUS_IGNORED) -> None:
        raise OSError("address in use")

    async with trio.open_nursery() as nursery:
        with pytest.raises(OSError, match="address in use"):
            await TaskSupervisor(nursery).start(broken)


async def test_a_critical_task_failure_stops_everything_in_the_nursery(autojump_clock) -> None:
    fatal: list[str] = []
    others_cancelled = False

    async def flusher() -> None:
        await trio.sleep(1)
        raise RuntimeError("the disk vanished")

    async def bystander() -> None:
        nonlocal others_cancelled
        try:
            await trio.sleep_forever()
        finally:
            others_cancelled = True

    with pytest.RaisesGroup(StoreFailure):
        async with trio.open_nursery() as nursery:
            tasks = TaskSupervisor(nursery, on_fatal=lambda name, exc: fatal.append(name))
            tasks.start_soon(bystander)
            tasks.start_soon(flusher, name="flusher", critical=True)
    assert fatal == ["flusher"] and others_cancelled


def config(tmp_path, **over) -> BrokerConfig:
    base = dict(data_dir=str(tmp_path / "data"), segment_size=1 << 20,
                max_message_size=64 * 1024, cq_entries_per_file=64, index_slots=64,
                index_entries=256, default_queues=2)
    base.update(over)
    return BrokerConfig(**base)


async def test_a_broker_job_that_raises_is_restarted_and_the_broker_serves(tmp_path) -> None:
    """Found in review: ``_every`` caught FerryError and OSError only; any other exception
    from retention, checkpoints or offset persistence ended the broker."""
    calls = 0

    def broken_retain(*args: object, **kwargs: object) -> list[int]:
        nonlocal calls
        calls += 1
        raise KeyError("a bug in retention")

    async with Broker.open(config(tmp_path, retention_check_interval_s=0.05)) as b:
        b.store.retain = broken_retain  # type: ignore[method-assign]
        with trio.fail_after(30):
            while failures(b.metrics, "broker.retention") < 2:
                await trio.sleep(0.02)
        result = await b.put(Message("still", b"serving"))
        assert result.queue_offset == 0
        assert "ferrymq_task_failures_total{task=\"broker.retention\"}" in b.metrics.render()
    assert calls >= 2


async def test_a_dying_flusher_stops_the_broker_and_keeps_the_abort_marker(tmp_path) -> None:
    """The flusher is critical: writers wait on it. An unexpected exception in it stops the
    broker (StoreFailure) and the store is closed as failed: the abort marker stays, so
    the next start validates the CommitLog's tail."""
    cfg = config(tmp_path, flush_interval_ms=20)
    with pytest.raises(StoreFailure, match="flusher"):
        async with Broker.open(cfg) as b:
            await b.put(Message("t", b"before"))

            def broken_flush(*args: object) -> int:
                raise RuntimeError("not an OSError: a bug")

            # Below the flusher's bound method (taken when the broker started).
            b.store.commitlog.flush = broken_flush  # type: ignore[method-assign]
            await b.put(Message("t", b"unflushed"))
            with trio.fail_after(60):  # the failure ends this long before
                await trio.sleep_forever()
    assert os.path.exists(os.path.join(cfg.data_dir, "store", "abort")) or any(
        name == "abort" for _root, _dirs, files in os.walk(cfg.data_dir) for name in files)
    async with Broker.open(cfg) as again:
        assert again.recovery is not None and not again.recovery.clean_shutdown
