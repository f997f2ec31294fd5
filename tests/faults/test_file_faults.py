"""One damaged file per kind, each with its exact outcome (issue 12, "single-file fault
injection for every file kind the store writes"; docs/storage.md, "Damage").

CommitLog segments' holes and ConsumeQueue damage are in test_damage.py, state
snapshots in tests/test_statelog.py; here: the CommitLog's tail (garbage after the
end, a file cut short), the key index (flipped bytes, a deleted file), the checkpoint
(flipped, deleted), the abort marker (deleted after a crash), every state snapshot
deleted, and round 1's MQTT state file damaged. What each may cost is exact: the
messages whose records the damage overlapped, or nothing.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import storefaults as sf
import trio
from ferrymq.core import Broker

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

N = 6000  # two segments, every message with the key k<number>


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sf.Written]:
    base = tmp_path_factory.mktemp("keyed") / "data"
    return base, sf.fill(base, N, keys=True)


@pytest.fixture
def data(written: tuple[Path, sf.Written], tmp_path: Path) -> Path:
    return sf.copy(written[0], tmp_path / "data")


def crashed(data: Path) -> Path:
    """The directory as a SIGKILL leaves it: the abort marker present."""
    (data / "store" / "abort").write_bytes(b"running\n")
    return data


def open_and(data: Path, job: Callable[[Broker], Any]) -> Any:
    async def main() -> Any:
        async with Broker.open(sf.config(data)) as b:
            return job(b)
    return trio.run(main)


def exactly_lost(data: Path, written: sf.Written, lost: set[tuple[int, int]]) -> None:
    got = sf.read_all(data).messages
    assert all(b == sf.body(written.at[k]) for k, b in got.items()), "a message changed"
    missing = set(written.at) - set(got)
    assert missing == lost, (sorted(missing - lost)[:5], sorted(lost - missing)[:5])


def keys_found(b: Broker, numbers: range) -> list[int]:
    """The numbers whose key finds exactly their own message."""
    ok = []
    for n in numbers:
        found = b.messages_by_key(sf.TOPIC, f"k{n}")
        if [m.body for m in found] == [sf.body(n)]:
            ok.append(n)
    return ok


# ------------------------------------------------------------------ the CommitLog's tail


def test_garbage_after_the_end_after_a_crash_is_cut_and_costs_nothing(
        data: Path, written: tuple[Path, sf.Written]) -> None:
    last = sf.segments(data)[-1]
    end = max(p + s for p, s, *_ in sf.records_in(data))
    with open(last, "r+b") as f:  # a torn write: bytes that are no record
        f.seek(end - int(last.name))
        f.write(os.urandom(300))
    report = open_and(crashed(data), lambda b: b.recovery)
    assert report.discarded_bytes and report.end == end and not report.holes
    exactly_lost(data, written[1], set())


def test_a_segment_cut_short_loses_exactly_the_records_past_the_cut(
        data: Path, written: tuple[Path, sf.Written]) -> None:
    last = sf.segments(data)[-1]
    recs = sf.records_in(data)
    end = max(p + s for p, s, *_ in recs)
    cut = int(last.name) + (end - int(last.name)) // 2 + 7  # inside a record
    lost = sf.messages_of(recs, cut, end)
    assert lost
    os.truncate(last, cut - int(last.name))
    report = open_and(crashed(data), lambda b: b.recovery)
    assert not report.holes  # the zeros past the cut are no hole: nothing valid follows
    exactly_lost(data, written[1], lost)
    assert os.path.getsize(last) == sf.SEGMENT, "the file gets its size back"


# ------------------------------------------------------------------ the key index


def index_files(data: Path) -> list[Path]:
    d = data / "store" / "index"
    return sorted(d / n for n in os.listdir(d))


def test_flipped_bytes_in_the_key_index_never_find_a_wrong_message(
        data: Path, written: tuple[Path, sf.Written]) -> None:
    """A lookup checks each index entry against the record it points at: a damaged
    entry is skipped and counted, never answered with another message; every key whose
    entries are intact is still found, and nothing is lost."""
    idx = index_files(data)[0]
    size = os.path.getsize(idx)
    sf.flip(idx, size // 2, 64)
    found = open_and(data, lambda b: keys_found(b, range(0, N, 7)))
    wrong = [n for n in range(0, N, 7) if n not in found]
    assert len(wrong) <= 4, wrong  # 64 bytes hold at most a few entries or slots
    exactly_lost(data, written[1], set())


def test_a_deleted_key_index_file_is_rebuilt_and_every_key_found(
        data: Path, written: tuple[Path, sf.Written]) -> None:
    for f in index_files(data):
        os.unlink(f)
    assert open_and(data, lambda b: keys_found(b, range(0, N, 7))) == list(range(0, N, 7))
    exactly_lost(data, written[1], set())


# ------------------------------------------------------------------ checkpoint, abort marker


@pytest.mark.parametrize("how", ["flipped", "deleted"])
def test_a_damaged_or_missing_checkpoint_costs_a_full_validation_only(
        data: Path, written: tuple[Path, sf.Written], how: str) -> None:
    cp = data / "store" / "checkpoint"
    if how == "flipped":
        sf.flip(cp, 4, 8)
    else:
        os.unlink(cp)
    report = open_and(crashed(data), lambda b: b.recovery)
    assert report.validated_from == 0 and not report.holes, report
    exactly_lost(data, written[1], set())


def test_a_crash_that_lost_the_abort_marker_loses_nothing(
        data: Path, written: tuple[Path, sf.Written]) -> None:
    """Taken for a clean stop: the records since the second-to-last checkpoint are
    still validated, so nothing written is missed."""
    (data / "store" / "abort").unlink(missing_ok=True)
    report = open_and(data, lambda b: b.recovery)
    assert report.clean_shutdown
    exactly_lost(data, written[1], set())


# ------------------------------------------------------------------ state snapshots


def test_every_state_snapshot_deleted_rebuilds_the_state_from_the_log(
        data: Path, written: tuple[Path, sf.Written]) -> None:
    before = open_and(data, lambda b: (sorted(t.name for t in b.topics()),
                                       sorted(g.name for g in b.groups())))
    for n in os.listdir(data / "state"):
        os.unlink(data / "state" / n)
    after = open_and(data, lambda b: (sorted(t.name for t in b.topics()),
                                      sorted(g.name for g in b.groups())))
    assert after == before and sf.TOPIC in after[0] and "fill-done" in after[1]
    exactly_lost(data, written[1], set())


# ------------------------------------------------------------------ round 1's MQTT state


def test_a_damaged_round_one_mqtt_state_file_is_set_aside_loudly(
        start_broker: Callable[..., Any], tmp_path: Path) -> None:
    data = tmp_path / "old"
    (data / "mqtt").mkdir(parents=True)
    (data / "mqtt" / "sessions.msgpack").write_bytes(b"\xc1 not msgpack at all")
    b = start_broker("mqtt", name="old", data_dir=data)
    assert sorted(os.listdir(data / "mqtt")) == ["sessions.msgpack.damaged"]
    assert "level=error" in b.log() and "sessions.msgpack" in b.log()


def test_logging_is_quiet_when_nothing_is_damaged(
        data: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ferrymq"):
        open_and(data, lambda b: None)
    assert not caplog.records, [r.getMessage() for r in caplog.records]


def test_a_damaged_kafka_producer_snapshot_is_set_aside_and_rebuilt(
        start_broker: Callable[..., Any], tmp_path: Path) -> None:
    """The idempotent-producer snapshot is derived from the queues' batch headers: a
    damaged one stopped the Kafka door from starting; now it costs a longer replay."""
    from kafka import KafkaProducer
    data = tmp_path / "k"
    (data / "kafka").mkdir(parents=True)
    (data / "kafka" / "producers.msgpack").write_bytes(b"\xc1 not msgpack")
    b = start_broker("kafka", name="k", data_dir=data)
    assert sorted(os.listdir(data / "kafka")) == ["producers.msgpack.damaged"]
    assert "level=error" in b.log() and "producer snapshot" in b.log()
    p = KafkaProducer(bootstrap_servers=b.address("kafka"), enable_idempotence=True)
    try:
        assert p.send("kt", b"x", partition=0).get(timeout=20).offset == 0
    finally:
        p.close()


# ------------------------------------------------------------------ timers, transactions


def _timer_and_half(data: Path) -> Any:
    """A timer due in 1.5 s and an open half, in a cleanly stopped broker."""
    from ferrymq.core import Message

    async def main() -> Any:
        async with Broker.open(sf.config(data)) as b:
            await b.create_topic("tt", 1)
            await b.put(Message("tt", b"timer", {"TIMER_DELAY_MS": "1500"}))
            return await b.prepare(Message("tt", b"half"), "pg")
    return trio.run(main)


@pytest.mark.parametrize("damage", ["timer/checkpoint.json", "timer/wheel", "timer/log",
                                    "transactions/checkpoint.json"])
def test_damaged_timer_and_transaction_files_are_rebuilt_from_their_topics(
        tmp_path: Path, damage: str) -> None:
    """The timer wheel, its log, its checkpoint and the transactions' checkpoint are
    derived from their topics: whichever is damaged, the broker starts, the timer is
    delivered once at its time and the open half commits once."""
    data = tmp_path / "d"
    half = _timer_and_half(data)
    path = data / damage
    if path.is_dir():
        for n in os.listdir(path):
            os.unlink(path / n)
    elif path.suffix == ".json":
        path.write_bytes(b"{not json")
    else:
        sf.flip(path, 0, 64)
        sf.flip(path, os.path.getsize(path) // 2, 64)

    async def main() -> list[bytes]:
        async with Broker.open(sf.config(data)) as b:
            await b.end_transaction(half, "commit", producer_group="pg")
            with trio.move_on_after(20):
                while sum(1 for m in _read(b) if m == b"timer") < 1:
                    await trio.sleep(0.05)
            await trio.sleep(0.3)
            return _read(b)
    got = trio.run(main)
    assert sorted(got) == [b"half", b"timer"], got


def _read(b: Broker) -> list[bytes]:
    lo, hi = b.queue_bounds("tt", 0)
    return [m.body for m in b.get(None, "tt", 0, lo, 100, 1 << 20).messages(lo)] if hi > lo else []
