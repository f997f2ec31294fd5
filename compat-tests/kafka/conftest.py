"""Kafka compat-test fixtures: a real FerryMQ broker with its Kafka door, and a waiting helper."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest


@pytest.fixture
def kafka_broker(start_broker):
    """A broker process with the Kafka door on a free loopback port."""
    return start_broker("kafka")


@pytest.fixture
def bootstrap(kafka_broker) -> str:
    return kafka_broker.address("kafka")


def eventually(check: Callable[[], object], timeout: float = 40.0, interval: float = 0.1,
               what: str = "condition") -> object:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def wait_for():
    return eventually
