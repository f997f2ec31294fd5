"""The core's side of broker groups, in one process: a master and a slave Broker whose stream
is pumped by hand (``replication_chunk`` → ``replicate`` → ``replica_acked``), so every
step is deterministic. The real stream, etcd and processes are in test_cluster.py."""

from __future__ import annotations

import filecmp
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import pytest
import trio
from ferrymq.core import Broker, BrokerConfig, Message
from ferrymq.core.errors import CorruptMessage, NotEnoughReplicas, NotLeader, ReplicationTimeout
from ferrymq.core.replication import Durability, Membership, Role
from ferrymq.core.statelog import STATE_TOPIC

T = TypeVar("T")


def config(path: Path, **over: object) -> BrokerConfig:
    base: dict[str, object] = dict(
        data_dir=str(path), segment_size=256 << 10, max_message_size=64 << 10,
        cq_entries_per_file=4096, index_slots=1024, index_entries=4096, default_queues=2,
        replication_timeout_ms=2_000, replica_lag_max_ms=60_000, slave_read_enable=True,
        state_snapshot_interval_s=3600)
    base.update(over)
    return BrokerConfig(**base)  # type: ignore[arg-type]


def master(node: str = "m", epoch: int = 1, isr: tuple[str, ...] = ("m", "s"),
           floor: int = 0) -> Membership:
    return Membership(Role.MASTER, node, epoch, frozenset(isr), floor)


def slave(node: str = "s", of: str = "m", epoch: int = 1) -> Membership:
    return Membership(Role.SLAVE, node, epoch, frozenset(), master=of)


def pump(m: Broker, s: Broker, node: str = "s", max_bytes: int = 64 << 10) -> int:
    """Stream everything the master has to the slave, as the replication door does."""
    pos = s.replication_position().end
    frames = 0
    while True:
        c = m.replication_chunk(pos, max_bytes)
        end = s.replicate(c.epoch, c.epoch_start, pos, c.confirm, c.data)
        m.replica_acked(node, end)
        frames += 1
        if not c.data:
            # One more round carries the confirm offset the last ack produced.
            c = m.replication_chunk(end, max_bytes)
            s.replicate(c.epoch, c.epoch_start, end, c.confirm, c.data)
            return frames
        pos = end


async def replicated(m: Broker, s: Broker, call: Awaitable[T], node: str = "s") -> T:
    """Await ``call`` on the master while the stream runs (a REPLICATED change waits
    for the slave)."""
    result: list[T] = []

    async def run() -> None:
        result.append(await call)

    async with trio.open_nursery() as n:
        n.start_soon(run)
        while not result:
            pump(m, s, node)
            await trio.sleep(0.005)
    return result[0]


def commitlog(b: BrokerConfig) -> Path:
    return Path(b.data_dir) / "store" / "commitlog"


def same_commitlogs(a: BrokerConfig, b: BrokerConfig) -> bool:
    names = sorted(p.name for p in commitlog(a).iterdir())
    return names == sorted(p.name for p in commitlog(b).iterdir()) and all(
        filecmp.cmp(commitlog(a) / n, commitlog(b) / n, shallow=False) for n in names)


def read_queue(b: Broker, topic: str, qid: int) -> list[tuple[int, bytes]]:
    out, offset = [], b.queue_bounds(topic, qid)[0]
    while True:
        g = b.get(None, topic, qid, offset, 1000, 8 << 20)
        if not g.records:
            return out
        out += [(msg.queue_offset, msg.body) for msg in g.messages(offset)]
        offset = g.next_offset


async def test_a_slave_holds_the_masters_bytes_queues_topics_and_offsets(tmp_path: Path) -> None:
    mc, sc = config(tmp_path / "m"), config(tmp_path / "s")
    async with Broker.open(mc, master(isr=("m",))) as m, Broker.open(sc, slave()) as s:
        await m.create_topic("A", 3)
        for i in range(300):  # several segments of 256 KiB
            await m.put(Message("A", b"x" * 2000 + b"%d" % i, queue_id=i % 3))
        await m.put([Message("A", b"batch-%d" % i, queue_id=1) for i in range(50)])
        m.commit_offset("g", "A", 0, 7)
        await m.create_group("g2")
        assert pump(m, s) > 3
        assert s.replication_position().end == m.replication_position().end
        assert {t.name for t in s.topics()} == {t.name for t in m.topics()}
        for q in range(3):
            assert s.queue_bounds("A", q) == m.queue_bounds("A", q)
            assert read_queue(s, "A", q) == read_queue(m, "A", q)
        assert s.committed_offset("g", "A", 0) == 7
        assert s.groups() and {g.name for g in s.groups()} == {g.name for g in m.groups()}
        assert s.messages_by_key("A", "nokey") == []
    assert same_commitlogs(mc, sc)


