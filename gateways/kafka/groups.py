"""The Kafka group coordinator: classic consumer-group membership (join, sync, heartbeat, leave).

States and transitions (Kafka's GroupCoordinator, "classic" protocol)::

    Empty ──join──► PreparingRebalance ──all joined / rebalance timeout──► CompletingRebalance
      ▲                 ▲   ▲                                                  │ leader's sync
      │ last member     │   └──────── join, leave, session expiry ─────────────┤
      └── leaves ───────┴──────────── join, leave, session expiry ◄── Stable ◄──┘

A join waits until every known member has rejoined or the rebalance timeout
(the largest of the members') passes; members that did not rejoin are dropped.
Then the generation advances, a protocol every member supports is chosen (by
the members' first preferences), and the leader (the longest-standing member)
receives every member's metadata so that it can compute the assignment it
sends with its SyncGroup. Heartbeats keep members alive within their session
timeout. Committed offsets are not kept here: they are the broker's (the same
offsets the native client commits); this module only says whether a commit
from a (generation, member) is acceptable.

The states are ``GroupState`` and the moves between them ``TRANSITIONS`` (the
diagram as data, as Kafka's GroupState keeps its valid previous states): every
change of state goes through ``Group.move_to``, which refuses a move the table
does not list (a bug of this module, never of a client).

Membership survives a restart (and, with replication, a failover): as Kafka
stores a group in ``__consumer_offsets`` when its leader's SyncGroup completes a
round and when it empties, the coordinator writes the group (generation,
protocol type and name, leader) and each member (ids, static instance id,
timeouts, protocols, assignment) as keys of the state-log namespace
``kafka.group`` at those moments (``save``, a Broker call the door passes in),
and rebuilds them at start (``restore``): a restored member is alive for one
more session timeout, so a client that heart-beats with its member id and
generation after the restart is still known (no UNKNOWN_MEMBER_ID, no
rebalance). A SyncGroup response of the leader is sent once the group is
stored.

Static members (KIP-345, ``group.instance.id``): a member that rejoins with its
instance id and no member id gets a new member id that takes the old one's place
and assignment; while the group is Stable and its protocols are unchanged that
costs no rebalance (a leader's rejoin still starts one, so that it learns the
members). A request carrying an instance id with a member id the instance no
longer has is FENCED_INSTANCE_ID. A static member leaves only by its session
timeout or an explicit LeaveGroup naming its instance id.

Everything here runs on the event loop; waiting is done on trio Events, and
the rebalance and expiry timers are tasks in the coordinator's nursery.
"""

from __future__ import annotations

import enum
import itertools
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from ...protocols.kafka import errors as ke


class GroupState(enum.StrEnum):
    """A classic group's state; the value is the name DescribeGroups and ListGroups report."""

    EMPTY = "Empty"
    PREPARING = "PreparingRebalance"
    COMPLETING = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


EMPTY, PREPARING, COMPLETING, STABLE, DEAD = GroupState

TRANSITIONS: dict[GroupState, frozenset[GroupState]] = {
    # state: the states it may move to (a move to the same state is never made)
    EMPTY: frozenset((PREPARING, DEAD)),  # a first join; a deleted group
    PREPARING: frozenset((COMPLETING, EMPTY, DEAD)),  # the round completes; everyone left
    COMPLETING: frozenset((STABLE, PREPARING, EMPTY)),  # leader's sync; join/leave/expiry
    STABLE: frozenset((PREPARING, EMPTY)),  # join, leave or expiry; the last member left
    DEAD: frozenset(),
}


class IllegalTransition(AssertionError):
    """A move ``TRANSITIONS`` does not allow: a bug in this module."""

EXPIRY_CHECK_S = 0.25  # how often session expiry is checked
NS_GROUP = "kafka.group"  # state-log namespace: (group,) -> group, (group, member) -> member
STORED_VERSION = 1

log = logging.getLogger("ferrymq.kafka.groups")

Change = tuple[str, Any, Any]
Save = Callable[[Sequence[Change]], Awaitable[None]]


