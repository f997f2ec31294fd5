"""What the remoting door's request handlers share, so that none imports another.

The processor (processor.py) and the handler modules it installs
(transactions.py, pop.py, deadletters.py) each take a ``RequestContext``: the
broker, the client table, the door's counters and limits, and who each
connection acts for (``principal``). They type a connection as ``Connection``,
what they use of one, so they need not import connection.py, which imports
the processor. This module imports nothing of the door.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Protocol

import trio

from ...core.access import Principal, anonymous
from ...core.broker import Broker
from ...protocols.remoting import RemotingCommand
from .client_table import ClientTable


class Connection(Protocol):
    """What a request handler uses of a client connection (connection.ServerConnection)."""

    peer: str  # "host:port"
    peer_bytes: bytes  # the peer as a record's born-host field
    suspended: trio.Semaphore  # long polls this connection may hold

    async def send(self, data: bytes) -> None: ...

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None: ...

    async def send_oneway(self, code: int, ext: dict[str, str], body: bytes = b"",
                          timeout: float = ...) -> bool: ...

    def send_request_soon(self, code: int, ext: dict[str, str], body: bytes = b"") -> None: ...


Handler = Callable[[Connection, RemotingCommand], Awaitable[RemotingCommand | bytes | None]]


class RequestContext:
    """The state every handler of the door reads."""

    def __init__(self, broker: Broker, clients: ClientTable, *, store_host: bytes,
                 max_suspend_s: float) -> None:
        self.broker = broker
        self.clients = clients
        self.store_host = store_host
        self.max_suspend_s = max_suspend_s
        self.counters: Counter[str] = Counter()
        self._principals: dict[object, Principal] = {}

    def principal(self, conn: Connection | None) -> Principal:
        """Who the connection's requests act for: anonymous with its peer address
        (RocketMQ's ACL signature, once it is checked, names a user per request)."""
        p = self._principals.get(conn)
        if p is None:
            p = self._principals[conn] = anonymous(getattr(conn, "peer", None))
        return p

    def set_principal(self, conn: Connection, principal: Principal) -> None:
        """Who the request being dispatched acts for (its signature's user): the
        handlers read it before their first await, so it is the request's own."""
        self._principals[conn] = principal

    def forget(self, conn: Connection) -> None:
        """The connection closed."""
        self._principals.pop(conn, None)
