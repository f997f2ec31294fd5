"""Log compaction (core/store/compaction.py): the latest record per key kept at its own
offset, tombstones kept for delete.retention.ms, offsets never reused, the same view
after a restart, and a pass that did not switch leaves nothing behind."""

from __future__ import annotations

import os

import ferrymq.gateways.kafka  # noqa: F401  (registers the Kafka batch decoder)
import pytest
from ferrymq.core import Broker, BrokerConfig
from ferrymq.core import topicconfig as tc
from ferrymq.protocols.kafka import records as kr

T0 = 1_600_000_000_000


def config(tmp_path, **over) -> BrokerConfig:
    base = dict(data_dir=str(tmp_path / "data"), segment_size=1 << 20,
                max_message_size=64 * 1024, cq_entries_per_file=8, index_slots=64,
                index_entries=256, default_queues=1)
    base.update(over)
    return BrokerConfig(**base)


def batch(*records: tuple[str, str | None]) -> bytes:
    return kr.encode_batch(0, [(T0, k.encode(), None if v is None else v.encode(), ())
                               for k, v in records])


async def produce_history(b: Broker, topic: str) -> None:
    await b.put_kafka_batch(topic, 0, batch(("a", "a1"), ("b", "b1"), ("c", "c1")))  # 0-2
    await b.put_kafka_batch(topic, 0, batch(("a", "a2")))  # 3
    await b.put_kafka_batch(topic, 0, batch(("b", "b2"), ("a", "a3")))  # 4-5
    await b.put_kafka_batch(topic, 0, batch(("c", None)))  # 6: a tombstone for c
    b.store.flush()  # compaction only takes what is on disk


def offsets_and_keys(b: Broker, topic: str, offset: int = 0) -> list[tuple[int, str]]:
    out = []
    while True:
        got = b.get(None, topic, 0, offset, 1000)
        if not got.records:
            return out
        for r in got.records:
            hb = kr.decode_batch(bytes(r.decode().body), verify=True)
            out += [(x.offset, x.key.decode()) for x in hb.records if x.offset >= offset]
        offset = got.next_offset


