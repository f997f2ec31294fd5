"""The MQTT door against a real broker process, driven by a raw client: QoS flows, retained
messages, wills, sessions, shared subscriptions, limits and bad input."""

from __future__ import annotations

import socket
import time

import pytest
from ferrymq.protocols.mqtt.constants import Prop, Reason
from ferrymq.protocols.mqtt.packets import (
    Connack,
    Disconnect,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Will,
)
from rawclient import Closed, RawClient

from waiting import wait_until


@pytest.fixture
def broker(mqtt_broker):
    return mqtt_broker()


def client(b, version=4, **connect) -> RawClient:
    c = RawClient(b.port("mqtt"), version)
    ack = c.connect(**connect)
    assert ack.reason == 0, ack
    return c


@pytest.mark.parametrize("version", [3, 4, 5])
def test_qos_0_1_2_round_trip_with_delivery_qos_the_minimum(broker, version) -> None:
    sub = client(broker, version, client_id="sub")
    assert sub.subscribe("sensors/#", qos=1).reasons == (1,)
    pub = client(broker, version, client_id="pub")
    assert pub.publish("sensors/a", b"zero", 0) is None
    assert isinstance(pub.publish("sensors/a", b"one", 1), Puback)
    assert isinstance(pub.publish("sensors/a", b"two", 2, pid=9), Pubcomp)
    got = sub.messages(3)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("sensors/a", b"zero", 0), ("sensors/a", b"one", 1), ("sensors/a", b"two", 1)]


def test_qos_2_to_a_qos_2_subscriber_completes_the_four_way_flow(broker) -> None:
    sub = client(broker, 5, client_id="s")
    sub.subscribe("t", qos=2)
    pub = client(broker, 5, client_id="p")
    pub.publish("t", b"exactly once", 2)
    p = sub.recv()
    assert isinstance(p, Publish) and p.qos == 2
    sub.send(Pubrec(p.packet_id))
    assert sub.recv() == Pubrel(p.packet_id)
    sub.send(Pubcomp(p.packet_id))
    sub.nothing()


def test_a_resent_qos_2_publish_is_stored_once(broker) -> None:
    sub = client(broker, 4, client_id="s")
    sub.subscribe("t", qos=2)
    pub = client(broker, 4, client_id="p")
    pub.send(Publish("t", b"once", 2, packet_id=5))
    assert pub.recv() == Pubrec(5)
    pub.send(Publish("t", b"once", 2, dup=True, packet_id=5))  # PUBREC was "lost"
    assert pub.recv() == Pubrec(5)
    pub.send(Pubrel(5))
    assert pub.recv() == Pubcomp(5)
    assert [m.payload for m in sub.messages(1)] == [b"once"]
    sub.nothing()


def test_overlapping_subscriptions_deliver_one_copy_at_the_highest_qos(broker) -> None:
    sub = client(broker, 5, client_id="s")
    sub.subscribe("a/+", qos=0, properties={Prop.SUBSCRIPTION_IDENTIFIER: (1,)})
    sub.subscribe("a/#", qos=1, pid=2, properties={Prop.SUBSCRIPTION_IDENTIFIER: (2,)})
    pub = client(broker, 4, client_id="p")
    pub.publish("a/b", b"x", 1)
    (m,) = sub.messages(1)
    assert m.qos == 1
    assert sorted(m.properties[Prop.SUBSCRIPTION_IDENTIFIER]) == [1, 2]
    sub.nothing()


def test_retained_messages_persist_and_an_empty_payload_deletes(mqtt_broker) -> None:
    b = mqtt_broker()
    pub = client(b, 4, client_id="p")
    pub.publish("home/temp", b"21", 1, retain=True)
    pub.publish("home/hum", b"40", 1, retain=True)
    pub.publish("home/gone", b"x", 1, retain=True)
    pub.publish("home/gone", b"", 1, retain=True)
    pub.close()
    b.restart()
    sub = client(b, 4, client_id="s")
    sub.subscribe("home/+", qos=1)
    got = sorted((m.topic, m.payload, m.retain) for m in sub.messages(2))
    assert got == [("home/hum", b"40", True), ("home/temp", b"21", True)]
    sub.nothing()


