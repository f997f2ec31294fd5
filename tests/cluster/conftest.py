"""Fixtures for the cluster tests: a real etcd per module (each test uses a cluster name of
its own under it), and broker groups stopped after each test."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent))  # tests/history.py
from harness import Etcd, Group


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Etcd]:
    e = Etcd(tmp_path_factory.mktemp("etcd")).start()
    yield e
    e.stop()


@pytest.fixture
def make_group(etcd: Etcd, tmp_path: Path) -> Iterator[Callable[..., Group]]:
    groups: list[Group] = []

    def make(name: str = "g1", etcd_: Etcd | None = None, **settings: Any) -> Group:
        g = Group(etcd_ or etcd, tmp_path, name, settings)
        groups.append(g)
        return g

    yield make
    for g in groups:
        g.stop()
