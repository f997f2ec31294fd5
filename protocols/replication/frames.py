"""The replication stream's frames: typed events and their byte layout.

Every frame is ``length 4 | type 1 | body`` (big-endian; ``length`` counts the
type byte and the body). Strings are ``length 2 | UTF-8``; an epoch list is
``count 4 | (epoch 8 | start offset 8) * count``.

| type | frame | sent by | body |
|---|---|---|---|
| 1 | ``Hello`` | slave | version 2, group, node, segment size 8, CommitLog end 8, epochs |
| 2 | ``Welcome`` | master | node, epoch 8, CommitLog start 8, CommitLog end 8, epochs |
| 3 | ``Refuse`` | master | reason code 2, text |
| 4 | ``Ack`` | slave | CommitLog end 8 (everything below it is written) |
| 5 | ``Transfer`` | master | epoch 8, epoch start 8, start offset 8, confirm offset 8, bytes |

A ``Transfer`` with no bytes is a heartbeat carrying the confirm offset. What a
frame's fields must satisfy on their own (non-negative offsets, epochs in
order) is checked when it is built and when it is decoded; what depends on the
conversation (order of frames, offsets following each other) is
``connection.ReplicationConnection``'s.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from ..errors import LocalProtocolError, ProtocolError, RemoteProtocolError

PROTOCOL_VERSION = 1
HEADER = struct.Struct(">IB")
_I64 = struct.Struct(">q")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_PAIR = struct.Struct(">qq")
_TRANSFER = struct.Struct(">qqqq")
MAX_STRING_BYTES = 255
MAX_EPOCHS = 100_000  # one election per second for a day; a list longer is not ours


class FrameType(enum.IntEnum):
    HELLO = 1
    WELCOME = 2
    REFUSE = 3
    ACK = 4
    TRANSFER = 5


class RefuseReason(enum.IntEnum):
    """Why a master turns a slave away (``Refuse.code``)."""

    NOT_MASTER = 1  # this node is not the group's master (any more)
    WRONG_GROUP = 2  # the slave belongs to another broker group
    SEGMENT_SIZE = 3  # CommitLog segment sizes differ: offsets would not mean the same files
    VERSION = 4  # a protocol version this master does not speak
    PROTOCOL = 5  # the slave broke the protocol


class ReplicationProtocolError(RemoteProtocolError):
    """The peer sent a frame or a sequence of frames the protocol does not allow:
    answer with ``Refuse(PROTOCOL)`` and close."""

    remote = True


class LocalReplicationError(LocalProtocolError):
    """This side tried to send what the protocol does not allow: a bug here, never
    the peer's fault (protocols/errors.py)."""

    remote = False


def replication_error(message: str, *, remote: bool) -> ProtocolError:
    """The error for a violation by the peer (``remote``) or by this side."""
    return ReplicationProtocolError(message) if remote else LocalReplicationError(message)


