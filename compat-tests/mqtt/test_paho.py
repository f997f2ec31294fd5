"""paho-mqtt (3.1.1 and 5.0) against FerryMQ: the round trips a device fleet relies on."""

from __future__ import annotations

import queue
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from waiting import wait_until

V311 = mqtt.MQTTv311
V5 = mqtt.MQTTv5


class Paho:
    """A connected paho client whose received messages land in a queue."""

    def __init__(self, port: int, version: int = V311, client_id: str | None = None,
                 clean: bool = True, transport: str = "tcp", will: tuple | None = None,
                 session_expiry: int | None = None, keepalive: int = 60) -> None:
        self.got: queue.Queue = queue.Queue()
        kw = {"clean_session": clean} if version != V5 else {}
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                             client_id=client_id or f"paho-{uuid.uuid4().hex[:8]}",
                             protocol=version, transport=transport, **kw)
        if transport == "websockets":
            self.c.ws_set_options(path="/mqtt")
        self.c.on_message = lambda c, u, m: self.got.put(m)
        self.connack = queue.Queue()
        self.subacks: queue.Queue = queue.Queue()  # the mid of each SUBACK received
        self.c.on_subscribe = lambda c, u, mid, reasons, props=None: self.subacks.put(mid)
        self.c.on_connect = lambda c, u, flags, rc, props=None: self.connack.put((flags, rc))
        if will:
            self.c.will_set(*will)
        props = None
        if version == V5 and session_expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = session_expiry
        if version == V5:
            self.c.connect("127.0.0.1", port, keepalive, clean_start=clean, properties=props)
        else:
            self.c.connect("127.0.0.1", port, keepalive)
        self.c.loop_start()
        self.flags, self.rc = self.connack.get(timeout=5)
        assert not self.rc.is_failure, self.rc

    def sub(self, *args, **kw):
        result, mid = self.c.subscribe(*args, **kw)
        assert result == 0
        assert self.subacks.get(timeout=10) == mid  # subscribed: the SUBACK is in
        return self

    def pub(self, topic, payload, qos=0, retain=False, properties=None):
        self.c.publish(topic, payload, qos, retain, properties).wait_for_publish(5)

    def take(self, n: int, timeout: float = 5.0) -> list:
        return [self.got.get(timeout=timeout) for _ in range(n)]

    def none(self, wait: float = 0.3) -> None:
        with pytest.raises(queue.Empty):
            self.got.get(timeout=wait)

    def stop(self, clean: bool = True) -> None:
        if clean:
            self.c.disconnect()
        else:
            self.c._sock_close()  # an abnormal end: no DISCONNECT
        self.c.loop_stop()


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_qos_0_1_2_round_trips(broker, version) -> None:
    port = broker.port("mqtt")
    sub = Paho(port, version).sub("dev/#", qos=2)
    pub = Paho(port, version)
    for qos in (0, 1, 2):
        pub.pub(f"dev/q{qos}", f"qos {qos}".encode(), qos)
    got = sub.take(3)
    assert [(m.topic, m.payload, m.qos) for m in got] == [
        ("dev/q0", b"qos 0", 0), ("dev/q1", b"qos 1", 1), ("dev/q2", b"qos 2", 2)]


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_retained_message(broker, version) -> None:
    port = broker.port("mqtt")
    Paho(port, version).pub("house/door", b"open", 1, retain=True)
    sub = Paho(port, version).sub("house/+", qos=1)
    (m,) = sub.take(1)
    assert (m.topic, m.payload, m.retain) == ("house/door", b"open", True)


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_will_message(broker, version) -> None:
    port = broker.port("mqtt")
    watch = Paho(port, version).sub("status/#", qos=1)
    dev = Paho(port, version, will=("status/dev", b"offline", 1, False), keepalive=5)
    dev.stop(clean=False)
    (m,) = watch.take(1)
    assert (m.topic, m.payload) == ("status/dev", b"offline")


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_persistent_session_across_reconnect_and_restart(broker, version) -> None:
    port = broker.port("mqtt")
    kw = {"clean": False, "session_expiry": 3600}
    dev = Paho(port, version, "persist-1", **kw).sub("cmd/#", qos=1)
    dev.stop()
    pub = Paho(port, version)
    pub.pub("cmd/a", b"while away", 1)
    dev = Paho(port, version, "persist-1", **kw)
    assert dev.flags.session_present
    assert [m.payload for m in dev.take(1)] == [b"while away"]
    dev.stop()
    pub.pub("cmd/b", b"before restart", 1)
    pub.stop()
    broker.restart()
    dev = Paho(port, version, "persist-1", **kw)
    assert dev.flags.session_present
    assert [m.payload for m in dev.take(1)] == [b"before restart"]
    Paho(port, version).pub("cmd/c", b"after restart", 1)
    assert [m.payload for m in dev.take(1)] == [b"after restart"]


