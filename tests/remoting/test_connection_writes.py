"""How frames leave a remoting connection, on the client and on the broker.

Both sides write an idle plain TCP connection directly (one non-blocking ``send``
from the caller, no task switch) and hand whatever the kernel did not take to the
slow path. These tests pin what that must never change: frames arrive whole and in
the order they were queued, also when a frame is larger than the socket buffers and
the peer reads late; a request whose answer never comes still times out."""

from __future__ import annotations

import socket

import anyio
import anyio.abc
import pytest
import trio
from ferrymq.clients.remoting import RemotingConnection, RemotingTimeoutError
from ferrymq.gateways.remoting.connection import ServerConnection
from ferrymq.protocols.remoting import (
    FrameDecoder,
    RemotingCommand,
    RequestCode,
    ResponseCode,
    encode,
    request,
    response_to,
)
from ferrymq.protocols.sentinels import NeedData

BACKENDS = ["asyncio", "trio"]
BIG = 8 << 20  # larger than any loopback socket buffer: the direct send is partial


async def _connected_pair() -> tuple[anyio.abc.SocketStream, anyio.abc.SocketStream]:
    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    accepted: list[anyio.abc.SocketStream] = []

    async def accept(stream: anyio.abc.SocketStream) -> None:
        accepted.append(stream)
        await anyio.sleep_forever()

    async with anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, accept)
        client = await anyio.connect_tcp("127.0.0.1", port)
        with anyio.fail_after(10):
            while not accepted:
                await anyio.sleep(0.01)
        tg.cancel_scope.cancel()
    return client, accepted[0]


async def _read_commands(stream: anyio.abc.SocketStream, n: int) -> list[RemotingCommand]:
    decoder = FrameDecoder(max_frame=64 << 20)
    out: list[RemotingCommand] = []
    while len(out) < n:
        decoder.receive_data(await stream.receive(1 << 20))
        while not isinstance(cmd := decoder.next_command(), NeedData):
            out.append(cmd)
    return out


@pytest.mark.parametrize("backend", BACKENDS)
def test_client_frames_arrive_whole_and_in_order_past_a_full_socket(backend: str) -> None:
    """A frame larger than the socket buffers is sent partly at once and partly by the
    writer; the frames queued behind it, with it in flight, follow it intact."""

    async def main() -> None:
        client, server = await _connected_pair()
        conn = RemotingConnection(client, "peer")
        results: dict[int, object] = {}
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.run)
            big = request(RequestCode.SEND_MESSAGE_V2, 0, {"k": "big"}, b"b" * BIG)

            async def call(i: int, cmd: RemotingCommand) -> None:
                results[i] = (await conn.invoke(cmd, timeout=30)).remark

            tg.start_soon(call, 0, big)
            await anyio.sleep(0.05)  # the big frame is on its way (the peer reads nothing)
            for i in range(1, 6):  # queued in this order, behind the big one

                def answered(resp: RemotingCommand, i: int = i) -> None:
                    results[i] = resp.remark

                conn.send_nowait(request(RequestCode.HEART_BEAT, 0, {"k": str(i)},
                                         bytes([i]) * i), answered, timeout=30)
            await anyio.sleep(0.05)
            got = await _read_commands(server, 6)
            assert [c.ext("k") for c in got] == ["big", "1", "2", "3", "4", "5"]
            assert got[0].body == b"b" * BIG
            assert [c.body for c in got[1:]] == [bytes([i]) * i for i in range(1, 6)]
            # Answered out of order: each waiting caller gets its own response.
            await server.send(b"".join(encode(response_to(c, ResponseCode.SUCCESS,
                                                          remark=c.ext("k")))
                                       for c in reversed(got)))
            with anyio.fail_after(10):
                while len(results) < 6:
                    await anyio.sleep(0.01)
            assert results == {0: "big", 1: "1", 2: "2", 3: "3", 4: "4", 5: "5"}
            tg.cancel_scope.cancel()
        await server.aclose()

    anyio.run(main, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_request_without_an_answer_times_out(backend: str) -> None:
    async def main() -> None:
        client, server = await _connected_pair()
        conn = RemotingConnection(client, "peer")
        async with anyio.create_task_group() as tg:
            tg.start_soon(conn.run)
            with pytest.raises(RemotingTimeoutError, match="no response from peer"):
                await conn.invoke(request(RequestCode.HEART_BEAT, 0), timeout=0.3)
            assert not conn._pending and not conn._deadlines  # nothing left behind
            # The connection is still usable: the next request is answered.
            answered: list[RemotingCommand] = []

            async def call() -> None:
                answered.append(await conn.invoke(request(RequestCode.HEART_BEAT, 0), 10))

            tg.start_soon(call)
            got = await _read_commands(server, 2)
            await server.send(encode(response_to(got[1], ResponseCode.SUCCESS)))
            with anyio.fail_after(10):
                while not answered:
                    await anyio.sleep(0.01)
            assert answered[0].opaque == got[1].opaque
            tg.cancel_scope.cancel()
        await server.aclose()

    anyio.run(main, backend=backend)


def test_broker_responses_arrive_whole_and_in_order_past_a_full_socket() -> None:
    """The broker's direct write: a response larger than the socket buffers goes partly
    at once, the rest under the send timeout; a response sent meanwhile by another
    task (a long poll answering) waits for it and follows it whole."""

    async def main() -> None:
        listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
        peer = await trio.open_tcp_stream("127.0.0.1", listener.socket.getsockname()[1])
        conn = ServerConnection(await listener.accept(), 64 << 20, 4)
        await listener.aclose()
        big = encode(response_to(RemotingCommand(0, 1), ResponseCode.SUCCESS, body=b"r" * BIG))
        small = encode(response_to(RemotingCommand(0, 2), ResponseCode.SUCCESS, body=b"s"))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(conn.send, big)
            await trio.sleep(0.05)
            assert conn.send_lock.locked()  # the rest of the big one is waiting for room
            nursery.start_soon(conn.send, small)
            decoder = FrameDecoder(max_frame=64 << 20)
            got: list[RemotingCommand] = []
            while len(got) < 2:
                decoder.receive_data(await peer.receive_some(1 << 20))
                while not isinstance(cmd := decoder.next_command(), NeedData):
                    got.append(cmd)
        assert [(c.opaque, len(c.body)) for c in got] == [(1, BIG), (2, 1)]
        assert got[0].body == b"r" * BIG

    trio.run(main)


def test_the_direct_write_is_used_only_for_plain_sockets() -> None:
    """TLS (or any wrapper) goes through its stream: the socket under it carries
    ciphertext the connection must not write around."""
    from ferrymq.clients.remoting import _plain_socket as client_socket
    from ferrymq.gateways.remoting.connection import _plain_socket as server_socket

    async def main() -> None:
        a, b = trio.socket.socketpair()
        with a, b:
            assert isinstance(server_socket(trio.SocketStream(a)), socket.socket)
            assert server_socket(trio.StapledStream(trio.SocketStream(a),  # type: ignore[arg-type]
                                                    trio.SocketStream(b))) is None

    trio.run(main)

    async def client_side() -> None:
        c, s = await _connected_pair()
        assert isinstance(client_socket(c), socket.socket)
        assert client_socket(anyio.streams.stapled.StapledByteStream(c, c)) is None
        await c.aclose()
        await s.aclose()

    for backend in BACKENDS:
        anyio.run(client_side, backend=backend)
