"""Client remoting connections on anyio: responses matched by opaque, one connection per address.

``RemotingConnection`` owns one TCP connection: ``invoke`` sends a request and
waits for the response with the same opaque (many may be in flight: the broker
answers long polls late), ``invoke_oneway`` sends without waiting, and
requests the server sends us (NOTIFY_CONSUMER_IDS_CHANGED...) go to
``on_request``. ``RemotingClient`` keeps one connection per address, opened on
first use and dropped when it breaks. Runs under asyncio and trio alike.
With ``ssl_context`` every connection is TLS (RocketMQ's ``tls.enable``): the
broker's and NameServer's ports take TLS when their ``mode`` is permissive or
enforcing (docs/security.md, "TLS").
"""

from __future__ import annotations

import itertools
import logging
import math
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import anyio
import anyio.abc

from ..protocols.remoting import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    RemotingCommand,
    RemotingProtocolError,
    ResponseCode,
    SerializeType,
    encode,
    signature,
)
from ..protocols.remoting.frame import FLAG_ONEWAY
from ..protocols.sentinels import NeedData

log = logging.getLogger("ferrymq.client")

# 64 KiB: a recv() of 256 KiB costs about 17 us more per call here (the allocation
# crosses glibc's mmap threshold), which dominated small request/response traffic.
RECEIVE_SIZE = 64 * 1024
EXPIRE_SCAN_S = 0.2  # how often request deadlines are checked
DEFAULT_TIMEOUT = 3.0  # RocketMQ's default send timeout (DefaultMQProducer.sendMsgTimeout)

RequestHandler = Callable[["RemotingConnection", RemotingCommand],
                          Awaitable[RemotingCommand | None]]


class ClientError(Exception):
    """Base of the client's errors."""


class RemotingConnectError(ClientError):
    """The connection could not be opened or broke before the response came."""


class RemotingTimeoutError(ClientError):
    """No response within the timeout."""


class BrokerError(ClientError):
    """The server answered with a response code other than success (RocketMQ's
    MQBrokerException). ``code`` is the ResponseCode, ``remark`` its text."""

    def __init__(self, code: int, remark: str | None, address: str = "") -> None:
        try:
            name = ResponseCode(code).name
        except ValueError:
            name = str(code)
        super().__init__(f"{name} from {address or 'server'}: {remark or ''}".rstrip(": "))
        self.code = code
        self.remark = remark
        self.address = address


def split_address(addr: str) -> tuple[str, int]:
    host, _, port = addr.strip().rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not a HOST:PORT address: {addr!r}")
    return host.strip("[]"), int(port)


def parse_address_list(addrs: str | list[str] | tuple[str, ...]) -> list[str]:
    """``HOST:PORT;HOST:PORT`` (RocketMQ's namesrvAddr form) or a list."""
    items = addrs.replace(",", ";").split(";") if isinstance(addrs, str) else list(addrs)
    out = [a.strip() for a in items if a.strip()]
    for a in out:
        split_address(a)
    return out


