"""Fixtures for the HTTP door's tests: the door in-process over a real socket (so a
test can call the Broker directly too), and a real broker process."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from ferrymq.core.broker import Broker
from http_doors import Door, broker_config, open_door

__all__ = ["Door", "broker_config", "open_door"]


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
