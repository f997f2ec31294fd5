"""The master's end of the replication stream: the replication door (docs/cluster.md, "The stream").

Per slave connection: HELLO is checked (group, segment size, version, that this
node is master), WELCOME gives the master's epochs, the slave's first ACK says
where to start; then one task sends TRANSFER frames — whole records, never
across a segment's end or an epoch (``Broker.replication_chunk``), heartbeats
with the confirm offset when idle — and another takes the slave's ACKs into the
replica set (``Broker.replica_acked``). A slave that breaks the protocol gets a
REFUSE and is disconnected; nothing it sends can stop the others.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import trio

from ...core.broker import Broker
from ...core.errors import FerryError
from ...core.replication import Role
from ...protocols.replication import (
    PROTOCOL_VERSION,
    Ack,
    Hello,
    Refuse,
    RefuseReason,
    ReplicationConnection,
    ReplicationProtocolError,
    Side,
    Transfer,
    Welcome,
)
from .stream import FrameStream

log = logging.getLogger("ferrymq.cluster.master")

CHUNK_BYTES = 1 << 20  # one TRANSFER carries at most this (unless one record is larger)
HEARTBEAT_S = 0.5  # an idle stream sends the confirm offset this often
CONFIRM_DELAY_S = 0.02  # a moved confirm offset waits this long for a record to ride on
HANDSHAKE_TIMEOUT_S = 10.0


@dataclass
class StreamStats:
    connections: int = 0
    refused: int = 0
    protocol_errors: int = 0
    frames: int = 0
    bytes: int = 0
    errors: int = 0


class ReplicationDoor:
    """Serves the group's slaves on the replication port while the core is master."""

    def __init__(self, broker: Broker, max_frame: int) -> None:
        self.broker = broker
        self.max_frame = max_frame
        self.stats = StreamStats()

    async def serve(self, host: str, port: int, *,
                    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(port, host=host)
        task_status.started(listeners[0].socket.getsockname()[1])
        await trio.serve_listeners(self.handle, listeners)

    async def handle(self, stream: trio.abc.Stream) -> None:
        self.stats.connections += 1
        async with stream:
            await self._converse(stream)

    async def _converse(self, stream: trio.abc.Stream) -> None:
        fs = FrameStream(stream, ReplicationConnection(Side.MASTER, self.max_frame))
        node = None
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT_S):
                hello = await fs.receive()
                assert isinstance(hello, Hello)  # the table allows nothing else first
                refusal = self._check(hello)
                if refusal is not None:
                    self.stats.refused += 1
                    log.warning("refused slave %s: %s", hello.node, refusal.text)
                    await fs.send(refusal)
                    return
                pos = self.broker.replication_position()
                await fs.send(Welcome(pos.node, pos.epoch, pos.start, pos.end, pos.epochs))
                first = await fs.receive()
                assert isinstance(first, Ack)
            if not pos.start <= first.end <= self.broker.replication_position().end:
                raise ReplicationProtocolError(
                    f"the slave starts at {first.end}, outside this log "
                    f"[{pos.start}, {pos.end}]: it must truncate first")
            node = hello.node
            self.broker.replica_connected(node, first.end)
            self.broker.replica_acked(node, first.end)
            log.info("slave %s streaming from %d", node, first.end)
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._send, fs, first.end, nursery.cancel_scope)
                    await self._receive_acks(fs, node)
                    nursery.cancel_scope.cancel()
            except BaseExceptionGroup as group:
                raise _first(group) from None
        except ReplicationProtocolError as exc:
            self.stats.protocol_errors += 1
            log.warning("replication protocol error from %s: %s", node or "a slave", exc)
            await fs.refuse(exc)
        except (EOFError, trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError,
                OSError) as exc:
            log.info("slave %s disconnected: %s", node or "(handshake)", exc)
        except FerryError as exc:  # not master any more, a store error: the slave retries
            log.warning("replication to %s stopped: %s", node or "a slave", exc)
        except Exception:  # a bug: that connection ends, the door and the other slaves go on
            self.stats.errors += 1
            log.exception("replication connection from %s failed", node or "a slave")
        finally:
            if node is not None:
                self.broker.replica_disconnected(node)

    def _check(self, hello: Hello) -> Refuse | None:
        pos = self.broker.replication_position()
        if pos.role is not Role.MASTER:
            return Refuse(RefuseReason.NOT_MASTER, f"{pos.node} is not the master")
        if hello.version != PROTOCOL_VERSION:
            return Refuse(RefuseReason.VERSION, f"protocol version {PROTOCOL_VERSION} only")
        if hello.group != pos.group:
            return Refuse(RefuseReason.WRONG_GROUP, f"this is group {pos.group}, not {hello.group}")
        if hello.segment_size != pos.segment_size:
            return Refuse(RefuseReason.SEGMENT_SIZE, f"segment size {pos.segment_size}, "
                                                     f"not {hello.segment_size}")
        if hello.node == pos.node:
            return Refuse(RefuseReason.PROTOCOL, "a node cannot follow itself")
        return None

    async def _send(self, fs: FrameStream, pos: int, scope: trio.CancelScope) -> None:
        """New records as they come; the confirm offset rides on them. When no record
        comes, a moved confirm offset goes out after ``CONFIRM_DELAY_S`` (a slave's
        consumers wait for it, a busy stream would only bounce it back and forth), and
        an idle stream heartbeats every ``HEARTBEAT_S``."""
        broker = self.broker
        sent_confirm = -1
        try:
            while True:
                chunk = broker.replication_chunk(pos, CHUNK_BYTES)
                if chunk.data or chunk.confirm != sent_confirm:
                    await fs.send(Transfer(chunk.epoch, chunk.epoch_start, pos, chunk.confirm,
                                           chunk.data))
                    self.stats.frames += 1
                    self.stats.bytes += len(chunk.data)
                    pos += len(chunk.data)
                    sent_confirm = chunk.confirm
                    if chunk.data:
                        continue
                moved = await broker.replication_wait(pos, HEARTBEAT_S, CONFIRM_DELAY_S,
                                                      sent_confirm)
                if not moved:
                    sent_confirm = -1  # a heartbeat is due
                # Let the puts that woke with this one append too: one frame for all.
                await trio.lowlevel.checkpoint()
        finally:
            scope.cancel()

    async def _receive_acks(self, fs: FrameStream, node: str) -> None:
        while True:
            frame = await fs.receive()
            assert isinstance(frame, Ack)  # the table allows nothing else while streaming
            self.broker.replica_acked(node, frame.end)


def _first(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The exception that ended a connection's two tasks (not the other's cancellation)."""
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            return _first(exc)
        if not isinstance(exc, trio.Cancelled):
            return exc
    return group.exceptions[0]
