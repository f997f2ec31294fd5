"""The master's view of its slaves: acked offsets, the in-sync set, the confirm offset.

The **confirm offset** is what every member of the in-sync set holds: the
minimum of their acked CommitLog ends, the master's own end counting for the
master. Writes with durability ``REPLICATED`` are acknowledged once it passes
them (``wait``), consumers see nothing beyond it, and snapshots never cover more
(docs/cluster.md, "The in-sync set and the confirm offset").

The set itself lives in etcd and changes there first (the controller's
compare-and-swap): ``proposals`` says which change the acks call for, the
controller asks etcd, and ``isr_changed`` records what etcd holds. A member
being added counts from the moment it is proposed (``propose_add``), a member
being removed stops counting only once etcd recorded it — so the set in etcd
never lacks a member an acknowledged write relied on.

Event-loop thread only. ``clock`` is trio's (monotonic seconds).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import trio

from ..errors import NotEnoughReplicas, NotLeader, ReplicationTimeout


@dataclass(frozen=True, slots=True)
class SlaveStatus:
    """One slave as the master sees it (for ``ferrymq cluster list`` and tests)."""

    node: str
    acked: int  # its CommitLog end, as last acked (-1: never heard from in this term)
    connected: bool
    in_sync: bool
    lag_bytes: int  # the master's end minus its acked end
    caught_up_ago_s: float | None  # since its acks last reached the master's end


class ReplicaSet:
    """See the module docstring. ``end()`` is the master's CommitLog end (dispatched)."""

    def __init__(self, node: str, isr: Iterable[str], *, end: Callable[[], int],
                 confirm_floor: int, min_insync: int, lag_max_s: float, timeout_s: float,
                 clock: Callable[[], float] = trio.current_time) -> None:
        self.node = node
        self.isr: frozenset[str] = frozenset(isr) | {node}
        self.pending_add: set[str] = set()
        self.min_insync = min_insync
        self.lag_max_s = lag_max_s
        self.timeout_s = timeout_s
        self._end = end
        self._clock = clock
        # What the members held when this term began: every in-sync member holds at
        # least the confirm offset the previous master had sent (docs/cluster.md).
        self.floor = confirm_floor
        now = clock()
        self.acked: dict[str, int] = {}
        self.caught_up_at: dict[str, float] = {n: now for n in self.isr}
        self._end_at_ack: dict[str, int] = {}
        self.connected: set[str] = set()
        self.confirm = min(confirm_floor, end())
        self._waiters: list[tuple[int, int, trio.Event]] = []
        self._seq = itertools.count()
        self.fenced: NotLeader | None = None
        self.on_advance: Callable[[int], None] = lambda confirm: None
        self._changed = trio.Event()  # set (and replaced) on an append or a confirm advance
        self._watched = False
        self.stats = {"acks": 0, "waits": 0, "timeouts": 0, "shrinks": 0, "expands": 0}

    # ---------------------------------------------------------------- the confirm offset

    def counted(self) -> frozenset[str]:
        """The members the confirm offset waits for: the set in etcd and pending additions."""
        return self.isr | self.pending_add

    def confirm_offset(self) -> int:
        """What every counted member holds now (never less than before)."""
        c = self._end()
        for n in self.counted():
            if n != self.node:
                c = min(c, self.acked.get(n, self.floor))
        if c > self.confirm:
            self.confirm = c
        return self.confirm

    def _advance(self) -> None:
        old = self.confirm
        c = self.confirm_offset()
        w = self._waiters
        while w and w[0][0] <= c:
            heapq.heappop(w)[2].set()
        if c > old:
            self._signal()
            self.on_advance(c)

    def _signal(self) -> None:
        if self._watched:  # an Event per append costs; only when a sender waits on it
            self._changed.set()
            self._changed = trio.Event()
            self._watched = False

    def changed(self) -> trio.Event:
        """An event set at the next append or confirm advance (the stream's senders)."""
        self._watched = True
        return self._changed

    def appended(self) -> None:
        """The master appended (the stream's senders wake); with no other member to
        wait for, that is confirmed at once."""
        self._signal()
        if len(self.counted()) == 1:
            self._advance()

    # ---------------------------------------------------------------- acks

    def connected_slave(self, node: str, end: int) -> None:
        """A slave completed the handshake holding its log up to ``end`` (which may be
        less than it acked before: a machine crash can take back what the page cache
        held)."""
        self.connected.add(node)
        self.acked[node] = end
        self._end_at_ack.pop(node, None)

    def disconnected_slave(self, node: str) -> None:
        self.connected.discard(node)

    def ack(self, node: str, offset: int) -> None:
        """A slave holds everything below ``offset``."""
        self.stats["acks"] += 1
        now = self._clock()
        end = self._end()
        prev = self.acked.get(node, -1)
        if offset > prev:
            self.acked[node] = offset
        # Caught up: the ack reached the master's end as it was at the previous ack
        # (Kafka's lastCaughtUpTime), or reached the end itself.
        if offset >= end or offset >= self._end_at_ack.get(node, end + 1):
            self.caught_up_at[node] = now
        self._end_at_ack[node] = end
        self._advance()

    async def wait(self, pos: int) -> None:
        """Return once the confirm offset reaches ``pos``. Raises ReplicationTimeout after
        ``timeout_s``, NotLeader when the master is fenced meanwhile, NotEnoughReplicas
        when the in-sync set shrank below ``min_insync`` while it waited."""
        if self.confirm_offset() < pos:
            self.stats["waits"] += 1
            ev = trio.Event()
            heapq.heappush(self._waiters, (pos, next(self._seq), ev))
            with trio.move_on_after(self.timeout_s):
                await ev.wait()
            if self.fenced is not None:
                raise self.fenced
            if self.confirm_offset() < pos:
                self.stats["timeouts"] += 1
                raise ReplicationTimeout(
                    f"the in-sync set {sorted(self.counted())} did not confirm the write "
                    f"within {self.timeout_s:g} s")
        if len(self.isr) < self.min_insync:
            # The set shrank while the write waited: it is held by fewer copies than
            # promised (Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND).
            raise NotEnoughReplicas(f"the in-sync set {sorted(self.isr)} is smaller than "
                                    f"min_insync_replicas ({self.min_insync}): the write is "
                                    "stored but not acknowledged")

    def check_min_insync(self) -> None:
        """Before a REPLICATED write: refuse it when the in-sync set is too small."""
        if len(self.isr) < self.min_insync:
            raise NotEnoughReplicas(f"{len(self.isr)} in-sync replica(s) {sorted(self.isr)}; "
                                    f"min_insync_replicas is {self.min_insync}")

    def fence(self, err: NotLeader) -> None:
        """The master lost (or may have lost) its term: wake every waiter to fail."""
        self.fenced = err
        for _, _, ev in self._waiters:
            ev.set()
        self._waiters.clear()

    # ---------------------------------------------------------------- the set in etcd

    def proposals(self) -> tuple[frozenset[str], frozenset[str]]:
        """(members to remove, slaves to add) as the acks stand: a member not caught up
        for ``lag_max_s``; a connected slave outside the set whose ack reached the
        confirm offset."""
        now = self._clock()
        confirm = self.confirm_offset()
        remove = frozenset(n for n in self.isr if n != self.node
                           and now - self.caught_up_at.get(n, now) > self.lag_max_s)
        add = frozenset(n for n in self.connected if n not in self.isr
                        and n not in self.pending_add and self.acked.get(n, -1) >= confirm)
        return remove, add

    def propose_add(self, nodes: Iterable[str]) -> None:
        """About to ask etcd to add ``nodes``: count them from now on."""
        self.pending_add |= set(nodes)

    def isr_changed(self, isr: Iterable[str]) -> None:
        """etcd holds ``isr`` now (or a proposal failed: the old set)."""
        new = frozenset(isr) | {self.node}
        self.stats["shrinks"] += len(self.isr - new)
        self.stats["expands"] += len(new - self.isr)
        now = self._clock()
        for n in new - self.isr:
            self.caught_up_at[n] = now
        self.isr = new
        self.pending_add -= new
        self._advance()

    def cancel_add(self, nodes: Iterable[str]) -> None:
        self.pending_add -= set(nodes)
        self._advance()

    def status(self) -> list[SlaveStatus]:
        now = self._clock()
        end = self._end()
        nodes = (set(self.acked) | self.connected | self.isr) - {self.node}
        return [SlaveStatus(n, self.acked.get(n, -1), n in self.connected, n in self.isr,
                            max(0, end - self.acked.get(n, 0)),
                            (now - self.caught_up_at[n]) if n in self.caught_up_at else None)
                for n in sorted(nodes)]
