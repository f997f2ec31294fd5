"""The state log (core/statelog.py, docs/storage.md "The state log"): broker metadata and
consumer state as records of the CommitLog, applied in log order, compacted by snapshots."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import pytest
import trio
from ferrymq.core import Broker, BrokerConfig, Message
from ferrymq.core.errors import InvalidArgument, PermissionDenied, TopicNotFound
from ferrymq.core.statelog import STATE_TOPIC

TOPICS = 10_000


def config(path: Path, **over: object) -> BrokerConfig:
    base: dict[str, object] = dict(data_dir=str(path), segment_size=1 << 20,
                                   max_message_size=64 * 1024, cq_entries_per_file=4096,
                                   index_slots=1024, index_entries=4096, default_queues=2)
    base.update(over)
    return BrokerConfig(**base)  # type: ignore[arg-type]


def crash_copy(src: Path, dst: Path) -> Path:
    """What a SIGKILL leaves behind: the data directory as it is now, page cache
    included, abort marker and all (the directory lock is the process's own)."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("lock"))
    return dst


def written_bytes() -> int:
    """Bytes this process has passed to write(2) and friends so far (all threads)."""
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar:"):
                return int(line.split()[1])
    raise AssertionError("no wchar in /proc/self/io")


# ---------------------------------------------------------------- the findings


async def test_creating_a_topic_writes_a_small_record_not_the_whole_table(tmp_path) -> None:
    """Round 1 rewrote topics.json on every create: 1,000 topics took 5.8 s and 4,000
    took 94 s. Now a create appends one record, whatever the number of topics."""
    async with Broker.open(config(tmp_path / "d")) as b:
        for i in range(1_000):
            await b.create_topic(f"old-{i}", 1)
        before = written_bytes()
        for i in range(100):
            await b.create_topic(f"new-{i}", 1)
        per_create = (written_bytes() - before) / 100
        print(f"bytes written per create with 1,000 topics: {per_create:.0f}")
        assert per_create < 1024, "a create rewrites something that grows with the topics"
        assert not (tmp_path / "d" / "config" / "topics.json").exists()


@pytest.mark.slow
async def test_ten_thousand_topics_through_the_broker_api_survive_a_crash(tmp_path) -> None:
    async with Broker.open(config(tmp_path / "live")) as b:
        t0 = time.perf_counter()
        for i in range(TOPICS):
            await b.create_topic(f"topic-{i}", 4)
        created = time.perf_counter() - t0
        crash_copy(tmp_path / "live", tmp_path / "crashed")
    print(f"\n{TOPICS:,} topics created one by one (an fsync each): {created:.2f} s")
    t0 = time.perf_counter()
    async with Broker.open(config(tmp_path / "crashed")) as b:
        restart = time.perf_counter() - t0
        assert len(b.topics()) == TOPICS
        assert b.topic("topic-9999").queues == 4
        replayed = b.state.stats["recovered"]
    print(f"restart after a crash with {TOPICS:,} topics: {restart:.2f} s "
          f"({replayed:,} state records replayed)")
    t0 = time.perf_counter()
    async with Broker.open(config(tmp_path / "live")) as b:  # a clean restart: the snapshot
        restart = time.perf_counter() - t0
        assert len(b.topics()) == TOPICS
        assert b.state.stats["recovered"] == 0
    print(f"clean restart with {TOPICS:,} topics: {restart:.2f} s")


async def test_a_batch_of_topics_shares_one_flush(tmp_path) -> None:
    async with Broker.open(config(tmp_path / "d", flush="sync")) as b:
        before = b.counters.flushes
        t0 = time.perf_counter()
        async with b.state.batch():
            for i in range(TOPICS):
                await b.create_topic(f"t{i}", 1)
        print(f"\n{TOPICS:,} topics in one batch: {time.perf_counter() - t0:.2f} s, "
              f"{b.counters.flushes - before} fsync(s)")
        assert b.counters.flushes - before == 1
        assert b.store.commitlog.flushed_pos >= b.state.end
        crash_copy(tmp_path / "d", tmp_path / "crashed")
    async with Broker.open(config(tmp_path / "crashed")) as b:
        assert len(b.topics()) == TOPICS


async def test_a_committed_offset_and_its_auto_created_group_survive_a_crash_at_once(
        tmp_path) -> None:
    """Round 1 kept commits in memory and wrote offsets.json every second: a SIGKILL
    lost up to a second of acknowledged Kafka commits (35 redelivered messages), and
    the groups they auto-created."""
    async with Broker.open(config(tmp_path / "live", flush="sync")) as b:
        await b.create_topic("orders", 2)
        for off in range(1, 50):
            b.commit_offset("billing", "orders", off % 2, off)
        await b.wait_durable()
        assert b.store.commitlog.flushed_pos >= b.state.end, "acknowledged means on disk"
        crash_copy(tmp_path / "live", tmp_path / "crashed")
    async with Broker.open(config(tmp_path / "crashed")) as b:
        assert b.committed_offset("billing", "orders", 1) == 49
        assert b.committed_offset("billing", "orders", 0) == 48
        assert b.group("billing").name == "billing"


async def test_committing_the_same_offset_again_writes_nothing(tmp_path) -> None:
    async with Broker.open(config(tmp_path / "d")) as b:
        await b.create_topic("t", 1)
        b.commit_offset("g", "t", 0, 5)
        end = b.store.dispatched_pos
        for _ in range(100):  # a pull consumer piggy-backs its offset on every pull
            b.commit_offset("g", "t", 0, 5)
        assert b.store.dispatched_pos == end


async def test_under_async_flush_commits_wait_for_nothing_and_admin_changes_for_an_fsync(
        tmp_path) -> None:
    async with Broker.open(config(tmp_path / "d", flush_interval_ms=3_600_000)) as b:
        await b.create_topic("t", 1)
        assert b.store.commitlog.flushed_pos >= b.state.end, "a create is flushed before it returns"
        flushes = b.counters.flushes
        b.commit_offset("g", "t", 0, 1)  # auto-creates the group: both in the page cache
        await b.wait_durable()
        assert b.counters.flushes == flushes, "async flush: the interval is the window"
        await b.flush_offsets()
        assert b.store.commitlog.flushed_pos >= b.state.end


# ---------------------------------------------------------------- the generic API


async def test_any_namespace_is_a_durable_table(tmp_path) -> None:
    async with Broker.open(config(tmp_path / "live")) as b:
        await b.state.put("users", "alice", {"mechanism": "SCRAM-SHA-256", "iterations": 4096})
        await b.state.put("users", "bob", {"mechanism": "PLAIN"})
        await b.state.put_many([("acls", ("alice", "topic", "orders"), ["read", "write"]),
                                ("users", "bob", None)])
        assert b.state.get("users", "alice")["iterations"] == 4096
        assert b.state.get("users", "bob") is None
        assert b.state.items("acls") == [(("alice", "topic", "orders"), ("read", "write"))]
        crash_copy(tmp_path / "live", tmp_path / "crashed")
    for where in ("live", "crashed"):  # from the shutdown snapshot; from the log alone
        async with Broker.open(config(tmp_path / where)) as b:
            assert b.state.get("users", "alice") == {"mechanism": "SCRAM-SHA-256",
                                                     "iterations": 4096}
            assert b.state.get("users", "bob") is None
            assert b.state.get("acls", ("alice", "topic", "orders")) == ("read", "write")


async def test_subscribers_hear_every_change_of_their_namespace(tmp_path) -> None:
    async with Broker.open(config(tmp_path / "d")) as b:
        heard: list[tuple[object, object]] = []
        b.state.subscribe("sessions", lambda k, v: heard.append((k, v)))
        await b.state.put("sessions", "c1", 1)
        await b.state.put("other", "x", 1)
        await b.state.put("sessions", "c1", None)
        assert heard == [("c1", 1), ("c1", None)]


async def test_keys_and_values_the_log_cannot_hold_are_refused(tmp_path) -> None:
    async with Broker.open(config(tmp_path / "d")) as b:
        end = b.store.dispatched_pos
        with pytest.raises(InvalidArgument):
            await b.state.put("users", ["a", "list"], 1)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await b.state.put("users", "x", object())
        with pytest.raises(InvalidArgument):
            await b.state.put("users", "x", b"\0" * (65 << 10))
        with pytest.raises(InvalidArgument):
            await b.state.put("", "x", 1)
        assert b.store.dispatched_pos == end, "nothing appended"


async def test_the_state_topic_is_hidden_from_every_door(tmp_path) -> None:
    async with Broker.open(config(tmp_path / "d")) as b:
        await b.create_topic("visible", 1)
        assert [t.name for t in b.topics()] == ["visible"]
        with pytest.raises(PermissionDenied):
            await b.create_topic(STATE_TOPIC, 1)
        with pytest.raises(PermissionDenied):
            await b.put(Message(STATE_TOPIC, b"forged"))
        with pytest.raises(TopicNotFound):
            b.get("g", STATE_TOPIC, 0, 0)
        with pytest.raises(PermissionDenied):
            await b.delete_topic(STATE_TOPIC)
        with pytest.raises(PermissionDenied):  # nor through a timer, nor a transaction
            await b.put(Message.build(STATE_TOPIC, b"later", properties={"TIMER_DELAY_MS": "50"}))
        with pytest.raises(PermissionDenied):
            await b.prepare(Message(STATE_TOPIC, b"half"), "producers")
        first = b.store.read_record(0)
        assert first is not None and STATE_TOPIC.encode() in first
        offset_id = b.store.message_at(0).offset_msg_id  # type: ignore[union-attr]
        assert b.message_by_id(offset_id) is None


# ---------------------------------------------------------------- recovery and compaction


async def test_recovery_replays_in_log_order_a_deleted_and_recreated_topic(tmp_path) -> None:
    """No checkpoint since the start: recovery re-dispatches everything, and the topic's
    deletion (a state record) comes between its two lives' messages, as it did live."""
    cfg = config(tmp_path / "live", checkpoint_interval_ms=3_600_000)
    async with Broker.open(cfg) as b:
        await b.create_topic("phoenix", 1)
        for i in range(3):
            await b.put(Message("phoenix", b"old%d" % i))
        b.commit_offset("g", "phoenix", 0, 2)
        await b.delete_topic("phoenix")
        await b.create_topic("phoenix", 1)
        await b.put(Message("phoenix", b"new"))
        crash_copy(tmp_path / "live", tmp_path / "crashed")
    async with Broker.open(config(tmp_path / "crashed")) as b:
        assert b.recovery is not None and not b.recovery.clean_shutdown
        assert [m.body for m in b.get(None, "phoenix", 0, 0).messages(0)] == [b"new"]
        assert b.committed_offset("g", "phoenix", 0) is None


async def test_a_restart_replays_only_the_records_after_the_newest_snapshot(tmp_path) -> None:
    async with Broker.open(config(tmp_path / "live")) as b:
        await b.create_topic("t", 1)
        for off in range(1, 11):
            b.commit_offset("g", "t", 0, off)
        await b.state.snapshot()
        for off in range(11, 16):
            b.commit_offset("g", "t", 0, off)
        crash_copy(tmp_path / "live", tmp_path / "crashed")
    async with Broker.open(config(tmp_path / "crashed")) as b:
        assert b.committed_offset("g", "t", 0) == 15
        assert b.state.stats["recovered"] == 5


async def test_a_damaged_snapshot_falls_back_to_the_previous_one(tmp_path, caplog) -> None:
    async with Broker.open(config(tmp_path / "live")) as b:
        await b.create_topic("a", 1)
        await b.state.snapshot()
        await b.create_topic("b", 1)
        b.commit_offset("g", "b", 0, 7)
        await b.state.snapshot()
        await b.create_topic("c", 1)
        crash_copy(tmp_path / "live", tmp_path / "crashed")
    snapshots = sorted((tmp_path / "crashed" / "state").glob("snapshot-*"))
    assert len(snapshots) == 2, "the newest and one to fall back on"
    newest = snapshots[-1]
    data = bytearray(newest.read_bytes())
    data[-3] ^= 0xFF
    newest.write_bytes(bytes(data))
    with caplog.at_level(logging.ERROR, "ferrymq.state"):
        async with Broker.open(config(tmp_path / "crashed")) as b:
            assert [t.name for t in b.topics()] == ["a", "b", "c"]
            assert b.committed_offset("g", "b", 0) == 7
    assert "is damaged" in caplog.text


async def test_a_log_that_lost_its_tail_never_hides_later_records_behind_a_snapshot(
        tmp_path, caplog) -> None:
    """A snapshot is only written once the log is durable up to it; should the log
    still end before it (a damaged or cut log), new records must not be taken for ones
    the snapshot holds: the state is re-snapshotted at the log's end."""
    async with Broker.open(config(tmp_path / "d")) as b:
        await b.create_topic("a", 1)
        for _ in range(20):
            await b.put(Message("a", b"x" * 1000))
        await b.state.snapshot()
        cut = b.state.covered[0] - 5_000
    seg = tmp_path / "d" / "store" / "commitlog" / f"{0:020d}"
    with open(seg, "r+b") as f:  # the log loses its last 5,000 bytes
        f.seek(cut)
        f.write(bytes(5_000))
    os.unlink(tmp_path / "d" / "store" / "checkpoint")
    with caplog.at_level(logging.ERROR, "ferrymq.state"):
        async with Broker.open(config(tmp_path / "d")) as b:
            assert b.store.dispatched_pos < cut + 1
            assert [t.name for t in b.topics()] == ["a"]
            await b.create_topic("after", 1)
            crash_copy(tmp_path / "d", tmp_path / "crashed")
    assert "before the state snapshot" in caplog.text
    async with Broker.open(config(tmp_path / "crashed")) as b:
        assert [t.name for t in b.topics()] == ["a", "after"]


async def test_a_damaged_state_record_is_logged_and_skipped(tmp_path, caplog) -> None:
    async with Broker.open(config(tmp_path / "live")) as b:
        await b.create_topic("t", 1)
        b.state.append([("x", "k", 1)])
        # A record of the state topic whose body is not a state record (its CRC is
        # right: a bug, not a torn write).
        b.store.append(STATE_TOPIC, 0, b"\xc1 not msgpack", b"")
        b.state.append([("x", "k", 2)])
        crash_copy(tmp_path / "live", tmp_path / "crashed")
    with caplog.at_level(logging.ERROR, "ferrymq.state"):
        async with Broker.open(config(tmp_path / "crashed")) as b:
            assert b.state.get("x", "k") == 2
            assert b.state.stats["apply_errors"] == 1
            assert [t.name for t in b.topics()] == ["t"]
    assert "cannot be applied" in caplog.text


async def test_retention_keeps_state_records_no_snapshot_holds(tmp_path) -> None:
    cfg = config(tmp_path / "d", segment_size=128 * 1024, max_message_size=16 * 1024,
                 retention_hours=0.0, max_disk_ratio=1.0, state_snapshot_interval_s=3600.0)
    async with Broker.open(cfg) as b:
        await b.create_topic("keep-me", 1)  # its record lands in the first segment
        b.commit_offset("g", "keep-me", 0, 0)
        for _ in range(40):
            await b.put(Message("filler", b"x" * 10_000))
        assert len(b.store.commitlog.segments) > 2
        first = b.store.commitlog.segments[0].base
        floor = b.state.retention_floor()
        assert floor is not None and floor < b.store.commitlog.segments[1].base
        assert b.run_retention() == [], "the first segment holds unsnapshotted state"
        assert b.state.since_snapshot > 0 and b.state._wakeup.is_set(), "a snapshot is asked for"
        await b.state.snapshot()
        assert b.state.retention_floor() is None
        deleted = b.run_retention()
        assert first in deleted
        crash_copy(tmp_path / "d", tmp_path / "crashed")
    async with Broker.open(cfg) as b:
        assert b.topic("keep-me").queues == 1
        assert b.committed_offset("g", "keep-me", 0) == 0
    async with Broker.open(config(tmp_path / "crashed", segment_size=128 * 1024,
                                  max_message_size=16 * 1024)) as b:
        assert b.topic("keep-me").queues == 1


async def test_the_compaction_task_snapshots_after_enough_records(tmp_path) -> None:
    async with Broker.open(config(tmp_path / "d", state_snapshot_records=50)) as b:
        await b.create_topic("t", 1)
        for off in range(1, 200):
            b.commit_offset("g", "t", 0, off)
        with trio.fail_after(30):
            while b.state.since_snapshot >= 50:
                await trio.sleep(0.01)
        assert b.state.stats["snapshots"] >= 1


async def test_a_failed_fsync_under_a_snapshot_fails_the_store(tmp_path) -> None:
    """The kernel reports a failed writeback once: the snapshot that saw it must fail
    the store, as the flusher would, or a later fsync could "succeed" over lost pages."""
    from ferrymq.core.errors import FlushFailed

    async with Broker.open(config(tmp_path / "d")) as b:
        await b.create_topic("t", 1)

        def broken(upto: int | None = None) -> int:
            raise OSError(5, "Input/output error")

        b.store.flush = broken  # type: ignore[method-assign]
        with pytest.raises(OSError):
            await b.state.snapshot()
        with pytest.raises(FlushFailed):
            await b.put(Message("t", b"x"))
        assert not list((tmp_path / "d" / "state").glob("snapshot-*"))


async def test_a_topic_deleted_while_its_creation_waits_for_the_flush_is_not_found(
        tmp_path) -> None:
    import threading

    from ferrymq.core.errors import TopicNotFound

    async with Broker.open(config(tmp_path / "d", flush="sync")) as b:
        gate = threading.Event()
        flush = b.store.commitlog.flush

        def slow_flush(upto: int | None = None) -> int:
            gate.wait(30)  # a slow disk: the fsync returns when the test says so
            return flush(upto)

        b.store.commitlog.flush = slow_flush  # type: ignore[method-assign]
        result: list[object] = []

        async def create() -> None:
            try:
                result.append(await b.create_topic("brief", 1))
            except TopicNotFound as exc:
                result.append(exc)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(create)
            while "brief" not in b.meta.topics:
                await trio.sleep(0.001)
            nursery.start_soon(b.delete_topic, "brief")
            while "brief" in b.meta.topics:
                await trio.sleep(0.001)
            gate.set()
        assert isinstance(result[0], TopicNotFound)
