"""The HTTP door in-process over a real socket, for tests that call the Broker too.

A module of its own, not conftest.py, so tests can import it by a name no other
folder uses."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
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
