"""The HTTP/1.1 socket loop: ``protocols.http.h1`` for the protocol, trio for the socket,
limits and timeouts.

One task per connection reads a request (head, then body up to the body
limit), hands a ``Request`` to the application, and writes its ``Response``
(or streams a ``StreamResponse``: server-sent events). ``h1`` is the sans-I/O
protocol object; this module only moves bytes and enforces time and size:

- a request head must arrive within ``header_timeout_s`` (slowloris), its body
  within ``body_timeout_s``; an idle keep-alive connection closes after
  ``keepalive_timeout_s``; every send must finish within ``send_timeout_s``
  (a client that stops reading cannot pin a response in memory);
- bodies above ``max_body_bytes`` are refused with 413 before they are read
  (Content-Length) or as soon as they pass the limit (chunked);
- with bearer tokens on, a request whose token does not pass gets 401 before
  more than ``pre_auth_max_bytes`` of its body is read;
- heads above ``max_header_bytes`` get 431, counted while they arrive;
- past ``max_connections`` (or ``max_connections_per_address``) a new
  connection gets 503 and is closed.

Connections run under the door's ``ConnectionSupervisor`` (gateways/
supervision.py), which contains whatever a connection raises, enforces the
caps and owns the watchdog. Timeouts cost a float per phase: each
connection's ``Watch`` has a ``deadline`` that moves with the phase of the
request, and the door's watchdog cancels the connections whose deadline has
passed (to WATCHDOG_TICK_S). Neither a cancel scope per request nor trio's
deadline bookkeeping per phase (the measured cost of hypercorn's trio worker,
see docs/http.md). A response is first written with a plain non-blocking
write; only what the socket does not take at once goes through trio's
send_all, under the send timeout.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio
from ferrymq.protocols.http import h1

from ..supervision import FRAME_TIMEOUT, IDLE_TIMEOUT, ConnectionSupervisor, Watch
from .problems import PROBLEM_CONTENT_TYPE, Problem, problem_body

log = logging.getLogger("ferrymq.http")

RECV_BYTES = 64 * 1024
WATCH_STASH_BYTES = 64 * 1024  # pipelined bytes kept while a long poll watches the socket
WATCHDOG_TICK_S = 0.25  # timeouts are enforced to within this


@dataclass(frozen=True, slots=True)
class Limits:
    """The door's safety limits; every one is an ``[http]`` option of the same name."""

    max_body_bytes: int = 8 << 20
    max_header_bytes: int = 16 << 10  # request line and headers
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 75.0  # longer than common clients' pools keep idle sockets
    send_timeout_s: float = 30.0
    request_timeout_s: float = 30.0  # a handler that does not wait (produce, admin)
    max_wait_s: float = 30.0  # long-poll cap (Confluent REST, RocketMQ HTTP: about 30 s)
    max_long_polls: int = 1000
    max_long_polls_per_group: int = 100
    max_streams: int = 256
    sse_heartbeat_s: float = 15.0
    # A stream ends after this long; EventSource clients reconnect with Last-Event-ID
    # (the retry: hint is 1 s), so no response lives unbounded behind a proxy.
    stream_max_s: float = 3600.0

    @classmethod
    def from_options(cls, options: dict[str, Any], others: tuple[str, ...] = ()) -> Limits:
        """The limits named in ``options`` (the ``[http]`` table); any name that is
        neither a limit nor one of ``others`` is a mistake worth stopping for."""
        unknown = set(options) - set(cls.__dataclass_fields__) - set(others)
        if unknown:
            raise ValueError(f"[http] unknown option(s): {', '.join(sorted(unknown))}")
        known = {k: options[k] for k in cls.__dataclass_fields__ if k in options}
        try:
            out = cls(**known)
        except TypeError as exc:
            raise ValueError(f"[http] {exc}") from None
        for name in cls.__dataclass_fields__:
            value = getattr(out, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ValueError(f"[http] {name} must be a positive number")
        return out


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[bytes, bytes]  # lower-case name -> value (the last, if repeated)
    body: bytes
    conn: Connection
    params: dict[str, Any] = field(default_factory=dict)
    route: Any = None
    principal: Any = None  # who the Broker calls act for (app.py sets it: a core Principal)

    def header(self, name: bytes) -> str | None:
        """The last value of a header (``name`` lower-case), or None."""
        found = self.headers.get(name)
        return found.decode("latin-1") if found is not None else None

    @property
    def content_type(self) -> str:
        """The media type without parameters, lower-case ("" when absent)."""
        ct = self.header(b"content-type")
        return ct.split(";", 1)[0].strip().lower() if ct else ""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class StreamResponse:
    """A response whose body is produced over time (text/event-stream). ``chunks``
    yields bytes to send; the connection closes its iterator when the client goes."""

    status: int
    content_type: str
    chunks: AsyncIterator[bytes]
    headers: list[tuple[str, str]] = field(default_factory=list)


class App(Protocol):
    """What the connection loop needs of the application. An ``authenticator``
    attribute, when the application has one (called with a Request, True lets it
    through), also guards the body before it is read (``pre_auth_max_bytes``)."""

    limits: Limits

    async def handle(self, request: Request) -> Response | StreamResponse: ...

    def connection_opened(self) -> None: ...

    def connection_closed(self) -> None: ...


class ClientGone(Exception):
    """The client closed its side while a long request waited for data."""


_CLOSED = object()  # the client closed its side
_NO_BODY_STATUSES = frozenset((204, 304))
REQUEST_TIMEOUT = "request_timeout"
# What the watchdog closes a connection for, by the phase it was in.
_PHASE_REASONS = {"idle": IDLE_TIMEOUT, "head": FRAME_TIMEOUT, "body": FRAME_TIMEOUT,
                  "handle": REQUEST_TIMEOUT}


class Connection:
    """One client connection; ``run`` serves its requests until either side closes."""

    def __init__(self, stream: trio.SocketStream, app: App, watch: Watch) -> None:
        self.stream = stream
        self.app = app
        self.limits = app.limits
        self.watch = watch
        self.p = h1.ServerConnection(self.limits.max_header_bytes)
        watch.deadline = math.inf
        # Plaintext: small responses go straight to the socket; over TLS (no file
        # descriptor to write to) every response goes through the stream.
        self._fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.peer_closed = False
        self._watching = False
        self._head: h1.RequestHead | None = None
        self._body_done = True  # the current request was read to its end
        self._responded = False  # a response to the current request has begun
        self._close = False  # this connection ends after the current response
        self._pending_error: h1.HttpProtocolError | None = None  # met while watching a long poll

    @property
    def deadline(self) -> float:
        """When the watchdog closes this connection (trio time; inf: never)."""
        return self.watch.deadline

    @deadline.setter
    def deadline(self, when: float) -> None:
        watch = self.watch
        watch.deadline = when
        watch.reason = _PHASE_REASONS[self._phase]

    # ------------------------------------------------------------ reading

    async def _receive(self) -> None:
        data = await self.stream.receive_some(RECV_BYTES)
        if not data:
            self.peer_closed = True
        self.p.receive_data(data)

    async def _next_event(self) -> object:
        p = self.p
        while True:
            ev = p.next_event()
            if ev is not h1.NEED_DATA:
                return ev
            if p.closed:
                return _CLOSED
            await self._receive()

    async def _read_request(self) -> Request | None:
        """The next request with its whole body, or None once the client is done."""
        if self._pending_error is not None:
            raise self._pending_error
        self._phase = "idle"
        self._head = None
        self._responded = False
        self._body_done = False
        self.deadline = trio.current_time() + self.limits.keepalive_timeout_s
        p = self.p
        ev = p.next_event()
        if ev is h1.NEED_DATA:
            if p.closed:
                return None
            data = await self.stream.receive_some(RECV_BYTES)
            if not data:
                return None  # closed between requests: the normal end of keep-alive
            self._phase = "head"
            self.deadline = trio.current_time() + self.limits.header_timeout_s
            p.receive_data(data)
            ev = await self._next_event()
        if ev is _CLOSED:
            return None  # closed in the middle of a head: nobody to answer
        if type(ev) is not h1.RequestHead:
            raise h1.HttpProtocolError(f"unexpected {type(ev).__name__}")
        self._head = head = ev
        self._phase = "body"
        self._method = head.method
        if head.version not in ("1.1", "1.0"):
            raise Problem("http_version_not_supported", "FerryMQ speaks HTTP/1.1 and 1.0")
        path, _, query = head.target.partition("?")
        headers = head.headers
        length = headers.get(b"content-length")
        if length is not None and int(length) > self.limits.max_body_bytes:
            raise Problem("body_too_large", f"the body is {int(length)} bytes; the limit is "
                                            f"{self.limits.max_body_bytes}")
        limit = self.limits.max_body_bytes
        pre_auth = self.watch.limits.pre_auth_max_bytes
        authenticate = getattr(self.app, "authenticator", None)
        unauthenticated = False
        if (pre_auth and authenticate is not None
                and (length is None or int(length) > pre_auth)
                and not authenticate(Request(self._method, path, query, headers, b"", self))):
            # No valid token: this request ends in 401 whatever its body; read at
            # most pre_auth_max_bytes of it (a chunked one), none if it says more.
            if length is not None:
                raise _unauthorized()
            unauthenticated, limit = True, pre_auth
        self.deadline = trio.current_time() + self.limits.body_timeout_s
        ev = p.next_event()
        if ev is h1.NEED_DATA and head.expect_continue:
            await self._send(h1.CONTINUE)
        chunks: list[bytes] = []
        size = 0
        while True:
            if ev is h1.NEED_DATA:
                ev = await self._next_event()
            if ev is h1.END:
                break
            if ev is _CLOSED:
                raise h1.HttpProtocolError("the body ended early")
            size += len(ev)  # type: ignore[arg-type]
            if size > limit:
                if unauthenticated:
                    raise _unauthorized()
                raise Problem("body_too_large", f"the body passed the limit of {limit}")
            chunks.append(ev)  # type: ignore[arg-type]
            ev = p.next_event()
        self._body_done = True
        self._phase = "handle"
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return Request(self._method, path, query, headers, body, self)

    # ------------------------------------------------------------ writing

    async def _send(self, data: bytes | None) -> None:
        if not data:
            return
        if self._fd < 0:
            await self.watch.send_all(self.stream, data)
            return
        try:
            n = os.write(self._fd, data)
        except BlockingIOError:
            n = 0
        except OSError as exc:
            raise trio.BrokenResourceError(str(exc)) from None
        if n < len(data):
            # The client is not reading fast enough: wait, but not forever.
            await self.watch.send_all(self.stream, memoryview(data)[n:])

    def _ends_here(self) -> bool:
        """Whether the connection closes after the current response."""
        head = self._head
        return (self._close or head is None or not head.keep_alive or self.p.must_close
                or not self._body_done)

    def _response_bytes(self, status: int, content_type: str, headers: list[tuple[str, str]],
                        body: bytes) -> bytes:
        self._responded = True
        self._close = close = self._ends_here()
        if status in _NO_BODY_STATUSES:
            return h1.response_head(status, headers, None if status == 304 else 0, "1.1", close)
        out = h1.response_head(status, [("content-type", content_type), *headers], len(body),
                               "1.1", close)
        return out + body if body and self._method != "HEAD" else out

    async def send_response(self, resp: Response) -> None:
        await self._send(self._response_bytes(resp.status, resp.content_type, resp.headers,
                                              resp.body))

    async def send_stream(self, resp: StreamResponse) -> None:
        self._responded = True
        version = self._head.version if self._head is not None else "1.1"
        # HTTP/1.0 has no chunked coding: the body runs to the close.
        self._close = close = self._ends_here() or version != "1.1"
        await self._send(h1.response_head(resp.status, [("content-type", resp.content_type),
                                                         *resp.headers], None, version, close))
        if self._method == "HEAD":
            if version == "1.1":
                self._close = True  # a chunked head with no body would confuse a reader
            return
        chunks = resp.chunks
        framed = version == "1.1"

        async def pump() -> None:
            async for piece in chunks:
                if piece:
                    await self._send(h1.chunk(piece) if framed else piece)
            if framed:
                await self._send(h1.LAST_CHUNK)

        try:
            await self.until_disconnect(pump)
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                with trio.CancelScope(shield=True):
                    await aclose()

    def _problem_bytes(self, problem: Problem, instance: str | None = None) -> bytes:
        if self._responded:
            return b""  # too late for another status line
        headers = list(problem.headers)
        return self._response_bytes(problem.status, PROBLEM_CONTENT_TYPE, headers,
                                    problem.body(instance))

    async def send_problem(self, problem: Problem, instance: str | None = None) -> None:
        await self._send(self._problem_bytes(problem, instance))

    # ------------------------------------------------------------ long requests

    async def until_disconnect(self, fn: Callable[[], Awaitable[Any]]) -> Any:
        """Run ``fn`` while watching the socket: if the client closes its side, cancel
        ``fn`` and raise ClientGone. Bytes that arrive meanwhile (a pipelined next
        request) go to the parser, up to WATCH_STASH_BYTES."""
        if self._watching or self.peer_closed:
            return await fn()
        result: list[Any] = []
        broken: list[BaseException] = []
        gone = False

        # Both tasks keep their stream errors to themselves (a nursery would wrap
        # them in an ExceptionGroup); the first one out cancels the other.
        async def work() -> None:
            try:
                result.append(await fn())
            except Exception as exc:  # re-raised unwrapped below
                broken.append(exc)
            nursery.cancel_scope.cancel()

        async def watch() -> None:
            nonlocal gone
            stashed = 0
            try:
                while stashed < WATCH_STASH_BYTES and self._pending_error is None:
                    data = await self.stream.receive_some(RECV_BYTES)
                    if not data:
                        break
                    stashed += len(data)
                    try:
                        self.p.receive_data(data)
                    except h1.HttpProtocolError as exc:
                        self._pending_error = exc  # answered once this request is done
                else:
                    await trio.sleep_forever()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            gone = self.peer_closed = True
            nursery.cancel_scope.cancel()

        self._watching = True
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(work)
                nursery.start_soon(watch)
        finally:
            self._watching = False
        if broken:
            raise broken[0]
        if gone and not result:
            raise ClientGone()
        return result[0] if result else None

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        app = self.app
        app.connection_opened()
        try:
            await self._serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, ClientGone):
            pass
        finally:
            if self.watch.expired is not None and self._phase in ("head", "body"):
                # A client too slow to send its request: tell it, then close.
                try:
                    data = self._problem_bytes(Problem("request_timeout"))
                    if data and self._fd >= 0:
                        os.write(self._fd, data)
                except OSError:
                    pass
            app.connection_closed()
            with trio.move_on_after(1) as cs:
                cs.shield = True
                await self.stream.aclose()

    _method = "GET"
    _phase = "idle"  # idle (keep-alive) | head | body | handle

    async def _serve(self) -> None:
        app = self.app
        while True:
            try:
                req = await self._read_request()
            except h1.HttpProtocolError as exc:
                self._close = True
                code = _PROTOCOL_PROBLEMS.get(exc.status, "bad_request")
                await self.send_problem(Problem(code, str(exc)))
                return
            except Problem as p:
                self._close = True
                await self.send_problem(p)
                return
            if req is None:
                return
            # The application sets the request deadline once it knows the route
            # (long polls and streams have their own bounds).
            self.deadline = math.inf
            resp = await app.handle(req)
            if isinstance(resp, StreamResponse):
                self.deadline = math.inf
                await self.send_stream(resp)
            else:
                await self.send_response(resp)
            if self._close:
                return


