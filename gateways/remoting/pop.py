"""Pop consumption on the remoting door: POP_MESSAGE, ACK_MESSAGE, BATCH_ACK_MESSAGE,
CHANGE_MESSAGE_INVISIBLETIME and PEEK_MESSAGE onto the Broker's pop methods.

The core leases messages and acks them by its signed receipt handles
(core/pop.py, docs/pop.md). On the wire every popped message carries
RocketMQ's ``POP_CK`` property with FerryMQ's receipt handle as a ninth field
(protocols/remoting/pop.py), and the response header RocketMQ's fields
(``popTime``, ``invisibleTime``, ``reviveQid``, ``restNum``, and the
``startOffsetInfo``/``msgOffsetInfo`` without which RocketMQ's client would
overwrite ``POP_CK`` with its own). ACK_MESSAGE and CHANGE_MESSAGE_INVISIBLETIME
take the handle from ``extraInfo``; a BATCH_ACK_MESSAGE's BatchAcks must list
theirs in ``rh``. An ack without a handle is refused: the core acks nothing it
cannot authenticate.

Waiting: a POP_MESSAGE that finds nothing and asks for ``pollTime`` waits as a
task of its connection (like a suspended pull), at most ``max_suspend_s``, so
the connection keeps serving its other requests.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import trio

from ...core.access import Principal
from ...core.errors import FerryError, InvalidArgument, InvalidReceipt
from ...core.filter import Filter, parse_filter
from ...core.metrics import DoorMetrics
from ...core.pop import PoppedMessage
from ...core.tracing import Delivery
from ...protocols.remoting import RemotingCommand, RequestCode, ResponseCode, encode, response_to
from ...protocols.remoting import headers as H
from ...protocols.remoting import pop as P
from ...protocols.remoting.codes import CONSUME_INIT_MODE_MAX
from .context import Connection, Handler, RequestContext
from .errors import error_code
from .records import encode_message


class PopRequests:
    """The five pop codes of RocketMQ 5 (RequestCode 200050-200053, 200151)."""

    def __init__(self, ctx: RequestContext) -> None:
        self.ctx = ctx
        self.broker = ctx.broker
        self.metrics = DoorMetrics(ctx.broker.metrics, "rocketmq")
        self.counters = ctx.counters
        self.broker_name = ctx.broker.config.broker_name

    def install(self, handlers: dict[int, Handler]) -> None:
        handlers[RequestCode.POP_MESSAGE] = self.pop_message
        handlers[RequestCode.ACK_MESSAGE] = self.ack_message
        handlers[RequestCode.BATCH_ACK_MESSAGE] = self.batch_ack_message
        handlers[RequestCode.CHANGE_MESSAGE_INVISIBLETIME] = self.change_invisible_time
        handlers[RequestCode.PEEK_MESSAGE] = self.peek_message

    # ------------------------------------------------------------ POP_MESSAGE

    def _filter(self, h: H.PopMessageRequestHeader) -> Filter | None:
        if not h.exp or h.exp.strip() == "*":
            return None
        return parse_filter(h.exp, h.expType or "TAG")

    async def pop_message(self, conn: Connection, cmd: RemotingCommand
                          ) -> RemotingCommand | None:
        h = H.PopMessageRequestHeader.from_ext(cmd.ext_fields)
        if h.order:
            raise InvalidArgument("ordered (FIFO) pop is not supported by this broker")
        filt = self._filter(h)
        init = "latest" if h.initMode == CONSUME_INIT_MODE_MAX else "earliest"
        broker = self.broker
        who = self.ctx.principal(conn)
        got = await broker.pop(h.consumerGroup, h.topic, h.maxMsgNums, h.invisibleTime, filt,
                               queue_id=h.queueId, init=init, principal=who)
        wait_s = min(max(h.pollTime, 0) / 1000, self.ctx.max_suspend_s)
        if got or wait_s <= 0:
            return self._pop_response(cmd, h, got, who)
        try:
            conn.suspended.acquire_nowait()
        except trio.WouldBlock:
            self.counters["pop_suspend_refused"] += 1
            return self._pop_response(cmd, h, [], who)

        async def suspended() -> None:
            try:
                try:
                    late = self._pop_response(cmd, h, await broker.pop(
                        h.consumerGroup, h.topic, h.maxMsgNums, h.invisibleTime, filt,
                        queue_id=h.queueId, wait_ms=int(wait_s * 1000), init=init,
                        principal=who), who)
                except FerryError as exc:
                    late = response_to(cmd, error_code(exc), remark=exc.detail)
                await conn.send(encode(late))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass  # the consumer left; its leases run out and the messages come back
            finally:
                conn.suspended.release()

        self.counters["pop_suspended"] += 1
        conn.spawn(suspended)
        return None

    def _rest(self, group: str, topic: str, queue_id: int, who: Principal) -> int:
        """RocketMQ's ``restNum``: messages the group has not been handed yet, roughly."""
        rest = 0
        with contextlib.suppress(FerryError):
            states = {s.queue_id: s for s in self.broker.pop_status(group, topic, principal=who)}
            t = self.broker.topic(topic, principal=who)
            for qid in ([queue_id] if queue_id >= 0 else range(t.queues)):
                lo, hi = self.broker.queue_bounds(topic, qid, principal=who)
                s = states.get(qid)
                rest += max(0, hi - (s.pop_offset if s else lo)) + (s.ready if s else 0)
        return rest

    def _pop_response(self, cmd: RemotingCommand, h: H.PopMessageRequestHeader,
                      got: Sequence[PoppedMessage], who: Principal) -> RemotingCommand:
        rest = self._rest(h.consumerGroup, h.topic, h.queueId, who)
        if not got:
            return response_to(cmd, ResponseCode.POLLING_TIMEOUT, H.PopMessageResponseHeader(
                0, h.invisibleTime, P.REVIVE_QID, rest).to_ext(), remark="NO_MESSAGE_IN_QUEUE")
        self.metrics.messages_out(h.topic, len(got))
        tracer = self.broker.tracer
        if tracer is not None:  # the deliver span (core/tracing.py)
            tracer.delivered(Delivery("rocketmq", h.consumerGroup, h.topic,
                                      h.queueId if h.queueId >= 0 else None,
                                      [p.message for p in got], got[0].pop_time * 1_000_000))
        by_queue: dict[int, list[int]] = {}
        for p in got:
            by_queue.setdefault(p.message.queue_id, []).append(p.message.queue_offset)
        starts = {qid: min(offs) for qid, offs in by_queue.items()}
        parts = []
        for p in got:
            m = p.message
            ck = P.ExtraInfo(starts[m.queue_id], p.pop_time, p.invisible_until - p.pop_time,
                             P.REVIVE_QID, P.NORMAL_TOPIC, self.broker_name, m.queue_id,
                             m.queue_offset, p.receipt)
            props = dict(m.properties)
            props[P.PROPERTY_POP_CK] = ck.encode()
            props.setdefault(P.PROPERTY_FIRST_POP_TIME, str(p.pop_time))
            parts.append(encode_message(m._replace(properties=props)))
        start_info, msg_info = P.offset_info(by_queue)
        self.counters["popped"] += len(got)
        first = got[0]
        return response_to(cmd, ResponseCode.SUCCESS, H.PopMessageResponseHeader(
            first.pop_time, first.invisible_until - first.pop_time, P.REVIVE_QID, rest,
            start_info, msg_info).to_ext(), b"".join(parts), remark="FOUND")

    # ------------------------------------------------------------ acks

    @staticmethod
    def _receipt(extra_info: str) -> str:
        try:
            return P.receipt_of(extra_info)
        except P.ExtraInfoError as exc:
            raise InvalidReceipt(str(exc)) from None

    async def ack_message(self, conn: Connection, cmd: RemotingCommand
                          ) -> RemotingCommand:
        h = H.AckMessageRequestHeader.from_ext(cmd.ext_fields)
        self.broker.ack(self._receipt(h.extraInfo), principal=self.ctx.principal(conn))
        self.counters["pop_acked"] += 1
        return response_to(cmd, ResponseCode.SUCCESS)

    async def batch_ack_message(self, conn: Connection, cmd: RemotingCommand
                                ) -> RemotingCommand:
        """Ack every handle the BatchAcks list in ``rh``; the body of the answer has each
        handle's result. A BatchAck naming offsets without handles (RocketMQ's own
        clients: a bitset) acks nothing and makes the answer INVALID_PARAMETER."""
        body = P.BatchAckBody.decode(cmd.body)
        handles = [r for a in body.acks for r in a.receipts]
        unproven = sum(len(a.offsets) for a in body.acks if not a.receipts)
        results = self.broker.ack_batch(handles, principal=self.ctx.principal(conn)) \
            if handles else []
        rows = [(r, 0 if e is None else error_code(e), None if e is None else e.detail)
                for r, e in zip(handles, results, strict=True)]
        self.counters["pop_acked"] += sum(1 for e in results if e is None)
        out = P.encode_ack_results(rows)
        if unproven:
            return response_to(cmd, ResponseCode.INVALID_PARAMETER, body=out, remark=(
                f"{unproven} offset(s) without a receipt handle were not acked: list each "
                "message's handle (the last field of its POP_CK) in the BatchAck's 'rh'"))
        return response_to(cmd, ResponseCode.SUCCESS, body=out)

    async def change_invisible_time(self, conn: Connection, cmd: RemotingCommand
                                    ) -> RemotingCommand:
        h = H.ChangeInvisibleTimeRequestHeader.from_ext(cmd.ext_fields)
        renewal = self.broker.change_invisible_time(self._receipt(h.extraInfo), h.invisibleTime,
                                                    principal=self.ctx.principal(conn))
        pop_time = renewal.invisible_until - h.invisibleTime
        ck = P.ExtraInfo(h.offset, pop_time, h.invisibleTime, P.REVIVE_QID, P.NORMAL_TOPIC,
                         self.broker_name, h.queueId, h.offset, renewal.receipt)
        return response_to(cmd, ResponseCode.SUCCESS, H.ChangeInvisibleTimeResponseHeader(
            pop_time, h.invisibleTime, P.REVIVE_QID, ck.encode()).to_ext())

    # ------------------------------------------------------------ PEEK_MESSAGE

    async def peek_message(self, conn: Connection, cmd: RemotingCommand
                           ) -> RemotingCommand:
        h = H.PeekMessageRequestHeader.from_ext(cmd.ext_fields)
        who = self.ctx.principal(conn)
        found = self.broker.peek(h.consumerGroup, h.topic, h.maxMsgNums, queue_id=h.queueId,
                                 principal=who)
        ext = H.PopMessageResponseHeader(
            0, 0, P.REVIVE_QID, self._rest(h.consumerGroup, h.topic, h.queueId, who)).to_ext()
        if not found:
            return response_to(cmd, ResponseCode.PULL_NOT_FOUND, ext, remark="NO_MESSAGE_IN_QUEUE")
        return response_to(cmd, ResponseCode.SUCCESS, ext,
                           b"".join(encode_message(m) for m in found), remark="FOUND")
