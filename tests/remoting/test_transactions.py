"""Transactional messages through the native door, end to end with real processes: the
TransactionProducer commits and rolls back, a producer that dies before END_TRANSACTION is
decided by the check-back of another producer of its group, halves survive a broker SIGKILL,
an unanswered half is discarded and shows in admin, and bad END_TRANSACTIONs are refused."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import trio
from ferrymq.clients import (
    Admin,
    LocalTransactionState,
    Message,
    PullConsumer,
    TransactionProducer,
    blocking,
)
from ferrymq.clients.message import MessageExt
from ferrymq.clients.remoting import RemotingClient
from ferrymq.protocols.remoting import RequestCode, ResponseCode, request
from ferrymq.protocols.remoting import headers as H
from ferrymq.protocols.remoting.messages import encode_properties

from .conftest import FAST_CLIENT

COMMIT, ROLLBACK, UNKNOWN = (LocalTransactionState.COMMIT, LocalTransactionState.ROLLBACK,
                             LocalTransactionState.UNKNOWN)


async def drain(ns: str, topic: str, *, expect: int, settle: float = 0.5,
                timeout: float = 15.0) -> list[MessageExt]:
    """Every message of ``topic`` from the start: until ``expect`` came, then ``settle``
    seconds more (so a duplicate would show)."""
    out: list[MessageExt] = []
    async with PullConsumer(ns, f"drain-{topic}-{time.monotonic_ns()}", consume_from="FIRST",
                            **FAST_CLIENT) as c:
        with trio.fail_after(timeout):
            while not (qs := await c.queues(topic)):
                await trio.sleep(0.1)
        c.assign(qs)
        for q in qs:
            await c.seek_to_beginning(q)
        deadline = time.monotonic() + timeout
        quiet_until = None
        while time.monotonic() < deadline:
            out.extend(await c.poll(timeout=0.2))
            if len(out) >= expect:
                quiet_until = quiet_until or time.monotonic() + settle
                if time.monotonic() >= quiet_until:
                    break
    return out


async def test_transaction_producer_commits_and_rolls_back(native) -> None:
    ns = native.address("namesrv")
    ran: list[tuple[bytes, object]] = []

    async def execute(msg: Message, arg: object) -> LocalTransactionState:
        ran.append((bytes(msg.body), arg))
        return COMMIT if arg == "ok" else ROLLBACK

    def blocking_execute(msg: Message, arg: object) -> LocalTransactionState:
        assert threading.current_thread() is not threading.main_thread()
        return COMMIT

    async with Admin(ns, **FAST_CLIENT) as a:
        await a.create_topic("TxT", 2)
    async with TransactionProducer(ns, "tx-pg", executor=execute,
                                   checker=lambda m: UNKNOWN, **FAST_CLIENT) as p:
        c = await p.send_in_transaction(Message("TxT", b"paid", keys="order-1"), "ok")
        r = await p.send_in_transaction(Message("TxT", b"cancelled"), "no")
        s = await p.send_in_transaction(Message("TxT", b"sync-executor", tags="b"),
                                        executor=blocking_execute)
    assert ran == [(b"paid", "ok"), (b"cancelled", "no")]
    assert (c.state, c.end_confirmed, c.outcome) == (COMMIT, True, "commit")
    assert (r.state, r.end_confirmed, r.outcome) == (ROLLBACK, True, "rollback")
    assert s.end_confirmed
    got = await drain(ns, "TxT", expect=2)
    assert sorted(m.body for m in got) == [b"paid", b"sync-executor"], "committed once each"
    paid = next(m for m in got if m.body == b"paid")
    assert paid.msg_id == c.msg_id and paid.keys == ["order-1"]
    assert "TRAN_MSG" not in paid.properties and paid.properties["PGROUP"] == "tx-pg"
    async with Admin(ns, **FAST_CLIENT) as a:
        (st,) = await a.transaction_stats()
    assert (st["committed"], st["rolledBack"], st["pending"]) == (2, 1, 0)


def test_blocking_transaction_producer(native) -> None:
    ns = native.address("namesrv")
    with blocking.TransactionProducer(ns, "tx-blocking", executor=lambda m, a: COMMIT,
                                      checker=lambda m: COMMIT, **FAST_CLIENT) as p:
        r = p.send_in_transaction(Message("TxBlocking", b"b"))
    assert r.end_confirmed and r.outcome == "commit"


DYING_PRODUCER = textwrap.dedent("""
    import os, sys, anyio
    from ferrymq.clients import Message, TransactionProducer, LocalTransactionState

    def die(msg, arg):
        print("HALF-STORED", flush=True)
        os._exit(3)  # the local transaction committed; the process dies before END

    async def main():
        async with TransactionProducer(sys.argv[1], "tx-shared", executor=die,
                                       checker=lambda m: LocalTransactionState.UNKNOWN,
                                       heartbeat_s=1.0) as p:
            await p.send_in_transaction(Message("TxDie", b"survives", keys=sys.argv[2]))

    anyio.run(main)
