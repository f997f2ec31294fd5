"""The slave's end of the replication stream (docs/cluster.md, "The stream").

``follow`` connects to the master's replication address, says HELLO with this
node's epochs and log end, computes from the WELCOME where its log stops
equalling the master's (``Broker.truncation_point``) and then either asks for
its log to be cut back (``NeedsTruncation``: the core must be closed and opened
again — that is how the state is rolled back) or acks its end and applies
TRANSFER frames as they come (``Broker.replicate``), acking each. A lost
connection is retried with backoff; a refusal that says this node follows the
wrong master ends the follow (``MasterMoved``) so the controller can look again.
"""

from __future__ import annotations

import logging

import trio

from ...core.broker import Broker
from ...core.errors import FerryError
from ...protocols.replication import (
    Ack,
    Hello,
    LocalReplicationError,
    Refuse,
    RefuseReason,
    ReplicationConnection,
    ReplicationProtocolError,
    Side,
    Transfer,
    Welcome,
)
from ...protocols.sentinels import NeedData
from .stream import FrameStream

log = logging.getLogger("ferrymq.cluster.slave")

CONNECT_TIMEOUT_S = 3.0
IDLE_TIMEOUT_S = 5.0  # the master heartbeats every 0.5 s: this much silence means it is gone
BACKOFF_S = (0.05, 0.1, 0.2, 0.5, 1.0)


class NeedsTruncation(Exception):
    """This slave's log diverged from its master's after ``end``."""

    def __init__(self, end: int) -> None:
        super().__init__(f"truncate to {end}")
        self.end = end


class MasterMoved(Exception):
    """The node followed is not (or no longer) the master."""


class CannotFollow(Exception):
    """This node's log cannot be made a copy of the master's by the stream (no common
    epoch with data of its own; or it ends before the master's first byte)."""


async def follow(broker: Broker, host: str, port: int, *, max_frame: int,
                 on_streaming: trio.Event | None = None) -> None:
    """Follow the master at host:port until cancelled. Raises NeedsTruncation,
    MasterMoved, CannotFollow."""
    failures = 0
    while True:
        try:
            await _follow_once(broker, host, port, max_frame, on_streaming)
        except (OSError, EOFError, trio.BrokenResourceError, trio.ClosedResourceError,
                trio.TooSlowError, ReplicationProtocolError) as exc:
            log.info("replication from %s:%d interrupted: %s", host, port, exc)
        except LocalReplicationError as exc:  # a bug of this side: said loudly, then retried
            log.error("replication from %s:%d stopped by this side's error: %s", host, port, exc)
        delay = BACKOFF_S[min(failures, len(BACKOFF_S) - 1)]
        failures += 1
        await trio.sleep(delay)


async def _follow_once(broker: Broker, host: str, port: int, max_frame: int,
                       on_streaming: trio.Event | None) -> None:
    with trio.fail_after(CONNECT_TIMEOUT_S):
        stream = await trio.open_tcp_stream(host, port)
    async with stream:
        fs = FrameStream(stream, ReplicationConnection(Side.SLAVE, max_frame))
        pos = broker.replication_position()
        with trio.fail_after(CONNECT_TIMEOUT_S):
            await fs.send(Hello(pos.group, pos.node, pos.segment_size, pos.end, pos.epochs))
            answer = await fs.receive()
        if isinstance(answer, Refuse):
            if answer.code is RefuseReason.NOT_MASTER:
                raise MasterMoved(answer.text)
            raise CannotFollow(f"the master refused: {answer.code.name} {answer.text}")
        assert isinstance(answer, Welcome)
        point = broker.truncation_point(answer.epochs, answer.end)
        if point is None:
            if pos.end > pos.start or pos.epochs:
                raise CannotFollow(f"this log [{pos.start}, {pos.end}) shares no epoch with "
                                   f"the master's {answer.epochs}: it is not the group's")
            point = pos.end
        if point < pos.end:
            raise NeedsTruncation(point)
        if pos.end < answer.start:
            raise CannotFollow(f"this log ends at {pos.end}, before the master's first byte "
                               f"{answer.start}: it needs the master's snapshot")
        await fs.send(Ack(pos.end))
        log.info("following %s (epoch %d) from %d", answer.node, answer.epoch, pos.end)
        if on_streaming is not None:
            on_streaming.set()
        while True:
            with trio.fail_after(IDLE_TIMEOUT_S):
                frame = await fs.receive()
            end = _apply(broker, frame)
            # Frames that came together are acked together: one ack, one wake-up there.
            while not isinstance(more := fs.conn.next_event(), NeedData):
                end = _apply(broker, more)
            await fs.send(Ack(end))


def _apply(broker: Broker, frame: object) -> int:
    if isinstance(frame, Refuse):
        if frame.code is RefuseReason.NOT_MASTER:
            raise MasterMoved(frame.text)
        raise ReplicationProtocolError(f"refused: {frame.code.name} {frame.text}")
    assert isinstance(frame, Transfer)
    try:
        return broker.replicate(frame.epoch, frame.epoch_start, frame.start, frame.confirm,
                                bytes(frame.data))
    except FerryError as exc:
        raise ReplicationProtocolError(f"cannot apply a transfer at {frame.start}: "
                                       f"{exc}") from None
