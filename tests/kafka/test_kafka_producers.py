"""Idempotent producer state: sequence rules, duplicates, persistence and truncation."""

from __future__ import annotations

from ferrymq.gateways.kafka.producers import ProducerStates, Verdict


def test_sequence_rules(tmp_path) -> None:
    p = ProducerStates(str(tmp_path))
    pid, epoch = p.new_producer(0)
    assert p.check(pid, epoch, "t", 0, 0, 5) == (Verdict.APPEND, -1)
    p.record(pid, epoch, "t", 0, 0, 5, 100, 0)
    assert p.check(pid, epoch, "t", 0, 0, 5) == (Verdict.DUPLICATE, 100)
    assert p.check(pid, epoch, "t", 0, 5, 3) == (Verdict.APPEND, -1)
    assert p.check(pid, epoch, "t", 0, 9, 1)[0] is Verdict.OUT_OF_ORDER, "a gap is rejected"
    assert p.check(pid, epoch - 1, "t", 0, 5, 1)[0] is Verdict.FENCED
    assert p.check(pid + 77, 0, "t", 0, 3, 1)[0] is Verdict.UNKNOWN_PRODUCER
    assert p.check(pid, epoch, "t", 1, 0, 1)[0] is Verdict.APPEND, "per partition"


def test_snapshot_survives_a_restart_and_truncation_forgets_lost_batches(tmp_path) -> None:
    p = ProducerStates(str(tmp_path))
    pid, epoch = p.new_producer(0)
    p.record(pid, epoch, "t", 0, 0, 2, 10, 0)
    p.record(pid, epoch, "t", 0, 2, 2, 12, 0)
    p.save(p.snapshot({("t", 0): 14}))
    q = ProducerStates(str(tmp_path))
    assert q.load()
    assert q.snapshot_ends == {("t", 0): 14}
    assert q.check(pid, epoch, "t", 0, 2, 2) == (Verdict.DUPLICATE, 12)
    q.truncate("t", 0, 12)  # the batch at 12 was lost with an unflushed tail
    assert q.check(pid, epoch, "t", 0, 2, 2) == (Verdict.APPEND, -1)
    assert q.new_producer(0)[0] > pid


async def test_producer_ids_are_never_handed_out_twice_across_restarts(tmp_path) -> None:
    """Ids are reserved in blocks by state records: a restart (or a crash) skips to the
    next block; ids a round-1 producer snapshot handed out are never reused."""
    import trio
    from ferrymq.core.broker import Broker, BrokerConfig
    from ferrymq.gateways.kafka.transactions import TransactionCoordinator

    cfg = BrokerConfig(data_dir=str(tmp_path / "data"))
    seen: set[int] = set()
    for _ in range(2):
        async with Broker.open(cfg) as broker:
            co = TransactionCoordinator(broker)
            co.load()
            co.reserve_below(5000)
            for _ in range(3):
                pid = await co.new_producer_id()
                assert pid >= 5000 and pid not in seen
                seen.add(pid)
            await trio.lowlevel.checkpoint()
