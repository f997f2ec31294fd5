"""The group coordinator under trio's mock clock: joins, sync, heartbeats, expiry."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from ferrymq.gateways.kafka.groups import COMPLETING, EMPTY, STABLE, Coordinator
from ferrymq.protocols.kafka import errors as ke

PROTOS = [("range", b"meta")]


async def _join(co: Coordinator, member: str = "", v4: bool = False):
    return await co.join("g", member, None, "client", "host", 10_000, 30_000, "consumer",
                         PROTOS, require_known_id=v4)


async def test_join_sync_heartbeat_and_session_expiry(autojump_clock) -> None:
    co = Coordinator()
    async with trio.open_nursery() as nursery:
        await nursery.start(co.run)
        first = await _join(co, v4=True)
        assert first.error == ke.MEMBER_ID_REQUIRED and first.member_id
        res = await _join(co, first.member_id, v4=True)
        assert res.error == ke.NONE and res.leader == res.member_id and res.generation == 1
        assert co.groups["g"].state == COMPLETING
        err, assignment = await co.sync("g", 1, res.member_id, [(res.member_id, b"all")])
        assert (err, assignment, co.groups["g"].state) == (ke.NONE, b"all", STABLE)

        # A second member joins: the first learns of the rebalance from its heartbeat.
        results = {}

        async def second() -> None:
            results["b"] = await _join(co)
        nursery.start_soon(second)
        await trio.sleep(1)
        assert co.heartbeat("g", 1, res.member_id) == ke.REBALANCE_IN_PROGRESS
        results["a"] = await _join(co, res.member_id)
        await trio.sleep(0)
        a, b = results["a"], results["b"]
        assert a.generation == b.generation == 2
        assert len(a.members) == 2 and b.members == (), "only the leader sees the members"
        assert co.check_commit("g", 1, a.member_id) == ke.ILLEGAL_GENERATION

        # b stops heartbeating: after its session timeout it is gone and a rebalance starts.
        async def keep_alive() -> None:
            while True:
                co.heartbeat("g", 2, a.member_id)
                await trio.sleep(3)
        nursery.start_soon(keep_alive)
        await trio.sleep(11)
        assert b.member_id not in co.groups["g"].members
        assert co.heartbeat("g", 2, a.member_id) == ke.REBALANCE_IN_PROGRESS
        assert co.leave("g", a.member_id) == ke.NONE
        await trio.sleep(0.1)
        assert co.groups["g"].state == EMPTY
        assert co.check_commit("g", -1, "") == ke.NONE, "simple commits once the group is empty"
        nursery.cancel_scope.cancel()


async def test_bad_session_timeout_and_unknown_member(autojump_clock) -> None:
    co = Coordinator()
    async with trio.open_nursery() as nursery:
        await nursery.start(co.run)
        res = await co.join("g", "", None, "c", "h", 10, 30_000, "consumer", PROTOS,
                            require_known_id=False)
        assert res.error == ke.INVALID_SESSION_TIMEOUT
        res = await _join(co, "nobody")
        assert res.error == ke.UNKNOWN_MEMBER_ID
        assert co.heartbeat("g", 0, "nobody") == ke.UNKNOWN_MEMBER_ID
        nursery.cancel_scope.cancel()


def test_group_states_move_only_along_the_transition_table() -> None:
    from ferrymq.gateways.kafka.groups import (
        DEAD,
        PREPARING,
        TRANSITIONS,
        Group,
        GroupState,
        IllegalTransition,
    )

    assert set(TRANSITIONS) == set(GroupState)
    g = Group("g")
    g.move_to(PREPARING)
    with pytest.raises(IllegalTransition):
        g.move_to(STABLE)  # a round must complete (and the leader sync) first
    g.move_to(COMPLETING)
    g.move_to(STABLE)
    g.move_to(EMPTY)
    g.move_to(DEAD)
    with pytest.raises(IllegalTransition):
        g.move_to(PREPARING)  # nothing leaves Dead
    assert g.state == "Dead"  # the name DescribeGroups reports


async def _stable_pair(co: Coordinator, nursery: trio.Nursery):  # type: ignore[no-untyped-def]
    """A dynamic leader and a static member "i1", Stable at generation 2."""
    lead = await co.join("g", "", None, "c", "h", 10_000, 30_000, "consumer", PROTOS,
                         require_known_id=False)
    await co.sync("g", lead.generation, lead.member_id, [(lead.member_id, b"L")])
    results = {}

    async def static() -> None:
        results["s"] = await co.join("g", "", "i1", "c", "h", 10_000, 30_000, "consumer",
                                     PROTOS, require_known_id=True)
    nursery.start_soon(static)
    await trio.sleep(0.5)
    again = await co.join("g", lead.member_id, None, "c", "h", 10_000, 30_000, "consumer",
                          PROTOS, require_known_id=True)
    await trio.sleep(0)
    s = results["s"]
    assert again.generation == s.generation == 2 and again.leader == lead.member_id

    async def follower_sync() -> None:
        results["sync"] = await co.sync("g", 2, s.member_id, [])
    nursery.start_soon(follower_sync)
    await trio.testing.wait_all_tasks_blocked()
    await co.sync("g", 2, lead.member_id, [(lead.member_id, b"L"), (s.member_id, b"S")])
    await trio.testing.wait_all_tasks_blocked()
    assert results["sync"] == (ke.NONE, b"S")
    return lead, s


async def test_a_static_member_back_with_a_new_id_costs_no_rebalance(autojump_clock) -> None:
    """KIP-345: the member that rejoins under its group.instance.id takes its old place and
    assignment; the old id is fenced; the leader never hears of it."""
    co = Coordinator()
    async with trio.open_nursery() as nursery:
        await nursery.start(co.run)
        lead, s = await _stable_pair(co, nursery)
        back = await co.join("g", "", "i1", "c2", "h", 10_000, 30_000, "consumer", PROTOS,
                             require_known_id=True)
        assert (back.error, back.generation) == (ke.NONE, 2) and back.member_id != s.member_id
        assert co.groups["g"].state == STABLE, "no rebalance"
        assert await co.sync("g", 2, back.member_id, [], "i1") == (ke.NONE, b"S")
        assert co.heartbeat("g", 2, s.member_id, "i1") == ke.FENCED_INSTANCE_ID
        assert co.heartbeat("g", 2, lead.member_id) == ke.NONE
        nursery.cancel_scope.cancel()


async def test_membership_is_stored_and_restored(autojump_clock) -> None:
    """What the coordinator stores when a round completes is what a restarted broker's
    coordinator restores: the same members, generation and assignments."""
    stored: dict = {}

    async def save(changes) -> None:  # type: ignore[no-untyped-def]
        for _ns, key, value in changes:
            if value is None:
                stored.pop(key, None)
            else:
                stored[key] = value
    co = Coordinator(save=save)
    async with trio.open_nursery() as nursery:
        await nursery.start(co.run)
        lead, s = await _stable_pair(co, nursery)
        nursery.cancel_scope.cancel()
    again = Coordinator()
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        assert again.restore(stored.items()) == 2
        g = again.groups["g"]
        assert (g.state, g.generation, g.leader) == (STABLE, 2, lead.member_id)
        assert again.heartbeat("g", 2, lead.member_id) == ke.NONE
        assert again.heartbeat("g", 2, s.member_id, "i1") == ke.NONE
        assert again.check_commit("g", 2, s.member_id) == ke.NONE
        assert await again.sync("g", 2, s.member_id, []) == (ke.NONE, b"S")
        # A restored member that never comes back leaves after its session timeout.
        await trio.sleep(11)
        assert not again.groups["g"].members
        nursery.cancel_scope.cancel()
