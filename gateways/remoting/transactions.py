"""Transactional messages on the remoting door: END_TRANSACTION, and the check-back to producers.

A half message arrives as an ordinary SEND_MESSAGE whose properties carry
``TRAN_MSG=true`` and ``PGROUP``: ``Broker.put`` stores it as a half and the
send response names its queue offset (the client's tranStateTableOffset) and,
in ``msgId``, the offset id of its CommitLog offset (the client's
commitLogOffset), so nothing here handles it. This module answers what follows
(docs/transactions.md, "Wiring the remoting door"; docs/remoting.md,
"Transactions"):

- END_TRANSACTION (37) → ``Broker.end_transaction``: COMMIT (8), ROLLBACK (12)
  or UNKNOWN (0, the broker will check back). An unknown transaction is
  SYSTEM_ERROR (as RocketMQ answers "Find prepared transaction message
  failed"); one that ended already is ILLEGAL_OPERATION with the outcome in
  ``transactionOutcome``; neither appends anything.
- The check-back hook (``check``, which ``serve`` installs with
  ``Broker.set_transaction_checker`` while the door runs): ask one live
  producer of the half's group, on the connection its heartbeat came from,
  with the oneway CHECK_TRANSACTION_STATE (39) RocketMQ's broker sends: the
  header of AbstractTransactionalMessageCheckListener.sendCheckMessage and the
  message, with its real topic and queue, as the body. No producer connected:
  False, and the core does not count the check.
- GET_TRANSACTION_STATS (FerryMQ's 900010): the core's counters, open halves
  and discarded ones, for the CLI.
- CANCEL_TIMER (FerryMQ's 900020): header ``msgId`` (the id a timed send returned:
  its client id or the timer record's offset id): SUCCESS with ``timerOffset`` and
  ``deliverMs``, or QUERY_NOT_FOUND (unknown, delivered or cancelled already).
- GET_TIMER_STATS (FerryMQ's 900021): the timers' counters and lateness, and, with
  a header ``hours`` (1-168), the pending timers per hour of delivery time, as JSON.
"""

from __future__ import annotations

import logging

from ...core.errors import InvalidArgument, TransactionAlreadyEnded
from ...core.transactions import HalfMessage, TransactionAction
from ...protocols.remoting import RemotingCommand, RequestCode, ResponseCode, response_to
from ...protocols.remoting import bodies as B
from ...protocols.remoting import headers as H
from ...protocols.remoting.codes import (
    TRANSACTION_COMMIT_TYPE,
    TRANSACTION_NOT_TYPE,
    TRANSACTION_ROLLBACK_TYPE,
    FerryRequestCode,
)
from .context import Connection, Handler, RequestContext
from .records import encode_message

log = logging.getLogger("ferrymq.remoting")

CHECK_SEND_TIMEOUT_S = 3.0  # a producer that does not read its socket for this long is passed over
_ACTIONS = {TRANSACTION_COMMIT_TYPE, TRANSACTION_ROLLBACK_TYPE, TRANSACTION_NOT_TYPE}


