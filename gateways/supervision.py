"""Every connection of every door runs under one supervisor: failures contained, limits enforced.

A door hands its listeners and its connection handler to a
``ConnectionSupervisor`` instead of calling ``trio.serve_listeners`` itself. The
supervisor accepts with a loop of its own (every connection waiting, per wake-up
of the listening socket: docs/operations.md, "Accepting connections"). For each
accepted connection the supervisor:

1. admits it or refuses it: past ``max_connections`` of the door, or
   ``max_connections_per_address`` from one client address, the connection is
   refused (the door's ``refuse`` says how: HTTP answers 503, the others close)
   and counted in ``ferrymq_connections_refused_total{protocol,reason}``;
2. runs the handler as ``handler(stream, watch)`` inside the ``Watch``'s
   cancel scope. Whatever the handler raises ends that connection and nothing
   else: it is logged once with the door, the peer and the exception (a
   traceback when it is a bug), counted in
   ``ferrymq_connection_errors_total{protocol,kind}`` (``internal``: a bug;
   ``protocol``: bad input the door let through; ``broken``: the peer went away
   mid-request), and the connection is closed;
3. enforces the door's time limits through the ``Watch``: the door says what
   the connection is doing (``waiting``, ``busy``, ``send_started``...), which
   sets a deadline (a float: no timer, no cancel scope per request); one
   watchdog task per door compares every connection's deadline with the clock
   a few times a second and cancels the ones that ran out. The closed
   connection is counted in ``ferrymq_connections_closed_total{protocol,reason}``
   (handshake_timeout, idle_timeout, frame_timeout, send_timeout);
4. holds the connection's share of the broker-wide ``RequestBudget`` and gives
   it back when the connection ends, however it ends;
5. when the door offers TLS (gateways/tls.py), runs the TLS handshake before the
   handler gets the connection: on the door's own listeners as its ``mode`` says
   (permissive: TLS or plaintext by the first byte; enforcing: TLS only), and on
   a TLS-only listener of its own that ``serve`` opens next to them (Kafka's SSL
   listener, MQTT's 8883 and WSS, HTTPS). The handshake must be done within the
   door's handshake timeout (else the TLS one): a client that opens TCP and never
   finishes it is closed like any slowloris (``handshake_timeout``); one that
   sends garbage, cuts the handshake or shows a certificate the CA does not vouch
   for is closed (``tls_handshake_failed``). The handler reads and writes the
   resulting stream as it would a plaintext one.

What the handler itself must still do is its protocol's job: answer bad input
with that protocol's error (docs/operations.md, "Connection limits").
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import socket
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import trio

from ..core.metrics import (
    CONNECTION_ERRORS,
    CONNECTIONS_CLOSED,
    CONNECTIONS_REFUSED,
    INFLIGHT_BYTES,
    INFLIGHT_WAITS,
    MetricsRegistry,
)
from .config import ConnectionLimits
from .tls import HandshakeFailed, TlsServer

log = logging.getLogger("ferrymq.connections")

# The protocol label of each door's metrics (OpenTelemetry's messaging.system where
# one applies, as DoorMetrics uses them).
PROTOCOLS = {"namesrv": "namesrv", "remoting": "rocketmq", "kafka": "kafka", "mqtt": "mqtt",
             "http": "http"}

HANDSHAKE_TIMEOUT = "handshake_timeout"
IDLE_TIMEOUT = "idle_timeout"
FRAME_TIMEOUT = "frame_timeout"
SEND_TIMEOUT = "send_timeout"
TLS_HANDSHAKE_FAILED = "tls_handshake_failed"

MIN_TICK_S = 0.02
MAX_TICK_S = 1.0  # deadlines are enforced to within a quarter of the smallest timeout, <= 1 s
SEND_CHUNK = 1 << 20  # a large response is sent in chunks: each gets send_timeout_s
# Connections accepted in one wake-up at most: a flood of connects lets the
# connections already open run between batches.
ACCEPT_BATCH = 64
ACCEPT_RETRY_S = 0.1  # after accept(2) ran out of descriptors or memory (EMFILE...)
# accept(2) failed for that connection only (it was reset, or a firewall refused it):
# take the next one (the errnos trio's SocketListener skips as well).
_ACCEPT_SKIP_ERRNOS = frozenset(
    getattr(errno, name) for name in ("EPERM", "ECONNABORTED", "EPROTO", "ENETDOWN",
                                      "ENOPROTOOPT", "EHOSTDOWN", "ENONET", "EHOSTUNREACH",
                                      "EOPNOTSUPP", "ENETUNREACH", "ENOSR", "ESOCKTNOSUPPORT",
                                      "EPROTONOSUPPORT", "ETIMEDOUT", "ECONNRESET")
    if hasattr(errno, name))
# The system is out of something: wait and try again.
_ACCEPT_CAPACITY_ERRNOS = frozenset((errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS))

# The peer went away: not our bug, not bad input.
_STREAM_ERRORS: tuple[type[BaseException], ...] = (
    trio.BrokenResourceError, trio.ClosedResourceError, ConnectionError)
_GONE_ERRNOS = frozenset((errno.ECONNRESET, errno.EPIPE, errno.ETIMEDOUT, errno.ENOTCONN,
                          errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNABORTED,
                          errno.EBADF))

Handler = Callable[[Any, "Watch"], Awaitable[None]]
Refuse = Callable[[Any, str], Awaitable[None]]


def _off(seconds: float) -> float:
    return seconds if seconds > 0 else math.inf


class RequestBudget:
    """The broker-wide budget of request bytes being received (Kafka's
    ``queued.max.request.bytes``). A connection takes a request's announced size
    before reading the rest of it and gives it back once the request is answered;
    when the budget is spent it waits, not reading (TCP pushes back on its peer),
    first come first served.

    A request larger than the whole budget takes all of it (it waits until nothing
    else is held): refusing it would make a valid request impossible."""

    def __init__(self, total: int, metrics: MetricsRegistry | None = None) -> None:
        self.total = total
        self.available = total
        self._waiters: deque[tuple[int, trio.Event]] = deque()
        self._gauge = metrics.gauge(*INFLIGHT_BYTES).labels() if metrics is not None else None
        self._waits = metrics.counter(*INFLIGHT_WAITS) if metrics is not None else None

    @property
    def held(self) -> int:
        return self.total - self.available

    def _take(self, n: int) -> None:
        self.available -= n
        if self._gauge is not None:
            self._gauge.set(self.total - self.available)

    def try_acquire(self, n: int) -> bool:
        n = min(n, self.total)
        if self._waiters or n > self.available:
            return False
        self._take(n)
        return True

    async def acquire(self, n: int, protocol: str = "") -> int:
        """Take ``n`` bytes (at most the whole budget), waiting for them; returns what
        was taken (give exactly that back)."""
        n = min(n, self.total)
        if not self._waiters and n <= self.available:
            self._take(n)
            return n
        if self._waits is not None:
            self._waits.labels(protocol).inc()
        entry = (n, trio.Event())
        self._waiters.append(entry)
        try:
            await entry[1].wait()
        except BaseException:
            if entry[1].is_set():
                self.release(n)  # granted while being cancelled: give it back
            else:
                self._waiters.remove(entry)
                self._wake()
            raise
        return n

    def release(self, n: int) -> None:
        self.available += n
        if self._gauge is not None:
            self._gauge.set(self.total - self.available)
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._waiters[0][0] <= self.available:
            n, event = self._waiters.popleft()
            self._take(n)
            event.set()


class Watch:
    """What the supervisor knows of one connection: its deadline and what the door
    says the connection is doing. The door calls these as its loop moves:

    - ``waiting(partial)`` before each read: ``partial`` when a request has begun
      arriving (its end must come within ``frame_timeout_s`` of its start), else the
      connection is idle (``idle_timeout_s``), or still in its handshake
      (``handshake_timeout_s`` from the accept, until ``handshake_done``);
    - ``busy()`` while a request is being handled (no read deadline: a long poll
      has its own bound);
    - ``send_started()`` / ``send_done()`` around a send (``send_timeout_s``);
    - ``reserve(n)`` before reading the rest of an ``n``-byte request, and
      ``release()`` once it is answered (the request-bytes budget).

    ``expired`` is the reason (``idle_timeout``...) once the watchdog has cancelled
    the connection; doors read it in their cleanup (HTTP answers 408 for a request
    that was too slow to arrive)."""

    # Small on purpose: an idle connection costs this, its socket and its door's state.
    __slots__ = ("_budget", "_handshake_until", "_limits", "_protocol", "addr", "deadline",
                 "expired", "held", "reason", "scope", "send_deadline", "tls")

    def __init__(self, limits: ConnectionLimits, addr: tuple[Any, ...] | None,
                 budget: RequestBudget | None, protocol: str, timed: bool = True) -> None:
        self._limits = limits
        self._budget = budget
        self._protocol = protocol
        self.addr = addr  # the peer's (host, port, ...), as getpeername gave it
        # Only a door with time limits needs a scope to cancel (the watchdog's).
        self.scope = trio.CancelScope() if timed else None
        self.expired: str | None = None
        self.held = 0
        self.send_deadline = math.inf
        # What TLS established (a gateways.tls.TlsSession: version, cipher, the client
        # certificate's subject), None on a plaintext connection.
        self.tls: Any = None
        now = trio.current_time()
        self._handshake_until = now + _off(limits.handshake_timeout_s)
        if self._handshake_until < math.inf:
            self.deadline, self.reason = self._handshake_until, HANDSHAKE_TIMEOUT
        else:
            self._handshake_until = 0.0
            self.deadline = now + _off(limits.idle_timeout_s)
            self.reason = IDLE_TIMEOUT

    @property
    def limits(self) -> ConnectionLimits:
        return self._limits

    @property
    def host(self) -> str:
        return str(self.addr[0]) if self.addr else "?"

    @property
    def peer(self) -> str:
        """The peer as ``host:port`` (``[host]:port`` for IPv6), for logs."""
        return _format_peer(self.addr)

    @property
    def handshaking(self) -> bool:
        return self._handshake_until > 0

    def handshake_done(self) -> None:
        """The first request is in (and authenticated, where the door authenticates)."""
        self._handshake_until = 0.0

    def waiting(self, partial: bool = False) -> None:
        """About to read; ``partial``: a request has begun arriving."""
        if self._handshake_until:
            self.deadline, self.reason = self._handshake_until, HANDSHAKE_TIMEOUT
        elif partial:
            if self.reason != FRAME_TIMEOUT:
                self.deadline = trio.current_time() + _off(self._limits.frame_timeout_s)
                self.reason = FRAME_TIMEOUT
        else:
            self.deadline = trio.current_time() + _off(self._limits.idle_timeout_s)
            self.reason = IDLE_TIMEOUT

    def busy(self) -> None:
        """A request is being handled: no read deadline until the next ``waiting``."""
        if not self._handshake_until:
            self.deadline, self.reason = math.inf, ""

    def touch(self) -> None:
        """Something was written: an idle connection's idle time starts over."""
        if self.reason == IDLE_TIMEOUT:
            self.deadline = trio.current_time() + _off(self._limits.idle_timeout_s)

    def send_started(self) -> None:
        self.send_deadline = trio.current_time() + _off(self._limits.send_timeout_s)

    def send_done(self) -> None:
        self.send_deadline = math.inf
        if self.reason == IDLE_TIMEOUT:
            self.deadline = trio.current_time() + _off(self._limits.idle_timeout_s)

    async def send_all(self, stream: Any, data: bytes | bytearray | memoryview) -> None:
        """``stream.send_all(data)`` under the send timeout (a large response in
        chunks, each with its own)."""
        self.send_started()
        try:
            if len(data) <= SEND_CHUNK:
                await stream.send_all(data)
            else:
                view = memoryview(data)
                for i in range(0, len(view), SEND_CHUNK):
                    self.send_started()
                    await stream.send_all(view[i:i + SEND_CHUNK])
        finally:
            self.send_done()

    async def reserve(self, n: int) -> None:
        """Hold ``n`` bytes of the request budget for the request being received
        (what this connection holds already counts). Waits, not reading, while the
        budget is spent; the wait is not a stalled frame."""
        budget = self._budget
        if budget is None or n <= self.held:
            return
        need = n - self.held
        if budget.try_acquire(need):
            self.held += min(need, budget.total)
            return
        saved = self.deadline, self.reason
        self.deadline, self.reason = math.inf, ""
        self.held += await budget.acquire(need, self._protocol)
        self.deadline, self.reason = saved
        if self.reason == FRAME_TIMEOUT:  # the frame's time starts once it may arrive
            self.deadline = trio.current_time() + _off(self._limits.frame_timeout_s)

    def release(self) -> None:
        """The request was answered: give its budget back."""
        if self.held:
            held, self.held = self.held, 0
            if self._budget is not None:
                self._budget.release(held)

    def expire(self, reason: str) -> None:
        self.expired = reason
        self.deadline = self.send_deadline = math.inf
        if self.scope is not None:
            self.scope.cancel()


