"""The QoS flows of a session (protocols/mqtt/session.py): packets in, actions out, no sockets.

Each test drives ``SessionState`` with packets decoded from the bytes a client
would send (``wire``), and checks the action, the flow's state, and which side
an error blames."""

from __future__ import annotations

import pytest
from ferrymq.protocols.errors import LocalProtocolError
from ferrymq.protocols.mqtt import codec
from ferrymq.protocols.mqtt.codec import MqttError
from ferrymq.protocols.mqtt.constants import Reason
from ferrymq.protocols.mqtt.packets import Packet, Puback, Pubcomp, Publish, Pubrec, Pubrel
from ferrymq.protocols.mqtt.session import INBOUND, OUTBOUND, Action, Event, Flow, SessionState


def wire(packet: Packet, version: int = 5) -> Packet:
    """``packet`` as the server decodes it from the bytes of a client."""
    data = codec.encode(packet, version)
    frame = codec.split_frame(data)
    assert frame is not None
    first, start, end = frame
    return codec.decode(first, data[start:end], version)


def session(receive_maximum: int = 64, window: int = 32, strict: bool = True
            ) -> SessionState[str]:
    s: SessionState[str] = SessionState()
    s.attach(receive_maximum, window, strict)
    return s


# --------------------------------------------------------------- the tables

def test_every_state_is_reachable_and_every_action_is_used() -> None:
    states = {nxt for nxt, _ in (*INBOUND.values(), *OUTBOUND.values())}
    assert states == set(Flow)
    actions = {a for _, a in (*INBOUND.values(), *OUTBOUND.values())}
    assert actions == set(Action)
    events = {e for _, e in (*INBOUND, *OUTBOUND)}
    assert events == set(Event)


# --------------------------------------------------------------- inbound (client publishes)

def test_qos1_publish_is_stored_then_acknowledged() -> None:
    s = session()
    assert s.receive_publish(wire(Publish("t", b"x", 1, packet_id=7))) is Action.STORE
    assert s.inbound(7) is Flow.ACK_DUE
    s.send_ack(Puback(7))
    assert s.inbound(7) is Flow.IDLE and s.inbound_pending == 0


def test_qos2_publish_full_flow_and_a_resend_is_not_stored_twice() -> None:
    s = session()
    assert s.receive_publish(wire(Publish("t", b"x", 2, packet_id=9))) is Action.STORE
    assert s.inbound(9) is Flow.REC_DUE
    s.send_ack(Pubrec(9))
    assert s.inbound(9) is Flow.AWAIT_PUBREL and s.awaiting_pubrel() == [9]
    # Our PUBREC was lost: the client resends with DUP; it is acknowledged again only.
    again = wire(Publish("t", b"x", 2, dup=True, packet_id=9))
    assert s.receive_publish(again) is Action.SEND_PUBREC
    assert s.receive_pubrel(wire(Pubrel(9))) is Action.SEND_PUBCOMP
    assert s.inbound(9) is Flow.IDLE and s.awaiting_pubrel() == []


def test_a_failed_pubrec_ends_the_inbound_flow() -> None:
    s = session()
    s.receive_publish(wire(Publish("t", b"x", 2, packet_id=3)))
    s.send_ack(Pubrec(3, Reason.NOT_AUTHORIZED))
    assert s.inbound(3) is Flow.IDLE
    assert s.receive_pubrel(wire(Pubrel(3))) is Action.SEND_PUBCOMP_NOT_FOUND


def test_a_pubrel_for_an_unknown_id_is_answered_not_found() -> None:
    assert session().receive_pubrel(wire(Pubrel(42))) is Action.SEND_PUBCOMP_NOT_FOUND


