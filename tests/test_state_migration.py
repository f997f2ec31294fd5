"""A round-1 data directory (topics.json, groups.json, offsets.json, the pop journal and
snapshot) is imported into the state log on first start, and its files are renamed."""

from __future__ import annotations

import json
import logging
import shutil
import struct
import time
import zlib
from pathlib import Path

import msgpack
from ferrymq.core import Broker, BrokerConfig
from ferrymq.core.pop import Receipt, ReceiptCodec
from ferrymq.core.store.store import MessageStore, StoreConfig

SECRET = bytes(range(32))
NOW = int(time.time() * 1000)
UNTIL = NOW + 3_600_000


def config(path: Path) -> BrokerConfig:
    return BrokerConfig(data_dir=str(path), segment_size=1 << 20, max_message_size=64 * 1024,
                        cq_entries_per_file=4096, index_slots=1024, index_entries=4096,
                        default_queues=2)


def write_round1_directory(d: Path) -> None:
    """Files exactly as round 1 wrote them (its ``Metadata.dump_*`` and ``PopService``
    formats), over a CommitLog that holds messages and no state record. The pop
    journal holds what happened after its last snapshot (a crash: no final snapshot)."""
    store = MessageStore(StoreConfig(directory=str(d / "store"), segment_size=1 << 20,
                                     cq_entries_per_file=4096, index_slots=1024,
                                     index_entries=4096))
    store.open()
    for i in range(6):
        store.append_message("orders", i % 2, b"m%d" % i, {})
    for i in range(4):
        store.append_message("jobs", 0, b"j%d" % i, {})
    store.checkpoint()
    store.close()
    config_dir = d / "config"
    config_dir.mkdir()
    topic = {"perm": 6, "message_type": "NORMAL", "created_at": NOW, "created_phys": 0}
    (config_dir / "topics.json").write_text(json.dumps({
        "topics": [dict(topic, name="orders", queues=2, attributes={"owner": "billing"}),
                   dict(topic, name="jobs", queues=1, attributes={})],
        "tombstones": {"gone": 0}}, indent=1))
    group = {"consume_enable": True, "broadcast": False, "retry_queues": 1,
             "created_at": NOW, "attributes": {}}
    (config_dir / "groups.json").write_text(json.dumps({"groups": [
        dict(group, name="billing", max_reconsume_times=3),
        dict(group, name="workers", max_reconsume_times=16)]}, indent=1))
    (config_dir / "offsets.json").write_text(json.dumps(
        {"offsets": {"billing": {"orders": {"0": 2, "1": 1}}, "workers": {"jobs": {"0": 0}}}}))
    pop = d / "pop"
    pop.mkdir()
    (pop / "secret").write_bytes(SECRET)
    # Snapshot at sequence 1: offsets 0, 1, 2 of jobs leased (leases 1, 2, 3).
    (pop / "snapshot").write_bytes(msgpack.packb({
        "version": 1, "seq": 1, "next_lease": 4, "queues": [
            ["workers", "jobs", 0, 3, [[0, 1, 1, NOW, UNTIL], [1, 2, 1, NOW, UNTIL],
                                       [2, 3, 1, NOW, UNTIL]]]]}))
    # Then the journal: an op the snapshot holds (seq 1, skipped), an ack of offset 0
    # (seq 2), a new invisible time for offset 1 (seq 3, lease 4), and a torn frame.
    frames = b""
    for seq, op in ((1, ["A", "workers", "jobs", 0, [2]]),
                    (2, ["A", "workers", "jobs", 0, [0]]),
                    (3, ["C", "workers", "jobs", 0, 1, 4, NOW, UNTIL + 1000])):
        payload = msgpack.packb(op)
        frames += struct.pack(">IIQ", len(payload), zlib.crc32(payload), seq) + payload
    (pop / "journal-00000000000000000002").write_bytes(frames + b"\x00\x00\x00\x09torn")


def receipt(offset: int, lease: int) -> str:
    return ReceiptCodec(SECRET).encode(Receipt("workers", "jobs", 0, offset, NOW, 3_600_000,
                                               lease))


async def test_a_round1_directory_is_imported_once_and_its_files_renamed(tmp_path, caplog
                                                                         ) -> None:
    d = tmp_path / "data"
    write_round1_directory(d)
    with caplog.at_level(logging.WARNING, "ferrymq.broker"):
        async with Broker.open(config(d)) as b:
            assert [(t.name, t.queues, dict(t.attributes)) for t in b.topics()] == [
                ("jobs", 1, {}), ("orders", 2, {"owner": "billing"})]
            assert b.meta.tombstones == {"gone": 0}
            assert b.group("billing").max_reconsume_times == 3
            assert b.committed_offset("billing", "orders", 1) == 1
            assert b.committed_offset("workers", "jobs", 0) == 0
            [status] = b.pop_status("workers", "jobs")
            assert (status.pop_offset, status.in_flight) == (3, 2), "offset 0 acked"
            b.ack(receipt(2, 3))  # a receipt round 1 issued still acks
            b.ack(receipt(1, 4))  # the journal's renewal of offset 1
            assert [m.body for m in b.get(None, "orders", 1, 0).messages(0)] == [
                b"m1", b"m3", b"m5"]
    assert caplog.text.count("imported round-1 metadata") == 1
    for name in ("config/topics.json", "config/groups.json", "config/offsets.json",
                 "pop/snapshot", "pop/journal-00000000000000000002"):
        assert not (d / name).exists()
        assert (d / f"{name}.imported").exists(), "renamed, never deleted"
    assert (d / "pop" / "secret.imported").exists(), "the receipt secret too"
    caplog.clear()
    with caplog.at_level(logging.WARNING, "ferrymq.broker"):
        async with Broker.open(config(d)) as b:
            assert [t.name for t in b.topics()] == ["jobs", "orders"]
            assert b.committed_offset("billing", "orders", 0) == 2
            assert b.pop_status("workers", "jobs")[0].in_flight == 0
    assert "imported" not in caplog.text


async def test_files_left_by_a_crash_after_the_import_are_not_imported_again(tmp_path) -> None:
    """The import is a snapshot; the files are renamed after it. A crash between the two
    leaves both: the files are then only renamed, never applied over newer state."""
    d = tmp_path / "data"
    write_round1_directory(d)
    async with Broker.open(config(d)) as b:
        b.commit_offset("billing", "orders", 0, 5)
    for p in d.rglob("*.imported"):
        shutil.copy(p, p.with_suffix(""))
    async with Broker.open(config(d)) as b:
        assert b.committed_offset("billing", "orders", 0) == 5
    assert not (d / "config" / "offsets.json").exists()
