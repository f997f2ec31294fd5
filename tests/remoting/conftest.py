"""Helpers for the native door's tests: brokers with a NameServer, fast timers, raw connections."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable
from pathlib import Path

import pytest
from ferrymq.protocols.remoting import FrameDecoder, RemotingCommand, encode
from ferrymq.protocols.sentinels import NeedData

# Small store files: every test broker preallocates its first CommitLog segment, and a
# shared CI disk fills up with 1 GiB ones.
SMALL_STORE = """
segment_size = 67108864
cq_entries_per_file = 20000
index_slots = 20000
index_entries = 80000
"""

# Short retry and transaction timings (top-level keys: before any table). The delay
# levels keep level 1 at 1 s and make a retry (level 3 + reconsume count) come back in
# 1-6 s instead of 10 s, 30 s, 1 min... (delay_levels is RocketMQ's messageDelayLevel).
FAST_LEVELS = "1s 1s 1s 2s 2s 2s 3s 3s 3s 4s 4s 4s 5s 5s 5s 6s 6s 6s"
FAST_TIMINGS = f"""
delay_levels = "{FAST_LEVELS}"
transaction_check_timeout_ms = 1500
transaction_check_interval_ms = 1000
transaction_check_max = 3
"""

FAST = SMALL_STORE + FAST_TIMINGS + """
[remoting]
register_interval_s = 1.0
client_expiry_s = 30.0
[namesrv]
broker_expiry_s = 3.0
scan_interval_s = 0.5
"""

# Client options that make heartbeats, route refreshes, rebalancing and offset persistence quick.
FAST_CLIENT = {"heartbeat_s": 1.0, "route_refresh_s": 1.0}
FAST_PUSH = {**FAST_CLIENT, "rebalance_s": 1.0, "persist_s": 0.3}


def broker_config(tmp_path: Path, name: str, broker_name: str = "broker-a",
                  extra: str = "") -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'broker_name = "{broker_name}"\n' + extra + FAST)  # small segments
    return str(path)


@pytest.fixture
def native(start_broker: Callable[..., object], tmp_path: Path):  # type: ignore[no-untyped-def]
    """A broker with the NameServer and the remoting door, fast timers."""
    return start_broker("namesrv", "remoting",
                        extra_args=("--config", broker_config(tmp_path, "b1")))


class RawConnection:
    """A blocking socket speaking frames: for tests that misbehave on purpose."""

    def __init__(self, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.decoder = FrameDecoder()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_cmd(self, cmd: RemotingCommand) -> None:
        self.send(encode(cmd))

    def recv_cmd(self) -> RemotingCommand | None:
        """The next command, or None when the server closed the connection."""
        while True:
            cmd = self.decoder.next_command()
            if not isinstance(cmd, NeedData):
                return cmd
            data = self.sock.recv(65536)
            if not data:
                return None
            self.decoder.receive_data(data)

    def closed_by_peer(self) -> bool:
        try:
            return self.sock.recv(65536) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def frame(header: bytes, body: bytes = b"", stype: int = 0) -> bytes:
    return struct.pack(">ii", 4 + len(header) + len(body), (stype << 24) | len(header)) + header \
        + body
