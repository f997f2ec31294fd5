"""The transactional producer: half message, local transaction, END_TRANSACTION, and the check-back.

RocketMQ's TransactionMQProducer, on the same wire (docs/client.md,
"TransactionProducer"; the broker side is docs/transactions.md):

1. ``send_in_transaction(msg, arg)`` sends ``msg`` as a *half* (properties
   ``TRAN_MSG=true`` and ``PGROUP``, the prepared flag in ``sysFlag``): stored,
   invisible to consumers.
2. It runs the local-transaction executor, ``executor(msg, arg)``, which returns
   a ``LocalTransactionState`` (an exception counts as UNKNOWN).
3. It tells the broker that stored the half: END_TRANSACTION with COMMIT,
   ROLLBACK or UNKNOWN, naming the half by its CommitLog offset (decoded from
   the send's offset message id) and its queue offset.
4. When the END is lost (or said UNKNOWN, or this producer died in between), the
   broker asks a live producer of the group: CHECK_TRANSACTION_STATE. This
   producer answers with ``checker(message)``, sent back as END_TRANSACTION
   with ``fromTransactionCheck``.

The executor and the checker may be ``async def`` functions (run on the
event loop) or plain ones (run in a worker thread: a local transaction
usually blocks on a database). ``TransactionSendResult.end_confirmed`` says
whether the broker acknowledged the END: a COMMIT of the local transaction is
a delivery only once the broker has heard it (apache/rocketmq #2840).
"""

from __future__ import annotations

import enum
import inspect
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from ..protocols.record import RecordError
from ..protocols.remoting import RemotingCommand, RequestCode, ResponseCode, request
from ..protocols.remoting import bodies as B
from ..protocols.remoting import headers as H
from ..protocols.remoting.codes import (
    TRANSACTION_COMMIT_TYPE,
    TRANSACTION_NOT_TYPE,
    TRANSACTION_PREPARED_TYPE,
    TRANSACTION_ROLLBACK_TYPE,
)
from ..protocols.remoting.messages import (
    MessageExt,
    decode_messages,
    encode_properties,
    parse_offset_msg_id,
)
from .message import Message, SendResult, new_uniq_key
from .producer import Producer
from .remoting import ClientError, RemotingConnection

log = logging.getLogger("ferrymq.client")

PROPERTY_TRANSACTION_PREPARED = "TRAN_MSG"  # MessageConst names
PROPERTY_PRODUCER_GROUP = "PGROUP"
PROPERTY_CHECK_IMMUNITY = "CHECK_IMMUNITY_TIME_IN_SECONDS"
CHECK_CONCURRENCY = 8  # check-backs answered at once (RocketMQ: checkThreadPoolMinSize 1..)


class LocalTransactionState(enum.Enum):
    """What a local transaction came to (RocketMQ's LocalTransactionState)."""

    COMMIT = "COMMIT_MESSAGE"
    ROLLBACK = "ROLLBACK_MESSAGE"
    UNKNOWN = "UNKNOW"

    @property
    def wire(self) -> int:
        """END_TRANSACTION's commitOrRollback (MessageSysFlag)."""
        return {LocalTransactionState.COMMIT: TRANSACTION_COMMIT_TYPE,
                LocalTransactionState.ROLLBACK: TRANSACTION_ROLLBACK_TYPE,
                LocalTransactionState.UNKNOWN: TRANSACTION_NOT_TYPE}[self]


StateOrAwaitable = LocalTransactionState | Awaitable[LocalTransactionState]
Executor = Callable[[Message, Any], StateOrAwaitable]
Checker = Callable[[MessageExt], StateOrAwaitable]


@dataclass(frozen=True, slots=True)
class TransactionSendResult:
    """``send``: where the half was stored (``msg_id`` is the message's id, the same
    id consumers see after the commit); ``state``: what the executor said;
    ``end_confirmed``: the broker acknowledged the END (False: it was lost, refused,
    or UNKNOWN, and the check-back decides); ``outcome``: the broker's word on the
    transaction ("commit", "rollback", "unknown", or the earlier outcome of an
    ended one), None when no answer came."""

    send: SendResult
    state: LocalTransactionState
    end_confirmed: bool
    outcome: str | None = None

    @property
    def msg_id(self) -> str:
        return self.send.msg_id


async def _call(fn: Callable[..., StateOrAwaitable], *args: Any) -> LocalTransactionState:
    """Run an executor or checker: ``async def`` on the loop, a plain function in a
    worker thread. Anything but a LocalTransactionState (an exception too) is UNKNOWN."""
    try:
        if inspect.iscoroutinefunction(fn):
            state = await fn(*args)
        else:
            state = await anyio.to_thread.run_sync(lambda: fn(*args))
            if inspect.isawaitable(state):
                state = await state
    except Exception as exc:  # the application's code: its failure means "not known yet"
        log.warning("local transaction callback %s failed: %s", getattr(fn, "__name__", fn), exc)
        return LocalTransactionState.UNKNOWN
    if not isinstance(state, LocalTransactionState):
        log.warning("local transaction callback returned %r, not a LocalTransactionState", state)
        return LocalTransactionState.UNKNOWN
    return state


