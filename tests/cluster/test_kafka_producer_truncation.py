"""The Kafka door's idempotent-producer snapshot after a truncation (gateways/kafka/
producers.py): a master that lost its term with a tail its slave never got comes back,
has the tail cut and, promoted again, must not believe the snapshot it wrote before —
its batches there, and its "replayed up to here", describe records that are gone.

Deterministic, in one process: two Brokers whose stream is pumped by hand (the helpers
of test_core_replication.py); the door's start-up steps are called as serve() calls
them."""

from __future__ import annotations

import os
from pathlib import Path

from ferrymq.core import Broker
from ferrymq.core.replication import Durability
from ferrymq.gateways.kafka.producers import ProducerStates, Verdict
from ferrymq.gateways.kafka.server import _save, check_snapshot_log, replay_producer_state
from ferrymq.protocols.kafka import records as kr
from test_core_replication import config, master, pump, slave

P, Q = 5000, 6000  # two idempotent producers (ids), epoch 0


def batch(pid: int, seq: int, body: bytes) -> bytes:
    return kr.encode_batch(0, [(1, None, body, [])], producer_id=pid, producer_epoch=0,
                           base_sequence=seq)


async def put(b: Broker, pid: int, seq: int, body: bytes) -> int:
    r = await b.put_kafka_batch("K", 0, batch(pid, seq, body), durability=Durability.LEADER)
    return r.queue_offset


async def door_start(b: Broker) -> ProducerStates:
    """What the Kafka door's start does with the producer snapshot."""
    states = ProducerStates(os.path.join(b.config.data_dir, "kafka"))
    states.load()
    check_snapshot_log(b, states)
    replay_producer_state(b, states)
    return states


async def test_a_snapshot_of_a_truncated_tail_is_not_believed(tmp_path: Path) -> None:
    ac = config(tmp_path / "a", replication_mode="async")  # the tail is acknowledged
    bc = config(tmp_path / "b", replication_mode="async")
    async with Broker.open(ac, master("a", 1, ("a", "b"))) as a, \
            Broker.open(bc, slave("b", "a")) as b:
        await a.create_topic("K", 1)
        for seq in range(3):
            await put(a, P, seq, b"p%d" % seq)
        pump(a, b, node="b")
        common = a.replication_position().end
        # The divergent tail, never sent to b: Q's first batch at offset 3.
        assert await put(a, Q, 0, b"q0-on-a") == 3
        states = await door_start(a)  # the master's door saves its snapshot
        assert states.check(Q, 0, "K", 0, 0, 1) == (Verdict.DUPLICATE, 3)
        await _save(a, states)
    # b is elected for epoch 2: P writes on, landing at offsets 3 and 4.
    async with Broker.open(bc, master("b", 2, ("b",), floor=common)) as b:
        assert await put(b, P, 3, b"p3") == 3
        assert await put(b, P, 4, b"p4") == 4
        async with Broker.open(ac, slave("a", "b", 2)) as a:
            pos = b.replication_position()
            a.truncate_log(a.truncation_point(pos.epochs, pos.end))
        async with Broker.open(ac, slave("a", "b", 2)) as a:
            b.replica_connected("a", a.replication_position().end)
            pump(b, a, node="a")
    # a is elected again (epoch 3): its door starts from its old snapshot and the log.
    async with Broker.open(ac, master("a", 3, ("a",))) as a:
        states = await door_start(a)
        # Q's batch is not in this log: a retry of it is a new append, not a duplicate
        # answered with the offset of P's record there.
        assert states.check(Q, 0, "K", 0, 0, 1) == (Verdict.APPEND, -1)
        # P's batches written by b are known: the next is 5, a retry of 4 a duplicate.
        assert states.check(P, 0, "K", 0, 4, 1) == (Verdict.DUPLICATE, 4)
        assert states.check(P, 0, "K", 0, 5, 1) == (Verdict.APPEND, -1)


async def test_a_snapshot_of_a_log_that_only_grew_is_kept(tmp_path: Path) -> None:
    ac = config(tmp_path / "a", replication_mode="async")
    async with Broker.open(ac, master("a", 1, ("a",))) as a:
        await a.create_topic("K", 1)
        await put(a, P, 0, b"p0")
        await _save(a, await door_start(a))
        await put(a, P, 1, b"p1")
    async with Broker.open(ac, master("a", 2, ("a",))) as a:
        states = ProducerStates(os.path.join(ac.data_dir, "kafka"))
        assert states.load() and states.snapshot_log is not None
        assert check_snapshot_log(a, states)
        replay_producer_state(a, states)
        assert states.check(P, 0, "K", 0, 1, 1) == (Verdict.DUPLICATE, 1)