class RemotingConnection:
    """One connection. A frame for an idle plain TCP connection is written by the
    caller itself, in one non-blocking send (a waiting producer's request costs no
    task switch); every other frame goes through one writer task, which writes all
    frames queued since its last write in one send: a pipelining producer costs a
    system call per batch of frames. Neither way can a cancelled caller leave half
    a frame on the wire. Responses are matched by opaque to a waiting ``invoke`` or
    to the callback of ``send_nowait``; the expiry scan times out both."""

    def __init__(self, stream: anyio.abc.ByteStream, address: str, *,
                 on_request: RequestHandler | None = None, max_frame: int = DEFAULT_MAX_FRAME,
                 serialize_type: int = SerializeType.JSON,
                 credentials: tuple[str, str] | None = None) -> None:
        self.stream = stream
        self.credentials = credentials  # (AccessKey, SecretKey): every request is signed
        self.address = address
        self.on_request = on_request
        self.serialize_type = serialize_type
        self._decoder = FrameDecoder(max_frame)
        self._opaque = itertools.count(1)
        # opaque -> callback(response or exception); deadlines for send_nowait callbacks
        self._pending: dict[int, Callable[[Any], None]] = {}
        self._deadlines: dict[int, float] = {}
        self._out: list[bytes] = []
        self._wake = anyio.Event()
        self.closed = False
        self.error: BaseException | None = None
        # A plain TCP connection is written through its socket, without a task switch
        # (see _queue); a TLS stream only through the writer task.
        self._sock = _plain_socket(stream)
        self._writing = False  # the writer holds bytes taken from _out, not all sent yet

    def next_opaque(self) -> int:
        return next(self._opaque) & 0x7FFFFFFF

    def _queue(self, frame: bytes) -> None:
        """Put ``frame`` on the wire, or in line for the writer.

        An idle plain TCP connection (nothing queued, nothing being written, no
        request awaiting its answer) is written at once from the caller: a
        non-blocking ``send``, no task switch, no event-loop iteration. A
        synchronous call cannot be cancelled half way, so no half frame is left;
        whatever the kernel did not take goes to the writer, ahead of anything
        queued later (the writer gives it to the stream, whose send returns once all
        of it is with the kernel, so the socket is never written around a transport's
        buffer). A connection with requests in flight queues instead, so
        that frames sent back to back (``send_async``) leave together in one write."""
        if self.closed:
            raise RemotingConnectError(f"connection to {self.address} is closed")
        sock = self._sock
        if sock is not None and not self._out and not self._writing and not self._pending:
            try:
                n = sock.send(frame)
            except OSError:  # would block, or broken: the writer sends it or fails
                n = 0
            if n == len(frame):
                return
            frame = frame[n:]
        self._out.append(frame)
        self._wake.set()

    async def send_raw(self, data: bytes) -> None:
        """Send an encoded frame (at once, or through the writer: see ``_queue``)."""
        self._queue(data)

    def send_nowait(self, cmd: RemotingCommand, callback: Callable[[Any], None],
                    timeout: float = DEFAULT_TIMEOUT) -> int:
        """Queue ``cmd`` (its opaque replaced) without waiting; ``callback`` gets the
        response, or a RemotingTimeoutError / RemotingConnectError. Returns the opaque."""
        opaque = next(self._opaque) & 0x7FFFFFFF
        frame = encode(RemotingCommand(cmd.code, opaque, cmd.flag, self._fields(cmd), cmd.body,
                                       cmd.remark, cmd.language, cmd.version,
                                       self.serialize_type))
        self._queue(frame)
        self._pending[opaque] = callback
        self._deadlines[opaque] = time.monotonic() + timeout
        return opaque

    async def invoke(self, cmd: RemotingCommand, timeout: float = DEFAULT_TIMEOUT
                     ) -> RemotingCommand:
        """Send ``cmd`` (its opaque is replaced) and return the response.
        Raises RemotingConnectError, RemotingTimeoutError."""
        opaque = next(self._opaque) & 0x7FFFFFFF
        frame = encode(RemotingCommand(cmd.code, opaque, cmd.flag, self._fields(cmd), cmd.body,
                                       cmd.remark, cmd.language, cmd.version,
                                       self.serialize_type))
        done = anyio.Event()
        box: list[Any] = []

        def deliver(resp: Any) -> None:
            box.append(resp)
            done.set()

        self._queue(frame)
        self._pending[opaque] = deliver
        # The timeout is kept by the expiry scan (as send_nowait's): a cancel scope per
        # request cost more than the rest of a small request's client-side work.
        self._deadlines[opaque] = time.monotonic() + (timeout if timeout > 0 else math.inf)
        try:
            await done.wait()
        finally:
            self._pending.pop(opaque, None)
            self._deadlines.pop(opaque, None)
        resp = box[0]
        if isinstance(resp, RemotingTimeoutError):
            raise RemotingTimeoutError(
                f"no response from {self.address} in {timeout:.1f}s (code {cmd.code})")
        if isinstance(resp, BaseException):
            raise RemotingConnectError(f"connection to {self.address} broke: {resp}")
        return resp

    async def invoke_oneway(self, cmd: RemotingCommand) -> None:
        cmd = _with(cmd, self.next_opaque(), self.serialize_type, FLAG_ONEWAY)
        if self.credentials is not None:
            cmd = cmd._replace(ext_fields=self._fields(cmd))
        self._queue(encode(cmd))

    def _fields(self, cmd: RemotingCommand) -> Mapping[str, object]:
        """The request's ext fields, signed when the client has credentials."""
        if self.credentials is None:
            return cmd.ext_fields
        return signature.sign(cmd.ext_fields, cmd.body, *self.credentials)

    def _fail(self, exc: BaseException) -> None:
        if self.closed:
            return
        self.closed = True
        self.error = exc
        self._out.clear()
        self._wake.set()
        pending, self._pending = self._pending, {}
        self._deadlines.clear()
        for cb in pending.values():
            cb(exc)

    async def run(self) -> None:
        """Read, write and expire until the connection ends."""
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._writer, tg.cancel_scope)
                tg.start_soon(self._expire)
                await self._reader(tg)
                tg.cancel_scope.cancel()
        except RemotingProtocolError as exc:
            log.warning("protocol error from %s: %s", self.address, exc)
            self._fail(exc)
        finally:
            self._fail(RemotingConnectError("closed"))
            with anyio.CancelScope(shield=True):
                await self.stream.aclose()

    async def _reader(self, tg: anyio.abc.TaskGroup) -> None:
        while True:
            try:
                data = await self.stream.receive(RECEIVE_SIZE)
            except (anyio.EndOfStream, anyio.BrokenResourceError,
                    anyio.ClosedResourceError, OSError) as exc:
                self._fail(exc if not isinstance(exc, anyio.EndOfStream)
                           else RemotingConnectError("closed by peer"))
                return
            self._decoder.receive_data(data)
            while not isinstance(cmd := self._decoder.next_command(), NeedData):
                if cmd.is_response:
                    cb = self._pending.pop(cmd.opaque, None)
                    if cb is not None:
                        self._deadlines.pop(cmd.opaque, None)
                        cb(cmd)
                elif self.on_request is not None:
                    tg.start_soon(self._serve_request, cmd)

    async def _writer(self, scope: anyio.CancelScope) -> None:
        sock = self._sock
        while not self.closed:
            if not self._out:
                self._wake = anyio.Event()
                await self._wake.wait()
                continue
            chunk = self._out[0] if len(self._out) == 1 else b"".join(self._out)
            self._out.clear()
            self._writing = True
            try:
                if sock is not None:  # what the kernel takes now costs no iteration
                    try:
                        n = sock.send(chunk)
                    except OSError:  # full, or broken: the stream's send says which
                        n = 0
                    chunk = chunk[n:]
                if chunk:
                    await self.stream.send(chunk)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
                self._fail(exc)
                scope.cancel()
                return
            finally:
                self._writing = False

    async def _expire(self) -> None:
        """Time out the requests whose response did not come (``invoke`` and
        ``send_nowait`` alike): a request times out within ``EXPIRE_SCAN_S`` of its
        deadline."""
        while True:
            await anyio.sleep(EXPIRE_SCAN_S)
            now = time.monotonic()
            late = [o for o, d in self._deadlines.items() if d <= now]
            for o in late:
                del self._deadlines[o]
                cb = self._pending.pop(o, None)
                if cb is not None:
                    cb(RemotingTimeoutError(f"no response from {self.address} in time"))

    async def _serve_request(self, cmd: RemotingCommand) -> None:
        assert self.on_request is not None
        try:
            resp = await self.on_request(self, cmd)
            if resp is not None and not cmd.is_oneway:
                self._queue(encode(resp))
        except ClientError as exc:
            log.info("answering a request from %s failed: %s", self.address, exc)

    async def aclose(self) -> None:
        self._fail(RemotingConnectError("closed"))
        await self.stream.aclose()