class GroupError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(ke.NAMES.get(code, code))
        self.code = code


@dataclass
class Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    last_heartbeat: float = 0.0
    joining: bool = False  # a JoinGroup of this member is waiting for the round to complete
    join_done: trio.Event | None = None
    join_result: JoinResult | None = None
    sync_done: trio.Event | None = None

    def metadata(self, protocol: str) -> bytes:
        for name, meta in self.protocols:
            if name == protocol:
                return meta
        return b""


@dataclass(frozen=True, slots=True)
class JoinResult:
    error: int
    generation: int
    protocol: str | None
    leader: str
    member_id: str
    members: tuple[tuple[str, str | None, bytes], ...] = ()  # the leader's view


@dataclass
class Group:
    group_id: str
    state: GroupState = EMPTY
    generation: int = 0
    protocol_type: str | None = None
    protocol: str | None = None
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)  # ids handed out with MEMBER_ID_REQUIRED
    round: trio.Event | None = None  # set when the current join round should complete now
    sync_waiters: dict[str, trio.Event] = field(default_factory=dict)
    stored: set[str] = field(default_factory=set)  # member ids the state log holds
    dirty: bool = False  # the stored form is behind (an emptied group)

    def all_joined(self) -> bool:
        return all(m.joining for m in self.members.values())

    def move_to(self, new: GroupState) -> None:
        """Change state along ``TRANSITIONS``; raises IllegalTransition otherwise."""
        if new not in TRANSITIONS[self.state]:
            raise IllegalTransition(f"group {self.group_id}: {self.state} -> {new}")
        self.state = new


