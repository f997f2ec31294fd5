"""Pop state in the state log: what a crash or a power cut can and cannot take back."""

from __future__ import annotations

import shutil

import pytest
from ferrymq.core.errors import ReceiptStale
from test_pop import broker_at, put_n
from test_pop import clock as clock  # the fixture


async def test_a_receipt_a_power_cut_orphaned_never_acks_the_next_delivery(tmp_path,
                                                                           clock) -> None:
    """A power cut can take back the last flush interval of pop records after their
    receipts went out. The message is then popped again; the orphaned receipt must not
    ack that new delivery (round 1 restarted lease numbers from the journal's last, and
    handed the same number out again)."""
    async with broker_at(tmp_path / "live") as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 1)
        shutil.copytree(tmp_path / "live", tmp_path / "cut",
                        ignore=shutil.ignore_patterns("lock"))  # the disk before the pop
        [orphan] = await b.pop("G", "T", 1, 60_000)
    async with broker_at(tmp_path / "cut") as b:
        [again] = await b.pop("G", "T", 1, 60_000)
        assert again.message.body == orphan.message.body
        with pytest.raises(ReceiptStale):
            b.ack(orphan.receipt)
        b.ack(again.receipt)
        assert b.pop_status("G", "T")[0].in_flight == 0


async def test_under_sync_flush_a_pop_returns_receipts_that_are_on_disk(tmp_path,
                                                                        clock) -> None:
    async with broker_at(tmp_path, flush="sync") as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 3)
        got = await b.pop("G", "T", 3, 60_000)
        assert len(got) == 3
        assert b.store.commitlog.flushed_pos >= b.state.end


async def test_acks_survive_a_crash_and_are_never_redelivered(tmp_path, clock) -> None:
    async with broker_at(tmp_path / "live") as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 5)
        got = await b.pop("G", "T", 5, 1_000)
        b.ack_batch([p.receipt for p in got[:3]])
        shutil.copytree(tmp_path / "live", tmp_path / "crashed",
                        ignore=shutil.ignore_patterns("lock"))
    async with broker_at(tmp_path / "crashed") as b:
        assert b.committed_offset("G", "T", 0) == 3, "pop progress is the committed offset"
        again = await b.pop("G", "T", 5, 60_000, wait_ms=5_000)
        assert [p.message.body for p in again] == [b"m3", b"m4"]


async def test_the_receipt_secret_is_state_and_round_one_s_file_is_imported(tmp_path,
                                                                           clock) -> None:
    """The secret that signs receipts lives in the state log with the leases it signs
    (a file beside them could be lost or restored apart). Round 1's file is imported:
    the receipts it signed stay valid."""
    async with broker_at(tmp_path / "d") as b:
        await b.create_topic("T", 1)
        await put_n(b, "T", 2)
        got = await b.pop("G", "T", 2, 60_000)
    pop_dir = tmp_path / "d" / "pop"
    assert not (pop_dir / "secret").exists()
    async with broker_at(tmp_path / "d") as b:
        b.ack(got[0].receipt)  # signed before the restart, checked after it
    legacy_only = tmp_path / "legacy"
    legacy_only.mkdir()
    (legacy_only / "pop").mkdir()
    (legacy_only / "pop" / "secret").write_bytes(b"k" * 32)
    async with broker_at(legacy_only) as b:
        assert b.state.get("pop_secret", "receipt") == b"k" * 32
    assert sorted(p.name for p in (legacy_only / "pop").iterdir()) == ["secret.imported"]
    async with broker_at(legacy_only) as b:
        assert b.state.get("pop_secret", "receipt") == b"k" * 32


async def test_no_door_can_write_or_read_the_receipt_secret(tmp_path, clock) -> None:
    """Doors keep their state in "<door>.<name>" namespaces; the secret's has no dot."""
    from ferrymq.core.access import SYSTEM
    from ferrymq.core.errors import InvalidArgument
    async with broker_at(tmp_path) as b:
        with pytest.raises(InvalidArgument):
            b.append_door_state([("pop_secret", "receipt", b"k" * 32)], principal=SYSTEM)
        with pytest.raises(InvalidArgument):
            await b.put_door_state([("pop_secret", "receipt", b"k" * 32)], principal=SYSTEM)
        with pytest.raises(InvalidArgument):
            b.door_state("pop_secret", principal=SYSTEM)
        assert len(b.state.get("pop_secret", "receipt")) == 32
