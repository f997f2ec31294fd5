"""Transactional messages: a half is invisible until committed, a commit is delivered
exactly once, a rollback never; unanswered halves are checked back with a live producer
of their group, then discarded and reported; all of it survives restarts.

The check-back tests run on trio's MockClock (the broker's wall clock follows it);
each names the apache/rocketmq issue it guards against."""

from __future__ import annotations

import contextlib

import pytest
import trio
from ferrymq.core import Broker, Message
from ferrymq.core.errors import (
    InvalidArgument,
    InvalidDelay,
    InvalidMessage,
    PermissionDenied,
    TransactionAlreadyEnded,
    TransactionNotFound,
)
from ferrymq.core.message import parse_offset_message_id
from ferrymq.core.timers import TIMER_TOPIC
from ferrymq.core.transactions import (
    CHECK_MAX_TOPIC,
    HALF_TOPIC,
    OP_TOPIC,
    HalfMessage,
    TransactionAction,
)
from ferrymq.protocols import record as rec
from timer_helpers import config, quiet_config, read_queue, read_topic, wall_clock_follows


@pytest.fixture
async def broker(tmp_path):
    async with Broker.open(config(tmp_path)) as b:
        await b.create_topic("pay", 2)
        yield b


def half_message(body: bytes = b"debit 10", **props: str) -> Message:
    return Message("pay", body, {"TAGS": "debit", "KEYS": "order-7", **props}, queue_id=1)


# ====================================================================== commit and rollback


async def test_a_half_is_invisible_until_committed_then_visible_exactly_once(broker) -> None:
    h = await broker.prepare(half_message(), "pg-pay")
    assert (h.topic, h.queue_id, h.producer_group) == ("pay", 1, "pg-pay")
    assert parse_offset_message_id(h.offset_msg_id) == (h.physical_offset, 0)
    assert read_topic(broker, "pay") == []
    with pytest.raises(PermissionDenied):
        broker.get("any", HALF_TOPIC, 0, 0)  # not even by naming the system topic
    assert not await broker.wait("pay", 1, 0, 0.05)
    r = await broker.end_transaction(h, TransactionAction.COMMIT, producer_group="pg-pay")
    assert (r.topic, r.queue_id, r.queue_offset) == ("pay", 1, 0)
    (m,) = read_queue(broker, "pay", 1)
    assert m.body == b"debit 10" and m.tags == "debit" and m.keys == ["order-7"]
    assert m.msg_id == h.msg_id  # the id the producer got
    assert m.sys_flag & rec.TRANSACTION_MASK == rec.TRANSACTION_COMMIT_TYPE
    assert m.properties["TRAN_PREPARED_QUEUE_OFFSET"] == str(h.queue_offset)
    assert m.properties["PGROUP"] == "pg-pay"
    assert not {"TRAN_MSG", "REAL_TOPIC", "REAL_QID"} & set(m.properties)
    raw = broker.store.read_record(m.physical_offset)
    assert rec.decode(raw).prepared_transaction_offset == h.physical_offset
    with pytest.raises(TransactionAlreadyEnded) as err:
        await broker.end_transaction(h, "commit")
    assert err.value.outcome == "commit"
    with pytest.raises(TransactionAlreadyEnded):
        await broker.end_transaction(h.physical_offset, "rollback")
    assert len(read_topic(broker, "pay")) == 1
    s = broker.transaction_stats()
    assert (s.pending, s.prepared, s.committed) == (0, 1, 1)


async def test_rollback_means_never_delivered(broker) -> None:
    h = await broker.prepare(half_message(), "pg")
    assert await broker.end_transaction(h.msg_id, "rollback") is None
    with pytest.raises(TransactionAlreadyEnded) as err:
        await broker.end_transaction(h.physical_offset, "commit")
    assert err.value.outcome == "rollback"
    assert read_topic(broker, "pay") == [] and broker.pending_transactions() == []


async def test_unknown_changes_nothing(broker) -> None:
    h = await broker.prepare(half_message(), "pg")
    assert await broker.end_transaction(h, "unknown") is None
    assert [p.physical_offset for p in broker.pending_transactions()] == [h.physical_offset]
    assert read_topic(broker, "pay") == []


