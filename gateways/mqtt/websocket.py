"""MQTT over WebSocket (5.0 section 6): a trio byte stream in binary WebSocket messages (wsproto).

``WebSocketStream`` performs the server handshake (path and the ``mqtt``
subprotocol) and then behaves like the TCP stream ``Client`` reads and writes:
``receive_some`` returns the payload bytes of binary messages as they come,
regardless of message boundaries (6.0 [MQTT-6.0.0-2]: an MQTT packet may span
messages); a text message is a protocol error that closes the connection
([MQTT-6.0.0-1]).
"""

from __future__ import annotations

import contextlib
from typing import Any

import trio
from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    Request,
    TextMessage,
)
from wsproto.utilities import RemoteProtocolError

RECV_SIZE = 65536
MAX_HANDSHAKE = 16384  # bytes of HTTP request before we give up on a handshake
SUBPROTOCOLS = ("mqtt", "mqttv3.1")  # 6.0 [MQTT-6.0.0-3]; the second for 3.1 clients


class WebSocketStream:
    def __init__(self, stream: Any, path: str) -> None:
        self.stream = stream
        self.path = path
        self.ws = WSConnection(ConnectionType.SERVER)
        self._pending = bytearray()
        self._closed = False
        self._send_lock = trio.Lock()

    async def _send_raw(self, data: bytes) -> None:
        async with self._send_lock:
            await self.stream.send_all(data)

    async def handshake(self) -> bool:
        """Accept the upgrade to a WebSocket on ``path``; False (after an HTTP error
        answer where one makes sense) when the request is not one."""
        seen = 0
        while True:
            data = await self.stream.receive_some(RECV_SIZE)
            if not data:
                return False
            seen += len(data)
            try:
                self.ws.receive_data(data)
                for ev in self.ws.events():
                    if isinstance(ev, Request):
                        if ev.target.split("?", 1)[0] != self.path:
                            await self._send_raw(self.ws.send(RejectConnection(status_code=404)))
                            return False
                        proto = next((p for p in SUBPROTOCOLS if p in ev.subprotocols), None)
                        await self._send_raw(self.ws.send(AcceptConnection(subprotocol=proto)))
                        return True
            except RemoteProtocolError:
                await self._send_raw(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
                return False
            if seen > MAX_HANDSHAKE:
                return False

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        while not self._pending:
            if self._closed:
                return b""
            data = await self.stream.receive_some(RECV_SIZE)
            if not data:
                self._closed = True
                return b""
            try:
                self.ws.receive_data(data)
                for ev in self.ws.events():
                    if isinstance(ev, BytesMessage):
                        self._pending += ev.data
                    elif isinstance(ev, TextMessage):
                        await self._close(1003)  # unsupported data
                    elif isinstance(ev, Ping):
                        await self._send_raw(self.ws.send(ev.response()))
                    elif isinstance(ev, CloseConnection):
                        if self.ws.state is ConnectionState.REMOTE_CLOSING:
                            await self._send_raw(self.ws.send(ev.response()))
                        self._closed = True
            except RemoteProtocolError:
                await self._close(1002)
        data = bytes(self._pending)
        self._pending.clear()
        return data

    async def _close(self, code: int) -> None:
        if self.ws.state is ConnectionState.OPEN:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                await self._send_raw(self.ws.send(CloseConnection(code=code)))
        self._closed = True

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.ws.state is not ConnectionState.OPEN:
            raise trio.ClosedResourceError("the WebSocket is closed")
        await self._send_raw(self.ws.send(Message(data=bytes(data))))

    async def aclose(self) -> None:
        await self._close(1000)
        await self.stream.aclose()
