"""The history checker for runs with failovers: what producers were told, what consumers saw,
and what the log holds at the end must agree.

Record as the run goes:

- ``acked(topic, queue, offset, body)`` for every acknowledged send (bodies are unique
  per attempt: a retried send is a new body, so "exactly once" is checkable);
- ``observed(topic, queue, offset, body)`` for every message a consumer was served,
  from whichever broker served it.

Then ``check(final)`` with every message of every queue read from the last master
(``{(topic, queue): [(offset, body), ...]}``) asserts:

1. every acknowledged message is in the final log exactly once, at the offset its
   acknowledgement gave (0 acknowledged messages lost, none moved);
2. no body is stored twice (an unacknowledged attempt may be there once, or not);
3. offsets of each queue are contiguous from its first (no hole, no offset doubled);
4. no offset was ever served with a content other than the final log's (no consumer
   saw a record a later election took back);
5. per queue, a producer's acknowledged messages are in the order it sent them
   (``order_key(body)`` gives (producer, sequence); default: the body's ``a:b:...``
   first two fields).

It raises AssertionError with the first few violations of each kind, and returns a
``Report`` with counts for the test's own assertions and messages.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

Position = tuple[str, int]  # (topic, queue id)


def default_order_key(body: bytes) -> tuple[str, int]:
    parts = body.split(b":")
    return parts[0].decode(), int(parts[1])


@dataclass
class Report:
    acknowledged: int = 0
    stored: int = 0
    observed: int = 0
    unacknowledged_stored: int = 0  # attempts stored without their ack reaching the producer
    queues: int = 0


@dataclass
class History:
    order_key: Callable[[bytes], tuple[str, int]] = default_order_key
    acks: list[tuple[str, int, int, bytes]] = field(default_factory=list)
    seen: dict[tuple[str, int, int], set[bytes]] = field(default_factory=lambda: defaultdict(set))

    def acked(self, topic: str, queue: int, offset: int, body: bytes) -> None:
        self.acks.append((topic, queue, offset, body))

    def observed(self, topic: str, queue: int, offset: int, body: bytes) -> None:
        self.seen[(topic, queue, offset)].add(body)

    def check(self, final: Mapping[Position, Sequence[tuple[int, bytes]]]) -> Report:
        problems: dict[str, list[str]] = defaultdict(list)
        at: dict[tuple[str, int, int], bytes] = {}
        where: dict[bytes, list[tuple[str, int, int]]] = defaultdict(list)
        report = Report(queues=len(final))
        for (topic, queue), messages in final.items():
            offsets = [o for o, _ in messages]
            if offsets and offsets != list(range(offsets[0], offsets[0] + len(offsets))):
                problems["offsets not contiguous"].append(f"{topic}:{queue} {offsets[:20]}...")
            for offset, body in messages:
                at[(topic, queue, offset)] = body
                where[body].append((topic, queue, offset))
                report.stored += 1
        for body, places in where.items():
            if len(places) > 1:
                problems["stored twice"].append(f"{body!r} at {places}")
        acked_bodies = set()
        for topic, queue, offset, body in self.acks:
            report.acknowledged += 1
            acked_bodies.add(body)
            got = at.get((topic, queue, offset))
            if got != body:
                problems["acknowledged but lost or moved"].append(
                    f"{body!r} acked at {topic}:{queue}@{offset}, found {got!r} there, "
                    f"{body!r} at {where.get(body)}")
        report.unacknowledged_stored = sum(1 for b in where if b not in acked_bodies)
        for (topic, queue, offset), bodies in self.seen.items():
            report.observed += 1
            final_body = at.get((topic, queue, offset))
            if len(bodies) > 1 or (final_body is not None and bodies != {final_body}):
                problems["served with other contents"].append(
                    f"{topic}:{queue}@{offset} served {sorted(bodies)}, final {final_body!r}")
            elif final_body is None:
                # Served, then gone: only retention may do that, and runs are short.
                problems["served, then gone"].append(f"{topic}:{queue}@{offset} {bodies}")
        order: dict[tuple[str, int, str], list[tuple[int, int]]] = defaultdict(list)
        for topic, queue, offset, body in self.acks:
            producer, seq = self.order_key(body)
            order[(topic, queue, producer)].append((offset, seq))
        for key, pairs in order.items():
            seqs = [s for _, s in sorted(pairs)]
            if seqs != sorted(seqs):
                problems["out of order"].append(f"{key}: {seqs[:20]}...")
        if problems:
            raise AssertionError("history check failed:\n" + "\n".join(
                f"- {kind} ({len(items)}): " + "; ".join(items[:5])
                for kind, items in problems.items()))
        return report