async def test_end_transaction_for_unknown_or_foreign_halves_is_a_clear_error(broker) -> None:
    h = await broker.prepare(half_message(), "pg")
    plain = await broker.put(Message("pay", b"plain", queue_id=0))
    for ref in (123_456_789, plain.physical_offset, "no-such-transaction",
                plain.offset_message_id()):
        with pytest.raises(TransactionNotFound) as err:
            await broker.end_transaction(ref, "commit")
        assert err.value.code == "transaction_not_found"
    with pytest.raises(InvalidArgument):
        await broker.end_transaction(h, "commit", producer_group="someone-else")
    with pytest.raises(ValueError):
        await broker.end_transaction(h, "maybe")
    assert read_topic(broker, "pay") == [m for m in read_topic(broker, "pay") if m.body == b"plain"]
    assert await broker.end_transaction(h.transaction_id, "commit") is not None


async def test_a_put_marked_as_half_is_a_half(broker) -> None:
    r = await broker.put(half_message(TRAN_MSG="true", PGROUP="pg-native"))
    assert (r.topic, r.queue_id) == ("pay", 1)
    assert read_topic(broker, "pay") == []
    (p,) = broker.pending_transactions()
    assert (p.physical_offset, p.queue_offset, p.producer_group) == (
        r.physical_offset, r.queue_offset, "pg-native")
    # END_TRANSACTION names the half by the offset its offset message id encodes.
    offset, _ = parse_offset_message_id(r.offset_message_id())
    await broker.end_transaction(offset, "commit", producer_group="pg-native")
    assert len(read_topic(broker, "pay")) == 1
    with pytest.raises(InvalidMessage):
        await broker.put(half_message(TRAN_MSG="true"))  # no producer group


async def test_a_half_with_a_bad_delay_is_refused_at_prepare(broker) -> None:
    with pytest.raises(InvalidDelay):
        await broker.prepare(half_message(DELAY="77"), "pg")
    assert broker.transaction_stats().pending == 0


async def test_a_committed_delayed_message_is_delivered_at_its_time(broker) -> None:
    h = await broker.prepare(half_message(TIMER_DELAY_MS="700"), "pg")
    r = await broker.end_transaction(h, "commit")
    assert r.queue_offset == -1
    assert read_topic(broker, "pay") == []
    assert await broker.wait("pay", 1, 0, 3.0)
    (m,) = read_queue(broker, "pay", 1)
    assert m.msg_id == h.msg_id and "TIMER_DELAY_MS" not in m.properties


# ====================================================================== restarts


async def test_halves_and_outcomes_survive_a_restart(tmp_path) -> None:
    cfg = config(tmp_path)
    async with Broker.open(cfg) as b:
        await b.create_topic("pay", 2)
        open_half = await b.prepare(half_message(b"open"), "pg")
        done = await b.prepare(half_message(b"done"), "pg")
        gone = await b.prepare(half_message(b"gone"), "pg")
        await b.end_transaction(done, "commit")
        await b.end_transaction(gone, "rollback")
    async with Broker.open(cfg) as b:
        assert [p.msg_id for p in b.pending_transactions()] == [open_half.msg_id]
        for h, outcome in ((done, "commit"), (gone, "rollback")):
            with pytest.raises(TransactionAlreadyEnded) as err:
                await b.end_transaction(h.physical_offset, "commit")
            assert err.value.outcome == outcome
        await b.end_transaction(open_half.physical_offset, "commit")
        assert sorted(m.body for m in read_topic(b, "pay")) == [b"done", b"open"]
    async with Broker.open(cfg) as b:
        assert b.pending_transactions() == []
        assert sorted(m.body for m in read_topic(b, "pay")) == [b"done", b"open"]


async def test_a_commit_whose_op_record_a_crash_cut_off_is_repaired_at_start(tmp_path) -> None:
    cfg = config(tmp_path, checkpoint_interval_ms=3_600_000)
    async with Broker.open(cfg) as b:
        await b.create_topic("pay", 2)
        h = await b.prepare(half_message(), "pg")
        # The commit's real message is in the log, its op record is not (a power cut
        # between the two writes) and the checkpoint does not cover it.
        b.store.append_message("pay", 1, b"debit 10", {"UNIQ_KEY": h.msg_id}, 0,
                               rec.TRANSACTION_COMMIT_TYPE, prepared_offset=h.physical_offset)
        b.transactions.close_sync = lambda: None
    async with Broker.open(cfg) as b:
        assert b.pending_transactions() == []
        with pytest.raises(TransactionAlreadyEnded):
            await b.end_transaction(h.physical_offset, "commit")
        assert len(read_topic(b, "pay")) == 1


# ====================================================================== check-back (MockClock)