def _check_offset(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 62:
        raise ValueError(f"{name} must be an offset in [0, 2^62), not {value!r}")


def _check_epochs(epochs: tuple[tuple[int, int], ...]) -> None:
    if len(epochs) > MAX_EPOCHS:
        raise ValueError(f"at most {MAX_EPOCHS} epochs")
    prev_e, prev_s = -1, 0
    for e, s in epochs:
        _check_offset("epoch", e)
        _check_offset("epoch start", s)
        if e <= prev_e or s < prev_s:
            raise ValueError("epochs must grow and their start offsets never decrease")
        prev_e, prev_s = e, s


def _check_name(name: str, value: str) -> None:
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_STRING_BYTES:
        raise ValueError(f"{name} must be a non-empty string of at most {MAX_STRING_BYTES} bytes")


@dataclass(frozen=True, slots=True)
class Hello:
    group: str
    node: str
    segment_size: int
    end: int
    epochs: tuple[tuple[int, int], ...]
    version: int = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        _check_name("group", self.group)
        _check_name("node", self.node)
        _check_offset("segment size", self.segment_size)
        _check_offset("end", self.end)
        _check_epochs(self.epochs)
        if not 0 < self.version < 1 << 16:
            raise ValueError("version must fit 16 bits")


@dataclass(frozen=True, slots=True)
class Welcome:
    node: str
    epoch: int
    start: int
    end: int
    epochs: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        _check_name("node", self.node)
        _check_offset("epoch", self.epoch)
        _check_offset("start", self.start)
        _check_offset("end", self.end)
        _check_epochs(self.epochs)
        if self.start > self.end:
            raise ValueError("a log cannot start after its end")


@dataclass(frozen=True, slots=True)
class Refuse:
    code: RefuseReason
    text: str = ""

    def __post_init__(self) -> None:
        if len(self.text.encode()) > 4096:
            raise ValueError("refusal text is at most 4096 bytes")


@dataclass(frozen=True, slots=True)
class Ack:
    end: int

    def __post_init__(self) -> None:
        _check_offset("end", self.end)


@dataclass(frozen=True, slots=True)
class Transfer:
    epoch: int
    epoch_start: int
    start: int
    confirm: int
    data: bytes | memoryview = b""

    def __post_init__(self) -> None:
        _check_offset("epoch", self.epoch)
        _check_offset("epoch start", self.epoch_start)
        _check_offset("start", self.start)
        _check_offset("confirm", self.confirm)
        if self.epoch_start > self.start:
            raise ValueError("a transfer cannot start before its epoch")

    @property
    def end(self) -> int:
        return self.start + len(self.data)


Frame = Hello | Welcome | Refuse | Ack | Transfer


# ---------------------------------------------------------------- encoding

def _string(value: str) -> bytes:
    raw = value.encode()
    return _U16.pack(len(raw)) + raw


def _epoch_list(epochs: tuple[tuple[int, int], ...]) -> bytes:
    return _U32.pack(len(epochs)) + b"".join(_PAIR.pack(e, s) for e, s in epochs)


def encode(frame: Frame) -> bytes:
    """The bytes of one frame, header included."""
    if isinstance(frame, Transfer):
        head = _TRANSFER.pack(frame.epoch, frame.epoch_start, frame.start, frame.confirm)
        return b"".join((HEADER.pack(1 + len(head) + len(frame.data), FrameType.TRANSFER), head,
                         frame.data))
    if isinstance(frame, Ack):
        kind, body = FrameType.ACK, _I64.pack(frame.end)
    elif isinstance(frame, Hello):
        kind = FrameType.HELLO
        body = b"".join((_U16.pack(frame.version), _string(frame.group), _string(frame.node),
                         _I64.pack(frame.segment_size), _I64.pack(frame.end),
                         _epoch_list(frame.epochs)))
    elif isinstance(frame, Welcome):
        kind = FrameType.WELCOME
        body = b"".join((_string(frame.node), _I64.pack(frame.epoch), _I64.pack(frame.start),
                         _I64.pack(frame.end), _epoch_list(frame.epochs)))
    elif isinstance(frame, Refuse):
        kind = FrameType.REFUSE
        raw = frame.text.encode()
        body = _U16.pack(frame.code) + _U16.pack(len(raw)) + raw
    else:
        raise TypeError(f"not a replication frame: {frame!r}")
    return HEADER.pack(1 + len(body), kind) + body


# ---------------------------------------------------------------- decoding

class _Reader:
    __slots__ = ("buf", "pos")

    def __init__(self, buf: memoryview) -> None:
        self.buf = buf
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.buf):
            raise ReplicationProtocolError("frame body ends inside a field")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def i64(self) -> int:
        return int(_I64.unpack(self.take(8))[0])

    def u16(self) -> int:
        return int(_U16.unpack(self.take(2))[0])

    def string(self) -> str:
        try:
            return bytes(self.take(self.u16())).decode()
        except UnicodeDecodeError:
            raise ReplicationProtocolError("a string is not UTF-8") from None

    def epochs(self) -> tuple[tuple[int, int], ...]:
        n = int(_U32.unpack(self.take(4))[0])
        if n > MAX_EPOCHS:
            raise ReplicationProtocolError(f"{n} epochs; at most {MAX_EPOCHS}")
        raw = self.take(n * _PAIR.size)
        return tuple((int(e), int(s)) for e, s in _PAIR.iter_unpack(raw))

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise ReplicationProtocolError("bytes left over after the frame's fields")


def decode(kind: int, body: memoryview) -> Frame:
    """One frame from its type and body (the header already taken off). Raises
    ReplicationProtocolError for anything malformed."""
    r = _Reader(body)
    try:
        if kind == FrameType.TRANSFER:
            epoch, epoch_start, start, confirm = _TRANSFER.unpack(r.take(_TRANSFER.size))
            return Transfer(epoch, epoch_start, start, confirm, bytes(body[r.pos:]))
        frame: Frame
        if kind == FrameType.ACK:
            frame = Ack(r.i64())
        elif kind == FrameType.HELLO:
            version = r.u16()
            frame = Hello(r.string(), r.string(), r.i64(), r.i64(), r.epochs(), version)
        elif kind == FrameType.WELCOME:
            frame = Welcome(r.string(), r.i64(), r.i64(), r.i64(), r.epochs())
        elif kind == FrameType.REFUSE:
            code = r.u16()
            try:
                reason = RefuseReason(code)
            except ValueError:
                raise ReplicationProtocolError(f"unknown refusal code {code}") from None
            frame = Refuse(reason, r.string())
        else:
            raise ReplicationProtocolError(f"unknown frame type {kind}")
    except ValueError as exc:  # a field out of range (the dataclasses' checks)
        raise ReplicationProtocolError(str(exc)) from None
    r.done()
    return frame