async def test_the_latest_record_per_key_is_kept_at_its_offset(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("c", 1, attributes={"cleanup.policy": "compact"})
        await produce_history(b, "c")
        (stats,) = await b.compact("c")
        assert (stats.start, stats.end, stats.records_in) == (0, 7, 4)
        assert offsets_and_keys(b, "c") == [(4, "b"), (5, "a"), (6, "c")]  # c's tombstone kept
        assert b.queue_bounds("c", 0) == (0, 7)
        # A consumer inside a gap reads on from the next kept record.
        assert offsets_and_keys(b, "c", 1) == [(4, "b"), (5, "a"), (6, "c")]
        assert offsets_and_keys(b, "c", 5) == [(5, "a"), (6, "c")]
        # Offsets are never reused: the next record continues the queue.
        r = await b.put_kafka_batch("c", 0, batch(("b", "b3")))
        assert r.queue_offset == 7
        assert offsets_and_keys(b, "c") == [(4, "b"), (5, "a"), (6, "c"), (7, "b")]


async def test_tombstones_go_after_delete_retention_and_later_passes_recompact(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("c", 1, attributes={"cleanup.policy": "compact"})
        await produce_history(b, "c")
        await b.compact("c")
        await b.put_kafka_batch("c", 0, batch(("b", "b3")))  # 7
        b.store.flush()
        await b.alter_topic_configs("c", [("delete.retention.ms", tc.OP_SET, "0")])
        (stats,) = await b.compact("c")
        assert (stats.start, stats.end) == (0, 8)
        assert offsets_and_keys(b, "c") == [(5, "a"), (7, "b")]  # c deleted, b superseded


async def test_min_compaction_lag_keeps_young_records_uncompacted(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("c", 1, attributes={"cleanup.policy": "compact",
                                                 "min.compaction.lag.ms": "3600000"})
        await produce_history(b, "c")
        assert await b.compact("c") == []
        assert len(offsets_and_keys(b, "c")) == 7


async def test_the_compacted_view_survives_a_restart_and_an_unswitched_pass(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("c", 1, attributes={"cleanup.policy": "compact"})
        await produce_history(b, "c")
        await b.compact("c")
    # A pass that wrote its generation but crashed before switching the state file.
    qdir = tmp_path / "data" / "store" / "compacted" / "c" / "0"
    (qdir / f"{99:020d}").write_bytes(b"half a pass")
    async with Broker.open(config(tmp_path)) as b:
        assert offsets_and_keys(b, "c") == [(4, "b"), (5, "a"), (6, "c")]
        assert b.queue_bounds("c", 0) == (0, 7)
        assert not (qdir / f"{99:020d}").exists()
        r = await b.put_kafka_batch("c", 0, batch(("a", "a4")))
        assert r.queue_offset == 7


async def test_only_compacted_topics_are_compacted(tmp_path) -> None:
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("d", 1)
        await produce_history(b, "d")
        assert await b.compact() == []
        with pytest.raises(Exception):  # noqa: B017
            await b.compact("nope")
        assert len(offsets_and_keys(b, "d")) == 7
        assert not os.path.exists(tmp_path / "data" / "store" / "compacted" / "d")


async def test_a_topic_deleted_during_a_pass_leaves_no_compacted_log(tmp_path) -> None:
    import trio

    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("c", 1, attributes={"cleanup.policy": "compact"})
        await produce_history(b, "c")
        original = b.store.compact_queue

        def pass_then_delete(*args, **kw):  # type: ignore[no-untyped-def]
            result = original(*args, **kw)
            trio.from_thread.run(b.delete_topic, "c")  # on the loop, while the pass returns
            return result

        b.store.compact_queue = pass_then_delete  # type: ignore[method-assign]
        assert await b.compact() == []
        b.store.compact_queue = original  # type: ignore[method-assign]
        assert not (tmp_path / "data" / "store" / "compacted" / "c" / "0").exists()
        await b.create_topic("c", 1, attributes={"cleanup.policy": "compact"})
        assert b.queue_bounds("c", 0) == (0, 0)
    async with Broker.open(config(tmp_path)) as b:
        assert b.queue_bounds("c", 0) == (0, 0)


async def test_a_crash_at_either_side_of_the_switch_leaves_one_whole_generation(
        tmp_path, monkeypatch) -> None:
    """Before the state file is replaced the previous generation is in force; after it
    (the ConsumeQueue's entries not yet dropped) the new one is, and the restart drops
    the entries it covers."""
    from ferrymq.core.store import compaction

    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("c", 1, attributes={"cleanup.policy": "compact"})
        await produce_history(b, "c")
        await b.compact("c")  # generation 1: [0, 7)
        await b.put_kafka_batch("c", 0, batch(("a", "a4"), ("b", "b4")))  # 7-8
        b.store.flush()

        def crash(*args, **kw):  # type: ignore[no-untyped-def]
            raise OSError("killed before the switch")
        monkeypatch.setattr(compaction, "atomic_write", crash)
        with pytest.raises(OSError):
            await b.compact("c")
        monkeypatch.undo()
    async with Broker.open(config(tmp_path)) as b:
        assert offsets_and_keys(b, "c") == [(4, "b"), (5, "a"), (6, "c"), (7, "a"), (8, "b")]
        # Now a pass that switched the state file but "died" before the loop dropped the
        # ConsumeQueue entries.
        monkeypatch.setattr(b.store, "switch_compacted", lambda *a: None)
        await b.compact("c")
        monkeypatch.undo()
    async with Broker.open(config(tmp_path)) as b:
        assert offsets_and_keys(b, "c") == [(6, "c"), (7, "a"), (8, "b")]
        assert b.queue_bounds("c", 0) == (0, 9)
        assert len(os.listdir(tmp_path / "data" / "store" / "compacted" / "c" / "0")) == 2


def test_the_key_scanner_reads_what_the_decoder_reads() -> None:
    """compaction._scan reads only offsets, keys and null values, with one-byte varints
    inlined: it must agree with the full decoder, long keys and offset gaps included."""
    from ferrymq.core.store import compaction

    records = [(T0 + i * 70_000, (b"k" * (i * 40)) or None, None if i % 3 == 0 else b"v" * i, ())
               for i in range(1, 9)]
    deltas = [0, 1, 63, 64, 200, 1000, 70_000, 70_001]
    for compress in (False, True):
        body = kr.encode_batch(5, records, offset_deltas=deltas,
                               compression=1 if compress else 0)
        expected = [(x.offset, x.key, x.value is None)
                    for x in kr.decode_batch(body, verify=True).records]
        scanned = compaction._scan(body)
        assert scanned == (None if compress else expected)
