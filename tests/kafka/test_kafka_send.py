"""How the Kafka door writes a response: a large one by sendmsg(2) of its chunks, unjoined.

A Fetch response is a list of chunks (the header, the encoded fields, each stored
record batch as a view). Joining them before the send copied every fetched byte
once more; now the chunks go to the kernel as they are, and a peer that reads
slowly (partial sends) still gets every byte, in order, once.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import trio
from ferrymq.gateways.kafka import server
from ferrymq.protocols.kafka import schema
from ferrymq.protocols.kafka.connection import Header, response_bytes


def _fetch_response(batches: list[bytes]) -> list[Any]:
    """A Fetch v12 response carrying ``batches`` as the records of one partition."""
    R = schema.response_class(1)
    part = R.PartitionData(partition_index=0, error_code=0, high_watermark=len(batches),
                           last_stable_offset=len(batches), log_start_offset=0,
                           aborted_transactions=(), preferred_read_replica=-1,
                           records=[memoryview(b) for b in batches])
    body = R(throttle_time_ms=0, error_code=0, session_id=0, responses=(
        R.FetchableTopicResponse(topic="t", partitions=(part,)),))
    return response_bytes(Header(1, 12, 7, "c"), body)


class Recording:
    """A trio socket whose sendmsg calls are recorded; everything else is the socket's."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.calls: list[list[int]] = []  # the sizes of the buffers of each call

    async def sendmsg(self, buffers: list[Any]) -> int:
        self.calls.append([len(b) for b in buffers])
        return int(await self.sock.sendmsg(buffers))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


async def _send_and_read(parts: list[Any], *, sndbuf: int | None = None
                         ) -> tuple[bytes, Recording]:
    a, b = trio.socket.socketpair()
    if sndbuf is not None:  # a small send buffer: the kernel takes a little at a time
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
        b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
    stream = trio.SocketStream(a)
    recording = Recording(stream.socket)
    stream.socket = recording  # type: ignore[misc]
    total = sum(len(p) for p in parts)
    got = bytearray()

    async def read() -> None:
        while len(got) < total:
            chunk = await b.recv(65536)
            assert chunk
            got.extend(chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read)
        await server._send_parts(stream, None, parts)
    a.close()
    b.close()
    return bytes(got), recording


async def test_a_large_fetch_response_goes_out_by_sendmsg_of_its_chunks_unjoined() -> None:
    batches = [os.urandom(300_000) for _ in range(4)]
    parts = _fetch_response(batches)
    got, recording = await _send_and_read(parts)
    assert got == b"".join(parts)
    # The stored batches reached the kernel as buffers of their own, not one joined copy.
    first = recording.calls[0]
    assert len(first) == len([p for p in parts if len(p)])
    assert all(len(b) in first for b in batches)


async def test_partial_sends_resume_where_the_kernel_stopped() -> None:
    parts = _fetch_response([os.urandom(100_000 + i) for i in range(30)])
    got, recording = await _send_and_read(parts, sndbuf=8192)
    assert got == b"".join(parts)
    assert len(recording.calls) > 1  # the kernel took the response in several calls


async def test_more_chunks_than_one_call_takes_are_sent_in_several_calls() -> None:
    parts = _fetch_response([os.urandom(100) for _ in range(3 * server.IOV_MAX)])
    got, recording = await _send_and_read(parts)
    assert got == b"".join(parts)
    assert max(len(c) for c in recording.calls) <= server.IOV_MAX


async def test_a_small_response_is_joined_and_sent_whole() -> None:
    parts = _fetch_response([b"x" * 100])
    got, recording = await _send_and_read(parts)
    assert got == b"".join(parts)
    assert recording.calls == []  # one send of the joined bytes
