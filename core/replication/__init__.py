"""Broker groups: what the core knows of replication (docs/cluster.md).

The core knows its role for this life (``Membership``, decided by the controller
in gateways/replication and fixed until the core is reopened), the master's
view of its slaves (``replicas.ReplicaSet``), a slave's view of what its master
confirmed (``SlaveView``), the epoch file (``epochs``) and how a data
directory is cut back after a divergent term (``truncate``). It knows no socket
and no etcd: the replication door and the controller call the Broker.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import NotLeader


class Role(enum.Enum):
    STANDALONE = "standalone"  # no [cluster]: the broker as it always was
    MASTER = "master"
    SLAVE = "slave"


class Durability(enum.Enum):
    """When a write is acknowledged (docs/cluster.md, "Durability levels")."""

    LEADER = "leader"  # once the master has it, under its flush policy (Kafka acks=0/1)
    REPLICATED = "replicated"  # once every in-sync member has it (Kafka acks=all)


@dataclass(frozen=True, slots=True)
class Membership:
    """The core's role for one life, as the controller decided it from etcd."""

    role: Role
    node: str
    epoch: int = 0
    isr: frozenset[str] = field(default_factory=frozenset)
    # A master: what every in-sync member held when its term began (the confirm
    # offset it last learned as a slave; 0 knows nothing). A slave: unused.
    confirm_floor: int = 0
    master: str = ""  # a slave's master (for messages)

    def __post_init__(self) -> None:
        if not self.node:
            raise ValueError("a cluster member needs a node id")
        if self.epoch < 0:
            raise ValueError("epochs are not negative")


STANDALONE = Membership(Role.STANDALONE, "standalone")


class SlaveView:
    """A slave's side of the read path: records are visible up to the confirm offset its
    master last sent (never past its own end); it takes no writes."""

    def __init__(self, end: Callable[[], int], master: str) -> None:
        self._end = end
        self.master_confirm = 0
        self.refusal = NotLeader(f"this broker is a slave of {master or 'no master yet'}")
        self.on_advance: Callable[[int], None] = lambda confirm: None

    def confirm_offset(self) -> int:
        return min(self.master_confirm, self._end())

    def confirmed(self, confirm: int) -> None:
        """A TRANSFER carried the master's confirm offset."""
        if confirm > self.master_confirm:
            self.master_confirm = confirm
            self.on_advance(self.confirm_offset())

    def appended(self) -> None:
        pass

    def check_min_insync(self) -> None:
        raise self.refusal

    async def wait(self, pos: int) -> None:
        raise self.refusal