@pytest.mark.parametrize("first, second", [
    (Publish("t", b"", 1, packet_id=5), Publish("t", b"", 1, dup=True, packet_id=5)),
    (Publish("t", b"", 1, packet_id=5), Publish("t", b"", 2, packet_id=5)),
    (Publish("t", b"", 2, packet_id=5), Publish("t", b"", 1, packet_id=5)),
    (Publish("t", b"", 1, packet_id=5), Pubrel(5)),
    (Publish("t", b"", 2, packet_id=5), Pubrel(5)),  # PUBREL before our PUBREC
])
def test_a_client_that_reuses_an_id_mid_flow_broke_the_protocol(first, second) -> None:
    s = session()
    s.receive_publish(wire(first))
    with pytest.raises(MqttError) as err:
        if isinstance(second, Pubrel):
            s.receive_pubrel(wire(second))
        else:
            s.receive_publish(wire(second))
    assert err.value.reason == Reason.PROTOCOL_ERROR
    assert err.value.side == "remote"
    assert "client broke the QoS flow" in str(err.value)


def test_acknowledging_what_nobody_published_is_our_bug() -> None:
    s = session()
    with pytest.raises(LocalProtocolError) as err:
        s.send_ack(Puback(1))
    assert err.value.side == "local"
    s.receive_publish(wire(Publish("t", b"", 1, packet_id=2)))
    with pytest.raises(LocalProtocolError):
        s.send_ack(Pubrec(2))  # PUBREC for a QoS 1 message


def test_receive_maximum_exceeded_is_disconnect_0x93() -> None:
    s = session(receive_maximum=3)
    for pid in (1, 2, 3):
        s.receive_publish(wire(Publish("t", b"", 2, packet_id=pid)))
        s.send_ack(Pubrec(pid))
    assert s.inbound_pending == 3
    # A resend is no new message.
    assert s.receive_publish(wire(Publish("t", b"", 2, dup=True, packet_id=2))) \
        is Action.SEND_PUBREC
    with pytest.raises(MqttError) as err:
        s.receive_publish(wire(Publish("t", b"", 1, packet_id=4)))
    assert err.value.reason == Reason.RECEIVE_MAXIMUM_EXCEEDED


def test_acknowledging_frees_receive_maximum_qos2_only_at_pubcomp() -> None:
    s = session(receive_maximum=1)
    s.receive_publish(wire(Publish("t", b"", 1, packet_id=1)))
    s.send_ack(Puback(1))
    s.receive_publish(wire(Publish("t", b"", 2, packet_id=2)))
    s.send_ack(Pubrec(2))
    with pytest.raises(MqttError):
        s.receive_publish(wire(Publish("t", b"", 2, packet_id=3)))  # counts until PUBCOMP
    s = session(receive_maximum=1)
    s.receive_publish(wire(Publish("t", b"", 2, packet_id=2)))
    s.send_ack(Pubrec(2))
    assert s.receive_pubrel(wire(Pubrel(2))) is Action.SEND_PUBCOMP
    assert s.receive_publish(wire(Publish("t", b"", 2, packet_id=3))) is Action.STORE


def test_a_3_1_1_client_never_agreed_to_a_receive_maximum() -> None:
    s = session(receive_maximum=2, strict=False)
    for pid in range(1, 20):
        s.receive_publish(wire(Publish("t", b"", 1, packet_id=pid), 4))
    assert s.inbound_pending == 19


def test_a_lost_connection_forgets_half_done_steps_only() -> None:
    s = session()
    s.receive_publish(wire(Publish("t", b"", 1, packet_id=1)))  # not yet acknowledged
    s.receive_publish(wire(Publish("t", b"", 2, packet_id=2)))  # not yet stored
    s.receive_publish(wire(Publish("t", b"", 2, packet_id=3)))
    s.send_ack(Pubrec(3))  # stored and acknowledged: the client will release it
    s.connection_lost()
    assert (s.inbound(1), s.inbound(2), s.inbound(3)) == (Flow.IDLE, Flow.IDLE,
                                                          Flow.AWAIT_PUBREL)
    # The client resends 2 (it never got PUBREC): stored now, as a new message.
    assert s.receive_publish(wire(Publish("t", b"", 2, dup=True, packet_id=2))) is Action.STORE
    assert s.receive_publish(wire(Publish("t", b"", 2, dup=True, packet_id=3))) \
        is Action.SEND_PUBREC


# --------------------------------------------------------------- outbound (we publish)

