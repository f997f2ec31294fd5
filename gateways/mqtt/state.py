"""The MQTT door's durable state: retained messages and sessions, msgpack files replaced atomically.

Message bodies of the log live in the store; these files hold what MQTT adds
on top: retained messages, and per persistent session its subscriptions, the
QoS 2 packet ids awaiting PUBREL, and its in-flight outbound messages. A
``Saver`` writes one file: periodically when marked dirty, and at once for a
caller that must not answer the client before the state is durable (a QoS 2
PUBREC, a QoS 1/2 retained message); concurrent callers share one write.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

import msgpack
import trio

from ...core.store.files import atomic_write, read_file

log = logging.getLogger("ferrymq.mqtt.state")


def load(path: str) -> Any:
    """The decoded file, or None when it does not exist."""
    raw = read_file(path)
    if raw is None:
        return None
    return msgpack.unpackb(raw, raw=False, strict_map_key=False)


class Saver:
    """Coalescing writer of one state file (see the module docstring)."""

    def __init__(self, path: str, snapshot: Callable[[], Any], interval: float) -> None:
        self.path = path
        self.snapshot = snapshot
        self.interval = interval
        self.dirty = False
        self._lock = trio.Lock()
        self._requested = 0
        self._saved = 0
        self.saves = 0
        self.failures = 0

    def mark(self) -> None:
        self.dirty = True

    async def save_now(self) -> None:
        """Return once a save that began after this call has finished."""
        self._requested += 1
        want = self._requested
        async with self._lock:
            if self._saved >= want:
                return
            gen = self._requested
            self.dirty = False
            data = msgpack.packb(self.snapshot(), use_bin_type=True)
            try:
                await trio.to_thread.run_sync(atomic_write, self.path, data)
            except OSError:
                self.dirty = True
                self.failures += 1
                log.exception("cannot save %s", self.path)
                raise
            self._saved = gen
            self.saves += 1

    def save_sync(self) -> None:
        """The final save at shutdown (no event loop needed)."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        atomic_write(self.path, msgpack.packb(self.snapshot(), use_bin_type=True))

    async def run(self) -> None:
        while True:
            await trio.sleep(self.interval)
            if self.dirty:
                with contextlib.suppress(OSError):  # logged and counted; retried next period
                    await self.save_now()