def test_retain_handling_and_retain_as_published(broker) -> None:
    pub = client(broker, 5, client_id="p")
    pub.publish("r/t", b"kept", 1, retain=True)
    sub = client(broker, 5, client_id="s")
    sub.subscribe("r/#", qos=1, retain_handling=2)  # never send retained
    sub.nothing()
    sub.subscribe("r/#", qos=1, pid=2, retain_handling=1)  # only if new: it is not
    sub.nothing()
    sub.subscribe("r/+", qos=1, pid=3, retain_handling=1, retain_as_published=True)
    (m,) = sub.messages(1)
    assert m.retain and m.payload == b"kept"
    pub.publish("r/t", b"live", 1, retain=True)
    live = sub.messages(1)[0]
    assert live.payload == b"live" and live.retain  # r/+ keeps the flag (as published)


def test_will_is_published_on_abnormal_disconnect_not_on_disconnect(broker) -> None:
    watcher = client(broker, 4, client_id="w")
    watcher.subscribe("wills/#", qos=1)
    c1 = client(broker, 4, client_id="c1", will=Will("wills/c1", b"c1 died", 1))
    c1.sock.shutdown(socket.SHUT_RDWR)
    c1.close()
    assert [m.payload for m in watcher.messages(1)] == [b"c1 died"]
    c2 = client(broker, 4, client_id="c2", will=Will("wills/c2", b"c2 died", 1))
    c2.disconnect()
    watcher.nothing(0.5)


def test_will_on_keep_alive_expiry_after_one_and_a_half_times(broker) -> None:
    watcher = client(broker, 4, client_id="w")
    watcher.subscribe("wills/#")
    t0 = time.monotonic()
    c = client(broker, 5, client_id="quiet", keep_alive=1, will=Will("wills/quiet", b"timeout"))
    assert [m.payload for m in watcher.messages(1, timeout=5)] == [b"timeout"]
    assert 1.4 <= time.monotonic() - t0 < 4
    assert c.recv_until_closed() == [Disconnect(Reason.KEEP_ALIVE_TIMEOUT)]


def test_will_delay_is_cancelled_by_a_reconnect_and_honoured_otherwise(broker) -> None:
    watcher = client(broker, 4, client_id="w")
    watcher.subscribe("wills/#")
    props = {Prop.SESSION_EXPIRY_INTERVAL: 60}
    will = Will("wills/d", b"delayed", 0, False, {Prop.WILL_DELAY_INTERVAL: 1})
    c = client(broker, 5, client_id="d", clean=False, properties=props, will=will)
    c.close()
    c = client(broker, 5, client_id="d", clean=False, properties=props)  # back in time
    watcher.nothing(1.5)
    c = client(broker, 5, client_id="d2", properties=props, will=will)
    c.close()
    t0 = time.monotonic()
    assert [m.payload for m in watcher.messages(1, timeout=4)] == [b"delayed"]
    assert time.monotonic() - t0 >= 0.8


def test_persistent_session_gets_what_it_missed_across_reconnect_and_restart(mqtt_broker) -> None:
    b = mqtt_broker()
    s = client(b, 4, client_id="dev", clean=False)
    s.subscribe("fleet/#", qos=1)
    s.close()
    pub = client(b, 5, client_id="p")
    for i in range(3):
        pub.publish(f"fleet/{i}", b"m%d" % i, 1)
    s = RawClient(b.port("mqtt"), 4)
    assert s.connect("dev", clean=False).session_present
    assert sorted(m.payload for m in s.messages(3)) == [b"m0", b"m1", b"m2"]
    s.close()
    pub.publish("fleet/x", b"before restart", 1)
    pub.close()
    b.restart()
    pub = client(b, 4, client_id="p")
    pub.publish("fleet/y", b"after restart", 1)
    s = RawClient(b.port("mqtt"), 4)
    assert s.connect("dev", clean=False).session_present
    assert sorted(m.payload for m in s.messages(2)) == [b"after restart", b"before restart"]
    s.nothing()


def test_unacknowledged_messages_are_resent_with_dup_after_reconnect(broker) -> None:
    s = client(broker, 5, client_id="slow", clean=False,
               properties={Prop.SESSION_EXPIRY_INTERVAL: 300})
    s.subscribe("q", qos=1)
    pub = client(broker, 4, client_id="p")
    pub.publish("q", b"unacked", 1)
    (m,) = s.messages(1, ack=False)
    s.close()
    s = RawClient(broker.port("mqtt"), 5)
    ack = s.connect("slow", clean=False, properties={Prop.SESSION_EXPIRY_INTERVAL: 300})
    assert ack.session_present
    (again,) = s.messages(1)
    assert again.dup and again.payload == b"unacked" and again.packet_id == m.packet_id


