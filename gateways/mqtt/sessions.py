"""An MQTT session (4.1) in the door: subscriptions, the bounded pending queue, the QoS flows,
and the connection it is attached to while its client is online.

The QoS flows themselves (packet ids, in-flight window, QoS 1/2 states both
ways, what to resend on reconnect) are ``protocols.mqtt.session.SessionState``,
a sans-I/O state machine; this module decides *what* goes out and *when*:
straight to the connection's out buffer while the window and the buffer
allow, else to the pending queue, bounded by ``max_queued``.

A session talks to its connection through ``Connection``, a small interface
the door's ``client.Client`` implements: the hub and the session never import
the client (no import cycle).
"""

from __future__ import annotations

import collections
from typing import Any, Protocol

from ...core.message import now_ms
from ...protocols.mqtt.session import Action, Flow, SessionState
from .auth import ClientAccess
from .delivery import Delivery, Outgoing, SubOpts, core_group_name
from .options import MqttOptions

GROUP_PREFIX = "mqtt-session-"
NEVER_EXPIRES = 0xFFFFFFFF


class Connection(Protocol):
    """What the hub and a session need of a client connection."""

    access: ClientAccess
    deadline: float
    send_deadline: float

    @property
    def writable(self) -> bool:
        """Whether the out buffer has room (``max_outbuf``)."""
        ...

    def send_delivery(self, d: Delivery, qos: int, retain: bool, sub_ids: tuple[int, ...],
                      pid: int, dup: bool = False) -> bool:
        """Encode and buffer one PUBLISH; False when it was not sent (expired, or
        over the client's Maximum Packet Size)."""
        ...

    def send_pubrel(self, pid: int) -> None: ...

    def expire(self) -> None:
        """The CONNECT timeout or keep alive ran out: close (will included)."""
        ...

    def kick(self, reason: int) -> None:
        """Close from outside (5.0: DISCONNECT with ``reason`` first)."""
        ...

    async def wait_closed(self) -> None: ...


