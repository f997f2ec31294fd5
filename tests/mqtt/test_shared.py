"""Shared subscriptions and sessions in the door, without a socket: a member is a
``Session`` whose connection is a recording fake (``sessions.Connection``)."""

from __future__ import annotations

import collections

from ferrymq.gateways.mqtt.auth import ClientAccess
from ferrymq.gateways.mqtt.delivery import Delivery, Outgoing, SubOpts
from ferrymq.gateways.mqtt.options import MqttOptions
from ferrymq.gateways.mqtt.sessions import Session
from ferrymq.gateways.mqtt.shared import SharedGroup
from ferrymq.protocols.mqtt.packets import Puback, Pubrec
from ferrymq.protocols.mqtt.session import Flow


class FakeConnection:
    """Records what a session sends; always writable."""

    def __init__(self) -> None:
        self.access = ClientAccess(None)
        self.deadline = 0.0
        self.sent: list[tuple[bytes, int, int, bool]] = []  # (payload, qos, pid, dup)
        self.pubrels: list[int] = []

    @property
    def writable(self) -> bool:
        return True

    def send_delivery(self, d, qos, retain, sub_ids, pid, dup=False) -> bool:
        self.sent.append((d.payload, qos, pid, dup))
        return True

    def send_pubrel(self, pid) -> None:
        self.pubrels.append(pid)

    def expire(self) -> None: ...

    def kick(self, reason) -> None: ...

    async def wait_closed(self) -> None: ...


def stored(payload: bytes, offset: int, qos: int = 1) -> Delivery:
    return Delivery("jobs", payload, qos, False, {"MQTT_QOS": str(qos)}, "p", ("jobs", 0, offset))


def setup(*names: str, online: tuple[str, ...] = ()):
    stats: collections.Counter[str] = collections.Counter()
    opts = MqttOptions(max_inflight=8, max_queued=3)
    sessions = {n: Session(n, opts, stats) for n in names}
    group = SharedGroup("g", "jobs", sessions, stats, opts.max_queued)
    for n in names:
        group.members[n] = SubOpts(1)
        sessions[n].shared[group.key] = SubOpts(1)
    for n in online:
        sessions[n].client = FakeConnection()
    return sessions, group, stats


def test_a_message_goes_to_one_online_member_round_robin() -> None:
    sessions, group, _ = setup("a", "b", online=("a", "b"))
    for i in range(4):
        group.dispatch(stored(b"%d" % i, i))
    assert [p for p, *_ in sessions["a"].client.sent] == [b"0", b"2"]
    assert [p for p, *_ in sessions["b"].client.sent] == [b"1", b"3"]


def test_with_nobody_online_a_stored_message_holds_the_groups_position() -> None:
    _, group, _ = setup("a")
    group.dispatch(stored(b"x", 7))
    group.dispatch(stored(b"y", 8))
    assert group.held == {("jobs", 0): 7}


def test_hand_over_gives_a_new_delivery_to_another_member() -> None:
    sessions, group, _ = setup("a", "b", online=("a", "b"))
    a = sessions["a"]
    a.enqueue(stored(b"m", 1), 1, False, (), group.key)
    (out,) = a.unacknowledged_shared()
    group.hand_over([out], "a")
    assert sessions["b"].client.sent == [(b"m", 1, 1, False)]  # its own packet id, DUP 0


def test_handed_over_messages_wait_for_the_next_member_and_are_bounded() -> None:
    sessions, group, stats = setup("a", "b")  # a left, b is an offline member
    outs = [Outgoing(stored(b"%d" % i, 10 + i), 1, False, (), group.key) for i in range(4)]
    group.hand_over(outs, "a")  # nobody online: they wait (max_queued 3: the oldest goes)
    assert [d.payload for d in group.orphans] == [b"1", b"2", b"3"] and stats["dropped"] == 1
    assert group.held_positions() == {("jobs", 0): 11}  # committed offsets stop there
    sessions["b"].client = FakeConnection()
    group.flush_orphans()
    assert [p for p, *_ in sessions["b"].client.sent] == [b"1", b"2", b"3"]
    assert not group.orphans


def test_only_unacknowledged_qos1_shared_messages_are_handed_over() -> None:
    sessions, group, _ = setup("a", online=("a",))
    a = sessions["a"]
    a.enqueue(stored(b"q1", 1), 1, False, (), group.key)
    a.enqueue(stored(b"q2", 2, qos=2), 2, False, (), group.key)
    a.enqueue(stored(b"own", 3), 1, False, ())  # a plain subscription of a
    a.enqueue(stored(b"acked", 4), 1, False, (), group.key)
    a.flows.receive_ack(Puback(4))
    assert [o.delivery.payload for o in a.unacknowledged_shared()] == [b"q1"]


def test_a_session_keeps_its_shared_in_flight_messages_across_a_restart() -> None:
    sessions, group, stats = setup("a", online=("a",))
    a = sessions["a"]
    a.enqueue(stored(b"q1", 1), 1, False, (), group.key)
    a.enqueue(stored(b"q2", 2, qos=2), 2, False, (5,))
    a.flows.receive_ack(Pubrec(2))
    again = Session("a", MqttOptions(), stats)
    again.load_state(a.to_state())
    flows = [(pid, state, o.delivery.payload, o.share, o.sub_ids)
             for pid, state, o in again.flows.outbound()]
    assert flows == [(1, Flow.AWAIT_PUBACK, b"q1", ("g", "jobs"), ()),
                     (2, Flow.AWAIT_PUBCOMP, b"q2", None, (5,))]
    assert [o.delivery.payload for o in again.unacknowledged_shared()] == [b"q1"]


def test_queued_shared_messages_are_taken_by_group() -> None:
    sessions, group, _ = setup("a", online=("a",))
    a = sessions["a"]
    a.flows.attach(64, 1, True)  # window 1: the rest queue
    a.enqueue(stored(b"0", 0), 1, False, (), group.key)
    a.enqueue(stored(b"1", 1), 1, False, (), ("other", "x"))
    a.enqueue(stored(b"2", 2), 1, False, (), group.key)
    a.enqueue(stored(b"3", 3), 1, False, ())
    taken = a.take_pending_shared(group.key)
    assert [o.delivery.payload for o in taken] == [b"2"]
    assert [o.delivery.payload for o in a.pending] == [b"1", b"3"]