def test_qos_2_packet_ids_survive_a_broker_restart(mqtt_broker) -> None:
    b = mqtt_broker()
    sub = client(b, 4, client_id="sub", clean=False)
    sub.subscribe("x", qos=2)
    sub.close()
    pub = client(b, 4, client_id="pub", clean=False)
    pub.send(Publish("x", b"once", 2, packet_id=77))
    assert pub.recv() == Pubrec(77)
    pub.close()
    b.restart()
    pub = RawClient(b.port("mqtt"), 4)
    assert pub.connect("pub", clean=False).session_present
    pub.send(Publish("x", b"once", 2, dup=True, packet_id=77))  # the client resends
    assert pub.recv() == Pubrec(77)
    pub.send(Pubrel(77))
    assert pub.recv() == Pubcomp(77)
    sub = RawClient(b.port("mqtt"), 4)
    sub.connect("sub", clean=False)
    assert [m.payload for m in sub.messages(1)] == [b"once"]
    sub.nothing(0.5)


def test_clean_session_discards_the_old_session(broker) -> None:
    s = client(broker, 4, client_id="c", clean=False)
    s.subscribe("t", qos=1)
    s.close()
    s = RawClient(broker.port("mqtt"), 4)
    assert not s.connect("c", clean=True).session_present
    client(broker, 4, client_id="p").publish("t", b"x", 1)
    s.nothing()


def test_session_takeover_disconnects_the_old_connection(broker) -> None:
    old = client(broker, 5, client_id="same")
    new = client(broker, 5, client_id="same")
    assert old.recv_until_closed() == [Disconnect(Reason.SESSION_TAKEN_OVER)]
    new.send(Publish("t", b"still works", 1, packet_id=1))
    assert new.recv() == Puback(1)


def test_shared_subscription_splits_the_load(broker) -> None:
    members = [client(broker, 5, client_id=f"m{i}") for i in range(3)]
    for m in members:
        assert m.subscribe("$share/workers/jobs/#", qos=1).reasons == (1,)
    pub = client(broker, 4, client_id="p")
    for i in range(30):
        pub.publish(f"jobs/{i % 2}", b"%d" % i, 1)
    counts = []
    seen = []
    for m in members:
        got = m.messages(10, timeout=5)
        counts.append(len(got))
        seen += [int(x.payload) for x in got]
    assert sorted(seen) == list(range(30))
    for m in members:
        m.nothing(0.2)


def test_no_local_skips_the_publishers_own_messages(broker) -> None:
    c = client(broker, 5, client_id="me")
    c.subscribe("chat", qos=0, no_local=True)
    c.publish("chat", b"mine")
    other = client(broker, 5, client_id="you")
    other.publish("chat", b"yours")
    assert [m.payload for m in c.messages(1)] == [b"yours"]


def test_mqtt5_properties_round_trip(broker) -> None:
    sub = client(broker, 5, client_id="s")
    sub.subscribe("rpc/#", qos=1)
    props = {Prop.PAYLOAD_FORMAT_INDICATOR: 1, Prop.CONTENT_TYPE: "application/json",
             Prop.RESPONSE_TOPIC: "rpc/reply", Prop.CORRELATION_DATA: b"\x00\xffid",
             Prop.MESSAGE_EXPIRY_INTERVAL: 3600,
             Prop.USER_PROPERTY: (("trace", "abc"), ("trace", "def"), ("KEYS", "k1"))}
    pub = client(broker, 5, client_id="p")
    pub.publish("rpc/call", b'{"x": 1}', 1, properties=props)
    (m,) = sub.messages(1)
    got = dict(m.properties)
    expiry = got.pop(Prop.MESSAGE_EXPIRY_INTERVAL)
    assert 3590 <= expiry <= 3600
    expected = dict(props)
    del expected[Prop.MESSAGE_EXPIRY_INTERVAL]
    assert got == expected


