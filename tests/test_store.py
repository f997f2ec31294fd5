"""The store below the Broker: CommitLog segments, ConsumeQueue lookups, the key index,
recovery, retention and flushing — synchronous, with small files so every edge is reached."""

from __future__ import annotations

import itertools
import os
import struct

import pytest
from ferrymq.core.errors import FlushFailed, InvalidMessage
from ferrymq.core.filter import parse_filter
from ferrymq.core.message import GetStatus, Message
from ferrymq.core.store import consumequeue
from ferrymq.core.store.store import MessageStore, StoreConfig
from ferrymq.protocols import record as rec

SEGMENT = 4096


@pytest.fixture
def config(tmp_path) -> StoreConfig:
    return StoreConfig(directory=str(tmp_path / "store"), segment_size=SEGMENT,
                       cq_entries_per_file=8, index_slots=16, index_entries=32)


@pytest.fixture
def store(config):
    s = MessageStore(config)
    s.open()
    yield s
    if s._open:
        s.close()


def put(store, body: bytes, topic="t", queue=0, **props):
    return store.append_message(topic, queue, body, props)


def bodies(result) -> list[bytes]:
    return [m.body for m in result.messages()]


def test_offsets_are_assigned_per_queue_and_read_back(store) -> None:
    r = [put(store, b"m%d" % i, queue=i % 2) for i in range(6)]
    assert [(x.queue_id, x.queue_offset) for x in r] == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2),
                                                         (1, 2)]
    g = store.get("t", 0, 0, 32, 1 << 20)
    assert g.status is GetStatus.FOUND
    assert bodies(g) == [b"m0", b"m2", b"m4"]
    assert (g.next_offset, g.min_offset, g.max_offset) == (3, 0, 3)
    assert [m.queue_offset for m in g.messages()] == [0, 1, 2]


