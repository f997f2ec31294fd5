"""``ferrymq store check [--repair]`` (issue 12, item 3; docs/operations.md, "Checking a store"):
it finds every kind of damage the fault tests make, says what it is (a table, or JSON),
exits non-zero when there is any, refuses a store a broker holds, and ``--repair``
rebuilds what is derived from the CommitLog so that a broker serves everything but
what the damage took."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import storefaults as sf
from click.testing import CliRunner
from ferrymq.core.store.files import DirectoryLock
from ferrymq.gateways.cli import main

N = 6000


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sf.Written]:
    base = tmp_path_factory.mktemp("base") / "data"
    return base, sf.fill(base, N, keys=True)


@pytest.fixture
def data(written: tuple[Path, sf.Written], tmp_path: Path) -> Path:
    return sf.copy(written[0], tmp_path / "data")


def check(data: Path, *args: str) -> tuple[int, dict]:
    r = CliRunner().invoke(main, ["store", "check", "--data-dir", str(data), "--json", *args])
    doc = json.loads(r.stdout) if r.stdout.startswith("{") else {"output": r.output}
    return r.exit_code, doc


def kinds(doc: dict) -> list[str]:
    return sorted(f["kind"] for f in doc["findings"] if f["damage"])


def damage_everything(data: Path) -> set[tuple[int, int]]:
    """A record's body in an old segment, two ConsumeQueue entries, an index entry;
    returns the messages the damaged record held."""
    recs = [r for r in sf.records_in(data) if r[2] == sf.TOPIC and r[5] == 1]
    phys, _size, _t, q, off, _n = recs[len(recs) // 4]
    seg = next(s for s in sf.segments(data) if int(s.name) <= phys < int(s.name) + sf.SEGMENT)
    sf.flip(seg, phys - int(seg.name) + 100, 8)
    cq = data / "store" / "consumequeue" / sf.TOPIC / "2"
    sf.flip(cq / os.listdir(cq)[0], 40 * 300 + 28, 24)
    idx = data / "store" / "index"
    first = sorted(os.listdir(idx))[0]
    # The index file's entries begin after the header (40) and the slots (4 each).
    slots = int.from_bytes((idx / first).read_bytes()[32:36], "big")
    sf.flip(idx / first, 40 + slots * 4 + 20 * 10 + 4, 8)  # an entry's CommitLog offset
    return {(q, off)}


def test_a_clean_store_is_clean(data: Path) -> None:
    code, doc = check(data)
    assert code == 0, doc
    assert doc["damaged"] is False and doc["records"] > N * 0.8
    assert doc["index_entries"] >= N


def test_each_kind_of_damage_is_found_and_the_exit_code_says_so(data: Path) -> None:
    damage_everything(data)
    code, doc = check(data)
    assert code == 1
    assert set(kinds(doc)) == {"commitlog", "consumequeue", "index"}, doc
    queues = {f["where"] for f in doc["findings"] if f["kind"] == "consumequeue" and f["damage"]}
    assert queues == {f"{sf.TOPIC}:2"}


def test_repair_rebuilds_everything_derived_and_only_the_damaged_record_is_lost(
        data: Path, written: tuple[Path, sf.Written]) -> None:
    lost = damage_everything(data)
    code, doc = check(data, "--repair")
    assert code == 1, doc  # damage was found (and repaired: what was lost is listed)
    assert doc["repaired"] is True
    remaining = [f for f in doc["findings"] if f["damage"]]
    assert [f["kind"] for f in remaining] == ["commitlog"]
    assert not remaining[0]["repairable"] and remaining[0]["messages"] == 1
    got = sf.read_all(data).messages
    assert set(written[1].at) - set(got) == lost
    assert all(b == sf.body(written[1].at[k]) for k, b in got.items())
    code, doc = check(data)
    assert code == 1 and [f["kind"] for f in doc["findings"] if f["damage"]] == ["commitlog"]


def test_a_store_a_broker_holds_is_refused_politely(data: Path) -> None:
    lock = DirectoryLock(str(data / "store"))
    lock.acquire()
    try:
        r = CliRunner().invoke(main, ["store", "check", "--data-dir", str(data)])
    finally:
        lock.release()
    assert r.exit_code == 4
    assert "a broker is running" in r.output and "Traceback" not in r.output


def test_a_directory_that_is_no_store_is_refused(tmp_path: Path) -> None:
    r = CliRunner().invoke(main, ["store", "check", "--data-dir", str(tmp_path)])
    assert r.exit_code == 4 and "not a FerryMQ data directory" in r.output


def test_the_table_for_people(data: Path) -> None:
    damage_everything(data)
    r = CliRunner().invoke(main, ["store", "check", "--data-dir", str(data)])
    assert r.exit_code == 1
    assert "damage" in r.output and "hold no valid record" in r.output
