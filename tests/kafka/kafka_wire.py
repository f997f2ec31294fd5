"""A blocking raw Kafka client for tests: one request, one response, any API and version."""

from __future__ import annotations

import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.kafka import serve
from ferrymq.gateways.server import DoorContext
from ferrymq.protocols.kafka import schema
from ferrymq.protocols.kafka.connection import parse_response, request_bytes


class Client:
    """A blocking raw Kafka client: one request, one response."""

    def __init__(self, address: str) -> None:
        host, port = address.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=10)
        self.corr = 0

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_frame(self) -> bytes | None:
        head = self._exact(4)
        if head is None:
            return None
        (size,) = struct.unpack(">i", head)
        return self._exact(size)

    def _exact(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def call(self, api: int, version: int, body, *, expect_reply: bool = True):
        self.corr += 1
        self.send_raw(request_bytes(api, version, self.corr, body))
        if not expect_reply:
            return None
        frame = self.read_frame()
        assert frame is not None, "the broker closed the connection"
        corr, resp = parse_response(api, version, frame)
        assert corr == self.corr
        return resp

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


PRODUCE, FETCH, LIST_OFFSETS, METADATA, API_VERSIONS, INIT_PRODUCER_ID = 0, 1, 2, 3, 18, 22
CREATE_TOPICS = 19


def Req(api: int):
    return schema.request_class(api)


def produce(c: Client, topic: str, records: bytes, version: int = 8, partition: int = 0,
            acks: int = -1):
    R = Req(PRODUCE)
    resp = c.call(PRODUCE, version, R(acks=acks, timeout_ms=5000, topic_data=(
        R.TopicProduceData(name=topic, partition_data=(
            R.PartitionProduceData(index=partition, records=records),)),)),
        expect_reply=acks != 0)
    return None if resp is None else resp.responses[0].partition_responses[0]


def fetch(c: Client, topic: str, offset: int, version: int = 11, max_wait: int = 0,
          min_bytes: int = 1):
    R = Req(FETCH)
    part = R.FetchPartition(partition=0, fetch_offset=offset, partition_max_bytes=1 << 20)
    resp = c.call(FETCH, version, R(replica_id=-1, max_wait_ms=max_wait, min_bytes=min_bytes,
                                    max_bytes=1 << 20,
                                    topics=(R.FetchTopic(topic=topic, partitions=(part,)),)))
    return resp.responses[0].partitions[0]


def create(c: Client, topic: str, partitions: int = 1) -> None:
    R = Req(CREATE_TOPICS)
    resp = c.call(CREATE_TOPICS, 4, R(topics=(R.CreatableTopic(name=topic, num_partitions=partitions,
                                                     replication_factor=1),), timeout_ms=5000))
    assert resp.topics[0].error_code == 0


Body = Callable[[Broker, str], Awaitable[None]]


async def with_door(tmp_path: Any, body: Body, options: dict[str, Any] | None = None) -> None:
    async with Broker.open(BrokerConfig(data_dir=str(tmp_path / "data"))) as broker, \
            trio.open_nursery() as nursery:
        port = await nursery.start(serve, DoorContext(broker, "127.0.0.1", 0, options or {},
                                                      ServerConfig()))
        await body(broker, f"127.0.0.1:{port}")
        nursery.cancel_scope.cancel()


async def run(fn: Callable[..., Any], *args: Any) -> Any:
    """A blocking client call from a trio test: in a thread, so the door keeps serving."""
    return await trio.to_thread.run_sync(fn, *args)
