"""What every client object shares: connections, NameServer routes, heartbeats, the client id.

``ClientInstance`` asks the NameServers (rotating through the list on
failure; a broker address works too: brokers answer route queries for
themselves) for a topic's route, caches it and refreshes it every
``route_refresh_s`` (RocketMQ: 30 s), keeps the broker name → address table,
and heart-beats every broker it knows every ``heartbeat_s`` (RocketMQ: 30 s)
with the producer and consumer groups registered on it.
"""

from __future__ import annotations

import itertools
import logging
import os
import ssl
from collections.abc import Awaitable, Callable

import anyio
import anyio.abc

from ..protocols.remoting import RemotingCommand, RequestCode, ResponseCode, request
from ..protocols.remoting import bodies as B
from ..protocols.remoting.codes import DEFAULT_TOPIC
from .message import local_ip
from .remoting import (
    DEFAULT_TIMEOUT,
    BrokerError,
    ClientError,
    RemotingClient,
    RemotingConnection,
    check,
    parse_address_list,
)

log = logging.getLogger("ferrymq.client")

ROUTE_REFRESH_S = 30.0  # RocketMQ ClientConfig.pollNameServerInterval
HEARTBEAT_S = 30.0  # RocketMQ ClientConfig.heartbeatBrokerInterval
_INSTANCES = itertools.count(1)

ServerRequestHandler = Callable[[RemotingCommand], Awaitable[None]]
CodeHandler = Callable[[RemotingConnection, RemotingCommand], Awaitable[RemotingCommand | None]]


class NoRouteError(ClientError):
    """No NameServer knows the topic, or none answered."""


