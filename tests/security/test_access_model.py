"""The one access model (core/access.py): rules of principal x host x resource x operation
x allow/deny, deny winning, super users bypassing, MQTT filters judged at addresses; kept
in the state log, effective at once and after a restart."""

from __future__ import annotations

import pytest
from ferrymq.core import Broker, Message, Principal
from ferrymq.core.access import (
    ALL,
    CLUSTER,
    DESCRIBE,
    GROUP,
    LITERAL,
    MQTT,
    PREFIXED,
    READ,
    SYSTEM,
    TOPIC,
    WRITE,
    AccessControl,
    Rule,
    anonymous,
)
from ferrymq.core.errors import InvalidArgument, PermissionDenied
from timer_helpers import config

ALICE = Principal("alice", "SASL/PLAIN", "10.0.0.7:5000")
BOB = Principal("bob", "bearer", "192.168.1.9:80")
ANON = anonymous("10.0.0.8:1")


def rule(who: str, kind, pattern, name: str, op, allow: bool = True, host: str = "*",
         substitute: bool = False) -> Rule:  # type: ignore[no-untyped-def]
    return Rule(f"User:{who}", kind, pattern, name, op, allow, host, substitute)


def ac(*rules: Rule) -> AccessControl:
    a = AccessControl(enabled=True)
    for r in rules:
        a.set_rule(r.id, r)
    return a


def test_nothing_passes_without_a_grant_and_deny_wins() -> None:
    a = ac(rule("alice", TOPIC, PREFIXED, "orders", WRITE),
           rule("alice", TOPIC, LITERAL, "orders-secret", ALL, allow=False))
    assert a.allows(ALICE, TOPIC, "orders", WRITE)
    assert a.allows(ALICE, TOPIC, "orders-eu", WRITE)
    assert not a.allows(ALICE, TOPIC, "orders-secret", WRITE)
    assert not a.allows(ALICE, TOPIC, "orders", READ)
    assert a.allows(ALICE, TOPIC, "orders", DESCRIBE)  # WRITE implies DESCRIBE (Kafka)
    assert not a.allows(BOB, TOPIC, "orders", WRITE)
    assert not a.allows(ANON, TOPIC, "orders", WRITE)
    with pytest.raises(PermissionDenied) as e:
        a.check(ALICE, GROUP, "g", READ)
    assert e.value.resource == "group"  # type: ignore[attr-defined]


def test_anonymous_is_only_what_user_anonymous_is_granted() -> None:
    a = ac(rule("*", TOPIC, LITERAL, "*", READ))
    assert a.allows(ALICE, TOPIC, "x", READ) and not a.allows(ANON, TOPIC, "x", READ)
    a.set_rule("r2", rule("ANONYMOUS", TOPIC, LITERAL, "public", READ))
    assert a.allows(ANON, TOPIC, "public", READ) and not a.allows(ANON, TOPIC, "x", READ)


def test_super_users_and_the_broker_itself_pass() -> None:
    a = AccessControl(enabled=True, super_users=("root",))
    assert a.allows(Principal("root", "SASL/PLAIN"), CLUSTER, "", WRITE)
    assert a.allows(SYSTEM, TOPIC, "x", WRITE)
    assert not a.allows(Principal("ANONYMOUS", "anonymous"), TOPIC, "x", READ)


def test_auth_off_allows_everything() -> None:
    a = AccessControl(enabled=False)
    assert a.allows(ANON, CLUSTER, "", WRITE)


def test_source_address_ranges() -> None:
    a = ac(rule("alice", TOPIC, LITERAL, "t", READ, host="10.0.0.0/8"),
           rule("bob", TOPIC, LITERAL, "t", READ, host="10.0.0.0/8"))
    assert a.allows(ALICE, TOPIC, "t", READ) and not a.allows(BOB, TOPIC, "t", READ)


def test_mqtt_filters_at_addresses_and_on_whole_topics() -> None:
    a = ac(rule("alice", TOPIC, MQTT, "sensors/#", ALL),
           rule("alice", TOPIC, MQTT, "sensors/secret/#", ALL, allow=False),
           rule("alice", TOPIC, MQTT, "meters/public/#", READ))
    assert a.allows(ALICE, TOPIC, "sensors", READ, "sensors/a/b")
    assert not a.allows(ALICE, TOPIC, "sensors", READ, "sensors/secret/pin")
    # A whole-topic reader (Kafka, native, HTTP): a deny on part of it denies it all.
    assert not a.allows(ALICE, TOPIC, "sensors", READ)
    # A grant on part of a topic is no grant of the whole topic.
    assert not a.allows(ALICE, TOPIC, "meters", READ)
    assert a.allows(ALICE, TOPIC, "meters", READ, "meters/public/1")
    # Subscriptions: granted inside a grant, refused only where a deny covers them.
    assert a.allows(ALICE, TOPIC, "sensors", READ, "sensors/#", partial=True)
    assert not a.allows(ALICE, TOPIC, "sensors", READ, "sensors/secret/#", partial=True)
    assert not a.allows(ALICE, TOPIC, "meters", READ, "meters/#", partial=True)


def test_pattern_rules_never_match_a_wildcard_user_name() -> None:
    a = ac(rule("*", TOPIC, MQTT, "home/%u/#", ALL, substitute=True))
    assert a.allows(ALICE, TOPIC, "home", WRITE, "home/alice/x")
    hash_user = Principal("#", "mqtt-password", None)
    assert not a.allows(hash_user, TOPIC, "home", WRITE, "home/alice/x")
    assert not a.allows(hash_user, TOPIC, "home", READ, "home/#", partial=True)


