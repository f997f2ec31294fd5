"""Assemble one broker and its enabled doors in one nursery; stop them all cleanly on SIGINT/SIGTERM.

A door is a sub-package of ``gateways`` with a module-level
``async def serve(ctx: DoorContext, *, task_status)`` that binds its listener,
reports the bound port with ``task_status.started(port)``, and serves until
cancelled. ``DOORS`` lists them in start order; a door whose package does not
exist (not built yet) is simply absent.

Every door serves its connections through ``ctx.supervisor(door)`` (a
``ConnectionSupervisor``, gateways/supervision.py: failures contained to their
connection, the door's connection limits enforced) and runs its own loops
through ``ctx.tasks(nursery, door)`` (core/supervisor.py: restarted with
backoff). The request-bytes budget (``max_inflight_bytes``) is one for the
whole server, shared by the doors' supervisors. A door's TLS (``[tls]`` and
``[<door>.tls]``) comes with its supervisor too: the handshake happens there
(gateways/tls.py), a TLS-only listener's port is reported as ``<door>-tls``
(``mqtt-wss`` for WebSocket over TLS), and SIGHUP re-reads every certificate.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import trio

from ..core.broker import Broker
from ..core.supervisor import TaskSupervisor
from .config import ConfigError, ServerConfig, connection_limits
from .fdlimit import prepare_fd_limit
from .supervision import ConnectionSupervisor, Refuse, RequestBudget
from .tls import TlsServer, reload_all
from .tracing import OtelTracer, tracer_from_config

log = logging.getLogger("ferrymq.server")

DOORS: tuple[str, ...] = ("namesrv", "remoting", "kafka", "mqtt", "http")
"""Door names, in start order (the NameServer before the brokers that register with it)."""


@dataclass
class DoorContext:
    """What a door gets: the broker, where to listen, its own options, and the
    whole server configuration (for doors that need to know about each other)."""

    broker: Broker
    host: str
    port: int
    options: Mapping[str, Any]
    config: ServerConfig
    bound: dict[str, int] = field(default_factory=dict)  # door -> port, as started so far
    budget: RequestBudget | None = None  # the server's request-bytes budget (one for all doors)

    def supervisor(self, door: str, *, protocol_errors: tuple[type[BaseException], ...] = (),
                   refuse: Refuse | None = None, tick_s: float | None = None
                   ) -> ConnectionSupervisor:
        """The supervisor of ``door``'s connections, with that door's configured limits."""
        metrics = self.broker.metrics if self.broker is not None else None
        if self.budget is None:
            self.budget = RequestBudget(self.config.max_inflight_bytes, metrics)
        # Limits given in ``options`` (a door started in-process) override the config's.
        limits = connection_limits(door, self.options, self.config.connection_limits(door))
        return ConnectionSupervisor(door, limits, metrics,
                                    budget=self.budget, protocol_errors=protocol_errors,
                                    refuse=refuse, tick_s=tick_s, tls=self.tls_server(door),
                                    host=self.host, bound=self.bound)

    def tls_server(self, door: str) -> TlsServer | None:
        """The door's TLS (its context made from the certificate files), if it offers TLS."""
        found = self.config.tls.get(door)
        return TlsServer(door, found) if found is not None else None

    def tasks(self, nursery: trio.Nursery, door: str) -> TaskSupervisor:
        """A supervisor for the door's own background loops, in ``nursery``."""
        metrics = self.broker.metrics if self.broker is not None else None
        return TaskSupervisor(nursery, metrics, prefix=door)


class DoorServe(Protocol):
    def __call__(self, ctx: DoorContext, *, task_status: trio.TaskStatus[int] = ...
                 ) -> Awaitable[None]: ...


def door_module(name: str) -> Any | None:
    """The door's package, or None when that door is not part of this build."""
    full = f"{__package__}.{name}"
    if importlib.util.find_spec(full) is None:
        return None
    return importlib.import_module(full)


def available_doors() -> list[str]:
    return [d for d in DOORS if door_module(d) is not None]


async def run_server(config: ServerConfig, *,
                     on_ready: Callable[[dict[str, int]], None] | None = None,
                     task_status: trio.TaskStatus[dict[str, int]] = trio.TASK_STATUS_IGNORED,
                     span_exporter: Any = None) -> None:
    """Run the broker and its doors until cancelled, SIGINT or SIGTERM; either way
    the broker shuts down cleanly (flush, checkpoint, abort marker removed).
    ``span_exporter``: an OpenTelemetry SpanExporter the broker's spans go to instead
    of the ``[tracing]`` table's (tests; gateways/tracing.py)."""
    try:
        async with trio.open_nursery() as outer:
            # Listen for signals before recovery starts, so a stop request during a
            # long recovery still ends in a clean shutdown.
            outer.start_soon(_stop_on_signal, outer.cancel_scope)
            if config.tls:
                outer.start_soon(_reload_on_sighup)
            await _serve(config, on_ready, task_status, span_exporter)
            outer.cancel_scope.cancel()
    except BaseExceptionGroup as group:
        # The signal task never fails: a group here wraps the one reason the broker
        # stopped (a door that could not start, a StoreFailure): give it unwrapped.
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _serve(config: ServerConfig, on_ready: Callable[[dict[str, int]], None] | None,
                 task_status: trio.TaskStatus[dict[str, int]], span_exporter: Any = None
                 ) -> None:
    tracer = tracer_from_config(config.options("tracing"), exporter=span_exporter)
    try:
        await _serve_traced(config, on_ready, task_status, tracer)
    finally:
        if tracer is not None:
            tracer.shutdown()  # the spans still batched go out