def test_shared_subscription_splits_the_load(broker) -> None:
    port = broker.port("mqtt")
    workers = [Paho(port, V5).sub("$share/pool/jobs/+", qos=1) for _ in range(3)]
    pub = Paho(port, V5)
    for i in range(60):
        pub.pub(f"jobs/{i % 3}", str(i).encode(), 1)
    wait_until(lambda: sum(w.got.qsize() for w in workers) >= 60, what="60 deliveries")
    shares = [w.got.qsize() for w in workers]
    seen = sorted(int(m.payload) for w in workers for m in w.take(w.got.qsize()))
    assert seen == list(range(60))
    assert all(s >= 10 for s in shares), shares


def test_mqtt5_properties_round_trip(broker) -> None:
    port = broker.port("mqtt")
    sub = Paho(port, V5).sub("rpc/#", options=SubscribeOptions(qos=1))
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.ResponseTopic = "rpc/replies/42"
    props.CorrelationData = b"\x00corr\xff"
    props.PayloadFormatIndicator = 1
    props.MessageExpiryInterval = 600
    props.UserProperty = [("trace-id", "abc"), ("trace-id", "def"), ("tenant", "t1")]
    Paho(port, V5).pub("rpc/call", b'{"op": 1}', 1, properties=props)
    (m,) = sub.take(1)
    p = m.properties
    assert p.ContentType == "application/json"
    assert p.ResponseTopic == "rpc/replies/42"
    assert p.CorrelationData == b"\x00corr\xff"
    assert p.PayloadFormatIndicator == 1
    assert 590 <= p.MessageExpiryInterval <= 600
    assert p.UserProperty == [("trace-id", "abc"), ("trace-id", "def"), ("tenant", "t1")]


def test_subscription_identifiers_and_no_local(broker) -> None:
    port = broker.port("mqtt")
    me = Paho(port, V5)
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 7
    me.sub("chat/#", options=SubscribeOptions(qos=1, noLocal=True), properties=props)
    me.pub("chat/room", b"mine", 1)
    Paho(port, V5).pub("chat/room", b"theirs", 1)
    (m,) = me.take(1)
    assert m.payload == b"theirs"
    assert m.properties.SubscriptionIdentifier == [7]
    me.none()


@pytest.mark.parametrize("version", [V311, V5], ids=["3.1.1", "5.0"])
def test_websocket_transport(broker, version) -> None:
    sub = Paho(broker.ws_port, version, transport="websockets").sub("ws/#", qos=1)
    Paho(broker.port("mqtt"), version).pub("ws/t", b"over tcp", 1)
    Paho(broker.ws_port, version, transport="websockets").pub("ws/t", b"over ws", 2)
    assert sorted(m.payload for m in sub.take(2)) == [b"over tcp", b"over ws"]


def _subscribed(p: Paho, topic_filter: str, qos: int) -> Paho:
    """Subscribe and wait for the SUBACK (not a sleep)."""
    acked: queue.Queue = queue.Queue()
    p.c.on_subscribe = lambda *args: acked.put(args)
    result, _ = p.c.subscribe(topic_filter, qos)
    assert result == 0
    acked.get(timeout=5)
    return p


def test_a_shared_member_that_leaves_hands_its_unacknowledged_messages_over(broker) -> None:
    """MQTT 5.0 4.8.2: a member's session ends with QoS 1 messages it never
    acknowledged (paho's manual acknowledgement, never given): another member
    gets them."""
    port = broker.port("mqtt")
    lazy = Paho(port, V5)
    lazy.c.manual_ack_set(True)
    _subscribed(lazy, "$share/crew/tasks/#", 1)
    pub = Paho(port, V5)
    for i in range(10):
        pub.pub(f"tasks/{i}", str(i).encode(), 1)
    assert sorted(int(m.payload) for m in lazy.take(10)) == list(range(10))
    busy = _subscribed(Paho(port, V5), "$share/crew/tasks/#", 1)
    lazy.stop()  # DISCONNECT, no session expiry: its session ends
    assert sorted(int(m.payload) for m in busy.take(10)) == list(range(10))
    busy.none()
