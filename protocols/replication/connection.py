"""One replication connection, either side, as a sans-I/O state machine: bytes in, frames out.

Feed received bytes with ``receive_data``; take frames with ``next_event``
(None: need more bytes); turn frames into bytes with ``send``. The object
enforces what one frame cannot show:

- framing: a frame announcing more than ``max_frame`` bytes is refused from its
  header alone, before its body is buffered;
- order: which side may send which frame in which state (``TRANSITIONS``, the
  table below; anything not in it is a protocol error);
- the stream: each ``Transfer`` starts where the previous one ended (the first
  at the offset of the slave's first ``Ack``), and epochs never go back.

States, per side::

    slave:  START --send Hello--> HELLO_SENT --recv Welcome--> WELCOMED
            --send Ack--> STREAMING (recv Transfer / send Ack)
            HELLO_SENT --recv Refuse--> CLOSED
    master: START --recv Hello--> HELLO_RECEIVED --send Welcome--> WELCOMED
            --recv Ack--> STREAMING (send Transfer / recv Ack)
            HELLO_RECEIVED, WELCOMED, STREAMING --send Refuse--> CLOSED

A peer's violation raises ``ReplicationProtocolError`` (a ``RemoteProtocolError``):
the master answers ``Refuse(PROTOCOL)`` (``refusal``), either side closes. A
violation by our own side (``send`` of a frame the table does not allow) raises
``LocalReplicationError`` (a ``LocalProtocolError``): a bug here, never the
peer's fault. ``next_event`` returns ``NEED_DATA`` until a frame is whole.
"""

from __future__ import annotations

import enum

from ..sentinels import NEED_DATA, NeedData
from .frames import (
    HEADER,
    Ack,
    Frame,
    FrameType,
    Hello,
    LocalReplicationError,
    Refuse,
    RefuseReason,
    ReplicationProtocolError,
    Transfer,
    Welcome,
    decode,
    encode,
    replication_error,
)

DEFAULT_MAX_FRAME = 32 << 20  # a whole record always fits: records are at most a few MiB


class Side(enum.Enum):
    MASTER = "master"
    SLAVE = "slave"


class State(enum.Enum):
    START = "start"
    HELLO_SENT = "hello_sent"
    HELLO_RECEIVED = "hello_received"
    WELCOMED = "welcomed"
    STREAMING = "streaming"
    CLOSED = "closed"


class Direction(enum.Enum):
    SEND = "send"
    RECV = "recv"


S, D = State, Direction
# (our side, state, direction, frame type) -> next state. Anything else is invalid.
TRANSITIONS: dict[tuple[Side, State, Direction, type], State] = {
    (Side.SLAVE, S.START, D.SEND, Hello): S.HELLO_SENT,
    (Side.SLAVE, S.HELLO_SENT, D.RECV, Welcome): S.WELCOMED,
    (Side.SLAVE, S.HELLO_SENT, D.RECV, Refuse): S.CLOSED,
    (Side.SLAVE, S.WELCOMED, D.SEND, Ack): S.STREAMING,
    (Side.SLAVE, S.STREAMING, D.RECV, Transfer): S.STREAMING,
    (Side.SLAVE, S.STREAMING, D.SEND, Ack): S.STREAMING,
    (Side.SLAVE, S.STREAMING, D.RECV, Refuse): S.CLOSED,
    (Side.MASTER, S.START, D.RECV, Hello): S.HELLO_RECEIVED,
    (Side.MASTER, S.START, D.SEND, Refuse): S.CLOSED,
    (Side.MASTER, S.HELLO_RECEIVED, D.SEND, Welcome): S.WELCOMED,
    (Side.MASTER, S.HELLO_RECEIVED, D.SEND, Refuse): S.CLOSED,
    (Side.MASTER, S.WELCOMED, D.RECV, Ack): S.STREAMING,
    (Side.MASTER, S.WELCOMED, D.SEND, Refuse): S.CLOSED,
    (Side.MASTER, S.STREAMING, D.SEND, Transfer): S.STREAMING,
    (Side.MASTER, S.STREAMING, D.RECV, Ack): S.STREAMING,
    (Side.MASTER, S.STREAMING, D.SEND, Refuse): S.CLOSED,
}
del S, D


class ReplicationConnection:
    """See the module docstring."""

    def __init__(self, side: Side, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.side = side
        self.state = State.START
        self.max_frame = max_frame
        self.stream_pos: int | None = None  # where the next Transfer must start
        self.epoch = -1  # the newest epoch a Transfer carried
        self._buf = bytearray()

    # ---------------------------------------------------------------- the table

    def _step(self, direction: Direction, frame: Frame) -> None:
        key = (self.side, self.state, direction, type(frame))
        nxt = TRANSITIONS.get(key)
        if nxt is None:
            who = "peer" if direction is Direction.RECV else "this side"
            raise replication_error(
                f"{who} may not {direction.value} {type(frame).__name__} as {self.side.value} "
                f"in state {self.state.value}", remote=direction is Direction.RECV)
        if isinstance(frame, Transfer):
            self._check_transfer(frame, remote=direction is Direction.RECV)
        elif isinstance(frame, Ack) and self.stream_pos is None:
            self.stream_pos = frame.end  # the first Ack says where the stream starts
        self.state = nxt

    def _check_transfer(self, t: Transfer, *, remote: bool) -> None:
        if t.start != self.stream_pos:
            raise replication_error(
                f"transfer starts at {t.start}, the stream is at {self.stream_pos}", remote=remote)
        if t.epoch < self.epoch:
            raise replication_error(f"epoch went back from {self.epoch} to {t.epoch}",
                                    remote=remote)
        self.epoch = t.epoch
        self.stream_pos = t.end

    # ---------------------------------------------------------------- receiving

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Bytes from the peer; b"" means it closed (``next_event`` then raises if a
        frame was cut off)."""
        if not data:
            if self._buf:
                raise ReplicationProtocolError("the connection closed inside a frame")
            self.state = State.CLOSED
            return
        self._buf += data

    def next_event(self) -> Frame | NeedData:
        """The next complete frame, or NEED_DATA until more bytes come. Raises
        ReplicationProtocolError for a malformed, oversized or out-of-order frame."""
        buf = self._buf
        if len(buf) < HEADER.size:
            return NEED_DATA
        length, kind = HEADER.unpack_from(buf)
        if length < 1 or length > self.max_frame:
            raise ReplicationProtocolError(f"a {length}-byte frame; the limit is {self.max_frame}")
        if kind not in FrameType.__members__.values():
            raise ReplicationProtocolError(f"unknown frame type {kind}")
        total = 4 + length
        if len(buf) < total:
            return NEED_DATA
        frame = decode(kind, memoryview(buf)[HEADER.size:total])
        del buf[:total]
        self._step(Direction.RECV, frame)
        return frame

    # ---------------------------------------------------------------- sending

    def send(self, frame: Frame) -> bytes:
        """The bytes of ``frame``, once the table allows it. Raises
        LocalReplicationError if this side may not send it now."""
        data = encode(frame)
        if len(data) - 4 > self.max_frame:
            raise LocalReplicationError(f"a {len(data) - 4}-byte frame exceeds "
                                        f"{self.max_frame}")
        self._step(Direction.SEND, frame)
        return data

    def refusal(self, err: ReplicationProtocolError) -> bytes | None:
        """What a master sends before closing on a peer's violation (None on a slave,
        or when the connection is closed already)."""
        if self.side is not Side.MASTER or self.state is State.CLOSED:
            return None
        return self.send(Refuse(RefuseReason.PROTOCOL, str(err)[:4096]))