async def test_a_slave_refuses_writes_and_admin_with_not_leader(tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "s"), slave()) as s:
        with pytest.raises(NotLeader):
            await s.put(Message("A", b"x"))
        with pytest.raises(NotLeader):
            await s.create_topic("B")
        with pytest.raises(NotLeader):
            s.commit_offset("g", STATE_TOPIC, 0, 1)
        assert not s.health().ready


async def test_a_slave_without_slave_read_refuses_reads(tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "m"), master(isr=("m",))) as m, \
            Broker.open(config(tmp_path / "s", slave_read_enable=False), slave()) as s:
        await m.put(Message("A", b"x", queue_id=0))
        pump(m, s)
        with pytest.raises(NotLeader):
            s.get(None, "A", 0, 0)
        with pytest.raises(NotLeader):
            await s.wait("A", 0, 0, 0.01)


async def test_a_replicated_write_is_acknowledged_only_once_the_slave_holds_it(
        tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "m"), master()) as m, \
            Broker.open(config(tmp_path / "s"), slave()) as s:
        await replicated(m, s, m.create_topic("A", 1))
        done = trio.Event()

        async def producer() -> None:
            await m.put(Message("A", b"one", queue_id=0), durability=Durability.REPLICATED)
            done.set()

        async with trio.open_nursery() as n:
            n.start_soon(producer)
            await trio.sleep(0.2)
            assert not done.is_set(), "acknowledged before the in-sync slave held it"
            assert m.get(None, "A", 0, 0).records == ()  # and invisible to consumers
            pump(m, s)
            with trio.fail_after(2):
                await done.wait()
        assert [b for _, b in read_queue(m, "A", 0)] == [b"one"]
        assert [b for _, b in read_queue(s, "A", 0)] == [b"one"]


async def test_a_leader_write_is_acknowledged_at_once_but_visible_only_when_confirmed(
        tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "m", replication_mode="async"), master()) as m, \
            Broker.open(config(tmp_path / "s"), slave()) as s:
        r = await m.put(Message("A", b"one", queue_id=0))
        assert r.queue_offset == 0
        assert m.get(None, "A", 0, 0).records == ()
        assert m.queue_bounds("A", 0) == (0, 0)
        woke = trio.Event()

        async def poller() -> None:
            assert await m.wait("A", 0, 0, 5)
            woke.set()

        async with trio.open_nursery() as n:
            n.start_soon(poller)
            await trio.sleep(0.05)
            assert not woke.is_set()
            pump(m, s)
            with trio.fail_after(2):
                await woke.wait()
        assert m.queue_bounds("A", 0) == (0, 1)


async def test_too_few_in_sync_replicas_refuse_a_replicated_write_before_storing_it(
        tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "m", min_insync_replicas=2),
                           master(isr=("m",))) as m:
        with pytest.raises(NotEnoughReplicas):
            await m.put(Message("A", b"x", queue_id=0))
        assert m.find_topic("A") is None  # refused before anything was stored
        with pytest.raises(NotEnoughReplicas):  # an admin change is stored, not acknowledged
            await m.create_topic("B", 1)
        # acks=1 (LEADER) is still taken with one replica.
        await m.put(Message("A", b"y", queue_id=0), durability=Durability.LEADER)


async def test_a_write_the_in_sync_set_never_confirms_times_out(tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "m", replication_timeout_ms=200), master()) as m:
        with pytest.raises(ReplicationTimeout):
            await m.put(Message("A", b"x", queue_id=0))