class ClientInstance:
    def __init__(self, namesrv: str | list[str], *, route_refresh_s: float = ROUTE_REFRESH_S,
                 heartbeat_s: float = HEARTBEAT_S, timeout: float = DEFAULT_TIMEOUT,
                 credentials: tuple[str, str] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        self.namesrvs = parse_address_list(namesrv)
        if not self.namesrvs:
            raise ValueError("at least one NameServer (or broker) address is needed")
        self.client_id = f"{local_ip()}@{os.getpid()}-{next(_INSTANCES)}"
        self.route_refresh_s = route_refresh_s
        self.heartbeat_s = heartbeat_s
        self.timeout = timeout
        self.routes: dict[str, B.TopicRouteData] = {}
        self.broker_addrs: dict[str, str] = {}  # broker name -> master address
        self.producer_groups: set[str] = set()
        self.consumer_data: Callable[[], list[B.ConsumerData]] = lambda: []
        self.on_server_request: ServerRequestHandler | None = None
        # Requests a broker sends us, by code, answered on the connection they came on
        # (CHECK_TRANSACTION_STATE: the answer goes back to that broker).
        self.request_handlers: dict[int, CodeHandler] = {}
        # (AccessKey, SecretKey): every request is signed (docs/security.md); by default
        # FERRYMQ_ACCESS_KEY / FERRYMQ_SECRET_KEY of the environment.
        if credentials is None and os.environ.get("FERRYMQ_ACCESS_KEY"):
            # As the CLI and any tool run under an operator's environment expect.
            credentials = (os.environ["FERRYMQ_ACCESS_KEY"],
                           os.environ.get("FERRYMQ_SECRET_KEY", ""))
        self.credentials = credentials
        # tls: every connection (NameServers and brokers) over TLS with this context.
        self.remoting = RemotingClient(on_request=self._server_request, credentials=credentials,
                                       ssl_context=tls)
        self.tg: anyio.abc.TaskGroup | None = None
        self._ns_index = 0
        self._heartbeat_now = anyio.Event()

    async def __aenter__(self) -> ClientInstance:
        await self.remoting.__aenter__()
        self.tg = anyio.create_task_group()
        await self.tg.__aenter__()
        self.tg.start_soon(self._refresh_routes)
        self.tg.start_soon(self._heartbeats)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.tg is not None
        tg, self.tg = self.tg, None
        tg.cancel_scope.cancel()
        try:
            await tg.__aexit__(None, None, None)
        finally:  # even when cancelled: leave the connections' task group too
            await self.remoting.__aexit__(None, None, None)

    # ------------------------------------------------------------ server requests

    async def _server_request(self, conn: RemotingConnection, cmd: RemotingCommand
                              ) -> RemotingCommand | None:
        handler = self.request_handlers.get(cmd.code)
        if handler is not None:
            return await handler(conn, cmd)
        if self.on_server_request is not None:
            await self.on_server_request(cmd)
        if cmd.code in (RequestCode.NOTIFY_CONSUMER_IDS_CHANGED,
                        RequestCode.RESET_CONSUMER_CLIENT_OFFSET):
            return None
        from ..protocols.remoting import response_to
        return response_to(cmd, ResponseCode.REQUEST_CODE_NOT_SUPPORTED,
                           remark="not supported by the FerryMQ client")

    # ------------------------------------------------------------ NameServer

    async def namesrv_invoke(self, cmd: RemotingCommand) -> RemotingCommand:
        """Ask the NameServers in turn until one answers."""
        last: Exception | None = None
        for i in range(len(self.namesrvs)):
            addr = self.namesrvs[(self._ns_index + i) % len(self.namesrvs)]
            try:
                resp = await self.remoting.invoke(addr, cmd, self.timeout)
                self._ns_index = (self._ns_index + i) % len(self.namesrvs)
                return resp
            except ClientError as exc:
                last = exc
        raise NoRouteError(f"no NameServer answered: {last}")

    async def fetch_route(self, topic: str) -> B.TopicRouteData | None:
        resp = await self.namesrv_invoke(request(RequestCode.GET_ROUTEINFO_BY_TOPIC, 0,
                                                 {"topic": topic}))
        if resp.code == ResponseCode.TOPIC_NOT_EXIST:
            return None
        check(resp, "NameServer")
        route = B.TopicRouteData.decode(resp.body)
        new_broker = False
        for b in route.brokerDatas:
            if b.master_addr:
                if self.broker_addrs.get(b.brokerName) != b.master_addr:
                    new_broker = True
                self.broker_addrs[b.brokerName] = b.master_addr
        self.routes[topic] = route
        if new_broker:
            self._heartbeat_now.set()
        return route

    async def route(self, topic: str, *, refresh: bool = False) -> B.TopicRouteData | None:
        if not refresh and topic in self.routes:
            return self.routes[topic]
        return await self.fetch_route(topic)

    async def publish_queues(self, topic: str) -> tuple[list[B.MessageQueue], bool]:
        """(the topic's writable queues, whether they come from the default topic:
        an unknown topic created by the broker on first send)."""
        route = await self.route(topic)
        if route is None:
            route = await self.route(topic, refresh=True)
        if route is not None:
            qs = B.queues_of(topic, route, write=True)
            if qs:
                return qs, False
        default = await self.route(DEFAULT_TOPIC)
        if default is None:
            raise NoRouteError(f"topic {topic} has no route and no broker creates topics")
        return B.queues_of(topic, default, write=True), True

    async def subscribe_queues(self, topic: str, *, refresh: bool = False
                               ) -> list[B.MessageQueue]:
        route = await self.route(topic, refresh=refresh)
        return B.queues_of(topic, route, write=False) if route else []

    def broker_addr(self, broker_name: str) -> str:
        addr = self.broker_addrs.get(broker_name)
        if addr is None:
            raise NoRouteError(f"no address known for broker {broker_name}")
        return addr

    async def resolve_broker(self, broker_name: str) -> str:
        """The broker's master address, asking the NameServer's cluster table if unknown."""
        if broker_name not in self.broker_addrs:
            await self.learn_brokers()
        return self.broker_addr(broker_name)

    async def learn_brokers(self) -> None:
        """Learn every live broker from the NameServer's cluster table; heart-beat the new
        ones at once. A transactional producer needs this: any broker may hold a half of
        its group and check back through whichever producer heart-beats it (RocketMQ's
        producer learns them through the default topic's route at start)."""
        resp = check(await self.namesrv_invoke(
            request(RequestCode.GET_BROKER_CLUSTER_INFO, 0)), "NameServer")
        new = False
        for name, bd in B.ClusterInfo.decode(resp.body).brokerAddrTable.items():
            if bd.master_addr and self.broker_addrs.get(name) != bd.master_addr:
                self.broker_addrs[name] = bd.master_addr
                new = True
        if new:
            self._heartbeat_now.set()

    async def broker_invoke(self, broker_name: str, cmd: RemotingCommand,
                            timeout: float | None = None) -> RemotingCommand:
        addr = await self.resolve_broker(broker_name)
        return await self.remoting.invoke(addr, cmd, self.timeout if timeout is None else timeout)

    async def _refresh_routes(self) -> None:
        while True:
            await anyio.sleep(self.route_refresh_s)
            for topic in list(self.routes):
                try:
                    await self.fetch_route(topic)
                except ClientError as exc:
                    log.info("route refresh for %s failed: %s", topic, exc)

    # ------------------------------------------------------------ heartbeats

    def heartbeat_soon(self) -> None:
        self._heartbeat_now.set()

    async def send_heartbeats(self) -> None:
        hb = B.HeartbeatData(self.client_id, tuple(sorted(self.producer_groups)),
                             tuple(self.consumer_data())).encode()
        for name, addr in list(self.broker_addrs.items()):
            try:
                check(await self.remoting.invoke(addr, request(RequestCode.HEART_BEAT, 0, {}, hb),
                                                 self.timeout), addr)
            except (ClientError, BrokerError) as exc:
                log.info("heartbeat to %s (%s) failed: %s", name, addr, exc)

    async def _heartbeats(self) -> None:
        while True:
            self._heartbeat_now = anyio.Event()
            await self.send_heartbeats()
            with anyio.move_on_after(self.heartbeat_s):
                await self._heartbeat_now.wait()

    async def unregister(self, producer_group: str | None = None,
                         consumer_group: str | None = None) -> None:
        ext = {"clientID": self.client_id}
        if producer_group:
            ext["producerGroup"] = producer_group
        if consumer_group:
            ext["consumerGroup"] = consumer_group
        for addr in list(self.broker_addrs.values()):
            try:
                with anyio.move_on_after(1):
                    await self.remoting.invoke(addr, request(RequestCode.UNREGISTER_CLIENT, 0,
                                                             ext), 1.0)
            except ClientError:
                pass
