"""The MQTT door's durable state behind one small interface: retained messages and sessions.

Message bodies of the log live in the store; what MQTT adds on top is kept
here: the retained messages, and per persistent session its subscriptions,
the QoS 2 packet ids awaiting PUBREL and its in-flight outbound messages.
The rest of the door sees only ``MqttState``: ``load`` at start,
``*_changed`` to have a snapshot saved soon, ``*_durable`` when the client
must not be answered before the state is on disk (a QoS 2 PUBREC, a SUBACK,
a QoS 1/2 retained message), ``save_all`` at shutdown.

Today the mechanism is two msgpack files replaced atomically (``Saver``:
periodically when marked dirty, and at once for a caller that waits;
concurrent callers share one write). Moving the state onto the broker's
state log means replacing this module, not its callers. Committed read
positions are not here: they are the core's (``Broker.commit_offset``).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
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


@dataclass(frozen=True, slots=True)
class Loaded:
    """What ``MqttState.load`` found: retained messages as rows of ``[topic, payload,
    qos, properties, publisher]`` and persistent sessions by client id."""

    retained: list[Any]
    sessions: dict[str, Any]


class MqttState:
    """The door's durable state (see the module docstring). ``retained`` and
    ``sessions`` are the snapshot functions of what is saved."""

    def __init__(self, state_dir: str, interval: float, retained: Callable[[], Any],
                 sessions: Callable[[], Any]) -> None:
        self.retained = Saver(f"{state_dir}/retained.msgpack", retained, interval)
        self.sessions = Saver(f"{state_dir}/sessions.msgpack", sessions, interval)

    def load(self) -> Loaded:
        """The state saved last (empty when there is none). Blocking: run it in a thread."""
        return Loaded(load(self.retained.path) or [], load(self.sessions.path) or {})

    def retained_changed(self) -> None:
        self.retained.mark()

    def sessions_changed(self) -> None:
        self.sessions.mark()

    async def retained_durable(self) -> None:
        """Return once the retained messages as they are now are on disk. Raises OSError."""
        await self.retained.save_now()

    async def sessions_durable(self) -> None:
        """Return once the sessions as they are now are on disk. Raises OSError."""
        await self.sessions.save_now()

    def save_all(self) -> None:
        """The final save at shutdown (blocking; no event loop needed)."""
        self.retained.save_sync()
        self.sessions.save_sync()

    async def run(self) -> None:
        """Save what changed, every ``interval`` seconds, until cancelled."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.retained.run)
            nursery.start_soon(self.sessions.run)
