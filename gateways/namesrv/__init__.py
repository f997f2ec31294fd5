"""The NameServer door (port 9876): brokers register their topics, clients ask for routes.

Requests served: REGISTER_BROKER, UNREGISTER_BROKER, GET_ROUTEINFO_BY_TOPIC,
GET_BROKER_CLUSTER_INFO, GET_ALL_TOPIC_LIST_FROM_NAMESERVER,
GET_TOPICS_BY_CLUSTER, DELETE_TOPIC_IN_NAMESRV; any other code gets
REQUEST_CODE_NOT_SUPPORTED. The table lives in memory (routes.py): brokers
re-register every 30 s, so a restarted NameServer is whole again within one
period, as RocketMQ's is.

``ferrymq serve`` embeds one (this module's ``serve``); ``ferrymq namesrv``
runs ``serve_namesrv`` alone. Options (``[namesrv]``): ``broker_expiry_s``
(120), ``scan_interval_s`` (10, RocketMQ's scanNotActiveBroker period),
``max_frame``, and the connection limits every door has (docs/operations.md,
"Connection limits": RocketMQ's 120 s idle close among them), enforced by a
``ConnectionSupervisor``. A JSON header or body past the decoder's limits is a
protocol error: answered when its opaque is known, then the connection closes.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from typing import Any, cast

import trio

from ...core.metrics import MetricsRegistry
from ...core.supervisor import TaskSupervisor
from ...protocols.remoting import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    RemotingCommand,
    RemotingProtocolError,
    RequestCode,
    ResponseCode,
    encode,
    response_to,
    signature,
)
from ...protocols.remoting import bodies as B
from ...protocols.remoting import headers as H
from ...protocols.sentinels import NeedData
from ..config import DOOR_LIMITS, ConnectionLimits
from ..replication.view import EPOCH_FIELD
from ..server import DoorContext
from ..supervision import ConnectionSupervisor, RequestBudget, Watch
from ..tls import TlsServer
from .routes import BROKER_EXPIRY_S, RouteTable

log = logging.getLogger("ferrymq.namesrv")

SCAN_INTERVAL_S = 10.0  # RocketMQ NamesrvController: scanNotActiveBroker every 10 s
RECEIVE_SIZE = 64 * 1024


CLUSTER_ACCESS_KEY = "ferrymq-cluster"  # the AccessKey brokers sign registrations with
_CLUSTER_WRITES = frozenset((RequestCode.REGISTER_BROKER, RequestCode.UNREGISTER_BROKER,
                             RequestCode.DELETE_TOPIC_IN_NAMESRV))


class NameServer:
    """``cluster_secret``: the requests that change the routes (REGISTER_BROKER,
    UNREGISTER_BROKER, DELETE_TOPIC_IN_NAMESRV) must carry RocketMQ's signature
    (protocols/remoting/signature.py) made with it under the AccessKey
    ``ferrymq-cluster``: only brokers of the cluster write the routes. Lookups
    stay open, as RocketMQ's NameServer keeps them (clients need routes before
    they can prove anything to a broker)."""

    def __init__(self, table: RouteTable, cluster_secret: str | None = None) -> None:
        self.table = table
        self.cluster_secret = cluster_secret

    def handle(self, cmd: RemotingCommand, peer: str) -> RemotingCommand:
        C = RequestCode
        if self.cluster_secret and cmd.code in _CLUSTER_WRITES and not (
                cmd.ext_fields.get(signature.ACCESS_KEY) == CLUSTER_ACCESS_KEY
                and signature.verify(self.cluster_secret, cmd.ext_fields, cmd.body)):
            log.warning("refused an unsigned or badly signed route change (code %d) from %s",
                        cmd.code, peer)
            return response_to(cmd, ResponseCode.NO_PERMISSION,
                               remark="route changes need the cluster's signature")
        try:
            if cmd.code == C.REGISTER_BROKER:
                h = H.RegisterBrokerRequestHeader.from_ext(cmd.ext_fields)
                if h.compressed:
                    return response_to(cmd, ResponseCode.SYSTEM_ERROR,
                                       remark="compressed registration bodies are not supported")
                body = B.RegisterBrokerBody.decode(cmd.body)
                epoch = cmd.ext(EPOCH_FIELD) or "0"
                if not epoch.isdigit():
                    return response_to(cmd, ResponseCode.INVALID_PARAMETER,
                                       remark=f"{EPOCH_FIELD}: not an epoch: {epoch[:40]!r}")
                if not self.table.register(h.clusterName, h.brokerName, h.brokerId,
                                           h.brokerAddr, body.topics, body.data_version,
                                           epoch=int(epoch)):
                    log.warning("ignored %s's claim to be master of %s in epoch %s: "
                                "a later epoch's master is listed", h.brokerAddr,
                                h.brokerName, epoch)
                return response_to(cmd, ResponseCode.SUCCESS,
                                   H.RegisterBrokerResponseHeader("", "").to_ext(),
                                   B.dumps({"table": {}}))
            if cmd.code == C.UNREGISTER_BROKER:
                uh = H.UnRegisterBrokerRequestHeader.from_ext(cmd.ext_fields)
                self.table.unregister(uh.brokerAddr, uh.brokerName, uh.brokerId)
                return response_to(cmd, ResponseCode.SUCCESS)
            if cmd.code == C.GET_ROUTEINFO_BY_TOPIC:
                th = H.TopicHeader.from_ext(cmd.ext_fields)
                route = self.table.route(th.topic)
                if route is None:
                    return response_to(cmd, ResponseCode.TOPIC_NOT_EXIST, remark=(
                        f"No topic route info in name server for the topic: {th.topic}"))
                return response_to(cmd, ResponseCode.SUCCESS, body=route.encode())
            if cmd.code == C.GET_BROKER_CLUSTER_INFO:
                return response_to(cmd, ResponseCode.SUCCESS,
                                   body=self.table.cluster_info().encode())
            if cmd.code == C.GET_ALL_TOPIC_LIST_FROM_NAMESERVER:
                return response_to(cmd, ResponseCode.SUCCESS,
                                   body=B.encode_topic_list(self.table.topics()))
            if cmd.code == C.GET_TOPICS_BY_CLUSTER:
                cluster = cmd.ext("cluster")
                return response_to(cmd, ResponseCode.SUCCESS,
                                   body=B.encode_topic_list(self.table.topics(cluster)))
            if cmd.code == C.DELETE_TOPIC_IN_NAMESRV:
                self.table.delete_topic(H.TopicHeader.from_ext(cmd.ext_fields).topic)
                return response_to(cmd, ResponseCode.SUCCESS)
        except H.HeaderError as exc:
            return response_to(cmd, exc.response_code, remark=str(exc))
        except B.BodyError as exc:
            return response_to(cmd, ResponseCode.SYSTEM_ERROR, remark=str(exc))
        return response_to(cmd, ResponseCode.REQUEST_CODE_NOT_SUPPORTED,
                           remark=f"request type {cmd.code} not supported")


async def _connection(stream: trio.SocketStream, watch: Watch | None = None, *, ns: NameServer,
                      max_frame: int) -> None:
    decoder = FrameDecoder(max_frame)
    peer = watch.peer if watch is not None else "?"
    try:
        while True:
            if watch is not None:
                pending = decoder.frame_in_progress()
                watch.waiting(pending > 0)
                if pending > RECEIVE_SIZE:
                    await watch.reserve(pending)
            data = await stream.receive_some(RECEIVE_SIZE)
            if not data:
                return
            out = []
            handling: RemotingCommand | None = None  # the command being handled, if any
            try:
                decoder.receive_data(data)
                while not isinstance(cmd := decoder.next_command(), NeedData):
                    if watch is not None:
                        watch.handshake_done()
                        watch.busy()
                    if not cmd.is_response:
                        handling = cmd
                        resp = ns.handle(cmd, peer)
                        handling = None
                        if not cmd.is_oneway:
                            out.append(encode(resp))
            except RemotingProtocolError as exc:
                log.info("closing %s: %s", peer, exc)
                opaque = exc.opaque if exc.opaque is not None else (
                    handling.opaque if handling is not None and not handling.is_oneway
                    else None)
                if opaque is not None:
                    out.append(encode(response_to(RemotingCommand(0, opaque),
                                                  ResponseCode.SYSTEM_ERROR,
                                                  remark=f"protocol error: {exc}")))
                if out:
                    with trio.move_on_after(1):
                        await stream.send_all(b"".join(out))
                return
            if watch is not None and watch.held and decoder.frame_in_progress() != watch.held:
                watch.release()  # the frame it held the budget for is answered
            if out:
                if watch is not None:
                    await watch.send_all(stream, b"".join(out))
                else:
                    await stream.send_all(b"".join(out))
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass
    finally:
        decoder.close()
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def serve_namesrv(host: str, port: int, options: Mapping[str, Any] | None = None, *,
                        limits: ConnectionLimits | None = None,
                        budget: RequestBudget | None = None,
                        metrics: MetricsRegistry | None = None,
                        tls: TlsServer | None = None,
                        bound_ports: dict[str, int] | None = None,
                        task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve a NameServer until cancelled. Alone (``ferrymq namesrv``) it has the
    default limits, a budget of its own and metrics no one scrapes."""
    opts = options or {}
    table = RouteTable(float(opts.get("broker_expiry_s", BROKER_EXPIRY_S)))
    ns = NameServer(table, str(opts["cluster_secret"]) if opts.get("cluster_secret") else None)
    scan = float(opts.get("scan_interval_s", min(SCAN_INTERVAL_S, table.broker_expiry_s / 2)))
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    bound = listeners[0].socket.getsockname()[1]
    handler = functools.partial(_connection, ns=ns,
                                max_frame=int(opts.get("max_frame", DEFAULT_MAX_FRAME)))
    metrics = metrics if metrics is not None else MetricsRegistry()
    connections = ConnectionSupervisor(
        "namesrv", limits or DOOR_LIMITS["namesrv"], metrics,
        budget=budget or RequestBudget(DEFAULT_MAX_FRAME * 4, metrics),
        protocol_errors=(RemotingProtocolError,), tls=tls, host=host, bound=bound_ports)

    def expire() -> None:
        for addr in table.expire():
            log.warning("broker %s silent for %.0f s: removed from the routes", addr,
                        table.broker_expiry_s)

    async with trio.open_nursery() as nursery:
        await nursery.start(connections.serve, listeners, handler)
        TaskSupervisor(nursery, metrics, prefix="namesrv").every(scan, expire, name="expiry")
        task_status.started(bound)


async def serve(ctx: DoorContext, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
                ) -> None:
    ctx.supervisor("namesrv")  # the server's budget, made if this context has none yet
    options = dict(ctx.options)
    auth = cast("dict[str, Any]", ctx.config.broker.extra.get("auth") or {})
    if auth.get("cluster_secret") and "cluster_secret" not in options:
        options["cluster_secret"] = auth["cluster_secret"]
    await serve_namesrv(ctx.host, ctx.port, options,
                        limits=ctx.config.connection_limits("namesrv"), budget=ctx.budget,
                        metrics=ctx.broker.metrics if ctx.broker is not None else None,
                        tls=ctx.tls_server("namesrv"), bound_ports=ctx.bound,
                        task_status=task_status)