def test_expired_messages_are_not_delivered(broker) -> None:
    s = client(broker, 5, client_id="later", clean=False,
               properties={Prop.SESSION_EXPIRY_INTERVAL: 60})
    s.subscribe("e", qos=1)
    s.close()
    pub = client(broker, 5, client_id="p")
    pub.publish("e", b"short", 1, properties={Prop.MESSAGE_EXPIRY_INTERVAL: 1})
    pub.publish("e", b"long", 1, properties={Prop.MESSAGE_EXPIRY_INTERVAL: 100})
    time.sleep(1.2)  # the subject: the first message's 1 s expiry passes
    s = RawClient(broker.port("mqtt"), 5)
    s.connect("later", clean=False, properties={Prop.SESSION_EXPIRY_INTERVAL: 60})
    assert [m.payload for m in s.messages(1)] == [b"long"]
    s.nothing()


def test_topic_aliases_from_the_server(broker) -> None:
    sub = client(broker, 5, client_id="s", properties={Prop.TOPIC_ALIAS_MAXIMUM: 5})
    sub.subscribe("al/#")
    pub = client(broker, 5, client_id="p")
    pub.publish("al/one", b"1")
    pub.publish("al/one", b"2", properties={Prop.TOPIC_ALIAS: 1})  # client -> server alias
    a, b2 = sub.messages(2)
    assert a.topic == "al/one" and a.properties[Prop.TOPIC_ALIAS] == 1
    assert b2.topic == "" and b2.properties[Prop.TOPIC_ALIAS] == 1


def test_assigned_client_identifier_and_server_limits_in_connack(broker) -> None:
    c = RawClient(broker.port("mqtt"), 5)
    ack = c.connect("")
    assert ack.properties[Prop.ASSIGNED_CLIENT_IDENTIFIER].startswith("ferrymq-")
    assert ack.properties[Prop.RECEIVE_MAXIMUM] == 64
    assert ack.properties[Prop.MAXIMUM_PACKET_SIZE] == 1 << 20
    c4 = RawClient(broker.port("mqtt"), 4)
    assert c4.connect("", clean=False).reason == 2  # 3.1.1: identifier rejected


def test_sys_topics_report_broker_statistics(broker) -> None:
    c = client(broker, 4, client_id="ops")
    c.subscribe("$SYS/broker/clients/connected", "$SYS/broker/messages/received")
    got = {m.topic: m.payload for m in c.messages(2)}
    assert int(got["$SYS/broker/clients/connected"]) >= 1
    assert not client(broker, 4, client_id="x").subscribe("#").reasons[0] & 0x80
    denied = client(broker, 5, client_id="y")
    assert denied.publish("$SYS/broker/fake", b"1", 1) == Puback(1, Reason.NOT_AUTHORIZED)


# --------------------------------------------------------------- bad input, limits

