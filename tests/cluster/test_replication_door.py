"""The replication door under the connection supervisor (gateways/supervision.py), like every
other door: a connection that never says HELLO, or stalls inside a frame, is closed at its
deadline and counted; past the connection cap a connection is refused; the slaves that
behave are served meanwhile. In-process: a master core and the door on an ephemeral port."""

from __future__ import annotations

from pathlib import Path

import trio
from ferrymq.core import Broker, BrokerConfig
from ferrymq.core.replication import Membership, Role
from ferrymq.gateways.config import ConnectionLimits
from ferrymq.gateways.replication.master import ReplicationDoor
from ferrymq.protocols.replication import Hello, Welcome
from ferrymq.protocols.replication.frames import decode, encode

LIMITS = ConnectionLimits(max_connections=3, handshake_timeout_s=0.3, idle_timeout_s=5.0,
                          frame_timeout_s=0.3, send_timeout_s=5.0)


def config(path: Path) -> BrokerConfig:
    return BrokerConfig(data_dir=str(path), segment_size=256 << 10, max_message_size=64 << 10,
                        cq_entries_per_file=4096,
                        index_slots=1024, index_entries=4096, broker_name="g1")


async def closed(s: trio.SocketStream) -> bytes:
    """What the door sent before it closed the connection."""
    data = b""
    with trio.fail_after(10):
        while chunk := await s.receive_some(65536):
            data += chunk
    return data


async def test_silent_and_stalled_connections_are_closed_and_the_cap_holds(tmp_path) -> None:
    membership = Membership(Role.MASTER, "m", 1, frozenset({"m"}))
    async with Broker.open(config(tmp_path), membership) as broker, \
            trio.open_nursery() as nursery:
        door = ReplicationDoor(broker, 1 << 20, LIMITS)
        port = await nursery.start(door.serve, "127.0.0.1", 0)
        silent = await trio.open_tcp_stream("127.0.0.1", port)
        stalled = await trio.open_tcp_stream("127.0.0.1", port)
        await stalled.send_all(encode(Hello("g1", "s", 256 << 10, 0, ()))[:7])  # half a frame
        good = await trio.open_tcp_stream("127.0.0.1", port)  # the third: at the cap
        over = await trio.open_tcp_stream("127.0.0.1", port)
        assert await closed(over) == b""  # refused at accept
        # A real slave's handshake is answered while the others are being timed out.
        await good.send_all(encode(Hello("g1", "s", 256 << 10, 0, ())))
        data = await good.receive_some(65536)
        frame = decode(data[4], memoryview(data)[5:5 + int.from_bytes(data[:4], "big") - 1])
        assert isinstance(frame, Welcome) and frame.node == "m"
        assert await closed(silent) == b"" and await closed(stalled) == b""
        await closed(good)  # it never sent its first ACK: the handshake did not complete
        counts = door.supervisor.counts
        with trio.fail_after(10):  # counted as the supervisor finishes the connection,
            while counts.get("handshake_timeout", 0) < 3:  # which may be after the close
                await trio.sleep(0.01)
        assert counts.get("handshake_timeout") == 3, counts
        assert counts.get("max_connections") == 1, counts
        for s in (silent, stalled, good, over):
            await s.aclose()
        nursery.cancel_scope.cancel()
