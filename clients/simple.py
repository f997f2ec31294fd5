"""The simple consumer: pop consumption (RocketMQ 5's SimpleConsumer) over the remoting pop codes.

No queues are owned and no offsets kept: ``receive`` leases messages of the
subscribed topics to the group for an *invisible duration*; ``ack`` settles one
before the duration runs out, ``change_invisible_duration`` extends it. A
message not acked in time comes back to any consumer of the group with its
``reconsume_times`` raised (past the group's maximum, to ``%DLQ%<group>``).
See docs/client.md, "SimpleConsumer", and docs/pop.md for the guarantees.

A received message is a ``MessageExt`` whose ``POP_CK`` property carries the
broker's signed receipt handle (protocols/remoting/pop.py); ``ack`` and
``change_invisible_duration`` send it back. Only the newest handle of a message
acks it: one that was changed, or whose duration ran out, is refused with
``BrokerError`` (NO_MESSAGE); a forged one with INVALID_PARAMETER.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..protocols.remoting import RequestCode, ResponseCode, request
from ..protocols.remoting import headers as H
from ..protocols.remoting import pop as P
from ..protocols.remoting.codes import CONSUME_INIT_MODE_MAX, CONSUME_INIT_MODE_MIN
from ..protocols.remoting.messages import MessageExt, decode_messages
from .instance import ClientInstance, NoRouteError
from .remoting import DEFAULT_TIMEOUT, BrokerError, ClientError, check

DEFAULT_INVISIBLE_S = 30.0  # RocketMQ SimpleConsumer's default invisible duration
DEFAULT_AWAIT_S = 5.0  # how long a receive waits for a message (long polling)
DEFAULT_MAX_MESSAGES = 16
_FOUND = (ResponseCode.SUCCESS,)
_NOTHING = (ResponseCode.POLLING_TIMEOUT, ResponseCode.PULL_NOT_FOUND, ResponseCode.NO_MESSAGE)


def receipt_of(message: MessageExt) -> P.ExtraInfo:
    """The pop check-point of a received message (its ``POP_CK``), receipt included.
    Raises ValueError for a message that was not received by pop."""
    ck = message.properties.get(P.PROPERTY_POP_CK)
    if not ck:
        raise ValueError("the message carries no POP_CK: it was not received by pop")
    info = P.parse_extra_info(ck)
    if info.receipt is None:
        raise ValueError("the message's POP_CK carries no receipt handle")
    return info


@dataclass(frozen=True, slots=True)
class _Subscription:
    topic: str
    expression: str
    expression_type: str


class SimpleConsumer:
    """``async with SimpleConsumer(ns, "g", {"Orders": "*"}) as c: msgs = await c.receive()``."""

    def __init__(self, namesrv: str | list[str], group: str,
                 subscriptions: dict[str, str] | None = None, *,
                 invisible_duration: float = DEFAULT_INVISIBLE_S,
                 await_duration: float = DEFAULT_AWAIT_S, consume_from: str = "FIRST",
                 timeout: float = DEFAULT_TIMEOUT, **instance_options: Any) -> None:
        if consume_from not in ("FIRST", "LAST"):
            raise ValueError("consume_from is FIRST or LAST")
        self.group = group
        self.invisible_duration = invisible_duration
        self.await_duration = await_duration
        self.init_mode = CONSUME_INIT_MODE_MIN if consume_from == "FIRST" else CONSUME_INIT_MODE_MAX
        self.timeout = timeout
        self.instance = ClientInstance(namesrv, timeout=timeout, **instance_options)
        self.subscriptions: dict[str, _Subscription] = {}
        self._turn = itertools.count()
        for topic, expr in (subscriptions or {}).items():
            self.subscribe(topic, expr)

    def subscribe(self, topic: str, expression: str = "*", expression_type: str = "TAG") -> None:
        self.subscriptions[topic] = _Subscription(topic, expression, expression_type.upper())

    def unsubscribe(self, topic: str) -> None:
        self.subscriptions.pop(topic, None)

    async def __aenter__(self) -> SimpleConsumer:
        await self.instance.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.instance.__aexit__(None, None, None)

    # ------------------------------------------------------------ receive

    async def _targets(self) -> list[tuple[_Subscription, str]]:
        """(subscription, broker name) pairs that have readable queues."""
        out = []
        for sub in self.subscriptions.values():
            for mq in {q.brokerName for q in await self.instance.subscribe_queues(sub.topic)}:
                out.append((sub, mq))
        return sorted(out, key=lambda t: (t[0].topic, t[1]))

    async def receive(self, max_messages: int = DEFAULT_MAX_MESSAGES,
                      invisible_duration: float | None = None,
                      await_duration: float | None = None) -> list[MessageExt]:
        """Lease up to ``max_messages`` messages for ``invisible_duration`` seconds, waiting
        up to ``await_duration`` seconds for one. Asks one (topic, broker) per call, in
        turn. Returns [] when none came. Raises BrokerError, NoRouteError, ClientError."""
        if not self.subscriptions:
            raise ValueError("subscribe to a topic first")
        targets = await self._targets()
        if not targets:
            targets = await self._refresh_targets()
        sub, broker = targets[next(self._turn) % len(targets)]
        invisible_ms = int((self.invisible_duration if invisible_duration is None
                            else invisible_duration) * 1000)
        wait_s = self.await_duration if await_duration is None else await_duration
        h = H.PopMessageRequestHeader(
            self.group, sub.topic, -1, max_messages, invisible_ms, int(wait_s * 1000),
            _now_ms(), self.init_mode, sub.expression_type,
            None if sub.expression.strip() == "*" else sub.expression)
        resp = await self.instance.broker_invoke(broker, request(
            RequestCode.POP_MESSAGE, 0, h.to_ext()), wait_s + self.timeout)
        if resp.code in _NOTHING:
            return []
        check(resp, broker, _FOUND)
        return decode_messages(resp.body)

    async def _refresh_targets(self) -> list[tuple[_Subscription, str]]:
        for sub in self.subscriptions.values():
            await self.instance.route(sub.topic, refresh=True)
        targets = await self._targets()
        if not targets:
            raise NoRouteError(f"no broker serves {', '.join(self.subscriptions)}")
        return targets

    async def peek(self, topic: str, max_messages: int = DEFAULT_MAX_MESSAGES
                   ) -> list[MessageExt]:
        """What the group's next receive would get from each broker, leasing nothing."""
        out: list[MessageExt] = []
        for broker in sorted({q.brokerName for q in await self.instance.subscribe_queues(topic)}):
            resp = await self.instance.broker_invoke(broker, request(
                RequestCode.PEEK_MESSAGE, 0,
                H.PeekMessageRequestHeader(self.group, topic, -1, max_messages).to_ext()))
            if resp.code in _NOTHING:
                continue
            out.extend(decode_messages(check(resp, broker).body))
        return out[:max_messages]

    # ------------------------------------------------------------ settle

    async def ack(self, message: MessageExt) -> None:
        """Ack a received message by its receipt. Raises BrokerError: NO_MESSAGE when the
        receipt is no longer current (acked, changed, or its duration ran out: the
        message is or will be delivered again), INVALID_PARAMETER for a forged one."""
        info = receipt_of(message)
        ck = message.properties[P.PROPERTY_POP_CK]
        check(await self.instance.broker_invoke(info.broker_name, request(
            RequestCode.ACK_MESSAGE, 0, H.AckMessageRequestHeader(
                self.group, message.topic, info.queue_id, ck, info.queue_offset).to_ext())),
            info.broker_name)

    async def ack_batch(self, messages: Sequence[MessageExt]) -> list[BrokerError | None]:
        """Ack several messages, one request per broker; per message None (acked) or the
        BrokerError its ack met."""
        results: list[BrokerError | None] = [None] * len(messages)
        by_broker: dict[str, list[int]] = {}
        infos = [receipt_of(m) for m in messages]
        for i, info in enumerate(infos):
            by_broker.setdefault(info.broker_name, []).append(i)
        for broker, idx in by_broker.items():
            acks: dict[tuple[str, int, int, int], list[int]] = {}
            for i in idx:
                info = infos[i]
                acks.setdefault((messages[i].topic, info.queue_id, info.ck_offset,
                                 info.pop_time), []).append(i)
            body = P.BatchAckBody(broker, tuple(
                P.BatchAck(self.group, topic, P.NORMAL_TOPIC, ck_offset, qid, P.REVIVE_QID,
                           pop_time, infos[ids[0]].invisible_time,
                           tuple(infos[i].queue_offset for i in ids),
                           tuple(infos[i].receipt or "" for i in ids))
                for (topic, qid, ck_offset, pop_time), ids in acks.items()))
            resp = await self.instance.broker_invoke(broker, request(
                RequestCode.BATCH_ACK_MESSAGE, 0, {}, body.encode()))
            if resp.code not in (ResponseCode.SUCCESS, ResponseCode.INVALID_PARAMETER) \
                    or not resp.body:
                err = BrokerError(resp.code, resp.remark, broker)
                for i in idx:
                    results[i] = err
                continue
            outcome = {r: (c, m) for r, c, m in P.decode_ack_results(resp.body)}
            for i in idx:
                code, remark = outcome.get(infos[i].receipt or "", (ResponseCode.SYSTEM_ERROR,
                                                                     "no result"))
                if code != ResponseCode.SUCCESS:
                    results[i] = BrokerError(code, remark, broker)
        return results

    async def change_invisible_duration(self, message: MessageExt, duration: float
                                        ) -> MessageExt:
        """Make the message invisible for ``duration`` seconds from now. Returns the
        message with its new receipt: ack that one (the old receipt is dead)."""
        info = receipt_of(message)
        ck = message.properties[P.PROPERTY_POP_CK]
        resp = check(await self.instance.broker_invoke(info.broker_name, request(
            RequestCode.CHANGE_MESSAGE_INVISIBLETIME, 0, H.ChangeInvisibleTimeRequestHeader(
                self.group, message.topic, info.queue_id, ck, info.queue_offset,
                int(duration * 1000)).to_ext())), info.broker_name)
        new_ck = resp.ext("extraInfo")
        if not new_ck:
            raise ClientError("the broker's answer carries no new receipt (not a FerryMQ broker?)")
        return message._replace(properties={**dict(message.properties),
                                            P.PROPERTY_POP_CK: new_ck})


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
