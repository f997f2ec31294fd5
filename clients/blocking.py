"""Blocking facades for plain scripts: the async client objects driven from a portal thread.

``with blocking.Producer(ns) as p: p.send(Message("T", b"x"))``. Each facade
starts an anyio blocking portal (an event loop in a thread), enters the async
object there and forwards calls. A PushConsumer's handler may be a plain
function: it runs in a worker thread, not on the loop.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from anyio.from_thread import BlockingPortal, start_blocking_portal

from . import admin as _admin
from . import consumer as _consumer
from . import producer as _producer
from . import simple as _simple
from . import transaction as _transaction
from .message import Message, SendResult


class _Facade:
    _target: Any

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._portal: BlockingPortal | None = None

    def _start(self, target: Any) -> None:
        self._target = target
        self._portal = self._stack.enter_context(start_blocking_portal())
        self._stack.enter_context(self._portal.wrap_async_context_manager(target))

    def _call(self, fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        assert self._portal is not None, "not started"
        return self._portal.call(lambda: fn(*args, **kw))

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Producer(_Facade):
    def __init__(self, namesrv: str | list[str], group: str = "DEFAULT_PRODUCER",
                 **options: Any) -> None:
        super().__init__()
        self._start(_producer.Producer(namesrv, group, **options))

    def send(self, message: Message, **kw: Any) -> SendResult:
        return self._call(self._target.send, message, **kw)

    def send_oneway(self, message: Message, **kw: Any) -> None:
        self._call(self._target.send_oneway, message, **kw)

    def send_batch(self, messages: list[Message], **kw: Any) -> list[SendResult]:
        return self._call(self._target.send_batch, messages, **kw)

    def send_async(self, message: Message,
                   callback: Callable[[SendResult | BaseException], Any] | None = None,
                   **kw: Any) -> Future[SendResult]:
        """Start a send (the async producer's ``send_async``) and return a Future of its
        SendResult (or its error); ``callback``, if given, gets the same, on the
        producer's event-loop thread (keep it short). Blocks only while
        ``max_in_flight`` sends are outstanding; ``close`` waits for those in flight."""
        fut: Future[SendResult] = Future()
        fut.set_running_or_notify_cancel()

        def done(result: SendResult | BaseException) -> None:
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)
            if callback is not None:
                callback(result)

        self._call(self._target.throttled_send_async, message, done, **kw)
        return fut


class TransactionProducer(Producer):
    """The TransactionProducer for plain scripts: ``executor`` and ``checker`` may be
    plain functions (they run in worker threads, as the local transaction blocks)."""

    def __init__(self, namesrv: str | list[str], group: str, **options: Any) -> None:
        _Facade.__init__(self)
        self._start(_transaction.TransactionProducer(namesrv, group, **options))

    def send_in_transaction(self, message: Message, arg: Any = None,
                            **kw: Any) -> _transaction.TransactionSendResult:
        return self._call(self._target.send_in_transaction, message, arg, **kw)


class SimpleConsumer(_Facade):
    """``receive``, ``ack``, ``ack_batch``, ``change_invisible_duration``, ``peek``."""

    def __init__(self, namesrv: str | list[str], group: str,
                 subscriptions: dict[str, str] | None = None, **options: Any) -> None:
        super().__init__()
        self._start(_simple.SimpleConsumer(namesrv, group, subscriptions, **options))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if callable(attr) and name in ("receive", "ack", "ack_batch",
                                       "change_invisible_duration", "peek"):
            return lambda *a, **kw: self._call(attr, *a, **kw)
        return attr


class PushConsumer(_Facade):
    def __init__(self, namesrv: str | list[str], group: str, handler: Callable[..., Any],
                 subscriptions: dict[str, str] | None = None, **options: Any) -> None:
        super().__init__()
        self._consumer = _consumer.PushConsumer(namesrv, group, handler, **options)
        for topic, expr in (subscriptions or {}).items():
            self._consumer.subscribe(topic, expr)

    def subscribe(self, topic: str, expression: str = "*", expression_type: str = "TAG") -> None:
        self._consumer.subscribe(topic, expression, expression_type)

    def start(self) -> None:
        self._start(self._consumer)

    def shutdown(self) -> None:
        self.close()

    def __enter__(self) -> PushConsumer:
        self.start()
        return self


class PullConsumer(_Facade):
    def __init__(self, namesrv: str | list[str], group: str, **options: Any) -> None:
        super().__init__()
        self._start(_consumer.PullConsumer(namesrv, group, **options))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if callable(attr) and name in ("queues", "seek", "seek_to_time", "seek_to_beginning",
                                       "seek_to_end", "position", "committed", "poll", "commit"):
            return lambda *a, **kw: self._call(attr, *a, **kw)
        return attr


class Admin(_Facade):
    def __init__(self, namesrv: str | list[str], **options: Any) -> None:
        super().__init__()
        self._start(_admin.Admin(namesrv, **options))

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if callable(attr):
            return lambda *a, **kw: self._call(attr, *a, **kw)
        return attr