def check_config(tmp_path, **over):  # type: ignore[no-untyped-def]
    base = dict(transaction_check_timeout_ms=6_000, transaction_check_interval_ms=60_000,
                transaction_check_max=3)
    base.update(over)
    return quiet_config(tmp_path, **base)


async def warmed(b: Broker) -> Broker:
    """Create the topics a test will touch before it measures time: creating one writes
    topics.json in a worker thread, and meanwhile the autojumping clock runs ahead."""
    await b.create_topic("pay", 2, exist_ok=True)
    for name in (HALF_TOPIC, OP_TOPIC, CHECK_MAX_TOPIC, TIMER_TOPIC):
        await b._paths.system_topic(name)
    return b


class Producers:
    """The check-back hook as the remoting door implements it: a live producer of the
    group answers each check (by END_TRANSACTION from_check) with ``answer``."""

    def __init__(self, broker: Broker, nursery: trio.Nursery) -> None:  # after ``warmed``
        self.broker = broker
        self.nursery = nursery
        self.calls: list[tuple[float, str, HalfMessage]] = []
        self.answer: str | None = "commit"  # None: the producer never answers
        self.alive = True
        broker.set_transaction_checker(self.check)

    async def check(self, group: str, half: HalfMessage) -> bool:
        self.calls.append((trio.current_time(), group, half))
        if not self.alive:
            return False
        if self.answer is not None:
            self.nursery.start_soon(self.reply, half, self.answer)
        return True

    async def reply(self, half: HalfMessage, answer: str) -> None:
        await trio.sleep(0.05)  # the round trip to the producer
        with contextlib.suppress(TransactionAlreadyEnded):
            await self.broker.end_transaction(half.physical_offset, answer,
                                              producer_group=half.producer_group,
                                              transaction_id=half.transaction_id,
                                              from_check=True)