async def test_the_in_sync_set_shrinks_after_the_lag_time_and_grows_when_caught_up(
        tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "m", replica_lag_max_ms=300), master()) as m, \
            Broker.open(config(tmp_path / "s"), slave()) as s:
        await m.put(Message("A", b"x", queue_id=0), durability=Durability.LEADER)
        assert m.isr_proposals() == (frozenset(), frozenset())
        await trio.sleep(0.4)  # the slave never acked: behind for longer than the lag time
        remove, add = m.isr_proposals()
        assert remove == {"s"} and not add
        m.isr_changed({"m"})  # what the controller does once etcd holds it
        assert m.in_sync_replicas() == {"m"}
        await m.put(Message("A", b"y", queue_id=0))  # confirmed by the master alone now
        m.replica_connected("s", s.replication_position().end)
        pump(m, s)
        remove, add = m.isr_proposals()
        assert add == {"s"} and not remove
        m.propose_isr_add(add)
        done = trio.Event()

        async def producer() -> None:
            await m.put(Message("A", b"z", queue_id=0))
            done.set()

        async with trio.open_nursery() as n:  # a pending member counts at once
            n.start_soon(producer)
            await trio.sleep(0.1)
            assert not done.is_set()
            pump(m, s)
            with trio.fail_after(2):
                await done.wait()


async def test_no_write_is_acknowledged_past_the_lease_deadline(tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "m"), master(isr=("m",))) as m:
        m.set_lease_deadline(trio.current_time() + 60)
        await m.put(Message("A", b"x", queue_id=0))
        m.set_lease_deadline(trio.current_time() - 0.001)
        with pytest.raises(NotLeader):
            await m.put(Message("A", b"y", queue_id=0))
        m.fence("cut off")
        with pytest.raises(NotLeader):
            await m.put(Message("A", b"y", queue_id=0))
        m.set_lease_deadline(trio.current_time() + 60)  # a keep-alive came back in time
        await m.put(Message("A", b"z", queue_id=0))


async def test_fencing_fails_the_writes_waiting_for_the_in_sync_set(tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "m"), master()) as m:
        failed: list[BaseException] = []

        async def producer() -> None:
            try:
                await m.put(Message("A", b"x", queue_id=0))
            except NotLeader as exc:
                failed.append(exc)

        async with trio.open_nursery() as n:
            n.start_soon(producer)
            await trio.sleep(0.05)
            m.fence("the lease deadline passed")
        assert len(failed) == 1


async def test_corrupt_replicated_bytes_are_refused_before_anything_is_written(
        tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "m"), master(isr=("m",))) as m, \
            Broker.open(config(tmp_path / "s"), slave()) as s:
        await m.put(Message("A", b"payload", queue_id=0))
        c = m.replication_chunk(0, 1 << 20)
        bad = bytearray(c.data)
        bad[-10] ^= 0xFF  # inside the last record's body or properties: CRC or layout
        with pytest.raises(CorruptMessage):
            s.replicate(c.epoch, c.epoch_start, 0, c.confirm, bytes(bad))
        with pytest.raises(CorruptMessage):
            s.replicate(c.epoch, c.epoch_start, 0, c.confirm, c.data[:-3])
        assert s.replication_position().end == 0
        s.replicate(c.epoch, c.epoch_start, 0, c.confirm, c.data)
        assert s.replication_position().end == m.replication_position().end


async def test_a_chunk_never_spans_two_epochs(tmp_path: Path) -> None:
    mc = config(tmp_path / "m")
    async with Broker.open(mc, master(epoch=1, isr=("m",))) as m:
        await m.put(Message("A", b"first term", queue_id=0))
        first_end = m.replication_position().end
    async with Broker.open(mc, master(epoch=2, isr=("m",))) as m:
        await m.put(Message("A", b"second term", queue_id=0))
        assert m.replication_position().epochs == ((0, 0), (1, 0), (2, first_end))
        c = m.replication_chunk(0, 1 << 20)
        assert (c.epoch, c.epoch_start, len(c.data)) == (1, 0, first_end)
        c2 = m.replication_chunk(first_end, 1 << 20)
        assert (c2.epoch, c2.epoch_start) == (2, first_end) and c2.data


