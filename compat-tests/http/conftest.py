"""Fixtures for the HTTP door's compat tests."""

from __future__ import annotations

from typing import Any

import pytest

SMALL_SEGMENTS = ("--segment-size", str(32 << 20))
"""CommitLog segments are preallocated (posix_fallocate): tests use 32 MiB, not 1 GiB."""


@pytest.fixture
def start_http_broker(start_broker):
    """``start_broker`` with small CommitLog segments."""
    def start(*doors: str, extra_args: tuple[str, ...] = (), **kw: Any):
        return start_broker(*doors, extra_args=(*SMALL_SEGMENTS, *extra_args), **kw)
    return start
