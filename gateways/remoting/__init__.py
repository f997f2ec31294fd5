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
``advertised_address`` (HOST:PORT clients should use), ``slave_read_lag_messages``
(10000: with a group's ``slave_read_enable``, a consumer this far behind is sent to
a slave), ``register_interval_s``
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

from ...core.broker import Broker
from ...core.replication import Role
from ...protocols.remoting import DEFAULT_MAX_FRAME, RemotingProtocolError
from ...protocols.remoting import headers as H
from ..config import DOOR_LIMITS
from ..replication.view import slave_broker_id
from ..server import DoorContext
from ..tls import client_context
from .client_table import CLIENT_EXPIRY_S, LOCK_TTL_S, ClientTable
from .connection import serve_connection
from .processor import MAX_SUSPEND_S, Processor
from .registration import REGISTER_INTERVAL_S, Registrar

log = logging.getLogger("ferrymq.remoting")

DEFAULT_MAX_SUSPENDED = 1024
SLAVE_READ_LAG_MESSAGES = 10_000  # a consumer this far behind reads from a slave
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


def broker_id(ctx: DoorContext) -> int:
    """The brokerId this door registers under: 0 for a single broker and a group's master,
    the slave's own id for a slave (docs/cluster.md, "Clients follow the master"). A role
    change restarts the doors, so the next life registers its new role at once."""
    cluster = ctx.config.cluster
    if cluster is None or ctx.broker.replication_position().role is not Role.SLAVE:
        return 0
    return slave_broker_id(cluster.node_id)


def suggest_broker(broker: Broker, node: str, lag: int, next_offset: int, max_offset: int) -> int:
    """RocketMQ's suggestWhichBrokerId with ``slaveReadEnable`` (docs/cluster.md, "Reading
    from slaves"): a consumer more than ``lag`` messages behind is sent to a slave — the
    master names an in-sync one, a slave keeps it — and one caught up goes back to the
    master (0), which serves fresh messages from its page cache. RocketMQ measures the
    distance in bytes against memory; one queue's count is what a pull knows here."""
    behind = max_offset - next_offset > lag
    role = broker.replication_position().role
    if role is Role.SLAVE:
        return slave_broker_id(node) if behind else 0
    if role is Role.MASTER and behind:
        slaves = sorted(broker.in_sync_replicas() - {node})
        if slaves:
            return slave_broker_id(slaves[0])
    return 0


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
        cfg.broker_name, addr, cfg.cluster_name, haServerAddr="", brokerId=broker_id(ctx)),
        processor.topic_configs, float(opts.get("register_interval_s", REGISTER_INTERVAL_S)),
        cluster_secret=cast("dict[str, Any]", cfg.extra.get("auth") or {}).get("cluster_secret"),
        ssl_context=namesrv_tls(opts), epoch=ctx.broker.replication_position().epoch)
    ctx.broker.watch_topics(registrar.topics_changed)  # topics made through any door
    processor.register_now = registrar.register_now
    if ctx.config.cluster is not None and cfg.slave_read_enable:
        processor.suggest_broker = functools.partial(
            suggest_broker, ctx.broker, ctx.config.cluster.node_id,
            int(opts.get("slave_read_lag_messages", SLAVE_READ_LAG_MESSAGES)))
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