async def test_a_producer_that_dies_before_end_is_resolved_by_the_check_back(
        tmp_path, autojump_clock, monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        async with Broker.open(check_config(tmp_path)) as b, trio.open_nursery() as n:
            await warmed(b)
            producers = Producers(b, n)
            t0 = trio.current_time()
            h = await b.prepare(half_message(), "pg")  # ... and the producer process dies
            await trio.sleep(5.5)
            assert producers.calls == []  # not before the check timeout (6 s)
            assert await b.wait("pay", 1, 0, 2.0)
            ((at, group, half),) = producers.calls
            assert 6.0 <= at - t0 <= 6.5 and group == "pg"
            assert (half.physical_offset, half.queue_offset, half.msg_id, half.real_topic,
                    half.real_queue_id, half.check) == (h.physical_offset, h.queue_offset,
                                                        h.msg_id, "pay", 1, 1)
            assert half.as_real().topic == "pay" and half.message.body == b"debit 10"
            await trio.sleep(600)
            assert len(producers.calls) == 1  # a committed half is not checked again (#1517)
            assert len(read_topic(b, "pay")) == 1
            n.cancel_scope.cancel()


async def test_a_half_committed_in_time_is_never_checked(tmp_path, autojump_clock,
                                                         monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        async with Broker.open(check_config(tmp_path)) as b, trio.open_nursery() as n:
            await warmed(b)
            producers = Producers(b, n)
            for i in range(20):
                h = await b.prepare(half_message(b"%d" % i), "pg")
                await trio.sleep(0.2)
                await b.end_transaction(h, "commit" if i % 2 else "rollback")
            await trio.sleep(3600)
            assert producers.calls == []  # #1517
            assert b.transaction_stats().checks_sent == 0
            n.cancel_scope.cancel()


async def test_unanswered_checks_repeat_then_the_half_is_discarded_and_reported(
        tmp_path, autojump_clock, monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        async with Broker.open(check_config(tmp_path)) as b, trio.open_nursery() as n:
            await warmed(b)
            producers = Producers(b, n)
            producers.answer = None
            t0 = trio.current_time()
            h = await b.prepare(half_message(), "pg")
            await trio.sleep(6 + 3 * 60 + 1)
            times = [round(at - t0) for at, _, _ in producers.calls]
            assert times == [6, 66, 126] and [c[2].check for c in producers.calls] == [1, 2, 3]
            s = b.transaction_stats()
            assert (s.pending, s.discarded, s.checks_sent) == (0, 1, 3)
            (dead,) = b.discarded_transactions()
            assert dead.msg_id == h.msg_id and dead.body == b"debit 10"
            assert dead.properties["TRANSACTION_CHECK_TIMES"] == "3"
            assert read_topic(b, "pay") == []
            with pytest.raises(TransactionAlreadyEnded) as err:
                await b.end_transaction(h, "commit")
            assert err.value.outcome == "discard"
            assert CHECK_MAX_TOPIC in [t.name for t in b.topics()]
            n.cancel_scope.cancel()


async def test_no_live_producer_never_counts_as_a_check(tmp_path, autojump_clock,
                                                        monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        async with Broker.open(check_config(tmp_path)) as b, trio.open_nursery() as n:
            await warmed(b)
            producers = Producers(b, n)
            producers.alive = False
            h = await b.prepare(half_message(), "pg")
            await trio.sleep(20 * 60)
            s = b.transaction_stats()
            assert s.discarded == 0 and s.pending == 1 and s.checks_sent == 0  # #8311
            assert s.checks_without_producer >= 15
            producers.alive = True  # the producer comes back
            assert await b.wait("pay", 1, 0, 120)
            assert read_queue(b, "pay", 1)[0].msg_id == h.msg_id
            n.cancel_scope.cancel()


async def test_one_failing_half_does_not_stall_the_checks_of_others(
        tmp_path, autojump_clock, monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        async with Broker.open(check_config(tmp_path)) as b, trio.open_nursery() as n:
            await warmed(b)
            producers = Producers(b, n)

            async def checker(group: str, half: HalfMessage) -> bool:
                if half.message.body == b"boom":
                    raise RuntimeError("the door's connection broke")
                if half.message.body == b"hang":
                    await trio.sleep_forever()
                return await producers.check(group, half)

            b.set_transaction_checker(checker)
            await b.prepare(half_message(b"boom"), "pg")
            await b.prepare(half_message(b"hang"), "pg")
            ok = await b.prepare(half_message(b"ok"), "pg")
            t0 = trio.current_time()
            assert await b.wait("pay", 1, 0, 8)  # #1568: the good one is not held up
            assert trio.current_time() - t0 <= 7
            assert read_queue(b, "pay", 1)[0].msg_id == ok.msg_id
            await trio.sleep(30)
            s = b.transaction_stats()
            assert s.check_failures >= 2 and s.pending == 2
            n.cancel_scope.cancel()


async def test_check_immunity_delays_the_first_check(tmp_path, autojump_clock,
                                                     monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        async with Broker.open(check_config(tmp_path)) as b, trio.open_nursery() as n:
            await warmed(b)
            producers = Producers(b, n)
            t0 = trio.current_time()
            await b.prepare(half_message(CHECK_IMMUNITY_TIME_IN_SECONDS="30"), "pg")
            await trio.sleep(40)
            assert [round(at - t0) for at, _, _ in producers.calls] == [30]
            n.cancel_scope.cancel()


async def test_check_counts_survive_a_restart(tmp_path, autojump_clock, monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        cfg = check_config(tmp_path)
        async with Broker.open(cfg) as b, trio.open_nursery() as n:
            await warmed(b)
            producers = Producers(b, n)
            producers.answer = None
            h = await b.prepare(half_message(), "pg")
            await trio.sleep(6 + 60 + 1)
            assert len(producers.calls) == 2
            n.cancel_scope.cancel()
        async with Broker.open(cfg) as b, trio.open_nursery() as n:
            await warmed(b)
            producers = Producers(b, n)
            producers.answer = None
            (p,) = b.pending_transactions()
            assert p.checks == 2 and p.msg_id == h.msg_id
            await trio.sleep(3 * 60)
            assert [c[2].check for c in producers.calls] == [3]
            assert b.transaction_stats().discarded == 1
            n.cancel_scope.cancel()


async def test_a_half_open_past_the_roll_window_is_rolled_and_still_commits_once(
        tmp_path, autojump_clock, monkeypatch) -> None:
    with wall_clock_follows(autojump_clock, monkeypatch):
        async with Broker.open(check_config(tmp_path, roll_window_s=600)) as b, \
                trio.open_nursery() as n:
            await warmed(b)
            producers = Producers(b, n)
            producers.alive = False
            h = await b.prepare(half_message(), "pg")
            await trio.sleep(3600)
            (p,) = b.pending_transactions()
            assert p.physical_offset != h.physical_offset and p.msg_id == h.msg_id
            await b.end_transaction(h.physical_offset, "commit")  # the original offset
            with pytest.raises(TransactionAlreadyEnded):
                await b.end_transaction(p.physical_offset, "commit")
            (m,) = read_topic(b, "pay")
            assert m.msg_id == h.msg_id
            n.cancel_scope.cancel()