class Coordinator:
    """Every group of this broker. ``run`` must be started in a nursery (timers)."""

    def __init__(self, *, min_session_ms: int = 6000, max_session_ms: int = 1_800_000,
                 initial_rebalance_delay_ms: int = 0, clock: object = None,
                 save: Save | None = None) -> None:
        self.groups: dict[str, Group] = {}
        self.save = save
        self.min_session_ms = min_session_ms
        self.max_session_ms = max_session_ms
        self.initial_delay_s = initial_rebalance_delay_ms / 1000
        self._nursery: trio.Nursery | None = None
        self._ids = itertools.count(1)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            nursery.start_soon(self._expire_loop)
            task_status.started()
            await trio.sleep_forever()

    # ---------------------------------------------------------------- join

    def _new_member_id(self, client_id: str) -> str:
        return f"{client_id or 'member'}-{uuid.uuid4()}"

    async def join(self, group_id: str, member_id: str, group_instance_id: str | None,
                   client_id: str, client_host: str, session_timeout_ms: int,
                   rebalance_timeout_ms: int, protocol_type: str,
                   protocols: Sequence[tuple[str, bytes]], *, require_known_id: bool
                   ) -> JoinResult:
        """JoinGroup. ``require_known_id`` (v4+): a new member first gets its id with
        MEMBER_ID_REQUIRED and must join again with it."""
        if not group_id:
            return JoinResult(ke.INVALID_GROUP_ID, -1, None, "", member_id)
        if not self.min_session_ms <= session_timeout_ms <= self.max_session_ms:
            return JoinResult(ke.INVALID_SESSION_TIMEOUT, -1, None, "", member_id)
        if rebalance_timeout_ms < 0:
            rebalance_timeout_ms = session_timeout_ms
        g = self.groups.get(group_id)
        if g is None:
            g = self.groups[group_id] = Group(group_id)
        if not protocols or (g.members and g.protocol_type != protocol_type):
            return JoinResult(ke.INCONSISTENT_GROUP_PROTOCOL, -1, None, "", member_id)
        if g.members and not self._common_protocols(g, protocols):
            return JoinResult(ke.INCONSISTENT_GROUP_PROTOCOL, -1, None, "", member_id)
        if not member_id:
            if group_instance_id is not None:
                old = self._static(g, group_instance_id)
                if old is not None:  # static member restarted: it takes its old place
                    return await self._static_rejoin(g, old, client_id, client_host,
                                                     session_timeout_ms, rebalance_timeout_ms,
                                                     protocols)
            member_id = self._new_member_id(client_id)
            if require_known_id and group_instance_id is None:
                g.pending.add(member_id)
                return JoinResult(ke.MEMBER_ID_REQUIRED, -1, None, "", member_id)
        elif member_id not in g.members and member_id not in g.pending:
            if group_instance_id is not None and self._static(g, group_instance_id):
                return JoinResult(ke.FENCED_INSTANCE_ID, -1, None, "", member_id)
            return JoinResult(ke.UNKNOWN_MEMBER_ID, -1, None, "", member_id)
        g.pending.discard(member_id)
        m = g.members.get(member_id)
        now = trio.current_time()
        if m is None:
            m = Member(member_id, group_instance_id, client_id, client_host, session_timeout_ms,
                       rebalance_timeout_ms, protocol_type, list(protocols))
            g.members[member_id] = m
        else:
            m.protocols = list(protocols)
            m.session_timeout_ms = session_timeout_ms
            m.rebalance_timeout_ms = rebalance_timeout_ms
            m.client_id, m.client_host = client_id, client_host
        m.last_heartbeat = now
        g.protocol_type = protocol_type
        m.joining = True
        if m.join_done is None:
            m.join_done = trio.Event()
        # A retried join (the client timed out and asked again) waits on the same round
        # as the first, so both requests are answered.
        done = m.join_done
        m.join_result = None
        if g.state != PREPARING:
            self._prepare_rebalance(g, initial=g.state == EMPTY)
        elif g.all_joined() and g.round is not None:
            g.round.set()
        await done.wait()
        assert m.join_result is not None
        return m.join_result

    @staticmethod
    def _static(g: Group, group_instance_id: str) -> Member | None:
        return next((m for m in g.members.values() if m.group_instance_id == group_instance_id),
                    None)

    async def _static_rejoin(self, g: Group, old: Member, client_id: str, client_host: str,
                             session_timeout_ms: int, rebalance_timeout_ms: int,
                             protocols: Sequence[tuple[str, bytes]]) -> JoinResult:
        """A static member back with a new member id (KIP-345): the old id's requests are
        fenced from now on; its assignment stays. Stable with the same protocols and
        not the leader: the current generation at once, no rebalance."""
        new_id = self._new_member_id(client_id)
        if old.join_done is not None:  # the old incarnation's waiting join fails
            old.join_result = JoinResult(ke.FENCED_INSTANCE_ID, -1, None, "", old.member_id)
            old.join_done.set()
            old.join_done = None
        waiter = g.sync_waiters.pop(old.member_id, None)
        if waiter is not None:
            waiter.set()
        del g.members[old.member_id]
        unchanged = list(protocols) == list(old.protocols)
        old.member_id = new_id
        old.client_id, old.client_host = client_id, client_host
        old.session_timeout_ms, old.rebalance_timeout_ms = session_timeout_ms, rebalance_timeout_ms
        old.protocols = list(protocols)
        old.last_heartbeat = trio.current_time()
        g.members[new_id] = old
        was_leader = g.leader is None or g.leader not in g.members
        if was_leader:
            g.leader = new_id if g.state in (STABLE, COMPLETING) else g.leader
        if g.state == STABLE and unchanged and g.leader != new_id:
            g.dirty = True
            await self.save_dirty()
            return JoinResult(ke.NONE, g.generation, g.protocol, g.leader or "", new_id)
        # Otherwise it joins the round (a new one if none is going on).
        old.joining = True
        old.join_done = done = trio.Event()
        old.join_result = None
        if g.state != PREPARING:
            self._prepare_rebalance(g, initial=g.state == EMPTY)
        elif g.all_joined() and g.round is not None:
            g.round.set()
        await done.wait()
        assert old.join_result is not None
        return old.join_result

    def _fenced(self, g: Group, member_id: str, group_instance_id: str | None) -> bool:
        """A request of a static member's replaced incarnation."""
        if group_instance_id is None:
            return False
        m = self._static(g, group_instance_id)
        return m is not None and m.member_id != member_id

    def _common_protocols(self, g: Group, protocols: Sequence[tuple[str, bytes]]) -> set[str]:
        names = {p for p, _ in protocols}
        for m in g.members.values():
            names &= {p for p, _ in m.protocols}
        return names

    def _prepare_rebalance(self, g: Group, *, initial: bool = False) -> None:
        """Start a join round: every member must (re)join within the rebalance timeout."""
        self._fail_sync_waiters(g, ke.REBALANCE_IN_PROGRESS)
        g.move_to(PREPARING)
        g.round = trio.Event()
        timeout = max((m.rebalance_timeout_ms for m in g.members.values()), default=0) / 1000
        assert self._nursery is not None, "Coordinator.run is not running"
        self._nursery.start_soon(self._round_timer, g, g.round, timeout,
                                 self.initial_delay_s if initial else 0.0)

    async def _round_timer(self, g: Group, round_: trio.Event, timeout: float,
                           delay: float) -> None:
        if delay:
            await trio.sleep(delay)
        if g.all_joined():
            round_.set()
        with trio.move_on_after(max(0.0, timeout - delay)):
            await round_.wait()
        if g.round is round_ and g.state == PREPARING:
            self._complete_join(g)

    def _complete_join(self, g: Group) -> None:
        for mid in [mid for mid, m in g.members.items() if not m.joining]:
            self._remove(g, mid, rebalance=False)  # did not rejoin in time
        g.round = None
        if not g.members:
            g.move_to(EMPTY)
            g.generation += 1
            g.protocol = g.leader = None
            g.dirty = True
            self._save_soon()
            return
        g.generation += 1
        g.protocol = self._choose_protocol(g)
        if g.leader not in g.members:
            g.leader = next(iter(g.members))
        g.move_to(COMPLETING)
        everyone = tuple((m.member_id, m.group_instance_id, m.metadata(g.protocol))
                         for m in g.members.values())
        for m in g.members.values():
            m.joining = False
            m.last_heartbeat = trio.current_time()
            m.join_result = JoinResult(ke.NONE, g.generation, g.protocol, g.leader, m.member_id,
                                       everyone if m.member_id == g.leader else ())
            if m.join_done is not None:
                m.join_done.set()
                m.join_done = None

    def _choose_protocol(self, g: Group) -> str:
        common: set[str] | None = None
        for m in g.members.values():
            names = {p for p, _ in m.protocols}
            common = names if common is None else common & names
        candidates = common or set()
        votes: dict[str, int] = {}
        for m in g.members.values():
            for p, _ in m.protocols:
                if p in candidates:
                    votes[p] = votes.get(p, 0) + 1
                    break
        leader = g.members.get(g.leader or "") or next(iter(g.members.values()))
        order = [p for p, _ in leader.protocols]
        return max(votes, key=lambda p: (votes[p], -order.index(p) if p in order else 0))

    # ---------------------------------------------------------------- sync

    async def sync(self, group_id: str, generation: int, member_id: str,
                   assignments: Sequence[tuple[str, bytes]],
                   group_instance_id: str | None = None) -> tuple[int, bytes]:
        """SyncGroup: (error, this member's assignment). The leader's call carries the
        assignment (answered once the group is stored); the others wait for it."""
        g = self.groups.get(group_id)
        if g is not None and self._fenced(g, member_id, group_instance_id):
            return ke.FENCED_INSTANCE_ID, b""
        if g is None or member_id not in g.members:
            return ke.UNKNOWN_MEMBER_ID, b""
        if generation != g.generation:
            return ke.ILLEGAL_GENERATION, b""
        if g.state == PREPARING:
            return ke.REBALANCE_IN_PROGRESS, b""
        m = g.members[member_id]
        m.last_heartbeat = trio.current_time()
        if g.state == STABLE:
            return ke.NONE, m.assignment
        # CompletingRebalance
        if member_id == g.leader:
            given = dict(assignments)
            for mm in g.members.values():
                mm.assignment = given.get(mm.member_id, b"")
            g.move_to(STABLE)
            waiters, g.sync_waiters = g.sync_waiters, {}
            for ev in waiters.values():
                ev.set()
            g.dirty = True
            await self.save_dirty()
            return ke.NONE, m.assignment
        ev = g.sync_waiters.setdefault(member_id, trio.Event())
        await ev.wait()
        if g.state != STABLE or g.generation != generation or member_id not in g.members:
            return ke.REBALANCE_IN_PROGRESS, b""
        return ke.NONE, g.members[member_id].assignment

    def _fail_sync_waiters(self, g: Group, code: int) -> None:
        waiters, g.sync_waiters = g.sync_waiters, {}
        for ev in waiters.values():
            ev.set()  # they see the state change and answer REBALANCE_IN_PROGRESS

    # ---------------------------------------------------------------- heartbeat, leave

    def heartbeat(self, group_id: str, generation: int, member_id: str,
                  group_instance_id: str | None = None) -> int:
        g = self.groups.get(group_id)
        if g is not None and self._fenced(g, member_id, group_instance_id):
            return ke.FENCED_INSTANCE_ID
        if g is None or member_id not in g.members:
            return ke.UNKNOWN_MEMBER_ID
        g.members[member_id].last_heartbeat = trio.current_time()
        if g.state == PREPARING:
            return ke.REBALANCE_IN_PROGRESS
        if generation != g.generation:
            return ke.ILLEGAL_GENERATION
        return ke.NONE

    def leave(self, group_id: str, member_id: str, group_instance_id: str | None = None) -> int:
        g = self.groups.get(group_id)
        if g is None:
            return ke.UNKNOWN_MEMBER_ID
        if not member_id and group_instance_id is not None:
            found = next((m.member_id for m in g.members.values()
                          if m.group_instance_id == group_instance_id), None)
            if found is None:
                return ke.UNKNOWN_MEMBER_ID
            member_id = found
        elif self._fenced(g, member_id, group_instance_id):
            return ke.FENCED_INSTANCE_ID
        if member_id not in g.members:
            return ke.UNKNOWN_MEMBER_ID
        self._remove(g, member_id)
        return ke.NONE

    def _remove(self, g: Group, member_id: str, *, rebalance: bool = True) -> None:
        m = g.members.pop(member_id, None)
        if m is None:
            return
        if m.join_done is not None:  # a removed member's waiting join fails
            m.join_result = JoinResult(ke.UNKNOWN_MEMBER_ID, -1, None, "", member_id)
            m.join_done.set()
        if g.leader == member_id:
            g.leader = None
        if not rebalance:
            return
        if not g.members:
            if g.state != EMPTY:
                g.move_to(EMPTY)
            g.protocol = g.leader = None
            g.generation += 1
            g.dirty = True
            self._save_soon()
            self._fail_sync_waiters(g, ke.REBALANCE_IN_PROGRESS)
            if g.round is not None:
                g.round.set()
        elif g.state in (STABLE, COMPLETING):
            self._prepare_rebalance(g)
        elif g.state == PREPARING and g.all_joined() and g.round is not None:
            g.round.set()

    async def _expire_loop(self) -> None:
        while True:
            await trio.sleep(EXPIRY_CHECK_S)
            now = trio.current_time()
            for g in list(self.groups.values()):
                for m in list(g.members.values()):
                    if not m.joining and now - m.last_heartbeat > m.session_timeout_ms / 1000:
                        self._remove(g, m.member_id)

    # ---------------------------------------------------------------- offsets, admin

    def check_commit(self, group_id: str, generation: int, member_id: str,
                     group_instance_id: str | None = None) -> int:
        """Whether a commit from (generation, member) is accepted (Kafka's rules: a
        "simple" commit with generation -1 only while the group has no members)."""
        g = self.groups.get(group_id)
        if g is not None and self._fenced(g, member_id, group_instance_id):
            return ke.FENCED_INSTANCE_ID
        if generation < 0 and not member_id:
            return ke.NONE if g is None or not g.members else ke.UNKNOWN_MEMBER_ID
        if g is None or member_id not in g.members:
            return ke.UNKNOWN_MEMBER_ID
        if generation != g.generation:
            return ke.ILLEGAL_GENERATION
        if g.state == COMPLETING:
            return ke.REBALANCE_IN_PROGRESS
        g.members[member_id].last_heartbeat = trio.current_time()
        return ke.NONE

    def describe(self, group_id: str) -> Group | None:
        return self.groups.get(group_id)

    async def forget(self, group_id: str) -> int:
        g = self.groups.get(group_id)
        if g is not None and g.members:
            return ke.NON_EMPTY_GROUP
        self.groups.pop(group_id, None)
        if g is not None and self.save is not None:
            await self.save([(NS_GROUP, (group_id, mid), None) for mid in sorted(g.stored)]
                            + [(NS_GROUP, (group_id,), None)])
        return ke.NONE

    # ---------------------------------------------------------------- persistence

    def _save_soon(self) -> None:
        """A change made where nothing can wait (a member expired or left): stored by a
        task of the coordinator's nursery."""
        if self.save is not None and self._nursery is not None:
            self._nursery.start_soon(self.save_dirty)

    async def save_dirty(self) -> None:
        """Store every group whose stored form is behind. A failure is logged: the group
        lives on in memory, and a restart brings back its previous stored form."""
        if self.save is None:
            return
        changes: list[Change] = []
        for g in self.groups.values():
            if g.dirty:
                changes += self._changes(g)
                g.dirty = False
        if not changes:
            return
        try:
            await self.save(changes)
        except Exception as exc:  # the broker's error (a failed store): count and go on
            log.error("could not store Kafka group membership: %s", exc)

    def _changes(self, g: Group) -> list[Change]:
        gid = g.group_id
        live = set(g.members) if g.state == STABLE else set()
        out: list[Change] = [(NS_GROUP, (gid, mid), None) for mid in sorted(g.stored - live)]
        for mid in sorted(live):
            m = g.members[mid]
            out.append((NS_GROUP, (gid, mid), [
                m.group_instance_id, m.client_id, m.client_host, m.session_timeout_ms,
                m.rebalance_timeout_ms, m.protocol_type, [[n, meta] for n, meta in m.protocols],
                m.assignment]))
        g.stored = live
        state = STABLE if live else EMPTY
        out.append((NS_GROUP, (gid,), [STORED_VERSION, state.value, g.generation,
                                       g.protocol_type, g.protocol,
                                       g.leader if live else None]))
        return out

    def restore(self, items: Iterable[tuple[Any, Any]]) -> int:
        """Rebuild the groups the state log holds (start-up, before any request). Every
        member gets one session timeout from now to show up. Returns the member count."""
        headers: dict[str, Any] = {}
        members: dict[str, dict[str, Any]] = {}
        for key, value in items:
            if not isinstance(key, tuple) or not key:
                continue
            if len(key) == 1:
                headers[key[0]] = value
            elif len(key) == 2:
                members.setdefault(key[0], {})[key[1]] = value
        now = trio.current_time()
        n = 0
        for gid, head in headers.items():
            try:
                _version, state, generation, ptype, protocol, leader = head
                g = Group(gid, generation=generation, protocol_type=ptype)
                for mid, v in sorted(members.get(gid, {}).items()):
                    inst, cid, host, session, rebalance, mptype, protos, assignment = v
                    g.members[mid] = Member(mid, inst, cid, host, session, rebalance, mptype,
                                            [(str(p), bytes(meta)) for p, meta in protos],
                                            bytes(assignment), now)
                    g.stored.add(mid)
            except (TypeError, ValueError) as exc:
                log.error("stored Kafka group %r is unreadable (%s): forgotten", gid, exc)
                continue
            if g.members and state == STABLE.value:
                g.state, g.protocol = STABLE, protocol
                g.leader = leader if leader in g.members else next(iter(g.members))
            self.groups[gid] = g
            n += len(g.members)
        return n