""")


async def test_a_producer_dying_before_end_is_decided_by_another_producers_check(native) -> None:
    """The half's producer dies between the half and END_TRANSACTION; the broker asks the
    other live producer of the group, whose checker looks at the (shared) local outcome."""
    ns = native.address("namesrv")
    committed_orders = {"order-42"}  # the local database both producers share
    asked: list[MessageExt] = []

    def check(m: MessageExt) -> LocalTransactionState:
        asked.append(m)
        return COMMIT if set(m.keys) & committed_orders else ROLLBACK

    async with Admin(ns, **FAST_CLIENT) as a:
        await a.create_topic("TxDie", 1)
    async with TransactionProducer(ns, "tx-shared", executor=lambda m, a: COMMIT,
                                   checker=check, **FAST_CLIENT) as survivor:
        await survivor.send(Message("TxDie", b"plain"))  # connected and heart-beating
        out = await trio.to_thread.run_sync(lambda: subprocess.run(
            [sys.executable, "-c", DYING_PRODUCER, ns, "order-42"], capture_output=True,
            text=True, timeout=60))
        assert out.returncode == 3 and "HALF-STORED" in out.stdout, out.stderr
        got = await drain(ns, "TxDie", expect=2, settle=1.5, timeout=20)
    assert sorted(m.body for m in got) == [b"plain", b"survives"]
    assert len(asked) == 1 and asked[0].body == b"survives" and asked[0].topic == "TxDie"
    assert asked[0].properties["PGROUP"] == "tx-shared"
    assert survivor.checks_answered == 1


async def test_halves_pending_across_a_broker_sigkill_are_checked_after_restart(native) -> None:
    ns = native.address("namesrv")
    decisions: dict[str, LocalTransactionState] = {}

    def check(m: MessageExt) -> LocalTransactionState:
        return decisions.get(m.keys[0], UNKNOWN)

    async with Admin(ns, **FAST_CLIENT) as a:
        await a.create_topic("TxRestart", 1)
    async with TransactionProducer(ns, "tx-restart", executor=lambda m, a: UNKNOWN,
                                   checker=check, **FAST_CLIENT) as p:
        for key in ("keep", "drop"):
            r = await p.send_in_transaction(Message("TxRestart", key.encode(), keys=key))
            assert r.state is UNKNOWN and not r.end_confirmed
    native.kill()
    native.start()
    async with Admin(ns, **FAST_CLIENT) as a:
        (st,) = await a.transaction_stats()
        assert st["pending"] == 2, "both halves survived the SIGKILL, still open"
    decisions.update(keep=COMMIT, drop=ROLLBACK)
    async with TransactionProducer(ns, "tx-restart", executor=lambda m, a: UNKNOWN,
                                   checker=check, **FAST_CLIENT) as p:
        got = await drain(ns, "TxRestart", expect=1, settle=2.5, timeout=20)
        assert [m.body for m in got] == [b"keep"]
        async with Admin(ns, **FAST_CLIENT) as a:
            (st,) = await a.transaction_stats()
    assert st["pending"] == 0 and st["committed"] == 1 and st["rolledBack"] == 1


async def test_a_half_nobody_can_decide_is_discarded_counted_and_listed(native) -> None:
    """transaction_check_max is 3 on the test broker: three checks answered UNKNOWN, then
    the half goes to RMQ_SYS_TRANS_CHECK_MAX_TIME_TOPIC and shows in the admin stats."""
    ns = native.address("namesrv")
    checks = []
    async with TransactionProducer(ns, "tx-undecided", executor=lambda m, a: UNKNOWN,
                                   checker=lambda m: checks.append(m) or UNKNOWN,
                                   **FAST_CLIENT) as p:
        r = await p.send_in_transaction(Message("TxUndecided", b"limbo"))
        async with Admin(ns, **FAST_CLIENT) as a:
            with trio.fail_after(20):
                while True:
                    (st,) = await a.transaction_stats()
                    if st["discarded"]:
                        break
                    await trio.sleep(0.3)
    assert len(checks) == 3
    (d,) = st["discardedTransactions"]
    assert d["msgId"] == r.msg_id and d["producerGroup"] == "tx-undecided"
    assert d["topic"] == "TxUndecided" and d["checks"] == "3"
    assert st["pending"] == 0


async def test_bad_end_transactions_are_refused_and_deliver_nothing_twice(native) -> None:
    ns = native.address("namesrv")
    addr = native.address("remoting")
    async with TransactionProducer(ns, "tx-bad", executor=lambda m, a: COMMIT,
                                   checker=lambda m: UNKNOWN, **FAST_CLIENT) as p:
        r = await p.send_in_transaction(Message("TxBad", b"once"))
    assert r.outcome == "commit"
    phys = int(r.send.offset_msg_id[16:], 16)

    def end(offset: int, action: int, group: str = "tx-bad", **extra: str):  # type: ignore[no-untyped-def]
        return request(RequestCode.END_TRANSACTION, 0, {
            **H.EndTransactionRequestHeader(group, r.send.queue_offset, offset, action,
                                            r.msg_id).to_ext(), **extra})

    async with RemotingClient() as rc:
        again = await rc.invoke(addr, end(phys, 8))
        assert again.code == ResponseCode.ILLEGAL_OPERATION
        assert again.ext("transactionOutcome") == "commit" and "committed" in again.remark
        late_rollback = await rc.invoke(addr, end(phys, 12))
        assert late_rollback.code == ResponseCode.ILLEGAL_OPERATION
        unknown = await rc.invoke(addr, end(10**12, 8))
        assert unknown.code == ResponseCode.SYSTEM_ERROR and "no " in unknown.remark
        not_a_half = await rc.invoke(addr, end(0, 8))
        assert not_a_half.code in (ResponseCode.SYSTEM_ERROR, ResponseCode.ILLEGAL_OPERATION)
        bogus_action = await rc.invoke(addr, end(phys, 5))
        assert bogus_action.code == ResponseCode.INVALID_PARAMETER
        missing = await rc.invoke(addr, request(RequestCode.END_TRANSACTION, 0,
                                                {"producerGroup": "tx-bad"}))
        assert missing.code == ResponseCode.SYSTEM_ERROR and "no field" in missing.remark
        # a half of another group cannot be ended by this one
        half = await rc.invoke(addr, request(RequestCode.SEND_MESSAGE_V2, 0,
                                             H.SendMessageRequestHeader(
            "other", "TxBad", queueId=0, sysFlag=4,
            properties=encode_properties({"TRAN_MSG": "true", "PGROUP": "other",
                                          "UNIQ_KEY": "OTHER-1"})).to_ext_v2(), b"theirs"))
        assert half.code == ResponseCode.SUCCESS
        hphys = int(half.ext("msgId")[16:], 16)  # type: ignore[index]
        wrong = await rc.invoke(addr, end(hphys, 8, group="tx-bad"))
        assert wrong.code == ResponseCode.INVALID_PARAMETER and "other" in wrong.remark
        # a half with an absurd delay is refused before anything is stored
        absurd = await rc.invoke(addr, request(RequestCode.SEND_MESSAGE_V2, 0,
                                               H.SendMessageRequestHeader(
            "tx-bad", "TxBad", queueId=0, sysFlag=4,
            properties=encode_properties({"TRAN_MSG": "true", "PGROUP": "tx-bad",
                                          "TIMER_DELAY_MS": "-7"})).to_ext_v2(), b"x"))
        assert absurd.code == ResponseCode.MESSAGE_ILLEGAL and "negative" in absurd.remark
        rolled = await rc.invoke(addr, end(hphys, 12, group="other"))
        assert rolled.code == ResponseCode.SUCCESS
    got = await drain(ns, "TxBad", expect=1, settle=1.0)
    assert [m.body for m in got] == [b"once"]
