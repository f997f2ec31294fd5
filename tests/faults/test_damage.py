"""Damage to the store loses only what is damaged (issue 12, item 2; docs/storage.md, "Damage").

Each test damages one file of a cleanly written data directory the way the
issue's finding did, recovers it through a real broker, and checks the exact
outcome: which messages are lost (only those whose record overlaps the damaged
bytes), that every other acknowledged message is readable and unchanged, and
what the operator is told (an ERROR line, the ``ferrymq_store_damaged_*`` counts).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
import storefaults as sf

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sf.Written]:
    base = tmp_path_factory.mktemp("base") / "data"
    return base, sf.fill(base)


@pytest.fixture
def data(written: tuple[Path, sf.Written], tmp_path: Path) -> Path:
    return sf.copy(written[0], tmp_path / "data")


def check_only_lost(data: Path, written: sf.Written, lost: set[tuple[int, int]]
                    ) -> tuple[dict[tuple[int, int], bytes], object]:
    back = sf.read_all(data)
    got, damage = back.messages, back.damage
    check_only_lost.metrics = back.metrics  # type: ignore[attr-defined]
    assert not set(got) - set(written.at), "messages that were never written"
    changed = [k for k, b in got.items() if b != sf.body(written.at[k])]
    assert not changed, f"messages served changed: {changed[:5]}"
    missing = set(written.at) - set(got)
    assert missing == lost, (f"lost {len(missing)} messages, expected exactly the "
                             f"{len(lost)} of the damaged records: "
                             f"{sorted(missing - lost)[:5]} {sorted(lost - missing)[:5]}")
    return got, damage


def test_damage_in_the_middle_of_the_commitlog_loses_only_its_records(
        data: Path, written: tuple[Path, sf.Written], caplog: pytest.LogCaptureFixture) -> None:
    """The finding: 16 flipped bytes in segment 3 of 4 lost 7,153 of 30,000 acknowledged
    messages (everything after them, later segments included). Recovery scans the
    whole log here (its checkpoint is gone, so it starts from the beginning): it
    skips the damaged record(s) to the next valid one and keeps the rest."""
    segs = sf.segments(data)
    assert len(segs) == 4
    recs = sf.records_in(data)
    at = int(segs[2].name) + 300_017  # inside segment 3, not on a record boundary
    lost = sf.messages_of(recs, at, at + 16)
    assert 1 <= len(lost) <= 6
    sf.flip(segs[2], at - int(segs[2].name), 16)
    os.unlink(data / "store" / "checkpoint")
    with caplog.at_level(logging.ERROR, logger="ferrymq.store"):
        _got, damage = check_only_lost(data, written[1], lost)
    hole = [r for r in caplog.records if "CommitLog damaged: bytes" in r.getMessage()]
    assert len(hole) == 1, [r.getMessage() for r in caplog.records]
    assert f"{len(lost)} message(s)" in hole[0].getMessage()
    assert damage.ranges == 1 and damage.messages == len(lost)  # type: ignore[attr-defined]
    assert len(sf.segments(data)) == 4, "later segments are kept"
    metrics = check_only_lost.metrics  # type: ignore[attr-defined]
    assert "ferrymq_store_damaged_ranges_total 1\n" in metrics
    assert f"ferrymq_store_damaged_messages_total {len(lost)}\n" in metrics


def test_a_record_damaged_below_the_checkpoint_is_lost_at_read_not_served(
        data: Path, written: tuple[Path, sf.Written], caplog: pytest.LogCaptureFixture) -> None:
    """Damage in an old segment after a clean shutdown: recovery does not scan there
    (the checkpoint is past it), so the read finds it: a record whose body no longer
    matches its CRC is lost, logged and counted, never served changed."""
    segs = sf.segments(data)
    recs = [r for r in sf.records_in(data) if r[2] == sf.TOPIC and r[5] == 1]
    phys, _size, _t, q, off, _n = recs[len(recs) // 3]
    seg = next(s for s in segs if int(s.name) <= phys < int(s.name) + sf.SEGMENT)
    body_at = phys + 88 + 10  # inside the body
    sf.flip(seg, body_at - int(seg.name), 16)
    with caplog.at_level(logging.ERROR, logger="ferrymq.store"):
        _got, damage = check_only_lost(data, written[1], {(q, off)})
    assert any("fails its CRC" in r.getMessage() for r in caplog.records)
    assert damage.messages == 1  # type: ignore[attr-defined]
    # Marked lost for good: a second read skips it without a second line.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="ferrymq.store"):
        check_only_lost(data, written[1], {(q, off)})
    assert not [r for r in caplog.records if "CRC" in r.getMessage()]


def test_a_damaged_record_header_below_the_checkpoint_costs_that_record_only(
        data: Path, written: tuple[Path, sf.Written], caplog: pytest.LogCaptureFixture) -> None:
    segs = sf.segments(data)
    recs = [r for r in sf.records_in(data) if r[2] == sf.TOPIC]
    phys, _size, _t, q, off, n = recs[len(recs) // 2]
    seg = next(s for s in segs if int(s.name) <= phys < int(s.name) + sf.SEGMENT)
    sf.flip(seg, phys - int(seg.name), 8)  # its size and magic
    with caplog.at_level(logging.ERROR, logger="ferrymq.store"):
        check_only_lost(data, written[1], {(q, off + k) for k in range(n)})
    assert any("ConsumeQueue" in r.getMessage() and "written again" in r.getMessage()
               for r in caplog.records)


def cq_file(data: Path, queue: int) -> Path:
    d = data / "store" / "consumequeue" / sf.TOPIC / str(queue)
    (name,) = os.listdir(d)
    return d / name


def test_flipped_bytes_in_a_consumequeue_are_rebuilt_from_the_commitlog(
        data: Path, written: tuple[Path, sf.Written], caplog: pytest.LogCaptureFixture) -> None:
    """The finding: 24 flipped bytes in a ConsumeQueue file made 5,090 messages
    unreadable, with no log line and no error to consumers. The entries are
    derived data: checked against the CommitLog when read, written again from it."""
    path = cq_file(data, 1)
    sf.flip(path, 40 * 1200 + 28, 24)  # spans two entries
    with caplog.at_level(logging.ERROR, logger="ferrymq.store"):
        _got, damage = check_only_lost(data, written[1], set())
    assert any("ConsumeQueue faults:1 damaged" in r.getMessage() for r in caplog.records), \
        [r.getMessage() for r in caplog.records]
    assert damage.entries >= 2 and damage.messages == 0  # type: ignore[attr-defined]


@pytest.mark.parametrize("where", ["offsets", "position", "size", "count"])
def test_each_field_of_a_consumequeue_entry_damaged_is_found_and_rebuilt(
        data: Path, written: tuple[Path, sf.Written], where: str) -> None:
    field = {"position": 0, "size": 8, "offsets": 12, "count": 20}[where]
    sf.flip(cq_file(data, 2), 40 * 2000 + field, 4)
    _got, damage = check_only_lost(data, written[1], set())
    assert damage.entries >= 1  # type: ignore[attr-defined]


def test_a_deleted_consumequeue_file_is_rebuilt_from_the_commitlog(
        data: Path, written: tuple[Path, sf.Written], caplog: pytest.LogCaptureFixture) -> None:
    os.unlink(cq_file(data, 3))
    # Recovery meets the queue's next record past its (now empty) end only if there
    # is one after the checkpoint; the checkpoint says everything is indexed, so the
    # rebuild has to come from the queue's directory being empty.
    with caplog.at_level(logging.ERROR, logger="ferrymq.store"):
        check_only_lost(data, written[1], set())
    assert any("faults:3" in r.getMessage() for r in caplog.records)
