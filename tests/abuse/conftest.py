"""The abuse suite's broker: every door, small limits so that timeouts fire in a second or
two, authentication on (Kafka SASL PLAIN, HTTP bearer tokens) so that the pre-authentication
limits apply, and a 16 MiB request-bytes budget. One per test module; each test leaves it
serving every door (``hostile.check()``)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from abuse_tools import TOKEN, Ports, every_door_serves, free_port, rss_kib

TIMEOUTS = """
handshake_timeout_s = 2.0
idle_timeout_s = 2.0
frame_timeout_s = 1.0
send_timeout_s = 1.5
max_connections_per_address = 400
"""

CONFIG = f"""
segment_size = 67108864
cq_entries_per_file = 20000
index_slots = 20000
index_entries = 80000
max_inflight_bytes = 16777216
[namesrv]
{TIMEOUTS}
[remoting]
register_interval_s = 30.0
{TIMEOUTS}
[kafka]
{TIMEOUTS}
sasl_plain_users = {{ alice = "secret" }}
[mqtt]
connect_timeout = 1.0
packet_timeout = 1.0
send_timeout = 1.5
ws_port = {{ws_port}}
sys_interval = 0.0
[http]
header_timeout_s = 1.0
body_timeout_s = 1.0
keepalive_timeout_s = 2.0
send_timeout_s = 1.5
auth_tokens = ["{TOKEN}"]
"""

# How much the broker's memory may grow over a module of abuse: the 16 MiB budget, socket
# and parser buffers of the connections the tests hold, allocator slack. The findings it
# guards against grew it by 64 MiB (Kafka frames before SASL) and more.
RSS_SLACK_KIB = 48 * 1024


@dataclass
class Hostile:
    """The broker under abuse: its ports, its process, its memory at the start."""

    ports: Ports
    broker: Any
    baseline_kib: int

    @property
    def pid(self) -> int:
        return int(self.broker.proc.pid)

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def check(self) -> None:
        """Alive, every door serving, memory bounded."""
        assert self.broker.alive, f"the broker died:\n{self.broker.log()}"
        every_door_serves(self.ports)
        grown = self.rss_kib() - self.baseline_kib
        assert grown < RSS_SLACK_KIB, f"broker memory grew by {grown} KiB"

    def log(self) -> str:
        return str(self.broker.log())


@pytest.fixture(scope="module")
def hostile(start_module_broker: Callable[..., Any], tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[Hostile]:
    ws_port = free_port()
    conf = tmp_path_factory.mktemp("abuse") / "abuse.toml"
    conf.write_text(CONFIG.replace("{ws_port}", str(ws_port)))
    b = start_module_broker("namesrv", "remoting", "kafka", "mqtt", "http",
                            extra_args=("--config", str(conf)), name="hostile")
    ports = Ports(b.port("namesrv"), b.port("remoting"), b.port("kafka"), b.port("mqtt"),
                  ws_port, b.port("http"))
    every_door_serves(ports)  # warm: first requests build caches and pools
    every_door_serves(ports)
    yield Hostile(ports, b, rss_kib(b.proc.pid))
