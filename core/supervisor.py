"""Background tasks under supervision: a failing task is logged, counted and restarted with backoff.

The broker's background work (flushing, checkpoints, offset persistence,
retention, timers, transaction check-backs, pop revive) and the doors' own
loops (NameServer scans, registration, group coordination, producer-state
persistence) run as tasks of a ``TaskSupervisor`` instead of bare
``nursery.start_soon``. The contract:

- a task that returns is done (it is not restarted);
- a task that raises an ``Exception`` is logged once per failure with its
  traceback, counted in ``ferrymq_task_failures_total{task}``, and started
  again after a backoff that doubles from ``Backoff.first_s`` to
  ``Backoff.max_s`` (and starts over once the task has run ``Backoff.healthy_s``
  without failing): one bug in one loop costs that loop a restart, never the
  broker;
- a task started ``critical=True`` is one the store's promises depend on (the
  group committer: writers wait on it for their acknowledgement). Restarting
  it cannot make those promises true again, so its failure is a failure of the
  store: ``on_fatal`` is called (the broker marks its store failed, so the
  abort marker stays and the next start recovers the log), and
  ``StoreFailure`` is raised into the supervisor's nursery, which stops the
  broker and everything running inside ``Broker.open``, cleanly;
- cancellation is never caught: shutting down is cancelling the nursery.

``every(seconds, job)`` runs a periodic job (sync or async) under the same
rules: a failed run is logged and counted, and the next run waits at least the
backoff.

This is trio and nothing else (no sockets), so it lives in the core; the doors
use it too (``gateways/supervision.py`` supervises connections).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio

from .errors import StoreError
from .metrics import TASK_FAILURES, MetricsRegistry

log = logging.getLogger("ferrymq.tasks")


class StoreFailure(StoreError):
    """A critical task failed: the store cannot keep its promises; the broker stops.
    (A StoreError: whoever reports the broker's end says "ferrymq: <what failed>".)"""


@dataclass(frozen=True, slots=True)
class Backoff:
    """Restart delays: ``first_s``, doubling up to ``max_s``; reset after ``healthy_s``
    of running without a failure."""

    first_s: float = 0.1
    max_s: float = 30.0
    healthy_s: float = 60.0

    def next(self, previous: float) -> float:
        return self.first_s if previous <= 0 else min(self.max_s, previous * 2)


def task_name(fn: Callable[..., Any]) -> str:
    """A stable label for a task: its qualified name (``TimerService._firer``)."""
    inner = getattr(fn, "func", fn)  # functools.partial
    return str(getattr(inner, "__qualname__", None) or getattr(inner, "__name__", None)
               or repr(inner))


class TaskSupervisor:
    """Start supervised tasks in ``nursery`` (see the module docstring). It offers
    ``start_soon`` and ``start`` like a nursery, so code written for a nursery can be
    given a supervisor instead."""

    def __init__(self, nursery: trio.Nursery, metrics: MetricsRegistry | None = None, *,
                 prefix: str = "", backoff: Backoff = Backoff(),
                 on_fatal: Callable[[str, BaseException], None] | None = None) -> None:
        self.nursery = nursery
        self.prefix = prefix
        self.backoff = backoff
        self.on_fatal = on_fatal
        self.failures: dict[str, int] = {}
        self._counter = (metrics.counter(*TASK_FAILURES) if metrics is not None else None)

    def _name(self, fn: Callable[..., Any], name: str | None) -> str:
        base = name or task_name(fn)
        return f"{self.prefix}.{base}" if self.prefix else base

    def start_soon(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None,
                   critical: bool = False) -> None:
        label = self._name(fn, name)
        self.nursery.start_soon(self._supervise, label, fn, args, critical, None, name=label)

    async def start(self, fn: Callable[..., Awaitable[Any]], *args: Any, name: str | None = None,
                    critical: bool = False) -> Any:
        """Like ``nursery.start``: returns what the task reports through ``task_status``.
        A failure before that is the caller's (the task could not start); later ones
        restart the task with ``task_status`` ignored."""
        label = self._name(fn, name)
        return await self.nursery.start(self._supervise_started, label, fn, args, critical,
                                        name=label)

    def every(self, seconds: float, job: Callable[[], object], *, name: str | None = None
              ) -> None:
        """Run ``job`` (sync, or returning an awaitable) every ``seconds``."""
        label = self._name(job, name)
        self.nursery.start_soon(self._periodic, label, seconds, job, name=label)

    # ------------------------------------------------------------ internals

    def _failed(self, label: str, exc: BaseException, delay: float) -> None:
        self.failures[label] = self.failures.get(label, 0) + 1
        if self._counter is not None:
            self._counter.labels(label).inc()
        log.error("background task %s failed (%s: %s); restarting in %.1f s", label,
                  type(exc).__name__, exc, delay, exc_info=exc,
                  extra={"task": label, "failures": self.failures[label]})

    def _fatal(self, label: str, exc: BaseException) -> StoreFailure:
        self.failures[label] = self.failures.get(label, 0) + 1
        if self._counter is not None:
            self._counter.labels(label).inc()
        log.critical("critical task %s failed (%s: %s): stopping the broker", label,
                     type(exc).__name__, exc, exc_info=exc, extra={"task": label})
        if self.on_fatal is not None:
            self.on_fatal(label, exc)
        return StoreFailure(f"{label} failed: {type(exc).__name__}: {exc}")

    async def _supervise(self, label: str, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...],
                         critical: bool, status: Any) -> None:
        delay = 0.0
        while True:
            began = trio.current_time()
            try:
                if status is None:
                    await fn(*args)
                else:
                    await fn(*args, task_status=status)
                return
            except Exception as exc:
                if critical:
                    raise self._fatal(label, exc) from exc
                if trio.current_time() - began >= self.backoff.healthy_s:
                    delay = 0.0
                delay = self.backoff.next(delay)
                self._failed(label, exc, delay)
            status = None if status is None else trio.TASK_STATUS_IGNORED
            await trio.sleep(delay)

    async def _supervise_started(self, label: str, fn: Callable[..., Awaitable[Any]],
                                 args: tuple[Any, ...], critical: bool,
                                 task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED
                                 ) -> None:
        proxy = _StartedOnce(task_status)
        try:
            await fn(*args, task_status=proxy)
            return
        except Exception as exc:
            if not proxy.started_yet:
                raise  # it never started: the caller of ``start`` gets the error
            if critical:
                raise self._fatal(label, exc) from exc
            delay = self.backoff.next(0.0)
            self._failed(label, exc, delay)
        await trio.sleep(delay)
        await self._supervise(label, fn, args, critical, trio.TASK_STATUS_IGNORED)

    async def _periodic(self, label: str, seconds: float, job: Callable[[], object]) -> None:
        delay = 0.0
        while True:
            await trio.sleep(max(seconds, delay))
            try:
                result = job()
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:
                delay = self.backoff.next(delay)
                self._failed(label, exc, max(seconds, delay))
            else:
                delay = 0.0


class _StartedOnce:
    """A ``task_status`` that remembers whether the task reported itself started."""

    __slots__ = ("_status", "started_yet")

    def __init__(self, status: trio.TaskStatus[Any]) -> None:
        self._status = status
        self.started_yet = False

    def started(self, value: Any = None) -> None:
        self.started_yet = True
        self._status.started(value)