def _plain_socket(stream: anyio.abc.ByteStream) -> socket.socket | None:
    """The non-blocking socket under a plain TCP stream (None for TLS and anything
    else). asyncio lends its transports' sockets as a ``TransportSocket`` view, whose
    ``_sock`` is the socket; the client never writes through the transport itself."""
    if not isinstance(stream, anyio.abc.SocketStream):
        return None
    raw = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
    if not isinstance(raw, socket.socket):
        raw = getattr(raw, "_sock", None)
    if not isinstance(raw, socket.socket) or raw.getblocking():
        return None
    return raw


def _with(cmd: RemotingCommand, opaque: int, stype: int, flag: int | None = None
          ) -> RemotingCommand:
    return RemotingCommand(cmd.code, opaque, cmd.flag if flag is None else flag, cmd.ext_fields,
                           cmd.body, cmd.remark, cmd.language, cmd.version, stype)


class RemotingClient:
    """One connection per address, opened on demand, inside the caller's task group.

    Use ``async with RemotingClient() as rc``; every connection closes on exit."""

    def __init__(self, *, on_request: RequestHandler | None = None,
                 connect_timeout: float = 3.0, max_frame: int = DEFAULT_MAX_FRAME,
                 credentials: tuple[str, str] | None = None,
                 ssl_context: ssl.SSLContext | None = None) -> None:
        self.on_request = on_request
        self.credentials = credentials  # (AccessKey, SecretKey): sign every request
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.max_frame = max_frame
        self._conns: dict[str, RemotingConnection] = {}
        self._locks: dict[str, anyio.Lock] = {}
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> RemotingClient:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> bool | None:
        assert self._tg is not None
        self._tg.cancel_scope.cancel()
        for c in list(self._conns.values()):
            c._fail(RemotingConnectError("client closed"))
        self._conns.clear()
        return await self._tg.__aexit__(*exc)  # type: ignore[arg-type]

    @property
    def connections(self) -> dict[str, RemotingConnection]:
        return self._conns

    async def connection(self, address: str) -> RemotingConnection:
        c = self._conns.get(address)
        if c is not None and not c.closed:
            return c
        lock = self._locks.setdefault(address, anyio.Lock())
        async with lock:
            c = self._conns.get(address)
            if c is not None and not c.closed:
                return c
            host, port = split_address(address)
            try:
                with anyio.fail_after(self.connect_timeout):
                    if self.ssl_context is None:
                        stream: anyio.abc.ByteStream = await anyio.connect_tcp(host, port)
                    else:
                        # Like RocketMQ's clients: no close_notify is waited for.
                        stream = await anyio.connect_tcp(host, port, ssl_context=self.ssl_context,
                                                         tls_standard_compatible=False)
            except (OSError, TimeoutError, ssl.SSLError) as exc:
                raise RemotingConnectError(f"cannot connect to {address}: {exc}") from None
            c = RemotingConnection(stream, address, on_request=self.on_request,
                                   max_frame=self.max_frame, credentials=self.credentials)
            self._conns[address] = c
            assert self._tg is not None, "use RemotingClient as an async context manager"
            self._tg.start_soon(self._run, c)
            return c

    async def _run(self, c: RemotingConnection) -> None:
        try:
            await c.run()
        finally:
            if self._conns.get(c.address) is c:
                del self._conns[c.address]

    async def invoke(self, address: str, cmd: RemotingCommand,
                     timeout: float = DEFAULT_TIMEOUT) -> RemotingCommand:
        conn = await self.connection(address)
        return await conn.invoke(cmd, timeout)

    async def invoke_oneway(self, address: str, cmd: RemotingCommand) -> None:
        conn = await self.connection(address)
        await conn.invoke_oneway(cmd)

    async def close_connection(self, address: str) -> None:
        c = self._conns.pop(address, None)
        if c is not None:
            await c.aclose()


def check(resp: RemotingCommand, address: str = "", ok: tuple[int, ...] = (ResponseCode.SUCCESS,)
          ) -> RemotingCommand:
    """``resp`` if its code is one of ``ok``; else raise BrokerError."""
    if resp.code not in ok:
        raise BrokerError(resp.code, resp.remark, address)
    return resp
