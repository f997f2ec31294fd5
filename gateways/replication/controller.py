"""The controller: a broker's membership of its group, decided in etcd (docs/cluster.md).

One ``Controller`` per process. It holds an etcd lease (kept alive every third
of its TTL) with the member key bound to it, and runs *lives* of the core: it
decides the role from etcd — follow the master the leader key names, or, when
there is none and this node may stand (in the in-sync set, the group's first
master, or unclean election on), win an election by one transaction — then
opens the core in that role (``Broker.open(config, membership)``) with the doors
and the replication stream on top, until the role must change; then it closes
the core and decides again. A role change is a restart of the core: promotion
rebuilds the services from the copied log, a truncation rolls the state back by
recovery.

Fencing: after every keep-alive etcd acknowledged, the core's lease deadline
becomes the keep-alive's send time + TTL − ``fence_margin``; the core refuses
every acknowledgement after it (``Paths``), and a task fences the master when it
passes. A keep-alive answered with TTL 0 (the lease is gone) ends the life.

etcd keys under ``<prefix>/groups/<broker_name>/``: ``state`` (epoch, master,
isr; changed only by transactions comparing its mod revision), ``leader``
(bound to the master's lease), ``members/<node>`` (bound to each member's).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from ...core.broker import Broker
from ...core.replication import Membership, Role
from ..config import ClusterConfig, ServerConfig
from .etcd import EtcdClient, EtcdError, KeyValue, b64
from .master import ReplicationDoor
from .slave import CannotFollow, MasterMoved, NeedsTruncation, follow
from .view import ClusterView

log = logging.getLogger("ferrymq.cluster")

ISR_CHECK_S = 0.1  # how often the master looks at its in-sync set
DECIDE_RETRY_S = 0.2  # a pause after a failed look at etcd
HANDOVER_CATCH_UP_S = 5.0  # a master handing over waits this long for its successor
WATCH_S = 2.0  # a watch of the group's keys is renewed this often (each wakes at a change)
LEASE_NOT_FOUND = "requested lease not found"  # etcd's error for a put under an expired lease

StartDoors = Callable[[Broker, trio.Nursery, ClusterView], Awaitable[dict[str, int]]]
Announce = Callable[[dict[str, Any]], None]


@dataclass(frozen=True, slots=True)
class GroupState:
    """The group's key in etcd: who is master in which epoch, and who is in sync."""

    epoch: int
    master: str
    isr: frozenset[str]
    mod_revision: int = 0
    handover: str = ""  # ``ferrymq cluster elect``: the member the master hands over to

    def to_json(self) -> str:
        doc: dict[str, Any] = {"epoch": self.epoch, "master": self.master,
                               "isr": sorted(self.isr)}
        if self.handover:
            doc["handover"] = self.handover
        return json.dumps(doc)

    @classmethod
    def from_kv(cls, kv: KeyValue) -> GroupState:
        doc = kv.json()
        return cls(int(doc["epoch"]), str(doc["master"]), frozenset(doc.get("isr", ())),
                   kv.mod_revision, str(doc.get("handover") or ""))


@dataclass
class LifeEnd:
    """Why a life of the core ended (what the next decision must know)."""

    reason: str
    truncate_to: int | None = None


@dataclass
class Keys:
    prefix: str
    group: str
    state: str = field(init=False)
    leader: str = field(init=False)
    members: str = field(init=False)

    def __post_init__(self) -> None:
        base = f"{self.prefix.rstrip('/')}/groups/{self.group}"
        self.state = f"{base}/state"
        self.leader = f"{base}/leader"
        self.members = f"{base}/members/"

    def member(self, node: str) -> str:
        return self.members + node


