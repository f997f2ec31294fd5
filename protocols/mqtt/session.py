"""The QoS 1 and QoS 2 flows of one MQTT session, server side, as transition tables (sans-I/O).

Theory of operation (the manner of h11's ``_state.py`` and h2's ``stream.py``):

- Rule 1: every packet that moves a QoS 1 or QoS 2 flow passes through this
  object: the PUBLISHes the client sends us and the acknowledgements we send
  back (the *inbound* direction), the PUBLISHes we send and the client's
  acknowledgements (the *outbound* direction). Nothing else in FerryMQ keeps
  packet ids or flow states.
- Rule 2: a flow is one packet identifier in one direction (2.2.1: each side
  has its own identifiers). Its state is the step it waits for; a flow that is
  over is ``IDLE`` and its identifier is free again.
- Rule 3: the allowed steps are the two tables below, maps from (state,
  event) to (next state, action). An event that is not in its table is a
  protocol error, and the error says which side broke the protocol: an event
  from the client raises ``ProtocolViolation`` (an ``MqttError``: answer it
  and close), one from us raises ``LocalProtocolError`` (a bug of the caller).
- Rule 4: the object outlives a network connection. A persistent session
  keeps its flows across reconnects (4.4): ``resend`` says what to send again
  (PUBLISH with DUP, PUBREL), ``connection_lost`` forgets the steps that were
  only half done (a client resends a PUBLISH we did not acknowledge).
- Rule 5: the limits of 4.9 live here. Inbound, more unacknowledged QoS 1/2
  PUBLISHes than the Receive Maximum we announced is DISCONNECT 0x93 (5.0
  only: a 3.1.1 client never agreed to one; its 65,535 identifiers bound the
  set). Outbound, at most ``window`` messages are unacknowledged (the
  client's Receive Maximum, capped by ours); sending past it is our bug.

An outbound flow carries an opaque ``item`` (the gateway's message), so that
what to resend after a reconnect is known here; this module never looks at it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from typing import Generic, TypeVar

from ..errors import LocalProtocolError
from .codec import MqttError, ProtocolViolation
from .constants import MAX_PACKET_ID, Reason
from .packets import Puback, Pubcomp, Publish, Pubrec, Pubrel

T = TypeVar("T")


class Flow(enum.StrEnum):
    """The state of one packet identifier in one direction: the step it waits for."""

    IDLE = "idle"  # no flow: the identifier is free
    # inbound: the client published, we answer
    ACK_DUE = "PUBACK due"  # QoS 1 received; we send PUBACK once it is stored
    REC_DUE = "PUBREC due"  # QoS 2 received; we send PUBREC once it is stored
    AWAIT_PUBREL = "awaiting PUBREL"  # QoS 2 stored and PUBREC sent; the client releases it
    # outbound: we published, the client answers
    AWAIT_PUBACK = "awaiting PUBACK"  # QoS 1 sent
    AWAIT_PUBREC = "awaiting PUBREC"  # QoS 2 sent
    AWAIT_PUBCOMP = "awaiting PUBCOMP"  # QoS 2 received by the client, PUBREL sent


class Event(enum.StrEnum):
    """What happens to a flow. RECV_* come from the client, SEND_* are ours, and the
    rest are local events of the session (not packets)."""

    RECV_PUBLISH_QOS1 = "PUBLISH QoS 1 received"
    RECV_PUBLISH_QOS2 = "PUBLISH QoS 2 received"
    RECV_PUBACK = "PUBACK received"
    RECV_PUBREC = "PUBREC received"
    RECV_PUBREC_ERROR = "PUBREC with a reason >= 0x80 received"
    RECV_PUBREL = "PUBREL received"
    RECV_PUBCOMP = "PUBCOMP received"
    SEND_PUBLISH_QOS1 = "PUBLISH QoS 1 sent"
    SEND_PUBLISH_QOS2 = "PUBLISH QoS 2 sent"
    SEND_PUBACK = "PUBACK sent"
    SEND_PUBREC = "PUBREC sent"
    SEND_PUBREC_ERROR = "PUBREC with a reason >= 0x80 sent"
    RESEND = "client reconnected"  # 4.4: resend what is unacknowledged
    DISCARD = "message dropped"  # could not be (re)sent: expired, or over the client's size
    CONNECTION_LOST = "connection lost"


class Action(enum.StrEnum):
    """What the caller does after a transition."""

    NONE = "nothing"
    STORE = "store the message, then acknowledge it"
    SEND_PUBREC = "send PUBREC again (the message is stored already: 4.3.3)"
    SEND_PUBCOMP = "send PUBCOMP"
    SEND_PUBCOMP_NOT_FOUND = "send PUBCOMP 0x92 (Packet Identifier not found)"
    SEND_PUBREL = "send PUBREL"
    SEND_PUBREL_NOT_FOUND = "send PUBREL 0x92 (Packet Identifier not found)"
    SEND_PUBLISH_DUP = "send the PUBLISH again with DUP set (4.4)"
    FREE = "the flow is over: a window slot is free"


# The members are StrEnums: the tables are dicts keyed by (state, event) tuples, and
# a plain Enum member hashes in Python (enum.Enum.__hash__), a str in C, once:
# 200 -> 80 ns a look-up, four look-ups per QoS 1 message (timeit, min of 5).
F, E, A = Flow, Event, Action

# The client publishes to us (5.0 4.3.2, 4.3.3; 3.1.1 4.3.2, 4.3.3).
INBOUND: dict[tuple[Flow, Event], tuple[Flow, Action]] = {
    (F.IDLE, E.RECV_PUBLISH_QOS1): (F.ACK_DUE, A.STORE),
    (F.ACK_DUE, E.SEND_PUBACK): (F.IDLE, A.NONE),  # whatever its reason code
    (F.IDLE, E.RECV_PUBLISH_QOS2): (F.REC_DUE, A.STORE),
    (F.REC_DUE, E.SEND_PUBREC): (F.AWAIT_PUBREL, A.NONE),
    (F.REC_DUE, E.SEND_PUBREC_ERROR): (F.IDLE, A.NONE),  # 5.0 4.3.3: a failed PUBREC ends it
    # Our PUBREC went missing: the client sends the PUBLISH again (DUP). It is
    # acknowledged again and not stored again (4.3.3 [MQTT-4.3.3-10]).
    (F.AWAIT_PUBREL, E.RECV_PUBLISH_QOS2): (F.AWAIT_PUBREL, A.SEND_PUBREC),
    (F.AWAIT_PUBREL, E.RECV_PUBREL): (F.IDLE, A.SEND_PUBCOMP),
    # A PUBREL for an identifier we do not know (its flow ended, or a clean
    # session started): answer so the client can end its side (5.0 3.7.2.1).
    (F.IDLE, E.RECV_PUBREL): (F.IDLE, A.SEND_PUBCOMP_NOT_FOUND),
    # Half-done steps die with the connection: the client resends what we did
    # not acknowledge (4.4), and it is stored again (QoS 1: at least once).
    (F.ACK_DUE, E.CONNECTION_LOST): (F.IDLE, A.NONE),
    (F.REC_DUE, E.CONNECTION_LOST): (F.IDLE, A.NONE),
    (F.AWAIT_PUBREL, E.CONNECTION_LOST): (F.AWAIT_PUBREL, A.NONE),
}

# We publish to the client.
OUTBOUND: dict[tuple[Flow, Event], tuple[Flow, Action]] = {
    (F.IDLE, E.SEND_PUBLISH_QOS1): (F.AWAIT_PUBACK, A.NONE),
    (F.AWAIT_PUBACK, E.RECV_PUBACK): (F.IDLE, A.FREE),  # whatever its reason code
    (F.IDLE, E.SEND_PUBLISH_QOS2): (F.AWAIT_PUBREC, A.NONE),
    (F.AWAIT_PUBREC, E.RECV_PUBREC): (F.AWAIT_PUBCOMP, A.SEND_PUBREL),
    (F.AWAIT_PUBREC, E.RECV_PUBREC_ERROR): (F.IDLE, A.FREE),  # 5.0 4.3.3
    (F.AWAIT_PUBCOMP, E.RECV_PUBREC): (F.AWAIT_PUBCOMP, A.SEND_PUBREL),  # a repeated PUBREC
    (F.AWAIT_PUBCOMP, E.RECV_PUBCOMP): (F.IDLE, A.FREE),
    # An acknowledgement of a flow that is over (a late answer to a resend, or a
    # session the server no longer has): tolerated, as Mosquitto does.
    (F.IDLE, E.RECV_PUBACK): (F.IDLE, A.NONE),
    (F.IDLE, E.RECV_PUBCOMP): (F.IDLE, A.NONE),
    (F.IDLE, E.RECV_PUBREC): (F.IDLE, A.SEND_PUBREL_NOT_FOUND),
    # 4.4: on a resumed session, unacknowledged PUBLISHes go again with DUP set,
    # and released QoS 2 messages get their PUBREL again.
    (F.AWAIT_PUBACK, E.RESEND): (F.AWAIT_PUBACK, A.SEND_PUBLISH_DUP),
    (F.AWAIT_PUBREC, E.RESEND): (F.AWAIT_PUBREC, A.SEND_PUBLISH_DUP),
    (F.AWAIT_PUBCOMP, E.RESEND): (F.AWAIT_PUBCOMP, A.SEND_PUBREL),
    # A message that cannot be (re)sent (expired, or over the client's Maximum
    # Packet Size: 3.1.2.11.4) is dropped as if delivered.
    (F.AWAIT_PUBACK, E.DISCARD): (F.IDLE, A.FREE),
    (F.AWAIT_PUBREC, E.DISCARD): (F.IDLE, A.FREE),
}

# The hot path (every QoS 1/2 message passes here four times) reads these
# module constants: an enum member through its class costs an attribute look-up.
_IDLE = F.IDLE
_RECV_Q1, _RECV_Q2 = E.RECV_PUBLISH_QOS1, E.RECV_PUBLISH_QOS2
_SEND_Q1, _SEND_Q2 = E.SEND_PUBLISH_QOS1, E.SEND_PUBLISH_QOS2
_SEND_PUBACK, _SEND_PUBREC, _SEND_PUBREC_ERROR = E.SEND_PUBACK, E.SEND_PUBREC, E.SEND_PUBREC_ERROR
_RECV_PUBACK, _RECV_PUBCOMP = E.RECV_PUBACK, E.RECV_PUBCOMP
_RECV_PUBREC, _RECV_PUBREC_ERROR = E.RECV_PUBREC, E.RECV_PUBREC_ERROR

_LOCAL = frozenset({E.SEND_PUBLISH_QOS1, E.SEND_PUBLISH_QOS2, E.SEND_PUBACK, E.SEND_PUBREC,
                    E.SEND_PUBREC_ERROR, E.RESEND, E.DISCARD, E.CONNECTION_LOST})


def _step(table: dict[tuple[Flow, Event], tuple[Flow, Action]], direction: str, pid: int,
          state: Flow, event: Event) -> tuple[Flow, Action]:
    got = table.get((state, event))
    if got is None:
        detail = f"{event.value} for {direction} packet id {pid}, {state.value}"
        if event in _LOCAL:
            raise LocalProtocolError(f"server bug: {detail}")
        raise ProtocolViolation(f"client broke the QoS flow: {detail}")
    return got


class SessionState(Generic[T]):
    """The QoS flows of one session, both directions (see the module docstring).

    ``receive_maximum`` is ours (the inbound limit, enforced when ``strict``:
    5.0 clients); ``window`` the outbound one. Both are set per connection by
    ``attach``. Not thread-safe."""

    __slots__ = ("_in", "_out", "next_pid", "receive_maximum", "strict", "window")

    def __init__(self, receive_maximum: int = 65535, window: int = 65535) -> None:
        self._in: dict[int, Flow] = {}  # client's packet id -> state (never IDLE)
        self._out: dict[int, tuple[Flow, T]] = {}  # ours -> (state, item), in send order
        self.next_pid = 1
        self.receive_maximum = receive_maximum
        self.window = window
        self.strict = False

    def attach(self, receive_maximum: int, window: int, strict: bool) -> None:
        """A connection takes the session up: its limits (5.0 3.1.2.11.3, 3.2.2.3.3)."""
        self.receive_maximum = receive_maximum
        self.window = window
        self.strict = strict

    # ------------------------------------------------------------ inbound

    def receive_publish(self, p: Publish) -> Action:
        """A QoS 1/2 PUBLISH from the client: ``STORE`` it (then ``send_ack``), or
        ``SEND_PUBREC`` (a resend of a stored QoS 2 message). Raises MqttError: a
        flow broken by the client, or 0x93 past the Receive Maximum (4.9)."""
        pid: int = p.packet_id  # type: ignore[assignment]
        flows = self._in
        state = flows.get(pid, _IDLE)
        event = _RECV_Q1 if p.qos == 1 else _RECV_Q2
        got = INBOUND.get((state, event))
        if got is None:
            got = _step(INBOUND, "inbound", pid, state, event)  # raises
        if state is _IDLE:
            if self.strict and len(flows) >= self.receive_maximum:
                raise MqttError("more unacknowledged QoS 1/2 PUBLISHes than Receive Maximum",
                                Reason.RECEIVE_MAXIMUM_EXCEEDED)
            flows[pid] = got[0]
        return got[1]

    def send_ack(self, packet: Puback | Pubrec) -> None:
        """We acknowledge an inbound PUBLISH (PUBACK, or PUBREC: a reason >= 0x80
        ends a QoS 2 flow). Raises LocalProtocolError if no flow expects it."""
        pid = packet.packet_id
        if type(packet) is Puback:
            event = _SEND_PUBACK
        else:
            event = _SEND_PUBREC_ERROR if packet.reason >= 0x80 else _SEND_PUBREC
        flows = self._in
        state = flows.get(pid, _IDLE)
        got = INBOUND.get((state, event))
        if got is None:
            got = _step(INBOUND, "inbound", pid, state, event)  # raises
        if got[0] is _IDLE:
            del flows[pid]  # no (idle, SEND_*) is in the table: the flow was there
        else:
            flows[pid] = got[0]

    def receive_pubrel(self, packet: Pubrel) -> Action:
        """``SEND_PUBCOMP`` (the flow is over), or ``SEND_PUBCOMP_NOT_FOUND``."""
        pid = packet.packet_id
        nxt, action = _step(INBOUND, "inbound", pid, self._in.get(pid, F.IDLE), E.RECV_PUBREL)
        self._set_in(pid, nxt)
        return action

    def _set_in(self, pid: int, state: Flow) -> None:
        if state is F.IDLE:
            self._in.pop(pid, None)
        else:
            self._in[pid] = state

    @property
    def inbound_pending(self) -> int:
        """Unacknowledged inbound QoS 1/2 PUBLISHes (counted against Receive Maximum)."""
        return len(self._in)

    def inbound(self, pid: int) -> Flow:
        return self._in.get(pid, F.IDLE)

    def awaiting_pubrel(self) -> list[int]:
        """Inbound QoS 2 identifiers stored and acknowledged, awaiting PUBREL: the
        inbound state a persistent session keeps (4.1)."""
        return sorted(pid for pid, st in self._in.items() if st is F.AWAIT_PUBREL)

    # ------------------------------------------------------------ outbound

    @property
    def has_room(self) -> bool:
        """Whether one more QoS 1/2 message may be sent (the window, 4.9)."""
        return len(self._out) < self.window

    @property
    def inflight(self) -> int:
        return len(self._out)

    def send_publish(self, qos: int, item: T) -> int:
        """Start an outbound QoS 1/2 flow; returns its packet id. Raises
        LocalProtocolError when the window is full (the client's Receive Maximum)."""
        out = self._out
        if len(out) >= self.window:
            raise LocalProtocolError("server bug: PUBLISH past the client's Receive Maximum")
        pid = self.next_pid
        if pid in out:
            pid = self._allocate()
        else:
            self.next_pid = pid % MAX_PACKET_ID + 1
        event = _SEND_Q1 if qos == 1 else _SEND_Q2
        got = OUTBOUND.get((_IDLE, event))
        if got is None:
            got = _step(OUTBOUND, "outbound", pid, _IDLE, event)  # raises
        out[pid] = (got[0], item)
        return pid

    def _allocate(self) -> int:
        """The next free packet id (2.2.1: non-zero, unused in this direction)."""
        pid = self.next_pid
        out = self._out
        if pid in out:
            if len(out) >= MAX_PACKET_ID:
                raise LocalProtocolError("server bug: every packet id is in use")
            while pid in out:
                pid = pid % MAX_PACKET_ID + 1
        self.next_pid = pid % MAX_PACKET_ID + 1
        return pid

    def receive_ack(self, packet: Puback | Pubrec | Pubcomp) -> tuple[Action, T | None]:
        """The client acknowledges one of our PUBLISHes: (action, the flow's item).
        ``FREE``: the flow is over; ``SEND_PUBREL`` (its state is saved by then);
        ``SEND_PUBREL_NOT_FOUND``; ``NONE``. Raises MqttError for an
        acknowledgement of the wrong kind (a PUBACK for a QoS 2 message...)."""
        pid = packet.packet_id
        t = type(packet)
        if t is Puback:
            event = _RECV_PUBACK
        elif t is Pubcomp:
            event = _RECV_PUBCOMP
        else:
            event = _RECV_PUBREC_ERROR if packet.reason >= 0x80 else _RECV_PUBREC
        out = self._out
        flow = out.get(pid)
        state = _IDLE if flow is None else flow[0]
        got = OUTBOUND.get((state, event))
        if got is None:
            got = _step(OUTBOUND, "outbound", pid, state, event)  # raises
        if flow is None:
            return got[1], None
        nxt = got[0]
        if nxt is _IDLE:
            del out[pid]
        elif nxt is not state:
            out[pid] = (nxt, flow[1])
        return got[1], flow[1]

    def discard(self, pid: int) -> T:
        """Drop an outbound message that could not be (re)sent, as if delivered."""
        state, item = self._out[pid]
        _step(OUTBOUND, "outbound", pid, state, E.DISCARD)
        del self._out[pid]
        return item

    def outbound(self) -> Iterator[tuple[int, Flow, T]]:
        """Every outbound flow (packet id, state, item), in the order they began."""
        for pid, (state, item) in self._out.items():
            yield pid, state, item

    # ------------------------------------------------------------ reconnects

    def resend(self) -> list[tuple[Action, int, T]]:
        """4.4: what a resumed session sends again, in the original order:
        ``SEND_PUBLISH_DUP`` or ``SEND_PUBREL`` with the packet id and the item."""
        out = []
        for pid, (state, item) in self._out.items():
            _, action = _step(OUTBOUND, "outbound", pid, state, E.RESEND)
            out.append((action, pid, item))
        return out

    def connection_lost(self) -> None:
        """The connection ended: half-done inbound steps are forgotten (the client
        resends those PUBLISHes); the rest waits for the next connection."""
        for pid, state in list(self._in.items()):
            nxt, _ = _step(INBOUND, "inbound", pid, state, E.CONNECTION_LOST)
            self._set_in(pid, nxt)

    def restore(self, next_pid: int, awaiting_pubrel: list[int],
                outbound: list[tuple[int, Flow, T]]) -> None:
        """Load a persisted session (``awaiting_pubrel``, ``outbound``)."""
        self.next_pid = next_pid if 0 < next_pid <= MAX_PACKET_ID else 1
        for pid in awaiting_pubrel:
            self._in[pid] = F.AWAIT_PUBREL
        for pid, state, item in outbound:
            if state not in (F.AWAIT_PUBACK, F.AWAIT_PUBREC, F.AWAIT_PUBCOMP):
                raise ValueError(f"not an outbound state: {state}")
            self._out[pid] = (state, item)