class TransactionProducer(Producer):
    """``async with TransactionProducer(ns, "pg", executor=run, checker=check) as p:
    r = await p.send_in_transaction(Message(...), arg)``. Every Producer method works
    too (plain sends). ``checker`` answers the broker's check-backs; it must be able
    to say what became of any transaction of the group, also of other producers of
    the group (one that died, say), since the broker asks whichever is alive."""

    def __init__(self, namesrv: str | list[str], group: str, *,
                 executor: Executor | None = None, checker: Checker,
                 check_concurrency: int = CHECK_CONCURRENCY, **options: Any) -> None:
        super().__init__(namesrv, group, **options)
        self.executor = executor
        self.checker = checker
        self.check_concurrency = check_concurrency
        self.checks_answered = 0
        self.instance.request_handlers[RequestCode.CHECK_TRANSACTION_STATE] = self._on_check

    async def __aenter__(self) -> TransactionProducer:
        self._check_limiter = anyio.CapacityLimiter(self.check_concurrency)
        self._watch_scope = anyio.CancelScope()  # both need the event loop: made here
        await super().__aenter__()
        assert self._tg is not None
        self._tg.start_soon(self._watch_brokers)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._watch_scope.cancel()
        await super().__aexit__(*exc)

    async def _watch_brokers(self) -> None:
        """Heart-beat every broker, not only those of the topics sent to, so that each can
        check back its halves of this group through this producer (after a restart of
        the application, say, before it sends anything)."""
        with self._watch_scope:
            while True:
                try:
                    await self.instance.learn_brokers()
                except ClientError as exc:
                    log.info("learning the brokers failed: %s", exc)
                await anyio.sleep(self.instance.route_refresh_s)

    # ------------------------------------------------------------ sending

    async def send_in_transaction(self, message: Message, arg: Any = None, *,
                                  executor: Executor | None = None) -> TransactionSendResult:
        """Send ``message`` as a half, run the executor (``executor`` or the producer's),
        and end the transaction as it says. Raises what ``send`` raises when the half
        could not be stored (the executor does not run then); after that it does not
        raise: a failed END is reported in ``end_confirmed``."""
        run = executor or self.executor
        if run is None:
            raise ValueError("no local-transaction executor: pass one to the producer or here")
        send = await self._send_half(message)
        state = await _call(run, message, arg)
        confirmed, outcome = await self.end_transaction(send, state)
        return TransactionSendResult(send, state, confirmed, outcome)

    async def _send_half(self, message: Message) -> SendResult:
        uniq = new_uniq_key()
        props = message.wire_properties(uniq)
        props[PROPERTY_TRANSACTION_PREPARED] = "true"
        props[PROPERTY_PRODUCER_GROUP] = self.group
        encoded = encode_properties(props)
        topic = message.topic

        def build(mq: B.MessageQueue, from_default: bool) -> RemotingCommand:
            ext = self._header(topic, mq, encoded, from_default, message.flag)
            ext["f"] = str(TRANSACTION_PREPARED_TYPE)  # sysFlag: a prepared (half) message
            return request(RequestCode.SEND_MESSAGE_V2, 0, ext, bytes(message.body))

        resp, mq = await self._send_cmd(topic, build, None, None)
        assert resp is not None
        return SendResult(uniq, resp.ext("msgId") or "", mq, int(resp.ext("queueOffset") or 0))

    async def end_transaction(self, send: SendResult, state: LocalTransactionState
                              ) -> tuple[bool, str | None]:
        """END_TRANSACTION for a half this producer sent: (acknowledged, the broker's
        outcome). A lost END is not an error: the broker checks back."""
        parsed = parse_offset_msg_id(send.offset_msg_id)
        if parsed is None:
            log.warning("cannot end transaction %s: no offset id in the send result", send.msg_id)
            return False, None
        ext = H.EndTransactionRequestHeader(
            self.group, send.queue_offset, parsed[1], state.wire, send.msg_id, False,
            send.msg_id, send.queue.topic, send.queue.brokerName).to_ext()
        try:
            resp = await self.instance.broker_invoke(send.queue.brokerName, request(
                RequestCode.END_TRANSACTION, 0, ext))
        except ClientError as exc:
            log.warning("END_TRANSACTION for %s was lost (%s): the broker will check back",
                        send.msg_id, exc)
            return False, None
        outcome = resp.ext("transactionOutcome")
        if resp.code == ResponseCode.SUCCESS:
            return state is not LocalTransactionState.UNKNOWN, outcome
        # ILLEGAL_OPERATION: it ended already (a check answer was faster); the outcome stands.
        log.warning("END_TRANSACTION %s for %s: %s (code %d)", state.name, send.msg_id,
                    resp.remark, resp.code)
        return False, outcome

    # ------------------------------------------------------------ check-back

    async def _on_check(self, conn: RemotingConnection, cmd: RemotingCommand
                        ) -> RemotingCommand | None:
        """CHECK_TRANSACTION_STATE from a broker: ask the checker, answer on the same
        connection with END_TRANSACTION (fromTransactionCheck). Oneway: no response."""
        try:
            h = H.CheckTransactionStateRequestHeader.from_ext(cmd.ext_fields)
            (msg,) = decode_messages(cmd.body)
        except (H.HeaderError, RecordError, ValueError) as exc:
            log.warning("undecodable CHECK_TRANSACTION_STATE from %s: %s", conn.address, exc)
            return None
        group = msg.properties.get(PROPERTY_PRODUCER_GROUP)
        if group != self.group:
            log.warning("check-back for producer group %s reached %s", group, self.group)
            return None
        async with self._check_limiter:
            state = await _call(self.checker, msg)
        self.checks_answered += 1
        if state is LocalTransactionState.UNKNOWN:
            return None  # nothing to say: the broker asks again at its next interval
        msg_id = h.msgId or msg.msg_id
        ext = H.EndTransactionRequestHeader(
            self.group, h.tranStateTableOffset, h.commitLogOffset, state.wire, msg_id, True,
            h.transactionId or msg_id, msg.topic, h.bname).to_ext()
        try:
            await conn.invoke_oneway(request(RequestCode.END_TRANSACTION, 0, ext))
        except ClientError as exc:
            log.info("answering the check of %s failed (%s): the broker will ask again",
                     msg_id, exc)
        return None
