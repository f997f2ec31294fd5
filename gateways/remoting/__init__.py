"""The native door: Apache RocketMQ 4.x remoting on port 10911, and registration with NameServers.

``serve`` listens, runs one ``serve_connection`` per client
(connection.py), translates requests in ``Processor`` (processor.py, with
transactions.py, pop.py and deadletters.py), installs the broker's
transaction check-back for the time it runs, keeps
the client and lock tables (client_table.py) and registers the broker with
its NameServers (registration.py): the ones named by ``--namesrv`` /
``namesrv_addr``, else the NameServer embedded in this server.

Options (``[remoting]`` table): ``max_frame`` (bytes, default 16 MiB),
``max_suspended`` (long polls per connection, default 1024),
``advertised_address`` (HOST:PORT clients should use), ``register_interval_s``
(30), ``client_expiry_s`` (120), ``lock_ttl_s`` (60), ``max_suspend_s`` (30), and
the connection limits every door has (``max_connections``, 10000, and the
others of docs/operations.md, "Connection limits"), which the door's
``ConnectionSupervisor`` enforces.
"""

from __future__ import annotations

import functools
import logging
import ssl
from collections.abc import Mapping
from typing import Any, cast

import trio

from ...protocols.remoting import DEFAULT_MAX_FRAME, RemotingProtocolError
from ...protocols.remoting import headers as H
from ..config import DOOR_LIMITS
from ..server import DoorContext
from ..tls import client_context
from .client_table import CLIENT_EXPIRY_S, LOCK_TTL_S, ClientTable
from .connection import serve_connection
from .processor import MAX_SUSPEND_S, Processor
from .registration import REGISTER_INTERVAL_S, Registrar

log = logging.getLogger("ferrymq.remoting")

DEFAULT_MAX_SUSPENDED = 1024
DEFAULT_MAX_CONNECTIONS = DOOR_LIMITS["remoting"].max_connections  # the supervisor's cap


def namesrv_addresses(ctx: DoorContext) -> list[str]:
    """Where to register: the configured NameServers, else the embedded one."""
    configured = ctx.options.get("namesrv_addr") or getattr(ctx.config, "namesrv_addr", None)
    if configured:
        return [a.strip() for a in str(configured).replace(",", ";").split(";") if a.strip()]
    port = ctx.bound.get("namesrv")
    if port:
        host = ctx.host if ctx.host not in ("0.0.0.0", "", "::") else "127.0.0.1"
        return [f"{host}:{port}"]
    return []


def namesrv_tls(opts: Mapping[str, Any]) -> ssl.SSLContext | None:
    """The broker's TLS to its NameServers (RocketMQ's ``tls.client.*``):
    ``namesrv_tls = true`` (the system's CAs) or ``namesrv_tls_ca_file``, and
    ``namesrv_tls_cert_file``/``namesrv_tls_key_file`` for a NameServer that wants a
    client certificate; None: plaintext (docs/security.md, "TLS")."""
    ca = opts.get("namesrv_tls_ca_file")
    if not (opts.get("namesrv_tls") or ca):
        return None
    return client_context(str(ca) if ca else None, opts.get("namesrv_tls_cert_file"),
                          opts.get("namesrv_tls_key_file"))


async def serve(ctx: DoorContext, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                ) -> None:
    opts = ctx.options
    listeners = await trio.open_tcp_listeners(ctx.port, host=ctx.host or None)
    port = listeners[0].socket.getsockname()[1]
    cfg = ctx.broker.config
    host = ctx.host if ctx.host not in ("0.0.0.0", "", "::") else cfg.store_host
    addr = str(opts.get("advertised_address") or f"{host}:{port}")
    table = ClientTable(float(opts.get("client_expiry_s", CLIENT_EXPIRY_S)),
                        float(opts.get("lock_ttl_s", LOCK_TTL_S)))
    namesrvs = namesrv_addresses(ctx)
    processor = Processor(ctx.broker, broker_addr=addr, client_table=table,
                          max_suspend_s=float(opts.get("max_suspend_s", MAX_SUSPEND_S)))
    registrar = Registrar(namesrvs, H.RegisterBrokerRequestHeader(
        cfg.broker_name, addr, cfg.cluster_name, haServerAddr="", brokerId=0),
        processor.topic_configs, float(opts.get("register_interval_s", REGISTER_INTERVAL_S)),
        cluster_secret=cast("dict[str, Any]", cfg.extra.get("auth") or {}).get("cluster_secret"),
        ssl_context=namesrv_tls(opts))
    ctx.broker.watch_topics(registrar.topics_changed)  # topics made through any door
    processor.register_now = registrar.register_now
    serve_one = functools.partial(
        serve_connection, processor=processor,
        max_frame=int(opts.get("max_frame", DEFAULT_MAX_FRAME)),
        max_suspended=int(opts.get("max_suspended", DEFAULT_MAX_SUSPENDED)))
    connections = ctx.supervisor("remoting", protocol_errors=(RemotingProtocolError,))
    # The broker checks back open transactions through this door's producers while it runs.
    ctx.broker.set_transaction_checker(processor.transactions.check)
    try:
        async with trio.open_nursery() as nursery:
            tasks = ctx.tasks(nursery, "remoting")
            await nursery.start(connections.serve, listeners, serve_one)
            if namesrvs:
                await tasks.start(registrar.run, name="registration")
            tasks.start_soon(_expire_clients, processor, table, name="client_expiry")
            log.info("remoting door on %s (NameServers: %s)", addr, ", ".join(namesrvs) or "none")
            task_status.started(port)
    finally:
        ctx.broker.set_transaction_checker(None)


async def _expire_clients(processor: Processor, table: ClientTable) -> None:
    while True:
        await trio.sleep(min(10.0, table.expiry_s / 4))
        processor.notify_changed(table.expire())
