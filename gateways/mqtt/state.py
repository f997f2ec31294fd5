"""The MQTT door's durable state behind one small interface: retained messages and sessions,
kept in the broker's state log.

Message bodies of the log live in the store; what MQTT adds on top is kept
here: the retained messages, and per persistent session its subscriptions,
the QoS 2 packet ids awaiting PUBREL and its in-flight outbound messages.
The rest of the door sees only ``MqttState``: ``load`` at start,
``*_changed`` to have the state saved soon, ``*_durable`` when the client
must not be answered before the state is on disk (a QoS 2 PUBREC or PUBCOMP, our
PUBREL, a SUBACK, a QoS 1/2 retained message), ``save_all`` at shutdown.

The state is three tables of the broker's state log (docs/storage.md, "The state
log"; docs/mqtt.md, "Sessions"), written through the facade
(``Broker.append_door_state``): records of the CommitLog, so they share its group
commit, its recovery and (next) its replication with the messages and the
sessions' committed positions, and they are in the same order as those:

- ``mqtt.session``: client id -> the session without its in-flight
  messages (expiry, disconnect time, subscriptions, QoS 2 ids, next packet id);
- ``mqtt.inflight``: (client id, packet id) -> one in-flight outbound message
  (its body included: a change holds at most a record, ``max_record_bytes``);
- ``mqtt.retained``: MQTT topic -> (payload, QoS, properties, publisher).

A save writes what changed since the last one (each session's and message's
encoding is compared with what was written), so its cost is the changes, not
the state. Saving is a synchronous append (it survives a crash of the process
when it returns); ``*_durable`` then awaits the broker's ``wait_durable`` (the
group commit under sync flush). Committed read positions are not here: they are
the core's (``Broker.commit_offset``), and the hub saves the sessions before it
commits positions past their in-flight messages (one log: that order holds
after a crash).

Round 1's files (``<state_dir>/sessions.msgpack``, ``retained.msgpack``) are
imported once into the tables and renamed ``*.imported``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import msgpack
import trio

from ...core.access import SYSTEM
from ...core.broker import Broker
from ...core.errors import FerryError
from ...core.store.files import read_file

log = logging.getLogger("ferrymq.mqtt.state")

NS_SESSION = "mqtt.session"
NS_INFLIGHT = "mqtt.inflight"
NS_RETAINED = "mqtt.retained"
_LEGACY = ("retained.msgpack", "sessions.msgpack")


@dataclass(frozen=True, slots=True)
class Loaded:
    """What ``MqttState.load`` found: retained messages as rows of ``[topic, payload,
    qos, properties, publisher]`` and persistent sessions by client id (the shape
    ``Session.load_state`` reads, in-flight messages included)."""

    retained: list[Any]
    sessions: dict[str, Any]


def _pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def _wire(value: Any) -> Any:
    """A value as the state log gives it back (arrays as tuples)."""
    return msgpack.unpackb(_pack(value), use_list=False, strict_map_key=False, raw=False)


class MqttState:
    """The door's durable state (see the module docstring). ``retained`` and
    ``sessions`` give the state as it is now: retained rows, and persistent
    sessions by client id (``Session.to_state``)."""

    def __init__(self, broker: Broker, state_dir: str, interval: float,
                 retained: Callable[[], Any], sessions: Callable[[], Any],
                 session: Callable[[str], Any] | None = None) -> None:
        self.broker = broker
        self.state_dir = state_dir
        self.interval = interval
        self._retained = retained
        self._sessions = sessions
        # One persistent session's state by client id (None: not persistent / gone).
        self._session = session or (lambda cid: self._sessions().get(cid))
        self._sessions_dirty = self._retained_dirty = False
        # What the tables hold, encoded: a save writes only what differs.
        self._written_session: dict[str, bytes] = {}
        self._written_inflight: dict[str, dict[int, bytes]] = {}  # client id -> pid -> row
        self._written_retained: dict[str, bytes] = {}
        self.saves = 0
        self.failures = 0

    # ------------------------------------------------------------ loading

    def load(self) -> Loaded:
        """The state saved last (empty when there is none); round 1's files are imported
        first. Runs on the event-loop thread (it reads the broker's tables)."""
        self._import_legacy()
        b = self.broker
        sessions: dict[str, dict[str, Any]] = {}
        for cid, meta in b.door_state(NS_SESSION, principal=SYSTEM):
            sessions[str(cid)] = dict(cast("dict[str, Any]", meta))
            self._written_session[str(cid)] = _pack(meta)
        inflight: dict[str, list[tuple[int, Any]]] = {}
        for key, row in b.door_state(NS_INFLIGHT, principal=SYSTEM):
            cid, pid = cast("tuple[str, int]", key)
            self._written_inflight.setdefault(cid, {})[pid] = _pack(row)
            if cid in sessions:
                inflight.setdefault(cid, []).append((pid, row))
        for cid, rows in inflight.items():
            # In the order they were sent: packet ids are allocated in turn from
            # next_pid, so sort by distance behind it.
            nxt = int(sessions[cid].get("next_pid", 1)) or 1
            rows.sort(key=lambda r: (r[0] - nxt) % 65536)
            sessions[cid]["inflight"] = [[pid, *row] for pid, row in rows]
        retained = []
        for topic, row in b.door_state(NS_RETAINED, principal=SYSTEM):
            self._written_retained[str(topic)] = _pack(row)
            retained.append([topic, *cast("tuple[Any, ...]", row)])
        return Loaded(retained, sessions)

    def _import_legacy(self) -> None:
        paths = [os.path.join(self.state_dir, n) for n in _LEGACY]
        present = [p for p in paths if os.path.exists(p)]
        if not present:
            return
        b = self.broker
        if not b.door_state(NS_SESSION, principal=SYSTEM) \
                and not b.door_state(NS_RETAINED, principal=SYSTEM):
            rows = _read_legacy(paths[0]) or []
            sess = _read_legacy(paths[1]) or {}
            changes: list[tuple[str, Any, Any]] = []
            for topic, payload, qos, props, publisher in rows:
                changes.append((NS_RETAINED, topic, [payload, qos, props, publisher]))
            for cid, st in sess.items():
                changes.extend(_session_changes(cid, st))
            for i in range(0, len(changes), 256):
                b.append_door_state(changes[i:i + 256], principal=SYSTEM)
            log.warning("imported the MQTT state files into the state log",
                        extra={"retained": len(rows), "sessions": len(sess)})
        for p in present:
            if os.path.exists(p):
                os.replace(p, p + ".imported")

    # ------------------------------------------------------------ saving

    def retained_changed(self) -> None:
        self._retained_dirty = True

    def sessions_changed(self) -> None:
        self._sessions_dirty = True

    def save_retained(self) -> None:
        """Append what changed in the retained messages (survives a crash of the process
        once this returns). Raises FerryError."""
        self._retained_dirty = False
        now: dict[str, bytes] = {}
        changes: list[tuple[str, Any, Any]] = []
        for topic, payload, qos, props, publisher in self._retained():
            row = [payload, qos, props, publisher]
            enc = now[topic] = _pack(row)
            if self._written_retained.get(topic) != enc:
                changes.append((NS_RETAINED, topic, row))
        changes.extend((NS_RETAINED, t, None) for t in self._written_retained if t not in now)
        self._write(changes)
        self._written_retained = now

    def save_session(self, cid: str) -> None:
        """``save_sessions`` for one session (what a flow step of its client needs),
        at the cost of that session only. Raises FerryError."""
        changes: list[tuple[str, Any, Any]] = []
        done = self._diff(cid, self._session(cid), changes)
        self._write(changes)
        done()

    def save_sessions(self) -> None:
        """Append what changed in the persistent sessions and their in-flight messages.
        Raises FerryError."""
        self._sessions_dirty = False
        now = self._sessions()
        changes: list[tuple[str, Any, Any]] = []
        done = [self._diff(cid, st, changes) for cid, st in now.items()]
        done += [self._diff(cid, None, changes) for cid in
                 set(self._written_session) | set(self._written_inflight) if cid not in now]
        self._write(changes)
        for d in done:
            d()

    def _diff(self, cid: str, st: dict[str, Any] | None, changes: list[tuple[str, Any, Any]]
              ) -> Callable[[], None]:
        """Add to ``changes`` what turns the tables' ``cid`` into ``st`` (None: gone);
        returns what records them as written once they are."""
        old = self._written_inflight.get(cid, {})
        flights: dict[int, bytes] = {}
        meta_enc: bytes | None = None
        if st is not None:
            meta, rows = _split(st)
            meta_enc = _pack(meta)
            if self._written_session.get(cid) != meta_enc:
                changes.append((NS_SESSION, cid, meta))
            for pid, row in rows:
                e = flights[pid] = _pack(row)
                if old.get(pid) != e:
                    changes.append((NS_INFLIGHT, (cid, pid), row))
        elif cid in self._written_session:
            changes.append((NS_SESSION, cid, None))
        changes.extend((NS_INFLIGHT, (cid, pid), None) for pid in old if pid not in flights)

        def done() -> None:
            if meta_enc is None:
                self._written_session.pop(cid, None)
            else:
                self._written_session[cid] = meta_enc
            if flights:
                self._written_inflight[cid] = flights
            else:
                self._written_inflight.pop(cid, None)
        return done

    def _write(self, changes: list[tuple[str, Any, Any]]) -> None:
        if not changes:
            return
        try:
            for i in range(0, len(changes), 256):
                self.broker.append_door_state(changes[i:i + 256], principal=SYSTEM)
        except FerryError:
            self.failures += 1
            self._sessions_dirty = self._retained_dirty = True  # try again next period
            log.exception("cannot save the MQTT state")
            raise
        self.saves += 1

    async def retained_durable(self) -> None:
        """Return once the retained messages as they are now are durable (the group
        commit under sync flush). Raises FerryError."""
        self.save_retained()
        await self.broker.wait_durable()

    async def sessions_durable(self, client_id: str | None = None) -> None:
        """Return once the sessions as they are now (only ``client_id``'s, if given) are
        durable. Raises FerryError."""
        if client_id is None:
            self.save_sessions()
        else:
            self.save_session(client_id)
        await self.broker.wait_durable()

    def save_all(self) -> None:
        """The final save at shutdown (on the event-loop thread, the broker still open)."""
        self.save_retained()
        self.save_sessions()

    async def run(self) -> None:
        """Save what changed, every ``interval`` seconds, until cancelled."""
        while True:
            await trio.sleep(self.interval)
            try:
                if self._retained_dirty:
                    self.save_retained()
                if self._sessions_dirty:
                    self.save_sessions()
            except FerryError:
                pass  # logged and counted; tried again next period


def _read_legacy(path: str) -> Any:
    """A round-1 state file's content; None when it is absent. A file that does not
    decode is set aside as ``*.damaged`` with an ERROR (what it held is lost: the
    sessions start over, the retained messages are gone), never a door that does
    not start."""
    raw = read_file(path)
    if not raw:
        return None
    try:
        doc = msgpack.unpackb(raw, raw=False, strict_map_key=False)
        ok = isinstance(doc, list if path.endswith("retained.msgpack") else dict)
    except (ValueError, TypeError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError):
        ok = False
    if ok:
        return doc
    log.error("cannot read the MQTT state file %s: set aside as %s.damaged; what it "
              "held is lost", path, os.path.basename(path))
    os.replace(path, path + ".damaged")
    return None


def _split(st: dict[str, Any]) -> tuple[dict[str, Any], list[tuple[int, Any]]]:
    """A session's state as (its record without in-flight messages, [(packet id, row)])."""
    meta = {k: v for k, v in st.items() if k != "inflight"}
    rows = [(int(r[0]), list(r[1:])) for r in st.get("inflight", ())]
    return _wire(meta), [(pid, _wire(row)) for pid, row in rows]


def _session_changes(cid: str, st: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    meta, rows = _split(st)
    return [(NS_SESSION, cid, meta), *((NS_INFLIGHT, (cid, pid), row) for pid, row in rows)]


__all__ = ["NS_INFLIGHT", "NS_RETAINED", "NS_SESSION", "Loaded", "MqttState"]
