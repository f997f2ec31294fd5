"""A round-1 data directory (topics.json, groups.json, offsets.json) is imported into the
state log on first start, and its files are renamed."""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path

from ferrymq.core import Broker, BrokerConfig
from ferrymq.core.store.store import MessageStore, StoreConfig

NOW = int(time.time() * 1000)


def config(path: Path) -> BrokerConfig:
    return BrokerConfig(data_dir=str(path), segment_size=1 << 20, max_message_size=64 * 1024,
                        cq_entries_per_file=4096, index_slots=1024, index_entries=4096,
                        default_queues=2)


def write_round1_directory(d: Path) -> None:
    """Files exactly as round 1 wrote them (its ``Metadata.dump_*`` formats), over a
    CommitLog that holds messages and no state record."""
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
            assert [m.body for m in b.get(None, "orders", 1, 0).messages(0)] == [
                b"m1", b"m3", b"m5"]
    assert caplog.text.count("imported round-1 metadata") == 1
    for name in ("config/topics.json", "config/groups.json", "config/offsets.json"):
        assert not (d / name).exists()
        assert (d / f"{name}.imported").exists(), "renamed, never deleted"
    caplog.clear()
    with caplog.at_level(logging.WARNING, "ferrymq.broker"):
        async with Broker.open(config(d)) as b:
            assert [t.name for t in b.topics()] == ["jobs", "orders"]
            assert b.committed_offset("billing", "orders", 0) == 2
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