def test_malformed_packets_get_the_disconnect_the_spec_demands(broker) -> None:
    cases = [
        (5, b"\x36\x05\x00\x01a\x00\x01", Reason.MALFORMED_PACKET),  # QoS 3
        (5, b"\x30\x06\x00\x03a\xffb\x00", Reason.MALFORMED_PACKET),  # bad UTF-8
        (5, b"\x30\x04\x00\x01+\x00", Reason.TOPIC_NAME_INVALID),  # wildcard in a name
        (5, b"\x20\x02\x00\x00", Reason.PROTOCOL_ERROR),  # CONNACK from a client
        (5, b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x00", Reason.PROTOCOL_ERROR),
    ]
    for version, raw, reason in cases:
        c = client(broker, version, client_id="bad")
        c.send_raw(raw)
        assert c.recv_until_closed() == [Disconnect(reason)], raw
    c = client(broker, 4, client_id="bad311")
    c.send_raw(b"\x36\x05\x00\x01a\x00\x01")
    assert c.recv_until_closed() == []  # 3.1.1: the server just closes
    assert isinstance(client(broker, 4, client_id="fine").publish("t", b"x", 1), Puback)


def test_a_malformed_remaining_length_closes_the_connection(broker) -> None:
    c = client(broker, 5, client_id="bad")
    c.send_raw(b"\x30\xff\xff\xff\xff\x7f")
    assert c.recv_until_closed() == [Disconnect(Reason.MALFORMED_PACKET)]


def test_a_packet_announcing_256_mib_is_refused_at_once(broker) -> None:
    c = client(broker, 5, client_id="big")
    c.send_raw(b"\x30\xff\xff\xff\x7f\x00\x01a")
    assert c.recv_until_closed(timeout=2) == [Disconnect(Reason.PACKET_TOO_LARGE)]


def test_garbage_before_connect_and_silence_are_closed(mqtt_broker) -> None:
    b = mqtt_broker(connect_timeout=0.5)
    c = RawClient(b.port("mqtt"), 4)
    c.send_raw(b"GET / HTTP/1.1\r\n\r\n")
    assert c.recv_until_closed() == []
    c = RawClient(b.port("mqtt"), 4)
    assert c.recv_until_closed(timeout=3) == []  # no CONNECT within connect_timeout
    c = RawClient(b.port("mqtt"), 4)
    raw = bytearray(b"\x10\x0c\x00\x04MQTT\x07\x02\x00\x3c\x00\x00")  # protocol level 7
    c.send_raw(bytes(raw))
    assert c.recv_until_closed() == [Connack(False, 1)]


def test_flooding_past_receive_maximum_is_disconnect_0x93(mqtt_broker) -> None:
    b = mqtt_broker(receive_maximum=10)
    c = client(b, 5, client_id="flood")
    for pid in range(1, 12):
        c.send(Publish("f", b"x", 2, packet_id=pid))  # never PUBREL
    got = c.recv_until_closed()
    assert got[:10] == [Pubrec(pid) for pid in range(1, 11)]
    assert got[10:] == [Disconnect(Reason.RECEIVE_MAXIMUM_EXCEEDED)]


def test_a_qos1_subscriber_that_never_acks_is_bounded(mqtt_broker) -> None:
    b = mqtt_broker(max_inflight=5, max_queued=20)
    dead = client(b, 4, client_id="dead")
    dead.subscribe("load", qos=1)
    healthy = client(b, 4, client_id="ok")
    healthy.subscribe("load", qos=1)
    got: list = []
    pub = client(b, 4, client_id="p")
    # Ten at a time, each ten read before the next: the healthy one is never more than
    # max_queued behind (on a starved machine a reader thread could be, and its own
    # queue would drop the oldest as configured).
    for start in range(0, 200, 10):
        for i in range(start, start + 10):
            assert isinstance(pub.publish("load", b"%d" % i, 1, pid=i + 1), Puback)
        got.extend(healthy.messages(10, timeout=20))
    assert [int(m.payload) for m in got] == list(range(200))  # not held back by the dead one
    inflight = dead.messages(5, ack=False)
    dead.nothing(0.3)  # the window is full: nothing more until it acks
    for m in inflight:
        dead.send(Puback(m.packet_id))
    rest = dead.messages(20, ack=True)  # then the bounded queue: the newest 20
    assert [int(m.payload) for m in rest] == list(range(180, 200))
    ops = client(b, 4, client_id="ops")
    ops.subscribe("$SYS/broker/messages/dropped")
    assert int(ops.messages(1)[0].payload) >= 175


def test_ten_thousand_wildcard_subscriptions(mqtt_broker) -> None:
    b = mqtt_broker(max_subscriptions=20_000)
    subs = [client(b, 4, client_id=f"s{i}") for i in range(4)]
    for k, s in enumerate(subs):
        filters = [f"dev/{k}/{i}/+" for i in range(2500)]
        for start in range(0, 2500, 500):
            ack = s.subscribe(*filters[start:start + 500], qos=0, pid=start + 1)
            assert ack.reasons == (0,) * 500
    pub = client(b, 4, client_id="p")
    pub.publish("dev/2/1234/temp", b"hit", 1)
    assert [m.topic for m in subs[2].messages(1)] == ["dev/2/1234/temp"]
    for s in (subs[0], subs[1], subs[3]):
        s.nothing(0.2)


def test_password_file_and_acl(mqtt_broker, tmp_path) -> None:
    from ferrymq.gateways.mqtt.auth import hash_password
    pw = tmp_path / "passwd"
    pw.write_text(f"alice:{hash_password('wonder', 1000)}\nbob:{hash_password('builder', 1000)}\n")
    acl = tmp_path / "acl"
    acl.write_text("topic read $SYS/#\nuser alice\ntopic readwrite sensors/#\n"
                   "topic deny sensors/secret/#\nuser bob\ntopic read sensors/public/#\n"
                   "pattern write devices/%c/#\n")
    b = mqtt_broker(password_file=str(pw), acl_file=str(acl), allow_anonymous=False)
    assert RawClient(b.port("mqtt"), 5).connect("x").reason == Reason.NOT_AUTHORIZED
    assert RawClient(b.port("mqtt"), 4).connect("x", username="alice",
                                                 password=b"wrong").reason == 4
    alice = client(b, 5, client_id="a", username="alice", password=b"wonder")
    bob = client(b, 4, client_id="b1", username="bob", password=b"builder")
    assert bob.subscribe("sensors/#", "sensors/public/+").reasons == (0x80, 0)
    assert alice.subscribe("sensors/#", "other", "sensors/secret/x", no_local=True).reasons == (
        0, Reason.NOT_AUTHORIZED, Reason.NOT_AUTHORIZED)
    hidden = alice.publish("sensors/secret/x", b"hidden", 1, pid=4)
    assert hidden == Puback(4, Reason.NOT_AUTHORIZED)
    assert alice.publish("sensors/public/t", b"ok", 1) == Puback(1)
    assert [m.payload for m in bob.messages(1)] == [b"ok"]
    assert alice.publish("other/t", b"no", 1, pid=2) == Puback(2, Reason.NOT_AUTHORIZED)
    assert bob.publish("devices/b1/x", b"mine", 1) == Puback(1)
    assert bob.publish("sensors/public/t", b"no", 1, pid=3) == Puback(3)  # 3.1.1: dropped
    bob.publish("devices/b1/x", b"to alice?", 1, pid=5)  # not under sensors/: no
    bob.nothing()
    alice.nothing()


def test_websocket_transport(broker) -> None:
    import base64
    import os
    s = socket.create_connection(("127.0.0.1", broker.ws_port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
               f"Sec-WebSocket-Protocol: mqtt\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101") and b"mqtt" in head.lower()
    connect = bytes.fromhex("100d00044d5154540402003c000177")  # CONNECT client id "w"
    mask = b"\x01\x02\x03\x04"
    frame = bytes((0x82, 0x80 | len(connect))) + mask + bytes(
        c ^ mask[i % 4] for i, c in enumerate(connect))
    s.sendall(frame)
    reply = s.recv(100)
    assert reply[:2] == b"\x82\x04" and reply[2:] == b"\x20\x02\x00\x00"
    s.close()


def test_the_door_survives_abrupt_disconnects_mid_packet(broker) -> None:
    for _ in range(20):
        c = RawClient(broker.port("mqtt"), 4)
        c.send_raw(b"\x10\x0c\x00\x04MQ")
        c.close()
    c = client(broker, 4, client_id="after")
    with pytest.raises((Closed, TimeoutError)):
        c.sock.settimeout(0.2)
        c.recv()
    assert isinstance(c.publish("t", b"x", 1), Puback)
    assert isinstance(client(broker, 4, client_id="other").subscribe("t"), Suback)


def test_server_keep_alive_is_imposed_and_enforced(mqtt_broker) -> None:
    b = mqtt_broker(server_keep_alive=1)
    watcher = client(b, 4, client_id="w")
    watcher.subscribe("wills/#")
    c = RawClient(b.port("mqtt"), 5)
    ack = c.connect("lazy", keep_alive=600, will=Will("wills/lazy", b"silent"))
    assert ack.properties[Prop.SERVER_KEEP_ALIVE] == 1  # 3.2.2.3.14: the client is told
    assert [m.payload for m in watcher.messages(1, timeout=5)] == [b"silent"]
    assert c.recv_until_closed() == [Disconnect(Reason.KEEP_ALIVE_TIMEOUT)]


def test_overflow_refuse_keeps_the_oldest(mqtt_broker) -> None:
    b = mqtt_broker(max_inflight=2, max_queued=3, overflow="refuse")
    ops = client(b, 4, client_id="ops")
    ops.subscribe("$SYS/broker/messages/dropped")
    slow = client(b, 4, client_id="slow")
    slow.subscribe("r", qos=1)
    pub = client(b, 4, client_id="p")
    for i in range(10):
        assert isinstance(pub.publish("r", b"%d" % i, 1, pid=i + 1), Puback)
    first = slow.messages(2, ack=False)
    # stored is not yet routed: wait until the dispatcher saw all ten, which is when
    # five were refused (two in flight, three queued)
    wait_until(lambda: int(ops.messages(1)[0].payload) >= 5, what="five refused")
    for m in first:
        slow.send(Puback(m.packet_id))
    rest = slow.messages(3)
    assert [int(m.payload) for m in first + rest] == [0, 1, 2, 3, 4]
    slow.nothing()


def test_a_shared_subscription_keeps_messages_for_its_offline_persistent_members(
        mqtt_broker) -> None:
    b = mqtt_broker()
    for cid in ("w1", "w2"):
        w = client(b, 4, client_id=cid, clean=False)
        w.subscribe("$share/pool/jobs/#", qos=1)
        w.close()
    pub = client(b, 4, client_id="p")
    for i in range(4):
        pub.publish(f"jobs/{i}", b"%d" % i, 1, pid=i + 1)
    w1 = RawClient(b.port("mqtt"), 4)
    assert w1.connect("w1", clean=False).session_present
    assert sorted(int(m.payload) for m in w1.messages(4)) == [0, 1, 2, 3]
    # Leave for good before the next publish: a member still being disconnected may
    # be handed the message for its persistent session (MQTT 5.0, 4.8.2).
    w1.send(Disconnect())
    w1.recv_until_closed()  # the door closes the connection once it has ended it
    w1.close()
    pub.publish("jobs/9", b"9", 1, pid=9)
    pub.close()
    b.restart()  # the group's held position is its committed offset in the core
    w2 = RawClient(b.port("mqtt"), 4)
    assert w2.connect("w2", clean=False).session_present
    assert [m.payload for m in w2.messages(1)] == [b"9"]
    w2.nothing()


@pytest.mark.slow
def test_a_sigkilled_broker_keeps_sessions_retained_and_acknowledged_messages(
        mqtt_broker) -> None:
    b = mqtt_broker()
    s = client(b, 4, client_id="durable", clean=False)
    s.subscribe("crash/#", qos=1)
    s.close()
    pub = client(b, 4, client_id="p")
    pub.publish("crash/state", b"kept", 1, retain=True)
    for i in range(50):
        assert isinstance(pub.publish("crash/n", b"%d" % i, 1, pid=i + 1), Puback)
    time.sleep(1.5)  # the core persists committed offsets every second
    b.kill()
    b.start()
    s = RawClient(b.port("mqtt"), 4)
    assert s.connect("durable", clean=False).session_present
    got = s.messages(51, timeout=10)
    assert {m.payload for m in got if m.topic == "crash/n"} == {b"%d" % i for i in range(50)}
    assert [m.payload for m in got if m.topic == "crash/state"] == [b"kept"]
    fresh = client(b, 4, client_id="late")
    fresh.subscribe("crash/state")
    assert [(m.payload, m.retain) for m in fresh.messages(1)] == [(b"kept", True)]


def test_a_websocket_text_frame_closes_the_connection(broker) -> None:
    import base64
    import os
    s = socket.create_connection(("127.0.0.1", broker.ws_port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET /mqtt HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 101")
    s.sendall(bytes((0x81, 0x84)) + b"\x00\x00\x00\x00" + b"text")  # a text frame
    closing = s.recv(100)
    assert closing[:1] == b"\x88"  # a WebSocket close ([MQTT-6.0.0-1])
    bad = socket.create_connection(("127.0.0.1", broker.ws_port), timeout=5)
    bad.sendall(b"GET /other HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: " + key.encode() + b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    assert bad.recv(100).startswith(b"HTTP/1.1 404")


# --------------------------------------------------------------- shared subscription hand-over

def test_a_leaving_shared_members_unacknowledged_messages_go_to_another_member(broker) -> None:
    a = client(broker, 5, client_id="a")
    a.subscribe("$share/g/work/#", qos=1)
    pub = client(broker, 4, client_id="p")
    for i in range(4):
        pub.publish(f"work/{i}", b"%d" % i, 1, pid=i + 1)
    unacked = a.messages(4, ack=False)  # the only member: it gets all four, acks none
    b = client(broker, 5, client_id="b")
    b.subscribe("$share/g/work/#", qos=1)
    a.close()  # gone without a persistent session: its session ends (4.8.2)
    got = b.messages(4)
    assert sorted(int(m.payload) for m in got) == sorted(int(m.payload) for m in unacked)
    assert not any(m.dup for m in got)  # a first delivery to b, not a retransmission
    b.nothing()


def test_handed_over_messages_wait_for_the_next_member_online(mqtt_broker) -> None:
    b = mqtt_broker()
    w = client(b, 4, client_id="w", clean=False)
    w.subscribe("$share/g/jobs", qos=1)
    w.close()  # a member, offline
    a = client(b, 4, client_id="a")
    a.subscribe("$share/g/jobs", qos=1)
    pub = client(b, 4, client_id="p")
    for i in range(3):
        pub.publish("jobs", b"%d" % i, 1, pid=i + 1)
    assert len(a.messages(3, ack=False)) == 3
    a.close()  # no other member online: the three wait in the group
    w = RawClient(b.port("mqtt"), 4)
    assert w.connect("w", clean=False).session_present
    assert sorted(m.payload for m in w.messages(3)) == [b"0", b"1", b"2"]
    w.nothing()


def test_unsubscribing_hands_queued_shared_messages_over_and_completes_in_flight_ones(
        mqtt_broker) -> None:
    b = mqtt_broker(max_inflight=1)
    a = client(b, 5, client_id="a")
    a.subscribe("$share/g/q", qos=1)
    pub = client(b, 4, client_id="p")
    for i in range(3):
        pub.publish("q", b"%d" % i, 1, pid=i + 1)
    (first,) = a.messages(1, ack=False)  # 1 and 2 wait in a's queue (window 1)
    other = client(b, 5, client_id="b")
    other.subscribe("$share/g/q", qos=1)
    assert a.unsubscribe("$share/g/q").reasons == (0,)
    assert sorted(m.payload for m in other.messages(2)) == [b"1", b"2"]
    a.send(Puback(first.packet_id))  # [MQTT-3.10.4-3]: the one in flight completes with a
    a.nothing()
    other.nothing()


def test_a_shared_qos2_message_the_member_may_have_is_not_sent_to_another(broker) -> None:
    a = client(broker, 5, client_id="a")
    a.subscribe("$share/g/x", qos=2)
    client(broker, 4, client_id="p").publish("x", b"once", 2)
    (m,) = a.messages(1, ack=False)
    assert m.qos == 2
    b = client(broker, 5, client_id="b")
    b.subscribe("$share/g/x", qos=2)
    a.close()  # 4.8.2 [MQTT-4.8.2-5]: SHOULD NOT go to another member (exactly once)
    b.nothing(0.5)


# --------------------------------------------------------------- QoS flows by the table

def test_an_acknowledgement_of_the_wrong_kind_is_a_protocol_error(broker) -> None:
    sub = client(broker, 5, client_id="s")
    sub.subscribe("t", qos=2)
    client(broker, 4, client_id="p").publish("t", b"x", 2)
    (m,) = sub.messages(1, ack=False)
    sub.send(Puback(m.packet_id))  # a QoS 2 message awaits PUBREC, not PUBACK
    assert sub.recv_until_closed() == [Disconnect(Reason.PROTOCOL_ERROR)]


def test_unknown_acknowledgements_are_answered_or_ignored(broker) -> None:
    c = client(broker, 5, client_id="c")
    c.send(Puback(77))  # tolerated
    c.send(Pubrec(78))
    assert c.recv() == Pubrel(78, Reason.PACKET_IDENTIFIER_NOT_FOUND)
    c.send(Pubrel(79))
    assert c.recv() == Pubcomp(79, Reason.PACKET_IDENTIFIER_NOT_FOUND)
    assert isinstance(c.publish("t", b"still here", 1), Puback)


def test_an_expired_shared_members_unacknowledged_messages_go_to_another_member(broker) -> None:
    props = {Prop.SESSION_EXPIRY_INTERVAL: 1}
    a = client(broker, 5, client_id="a", clean=False, properties=props)
    a.subscribe("$share/g/e", qos=1)
    client(broker, 4, client_id="p").publish("e", b"late", 1)
    assert [m.payload for m in a.messages(1, ack=False)] == [b"late"]
    b = client(broker, 5, client_id="b")
    b.subscribe("$share/g/e", qos=1)
    a.close()  # its session lives on for a second: the message waits for it (4.8.2 MAY)
    (m,) = b.messages(1, timeout=6)  # then the session ends, and b gets it
    assert (m.payload, m.dup) == (b"late", False)


def test_a_taken_default_websocket_port_leaves_mqtt_over_tcp_serving(start_broker, tmp_path) -> None:
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("127.0.0.1", 8083))  # the default ws_port (or someone else has it)
        holder.listen(1)
    except OSError:
        pass
    try:
        conf = tmp_path / "default-ws.toml"
        conf.write_text("[mqtt]\nsys_interval = 0.2\n")  # ws_port left at its default
        b = start_broker("mqtt", extra_args=("--config", str(conf)), name="defaultws")
        assert isinstance(client(b, 4, client_id="tcp").publish("t", b"x", 1), Puback)
        assert "WebSocket off" in b.log()
    finally:
        holder.close()
