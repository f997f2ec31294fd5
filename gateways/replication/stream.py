"""A replication connection on a trio stream: frames in and out through the sans-I/O codec."""

from __future__ import annotations

import trio

from ...protocols.replication import Frame, ReplicationConnection, ReplicationProtocolError
from ...protocols.sentinels import NeedData
from ..supervision import Watch

RECEIVE_BYTES = 1 << 20


class FrameStream:
    """``ReplicationConnection`` (protocols/replication) over a trio stream. ``receive``
    raises ReplicationProtocolError for a violation and EOFError when the peer
    closed cleanly; ``send`` serializes concurrent senders."""

    def __init__(self, stream: trio.abc.Stream, conn: ReplicationConnection,
                 watch: Watch | None = None) -> None:
        self.stream = stream
        self.conn = conn
        self.watch = watch  # the master's side: the connection supervisor's deadlines
        self._send_lock = trio.Lock()

    async def receive(self) -> Frame:
        watch = self.watch
        if watch is not None:
            watch.waiting()
        while True:
            frame = self.conn.next_event()
            if not isinstance(frame, NeedData):
                return frame
            data = await self.stream.receive_some(RECEIVE_BYTES)
            if not data:
                self.conn.receive_data(b"")  # raises inside a frame
                raise EOFError("the peer closed the replication connection")
            self.conn.receive_data(data)
            if watch is not None:  # a frame has begun: it must be complete in time
                watch.waiting(partial=True)

    async def send(self, frame: Frame) -> None:
        async with self._send_lock:
            data = self.conn.send(frame)
            if self.watch is not None:
                await self.watch.send_all(self.stream, data)
            else:
                await self.stream.send_all(data)

    async def refuse(self, err: ReplicationProtocolError) -> None:
        """A master's answer to a peer's violation, best effort, before closing."""
        data = self.conn.refusal(err)
        if data is None:
            return
        try:
            with trio.move_on_after(1):
                async with self._send_lock:
                    await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass
