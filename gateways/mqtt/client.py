"""One MQTT client connection: read bytes, feed the protocol objects, act, write what they build.

A ``Client`` runs two tasks: the reader (this module's loop) and a writer that
drains the out buffer. Deliveries append to the out buffer synchronously, so a
dispatcher never waits for a socket; a full buffer (``max_outbuf``) makes the
session queue (QoS 1/2) or drop (QoS 0) instead.

Two sans-I/O objects decide what is allowed: ``ServerConnection`` (framing,
packet order, topic aliases, sizes) and the session's ``SessionState`` (the
QoS 1/2 flows both ways: every PUBLISH with a packet id, PUBACK, PUBREC,
PUBREL and PUBCOMP passes through its tables). Anything the client does wrong
ends in ``MqttError``: the connection object says what to send before
closing. Every publish is stored by the hub's one store path
(``publish.StorePath``); a core error is answered by ``errors.answer_for``.
``Client`` implements ``sessions.Connection``, the interface the hub and the
session use, so they never import this module.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import uuid
from time import perf_counter
from typing import Any

import trio

from ...core.access import (
    ANONYMOUS_NAME,
    MECHANISM_ANONYMOUS,
    MECHANISM_MQTT_PASSWORD,
    Principal,
)
from ...core.errors import FerryError
from ...core.message import now_ms
from ...protocols.mqtt import codec
from ...protocols.mqtt.codec import MqttError
from ...protocols.mqtt.connection import ServerConnection
from ...protocols.mqtt.constants import MQTT_3_1, MQTT_5, SESSION_NEVER_EXPIRES, Prop, Reason
from ...protocols.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    Will,
)
from ...protocols.mqtt.session import Action
from ...protocols.mqtt.topics import parse_filter
from ...protocols.sentinels import NEED_DATA, NeedData
from .delivery import Delivery, SubOpts
from .errors import Answer, answer_for
from .hub import Hub
from .sessions import Session

# The supervisor's names of why a limit closed a connection (gateways/supervision.py).
HANDSHAKE_TIMEOUT, IDLE_TIMEOUT = "handshake_timeout", "idle_timeout"
FRAME_TIMEOUT, SEND_TIMEOUT = "frame_timeout", "send_timeout"

_PACKET_NAMES: dict[type, str] = {t: t.__name__.lower() for t in (Publish, Puback, Pubrec, Pubrel, Pubcomp,
                                                 Subscribe, Unsubscribe, Pingreq, Disconnect,
                                                 Auth)}

log = logging.getLogger("ferrymq.mqtt")

RECV_SIZE = 65536
KEEP_ALIVE_FACTOR = 1.5  # 3.1.2.10: one and a half times the Keep Alive
CLOSE_GRACE = 2.0  # seconds to flush the last bytes (a DISCONNECT) before closing
_STOP = object()
BATCH_MAX = 256  # publishes stored together at most


class Client:
    """See the module docstring. ``stream`` is any trio Stream (TCP or WebSocket).

    An idle connection is one task (this reader, one coroutine frame): the
    writer is a task started in the hub's nursery only while there are bytes
    to send, and the CONNECT timeout and keep alive are a ``deadline`` that one
    hub task checks for every client (docs/mqtt.md, "Performance").

    The deadline is, in turn: the CONNECT timeout; then 1.5 x the keep alive from
    the last complete packet (bytes of a packet that never ends do not count), or
    ``packet_timeout`` from the start of a packet being received, whichever comes
    first. ``send_deadline`` bounds a send to a client that does not read
    (``send_timeout``). ``watch`` is the connection supervisor's: it gets the
    reason a limit closed the connection (counted per reason) and the pre-auth
    packet limit (``pre_auth_max_bytes``, for CONNECT)."""

    __slots__ = ("_closed", "_idle", "_reading", "_tcp", "_writing", "access", "client_id",
                 "conn", "deadline", "expiry_reason", "hub", "keep_alive", "max_outbuf",
                 "outbuf", "publish_will", "send_deadline", "session", "stream", "transport",
                 "version", "watch", "will")

    def __init__(self, hub: Hub, stream: Any, transport: str = "tcp", watch: Any = None) -> None:
        self.hub = hub
        self.stream = stream
        self.transport = transport
        self.watch = watch
        self.conn = ServerConnection(hub.limits)
        self.outbuf = bytearray()
        self.max_outbuf = hub.options.max_outbuf
        self.session: Session | None = None
        self.version = 0
        self.client_id = ""
        self.keep_alive = 0
        self.will: Will | None = None
        self.publish_will = True
        self.access = hub.open_access
        self.deadline = math.inf  # trio time; the hub's sweeper calls ``expire`` past it
        self.expiry_reason = HANDSHAKE_TIMEOUT  # what running past ``deadline`` means
        self.send_deadline = math.inf  # a send under way must be done by then
        self._writing = False
        self._reading = False  # the reader is handling packets: it sends their answers itself
        self._closed = False
        self._idle: trio.Event | None = None  # set when the writer stops / the client ends
        # A plain TCP stream's trio socket: read and written by its descriptor (see
        # ``_receive`` and ``_send_all``); None for TLS and WebSocket streams.
        self._tcp = stream.socket if type(stream) is trio.SocketStream else None

    # ------------------------------------------------------------ output

    @property
    def writable(self) -> bool:
        return len(self.outbuf) < self.max_outbuf

    def write(self, data: bytes) -> None:
        if data:
            self.outbuf += data
            if not self._writing and not self._reading:
                self._start_writer()

    def _start_writer(self) -> None:
        if self._closed:
            return
        self._writing = True
        nursery = self.hub.nursery
        assert nursery is not None
        nursery.start_soon(self._writer)

    def send(self, packet: Packet) -> None:
        data = self.conn.send(packet)
        if data:
            self.write(data)

    def send_pubrel(self, pid: int) -> None:
        self.write(codec.encode(Pubrel(pid), self.version))

    def send_delivery(self, d: Delivery, qos: int, retain: bool, sub_ids: tuple[int, ...],
                      pid: int, dup: bool = False) -> bool:
        """Encode and buffer one PUBLISH; False when it is not sent (expired, or larger
        than the client's Maximum Packet Size: 3.1.2.11.4, dropped as if delivered)."""
        now = now_ms() if d.expiry_at else 0
        if d.expiry_at and d.expired(now):
            self.hub.stats["expired"] += 1
            return False
        conn = self.conn
        cacheable = not qos and not sub_ids and not conn.client_topic_alias_maximum
        if cacheable:
            key = (self.version, retain)
            data = d.cache.get(key)
            if data is not None:
                if len(data) > conn.client_max_packet_size:
                    return False
                self.write(data)
                self.hub.stats["sent"] += 1
                if d.src is not None:  # a stored message (not $SYS, not retained)
                    self.hub.metrics.messages_out(d.src[0])
                return True
        props = None
        if self.version == MQTT_5:
            props = d.v5_props(now)
            if sub_ids:
                props = codec.extend_properties(props, codec.subscription_ids(sub_ids))
        data = conn.send_publish(d.topic, d.payload, qos, retain, dup, pid or None, props)
        if data is None:
            self.hub.stats["oversize_dropped"] += 1
            return False
        if cacheable and not d.expiry_at:
            d.cache[key] = data
        self.write(data)
        self.hub.stats["sent"] += 1
        if d.src is not None:
            self.hub.metrics.messages_out(d.src[0])
        return True

    async def _send_all(self, data: bytes | bytearray) -> None:
        tcp = self._tcp
        if tcp is not None:
            # TCP: one write(2) first. The socket is non-blocking and usually takes
            # it all, and then no trip through trio's scheduler is needed (trio's
            # send_all always yields after sending); the rest goes the usual way.
            fd = tcp.fileno()
            if fd < 0:
                raise trio.ClosedResourceError("the socket was closed")
            try:
                n = os.write(fd, data)
            except BlockingIOError:
                n = 0
            if n == len(data):
                return
            data = memoryview(data)[n:]  # type: ignore[assignment]
        timeout = self.hub.options.send_timeout
        if timeout > 0:
            self.send_deadline = trio.current_time() + timeout
        try:
            await self.stream.send_all(data)
        finally:
            self.send_deadline = math.inf

    async def _receive(self, first: bool = False) -> bytes:
        """The next bytes from the client (b"": end of file). On TCP, read(2) on the
        descriptor: a read that had to wait for the socket has yielded already, so
        only one that found data at once yields (as trio's receive_some does after
        every read), letting others run; ``first`` (a task just started) skips that."""
        tcp = self._tcp
        if tcp is None:
            return await self.stream.receive_some(RECV_SIZE)
        waited = False
        while True:
            fd = tcp.fileno()
            if fd < 0:  # closed under us (_abort): the descriptor may be reused already
                raise trio.ClosedResourceError("the socket was closed")
            try:
                data = os.read(fd, RECV_SIZE)
            except BlockingIOError:
                await trio.lowlevel.wait_readable(tcp)
                waited = True
                continue
            if not waited and not first:
                await trio.lowlevel.checkpoint()
            return data

    async def _flush(self) -> None:
        """The reader sends what its packets produced (no writer task per reply)."""
        self._writing = True
        try:
            while self.outbuf and not self._closed:
                data, self.outbuf = self.outbuf, bytearray()
                await self._send_all(data)
                self.hub.stats["bytes_sent"] += len(data)
                s = self.session
                if s is not None and s.client is self:
                    s.pump()
        finally:
            self._writing = False

    async def _writer(self) -> None:
        """Send the out buffer until it stays empty, then end (started by ``write``)."""
        stats = self.hub.stats
        try:
            # Let every task that is ready run first (readers acknowledging,
            # dispatchers routing): what they add leaves in the same send.
            await trio.sleep(0)
            while self.outbuf and not self._closed:
                data, self.outbuf = self.outbuf, bytearray()
                await self._send_all(data)
                stats["bytes_sent"] += len(data)
                s = self.session
                if s is not None and s.client is self:
                    s.pump()
                if not self.outbuf:
                    await trio.sleep(0)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._stop_reading()  # the peer is gone
        except Exception:  # a bug here must not take the hub's nursery down
            stats["internal_errors"] += 1
            log.exception("mqtt writer of %r failed", self.client_id)
            self._stop_reading()
        finally:
            self._writing = False
            if self._idle is not None:
                self._idle.set()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> None:
        """Serve the connection to its end. One coroutine frame on purpose: an idle
        client costs this frame, its socket and its session (docs/mqtt.md)."""
        hub = self.hub
        if len(hub.clients) >= hub.options.max_connections:
            hub.stats["connections_refused"] += 1
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError,
                                     OSError):
                await self.stream.aclose()
            return
        hub.clients.add(self)
        metrics = hub.metrics
        metrics.connection_opened()
        self.deadline = trio.current_time() + hub.options.connect_timeout
        conn = self.conn
        stats = hub.stats
        receive = self._receive
        pre_auth = self.watch.limits.pre_auth_max_bytes if self.watch is not None else 0
        if 0 < pre_auth < conn.limits.max_packet_size:
            # Until CONNECT is accepted, a packet (CONNECT) may be this large at most.
            conn.limits = hub.pre_auth_limits(pre_auth)
        try:
            connect = None
            first = True
            while connect is None:
                ev = conn.next_event()
                if ev is not NEED_DATA:
                    assert isinstance(ev, Connect)
                    connect = ev
                    break
                data = await receive(first)
                first = False
                if not data:
                    return
                stats["bytes_received"] += len(data)
                conn.receive_data(data)
            self._reading = True
            accepted = await self._accept(connect)
            self._reading = False
            if self.outbuf and not self._writing:
                await self._flush()
            if not accepted:
                return
            conn.limits = hub.limits
            timeout = self.keep_alive * KEEP_ALIVE_FACTOR if self.keep_alive else math.inf
            packet_timeout = hub.options.packet_timeout or math.inf
            now = trio.current_time
            last_packet = now()
            started = math.inf  # when the packet being received began arriving
            session = self.session
            assert session is not None
            flows = session.flows
            batch: list[Publish] = []
            while True:
                self._reading = True
                ev = conn.next_event()
                got = ev is not NEED_DATA
                freed = False
                while not isinstance(ev, NeedData):
                    if type(ev) is Publish and ev.qos < 2:
                        # QoS 0/1 publishes read together are stored together: one
                        # batch record per queue (docs/mqtt.md, "Batches").
                        if ev.qos:
                            flows.receive_publish(ev)  # 4.9: raises past Receive Maximum
                        batch.append(ev)
                        if len(batch) >= BATCH_MAX:
                            await self._timed_publish_batch(batch)
                            batch.clear()
                    elif type(ev) is Puback:
                        # The client acknowledges our QoS 1 PUBLISHes: the window is
                        # refilled once for all the PUBACKs of one read (below).
                        if flows.receive_ack(ev)[0] is Action.FREE:
                            freed = True
                    else:
                        if batch:
                            await self._timed_publish_batch(batch)
                            batch.clear()
                        t0 = perf_counter()
                        if await self._handle(ev) is _STOP:
                            return
                        metrics.observe(_PACKET_NAMES[type(ev)], perf_counter() - t0)
                    ev = conn.next_event()
                if batch:
                    await self._timed_publish_batch(batch)
                    batch.clear()
                if freed and session.client is self:
                    t0 = perf_counter()
                    session.pump()
                    metrics.observe("puback", perf_counter() - t0)  # once per read
                self._reading = False
                if self.outbuf and not self._writing:
                    await self._flush()
                # The hub's sweeper enforces the deadline (``expire``). Only a complete
                # packet restarts the keep alive (3.1.2.10); a packet begun must end
                # within packet_timeout (a slowloris after CONNECT).
                t = now()
                if got:
                    last_packet = t
                if not conn.pending:
                    started = math.inf
                elif got or started == math.inf:
                    started = t
                if started + packet_timeout < last_packet + timeout:
                    self.deadline, self.expiry_reason = started + packet_timeout, FRAME_TIMEOUT
                else:
                    self.deadline, self.expiry_reason = last_packet + timeout, IDLE_TIMEOUT
                data = await receive()
                if not data:
                    return
                stats["bytes_received"] += len(data)
                conn.receive_data(data)
        except MqttError as err:
            stats["protocol_errors"] += 1
            metrics.error("packet", f"{err.reason:#04x}")
            log.info("mqtt client %r: %s (reason %#x)", self.client_id, err.detail, err.reason)
            self.write(conn.error_bytes(err))
        except FerryError as exc:
            # A core error outside a publish (which is answered in its acknowledgement):
            # CONNACK with the reason before the session began, else DISCONNECT (5.0).
            stats["core_errors"] += 1
            metrics.error("connection", exc.code)
            log.warning("mqtt client %r: %s", self.client_id, exc)
            reason = answer_for(exc).reason
            if conn.connect is not None and not conn.accepted:
                self.write(codec.encode(Connack(False, reason), conn.version))
            else:
                self.write(conn.error_bytes(MqttError(str(exc), reason)))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
        except Exception:  # one connection's bug must not end the door: count, log, close
            stats["internal_errors"] += 1
            log.exception("mqtt connection of %r failed", self.client_id)
        finally:
            self._reading = False
            hub.clients.discard(self)
            metrics.connection_closed()
            if self._writing or self.outbuf:
                # A writer is busy, or a DISCONNECT / refusing CONNACK was written
                # last: let it out, for a bounded time even during shutdown.
                with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_GRACE):
                    if self._writing:
                        self._idle = trio.Event()
                        await self._idle.wait()
                    else:
                        with contextlib.suppress(trio.BrokenResourceError,
                                                 trio.ClosedResourceError, OSError):
                            await self._flush()
            self._closed = True
            self._finish()
            sock = getattr(self.stream, "socket", None)
            if sock is not None:
                sock.close()  # TCP: closing needs no await (SocketStream.aclose adds a checkpoint)
            else:
                with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(
                        trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    await self.stream.aclose()  # WebSocket: a close frame first
            if self._idle is not None:
                self._idle.set()

    async def wait_closed(self) -> None:
        if self._closed:
            return
        if self._idle is None:
            self._idle = trio.Event()
        while not self._closed:
            await self._idle.wait()
            self._idle = trio.Event()

    def _stop_reading(self) -> None:
        """End the reader from outside: its pending receive returns end-of-file, and
        it closes after the writer has flushed what was written before."""
        stream = self.stream
        sock = getattr(stream, "socket", None) or getattr(getattr(stream, "stream", None),
                                                          "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RD)

    def expire(self) -> None:
        """The hub's sweeper found a deadline passed: no CONNECT in time, no packet
        within 1.5 x Keep Alive (3.1.2.10: close, will included), a packet begun and
        not ended within packet_timeout, or a send the client did not take within
        send_timeout (closed at once: it reads nothing, a DISCONNECT would not reach it)."""
        stats = self.hub.stats
        if self.send_deadline <= trio.current_time():
            self.send_deadline = math.inf
            stats["send_timeouts"] += 1
            self._expired(SEND_TIMEOUT)
            self._abort()
            return
        self.deadline = math.inf
        reason = self.expiry_reason
        self._expired(reason)
        if reason == FRAME_TIMEOUT:
            stats["packet_timeouts"] += 1
        elif self.session is not None:
            stats["keep_alive_expired"] += 1
            if self.version == MQTT_5:
                self.send(Disconnect(Reason.KEEP_ALIVE_TIMEOUT))
        self._stop_reading()

    def _expired(self, reason: str) -> None:
        """Tell the supervisor why it was closed (counted per reason)."""
        if self.watch is not None and self.watch.expired is None:
            self.watch.expired = reason

    def _abort(self) -> None:
        """Close the socket under whatever is waiting on it (a send that cannot end)."""
        stream = self.stream
        sock = getattr(stream, "socket", None) or getattr(getattr(stream, "stream", None),
                                                          "socket", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def kick(self, reason: int) -> None:
        """Close this connection from outside (session taken over, 3.1.4-3)."""
        if self.version == MQTT_5:
            self.send(Disconnect(reason))
        self._stop_reading()

    # ------------------------------------------------------------ CONNECT

    async def _accept(self, c: Connect) -> bool:
        hub = self.hub
        o = hub.options
        v5 = c.version == MQTT_5
        self.version = c.version
        self.client_id = c.client_id
        if v5 and Prop.AUTHENTICATION_METHOD in c.properties:
            return self._refuse(Reason.BAD_AUTHENTICATION_METHOD)  # 4.12: none offered
        reason, who = self._authenticate(c)
        if reason:
            return self._refuse(reason)
        assigned = None
        cid = c.client_id
        if not cid:
            # 3.1.3.1: a server may assign an id to a clean session (3.1.1: only
            # clean; 3.1 requires 1-23 characters).
            if c.version == MQTT_3_1 or (not v5 and not c.clean_start):
                return self._refuse(Reason.CLIENT_IDENTIFIER_NOT_VALID)
            cid = assigned = f"ferrymq-{uuid.uuid4().hex}"
        self.client_id = cid
        self.access = hub.access_for(Principal(
            who, MECHANISM_MQTT_PASSWORD if who != ANONYMOUS_NAME else MECHANISM_ANONYMOUS,
            self._peer(), "mqtt", cid))
        if c.will is not None and c.will.retain and not o.retain_available:
            return self._refuse(Reason.RETAIN_NOT_SUPPORTED)
        if v5:
            expiry = min(int(c.properties.get(Prop.SESSION_EXPIRY_INTERVAL, 0)),
                         o.max_session_expiry)
        else:
            expiry = 0 if c.clean_start else min(SESSION_NEVER_EXPIRES, o.max_session_expiry)
        props: dict[int, Any] = {}
        keep_alive = c.keep_alive
        if v5:
            if o.server_keep_alive:
                keep_alive = o.server_keep_alive
            elif o.max_keep_alive and (keep_alive == 0 or keep_alive > o.max_keep_alive):
                keep_alive = o.max_keep_alive
            if keep_alive != c.keep_alive:
                props[Prop.SERVER_KEEP_ALIVE] = keep_alive  # 3.2.2.3.14
            props[Prop.RECEIVE_MAXIMUM] = o.receive_maximum
            props[Prop.MAXIMUM_PACKET_SIZE] = o.max_packet_size
            props[Prop.TOPIC_ALIAS_MAXIMUM] = o.topic_alias_maximum
            if not o.retain_available:
                props[Prop.RETAIN_AVAILABLE] = 0
            if assigned:
                props[Prop.ASSIGNED_CLIENT_IDENTIFIER] = assigned
            if expiry != c.properties.get(Prop.SESSION_EXPIRY_INTERVAL, 0):
                props[Prop.SESSION_EXPIRY_INTERVAL] = expiry
        self.keep_alive = keep_alive
        old = hub.sessions.get(cid)
        if old is not None and old.client is not None:
            prev = old.client
            prev.kick(Reason.SESSION_TAKEN_OVER)
            with trio.move_on_after(CLOSE_GRACE * 2):
                await prev.wait_closed()
            old = hub.sessions.get(cid)
        if old is not None and (c.clean_start or old.client is not None):
            hub.end_session(old)
            old = None
        present = old is not None
        s = old if old is not None else hub.new_session(cid)
        hub.sessions[cid] = s
        s.client = self
        s.expiry = expiry
        s.generation += 1
        # A new connection: whatever the last one left half done is void (4.4), even
        # if that one is still closing (a takeover that did not finish in time).
        s.flows.connection_lost()
        # 4.9: our Receive Maximum (5.0 only) in, the client's (capped by ours) out.
        s.flows.attach(o.receive_maximum, min(o.max_inflight, self.conn.client_receive_maximum),
                       strict=v5)
        self.session = s
        self.will = c.will
        self.send(Connack(present, Reason.SUCCESS, props))
        hub.stats["connects"] += 1
        hub.stats["max_online"] = max(hub.stats["max_online"], len(hub.clients))
        if present:
            s.resend_inflight()  # first: what attaching delivers is new, not a resend
        hub.attach(s, resumed=present)
        if present:
            hub.catch_up(s)
            s.pump()
        if s.persistent:
            hub.state.sessions_changed()
        return True

    def _authenticate(self, c: Connect) -> tuple[int, str]:
        """(0 or the CONNACK refusal, the user name the connection acts for). A user
        name is checked against the broker's users (and the password file's, which
        the hub loaded into them) when there is a password file or ``[auth]
        enabled``; without either any name passes, as before. A name holding an MQTT
        wildcard or "/" is refused: it would widen ``%u`` patterns."""
        hub = self.hub
        if c.username is None:
            if not hub.options.allow_anonymous:
                return Reason.NOT_AUTHORIZED, ANONYMOUS_NAME
            return 0, ANONYMOUS_NAME
        user = c.username
        if hub.passwords is None and not hub.broker.auth_enabled:
            return 0, user if user else ANONYMOUS_NAME
        if (not user or c.password is None or any(ch in user for ch in "/+#")
                or not hub.broker.authenticate(user, c.password)):
            hub.stats["auth_failures"] += 1
            return Reason.BAD_USERNAME_OR_PASSWORD, ANONYMOUS_NAME
        return 0, user

    def _peer(self) -> str | None:
        addr = self.watch.addr if self.watch is not None else None
        if addr is None:  # the supervisor asked already (getpeername) when there is one
            try:
                addr = self.stream.socket.getpeername()
            except (AttributeError, OSError, ValueError, TypeError):
                return None
        try:
            host, port = addr[:2]
        except (ValueError, TypeError):
            return None
        return f"{host}:{port}"

    def _refuse(self, reason: int) -> bool:
        self.hub.stats["connects_refused"] += 1
        self.send(Connack(False, reason))
        self.publish_will = False
        return False

    # ------------------------------------------------------------ packets

    async def _timed_publish_batch(self, batch: list[Publish]) -> None:
        # One observation per batch of publishes read together (not per message: a
        # QoS 0 publish costs ~14 us and the batch is what is stored at once).
        t0 = perf_counter()
        await self._publish_batch(batch)
        self.hub.metrics.observe("publish", perf_counter() - t0)

    async def _handle(self, ev: Packet) -> object:
        t = type(ev)
        s = self.session
        assert s is not None
        if t is Publish:
            await self._publish_qos2(ev)  # type: ignore[arg-type]  # QoS 0/1 are batched
        elif t is Puback or t is Pubcomp or t is Pubrec:
            # The client acknowledges one of our PUBLISHes (protocols/mqtt/session.py).
            pid: int = ev.packet_id  # type: ignore[union-attr,assignment]
            action, _ = s.flows.receive_ack(ev)  # type: ignore[arg-type]
            if action is Action.FREE:
                s.pump()
            elif action is Action.SEND_PUBREL:
                if s.persistent:
                    # Our PUBREL says we will never send that PUBLISH again: the flow's new
                    # state and the positions past the message are durable first, or a
                    # crash would send the message again as a new one (a duplicate at QoS 2).
                    await self.hub.session_delivered(s)
                self.send_pubrel(pid)
            elif action is Action.SEND_PUBREL_NOT_FOUND:
                self.write(codec.encode(Pubrel(pid, Reason.PACKET_IDENTIFIER_NOT_FOUND),
                                        self.version))
        elif t is Pubrel:
            pid = ev.packet_id  # type: ignore[union-attr,assignment]
            if s.flows.receive_pubrel(ev) is Action.SEND_PUBCOMP:  # type: ignore[arg-type]
                if s.persistent:
                    # The packet id is free once PUBCOMP is sent: that is durable first,
                    # or after a crash the client's next PUBLISH with that id would be
                    # taken for a resend of the old one and dropped (a lost message).
                    await self.hub.state.sessions_durable(s.client_id)
                self.send(Pubcomp(pid))
            else:
                self.send(Pubcomp(pid, Reason.PACKET_IDENTIFIER_NOT_FOUND))
        elif t is Subscribe:
            await self._on_subscribe(ev)  # type: ignore[arg-type]
        elif t is Unsubscribe:
            await self._on_unsubscribe(ev)  # type: ignore[arg-type]
        elif t is Pingreq:
            self.send(Pingresp())
        elif t is Disconnect:
            reason = ev.reason  # type: ignore[union-attr]
            # 3.14.4: a normal DISCONNECT discards the will; 0x04 asks for it.
            self.publish_will = reason == Reason.DISCONNECT_WITH_WILL
            expiry = ev.properties.get(Prop.SESSION_EXPIRY_INTERVAL)  # type: ignore[union-attr]
            if expiry is not None:
                s.expiry = min(int(expiry), self.hub.options.max_session_expiry)
            return _STOP
        elif t is Auth:
            raise MqttError("AUTH without enhanced authentication", Reason.PROTOCOL_ERROR)
        return None

    def _refusal(self, p: Publish) -> int:
        """The reason a PUBLISH is not stored (0: it is)."""
        if p.retain and not self.hub.options.retain_available:
            raise MqttError("retain is not available", Reason.RETAIN_NOT_SUPPORTED)
        if p.topic.startswith("$") or not self.access.may_publish(p.topic):
            self.hub.stats["publish_denied"] += 1
            return Reason.NOT_AUTHORIZED
        if (p.properties and p.properties.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1
                and not _is_utf8(p.payload)):
            return Reason.PAYLOAD_FORMAT_INVALID  # 3.3.2.3.2
        return 0

    def _store_failure(self, exc: FerryError) -> Answer:
        """Count and log a publish the core refused; how to answer it (errors.py)."""
        answer = answer_for(exc)
        hub = self.hub
        hub.metrics.error("publish", exc.code)
        if answer.counter is not None:
            hub.stats[answer.counter] += 1
            if answer.counter == "publish_failed":
                log.warning("publish from %r failed: %s", self.client_id, exc)
        return answer

    def _acknowledge(self, packet: Puback | Pubrec) -> bytes | None:
        """The bytes of our PUBACK / PUBREC, its flow moved on (protocols/mqtt/session.py)."""
        s = self.session
        assert s is not None
        s.flows.send_ack(packet)
        return self.conn.send(packet)

    async def _publish_batch(self, batch: list[Publish]) -> None:
        """Store QoS 0/1 publishes read together (the store path puts one record
        per topic and queue), then acknowledge each QoS 1 one in order, with its
        own reason code. 3.1.1 cannot refuse a QoS 1 message: where the failure
        may pass, the connection closes after the acknowledgements before it, and
        the client sends the rest again."""
        n = len(batch)
        reasons = [0] * n
        accepted = []
        for i, p in enumerate(batch):
            reason = self._refusal(p)
            if reason:
                reasons[i] = reason
            else:
                accepted.append(i)
        close_at = n
        if accepted:
            errors = await self.hub.store.store(
                batch if len(accepted) == n else [batch[i] for i in accepted], self.client_id,
                self.access.principal)
            for i, err in zip(accepted, errors, strict=True):
                if err is not None:
                    answer = self._store_failure(err)
                    reasons[i] = answer.reason
                    if answer.close_311 and batch[i].qos and close_at == n:
                        close_at = i
        v5 = self.version == MQTT_5
        for i, p in enumerate(batch):
            if p.qos:
                if i >= close_at and not v5:
                    raise MqttError("a publish could not be stored", Reason.UNSPECIFIED_ERROR)
                data = self._acknowledge(Puback(p.packet_id, reasons[i] if v5 else 0))  # type: ignore[arg-type]
                if data:
                    self.write(data)

    async def _publish_qos2(self, p: Publish) -> None:
        """A QoS 2 PUBLISH: stored once, acknowledged with PUBREC (4.3.3)."""
        hub = self.hub
        s = self.session
        assert s is not None
        pid: int = p.packet_id  # type: ignore[assignment]
        if s.flows.receive_publish(p) is Action.SEND_PUBREC:
            self.send(Pubrec(pid))  # a resend: stored already (4.3.3)
            return
        v5 = self.version == MQTT_5
        reason = self._refusal(p)
        if not reason:
            (err,) = await hub.store.store([p], self.client_id, self.access.principal)
            if err is not None:
                answer = self._store_failure(err)
                if answer.close_311 and not v5:
                    raise MqttError(str(err), Reason.UNSPECIFIED_ERROR) from err
                reason = answer.reason
        # 3.1.1 has no failed PUBREC: a refused message is acknowledged and dropped.
        pubrec = Pubrec(pid, reason) if reason and v5 else Pubrec(pid)
        data = self._acknowledge(pubrec)
        if not pubrec.reason and s.persistent:
            # Exactly once across a restart: the id is durable before the PUBREC (and
            # after the message: one log, so the message is durable with it).
            await hub.state.sessions_durable(s.client_id)
        if data:
            self.write(data)

    async def _on_subscribe(self, sub: Subscribe) -> None:
        hub = self.hub
        s = self.session
        assert s is not None
        sub_id = sub.subscription_id
        reasons: list[int] = []
        retained: list[tuple[str, SubOpts]] = []
        for item in sub.subscriptions:
            try:
                spec = parse_filter(item.filter)
            except MqttError:
                reasons.append(Reason.TOPIC_FILTER_INVALID)
                continue
            if spec.share is not None and item.no_local:
                # 3.8.3.1 [MQTT-3.8.3-4]: No Local on a shared subscription.
                raise MqttError("No Local on a shared subscription", Reason.PROTOCOL_ERROR)
            if not self.access.may_subscribe(spec.filter):
                hub.stats["subscribe_denied"] += 1
                reasons.append(Reason.NOT_AUTHORIZED)
                continue
            if (len(s.subs) + len(s.shared) >= hub.options.max_subscriptions
                    and item.filter not in s.subs):
                reasons.append(Reason.QUOTA_EXCEEDED)
                continue
            so = SubOpts(item.qos, item.no_local, item.retain_as_published,
                         item.retain_handling, sub_id)
            existed = hub.subscribe(s, spec.share, spec.filter, so)
            reasons.append(item.qos)
            # 3.3.1.3 / 3.8.3.1 Retain Handling; shared subscriptions get none (4.8.2).
            if spec.share is None and (so.rh == 0 or (so.rh == 1 and not existed)):
                retained.append((spec.filter, so))
        if s.persistent:
            # A persistent session's subscriptions are durable before SUBACK: a
            # crash right after it must not lose what the client was told it has.
            await hub.state.sessions_durable(s.client_id)
        self.send(Suback(sub.packet_id, tuple(reasons)))
        for topic_filter, so in retained:
            for d in hub.retained_for(topic_filter):
                if so.no_local and d.publisher == self.client_id:
                    continue
                if self.access.read_denies and not self.access.may_read(d.topic):
                    continue  # judged per message, as every delivery (docs/security.md)
                s.enqueue(d, min(d.qos, so.qos), True, (so.sub_id,) if so.sub_id else ())

    async def _on_unsubscribe(self, u: Unsubscribe) -> None:
        s = self.session
        assert s is not None
        reasons: list[int] = []
        for raw in u.filters:
            try:
                spec = parse_filter(raw)
            except MqttError:
                reasons.append(Reason.TOPIC_FILTER_INVALID)
                continue
            found = self.hub.unsubscribe(s, spec.share, spec.filter)
            reasons.append(Reason.SUCCESS if found else Reason.NO_SUBSCRIPTION_EXISTED)
        if s.persistent:
            await self.hub.state.sessions_durable(s.client_id)
        self.send(Unsuback(u.packet_id, tuple(reasons)))

    # ------------------------------------------------------------ the end

    def _finish(self) -> None:
        """The connection is gone: detach the session, and see to the will."""
        hub = self.hub
        s = self.session
        if s is None or s.client is not self:
            return
        s.client = None
        s.disconnected_at = now_ms()
        s.flows.connection_lost()
        hub.detach(s)
        will = self.will
        if will is not None and self.publish_will:
            delay = will.delay if self.version == MQTT_5 else 0
            # 3.1.3.2.2: the will goes at the will delay or when the session ends.
            delay = min(delay, s.expiry)
            assert hub.nursery is not None
            hub.nursery.start_soon(hub.publish_will, s, s.generation, will, delay, self.access)
        if not s.persistent:
            hub.end_session(s)
        else:
            hub.state.sessions_changed()


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True
