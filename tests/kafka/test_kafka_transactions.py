"""Kafka transactions on the wire, in process: epochs and fencing, halves invisible until
commit through every door, markers, timeouts, transactional offsets, restarts."""

from __future__ import annotations

import time
from typing import Any

import pytest
import trio
from ferrymq.core.access import SYSTEM
from ferrymq.core.broker import Broker
from ferrymq.gateways.kafka.transactions import TRANSITIONS, IllegalTransition, Txn, TxnState
from ferrymq.protocols.kafka import errors as ke
from ferrymq.protocols.kafka import records as kr
from kafka_wire import Client, Req, create, fetch, run, with_door

PRODUCE, OFFSET_FETCH, INIT_PRODUCER_ID = 0, 9, 22
ADD_PARTITIONS, ADD_OFFSETS, END_TXN, TXN_OFFSET_COMMIT, DESCRIBE_TXNS = 24, 25, 26, 28, 65

def init(c: Client, tid: str, timeout_ms: int = 60_000, version: int = 4) -> Any:
    return c.call(INIT_PRODUCER_ID, version, Req(INIT_PRODUCER_ID)(
        transactional_id=tid, transaction_timeout_ms=timeout_ms))


def add_partitions(c: Client, tid: str, pid: int, epoch: int, topic: str, parts=(0,)) -> list[int]:
    R = Req(ADD_PARTITIONS)
    resp = c.call(ADD_PARTITIONS, 3, R(
        v3_and_below_transactional_id=tid, v3_and_below_producer_id=pid,
        v3_and_below_producer_epoch=epoch, v3_and_below_topics=(
            R.AddPartitionsToTxnTopic(name=topic, partitions=tuple(parts)),)))
    return [p.partition_error_code for t in resp.results_by_topic_v3_and_below
            for p in t.results_by_partition]


def txn_produce(c: Client, tid: str, topic: str, pid: int, epoch: int, seq: int,
                values: list[bytes], partition: int = 0) -> Any:
    batch = kr.encode_batch(0, [(int(time.time() * 1000), None, v, []) for v in values],
                            producer_id=pid, producer_epoch=epoch, base_sequence=seq,
                            attributes=kr.TRANSACTIONAL_FLAG)
    R = Req(PRODUCE)
    resp = c.call(PRODUCE, 8, R(transactional_id=tid, acks=-1, timeout_ms=5000, topic_data=(
        R.TopicProduceData(name=topic, partition_data=(
            R.PartitionProduceData(index=partition, records=batch),)),)))
    return resp.responses[0].partition_responses[0]


def end(c: Client, tid: str, pid: int, epoch: int, commit: bool, version: int = 3) -> int:
    return c.call(END_TXN, version, Req(END_TXN)(
        transactional_id=tid, producer_id=pid, producer_epoch=epoch, committed=commit)).error_code


def describe(c: Client, tid: str) -> Any:
    return c.call(DESCRIBE_TXNS, 0, Req(DESCRIBE_TXNS)(transactional_ids=(tid,))
                  ).transaction_states[0]


def batches(records: Any) -> list[kr.Batch]:
    data = bytes(records or b"")
    return [kr.decode_batch(data[s:e]) for s, e in kr.split_batches(data)] if data else []


def native_bodies(broker: Broker, topic: str) -> list[bytes]:
    """What the other doors read: the core's read path, batches decoded into messages."""
    got = broker.get(None, topic, 0, 0, 1000, 1 << 20, principal=SYSTEM)
    return [m.body for m in got.messages()]


def test_transaction_states_move_only_along_the_table() -> None:
    assert set(TRANSITIONS) == set(TxnState)
    t = Txn("t", 1)
    t.move_to(TxnState.ONGOING)
    with pytest.raises(IllegalTransition):
        t.move_to(TxnState.COMPLETE_COMMIT)  # PrepareCommit first, durably
    t.move_to(TxnState.PREPARE_COMMIT)
    with pytest.raises(IllegalTransition):
        t.move_to(TxnState.ONGOING)


