"""Fixtures for the HTTP door's tests: the door in-process over a real socket (so a
test can call the Broker directly too), and a real broker process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from ferrymq.core.broker import Broker, BrokerConfig
from ferrymq.gateways import http as http_door
from ferrymq.gateways.config import ServerConfig
from ferrymq.gateways.server import DoorContext

from waiting import wait_until_async


@dataclass
class Door:
    broker: Broker
    client: httpx.AsyncClient
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def metric(self, sample: str) -> float | None:
        """The value of one sample of /metrics (``'ferrymq_streams{protocol="http"}'``)."""
        for line in (await self.client.get("/metrics")).text.splitlines():
            name, _, value = line.rpartition(" ")
            if name == sample:
                return float(value)
        return None

    async def wait_for_metric(self, sample: str, value: float, what: str = "") -> None:
        """Until the door's own gauge says so: a long poll or stream is waiting."""
        await wait_until_async(lambda: self._metric_is(sample, value), timeout=10,
                               what=what or f"{sample} == {value}")

    async def _metric_is(self, sample: str, value: float) -> bool:
        return await self.metric(sample) == value


def broker_config(path: Path, **kw: Any) -> BrokerConfig:
    return BrokerConfig(data_dir=str(path), segment_size=16 << 20, cq_entries_per_file=1000,
                        index_slots=1000, index_entries=4000, **kw)


async def open_door(nursery: trio.Nursery, broker: Broker, options: dict[str, Any] | None = None
                    ) -> int:
    ctx = DoorContext(broker, "127.0.0.1", 0, options or {}, ServerConfig())
    return await nursery.start(http_door.serve, ctx)


@pytest.fixture
async def door(tmp_path: Path) -> AsyncIterator[Door]:
    """The HTTP door in this process, on a free port, with an httpx client."""
    async with Broker.open(broker_config(tmp_path / "data")) as broker, \
            trio.open_nursery() as nursery:
        port = await open_door(nursery, broker)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            yield Door(broker, client, port)
        nursery.cancel_scope.cancel()


SMALL_SEGMENTS = ("--segment-size", str(32 << 20))
"""CommitLog segments are preallocated (posix_fallocate): tests use 32 MiB, not 1 GiB."""


@pytest.fixture
def start_http_broker(start_broker):
    """``start_broker`` with small CommitLog segments."""
    def start(*doors: str, extra_args: tuple[str, ...] = (), **kw: Any):
        return start_broker(*doors, extra_args=(*SMALL_SEGMENTS, *extra_args), **kw)
    return start
