"""A slave's Kafka door forwards an idempotent producer's InitProducerId to its master
(docs/cluster.md, "Kafka clients"): what it answers for each thing the master's side
may do — answer, close, send garbage, send a frame too large, stay silent, be absent.

The forwarding is exercised against a stand-in master (a trio listener on an
ephemeral port) so that every misbehaviour can be produced on purpose; the real
path, slave to master, is in test_clients.py."""

from __future__ import annotations

import struct
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest
import trio
from ferrymq.gateways.kafka import cluster as kc
from ferrymq.gateways.kafka.cluster import ClusterApis
from ferrymq.gateways.replication.view import ClusterView
from ferrymq.protocols.kafka import errors as ke
from ferrymq.protocols.kafka import schema
from ferrymq.protocols.kafka.connection import Header, response_bytes

INIT_PRODUCER_ID = 22
VERSION = 3


def slave_of(port: int) -> ClusterApis:
    """A slave's door as far as forwarding goes: a view naming a master at ``port``."""
    view = ClusterView("/p", "g1", "b")
    view.load([("/p/groups/g1/state", b'{"epoch": 2, "master": "a", "isr": ["a", "b"]}'),
               ("/p/groups/g1/leader", b'{"node": "a", "epoch": 2}'),
               ("/p/groups/g1/members/a",
                b'{"host": "127.0.0.1", "ports": {"kafka": %d}, "role": "master"}' % port)])
    door = ClusterApis()
    door.view = view
    return door


def request() -> tuple[Header, Any]:
    R = schema.request_class(INIT_PRODUCER_ID)
    return (Header(INIT_PRODUCER_ID, VERSION, 7, "c"),
            R(transactional_id=None, transaction_timeout_ms=60000, producer_id=-1,
              producer_epoch=-1))


async def answer(stream: trio.SocketStream) -> None:
    """A master: reads the request, answers producer id 4242."""
    data = b""
    while len(data) < 4 or len(data) < 4 + struct.unpack_from(">i", data)[0]:
        data += await stream.receive_some(4096)
    (corr,) = struct.unpack_from(">i", data, 8)
    R = schema.response_class(INIT_PRODUCER_ID)
    body = R(error_code=ke.NONE, producer_id=4242, producer_epoch=0)
    await stream.send_all(b"".join(response_bytes(Header(INIT_PRODUCER_ID, VERSION, corr, None),
                                                  body)))


async def close_at_once(stream: trio.SocketStream) -> None:
    await stream.receive_some(4096)


async def garbage(stream: trio.SocketStream) -> None:
    await stream.receive_some(4096)
    await stream.send_all(struct.pack(">i", 6) + b"\xff" * 6)  # a frame that does not decode


async def too_large(stream: trio.SocketStream) -> None:
    await stream.receive_some(4096)
    await stream.send_all(struct.pack(">i", 1 << 30) + b"\x00" * (kc.FORWARD_MAX_BYTES + 8))


async def silent(stream: trio.SocketStream) -> None:
    await trio.sleep_forever()


async def forward_to(master: Callable[[trio.SocketStream], Awaitable[None]]) -> Any:
    async with trio.open_nursery() as n:
        listeners = await n.start(partial(trio.serve_tcp, master, 0, host="127.0.0.1"))
        port = listeners[0].socket.getsockname()[1]
        h, req = request()
        got = await slave_of(port).forward_init_producer_id(h, req)
        n.cancel_scope.cancel()
    return got


async def test_the_masters_producer_id_is_the_answer() -> None:
    got = await forward_to(answer)
    assert (got.error_code, got.producer_id, got.producer_epoch) == (ke.NONE, 4242, 0)


@pytest.mark.parametrize("master", [close_at_once, garbage, too_large])
async def test_a_master_that_misbehaves_gives_a_retriable_code(master) -> None:
    got = await forward_to(master)
    assert (got.error_code, got.producer_id) == (ke.COORDINATOR_NOT_AVAILABLE, -1)


async def test_a_silent_master_gives_a_retriable_code_after_the_timeout(monkeypatch) -> None:
    monkeypatch.setattr(kc, "FORWARD_TIMEOUT_S", 0.2)
    got = await forward_to(silent)
    assert got.error_code == ke.COORDINATOR_NOT_AVAILABLE


async def test_no_master_known_or_reachable_gives_a_retriable_code() -> None:
    door = slave_of(1)  # nothing listens on port 1
    h, req = request()
    assert (await door.forward_init_producer_id(h, req)).error_code == \
        ke.COORDINATOR_NOT_AVAILABLE
    door.view = ClusterView("/p", "g1", "b")  # no master elected
    assert (await door.forward_init_producer_id(h, req)).error_code == \
        ke.COORDINATOR_NOT_AVAILABLE