class ConnectionSupervisor:
    """One door's connections: see the module docstring.

    ``protocol_errors``: the door's own protocol error classes (an escaped one
    is counted as ``protocol``, not as a bug). ``refuse(stream, reason)``: how the
    door turns a connection away (default: close it). ``tick_s``: how often
    deadlines are checked (default: a quarter of the smallest timeout).
    ``tls``: the door's TLS (None: plaintext only); ``host`` is where its TLS-only
    listeners bind and ``bound`` the server's door -> port table, where their
    ports are reported (``<door>-tls``, ``<door>-wss``)."""

    def __init__(self, door: str, limits: ConnectionLimits, metrics: MetricsRegistry | None,
                 *, budget: RequestBudget | None = None,
                 protocol_errors: tuple[type[BaseException], ...] = (),
                 refuse: Refuse | None = None, tick_s: float | None = None,
                 tls: TlsServer | None = None, host: str | None = None,
                 bound: dict[str, int] | None = None) -> None:
        self.door = door
        self.tls = tls
        self.host = host or None
        self.bound = bound if bound is not None else {}
        self.protocol = PROTOCOLS.get(door, door)
        self.limits = limits
        self.budget = budget
        self.protocol_errors = protocol_errors
        self._refuse = refuse
        self.live: set[Watch] = set()
        self.by_host: dict[str, int] = {}
        timeouts = [t for t in (limits.handshake_timeout_s, limits.idle_timeout_s,
                                limits.frame_timeout_s, limits.send_timeout_s) if t > 0]
        # No timeouts (MQTT keeps its own): no watchdog either, unless the door asks.
        self.timed = bool(timeouts) or tick_s is not None
        self.tick_s = tick_s if tick_s is not None else min(
            MAX_TICK_S, max(MIN_TICK_S, min(timeouts, default=4 * MAX_TICK_S) / 4))
        self.counts: dict[str, int] = {}  # kind or reason -> how many (for tests and stats)
        if metrics is None:
            metrics = MetricsRegistry()
        self._errors = metrics.counter(*CONNECTION_ERRORS)
        self._closed = metrics.counter(*CONNECTIONS_CLOSED)
        self._refused = metrics.counter(*CONNECTIONS_REFUSED)
        self._watchdogs = 0
        # Task names, given to trio (it would format one per connection otherwise).
        self._accept_name = f"ferrymq.{door}.accept"
        self._task_name = f"ferrymq.{door}.connection"

    # ------------------------------------------------------------ serving

    async def serve(self, listeners: list[trio.SocketListener], handler: Handler, *,
                    tls_listener: str = "port", tls_handler: Handler | None = None,
                    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Accept on ``listeners`` until cancelled, each connection supervised. May be
        called for several listener sets of one door (MQTT's TCP and WebSocket): the
        caps and the watchdog are the door's.

        With TLS, the door's ``mode`` applies to ``listeners``, and the TLS-only
        listener named by ``tls_listener`` (the ``port`` or ``ws_port`` of the door's
        TLS settings; "" for none) is opened next to them, its connections served by
        ``tls_handler`` (default ``handler``)."""
        tls = self.tls
        mode = tls.config.mode if tls is not None else "disabled"
        extra = getattr(tls.config, tls_listener) if tls is not None and tls_listener else None
        async with trio.open_nursery() as nursery:
            if not self._watchdogs and self.timed:
                nursery.start_soon(self._watchdog)
            self._watchdogs += 1
            try:
                if listeners:  # none: only the TLS listener (MQTT's WSS without plain WS)
                    run = partial(self.run, handler, tls=mode)
                    for listener in listeners:
                        self._accepting(nursery, listener, run)
                if extra is not None:
                    tls_listeners = await trio.open_tcp_listeners(extra, host=self.host)
                    name = f"{self.door}-{'wss' if tls_listener == 'ws_port' else 'tls'}"
                    self.bound[name] = tls_listeners[0].socket.getsockname()[1]
                    run = partial(self.run, tls_handler or handler, tls="enforcing")
                    for listener in tls_listeners:
                        self._accepting(nursery, listener, run)
                task_status.started()
                await trio.sleep_forever()
            finally:
                self._watchdogs -= 1

    def _accepting(self, nursery: trio.Nursery, listener: trio.SocketListener,
                   run: Callable[[Any, Any, Watch | str], Awaitable[None]]) -> None:
        """Start accepting on ``listener`` (``_accept``), its connections run in
        ``nursery``."""
        # A second descriptor of the listening socket, to call the standard library's
        # accept on (a trio socket offers only the async one); taken now, so that
        # ``serve`` fails if it cannot be.
        try:
            sock = socket.socket(fileno=os.dup(listener.socket.fileno()))
            sock.setblocking(False)
        except BaseException:
            listener.socket.close()
            raise
        nursery.start_soon(self._accept, listener, sock, nursery, run, name=self._accept_name)

    async def _accept(self, listener: trio.SocketListener, sock: socket.socket,
                      nursery: trio.Nursery, run: Callable[[Any, Any, Watch | str], Awaitable[None]]
                      ) -> None:
        """Accept on ``sock`` (``listener``'s) until cancelled: after one wake-up, every
        connection waiting (up to ``ACCEPT_BATCH``), each started as ``run(stream,
        addr)`` in ``nursery``. What ``trio.serve_listeners`` does, without its
        per-connection costs (docs/operations.md, "Accepting connections"):
        ``accept(2)`` is called on the listening socket directly (trio's ``accept``
        passes the scheduler once per connection), the peer address is the one
        ``accept`` gave (no ``getpeername``), and no wrapper task closes the stream
        again after ``run`` closed it."""
        tsock = listener.socket
        accept = sock.accept
        wrap = trio.socket.from_stdlib_socket
        stream_of = trio.SocketStream
        start = nursery.start_soon
        task = self._task_name
        try:
            while True:
                await trio.lowlevel.wait_readable(sock)
                for _ in range(ACCEPT_BATCH):
                    try:
                        conn, addr = accept()
                    except BlockingIOError:
                        break
                    except OSError as exc:
                        if exc.errno in _ACCEPT_SKIP_ERRNOS:
                            continue  # that connection went away before we took it
                        if exc.errno not in _ACCEPT_CAPACITY_ERRNOS:
                            raise
                        # Out of descriptors or memory: wait, then try again (the
                        # waiting connections stay in the kernel's backlog).
                        log.error("%s door: accept returned %s (%s); retrying in %s s",
                                  self.door, errno.errorcode[exc.errno],
                                  os.strerror(exc.errno), ACCEPT_RETRY_S,
                                  extra={"door": self.door})
                        await trio.sleep(ACCEPT_RETRY_S)
                        break
                    start(run, stream_of(wrap(conn)), addr, self._admit(addr), name=task)
        finally:
            trio.lowlevel.notify_closing(sock)
            sock.close()
            tsock.close()

    def _admit(self, addr: Any) -> Watch | str:
        """Admit a connection from ``addr`` (counted live, its handshake clock started)
        or say why not. Called as ``accept`` returns it, in accept order: the tasks of
        one batch of accepts start in an order of trio's choosing, and a later
        connection must not take an earlier one's place under the cap."""
        host = str(addr[0]) if addr else "?"
        refused = self._admission(host)
        if refused is not None:
            return refused
        self.by_host[host] = self.by_host.get(host, 0) + 1
        watch = Watch(self.limits, addr, self.budget, self.protocol, self.timed)
        self.live.add(watch)
        return watch

    async def run(self, handler: Handler, stream: Any, addr: Any = None,
                  admitted: Watch | str | None = None, *, tls: str = "disabled") -> None:
        """Supervise one accepted ``stream`` (``serve`` calls this; tests may too);
        ``addr``: the peer's address as ``accept`` gave it (None: asked of the
        stream); ``admitted``: what ``_admit`` said at accept (None: asked now);
        ``tls``: the listener's TLS mode."""
        if addr is None:
            addr = _addr(stream)
        if admitted is None:
            admitted = self._admit(addr)
        host = str(addr[0]) if addr else "?"
        if isinstance(admitted, str):
            refused = admitted
            self._count(self._refused, refused)
            peer = _format_peer(addr)
            log.info("%s door refused %s: %s", self.door, peer, refused,
                     extra={"door": self.door, "peer": peer, "reason": refused})
            try:
                # The door's refusal is plaintext (HTTP's 503): not for a TLS-only listener.
                if self._refuse is not None and tls != "enforcing":
                    with trio.move_on_after(1):
                        await self._refuse(stream, refused)
            except Exception as exc:
                self._contain(exc, peer)
            finally:
                await _close(stream)
            return
        watch = admitted
        by_host = self.by_host
        try:
            if tls != "disabled":
                handler = partial(self._tls_then, handler, tls == "enforcing")
            if watch.scope is not None:
                with watch.scope:
                    await handler(stream, watch)
            else:
                await handler(stream, watch)
        except Exception as exc:
            self._contain(exc, watch.peer)
        finally:
            self.live.discard(watch)
            left = by_host[host] - 1
            if left:
                by_host[host] = left
            else:
                del by_host[host]
            watch.release()
            if watch.expired is not None:
                self._count(self._closed, watch.expired)
                log.info("%s door closed %s: %s", self.door, watch.peer, watch.expired,
                         extra={"door": self.door, "peer": watch.peer,
                                "reason": watch.expired})
            await _close(stream)

    async def _tls_then(self, handler: Handler, enforcing: bool, stream: Any,
                        watch: Watch) -> None:
        """The TLS handshake (or, permissive, the first byte), then the handler."""
        tls = self.tls
        assert tls is not None
        limit = tls.config.handshake_timeout_s
        if self.limits.handshake_timeout_s > 0:
            limit = min(limit, self.limits.handshake_timeout_s)
        accepted = None
        with trio.move_on_after(limit) as timer:
            try:
                accepted = await tls.accept(stream, enforcing)
            except HandshakeFailed as exc:
                self._count(self._closed, TLS_HANDSHAKE_FAILED)
                log.info("%s door: TLS handshake with %s failed: %s", self.door, watch.peer,
                         exc, extra={"door": self.door, "peer": watch.peer,
                                     "reason": TLS_HANDSHAKE_FAILED})
                return
        if timer.cancelled_caught:
            watch.expired = HANDSHAKE_TIMEOUT
            return
        if accepted is None:
            return
        watch.tls = getattr(accepted, "tls", None)
        await handler(accepted, watch)

    def _admission(self, host: str) -> str | None:
        limits = self.limits
        if limits.max_connections and len(self.live) >= limits.max_connections:
            return "max_connections"
        per = limits.max_connections_per_address
        if per and self.by_host.get(host, 0) >= per:
            return "max_connections_per_address"
        return None

    def _count(self, counter: Any, what: str) -> None:
        counter.labels(self.protocol, what).inc()
        self.counts[what] = self.counts.get(what, 0) + 1

    def _contain(self, exc: BaseException, peer: str) -> None:
        kind = self.kind_of(exc)
        self._count(self._errors, kind)
        extra = {"door": self.door, "peer": peer, "kind": kind}
        if kind == "internal":
            log.error("%s connection from %s failed (%s: %s); closed", self.door, peer,
                      type(exc).__name__, exc, exc_info=exc, extra=extra)
        elif kind == "protocol":
            log.info("%s connection from %s: %s; closed", self.door, peer, exc, extra=extra)
        else:
            log.debug("%s connection from %s broke: %s", self.door, peer, exc, extra=extra)

    def kind_of(self, exc: BaseException) -> str:
        leaves = list(_leaves(exc))
        if all(_is_gone(e) for e in leaves):
            return "broken"
        if all(_is_gone(e) or isinstance(e, self.protocol_errors) for e in leaves):
            return "protocol"
        return "internal"

    async def _watchdog(self) -> None:
        while True:
            await trio.sleep(self.tick_s)
            now = trio.current_time()
            for watch in self.live:
                if watch.deadline <= now:
                    watch.expire(watch.reason or IDLE_TIMEOUT)
                elif watch.send_deadline <= now:
                    watch.expire(SEND_TIMEOUT)


def _leaves(exc: BaseException) -> Iterator[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc


def _is_gone(exc: BaseException) -> bool:
    if isinstance(exc, _STREAM_ERRORS):
        return True
    return isinstance(exc, OSError) and exc.errno in _GONE_ERRNOS


def _addr(stream: Any) -> tuple[Any, ...] | None:
    sock = getattr(stream, "socket", None)
    try:
        return sock.getpeername() if sock is not None else None
    except OSError:
        return None


def _format_peer(addr: tuple[Any, ...] | None) -> str:
    if not addr:
        return "?"
    host, port = str(addr[0]), addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _close(stream: Any) -> None:
    sock = getattr(stream, "socket", None)
    if sock is not None and sock.fileno() == -1:
        return  # the door closed it already (MQTT does): no cancel scopes, no checkpoint
    with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(
            trio.BrokenResourceError, trio.ClosedResourceError, OSError):
        await stream.aclose()