async def test_init_producer_id_with_a_transactional_id_bumps_the_epoch(tmp_path) -> None:
    """Finding: InitProducerId with a transactional id answered
    TRANSACTIONAL_ID_AUTHORIZATION_FAILED (53), so exactly-once applications stopped."""
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        first = await run(init, c, "app-1")
        assert first.error_code == ke.NONE and first.producer_id >= 0
        again = await run(init, c, "app-1")
        assert (again.error_code, again.producer_id, again.producer_epoch) == \
            (ke.NONE, first.producer_id, first.producer_epoch + 1)
        other = await run(init, c, "app-2")
        assert other.producer_id != first.producer_id
        assert (await run(init, c, "")).error_code == ke.INVALID_REQUEST
        assert (await run(init, c, "app-3", 10**9)).error_code == ke.INVALID_TRANSACTION_TIMEOUT
        c.close()
    await with_door(tmp_path, body)


async def test_records_reach_every_door_only_at_commit_followed_by_a_marker(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "tx")
        i = await run(init, c, "t1")
        pid, epoch = i.producer_id, i.producer_epoch
        assert await run(add_partitions, c, "t1", pid, epoch, "tx") == [ke.NONE]
        r = await run(txn_produce, c, "t1", "tx", pid, epoch, 0, [b"a", b"b"])
        assert (r.error_code, r.base_offset) == (ke.NONE, -1), "offset known at commit only"
        assert (await run(txn_produce, c, "t1", "tx", pid, epoch, 2, [b"c"])).error_code == 0
        p = await run(fetch, c, "tx", 0)
        assert (p.high_watermark, p.last_stable_offset, batches(p.records)) == (0, 0, [])
        assert native_bodies(broker, "tx") == [], "no door sees an open transaction"
        assert (await run(describe, c, "t1")).transaction_state == "Ongoing"
        assert await run(end, c, "t1", pid, epoch, True) == ke.NONE
        p = await run(fetch, c, "tx", 0)
        got = batches(p.records)
        assert [[r.value for r in b.records] for b in got[:2]] == [[b"a", b"b"], [b"c"]]
        assert got[0].header.producer_id == pid and got[0].header.attributes & kr.TRANSACTIONAL_FLAG
        data = bytes(p.records)
        spans = kr.split_batches(data)
        assert [kr.control_type(data[a:b]) for a, b in spans] == [None, None, kr.CONTROL_COMMIT]
        assert got[2].header.producer_id == pid
        assert (p.high_watermark, p.last_stable_offset, p.aborted_transactions) == (4, 4, ())
        assert native_bodies(broker, "tx") == [b"a", b"b", b"c"], "markers are no messages"
        assert (await run(describe, c, "t1")).transaction_state == "CompleteCommit"
        assert await run(end, c, "t1", pid, epoch, True) == ke.NONE, "a retried EndTxn"
        assert await run(end, c, "t1", pid, epoch, False) == ke.INVALID_TXN_STATE
        # An aborted transaction leaves only its marker: no door ever sees its records.
        assert await run(add_partitions, c, "t1", pid, epoch, "tx") == [ke.NONE]
        assert (await run(txn_produce, c, "t1", "tx", pid, epoch, 3, [b"no"])).error_code == 0
        assert await run(end, c, "t1", pid, epoch, False) == ke.NONE
        p = await run(fetch, c, "tx", 4)
        assert kr.control_type(bytes(p.records)) == kr.CONTROL_ABORT, "only the ABORT marker"
        assert native_bodies(broker, "tx") == [b"a", b"b", b"c"]
        c.close()
    await with_door(tmp_path, body)


async def test_a_zombie_is_fenced_and_an_ongoing_transaction_aborted(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "fz")
        old = await run(init, c, "app")
        pid, e0 = old.producer_id, old.producer_epoch
        await run(add_partitions, c, "app", pid, e0, "fz")
        assert (await run(txn_produce, c, "app", "fz", pid, e0, 0, [b"zombie"])).error_code == 0
        # A new instance: the ongoing transaction is aborted, the client told to retry.
        assert (await run(init, c, "app")).error_code == ke.CONCURRENT_TRANSACTIONS
        new = await run(init, c, "app")
        assert new.error_code == ke.NONE and new.producer_epoch == e0 + 2
        # The zombie is fenced everywhere.
        assert (await run(txn_produce, c, "app", "fz", pid, e0, 1, [b"late"])).error_code == \
            ke.INVALID_PRODUCER_EPOCH
        assert await run(end, c, "app", pid, e0, True) == ke.PRODUCER_FENCED
        assert await run(end, c, "app", pid, e0, True, 1) == ke.INVALID_PRODUCER_EPOCH
        assert await run(add_partitions, c, "app", pid, e0, "fz") == [ke.PRODUCER_FENCED]
        assert native_bodies(broker, "fz") == []
        # The new instance commits only its own records.
        e = new.producer_epoch
        await run(add_partitions, c, "app", pid, e, "fz")
        assert (await run(txn_produce, c, "app", "fz", pid, e, 0, [b"fresh"])).error_code == 0
        assert await run(end, c, "app", pid, e, True) == ke.NONE
        assert native_bodies(broker, "fz") == [b"fresh"]
        assert (await run(txn_produce, c, "app", "fz", pid, e, 1, [b"x"])).error_code == \
            ke.INVALID_TXN_STATE, "a partition must be added to a transaction first"
        c.close()
    await with_door(tmp_path, body)


