"""A topic's own retention (retention.ms, retention.bytes) on a shared CommitLog.

The CommitLog holds every topic's records in one sequence of segments, so a topic
cannot delete "its" segments: they hold other topics' records too. A topic's
retention therefore moves the *start* of its queues instead (the ConsumeQueue
forgets its oldest entries, whose files go once they hold no live entry), and the
bytes leave the disk when the shared segment ages out under the broker's own
retention. A topic that must keep records *longer* than the broker's retention
(retention.ms -1 or above it, or a compacted topic) holds the segments from its
oldest record on (``hold_from``); disk pressure still wins over such a hold
(docs/storage.md, "Retention per topic").

``retention.ms`` is measured against the store timestamp (binary search: store
timestamps never decrease); ``retention.bytes`` against the sizes of the stored
records of one queue, counted incrementally: a cursor per queue remembers how far
it has summed, so each pass costs the entries appended or dropped since the last
one, not the queue's length.
"""

from __future__ import annotations

from dataclasses import dataclass

from .consumequeue import ConsumeQueue


@dataclass(slots=True)
class _Cursor:
    front: int  # the entry index the sum starts at (the queue's first entry when made)
    upto: int  # entries [front, upto) are summed
    total: int  # their record bytes


class TopicRetention:
    """Per-queue byte cursors; owner thread only."""

    def __init__(self) -> None:
        self._cursors: dict[tuple[str, int], _Cursor] = {}

    def trim(self, q: ConsumeQueue, cutoff_ms: int | None, max_bytes: int | None) -> int:
        """Forget the queue's entries stored before ``cutoff_ms`` and, oldest first,
        those beyond the newest ``max_bytes`` of records. Returns the new min offset."""
        if q.next_entry == q.first_entry:
            return q.min_offset
        if cutoff_ms is not None:
            q.delete_before_index(q.first_stored_at_or_after(cutoff_ms))
        if max_bytes is not None and max_bytes >= 0:
            key = (q.topic, q.queue_id)
            c = self._cursors.get(key)
            if c is None or c.front != q.first_entry or c.upto > q.next_entry:
                c = self._cursors[key] = _Cursor(q.first_entry, q.first_entry, 0)
            for e in q.iter_entries(c.upto, q.next_entry):
                c.total += e[1]
            c.upto = q.next_entry
            front = c.front
            if c.total > max_bytes:
                for e in q.iter_entries(front, c.upto):
                    if c.total <= max_bytes:
                        break
                    c.total -= e[1]
                    front += 1
                q.delete_before_index(front)
                c.front = q.first_entry
        return q.min_offset

    def forget(self, topic: str) -> None:
        for key in [k for k in self._cursors if k[0] == topic]:
            del self._cursors[key]
