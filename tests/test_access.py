"""A principal on every call: each public Broker call that produces, consumes, commits,
administers, pops, transacts, or touches timers or dead letters asks the one access check
(``Broker._authorize``) with its caller's principal, before it does anything; the
broker's own work (timer delivery, retries, commits, revives) never asks it."""

from __future__ import annotations

import inspect

import pytest
import trio
from access_helpers import record
from ferrymq.core import ANONYMOUS, Broker, Message, Principal
from ferrymq.core.access import (
    CLUSTER,
    CREATE,
    DELETE,
    DESCRIBE,
    GROUP,
    READ,
    SYSTEM,
    TOPIC,
    WRITE,
    anonymous,
)
from ferrymq.core.errors import PermissionDenied
from ferrymq.core.message import now_ms
from timer_helpers import config

ALICE = Principal("alice", "SASL/PLAIN", "10.0.0.7")

# Public Broker methods that take no principal, and why (docs/architecture.md says so too).
UNCHECKED = {
    "open": "the broker's lifecycle",
    "watch_topics": "door wiring: a callback, no data",
    "set_transaction_checker": "door wiring: the check-back hook",
    "set_tracer": "server wiring: the span hook (core/tracing.py)",
    "flush_offsets": "makes durable what was committed (a background job too)",
    "admin_batch": "groups the acknowledgements of changes each checked by its own call",
    "wait_durable": "waits for what the caller appended already; reveals and changes nothing",
    "run_retention": "a background job",
    "check_disk": "a background job (the disk watermarks)",
    "health": "readiness probes ask it anonymously",
    "receipt": "decodes a handle the caller holds; reveals nothing of the broker",
    "delivery_time": "validates properties against the configuration",
    "authenticate": "authentication: establishes who is asking (a password check)",
    "scram_verifier": "authentication: the SCRAM exchange of a door needs the verifier",
    "token_user": "authentication: who an API token belongs to",
    "access_secret": "authentication: the RocketMQ signature needs the SecretKey",
    # Cluster wiring: called by the replication door and the controller only, peers
    # inside the broker group (docs/cluster.md), never on a client's behalf.
    **{name: "cluster wiring (docs/architecture.md)" for name in (
        "replication_position", "replication_chunk", "replication_wait", "replica_connected",
        "replica_acked", "replica_disconnected", "replica_status", "replicate",
        "truncation_point", "truncate_log", "set_lease_deadline", "fence", "isr_proposals",
        "propose_isr_add", "cancel_isr_add", "isr_changed", "in_sync_replicas")},
}


def test_every_public_call_takes_a_principal_or_says_why_not() -> None:
    public = {name for name, _ in inspect.getmembers(Broker, inspect.isfunction)
              if not name.startswith("_")} | {"open"}
    lacking = sorted(name for name in public - set(UNCHECKED)
                     if "principal" not in inspect.signature(getattr(Broker, name)).parameters)
    assert not lacking, f"public Broker calls without principal=: {lacking}"
    for name in public - set(UNCHECKED):
        p = inspect.signature(getattr(Broker, name)).parameters["principal"]
        assert p.kind is p.KEYWORD_ONLY and p.default is ANONYMOUS, name


def test_anonymous_principals_carry_their_peer() -> None:
    assert anonymous(None) is ANONYMOUS
    p = anonymous("1.2.3.4:5")
    assert (p.name, p.peer, p.anonymous) == ("ANONYMOUS", "1.2.3.4:5", True)
    assert not SYSTEM.anonymous and not ALICE.anonymous
    with pytest.raises(ValueError):
        Principal("", "x")


