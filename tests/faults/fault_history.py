"""The history checker shared by the crash cycles: what clients were told was done,
against what a restarted broker holds.

A workload records each item it was *acknowledged* for (a 201, a PUBACK, a PUBCOMP, a
commit's 200, an ack's 204), in the order the acknowledgements came. After a restart
the test reads what is there and ``check`` says, per stream:

- **lost**: acknowledged, not readable (must be empty: the acknowledged set is a
  subset of the readable one);
- **out of order**: two acknowledged items of one queue readable in the other order
  than they were acknowledged (a producer that waits for each acknowledgement
  before the next send sees its queue's order kept);
- **duplicated**: an item readable more than once, where the protocol promises at
  most once (exactly once for MQTT QoS 2 and transactions; a plain send that was
  not retried).

Items that are readable but were never acknowledged are fine: a crash between the
write and its acknowledgement leaves them, and the client would send them again.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class Verdict:
    stream: str
    acknowledged: int
    readable: int
    lost: list[str] = field(default_factory=list)
    out_of_order: list[tuple[str, str]] = field(default_factory=list)
    duplicated: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.out_of_order or self.duplicated)


class History:
    """Acknowledged items per stream, safe to record from several threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.acked: dict[str, list[str]] = {}

    def ack(self, stream: str, item: str) -> None:
        with self._lock:
            self.acked.setdefault(stream, []).append(item)

    def count(self, stream: str) -> int:
        with self._lock:
            return len(self.acked.get(stream, ()))

    def check(self, stream: str, queues: Iterable[list[str]], *, once: bool = True
              ) -> Verdict:
        """``queues``: what is readable, one list per queue in offset order."""
        with self._lock:
            acked = list(self.acked.get(stream, ()))
        rank = {item: i for i, item in enumerate(acked)}
        seen: Counter[str] = Counter()
        v = Verdict(stream, len(acked), 0)
        for items in queues:
            last: str | None = None
            for item in items:
                seen[item] += 1
                v.readable += 1
                if item not in rank or seen[item] > 1:
                    continue
                if last is not None and rank[item] < rank[last]:
                    v.out_of_order.append((last, item))
                last = item
        v.lost = [a for a in acked if not seen[a]]
        if once:
            v.duplicated = sorted(i for i, n in seen.items() if n > 1)
        return v
