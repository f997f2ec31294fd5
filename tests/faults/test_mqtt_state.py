"""The MQTT door's durable state lives in the state log (docs/mqtt.md, "Durable state"):
sessions, their in-flight messages and retained messages are tables of the CommitLog's
state records, so a SIGKILL keeps what the protocol acknowledged, and round 1's msgpack
files are imported once.

The brokers here save periodically only once an hour (``save_interval``): whatever
survives a kill survived because the door made it durable before answering.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
from ferrymq.protocols.mqtt.packets import Puback, Pubcomp, Publish, Pubrec, Pubrel

sys.path.insert(0, str(Path(__file__).parent.parent / "mqtt"))
from rawclient import RawClient

CONFIG = "[mqtt]\nsave_interval = 3600.0\nsys_interval = 0\n"


@pytest.fixture
def mqtt(start_broker: Callable[..., Any], tmp_path: Path) -> Callable[..., Any]:
    def start(name: str = "b", data_dir: Path | None = None) -> Any:
        conf = tmp_path / "mqtt.toml"
        conf.write_text(CONFIG)
        return start_broker("mqtt", extra_args=("--config", str(conf), "--flush", "sync"),
                            name=name, data_dir=data_dir)
    return start


def connect(b: Any, client_id: str, clean: bool = False) -> tuple[RawClient, bool]:
    c = RawClient(b.port("mqtt"), 4)
    ack = c.connect(client_id, clean=clean)
    assert ack.reason == 0, ack
    return c, ack.session_present


def test_a_released_qos2_packet_id_is_free_after_a_kill(mqtt: Callable[..., Any]) -> None:
    """PUBCOMP frees the packet id: after a crash the client's next PUBLISH with that id
    is a new message, not a resend to drop (before: the freed id was saved only by the
    periodic save, and the second message was lost)."""
    b = mqtt()
    sub, _ = connect(b, "sub")
    sub.subscribe("q2", qos=1)
    sub.close()
    pub, _ = connect(b, "pub")
    pub.send(Publish("q2", b"first", 2, packet_id=5))
    assert pub.recv() == Pubrec(5)
    pub.send(Pubrel(5))
    assert pub.recv() == Pubcomp(5)
    b.kill()
    b.start()
    pub, present = connect(b, "pub")
    assert present
    pub.send(Publish("q2", b"second", 2, packet_id=5))
    assert pub.recv() == Pubrec(5)
    pub.send(Pubrel(5))
    assert pub.recv() == Pubcomp(5)
    sub, present = connect(b, "sub")
    assert present
    assert sorted(m.payload for m in sub.messages(2)) == [b"first", b"second"]
    sub.nothing(0.3)


def test_after_our_pubrel_a_kill_resends_the_pubrel_not_the_message(
        mqtt: Callable[..., Any]) -> None:
    """Once we sent PUBREL the message is never sent again as a PUBLISH (a duplicate at
    QoS 2): the session's flow and the positions past the message are durable first."""
    b = mqtt()
    sub, _ = connect(b, "sub")
    sub.subscribe("x", qos=2)
    pub, _ = connect(b, "pub", clean=True)
    assert pub.publish("x", b"once", 2, pid=1) == Pubcomp(1)
    m = sub.recv()
    assert isinstance(m, Publish) and m.payload == b"once" and m.qos == 2
    sub.send(Pubrec(m.packet_id))
    assert sub.recv() == Pubrel(m.packet_id)
    b.kill()
    b.start()
    sub, present = connect(b, "sub")
    assert present
    assert sub.recv() == Pubrel(m.packet_id)
    sub.send(Pubcomp(m.packet_id))
    sub.nothing(0.5)


def test_subscriptions_retained_and_qos2_ids_survive_a_kill(mqtt: Callable[..., Any]) -> None:
    b = mqtt()
    sub, _ = connect(b, "sub")
    sub.subscribe("a/#", qos=1)
    sub.close()
    pub, _ = connect(b, "pub")
    assert isinstance(pub.publish("a/state", b"kept", 1, pid=1, retain=True), Puback)
    pub.send(Publish("a/q2", b"pending", 2, packet_id=9))
    assert pub.recv() == Pubrec(9)
    b.kill()
    b.start()
    pub, present = connect(b, "pub")
    assert present
    pub.send(Publish("a/q2", b"pending", 2, dup=True, packet_id=9))  # the client resends
    assert pub.recv() == Pubrec(9)
    pub.send(Pubrel(9))
    assert pub.recv() == Pubcomp(9)
    sub, present = connect(b, "sub")
    assert present
    assert sorted(m.payload for m in sub.messages(2)) == [b"kept", b"pending"]
    sub.nothing(0.3)  # exactly once: the resent PUBLISH was not stored again
    late, _ = connect(b, "late", clean=True)
    late.subscribe("a/state")
    assert [(m.payload, m.retain) for m in late.messages(1)] == [(b"kept", True)]


def test_round_one_state_files_are_imported_once(mqtt: Callable[..., Any], tmp_path: Path
                                                 ) -> None:
    """A data directory of round 1 (sessions.msgpack, retained.msgpack) starts with its
    sessions and retained messages; the files are renamed *.imported and the state
    then lives in the log (a later change survives a kill without them)."""
    data = tmp_path / "old"
    (data / "mqtt").mkdir(parents=True)
    (data / "mqtt" / "retained.msgpack").write_bytes(msgpack.packb(
        [["old/r", b"retained before", 1, {}, "someone"]], use_bin_type=True))
    (data / "mqtt" / "sessions.msgpack").write_bytes(msgpack.packb({"dev": {
        "expiry": 0xFFFFFFFF, "disconnected_at": 1, "subs": [["old/#", 1, False, False, 0, None]],
        "shared": [], "qos2": [33], "next_pid": 1, "inflight": []}}, use_bin_type=True))
    b = mqtt(data_dir=data)
    assert sorted(p.name for p in (data / "mqtt").iterdir()) == [
        "retained.msgpack.imported", "sessions.msgpack.imported"]
    late, _ = connect(b, "late", clean=True)
    late.subscribe("old/r")
    assert [(m.payload, m.retain) for m in late.messages(1)] == [(b"retained before", True)]
    dev, present = connect(b, "dev")
    assert present
    dev.send(Publish("old/x", b"resent", 2, dup=True, packet_id=33))  # id 33 was pending
    assert dev.recv() == Pubrec(33)
    dev.send(Pubrel(33))
    assert dev.recv() == Pubcomp(33)
    dev.subscribe("new/#", qos=1)
    b.kill()
    b.start()
    assert sorted(p.name for p in (data / "mqtt").iterdir()) == [
        "retained.msgpack.imported", "sessions.msgpack.imported"]
    dev, present = connect(b, "dev")
    assert present
    pub, _ = connect(b, "pub", clean=True)
    assert isinstance(pub.publish("new/a", b"n", 1, pid=1), Puback)
    assert isinstance(pub.publish("old/a", b"o", 1, pid=2), Puback)
    assert sorted(m.payload for m in dev.messages(2)) == [b"n", b"o"]