class TransactionRequests:
    """END_TRANSACTION, the check-back, the transaction admin request, and the timer
    requests (the other kind of message the broker holds back)."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.broker = ctx.broker
        self.clients = ctx.clients
        self.counters = ctx.counters

    def install(self, handlers: dict[int, Handler]) -> None:
        handlers[RequestCode.END_TRANSACTION] = self.end_transaction
        handlers[FerryRequestCode.GET_TRANSACTION_STATS] = self.stats
        handlers[FerryRequestCode.CANCEL_TIMER] = self.cancel_timer
        handlers[FerryRequestCode.GET_TIMER_STATS] = self.timer_stats

    # ------------------------------------------------------------ END_TRANSACTION

    async def end_transaction(self, conn: Connection, cmd: RemotingCommand
                              ) -> RemotingCommand:
        h = H.EndTransactionRequestHeader.from_ext(cmd.ext_fields)
        if h.commitOrRollback not in _ACTIONS:
            raise InvalidArgument(f"commitOrRollback must be 8 (commit), 12 (rollback) or 0 "
                                  f"(unknown), not {h.commitOrRollback}")
        action = TransactionAction.from_sys_flag(h.commitOrRollback)
        try:
            result = await self.broker.end_transaction(
                h.commitLogOffset, action, producer_group=h.producerGroup,
                transaction_id=h.transactionId or h.msgId, from_check=h.fromTransactionCheck,
                principal=self.ctx.principal(conn))
        except TransactionAlreadyEnded as exc:
            # A repeated END, or a check answer that crossed the producer's own END: the
            # outcome stands and nothing is appended; the sender learns which it was.
            self.counters["end_transaction_already_ended"] += 1
            log.info("END_TRANSACTION %s for %s (offset %d): %s", action.value, h.msgId,
                     h.commitLogOffset, exc.detail)
            return response_to(cmd, ResponseCode.ILLEGAL_OPERATION,
                               {"transactionOutcome": exc.outcome}, remark=exc.detail)
        self.counters[f"end_transaction_{action.value}"] += 1
        ext = {"transactionOutcome": action.value}
        if result is not None:
            ext.update(msgId=result.offset_message_id(), queueId=str(result.queue_id),
                       queueOffset=str(result.queue_offset))
        remark = "the broker will check back" if action is TransactionAction.UNKNOWN else None
        return response_to(cmd, ResponseCode.SUCCESS, ext, remark=remark)

    # ------------------------------------------------------------ check-back

    async def check(self, producer_group: str, half: HalfMessage) -> bool:
        """The core's check-back hook: True when a live producer of the group was sent
        the question (its answer comes back as END_TRANSACTION with
        fromTransactionCheck), False when none is connected or none could be written to."""
        ext = {"topic": half.message.topic, "tranStateTableOffset": str(half.queue_offset),
               "commitLogOffset": str(half.physical_offset), "msgId": half.msg_id,
               "transactionId": half.transaction_id, "offsetMsgId": half.offset_msg_id,
               "bname": self.broker.config.broker_name}
        body = encode_message(half.as_real())
        for client in self.clients.live_producers(producer_group):
            if await client.conn.send_oneway(RequestCode.CHECK_TRANSACTION_STATE, ext, body,
                                             CHECK_SEND_TIMEOUT_S):
                self.counters["transaction_checks_sent"] += 1
                return True
        self.counters["transaction_checks_no_producer"] += 1
        return False

    # ------------------------------------------------------------ admin

    async def stats(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        """Counters, open halves (oldest first) and discarded halves, as JSON."""
        limit = max(1, min(int(cmd.ext("limit") or 100), 1000))
        who = self.ctx.principal(conn)
        st = self.broker.transaction_stats(principal=who)
        pending = [{"commitLogOffset": p.physical_offset, "tranStateTableOffset": p.queue_offset,
                    "msgId": p.msg_id, "transactionId": p.transaction_id,
                    "producerGroup": p.producer_group, "topic": p.topic,
                    "storeTimestamp": p.stored_ms, "checks": p.checks,
                    "nextCheckTimestamp": p.next_check_ms}
                   for p in self.broker.pending_transactions(limit, principal=who)]
        discarded = [{"msgId": m.msg_id, "offsetMsgId": m.offset_msg_id,
                      "producerGroup": m.properties.get("PGROUP", ""),
                      "topic": m.properties.get("REAL_TOPIC", ""),
                      "checks": m.properties.get("TRANSACTION_CHECK_TIMES", ""),
                      "storeTimestamp": m.store_timestamp}
                     for m in self.broker.discarded_transactions(0, limit, principal=who)]
        return response_to(cmd, ResponseCode.SUCCESS, body=B.dumps({
            "pending": st.pending, "prepared": st.prepared, "committed": st.committed,
            "rolledBack": st.rolled_back, "discarded": st.discarded,
            "checksSent": st.checks_sent, "checksWithoutProducer": st.checks_without_producer,
            "checkFailures": st.check_failures, "oldestPendingTimestamp": st.oldest_pending_ms,
            "pendingTransactions": pending, "discardedTransactions": discarded}))

    # ------------------------------------------------------------ timers

    async def cancel_timer(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        """Cancel a pending timer by the message id its send returned."""
        msg_id = cmd.ext("msgId")
        if not msg_id or len(msg_id) > 128:
            raise InvalidArgument("msgId: the id the timed send returned (1-128 characters)")
        result = await self.broker.cancel_timer(msg_id, principal=self.ctx.principal(conn))
        return response_to(cmd, ResponseCode.SUCCESS, {
            "msgId": result.message_id, "timerOffset": str(result.timer_offset),
            "deliverMs": str(result.deliver_ms)})

    async def timer_stats(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        """The timers' counters and delivery lateness, as JSON."""
        who = self.ctx.principal(conn)
        st = self.broker.timer_stats(principal=who)
        schedule: dict[str, object] = {}
        if cmd.ext("hours"):  # the wheel is walked only when asked (tens of ms when full)
            hours = max(1, min(int(cmd.ext("hours") or 24), 168))
            sched = self.broker.timer_schedule(hours, principal=who)
            schedule = {"scheduleStartMs": sched.start_ms, "perHour": list(sched.counts),
                        "later": sched.later, "approximate": sched.approximate}
        return response_to(cmd, ResponseCode.SUCCESS, body=B.dumps({
            **schedule,
            "pending": st.pending, "prepared": st.prepared, "scheduled": st.scheduled,
            "delivered": st.delivered, "cancelled": st.cancelled, "rolled": st.rolled,
            "dropped": st.dropped, "processedUntilMs": st.processed_until_ms,
            "latenessP50Ms": st.lateness_p50_ms, "latenessP99Ms": st.lateness_p99_ms,
            "latenessMaxMs": st.lateness_max_ms, "logBytes": st.log_bytes}))