async def _serve_traced(config: ServerConfig,
                        on_ready: Callable[[dict[str, int]], None] | None,
                        task_status: trio.TaskStatus[dict[str, int]],
                        tracer: OtelTracer | None) -> None:
    # Before the store opens: its file budget defaults to a share of the soft limit.
    prepare_fd_limit(config, tuple(d for d in available_doors() if config.port(d) is not None))
    if config.cluster is not None:
        await _serve_cluster(config, on_ready, task_status, tracer)
        return
    async with Broker.open(config.broker) as broker, trio.open_nursery() as nursery:
        bound = await _start_doors(config, broker, nursery, tracer)
        _write_ready(config, {"pid": os.getpid(), "ports": bound})
        if on_ready:
            on_ready(bound)
        task_status.started(bound)
        await trio.sleep_forever()


async def _start_doors(config: ServerConfig, broker: Broker, nursery: trio.Nursery,
                       tracer: OtelTracer | None = None) -> dict[str, int]:
    broker.set_tracer(tracer)
    apply_metrics_options(broker, config.options("metrics"))
    bound: dict[str, int] = {}
    budget = RequestBudget(config.max_inflight_bytes, broker.metrics)
    for name in DOORS:
        port = config.port(name)
        if port is None:
            continue
        module = door_module(name)
        if module is None:
            continue
        ctx = DoorContext(broker, config.host, port, config.options(name), config, bound,
                          budget)
        bound[name] = await nursery.start(module.serve, ctx)
        log.info("door %s listening on %s:%d", name, config.host, bound[name])
    return bound


def apply_metrics_options(broker: Broker, options: Mapping[str, Any]) -> None:
    """The ``[metrics]`` table: ``max_topic_labels`` (topics per door in the message
    counters), ``max_lag_series`` (group lag series), ``otel_names`` (the
    OpenTelemetry-style copies); docs/operations.md. Raises ConfigError."""
    reg = broker.metrics
    unknown = set(options) - {"max_topic_labels", "max_lag_series", "otel_names"}
    if unknown:
        raise ConfigError(f"[metrics]: unknown setting(s): {', '.join(sorted(unknown))}")
    for key in ("max_topic_labels", "max_lag_series"):
        if key in options:
            value = options[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"[metrics] {key}: a whole number >= 1, not {value!r}")
            setattr(reg, key, value)
    if "otel_names" in options:
        if not isinstance(options["otel_names"], bool):
            raise ConfigError("[metrics] otel_names: true or false")
        reg.otel_names = options["otel_names"]


def _write_ready(config: ServerConfig, info: dict[str, Any]) -> None:
    if config.ready_file:
        tmp = config.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(info, f)
        os.replace(tmp, config.ready_file)


async def _serve_cluster(config: ServerConfig,
                         on_ready: Callable[[dict[str, int]], None] | None,
                         task_status: trio.TaskStatus[dict[str, int]],
                         tracer: OtelTracer | None = None) -> None:
    """A member of a broker group: the controller runs lives of the core (one per role,
    docs/cluster.md), each with the doors on top; the ready file is rewritten at
    every life with the role, so that an operator (and the tests) can see it."""
    from .replication.controller import run_cluster

    started = False
    bound: dict[str, int] = {}

    async def start_doors(broker: Broker, nursery: trio.Nursery) -> dict[str, int]:
        nonlocal bound
        # The same ports at every life: a door's port 0 is bound once and kept.
        bound = await _start_doors(replace(config, ports={**config.ports, **bound}), broker,
                                   nursery, tracer)
        return bound

    def announce(info: dict[str, Any]) -> None:
        nonlocal started
        _write_ready(config, {"pid": os.getpid(), "ports": bound, **info})
        if not started:
            started = True
            if on_ready:
                on_ready(bound)
            task_status.started(bound)

    await run_cluster(config, start_doors, announce)


async def _reload_on_sighup() -> None:
    with trio.open_signal_receiver(signal.SIGHUP) as signals:
        async for _ in signals:
            log.warning("received SIGHUP: reloading TLS certificates (%d reloaded)",
                        reload_all())


async def _stop_on_signal(scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            log.warning("received %s: shutting down", signal.Signals(signum).name)
            scope.cancel()
            return