def test_outbound_qos1_and_qos2_flows() -> None:
    s = session()
    p1 = s.send_publish(1, "one")
    p2 = s.send_publish(2, "two")
    assert (p1, p2) == (1, 2) and s.inflight == 2
    assert s.receive_ack(wire(Puback(p1))) == (Action.FREE, "one")
    assert s.receive_ack(wire(Pubrec(p2))) == (Action.SEND_PUBREL, "two")
    assert [(pid, st) for pid, st, _ in s.outbound()] == [(p2, Flow.AWAIT_PUBCOMP)]
    assert s.receive_ack(wire(Pubrec(p2))) == (Action.SEND_PUBREL, "two")  # repeated
    assert s.receive_ack(wire(Pubcomp(p2))) == (Action.FREE, "two")
    assert s.inflight == 0


def test_a_failed_pubrec_frees_the_outbound_flow() -> None:
    s = session()
    pid = s.send_publish(2, "m")
    assert s.receive_ack(wire(Pubrec(pid, Reason.UNSPECIFIED_ERROR))) == (Action.FREE, "m")


def test_unknown_acknowledgements_are_tolerated() -> None:
    s = session()
    assert s.receive_ack(wire(Puback(9))) == (Action.NONE, None)
    assert s.receive_ack(wire(Pubcomp(9))) == (Action.NONE, None)
    assert s.receive_ack(wire(Pubrec(9))) == (Action.SEND_PUBREL_NOT_FOUND, None)


@pytest.mark.parametrize("qos, ack", [
    (1, Pubrec(1)), (1, Pubcomp(1)), (2, Puback(1)), (2, Pubcomp(1)),
])
def test_an_acknowledgement_of_the_wrong_kind_is_the_clients_error(qos, ack) -> None:
    s = session()
    s.send_publish(qos, "m")
    with pytest.raises(MqttError) as err:
        s.receive_ack(wire(ack))
    assert err.value.reason == Reason.PROTOCOL_ERROR


def test_the_window_is_the_clients_receive_maximum() -> None:
    s = session(window=2)
    s.send_publish(1, "a")
    s.send_publish(1, "b")
    assert not s.has_room
    with pytest.raises(LocalProtocolError):
        s.send_publish(1, "c")
    s.receive_ack(wire(Puback(1)))
    assert s.has_room


def test_packet_ids_skip_those_in_use_and_wrap() -> None:
    s: SessionState[str] = SessionState()
    s.next_pid = 65535
    assert s.send_publish(1, "a") == 65535
    assert s.send_publish(1, "b") == 1  # 0 is never an id (2.2.1)
    s.next_pid = 65535
    assert s.send_publish(1, "c") == 2  # 65535 and 1 are taken


def test_resend_after_reconnect_in_the_original_order() -> None:
    s = session()
    a = s.send_publish(1, "a")
    b = s.send_publish(2, "b")
    c = s.send_publish(2, "c")
    s.receive_ack(wire(Pubrec(c)))
    s.connection_lost()
    assert s.resend() == [(Action.SEND_PUBLISH_DUP, a, "a"), (Action.SEND_PUBLISH_DUP, b, "b"),
                          (Action.SEND_PUBREL, c, "c")]


def test_a_message_that_cannot_be_sent_is_dropped_as_if_delivered() -> None:
    s = session()
    pid = s.send_publish(1, "big")
    assert s.discard(pid) == "big" and s.inflight == 0
    pid = s.send_publish(2, "m")
    s.receive_ack(wire(Pubrec(pid)))
    with pytest.raises(LocalProtocolError):
        s.discard(pid)  # released: the client has it, PUBREL can always go


def test_restore_a_persisted_session() -> None:
    s: SessionState[str] = SessionState()
    s.restore(7, [4, 5], [(1, Flow.AWAIT_PUBACK, "x"), (2, Flow.AWAIT_PUBCOMP, "y")])
    assert s.awaiting_pubrel() == [4, 5] and s.inbound_pending == 2
    assert s.send_publish(1, "z") == 7
    assert [a for a, _, _ in s.resend()] == [Action.SEND_PUBLISH_DUP, Action.SEND_PUBREL,
                                             Action.SEND_PUBLISH_DUP]
    with pytest.raises(ValueError):
        s.restore(1, [], [(3, Flow.ACK_DUE, "bad")])
