"""Retry and dead letters on the remoting door: CONSUMER_SEND_MSG_BACK and FerryMQ's DLQ requests.

CONSUMER_SEND_MSG_BACK (36) finds the message the consumer failed and hands it
to ``Broker.send_back``: a copy goes to ``%RETRY%<group>`` as a timer at delay
level 3 + its reconsume count (10 s, 30 s, 1 min ... with the default
``delay_levels``), or past the group's maximum reconsume count to
``%DLQ%<group>`` (core/retry.py, docs/timers.md "Retry and dead letters").

RocketMQ has no request to list or resend dead letters (apache/rocketmq
#2199, #2436), so FerryMQ adds three in its own code range (docs/remoting.md,
"FerryMQ's own requests"), which ``ferrymq dlq list|show|resend`` uses:

- LIST_DEAD_LETTERS (900001): header ``group``, ``offset``, ``limit``; body JSON
  ``{"letters": [...]}`` (DLQ offset, ids, original topic, reconsume count,
  store time, whether resent).
- VIEW_DEAD_LETTER (900002): header ``group`` and ``msgId`` or ``offset``; the
  letter's fields in the response header, the message (a RocketMQ record) as
  the body. Unknown: QUERY_NOT_FOUND.
- RESEND_DEAD_LETTERS (900003): header ``group``, ``msgIds`` (comma-separated
  ids or DLQ offsets; absent: every letter not resent yet) and ``force``. A
  letter resent before is refused (INVALID_PARAMETER) unless forced: the core
  marks each resend durably, so a repeated command cannot resend twice.
"""

from __future__ import annotations

from typing import Any

from ...core.access import Principal
from ...core.message import ConsumedMessage, offset_message_id
from ...core.retry import DeadLetter
from ...protocols.remoting import RemotingCommand, RequestCode, ResponseCode, response_to
from ...protocols.remoting import bodies as B
from ...protocols.remoting import headers as H
from ...protocols.remoting.codes import FerryRequestCode
from .context import Connection, Handler, RequestContext
from .records import encode_message

_LOOKUP_COPIES = 16  # copies of one client id looked at to find the one a consumer failed


def letter_json(d: DeadLetter) -> dict[str, Any]:
    return {"group": d.group, "queueOffset": d.queue_offset, "msgId": d.msg_id,
            "offsetMsgId": d.message.offset_msg_id, "originTopic": d.origin_topic,
            "originMsgId": d.origin_msg_id, "reconsumeTimes": d.reconsume_times,
            "storeTimestamp": d.store_timestamp, "resent": d.resent,
            "bodySize": len(d.message.body)}


class DeadLetterRequests:
    """Send-back, and listing, showing and resending dead letters."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.broker = ctx.broker
        self.counters = ctx.counters

    def install(self, handlers: dict[int, Handler]) -> None:
        handlers[RequestCode.CONSUMER_SEND_MSG_BACK] = self.send_msg_back
        handlers[FerryRequestCode.LIST_DEAD_LETTERS] = self.list_letters
        handlers[FerryRequestCode.VIEW_DEAD_LETTER] = self.view_letter
        handlers[FerryRequestCode.RESEND_DEAD_LETTERS] = self.resend_letters

    # ------------------------------------------------------------ send-back

    def _failed_message(self, h: H.ConsumerSendMsgBackRequestHeader, who: Principal
                        ) -> ConsumedMessage | str | None:
        """The copy the consumer failed: the one at its CommitLog offset (``offset``) with
        the id ``originMsgId`` (the members of a batch record share its offset: the id
        tells them apart), else the record at that offset, else the id alone (the core
        takes the newest consumable copy of it)."""
        broker = self.broker
        if h.originMsgId:
            for m in broker.messages_by_id(h.originMsgId, _LOOKUP_COPIES, principal=who):
                if m.physical_offset == h.offset:
                    return m
        at = broker.message_by_id(offset_message_id(self.ctx.store_host, h.offset),
                                  principal=who)
        if at is not None:
            return at
        return h.originMsgId or None

    async def send_msg_back(self, conn: Connection, cmd: RemotingCommand
                            ) -> RemotingCommand:
        h = H.ConsumerSendMsgBackRequestHeader.from_ext(cmd.ext_fields)
        who = self.ctx.principal(conn)
        m = self._failed_message(h, who)
        if m is None:
            return response_to(cmd, ResponseCode.SYSTEM_ERROR,
                               remark=f"no message at CommitLog offset {h.offset}")
        r = await self.broker.send_back(h.group, m, h.delayLevel,  # MessageNotFound: no copy
                                        max_reconsume_times=h.maxReconsumeTimes, principal=who)
        self.counters["dead_lettered" if r.dead else "retried"] += 1
        return response_to(cmd, ResponseCode.SUCCESS, {
            "topic": r.topic, "delayLevel": str(r.delay_level),
            "reconsumeTimes": str(r.reconsume_times)})

    # ------------------------------------------------------------ dead letters

    async def list_letters(self, conn: Connection, cmd: RemotingCommand
                           ) -> RemotingCommand:
        h = H.DeadLettersRequestHeader.from_ext(cmd.ext_fields)
        letters = self.broker.dead_letters(h.group, h.offset, max(1, min(h.limit, 1000)),
                                           principal=self.ctx.principal(conn))
        return response_to(cmd, ResponseCode.SUCCESS,
                           body=B.dumps({"letters": [letter_json(d) for d in letters]}))

    async def view_letter(self, conn: Connection, cmd: RemotingCommand
                          ) -> RemotingCommand:
        h = H.DeadLetterRequestHeader.from_ext(cmd.ext_fields)
        ref: str | int | None = h.msgId or h.offset
        if ref is None:
            raise H.HeaderError("give msgId or offset")
        d = self.broker.dead_letter(h.group, ref, principal=self.ctx.principal(conn))
        ext = {k: str(v).lower() if isinstance(v, bool) else str(v)
               for k, v in letter_json(d).items()}
        return response_to(cmd, ResponseCode.SUCCESS, ext, encode_message(d.message))

    async def resend_letters(self, conn: Connection, cmd: RemotingCommand
                             ) -> RemotingCommand:
        h = H.ResendDeadLettersRequestHeader.from_ext(cmd.ext_fields)
        refs: list[str | int] | None = None
        if h.msgIds:
            refs = [int(r) if r.strip().isdigit() else r.strip()
                    for r in h.msgIds.split(",") if r.strip()]
        done = await self.broker.resend_dead_letters(h.group, refs, force=h.force,
                                                     principal=self.ctx.principal(conn))
        self.counters["dead_letters_resent"] += len(done)
        return response_to(cmd, ResponseCode.SUCCESS, body=B.dumps({"resent": [
            {**letter_json(r.letter), "topic": r.put.topic, "queueId": r.put.queue_id,
             "newQueueOffset": r.put.queue_offset, "newOffsetMsgId": r.put.offset_message_id()}
            for r in done]}))