class Session:
    """MQTT session state (4.1): subscriptions, in-flight and queued messages, QoS 2
    ids. Lives on while its client is offline if its expiry interval allows."""

    __slots__ = ("client", "client_id", "disconnected_at", "dropped", "expiry", "flows",
                 "generation", "group", "options", "pending", "shared", "stats", "subs")

    def __init__(self, client_id: str, options: MqttOptions,
                 stats: collections.Counter[str]) -> None:
        self.client_id = client_id
        self.options = options
        self.stats = stats
        self.client: Connection | None = None
        self.expiry = 0  # seconds after disconnect; NEVER_EXPIRES
        self.subs: dict[str, SubOpts] = {}
        self.shared: dict[tuple[str, str], SubOpts] = {}
        self.flows: SessionState[Outgoing] = SessionState(options.receive_maximum,
                                                          options.max_inflight)
        # () until the first message has to wait: a deque costs 600 bytes even empty.
        self.pending: collections.deque[Outgoing] | tuple[()] = ()
        self.disconnected_at = 0
        self.generation = 0
        self.dropped = 0
        self.group = core_group_name(GROUP_PREFIX, client_id)

    @property
    def persistent(self) -> bool:
        return self.expiry > 0

    def expired(self, now: int) -> bool:
        return (self.client is None and self.expiry != NEVER_EXPIRES
                and self.disconnected_at + self.expiry * 1000 <= now)

    # ------------------------------------------------------------ sending

    def enqueue(self, d: Delivery, qos: int, retain: bool, sub_ids: tuple[int, ...],
                share: tuple[str, str] | None = None) -> None:
        """Hand a message to this (online) session: straight to the socket buffer
        when the window allows, else the bounded pending queue."""
        c = self.client
        if c is None:
            return
        if not self.pending and c.writable:
            if qos == 0:
                c.send_delivery(d, 0, retain, sub_ids, 0)
                return
            if self.flows.has_room:
                self._send_new(Outgoing(d, qos, retain, sub_ids, share))
                return
        elif qos == 0 and not self.pending:
            self._drop()  # a slow socket: QoS 0 is the first to go
            return
        pending = self.pending
        if not pending:
            pending = self.pending = collections.deque()
        elif len(pending) >= self.options.max_queued:
            self._drop()
            if self.options.overflow == "refuse":
                return
            pending.popleft()
        pending.append(Outgoing(d, qos, retain, sub_ids, share))

    def _drop(self) -> None:
        self.dropped += 1
        self.stats["dropped"] += 1

    def _send_new(self, out: Outgoing) -> None:
        c = self.client
        assert c is not None
        if out.qos:
            flows = self.flows
            pid = flows.send_publish(out.qos, out)
            if not c.send_delivery(out.delivery, out.qos, out.retain, out.sub_ids, pid):
                flows.discard(pid)
        else:
            c.send_delivery(out.delivery, 0, out.retain, out.sub_ids, 0)

    def pump(self) -> None:
        """Move queued messages out while the window and the socket buffer allow."""
        c = self.client
        pending = self.pending
        flows = self.flows
        while pending and c is not None and c.writable:
            if pending[0].qos and not flows.has_room:
                return
            self._send_new(pending.popleft())

    def resend_inflight(self) -> None:
        """4.4: on a resumed session, resend unacknowledged PUBLISHes (DUP set) and
        PUBRELs, in their original order."""
        c = self.client
        assert c is not None
        for action, pid, out in self.flows.resend():
            if action is Action.SEND_PUBREL:
                c.send_pubrel(pid)
            elif not c.send_delivery(out.delivery, out.qos, out.retain, out.sub_ids, pid,
                                     dup=True):
                self.flows.discard(pid)

    # ------------------------------------------------------------ shared subscriptions

    def take_pending_shared(self, share: tuple[str, str] | None = None) -> list[Outgoing]:
        """Remove and return the queued (never sent) messages that came through a
        shared subscription (``share``, or any)."""
        pending = self.pending
        if not pending:
            return []
        taken = [o for o in pending if o.share is not None and (share is None or o.share == share)]
        if taken:
            gone = {id(o) for o in taken}
            self.pending = collections.deque(o for o in pending if id(o) not in gone) or ()
        return taken

    def unacknowledged_shared(self) -> list[Outgoing]:
        """In-flight QoS 1 messages of shared subscriptions that the client has not
        acknowledged. (QoS 2 ones are not: after a session ends the server SHOULD
        NOT send them to another member, 4.8.2 [MQTT-4.8.2-5].)"""
        return [out for _, state, out in self.flows.outbound()
                if out.share is not None and state is Flow.AWAIT_PUBACK]

    # ------------------------------------------------------------ persistence

    def to_state(self) -> dict[str, Any]:
        return {
            "expiry": self.expiry, "disconnected_at": self.disconnected_at,
            "subs": [[f, o.qos, o.no_local, o.rap, o.rh, o.sub_id] for f, o in self.subs.items()],
            "shared": [[n, f, o.qos, o.sub_id] for (n, f), o in self.shared.items()],
            "qos2": self.flows.awaiting_pubrel(), "next_pid": self.flows.next_pid,
            "inflight": [[pid, state is Flow.AWAIT_PUBCOMP, o.qos, o.retain, list(o.sub_ids),
                          o.delivery.topic, o.delivery.payload, o.delivery.props,
                          o.delivery.publisher, *(o.share or ())]
                         for pid, state, o in self.flows.outbound()],
        }

    def load_state(self, st: dict[str, Any]) -> None:
        self.expiry = int(st.get("expiry", 0))
        self.disconnected_at = int(st.get("disconnected_at", 0)) or now_ms()
        self.subs = {f: SubOpts(q, bool(nl), bool(rap), rh, sid)
                     for f, q, nl, rap, rh, sid in st.get("subs", [])}
        self.shared = {(n, f): SubOpts(q, sub_id=sid) for n, f, q, sid in st.get("shared", [])}
        outbound = []
        for row in st.get("inflight", []):
            pid, released, qos, retain, sub_ids, topic, payload, props, publisher = row[:9]
            share = (row[9], row[10]) if len(row) >= 11 else None
            d = Delivery(topic, payload, qos, retain, dict(props), publisher, None)
            state = Flow.AWAIT_PUBCOMP if released else (
                Flow.AWAIT_PUBACK if qos == 1 else Flow.AWAIT_PUBREC)
            outbound.append((pid, state, Outgoing(d, qos, retain, tuple(sub_ids), share)))
        self.flows.restore(int(st.get("next_pid", 1)) or 1, list(st.get("qos2", [])), outbound)
