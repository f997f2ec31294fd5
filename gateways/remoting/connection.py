"""One remoting connection on the server side: read frames, answer them, keep long polls apart.

A thin loop (STYLE.md): bytes in → ``FrameDecoder`` → ``Processor.handle`` →
bytes out. Requests that answer at once are answered in order and their
responses written together after each read (one send per read, as the
ceiling loop does). A request the processor must suspend (a long-polling
PULL_MESSAGE) runs as a task of this connection and writes its response when
it is ready; responses are matched by opaque, so order does not matter.

Bounds: at most ``max_suspended`` suspended requests per connection (more are
answered at once); while a peer does not read, ``send_all`` blocks and so does
this loop, which then stops reading: the kernel's socket buffers are all the
memory a silent peer can hold, for ``send_timeout_s`` at most. A framing error,
or a header or JSON body past the decoder's limits, is answered (when the
request's opaque is known) and closes the connection (the protocol cannot
resynchronise); everything else gets an error response.

The connection runs under the door's ``ConnectionSupervisor``
(gateways/supervision.py), which owns what goes wrong beyond that: this loop
tells its ``Watch`` when it waits for a request, has one under way (the rest
of a large frame is read only once the request-bytes budget holds its size),
handles one, or sends.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import trio

from ...protocols import record as rec
from ...protocols.remoting import (
    FrameDecoder,
    RemotingCommand,
    RemotingProtocolError,
    ResponseCode,
    encode,
    request,
    response_to,
)
from ...protocols.sentinels import NEED_DATA, NeedData

if TYPE_CHECKING:
    from ..supervision import Watch
    from .processor import Processor

log = logging.getLogger("ferrymq.remoting")

# 64 KiB: a recv() of 256 KiB costs about 17 us more per call here (the allocation
# crosses glibc's mmap threshold), which dominated small request/response traffic.
RECEIVE_SIZE = 64 * 1024


def _host_bytes(peer: str) -> bytes:
    """The peer as a record's born-host field (zeros when it is not IPv4)."""
    host, _, port = peer.rpartition(":")
    try:
        return rec.host_bytes(host, int(port))
    except ValueError:
        return b"\x00" * 8


def _plain_socket(stream: object) -> socket.socket | None:
    """The non-blocking socket under a plain TCP stream (None under TLS, or a
    permissive door's sniffing wrapper): ``ServerConnection.send`` writes it directly."""
    if not isinstance(stream, trio.SocketStream):
        return None
    raw = getattr(stream.socket, "_sock", None)  # trio's socket wraps the stdlib one
    if not isinstance(raw, socket.socket) or raw.getblocking():
        return None
    return raw