async def test_a_transaction_open_past_its_timeout_is_aborted(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "to")
        i = await run(init, c, "slow", 300)
        pid, epoch = i.producer_id, i.producer_epoch
        await run(add_partitions, c, "slow", pid, epoch, "to")
        await run(txn_produce, c, "slow", "to", pid, epoch, 0, [b"never"])
        with trio.fail_after(20):
            while (await run(describe, c, "slow")).transaction_state != "CompleteAbort":
                await trio.sleep(0.05)
        assert (await run(describe, c, "slow")).producer_epoch == epoch + 1, "its producer is fenced"
        assert await run(end, c, "slow", pid, epoch, True) == ke.PRODUCER_FENCED
        assert native_bodies(broker, "to") == []
        c.close()
    await with_door(tmp_path, body, {"transaction_abort_check_interval_ms": 50})


async def test_offsets_committed_in_a_transaction_are_unstable_until_it_commits(tmp_path) -> None:
    async def body(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "src")
        i = await run(init, c, "ctp")
        pid, epoch = i.producer_id, i.producer_epoch
        A = Req(ADD_OFFSETS)
        assert (await run(c.call, ADD_OFFSETS, 3, A(
            transactional_id="ctp", producer_id=pid, producer_epoch=epoch, group_id="g"))
        ).error_code == 0
        T = Req(TXN_OFFSET_COMMIT)
        resp = await run(c.call, TXN_OFFSET_COMMIT, 3, T(
            transactional_id="ctp", group_id="g", producer_id=pid, producer_epoch=epoch,
            generation_id=-1, member_id="", topics=(T.TxnOffsetCommitRequestTopic(
                name="src", partitions=(T.TxnOffsetCommitRequestPartition(
                    partition_index=0, committed_offset=7, committed_metadata="m7"),)),)))
        assert resp.topics[0].partitions[0].error_code == ke.NONE
        F = Req(OFFSET_FETCH)

        def offset(stable: bool) -> Any:
            r = c.call(OFFSET_FETCH, 7, F(group_id="g", require_stable=stable, topics=(
                F.OffsetFetchRequestTopic(name="src", partition_indexes=(0,)),)))
            return r.topics[0].partitions[0]
        assert (await run(offset, True)).error_code == ke.UNSTABLE_OFFSET_COMMIT
        assert (await run(offset, False)).committed_offset == -1, "not committed before"
        assert await run(end, c, "ctp", pid, epoch, True) == ke.NONE
        p = await run(offset, True)
        assert (p.error_code, p.committed_offset, p.metadata) == (ke.NONE, 7, "m7")
        assert broker.committed_offset("g", "src", 0, principal=SYSTEM) == 7, "every door's"
        c.close()
    await with_door(tmp_path, body)


async def test_a_transaction_survives_a_restart_of_the_broker(tmp_path) -> None:
    state: dict[str, int] = {}

    async def before(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        await run(create, c, "rs")
        i = await run(init, c, "durable")
        state.update(pid=i.producer_id, epoch=i.producer_epoch)
        await run(add_partitions, c, "durable", i.producer_id, i.producer_epoch, "rs")
        r = await run(txn_produce, c, "durable", "rs", i.producer_id, i.producer_epoch, 0,
                      [b"kept"])
        assert r.error_code == 0
        c.close()

    async def after(broker: Broker, bootstrap: str) -> None:
        c = Client(bootstrap)
        assert (await run(describe, c, "durable")).transaction_state == "Ongoing"
        assert native_bodies(broker, "rs") == []
        assert await run(end, c, "durable", state["pid"], state["epoch"], True) == ke.NONE
        assert native_bodies(broker, "rs") == [b"kept"]
        i = await run(init, c, "durable")
        assert (i.producer_id, i.producer_epoch) == (state["pid"], state["epoch"] + 1)
        c.close()
    await with_door(tmp_path, before)
    await with_door(tmp_path, after)
