"""Master epochs: the epoch file of one broker, and where a rejoining slave must cut its log.

The epoch file (``<data_dir>/cluster/epochs``) lists ⟨epoch, start offset⟩:
where in this broker's CommitLog each master's term began. Epochs grow; start
offsets never decrease (a term that wrote nothing starts where the next one
does). Within one epoch only its master wrote, and every copy of that epoch is
a prefix of the master's: that is what makes ``truncation_point`` right
(docs/cluster.md, "Epochs and the epoch file").

File: one line per pair, ``<epoch> <start offset>``, replaced atomically.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from ..store.files import atomic_write, read_file

Epochs = tuple[tuple[int, int], ...]


class EpochError(ValueError):
    """The epoch file is damaged, or a change would break its order."""


def epoch_end(epochs: Sequence[tuple[int, int]], i: int, log_end: int) -> int:
    """Where epoch ``i`` of the list ends: the next one's start, or the log's end."""
    return epochs[i + 1][1] if i + 1 < len(epochs) else log_end


def truncation_point(local: Sequence[tuple[int, int]], local_end: int,
                     master: Sequence[tuple[int, int]], master_end: int) -> int | None:
    """The offset up to which a slave's log equals the master's: walk the slave's epochs
    from the newest; the first whose ⟨epoch, start⟩ the master also lists is the last
    epoch both logs share, and both hold it up to ``min(its end here, its end there)``.
    None when they share no epoch (the slave's log is not the group's, unless it is
    empty). Pure; RocketMQ 5's handshake, Kafka's OffsetsForLeaderEpoch."""
    theirs = {e: (i, s) for i, (e, s) in enumerate(master)}
    for i in range(len(local) - 1, -1, -1):
        e, s = local[i]
        found = theirs.get(e)
        if found is None or found[1] != s:
            continue
        j = found[0]
        return min(epoch_end(local, i, local_end), epoch_end(master, j, master_end))
    return None


def check(epochs: Sequence[tuple[int, int]]) -> None:
    prev_e, prev_s = -1, -1
    for e, s in epochs:
        if e <= prev_e or s < prev_s or s < 0:
            raise EpochError(f"epochs out of order at ⟨{e}, {s}⟩")
        prev_e, prev_s = e, s


class EpochFile:
    """The epoch list of one data directory; every change is written before it returns."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.path = os.path.join(directory, "epochs")
        self.entries: list[tuple[int, int]] = []

    def load(self) -> EpochFile:
        """Read the file (an absent file is an empty list). Raises EpochError."""
        raw = read_file(self.path)
        entries = []
        if raw:
            try:
                for line in raw.decode().splitlines():
                    if line.strip():
                        e, s = line.split()
                        entries.append((int(e), int(s)))
            except (UnicodeDecodeError, ValueError):
                raise EpochError(f"{self.path} is damaged") from None
        check(entries)
        self.entries = entries
        return self

    def _save(self) -> None:
        os.makedirs(self.directory, exist_ok=True)
        atomic_write(self.path, "".join(f"{e} {s}\n" for e, s in self.entries).encode())

    @property
    def last(self) -> tuple[int, int] | None:
        return self.entries[-1] if self.entries else None

    @property
    def epoch(self) -> int:
        """The newest epoch (-1 when there is none)."""
        return self.entries[-1][0] if self.entries else -1

    def snapshot(self) -> Epochs:
        return tuple(self.entries)

    def append(self, epoch: int, start: int) -> None:
        """Record that ``epoch`` began at ``start``. Appending the newest pair again is
        a no-op. Raises EpochError when it would break the order."""
        if self.entries and self.entries[-1] == (epoch, start):
            return
        check([*self.entries[-1:], (epoch, start)])
        self.entries.append((epoch, start))
        self._save()

    def truncate(self, end: int) -> None:
        """The log now ends at ``end``: forget the epochs that begin at or past it (their
        terms left nothing here), except that an empty log keeps nothing."""
        keep = [(e, s) for e, s in self.entries if s < end]
        if keep != self.entries:
            self.entries = keep
            self._save()