async def test_each_call_checks_its_resource_with_the_callers_principal(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        rec = record(b)
        await b.create_topic("t", 1, principal=ALICE)
        await b.put(Message("t", b"x"), principal=ALICE)
        await b.put([Message("t", b"y"), Message("t", b"z")], principal=ALICE)
        b.get("g", "t", 0, 0, principal=ALICE)
        b.commit_offset("g", "t", 0, 1, principal=ALICE)
        b.committed_offset("g", "t", 0, principal=ALICE)
        b.queue_bounds("t", 0, principal=ALICE)
        b.topics(principal=ALICE)
        b.broker_stats(principal=ALICE)
        await b.delete_topic("t", principal=ALICE)
        assert rec.principals() == {ALICE}
        assert [c[1:] for c in rec.calls] == [
            (TOPIC, "t", CREATE), (TOPIC, "t", WRITE), (TOPIC, "t", WRITE), (TOPIC, "t", READ),
            (GROUP, "g", READ), (TOPIC, "t", READ), (GROUP, "g", DESCRIBE),
            (TOPIC, "t", DESCRIBE), (TOPIC, "t", DESCRIBE), (CLUSTER, "", DESCRIBE),
            (TOPIC, "t", DELETE)]


def _deny_alice(p: Principal, *rest: object) -> bool:
    return p == ALICE


async def test_a_denied_call_changes_nothing(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("t", 1)
        record(b, _deny_alice)
        with pytest.raises(PermissionDenied):
            await b.put(Message("t", b"x"), principal=ALICE)
        with pytest.raises(PermissionDenied):
            await b.create_topic("u", 1, principal=ALICE)
        with pytest.raises(PermissionDenied):
            b.commit_offset("g", "t", 0, 0, principal=ALICE)
        with pytest.raises(PermissionDenied):
            await b.pop("g", "t", principal=ALICE)
        assert b.queue_bounds("t", 0) == (0, 0)
        assert b.find_topic("u") is None
        assert b.committed_offset("g", "t", 0) is None
        assert b.topics(principal=ALICE) == []  # listings show what may be seen
        assert [t.name for t in b.topics()] == ["t"]


async def test_calls_naming_an_id_check_what_it_resolves_to(tmp_path) -> None:
    """ack, cancel_timer and end_transaction learn their group or topic from the id."""
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("t", 1)
        await b.put(Message("t", b"x"))
        popped = await b.pop("g", "t", 1, 60_000)
        timer = await b.put(Message("t", b"later", {"TIMER_DELIVER_MS": str(now_ms() + 3600_000)}))
        half = await b.prepare(Message("t", b"half"), "pg")
        rec = record(b, _deny_alice)
        with pytest.raises(PermissionDenied):
            b.ack(popped[0].receipt, principal=ALICE)
        with pytest.raises(PermissionDenied):
            await b.cancel_timer(timer.message_ids[0], principal=ALICE)
        with pytest.raises(PermissionDenied):
            await b.end_transaction(half, "commit", principal=ALICE)
        assert [c[1:] for c in rec.calls] == [(GROUP, "g", READ), (TOPIC, "t", WRITE),
                                              (TOPIC, "t", WRITE)]
        # Nothing happened: the lease, the timer and the half are all still there.
        b.ack(popped[0].receipt)
        await b.cancel_timer(timer.message_ids[0])
        assert await b.end_transaction(half, "commit") is not None


async def test_the_brokers_own_work_never_meets_a_clients_check(tmp_path) -> None:
    """Timer delivery, a retry's delayed copy, a transaction's commit and a pop revive
    run on the internal paths: the only checks are the client's own calls."""
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("t", 1)
        await b.put(Message("t", b"m"))
        rec = record(b, lambda p, *rest: p != ALICE)  # anyone but alice is refused
        due = now_ms() + 200
        await b.put(Message("t", b"timed", {"TIMER_DELIVER_MS": str(due)}), principal=ALICE)
        half = await b.prepare(Message("t", b"half"), "pg", principal=ALICE)
        await b.end_transaction(half, "commit", principal=ALICE)
        popped = await b.pop("g", "t", 1, 100, principal=ALICE)  # its lease runs out
        sent = await b.send_back("g", popped[0].message, principal=ALICE)  # a timer again
        assert sent.topic == "%RETRY%g"
        with trio.fail_after(30):
            while (end := b.queue_bounds("t", 0, principal=ALICE)[1]) < 3:
                await b.wait("t", 0, end, 1.0, principal=ALICE)  # m, the commit, the timed one
            while b.pop_service.stats["revived"] < 1:  # the lease of m runs out
                await b.pop("g", "t", 1, 60_000, wait_ms=200, principal=ALICE)
        assert rec.principals() == {ALICE}