_PROTOCOL_PROBLEMS = {431: "headers_too_large", 505: "http_version_not_supported"}


def _unauthorized() -> Problem:
    return Problem("unauthorized", "a valid bearer token is required",
                   (("WWW-Authenticate", 'Bearer realm="ferrymq"'),))


async def refuse(stream: trio.SocketStream, reason: str) -> None:
    """The supervisor's way of turning a connection away at this door: 503."""
    body = problem_body("too_many_connections")
    await stream.send_all(
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: " + PROBLEM_CONTENT_TYPE.encode()
        + b"\r\nconnection: close\r\ncontent-length: " + str(len(body)).encode()
        + b"\r\n\r\n" + body)


def supervisor_limits(base: Any, limits: Limits) -> Any:
    """The supervisor's ConnectionLimits with HTTP's own timeouts in them: the idle
    (keep-alive) and send timeouts are the Watch's; the head and body phases set
    their deadlines themselves."""
    from dataclasses import replace
    return replace(base, idle_timeout_s=limits.keepalive_timeout_s,
                   send_timeout_s=limits.send_timeout_s)


async def serve_connections(listeners: list[trio.SocketListener], app: App,
                            supervisor: ConnectionSupervisor, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                            ) -> None:
    """Accept connections until cancelled, each one a supervised ``Connection``."""

    async def handler(stream: trio.SocketStream, watch: Watch) -> None:
        await Connection(stream, app, watch).run()

    await supervisor.serve(listeners, handler, task_status=task_status)