class ServerConnection:
    """What the processor sees of a connection: its peer and a way to send it requests."""

    def __init__(self, stream: trio.SocketStream, max_frame: int, max_suspended: int,
                 watch: Watch | None = None) -> None:
        self.stream = stream
        self.watch = watch
        try:
            host, port = stream.socket.getpeername()[:2]
            self.peer = f"{host}:{port}"
        except OSError:
            self.peer = "?:0"
        self.peer_bytes = _host_bytes(self.peer)
        self._sock = _plain_socket(stream)
        self.decoder = FrameDecoder(max_frame)
        self.send_lock = trio.Lock()
        self.suspended = trio.Semaphore(max_suspended)
        self.nursery: trio.Nursery | None = None
        self.closed = False
        self._notify_pending: set[tuple[int, str]] = set()
        self._opaque = 0

    async def send(self, data: bytes | memoryview) -> None:
        """Write ``data`` whole, after any write under way (long polls answer from
        tasks of their own). When nothing else is being written, a plain TCP
        connection first tries one non-blocking ``send`` of its own: a response the
        kernel takes at once costs no event-loop iteration, no lock wait. What it
        does not take goes through the stream, under the send timeout."""
        lock = self.send_lock
        if lock.locked():
            async with lock:
                await self._send_all(data)
            return
        lock.acquire_nowait()
        try:
            sock = self._sock
            if sock is not None:
                try:
                    n = sock.send(data)
                except OSError:  # full, or broken: the stream's send_all says which
                    n = 0
                if n == len(data):
                    if self.watch is not None:
                        self.watch.touch()
                    return
                data = memoryview(data)[n:]
            await self._send_all(data)
        finally:
            lock.release()

    async def _send_all(self, data: bytes | memoryview) -> None:
        if self.watch is None:
            await self.stream.send_all(data)
        else:
            await self.watch.send_all(self.stream, data)

    def spawn(self, fn: Callable[[], Awaitable[None]]) -> None:
        assert self.nursery is not None
        self.nursery.start_soon(fn)

    async def send_oneway(self, code: int, ext: dict[str, str], body: bytes = b"",
                          timeout: float = 3.0) -> bool:
        """Send a oneway request to the client now (CHECK_TRANSACTION_STATE); True when
        its bytes went out within ``timeout``, False if the connection is closed,
        broke, or the peer does not read."""
        if self.closed:
            return False
        self._opaque = (self._opaque + 1) & 0x7FFFFFFF
        data = encode(request(code, self._opaque, ext, body, oneway=True))
        try:
            with trio.move_on_after(timeout) as scope:
                await self.send(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        return not scope.cancelled_caught

    def send_request_soon(self, code: int, ext: dict[str, str], body: bytes = b"") -> None:
        """A oneway request to the client (NOTIFY_CONSUMER_IDS_CHANGED...), sent by a
        task so that a peer that does not read cannot block the caller. At most one
        identical request is pending per connection (they are idempotent)."""
        key = (code, repr(sorted(ext.items())))
        if self.closed or self.nursery is None or key in self._notify_pending:
            return
        self._notify_pending.add(key)
        self._opaque = (self._opaque + 1) & 0x7FFFFFFF
        data = encode(request(code, self._opaque, ext, body, oneway=True))

        async def go() -> None:
            try:
                with trio.move_on_after(10):
                    await self.send(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                self._notify_pending.discard(key)

        self.nursery.start_soon(go)


async def serve_connection(stream: trio.SocketStream, watch: Watch | None = None, *,
                           processor: Processor, max_frame: int, max_suspended: int) -> None:
    conn = ServerConnection(stream, max_frame, max_suspended, watch)
    processor.metrics.connection_opened()
    try:
        async with trio.open_nursery() as nursery:
            conn.nursery = nursery
            try:
                await _read_loop(conn, processor)
            finally:
                nursery.cancel_scope.cancel()
    except* (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the peer went away, possibly while a long poll was answering it
    finally:
        conn.closed = True
        conn.decoder.close()
        processor.metrics.connection_closed()
        processor.connection_closed(conn)
        with trio.CancelScope(shield=True):
            await stream.aclose()


async def _read_loop(conn: ServerConnection, processor: Processor) -> None:
    stream = conn.stream
    decoder = conn.decoder
    handle = processor.handle
    watch = conn.watch
    while True:
        if watch is not None:
            pending = decoder.frame_in_progress()
            watch.waiting(pending > 0)
            if pending > RECEIVE_SIZE:
                await watch.reserve(pending)  # the rest is read once the budget holds it
        data = await stream.receive_some(RECEIVE_SIZE)
        if not data:
            return
        out: list[bytes] = []
        handling: RemotingCommand | None = None  # the command being handled, if any
        try:
            decoder.receive_data(data)
            cmd = decoder.next_command()
            if cmd is not NEED_DATA and watch is not None:
                watch.handshake_done()
                watch.busy()  # until the next wait for bytes
            while not isinstance(cmd, NeedData):
                if cmd.is_response:
                    cmd = decoder.next_command()
                    continue  # an answer to a oneway notification: nothing waits for it
                handling = cmd
                resp = await handle(conn, cmd)
                handling = None
                if resp is not None and not cmd.is_oneway:
                    out.append(resp if isinstance(resp, bytes) else encode(resp))
                cmd = decoder.next_command()
        except RemotingProtocolError as exc:
            processor.counters["protocol_errors"] += 1
            processor.metrics.error("frame", "protocol_error")
            log.info("closing %s: %s", conn.peer, exc)
            # A header that did not decode names its opaque when it can; a body past
            # the limits belongs to the command being handled.
            opaque = exc.opaque if exc.opaque is not None else (
                handling.opaque if handling is not None and not handling.is_oneway else None)
            if opaque is not None:
                bad = RemotingCommand(0, opaque)
                out.append(encode(response_to(bad, ResponseCode.SYSTEM_ERROR,
                                              remark=f"protocol error: {exc}")))
            if out:
                with trio.move_on_after(1):
                    await conn.send(b"".join(out))
            return
        if watch is not None and watch.held and decoder.frame_in_progress() != watch.held:
            watch.release()  # the frame it held the budget for is answered
        if out:
            await conn.send(out[0] if len(out) == 1 else b"".join(out))
