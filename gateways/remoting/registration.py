"""The broker's registration with its NameServers: REGISTER_BROKER every 30 s and at once on change.

RocketMQ brokers re-register with every NameServer every 30 s
(BrokerController, ``registerNameServerPeriod``) and as soon as their topic
set changes; the NameServer drops a broker it has not heard from for 120 s.
The body is the broker's topic table (uncompressed JSON form). On shutdown
the broker unregisters, so that clients move away at once.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
from collections.abc import Callable, Sequence

import anyio
import trio

from ...clients.remoting import ClientError, RemotingClient, check
from ...protocols.remoting import RequestCode, request
from ...protocols.remoting import bodies as B
from ...protocols.remoting import headers as H

log = logging.getLogger("ferrymq.remoting")

CLUSTER_ACCESS_KEY = "ferrymq-cluster"  # as gateways/namesrv checks it
REGISTER_INTERVAL_S = 30.0  # RocketMQ BrokerConfig.registerNameServerPeriod
REGISTER_TIMEOUT_S = 6.0  # RocketMQ BrokerConfig.registerBrokerTimeoutMills
MIN_GAP_S = 0.05


class Registrar:
    def __init__(self, namesrvs: Sequence[str], header: H.RegisterBrokerRequestHeader,
                 topics: Callable[[], list[B.TopicConfigData]],
                 interval_s: float = REGISTER_INTERVAL_S,
                 cluster_secret: str | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.namesrvs = list(namesrvs)
        # Registrations are signed with the cluster's secret (gateways/namesrv).
        self.credentials = (CLUSTER_ACCESS_KEY, cluster_secret) if cluster_secret else None
        self.ssl_context = ssl_context  # TLS to the NameServers (an enforcing one)
        self.header = header
        self.topics = topics
        self.interval_s = interval_s
        self._changed = trio.Event()
        self._version = 0
        self._rc: RemotingClient | None = None
        self.registrations = 0

    def topics_changed(self) -> None:
        self._changed.set()

    async def register_now(self) -> None:
        """Register at once and return when every NameServer answered (or failed), as
        RocketMQ's broker does after an admin creates or deletes a topic."""
        if self._rc is not None:
            await self._register_all(self._rc)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        """Register now (reporting started after the first attempt, so that a server
        is routable once it says it is ready), then every interval and on change; on
        the way out, unregister."""
        try:
            async with RemotingClient(credentials=self.credentials,
                                      ssl_context=self.ssl_context) as rc:
                self._rc = rc
                while True:
                    self._changed = trio.Event()
                    await self._register_all(rc)
                    if task_status is not trio.TASK_STATUS_IGNORED:
                        task_status.started()
                        task_status = trio.TASK_STATUS_IGNORED
                    await trio.sleep(MIN_GAP_S)  # a burst of topic changes: one registration
                    with trio.move_on_after(self.interval_s):
                        await self._changed.wait()
        finally:
            self._rc = None
            # The client above died with the cancelled scope: a fresh one, shielded.
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                async with RemotingClient(credentials=self.credentials,
                                          ssl_context=self.ssl_context) as rc:
                    await self._unregister_all(rc)

    async def _register_all(self, rc: RemotingClient) -> None:
        self._version += 1
        body = B.RegisterBrokerBody(tuple(self.topics()), self._version).encode()
        for addr in self.namesrvs:
            try:
                with anyio.fail_after(REGISTER_TIMEOUT_S):
                    resp = await rc.invoke(addr, request(RequestCode.REGISTER_BROKER, 0,
                                                         self.header.to_ext(), body),
                                           REGISTER_TIMEOUT_S)
                check(resp, addr)
                self.registrations += 1
            except (ClientError, TimeoutError) as exc:
                log.warning("registering with NameServer %s failed: %s", addr, exc)

    async def _unregister_all(self, rc: RemotingClient) -> None:
        h = self.header
        ext = H.UnRegisterBrokerRequestHeader(h.brokerName, h.brokerAddr, h.clusterName,
                                              h.brokerId).to_ext()
        for addr in self.namesrvs:
            with contextlib.suppress(ClientError):
                await rc.invoke(addr, request(RequestCode.UNREGISTER_BROKER, 0, ext), 1.0)