def test_decisions_are_cached_until_the_rules_change() -> None:
    a = ac(rule("alice", TOPIC, LITERAL, "t", WRITE))
    assert a.allows(ALICE, TOPIC, "t", WRITE)
    n = len(a._cache)
    assert a.allows(ALICE, TOPIC, "t", WRITE) and len(a._cache) == n
    deny = rule("alice", TOPIC, LITERAL, "t", WRITE, allow=False)
    a.set_rule(deny.id, deny)
    assert not a.allows(ALICE, TOPIC, "t", WRITE)


def test_bad_rules_are_refused() -> None:
    for bad in (lambda: Rule("alice", TOPIC, LITERAL, "t", READ, True),
                lambda: rule("a", GROUP, MQTT, "x/#", READ),
                lambda: rule("a", TOPIC, MQTT, "a/#/b", READ),
                lambda: rule("a", TOPIC, LITERAL, "t", READ, host="nowhere"),
                lambda: Rule.from_json({"principal": "a"})):
        with pytest.raises(InvalidArgument):
            bad()


async def test_users_and_acls_live_in_the_state_log_and_hold_across_a_restart(tmp_path) -> None:
    cfg = config(tmp_path, extra={"auth": {"enabled": True}})
    async with Broker.open(cfg) as b:
        with pytest.raises(PermissionDenied):
            await b.put_user("alice", password="pw", principal=ALICE)
        await b.put_user("root", password="rootpw", super_user=True, principal=SYSTEM)
        root = Principal("root", "SASL/PLAIN")
        await b.put_user("alice", password="pw", principal=root)
        await b.create_topic("t", 1, principal=root)
        with pytest.raises(PermissionDenied):
            await b.put(Message("t", b"x"), principal=ALICE)
        await b.add_acls([rule("alice", TOPIC, LITERAL, "t", WRITE)], principal=root)
        await b.put(Message("t", b"x"), principal=ALICE)  # effective at once
        token = await b.create_token("alice", principal=root)
        ak, sk = await b.create_access_key("alice", principal=root)
        assert b.authenticate("alice", b"pw") and not b.authenticate("alice", b"nope")
    async with Broker.open(cfg) as b:
        assert b.authenticate("alice", b"pw")
        assert b.token_user(token.encode()) == "alice"
        assert b.access_secret(ak) == ("alice", sk)
        assert b.scram_verifier("alice", "SCRAM-SHA-512") is not None
        await b.put(Message("t", b"y"), principal=ALICE)
        with pytest.raises(PermissionDenied):
            b.get("g", "t", 0, 0, principal=ALICE)
        assert await b.delete_user("alice", principal=SYSTEM)
        assert b.token_user(token.encode()) is None and b.access_secret(ak) is None
        assert not b.authenticate("alice", b"pw")


async def test_an_mqtt_address_is_judged_on_produce_from_any_door(tmp_path) -> None:
    async with Broker.open(config(tmp_path, extra={"auth": {"enabled": True}})) as b:
        await b.create_topic("sensors", 1, principal=SYSTEM)
        await b.add_acls([rule("alice", TOPIC, MQTT, "sensors/public/#", WRITE)],
                         principal=SYSTEM)
        await b.put(Message("sensors", b"x", {"MQTT_TOPIC": "sensors/public/1"}),
                    principal=ALICE)
        with pytest.raises(PermissionDenied):
            await b.put(Message("sensors", b"x", {"MQTT_TOPIC": "sensors/secret/1"}),
                        principal=ALICE)
        with pytest.raises(PermissionDenied):  # no address: the whole topic
            await b.put(Message("sensors", b"x"), principal=ALICE)


def test_open_means_nothing_is_enforced_and_follows_its_inputs() -> None:
    """``open`` lets the produce path skip asking: true only while a check could not
    refuse anybody, false as soon as auth is on or a door enforces its rule file."""
    a = AccessControl(enabled=False)
    assert a.open and a.allows(ALICE, TOPIC, "t", WRITE)
    a.enabled = True
    assert not a.open and not a.allows(ALICE, TOPIC, "t", WRITE)
    a.enabled = False
    assert a.open
    a.load_static("mqtt:acl", [rule("alice", TOPIC, LITERAL, "t", READ)], "mqtt")
    a.enabled = False
    assert not a.open


async def test_a_produce_stream_sees_an_acl_change_at_once(tmp_path) -> None:
    """The decision cached for principal x topic is dropped by every rule change: the
    next put after an ACL is added or removed is judged by the new rules."""
    async with Broker.open(config(tmp_path, extra={"auth": {"enabled": True}})) as b:
        await b.create_topic("t", 1, principal=SYSTEM)
        grant = rule("alice", TOPIC, LITERAL, "t", WRITE)
        deny = rule("alice", TOPIC, LITERAL, "t", WRITE, allow=False)
        await b.add_acls([grant], principal=SYSTEM)
        for _ in range(3):  # warm the cache
            await b.put(Message("t", b"x"), principal=ALICE)
        await b.add_acls([deny], principal=SYSTEM)
        with pytest.raises(PermissionDenied):
            await b.put(Message("t", b"x"), principal=ALICE)
        with pytest.raises(PermissionDenied):
            await b.put([Message("t", b"x"), Message("t", b"y")], principal=ALICE)
        await b.delete_acls([deny], principal=SYSTEM)
        await b.put(Message("t", b"x"), principal=ALICE)
        await b.delete_acls([grant], principal=SYSTEM)
        with pytest.raises(PermissionDenied):
            await b.put(Message("t", b"x"), principal=ALICE)
        assert b.queue_bounds("t", 0, principal=SYSTEM) == (0, 4)
