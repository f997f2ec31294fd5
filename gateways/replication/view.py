"""What the doors need to route clients to masters (docs/cluster.md, "Clients follow the master").

``ClusterView`` is the controller's picture of every broker group under the
cluster's etcd prefix: each group's master, epoch, in-sync set and members with
their hosts and door ports. The controller refreshes it from etcd (a read of
``<prefix>/groups/``, then a watch); the doors read it without I/O: the Kafka
door names each group's master in Metadata and FindCoordinator. Plain data: no
etcd, no socket here.

Identities. RocketMQ routes know a group by its broker name and its members by
brokerId (0 is the master); Kafka knows brokers by an int32 node id. Every member
is a Kafka broker of its own, ``member_node_id(broker_name, node_id)``, whatever
its role: the master's id leads the group's partitions, and a failover moves the
leadership to another id, as a Kafka leader change does (an id that followed the
mastership would leave a client that knows only that id with a dead address and
no one to ask: docs/cluster.md, "Kafka clients"). ``group_node_id(broker_name)``
names the group itself. A slave registers with the NameServer under
``slave_broker_id(node_id)``, and every member with its epoch in ``EPOCH_FIELD``.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

MAX_SLAVE_ID = 1 << 20
# The extField of REGISTER_BROKER carrying a group member's epoch (RocketMQ's NameServers
# ignore fields they do not know): the NameServer keeps a later epoch's master listed.
EPOCH_FIELD = "ferryEpoch"


def group_node_id(broker_name: str) -> int:
    """The Kafka node id of a broker group: stable, positive, from its name alone (every
    member computes the same one without asking anyone)."""
    return zlib.crc32(broker_name.encode()) & 0x7FFFFFFF or 1


def member_node_id(broker_name: str, node_id: str) -> int:
    """The Kafka node id of one member of a group: stable across its roles and lives,
    positive, computed from the names alone by anyone who knows them."""
    return zlib.crc32(f"{broker_name}/{node_id}".encode()) & 0x7FFFFFFF or 1


def slave_broker_id(node_id: str) -> int:
    """The RocketMQ brokerId a slave registers under: its node id when that is a
    positive number (RocketMQ's own convention: 1, 2, ...), else a stable number
    derived from it; never 0, which is the master's."""
    if node_id.isdigit() and 0 < int(node_id) < MAX_SLAVE_ID:
        return int(node_id)
    return 1 + zlib.crc32(node_id.encode()) % (MAX_SLAVE_ID - 1)


@dataclass(frozen=True, slots=True)
class Member:
    node: str
    host: str
    ports: dict[str, int]
    role: str
    epoch: int


@dataclass(frozen=True, slots=True)
class GroupView:
    name: str
    epoch: int = 0
    master: str = ""  # the node holding the leader key; "" while there is none
    isr: tuple[str, ...] = ()
    members: dict[str, Member] = field(default_factory=dict)

    @property
    def node_id(self) -> int:
        return group_node_id(self.name)

    def master_member(self) -> Member | None:
        return self.members.get(self.master) if self.master else None

    def member_id(self, node: str) -> int:
        """The Kafka node id of member ``node`` of this group."""
        return member_node_id(self.name, node)


class ClusterView:
    """Every group under one etcd prefix, as last read; ``version`` grows at each change."""

    def __init__(self, prefix: str, own_group: str, own_node: str = "") -> None:
        self.prefix = prefix.rstrip("/") + "/groups/"
        self.own_group = own_group
        self.own_node = own_node  # this broker's node id ("" for an operator's view)
        self.groups: dict[str, GroupView] = {}
        self.version = 0

    def load(self, kvs: Iterable[tuple[str, bytes]]) -> None:
        """Replace the view by the keys read under the prefix (key, value) — the state,
        leader and member keys of every group; malformed values are skipped."""
        states: dict[str, dict[str, Any]] = {}
        leaders: dict[str, str] = {}
        members: dict[str, dict[str, Member]] = {}
        for key, value in kvs:
            if not key.startswith(self.prefix):
                continue
            parts = key[len(self.prefix):].split("/")
            try:
                doc = json.loads(value)
                if len(parts) == 2 and parts[1] == "state":
                    states[parts[0]] = doc
                elif len(parts) == 2 and parts[1] == "leader":
                    leaders[parts[0]] = str(doc["node"])
                elif len(parts) == 3 and parts[1] == "members":
                    ports = {str(k): int(v) for k, v in dict(doc.get("ports") or {}).items()}
                    members.setdefault(parts[0], {})[parts[2]] = Member(
                        parts[2], str(doc.get("host", "")), ports, str(doc.get("role", "")),
                        int(doc.get("epoch", 0)))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        groups = {}
        for name in sorted(set(states) | set(leaders) | set(members)):
            st = states.get(name, {})
            groups[name] = GroupView(name, int(st.get("epoch", 0)), leaders.get(name, ""),
                                     tuple(sorted(st.get("isr", ()))), members.get(name, {}))
        if groups != self.groups:
            self.groups = groups
            self.version += 1

    def own(self) -> GroupView:
        return self.groups.get(self.own_group) or GroupView(self.own_group)

    def masters(self) -> list[tuple[GroupView, Member]]:
        """(group, its master) for every group whose master is known."""
        out = []
        for g in self.groups.values():
            m = g.master_member()
            if m is not None:
                out.append((g, m))
        return out