async def test_a_divergent_tail_is_truncated_and_the_state_rolled_back(tmp_path: Path) -> None:
    """The old master wrote a tail its slave never got (a topic created, an offset
    committed, messages); the slave became master and wrote on. The old master, back as
    a slave, cuts its log where the two diverge, and the next open rebuilds its state
    from there: the tail's topic is gone, the offset is the old one."""
    ac = config(tmp_path / "a", replication_mode="async")  # the tail is acknowledged
    bc = config(tmp_path / "b", replication_mode="async")
    async with Broker.open(ac, master("a", 1, ("a", "b"))) as a, \
            Broker.open(bc, slave("b", "a")) as b:
        await a.create_topic("T", 2)
        for i in range(20):
            await a.put(Message("T", b"common-%d" % i, queue_id=i % 2),
                        durability=Durability.LEADER)
        a.commit_offset("g", "T", 0, 5)
        pump(a, b, node="b")
        common = a.replication_position().end
        # The divergent tail: never sent to b.
        await a.create_topic("ONLY_A", 1)
        for i in range(10):
            await a.put(Message("T", b"tail-%d" % i, queue_id=0), durability=Durability.LEADER)
        a.commit_offset("g", "T", 0, 9)
        assert a.replication_position().end > common
    # b is elected for epoch 2 and writes on.
    async with Broker.open(bc, master("b", 2, ("b",), floor=common)) as b:
        for i in range(5):
            await b.put(Message("T", b"new-%d" % i, queue_id=0))
        await b.create_topic("ONLY_B", 1)
        # a comes back as a slave of b: the handshake finds the truncation point.
        async with Broker.open(ac, slave("a", "b", 2)) as a:
            pos = b.replication_position()
            point = a.truncation_point(pos.epochs, pos.end)
            assert point == common
            a.truncate_log(point)
        async with Broker.open(ac, slave("a", "b", 2)) as a:
            assert a.replication_position().end == common
            names = {t.name for t in a.topics()}
            assert "ONLY_A" not in names and "T" in names
            assert a.committed_offset("g", "T", 0) == 5
            # As stored (consumers see it once the master confirms it again).
            assert a.topic_stats("T").queues == ((0, 0, 10), (1, 0, 10))
            assert a.messages_by_key("T", "x") == []
            b.replica_connected("a", a.replication_position().end)
            pump(b, a, node="a")
            assert a.truncation_point(b.replication_position().epochs,
                                      b.replication_position().end) == b.replication_position().end
            assert "ONLY_B" in {t.name for t in a.topics()}
            assert read_queue(a, "T", 0) == read_queue(b, "T", 0)
            assert a.replication_position().epochs == ((0, 0), (1, 0), (2, common))
    assert same_commitlogs(ac, bc)


async def test_state_snapshots_never_cover_what_the_in_sync_set_has_not_confirmed(
        tmp_path: Path) -> None:
    mc = config(tmp_path / "m", replication_mode="async")
    snapshots = tmp_path / "m" / "state"
    async with Broker.open(mc, master()) as m:  # the slave never acks: nothing is confirmed
        await m.create_topic("A", 1)
        m.commit_offset("g", "A", 0, 3)
    assert not [p for p in snapshots.iterdir() if p.name.startswith("snapshot-")]
    async with Broker.open(mc, master(isr=("m",))) as m:  # alone in sync: all confirmed
        assert m.committed_offset("g", "A", 0) == 3  # replayed from the log
    assert [p for p in snapshots.iterdir() if p.name.startswith("snapshot-")]


async def test_a_sync_groups_admin_changes_and_commits_wait_for_the_in_sync_set(
        tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "m", replication_timeout_ms=300), master()) as m:
        with pytest.raises(ReplicationTimeout):
            await m.create_topic("A", 1)
        m.commit_offset("g", "A", 0, 1)
        with pytest.raises(ReplicationTimeout):
            await m.wait_durable()


async def test_a_slave_answers_the_writing_services_not_leader(tmp_path: Path) -> None:
    async with Broker.open(config(tmp_path / "s"), slave()) as s:
        with pytest.raises(NotLeader):
            await s.pop("g", "A")
        with pytest.raises(NotLeader):
            s.ack("whatever")
        with pytest.raises(NotLeader):
            await s.cancel_timer("id")
        with pytest.raises(NotLeader):
            await s.prepare(Message("A", b"x"), "pg")
        with pytest.raises(NotLeader):
            await s.send_back("g", 0)


async def test_a_chunk_is_read_from_a_segment_the_file_cache_closed(tmp_path: Path) -> None:
    """The file cache closes segments past its budget; the master reads a chunk from
    one all the same (it opened its mapping unconditionally, so this was a TypeError
    on None: found by the type check)."""
    async with Broker.open(config(tmp_path / "m"), master(isr=("m",))) as m:
        await m.put(Message("A", b"payload", queue_id=0))
        first = m.replication_chunk(0, 1 << 20)
        m.store.files.close_all()  # as an eviction would, for every file
        again = m.replication_chunk(0, 1 << 20)
        assert again.data == first.data and again.data