def test_segments_roll_with_a_blank_record_and_continuous_offsets(store, config) -> None:
    results = [put(store, bytes(300) + b"%03d" % i) for i in range(40)]
    size = rec.record_size(303, 1, 0)
    names = sorted(os.listdir(os.path.join(config.directory, "commitlog")))
    assert len(names) > 3
    assert [int(n) for n in names] == [i * SEGMENT for i in range(len(names))]
    assert all(len(n) == 20 for n in names)
    for a, b in itertools.pairwise(results):
        assert a.physical_offset // SEGMENT == (a.physical_offset + size - 1) // SEGMENT, \
            "a record never spans two segments"
        if b.physical_offset // SEGMENT != a.physical_offset // SEGMENT:
            end = a.physical_offset + size
            assert b.physical_offset == (end // SEGMENT + 1) * SEGMENT
            blank = store.commitlog.read(end, 8)
            assert struct.unpack(">ii", blank) == (b.physical_offset - end, rec.BLANK_MAGIC)
        else:
            assert b.physical_offset == a.physical_offset + size
    g = store.get("t", 0, 0, 100, 1 << 30)
    assert [m.body[300:] for m in g.messages()] == [b"%03d" % i for i in range(40)]


def test_consume_queue_files_roll_and_lookup_by_offset(store, config) -> None:
    for i in range(30):
        put(store, b"x%d" % i)
    qdir = os.path.join(config.directory, "consumequeue", "t", "0")
    assert len(os.listdir(qdir)) == 4  # 8 entries per file
    for off in (0, 7, 8, 15, 29):
        g = store.get("t", 0, off, 1, 1 << 20)
        assert bodies(g) == [b"x%d" % off]


def test_batch_records_cover_a_range_of_offsets(store) -> None:
    put(store, b"before")
    r = store.append_batch("t", 0, [Message("t", b"b%d" % i) for i in range(5)])
    put(store, b"after")
    assert (r.queue_offset, r.count, r.next_offset) == (1, 5, 6)
    g = store.get("t", 0, 3, 32, 1 << 20)
    assert g.records[0].queue_offset == 1 and g.records[0].count == 5
    assert bodies(g) == [b"b2", b"b3", b"b4", b"after"][:0] or \
        [m.body for m in g.messages(3)] == [b"b2", b"b3", b"b4", b"after"]
    assert store.get("t", 0, 6, 32, 1 << 20).records[0].queue_offset == 6
    assert store.queue_bounds("t", 0) == (0, 7)


def test_get_statuses(store) -> None:
    assert store.get("t", 0, 0, 1, 100).status is GetStatus.NO_MESSAGE_IN_QUEUE
    put(store, b"a")
    assert store.get("t", 0, 1, 1, 100).status is GetStatus.NO_NEW_MESSAGE
    g = store.get("t", 0, 5, 1, 100)
    assert (g.status, g.next_offset) == (GetStatus.OFFSET_OVERFLOW_BADLY, 1)


def test_max_messages_and_max_bytes_but_always_one_record(store) -> None:
    for _i in range(10):
        put(store, bytes(100))
    assert store.get("t", 0, 0, 3, 1 << 20).message_count == 3
    g = store.get("t", 0, 0, 100, 1)
    assert g.message_count == 1, "a record larger than max_bytes still comes back alone"
    assert store.get("t", 0, 0, 100, 500).message_count == 2


def test_offset_for_time(store) -> None:
    r0 = put(store, b"a")
    store._last_ts = r0.store_timestamp + 1000  # the next records are stored 1 s later
    r1 = put(store, b"b")
    assert store.offset_for_time("t", 0, 0) == 0
    assert store.offset_for_time("t", 0, r0.store_timestamp + 1) == 1
    assert store.offset_for_time("t", 0, r1.store_timestamp + 1) == 2
    assert store.offset_for_time("nope", 0, 0) == 0


def test_tag_and_sql_filters_skip_without_reading(store) -> None:
    put(store, b"a", TAGS="TagA", color="red")
    put(store, b"b", TAGS="TagB", color="blue")
    put(store, b"c", TAGS="TagA", color="blue")
    g = store.get("t", 0, 0, 32, 1 << 20, parse_filter("TagA"))
    assert bodies(g) == [b"a", b"c"]
    g = store.get("t", 0, 0, 32, 1 << 20, parse_filter("color = 'blue'", "SQL92"))
    assert bodies(g) == [b"b", b"c"]
    g = store.get("t", 0, 1, 1, 1 << 20, parse_filter("TagC"))
    assert (g.status, g.next_offset) == (GetStatus.NO_MATCHED_MESSAGE, 3)


def test_filters_apply_per_member_of_a_mixed_batch(store) -> None:
    store.append_batch("t", 0, [Message("t", b"1", {"TAGS": "TagA"}),
                                Message("t", b"2", {"TAGS": "TagB"}),
                                Message("t", b"3")])
    g = store.get("t", 0, 0, 32, 1 << 20, parse_filter("TagB"))
    assert bodies(g) == [b"2"]
    assert store.get("t", 0, 0, 32, 1 << 20, parse_filter("TagZ")).records == ()


def test_key_index_finds_keys_and_client_ids(store) -> None:
    put(store, b"a", KEYS="order-1 order-2", UNIQ_KEY="C0FFEE")
    put(store, b"b", KEYS="order-2")
    store.append_batch("t", 0, [Message("t", b"c", {"KEYS": "order-3"}),
                                Message("t", b"d", {"KEYS": "order-2", "UNIQ_KEY": "BEEF"})])
    assert sorted(m.body for m in store.lookup_key("order-2")) == [b"a", b"b", b"d"]
    assert [m.body for m in store.lookup_key("C0FFEE")] == [b"a"]
    (d,) = store.lookup_key("BEEF")
    assert (d.body, d.queue_offset, d.batch_index) == (b"d", 3, 1)
    assert store.lookup_key("order-2", topic="other") == []
    assert store.lookup_key("nothing") == []


def test_key_index_rolls_files_and_still_finds_old_keys(store, config) -> None:
    for i in range(100):
        put(store, b"%d" % i, KEYS="k%d" % i)
    assert len(os.listdir(os.path.join(config.directory, "index"))) >= 3
    assert [m.body for m in store.lookup_key("k3")] == [b"3"]
    assert [m.body for m in store.lookup_key("k99")] == [b"99"]


def test_index_files_left_broken_by_a_crash_are_dropped_not_fatal(config) -> None:
    s = MessageStore(config)
    s.open()
    for i in range(40):
        put(s, b"%d" % i, KEYS="k%d" % i)
    s.close()
    d = os.path.join(config.directory, "index")
    names = sorted(os.listdir(d))
    # What a SIGKILL between creating and sizing a file used to leave behind, a
    # half-built temporary file, and a file whose header is garbage.
    open(os.path.join(d, "9" * 20), "wb").close()
    open(os.path.join(d, "%020d.tmp" % 1), "wb").close()
    with open(os.path.join(d, names[-1]), "r+b") as f:
        f.write(b"\xff" * 40)
    s = MessageStore(config)
    s.open()
    assert sorted(os.listdir(d)) == names, "the broken file is built again from the log"
    assert [m.body for m in s.lookup_key("k3")] == [b"3"], "older files still answer"
    assert [m.body for m in s.lookup_key("k39")] == [b"39"], "the broken file's keys too"
    put(s, b"new", KEYS="fresh")
    assert [m.body for m in s.lookup_key("fresh")] == [b"new"]
    s.close()


def kafka_batch(count: int, base_offset: int = 99) -> bytes:
    """A RecordBatch v2 with ``count`` (empty) records; the store does not check its CRC."""
    tail = struct.pack(">hiqqqhii", 0, count - 1, 1000, 1000, -1, -1, -1, count) + b"\x00" * 7
    return struct.pack(">qiibI", base_offset, 4 + 1 + 4 + len(tail), 0, 2, 0) + tail


def test_kafka_batches_keep_their_bytes_but_get_the_queue_offset(store) -> None:
    put(store, b"native")
    raw = kafka_batch(3)
    r = store.append_kafka_batch("t", 0, raw)
    assert (r.queue_offset, r.count) == (1, 3)
    stored = store.get("t", 0, 2, 10, 1 << 20).records[0]
    body = stored.decode().body
    assert struct.unpack_from(">q", body)[0] == 1, "baseOffset rewritten to the queue offset"
    assert body[16:] == raw[16:], "everything the CRC covers is kept verbatim"
    assert store.queue_bounds("t", 0) == (0, 4)
    with pytest.raises(InvalidMessage):
        store.append_kafka_batch("t", 0, raw[:-1])
    with pytest.raises(InvalidMessage):
        store.append_kafka_batch("t", 0, raw[:16] + b"\x01" + raw[17:])


# ----------------------------------------------------------------------- recovery


def test_clean_reopen_restores_everything(config) -> None:
    s = MessageStore(config)
    s.open()
    for i in range(20):
        put(s, b"%d" % i, queue=i % 3, KEYS="k%d" % i)
    s.close()
    s = MessageStore(config)
    report = s.open()
    assert report.clean_shutdown and report.records_redispatched == 0
    assert [m.body for m in s.get("t", 1, 0, 32, 1 << 20).messages()] == [b"1", b"4", b"7", b"10",
                                                                          b"13", b"16", b"19"]
    assert [m.body for m in s.lookup_key("k7")] == [b"7"]
    r = put(s, b"next", queue=1)
    assert r.queue_offset == 7
    s.close()


def test_crash_recovery_redispatches_past_the_checkpoint(config) -> None:
    s = MessageStore(config)
    s.open()
    for i in range(10):
        put(s, b"a%d" % i)
    s.checkpoint()
    for i in range(10):
        put(s, b"b%d" % i, KEYS="late%d" % i)
    # A crash: no close(), so the abort marker stays and nothing is flushed.
    s.commitlog.flush()
    s._lock.release()
    s2 = MessageStore(config)
    report = s2.open()
    assert not report.clean_shutdown
    assert report.records_redispatched == 10
    g = s2.get("t", 0, 0, 64, 1 << 20)
    assert [m.body for m in g.messages()] == [b"a%d" % i for i in range(10)] + \
        [b"b%d" % i for i in range(10)]
    assert [m.body for m in s2.lookup_key("late4")] == [b"b4"]
    s2.close()


@pytest.mark.parametrize("how", ["overwrite", "truncate-and-append"])
def test_a_torn_tail_is_cut_and_the_store_serves_again(config, how) -> None:
    s = MessageStore(config)
    s.open()
    results = [put(s, b"m%02d" % i + bytes(50)) for i in range(12)]
    s.close()
    last = results[-1]
    seg = os.path.join(config.directory, "commitlog",
                       f"{last.physical_offset // SEGMENT * SEGMENT:020d}")
    cut = last.physical_offset % SEGMENT + 40  # the middle of the last record
    if how == "overwrite":
        with open(seg, "r+b") as f:
            f.seek(cut)
            f.write(os.urandom(200))
    else:  # the file itself is cut short mid-record, then garbage is appended to it
        os.truncate(seg, cut)
        with open(seg, "ab") as f:
            f.write(os.urandom(300))
    open(os.path.join(config.directory, "abort"), "w").close()
    s = MessageStore(config)
    report = s.open()
    assert report.discarded_bytes and report.end == last.physical_offset
    assert os.path.getsize(seg) == SEGMENT
    g = s.get("t", 0, 0, 64, 1 << 20)
    assert [m.body[:3] for m in g.messages()] == [b"m%02d" % i for i in range(11)]
    r = put(s, b"fresh")
    assert (r.queue_offset, r.physical_offset) == (11, last.physical_offset)
    assert [m.body for m in s.get("t", 0, 11, 5, 1 << 20).messages()] == [b"fresh"]
    s.close()
    s = MessageStore(config)
    assert s.open().clean_shutdown
    assert s.queue_bounds("t", 0) == (0, 12)
    s.close()


def test_a_consume_queue_pointing_past_the_log_is_truncated(config) -> None:
    s = MessageStore(config)
    s.open()
    for i in range(5):
        put(s, b"%d" % i)
    s.close()
    # Lose the log's tail (as after a power cut) while the ConsumeQueue kept it.
    q = s.queues[("t", 0)]
    assert q.max_offset == 5
    cut = s.get  # noqa: F841
    seg = os.path.join(config.directory, "commitlog", f"{0:020d}")
    with open(seg, "r+b") as f:
        f.seek(3 * rec.record_size(1, 1, 0))
        f.write(bytes(SEGMENT - 3 * rec.record_size(1, 1, 0)))
    os.unlink(os.path.join(config.directory, "checkpoint"))
    s = MessageStore(config)
    s.open()
    assert s.queue_bounds("t", 0) == (0, 3)
    assert put(s, b"again").queue_offset == 3
    s.close()


def test_records_of_unaccepted_topics_are_not_redispatched(config) -> None:
    s = MessageStore(config)
    s.open()
    put(s, b"old", topic="gone")
    put(s, b"kept", topic="live")
    s.commitlog.flush()
    s._lock.release()
    os.unlink(os.path.join(config.directory, "checkpoint"))
    import shutil
    shutil.rmtree(os.path.join(config.directory, "consumequeue"))
    s2 = MessageStore(config)
    s2.open(accept=lambda topic, queue, phys: topic != "gone")
    assert s2.queue_bounds("gone", 0) == (0, 0)
    assert s2.queue_bounds("live", 0) == (0, 1)
    s2.close()


# ---------------------------------------------------------------------- retention


def test_retention_by_age_moves_queue_minimums(store) -> None:
    for i in range(60):
        put(store, bytes(200) + b"%d" % i, KEYS="k%d" % i)
    segs = store.commitlog.segments
    assert len(segs) >= 4
    old = segs[0].base, segs[1].base
    for s in segs[:2]:
        os.utime(s.path, (1_000_000, 1_000_000))
    import time
    deleted = store.retain(now_ms=int(time.time() * 1000), retention_ms=3600_000,
                           max_disk_ratio=1.0)
    assert deleted == list(old)
    lo, hi = store.queue_bounds("t", 0)
    assert lo > 0 and hi == 60
    g = store.get("t", 0, 0, 1, 1 << 20)
    assert (g.status, g.next_offset) == (GetStatus.OFFSET_TOO_SMALL, lo)
    assert store.get("t", 0, lo, 1, 1 << 20).records[0].physical_offset >= old[1] + SEGMENT
    assert store.lookup_key("k0") == []
    assert [m.queue_offset for m in store.lookup_key("k59")] == [59]


def test_retention_by_disk_watermark_ignores_age(store) -> None:
    for _i in range(60):
        put(store, bytes(200))
    n = len(store.commitlog.segments)
    assert n >= 4
    deleted = store.retain(now_ms=0, retention_ms=10**12, max_disk_ratio=0.5,
                           disk_usage=lambda: (52 * SEGMENT, 100 * SEGMENT))
    assert len(deleted) == 2, "2 segments get the disk back under 50%"
    assert len(store.commitlog.segments) == n - 2
    assert store.retain(0, 10**12, 0.5, disk_usage=lambda: (10, 100)) == []


def test_the_active_segment_is_never_deleted(store) -> None:
    put(store, b"x")
    assert store.retain(now_ms=10**15, retention_ms=0, max_disk_ratio=0.0,
                        disk_usage=lambda: (99, 100)) == []
    assert store.queue_bounds("t", 0) == (0, 1)


# ----------------------------------------------------------------------- flushing


def test_a_failed_fsync_is_an_error_never_a_silent_ok(store, monkeypatch) -> None:
    put(store, b"x")

    def broken(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fdatasync", broken)
    with pytest.raises(OSError):
        store.flush()
    assert store.commitlog.flushed_pos < store.commitlog.write_pos


def test_a_failed_store_refuses_writes(store) -> None:
    store.failed = FlushFailed("fsync failed")
    with pytest.raises(FlushFailed):
        put(store, b"x")


def test_consume_queue_entry_layout_is_40_bytes() -> None:
    assert consumequeue.ENTRY_SIZE == 40


def test_layout_limits_are_invalid_messages(store) -> None:
    # Past RocketMQ's 32,767 bytes properties take the long form (test_long_properties.py),
    # up to its own limit.
    with pytest.raises(InvalidMessage):
        store.append("t", 0, b"x", b"p" * (rec.MAX_LONG_PROPERTIES_BYTES + 1))
    with pytest.raises(InvalidMessage):
        store.append_message("x" * 300, 0, b"x", {})


def test_checkpoints_from_two_threads_at_once_take_turns(store) -> None:
    """The broker's periodic checkpoint and an explicit one (a test's, a shutdown's) may
    run together in two worker threads: both write checkpoint.tmp and rename it, so
    unserialized one could rename the other's file away (FileNotFoundError)."""
    import threading

    errors: list[BaseException] = []
    for i in range(10):
        put(store, b"x%d" % i)

    def checkpoints() -> None:
        try:
            for _ in range(60):
                store.checkpoint()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=checkpoints) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
