"""The MQTT ACL file's deny rules hold on every way a message reaches a client (issue 13's
leaks): retained messages sent on SUBSCRIBE, shared subscriptions, and ``%u`` patterns
with a user name that is itself a wildcard ("+"). All judged by the core's one check, per
message, at the message's address."""

from __future__ import annotations

from ferrymq.gateways.mqtt.auth import hash_password
from ferrymq.protocols.mqtt.constants import Reason
from ferrymq.protocols.mqtt.packets import Puback
from rawclient import RawClient

ACL = ("pattern read home/%u/#\n"
       "user alice\ntopic readwrite sensors/#\ntopic deny sensors/secret/#\n"
       "user writer\ntopic write sensors/#\n")


def _broker(mqtt_broker, tmp_path):  # type: ignore[no-untyped-def]
    pw = tmp_path / "passwd"
    pw.write_text("".join(f"{u}:{hash_password(u + '-pw', 1000)}\n"
                          for u in ("alice", "writer", "+", "carol")))
    acl = tmp_path / "acl"
    acl.write_text(ACL)
    return mqtt_broker(password_file=str(pw), acl_file=str(acl), allow_anonymous=False)


def _client(b, user: str, cid: str, version: int = 5) -> RawClient:  # type: ignore[no-untyped-def]
    c = RawClient(b.port("mqtt"), version)
    assert c.connect(cid, username=user, password=f"{user}-pw".encode()).reason == 0
    return c


def test_a_retained_message_behind_a_deny_is_not_sent_on_subscribe(mqtt_broker, tmp_path) -> None:
    b = _broker(mqtt_broker, tmp_path)
    w = _client(b, "writer", "w")
    assert w.publish("sensors/secret/pin", b"1234", 1, retain=True) == Puback(1)
    assert w.publish("sensors/ok", b"fine", 1, pid=2, retain=True) == Puback(2)
    alice = _client(b, "alice", "a")
    assert alice.subscribe("sensors/#", qos=1).reasons == (1,)
    assert w.publish("sensors/zz", b"live", 1, pid=3) == Puback(3)
    # Retained messages come before the live one: the secret one never does.
    got = [(m.topic, m.payload) for m in alice.messages(2)]
    assert got == [("sensors/ok", b"fine"), ("sensors/zz", b"live")]


def test_a_shared_subscription_does_not_deliver_what_a_deny_hides(mqtt_broker, tmp_path) -> None:
    b = _broker(mqtt_broker, tmp_path)
    alice = _client(b, "alice", "a")
    assert alice.subscribe("$share/g/sensors/#", qos=1).reasons == (1,)
    w = _client(b, "writer", "w")
    assert w.publish("sensors/secret/pin", b"1234", 1) == Puback(1)
    assert w.publish("sensors/ok", b"fine", 1, pid=2) == Puback(2)
    assert [(m.topic, m.payload) for m in alice.messages(1)] == [("sensors/ok", b"fine")]
    assert w.publish("sensors/zz", b"next", 1, pid=3) == Puback(3)
    assert [m.topic for m in alice.messages(1)] == ["sensors/zz"]


def test_a_user_named_plus_gets_no_wider_pattern(mqtt_broker, tmp_path) -> None:
    b = _broker(mqtt_broker, tmp_path)
    carol = _client(b, "carol", "c")
    assert carol.subscribe("home/carol/#", "home/#", qos=1).reasons == (1, Reason.NOT_AUTHORIZED)
    c = RawClient(b.port("mqtt"), 5)
    ack = c.connect("h", username="+", password=b"+-pw")
    if ack.reason == 0:  # connected or not, "home/%u/#" must not become "home/+/#"
        assert c.subscribe("home/carol/x", "home/#", qos=1).reasons == (
            Reason.NOT_AUTHORIZED, Reason.NOT_AUTHORIZED)
    else:
        assert ack.reason == Reason.BAD_USERNAME_OR_PASSWORD