class Controller:
    """See the module docstring."""

    def __init__(self, config: ServerConfig, etcd: EtcdClient | None = None) -> None:
        assert config.cluster is not None
        self.config = config
        self.cluster: ClusterConfig = config.cluster
        self.node = self.cluster.node_id
        self.etcd = etcd or EtcdClient(self.cluster.etcd, self.cluster.etcd_timeout_ms / 1000)
        prefix = self.cluster.etcd_prefix or f"/ferrymq/{config.broker.cluster_name}"
        self.keys = Keys(prefix, config.broker.broker_name)
        self.view = ClusterView(prefix, config.broker.broker_name, self.node)
        self.ttl = self.cluster.lease_ttl_s
        self.margin = self.cluster.fence_margin_ms / 1000
        self.lease = 0
        self.deadline = -math.inf  # trio clock: the lease is surely alive until then
        self.lease_lost = trio.Event()
        self.broker: Broker | None = None
        self.life = 0
        self.role = Role.STANDALONE
        self.epoch = 0
        self.last_confirm = 0  # the confirm offset last learned (as a slave, or a master)
        self.bound: dict[str, int] = {}
        self.replication_port = 0
        self._state_rev = 0
        self._handover_seen: tuple[int, float] | None = None  # (state revision, first seen)
        self._stepping_down = False  # this life's master hands over (``cluster elect``)

    # ================================================================ the process

    async def run(self, start_doors: StartDoors, announce: Announce) -> None:
        """Run lives of the core until cancelled."""
        truncate_to: int | None = None
        try:
            while True:
                await self._new_lease()
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._keepalive)
                    nursery.start_soon(self._watch_view)
                    while not self.lease_lost.is_set():
                        membership = await self._decide()
                        if membership is None:
                            break  # the lease went while deciding
                        end = await self._life(membership, truncate_to, start_doors, announce)
                        truncate_to = end.truncate_to
                        log.warning("life %d (%s, epoch %d) ended: %s", self.life,
                                    membership.role.value, membership.epoch, end.reason)
                    nursery.cancel_scope.cancel()
        finally:
            # A clean stop (the core is closed by now): give the lease back, so that the
            # leader key goes at once and a slave is elected without waiting for the TTL.
            with trio.CancelScope(shield=True), trio.move_on_after(1), \
                    contextlib.suppress(EtcdError):
                await self.etcd.revoke(self.lease)

    async def _new_lease(self) -> None:
        """A fresh lease (retrying while etcd is away) and this node's member key."""
        self.lease_lost = trio.Event()
        delay = 0.1
        while True:
            try:
                t_sent = trio.current_time()
                self.lease, ttl = await self.etcd.grant(self.ttl)
                self.deadline = t_sent + ttl - self.margin
                await self._publish_member()
                return
            except EtcdError as exc:
                log.warning("etcd: cannot get a lease (%s); retrying", exc)
                await trio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _publish_member(self) -> None:
        host = self.config.broker.store_host
        doc = {"node": self.node, "group": self.config.broker.broker_name, "host": host,
               "ports": self.bound, "replication": f"{host}:{self.replication_port}"
               if self.replication_port else self.cluster.replication_listen,
               "role": self.role.value, "epoch": self.epoch, "life": self.life}
        await self.etcd.put(self.keys.member(self.node), json.dumps(doc), self.lease)

    async def _publish_member_in_life(self, nursery: trio.Nursery) -> None:
        """Publish this life's member key (its role and door ports, which route clients).
        A lease etcd no longer knows (it expired while the core restarted, on a machine
        too busy to keep it alive) ends the term, as the keep-alive would find; any other
        etcd error is retried in the background: the life goes on without its key being
        current (clients find the master a little later), rather than the process
        exiting."""
        try:
            await self._publish_member()
        except EtcdError as exc:
            if LEASE_NOT_FOUND in str(exc):
                log.error("the etcd lease is gone: this term is over")
                if self.broker is not None:
                    self.broker.fence("the etcd lease expired")
                self.lease_lost.set()
                return
            log.warning("etcd: cannot publish this member (%s); retrying", exc)
            nursery.start_soon(self._republish_member)

    async def _republish_member(self) -> None:
        delay = 0.1
        while not self.lease_lost.is_set():
            await trio.sleep(delay)
            try:
                await self._publish_member()
                return
            except EtcdError as exc:
                if LEASE_NOT_FOUND in str(exc):
                    self.lease_lost.set()
                    return
                delay = min(delay * 2, 1.0)

    async def _keepalive(self) -> None:
        """Every third of the TTL: renew the lease; on success move the fencing deadline
        (send time + TTL − margin); a lease etcd no longer knows ends this life."""
        interval = self.ttl / 3
        while True:
            t_sent = trio.current_time()
            try:
                with trio.fail_after(interval):
                    ttl = await self.etcd.keepalive(self.lease)
            except (EtcdError, trio.TooSlowError) as exc:
                log.warning("etcd keep-alive failed: %s (fenced at the lease deadline)", exc)
                await trio.sleep_until(t_sent + interval / 3)
                continue
            if ttl <= 0:
                log.error("the etcd lease is gone: this term is over")
                if self.broker is not None:
                    self.broker.fence("the etcd lease expired")
                self.lease_lost.set()
                return
            self.deadline = max(self.deadline, t_sent + ttl - self.margin)
            if self.broker is not None and not self._stepping_down:  # (a step-down stays fenced)
                self.broker.set_lease_deadline(self.deadline)
            await trio.sleep_until(t_sent + interval)

    async def _watch_view(self) -> None:
        """Keep ``self.view`` (every group's master and members, for the doors' routes)
        as etcd has it: read the groups, then wait for a change after that read."""
        base = self.view.prefix
        while True:
            try:
                kvs, revision = await self.etcd.range(base, prefix=True)
                self.view.load((kv.key, kv.value) for kv in kvs)
            except EtcdError as exc:
                log.warning("etcd: cannot read the cluster's groups: %s", exc)
                revision = 0
            if not revision:
                await trio.sleep(DECIDE_RETRY_S)
                continue
            with trio.move_on_after(WATCH_S):
                try:
                    async for _ in self.etcd.watch(base, prefix=True,
                                                   start_revision=revision + 1):
                        break
                except EtcdError:
                    await trio.sleep(DECIDE_RETRY_S)

    # ================================================================ deciding

    async def _read_group(self) -> tuple[GroupState | None, KeyValue | None,
                                         dict[str, dict[str, Any]], int]:
        """(state, leader key, members, etcd's revision of this read)."""
        base = self.keys.state.rsplit("/", 1)[0] + "/"
        kvs, revision = await self.etcd.range(base, prefix=True)
        state = leader = None
        members: dict[str, dict[str, Any]] = {}
        for kv in kvs:
            if kv.key == self.keys.state:
                state = GroupState.from_kv(kv)
            elif kv.key == self.keys.leader:
                leader = kv
            elif kv.key.startswith(self.keys.members):
                try:
                    members[kv.key[len(self.keys.members):]] = kv.json()
                except ValueError:
                    continue
        return state, leader, members, revision

    async def _decide(self) -> Membership | None:
        """Follow the master etcd names, or win an election; wait while neither can be."""
        while not self.lease_lost.is_set():
            try:
                state, leader, members, revision = await self._read_group()
                if leader is not None:
                    doc = leader.json()
                    master = str(doc["node"])
                    if master == self.node:
                        if leader.lease == self.lease and state is not None:
                            self._state_rev = state.mod_revision
                            return Membership(Role.MASTER, self.node, state.epoch, state.isr,
                                              self.last_confirm)
                        # Our own leader key from an earlier lease: it expires with it.
                    elif master in members and state is not None:
                        return Membership(Role.SLAVE, self.node, state.epoch, state.isr,
                                          master=master)
                elif self._defer_to_handover(state):
                    pass  # ``cluster elect`` named another member: let it win first
                elif state is None or self.node in state.isr or self.cluster.unclean_election:
                    won = await self._campaign(state)
                    if won is not None:
                        return won
            except (EtcdError, ValueError, KeyError) as exc:
                log.warning("cannot read the group from etcd: %s", exc)
                revision = 0
            await self._wait_for_change(revision)
        return None

    def _defer_to_handover(self, state: GroupState | None) -> bool:
        """True while a handover (``ferrymq cluster elect``) names another member and it
        has not had two lease TTLs to win: only it campaigns. Past that, the named member
        is taken to be gone and the group elects as after any master's loss."""
        if state is None or not state.handover or state.handover == self.node:
            self._handover_seen = None
            return False
        now = trio.current_time()
        if self._handover_seen is None or self._handover_seen[0] != state.mod_revision:
            self._handover_seen = (state.mod_revision, now)
        return now - self._handover_seen[1] < 2 * self.ttl

    async def _step_down(self, broker: Broker, state: GroupState, leader: KeyValue) -> None:
        """Hand the mastership to ``state.handover`` cleanly: stop acknowledging (fence),
        give the member a moment to hold the whole log (it is in sync: it holds every
        acknowledged write already; in async mode this keeps the rest too), then delete
        the leader key — by a transaction that only succeeds while it is ours."""
        self._stepping_down = True  # no keep-alive lifts this fence (``_life`` resets it)
        broker.fence(f"handing the mastership over to {state.handover}")
        end = broker.replication_position().end
        with trio.move_on_after(HANDOVER_CATCH_UP_S):
            while not any(r.node == state.handover and r.acked >= end
                          for r in broker.replica_status()):
                await trio.sleep(0.02)
        await self.etcd.txn(
            [{"key": b64(self.keys.leader), "target": "MOD",
              "mod_revision": str(leader.mod_revision)}],
            [{"request_delete_range": {"key": b64(self.keys.leader)}}])

    async def _wait_for_change(self, revision: int, timeout: float = WATCH_S) -> None:
        """Until a key of the group changes after the last read (a watch from the next
        revision: no change in between is missed), or ``timeout`` (a safety net)."""
        if not revision:  # etcd could not be read: look again soon
            await trio.sleep(DECIDE_RETRY_S)
            return
        base = self.keys.state.rsplit("/", 1)[0] + "/"
        with trio.move_on_after(timeout):
            try:
                async for _ in self.etcd.watch(base, prefix=True, start_revision=revision + 1):
                    return
            except EtcdError:
                await trio.sleep(DECIDE_RETRY_S)

    async def _campaign(self, state: GroupState | None) -> Membership | None:
        """One election transaction: only if the state key is as read and no leader key
        exists. The new in-sync set is the old one without the old master, and us."""
        if state is None:
            new = GroupState(1, self.node, frozenset({self.node}))
            cmp_state = {"key": b64(self.keys.state), "target": "CREATE", "create_revision": "0"}
        else:
            isr = (state.isr - {state.master}) | {self.node}
            new = GroupState(state.epoch + 1, self.node, isr)
            cmp_state = {"key": b64(self.keys.state), "target": "MOD",
                         "mod_revision": str(state.mod_revision)}
        ok, doc = await self.etcd.txn(
            [cmp_state, {"key": b64(self.keys.leader), "target": "CREATE",
                         "create_revision": "0"}],
            [{"request_put": {"key": b64(self.keys.state), "value": b64(new.to_json())}},
             {"request_put": {"key": b64(self.keys.leader), "lease": str(self.lease),
                              "value": b64(json.dumps({"node": self.node,
                                                       "epoch": new.epoch}))}}])
        if not ok:
            return None
        self._state_rev = int(doc.get("header", {}).get("revision", 0))
        log.warning("elected master of %s in epoch %d (in sync: %s)", self.keys.group,
                    new.epoch, sorted(new.isr))
        return Membership(Role.MASTER, self.node, new.epoch, new.isr, self.last_confirm)

    # ================================================================ a life of the core

    async def _life(self, m: Membership, truncate_to: int | None, start_doors: StartDoors,
                    announce: Announce) -> LifeEnd:
        self.life += 1
        if truncate_to is not None:
            await self._truncate(m, truncate_to)
        ended: list[LifeEnd] = []
        done = trio.Event()

        def end(reason: LifeEnd) -> None:
            if not ended:
                ended.append(reason)
            done.set()

        self._stepping_down = False
        async with Broker.open(self.config.broker, m) as broker:
            self.broker = broker
            self.role, self.epoch = m.role, m.epoch
            broker.set_lease_deadline(self.deadline)
            try:
                async with trio.open_nursery() as nursery:
                    if m.role is Role.MASTER:
                        door = ReplicationDoor(broker, self.cluster.max_frame_bytes)
                        host, port = self.cluster.replication_address
                        self.replication_port = await nursery.start(door.serve, host, port)
                        nursery.start_soon(self._fence, broker)
                        nursery.start_soon(self._manage_isr, broker, end)
                    self.bound = await start_doors(broker, nursery, self.view)
                    await self._publish_member_in_life(nursery)
                    announce({"role": m.role.value, "epoch": m.epoch, "node": self.node,
                              "life": self.life, "master": m.master or self.node,
                              "replication": self.replication_port})
                    if m.role is Role.SLAVE:
                        nursery.start_soon(self._follow, broker, m, end)
                    nursery.start_soon(self._watch_term, m, end)
                    nursery.start_soon(self._on_lease_lost, end)
                    await done.wait()
                    nursery.cancel_scope.cancel()
            finally:
                self.last_confirm = max(self.last_confirm,
                                        broker.replication_position().confirm)
                if ended and ended[0].truncate_to is not None:
                    broker.truncate_log(ended[0].truncate_to)
                self.broker = None
                self.replication_port = 0
        return ended[0] if ended else LifeEnd("cancelled")

    async def _truncate(self, m: Membership, end: int) -> None:
        """Nothing to do here: the core cut its log at close (``truncate_log``)."""

    async def _on_lease_lost(self, end: Callable[[LifeEnd], None]) -> None:
        await self.lease_lost.wait()
        end(LifeEnd("the etcd lease was lost"))

    async def _fence(self, broker: Broker) -> None:
        """The master stops acknowledging when the lease deadline passes (Paths also
        checks it at every acknowledgement; this fails the writes waiting)."""
        while True:
            now = trio.current_time()
            if now >= self.deadline:
                broker.fence("the lease deadline passed without an acknowledged keep-alive")
                log.error("fenced: no keep-alive acknowledged in time")
                while trio.current_time() >= self.deadline:
                    await trio.sleep(0.05)
                if not self._stepping_down:
                    broker.set_lease_deadline(self.deadline)  # a late keep-alive lifts it
                continue
            await trio.sleep_until(self.deadline)

    async def _follow(self, broker: Broker, m: Membership,
                      end: Callable[[LifeEnd], None]) -> None:
        while True:
            try:
                _, _, members, _ = await self._read_group()
                addr = str(members.get(m.master, {}).get("replication", ""))
                host, _, port = addr.rpartition(":")
                if not host or not port.isdigit() or int(port) == 0:
                    # The master publishes its replication port once its door listens.
                    await trio.sleep(DECIDE_RETRY_S)
                    continue
                await follow(broker, host, int(port), max_frame=self.cluster.max_frame_bytes)
            except NeedsTruncation as exc:
                end(LifeEnd("the log diverged from the master's", exc.end))
                return
            except MasterMoved as exc:
                log.info("master moved: %s", exc)
                await trio.sleep(DECIDE_RETRY_S)
                end(LifeEnd(f"master moved: {exc}"))
                return
            except CannotFollow as exc:
                log.error("cannot follow %s: %s", m.master, exc)
                await trio.sleep(5)
            except EtcdError as exc:
                log.warning("etcd: %s", exc)
                await trio.sleep(DECIDE_RETRY_S)

    async def _watch_term(self, m: Membership, end: Callable[[LifeEnd], None]) -> None:
        """The life ends when the group's master or epoch is no longer this life's."""
        while True:
            revision = 0
            try:
                state, leader, _, revision = await self._read_group()
                if m.role is Role.MASTER:
                    if state is not None and state.handover and state.master == self.node \
                            and state.handover != self.node and state.epoch == m.epoch \
                            and self.broker is not None and leader is not None \
                            and leader.lease == self.lease:
                        await self._step_down(self.broker, state, leader)
                        end(LifeEnd(f"handed the mastership over to {state.handover}"))
                        return
                    if state is None or state.master != self.node or state.epoch != m.epoch \
                            or leader is None or leader.lease != self.lease:
                        if self.broker is not None:
                            self.broker.fence("another node is master now")
                        end(LifeEnd("this node is no longer the master"))
                        return
                elif leader is None or str(leader.json().get("node")) != m.master \
                        or state is None or state.epoch != m.epoch:
                    end(LifeEnd("the master changed"))
                    return
            except (EtcdError, ValueError) as exc:
                log.warning("etcd: %s", exc)
            await self._wait_for_change(revision)

    async def _manage_isr(self, broker: Broker, end: Callable[[LifeEnd], None]) -> None:
        """The master: change the in-sync set in etcd as the acks call for, by a
        transaction on the state key's mod revision (a master whose term is over
        cannot change it)."""
        while True:
            await trio.sleep(ISR_CHECK_S)
            remove, add = broker.isr_proposals()
            if not remove and not add:
                continue
            current = broker.in_sync_replicas()
            isr = (current - remove) | add
            if add:
                broker.propose_isr_add(add)
            new = GroupState(self.epoch, self.node, frozenset(isr))
            try:
                ok, doc = await self.etcd.txn(
                    [{"key": b64(self.keys.state), "target": "MOD",
                      "mod_revision": str(self._state_rev)}],
                    [{"request_put": {"key": b64(self.keys.state), "value": b64(new.to_json())}}])
            except EtcdError as exc:
                log.warning("etcd: cannot change the in-sync set: %s", exc)
                broker.cancel_isr_add(add)
                continue
            if ok:
                self._state_rev = int(doc.get("header", {}).get("revision", 0))
                broker.isr_changed(isr)
                log.warning("in-sync set of %s is now %s (removed %s, added %s)",
                            self.keys.group, sorted(isr), sorted(remove), sorted(add))
                continue
            broker.cancel_isr_add(add)
            try:
                state, _, _, _ = await self._read_group()
            except EtcdError:
                continue
            if state is None or state.master != self.node or state.epoch != self.epoch:
                end(LifeEnd("the group's state names another master"))
                return
            self._state_rev = state.mod_revision
            broker.isr_changed(state.isr)


async def run_cluster(config: ServerConfig, start_doors: StartDoors, announce: Announce) -> None:
    """The server's entry point for a broker with a [cluster] table."""
    await Controller(config).run(start_doors, announce)
