"""The producer: sync, async and oneway sends, batches, ordered sends by sharding key, retries.

Queue choice follows RocketMQ's DefaultMQProducerImpl: round-robin over the
topic's writable queues on every broker the NameServer lists, and after a
failure the next attempt avoids the broker that failed (``retries`` more
attempts, RocketMQ's retryTimesWhenSendFailed = 2, with a short growing
backoff), and later sends pass it over for ``FAULT_ISOLATION_S`` while other
brokers work, so a producer moves on when a broker dies. An ordered send (a
``sharding_key``) always maps the key onto the same queue and is not moved.

Broker groups (docs/cluster.md, "Clients follow the master"): when the broker a
send went to belongs to a group (its route lists slaves) and refused as not the
master (SERVICE_NOT_AVAILABLE) or could not be reached, the producer asks the
NameServer until the route names a new master for that broker name (up to
``failover_wait_s``) and sends there again, as an extra attempt that does not
count against ``retries``. What a retry may duplicate: a refusal and a refused
connection stored nothing; a send whose connection broke or timed out after the
request left may have been stored and acknowledged by a master that died before
answering, so its retry can store the message twice (same message id, the
UNIQ_KEY property: consumers that must not see duplicates skip by it, as with
RocketMQ's own retries).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import struct
import time
import zlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import anyio
import anyio.abc

from ..protocols.record import MAGIC
from ..protocols.remoting import RemotingCommand, RequestCode, ResponseCode, request
from ..protocols.remoting import bodies as B
from ..protocols.remoting.codes import DEFAULT_TOPIC
from ..protocols.remoting.messages import encode_properties
from .admin import cancel_timer
from .instance import ClientInstance, NoRouteError
from .message import (
    SHARDING_KEY,
    Message,
    SendResult,
    SendStatus,
    new_uniq_key,
    new_uniq_keys,
)
from .remoting import DEFAULT_TIMEOUT, BrokerError, ClientError, RemotingConnectError

_MEMBER_HEAD = struct.Struct(">iiiii")  # total, magic, CRC, flag, body length
_U16 = struct.Struct(">H")

log = logging.getLogger("ferrymq.client")

DEFAULT_RETRIES = 2  # RocketMQ DefaultMQProducer.retryTimesWhenSendFailed
RETRY_BACKOFF_S = 0.05
MAX_IN_FLIGHT = 1024  # async sends outstanding per producer
# How long a broker that failed a send is passed over while others work (RocketMQ's
# latency fault tolerance isolates a failed broker for 30 s; shorter here so a restarted
# broker is used again soon).
FAULT_ISOLATION_S = 10.0
# How long a send to a broker group waits for the NameServer to name a new master after
# the old one refused or died (the failover budget: a lease TTL plus a restart).
FAILOVER_WAIT_S = 15.0
# Response codes after which another broker may succeed (RocketMQ's retryResponseCodes).
RETRIABLE = {ResponseCode.SYSTEM_ERROR, ResponseCode.SYSTEM_BUSY, ResponseCode.TOPIC_NOT_EXIST,
             ResponseCode.SERVICE_NOT_AVAILABLE, ResponseCode.NO_PERMISSION,
             ResponseCode.FLUSH_DISK_TIMEOUT}


SendCallback = Callable[[SendResult | BaseException], Any]


class TooManyInFlightError(ClientError):
    """``send_async`` found ``max_in_flight`` sends outstanding (RocketMQ's client
    refuses the same way); ``throttled_send_async`` waits for room instead."""


class Producer:
    """``async with Producer("host:9876", group="pg") as p: await p.send(Message(...))``."""

    def __init__(self, namesrv: str | list[str], group: str = "DEFAULT_PRODUCER", *,
                 timeout: float = DEFAULT_TIMEOUT, retries: int = DEFAULT_RETRIES,
                 max_in_flight: int = MAX_IN_FLIGHT, failover_wait_s: float = FAILOVER_WAIT_S,
                 **instance_options: Any) -> None:
        self.group = group
        self.timeout = timeout
        self.retries = retries
        self.failover_wait_s = failover_wait_s
        self.instance = ClientInstance(namesrv, timeout=timeout, **instance_options)
        self.instance.producer_groups.add(group)
        self._rr = itertools.count()
        self.max_in_flight = max_in_flight
        self._window = anyio.Semaphore(max_in_flight)
        self._in_flight = 0
        self._idle = anyio.Event()
        self._closing = False
        self._queues: dict[str, tuple[B.TopicRouteData, list[B.MessageQueue]]] = {}
        self._faulty: dict[str, float] = {}  # broker name -> avoid it until (monotonic)
        self._tg: anyio.abc.TaskGroup | None = None

    async def __aenter__(self) -> Producer:
        await self.instance.__aenter__()
        self._closing = False
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Close: refuse new sends, wait for every ``send_async`` in flight to finish
        (each is bounded by its timeout and retries; every callback is called), then
        leave. Cancelling the scope around the producer abandons the sends in flight
        instead: their callbacks get the connection's error, or are not called."""
        tg = self._tg
        assert tg is not None
        self._closing = True
        try:
            try:
                if self._in_flight:
                    self._idle = anyio.Event()
                    await self._idle.wait()
            finally:
                if self._in_flight:
                    tg.cancel_scope.cancel()
                self._tg = None
                await tg.__aexit__(None, None, None)
            await self.instance.unregister(producer_group=self.group)
        finally:
            # Even when cancelled: every task group entered by hand is left, innermost
            # first, or the caller's nursery stack is corrupted.
            await self.instance.__aexit__(None, None, None)

    # ------------------------------------------------------------ building

    def _header(self, topic: str, mq: B.MessageQueue, props: str | None, from_default: bool,
                flag: int = 0, batch: bool = False) -> dict[str, str]:
        """SEND_MESSAGE_V2's header (what ``SendMessageRequestHeader.to_ext_v2`` gives,
        built directly: it is on every send)."""
        ext = {"a": self.group, "b": topic, "c": DEFAULT_TOPIC, "d": "4", "e": str(mq.queueId),
               "f": "0", "g": str(time.time_ns() // 1_000_000), "h": str(flag), "j": "0",
               "k": "false"}
        if props is not None:
            ext["i"] = props
        if batch:
            ext["m"] = "true"
        return ext

    def _known_queues(self, topic: str) -> list[B.MessageQueue] | None:
        """The topic's writable queues from the route already known (no await, and
        the list is rebuilt only when the route changes); None when no route is known."""
        route = self.instance.routes.get(topic)
        if route is None:
            return None
        cached = self._queues.get(topic)
        if cached is None or cached[0] is not route:
            cached = self._queues[topic] = (route, B.queues_of(topic, route, write=True))
        return cached[1]

    def _choose(self, queues: list[B.MessageQueue], avoid: set[str]) -> B.MessageQueue:
        """Round-robin, skipping the brokers this send failed on and those that failed
        recently (RocketMQ's sendLatencyFaultEnable), unless nothing else is left."""
        n = len(queues)
        start = next(self._rr)
        if not avoid and not self._faulty:
            return queues[start % n]
        now = time.monotonic()
        faulty = {b for b, until in self._faulty.items() if until > now}
        for skip in (avoid | faulty, avoid):
            for i in range(n):
                q = queues[(start + i) % n]
                if q.brokerName not in skip:
                    return q
        return queues[start % n]

    @property
    def faulty_brokers(self) -> set[str]:
        """Brokers passed over for now because a send to them failed."""
        now = time.monotonic()
        return {b for b, until in self._faulty.items() if until > now}

    def _mark_faulty(self, broker_name: str) -> None:
        self._faulty[broker_name] = time.monotonic() + FAULT_ISOLATION_S

    # ------------------------------------------------------------ sending

    async def _send_cmd(self, topic: str, build: Callable[[B.MessageQueue, bool], RemotingCommand],
                        sharding_key: str | None, queue: B.MessageQueue | None,
                        oneway: bool = False) -> tuple[RemotingCommand | None, B.MessageQueue]:
        inst = self.instance
        avoid: set[str] = set()
        last: Exception | None = None
        attempts = 1 if (sharding_key is not None or queue is not None) else 1 + self.retries
        failover_until: float | None = None  # set at the first failover wait
        attempt = 0
        while attempt < attempts:
            attempt += 1
            mq: B.MessageQueue | None = None
            addr = ""
            try:
                if queue is not None:
                    mq, from_default = queue, False
                else:
                    known = self._known_queues(topic)
                    if known:
                        queues, from_default = known, False
                    else:
                        queues, from_default = await inst.publish_queues(topic)
                    if not queues:
                        raise NoRouteError(f"topic {topic} has no writable queue")
                    if sharding_key is not None:
                        mq = queues[zlib.crc32(sharding_key.encode()) % len(queues)]
                    else:
                        mq = self._choose(queues, avoid)
                cmd = build(mq, from_default)
                addr = inst.broker_addrs.get(mq.brokerName) or await inst.resolve_broker(
                    mq.brokerName)
                if oneway:
                    await inst.remoting.invoke_oneway(addr, cmd)
                    return None, mq
                resp = await inst.remoting.invoke(addr, cmd, self.timeout)
                if resp.code == ResponseCode.SUCCESS:
                    if from_default:
                        inst.routes.pop(topic, None)  # the topic exists now: learn its route
                    return resp, mq
                err = BrokerError(resp.code, resp.remark, addr)
                if resp.code not in RETRIABLE:
                    raise err
                last = err
                failover, mark = resp.code == ResponseCode.SERVICE_NOT_AVAILABLE, True
            except (RemotingConnectError, NoRouteError, ClientError) as exc:
                if isinstance(exc, BrokerError) and exc.code not in RETRIABLE:
                    raise
                last = exc
                failover, mark = not isinstance(exc, NoRouteError), queue is None
                inst.routes.pop(topic, None)
            # A broker group's master refused or is gone: wait for the NameServer to name
            # the new one and send there, on top of the retries (see the module docstring).
            if failover and mq is not None and addr and mq.brokerName in inst.broker_groups:
                now = time.monotonic()
                if failover_until is None:
                    failover_until = now + self.failover_wait_s
                if now < failover_until and await inst.wait_new_master(
                        topic, mq.brokerName, addr, failover_until - now):
                    attempt -= 1
                    continue
            if mq is not None and mark:
                avoid.add(mq.brokerName)
                self._mark_faulty(mq.brokerName)
            if attempt < attempts:
                await anyio.sleep(RETRY_BACKOFF_S * attempt)
        assert last is not None
        raise last

    async def send(self, message: Message, *, sharding_key: str | None = None,
                   queue: B.MessageQueue | None = None) -> SendResult:
        """Send and wait for the broker's acknowledgement. ``sharding_key``: ordered
        send (the same key always goes to the same queue). Raises BrokerError,
        RemotingConnectError, NoRouteError, RemotingTimeoutError."""
        uniq = new_uniq_key()
        encoded = _properties_text(message, uniq, sharding_key)
        topic = message.topic

        def build(mq: B.MessageQueue, from_default: bool) -> RemotingCommand:
            return request(RequestCode.SEND_MESSAGE_V2, 0,
                           self._header(topic, mq, encoded, from_default, message.flag),
                           bytes(message.body))

        resp, mq = await self._send_cmd(topic, build, sharding_key, queue)
        assert resp is not None
        return SendResult(uniq, resp.ext("msgId") or "", mq, int(resp.ext("queueOffset") or 0))

    async def cancel_timer(self, message_id: str, *, topic: str | None = None
                           ) -> dict[str, Any]:
        """Cancel a timed message before its delivery time, by the ``msg_id`` its send
        returned (FerryMQ's CANCEL_TIMER; RocketMQ 4.x has no such request). The
        brokers serving ``topic`` are asked, or every live broker. Returns the
        cancelled timer's ``msgId``, ``timerOffset``, ``deliverMs`` and ``broker``.
        Raises BrokerError (QUERY_NOT_FOUND: unknown, delivered, or cancelled)."""
        inst = self.instance
        route = await inst.route(topic) if topic is not None else None
        if route is None:
            await inst.learn_brokers()
            names = sorted(inst.broker_addrs)
        else:
            names = sorted({b.brokerName for b in route.brokerDatas})
        return await cancel_timer(inst, message_id,
                                  [(n, await inst.resolve_broker(n)) for n in names])

    async def send_oneway(self, message: Message, *, sharding_key: str | None = None) -> None:
        """Send without waiting for (or getting) an acknowledgement."""
        props = message.wire_properties(new_uniq_key())
        encoded = encode_properties(props)

        def build(mq: B.MessageQueue, from_default: bool) -> RemotingCommand:
            return request(RequestCode.SEND_MESSAGE_V2, 0,
                           self._header(message.topic, mq, encoded, from_default, message.flag),
                           bytes(message.body), oneway=True)

        await self._send_cmd(message.topic, build, sharding_key, None, oneway=True)

    async def send_batch(self, messages: Sequence[Message], *,
                         sharding_key: str | None = None) -> list[SendResult]:
        """Send messages of one topic as one batch (stored as one record in one queue)."""
        if not messages:
            return []
        topic = messages[0].topic
        if any(m.topic != topic for m in messages):
            raise ValueError("every message of a batch goes to the same topic")
        uniqs = new_uniq_keys(len(messages))
        # RocketMQ's batch encoding; the member CRC is left 0 as RocketMQ's own client
        # leaves it (the broker's record CRC covers the whole batch).
        parts: list[bytes] = []
        head, u16 = _MEMBER_HEAD.pack, _U16.pack
        for m, u in zip(messages, uniqs, strict=True):
            body = m.body
            if type(body) is not bytes:
                body = bytes(body)
            props = m.wire_properties_text(u).encode()
            nb, np_ = len(body), len(props)
            if np_ > 0xFFFF:  # a batch member's properties length is 16 bits on the wire
                raise ValueError(f"a batch member's properties take {np_} bytes; "
                                 "at most 65,535 fit (send it on its own)")
            parts += (head(22 + nb + np_, MAGIC, 0, m.flag, nb), body, u16(np_), props)
        body = b"".join(parts)

        def build(mq: B.MessageQueue, from_default: bool) -> RemotingCommand:
            return request(RequestCode.SEND_BATCH_MESSAGE, 0,
                           self._header(topic, mq, None, from_default, batch=True), body)

        resp, mq = await self._send_cmd(topic, build, sharding_key, None)
        assert resp is not None
        offsets = (resp.ext("msgId") or "").split(",")
        if len(offsets) < len(uniqs):
            offsets += [""] * (len(uniqs) - len(offsets))
        base = int(resp.ext("queueOffset") or 0)
        new, ok = tuple.__new__, SendStatus.SEND_OK  # a SendResult per message: the fast form
        return [new(SendResult, (u, o, mq, base + i, ok))
                for i, (u, o) in enumerate(zip(uniqs, offsets, strict=False))]

    def send_async(self, message: Message, callback: SendCallback | None = None, *,
                   sharding_key: str | None = None) -> None:
        """Start sending ``message`` now and return at once (RocketMQ's
        ``send(msg, SendCallback)``); ``callback`` gets the SendResult or the exception,
        exactly once. Nothing to await: the send belongs to the producer, whose close
        waits for it. Sends started without yielding leave in one write. A failed send
        is retried like ``send`` (moving to another broker).

        Raises TooManyInFlightError at once when ``max_in_flight`` sends are outstanding
        (RocketMQ refuses too: "executor rejected"); ``throttled_send_async`` waits for
        room instead. Raises ClientError when the producer is not open."""
        tg = self._open_tg()
        try:
            self._window.acquire_nowait()
        except anyio.WouldBlock:
            raise TooManyInFlightError(
                f"{self.max_in_flight} sends in flight (max_in_flight); use "
                "throttled_send_async to wait for room") from None
        self._begin(tg, message, callback, sharding_key)

    async def throttled_send_async(self, message: Message, callback: SendCallback | None = None,
                                   *, sharding_key: str | None = None) -> None:
        """``send_async`` with backpressure: waits only while ``max_in_flight`` sends are
        outstanding, then starts the send and returns. It does NOT wait for the send
        itself: the result goes to ``callback``."""
        tg = self._open_tg()
        try:
            self._window.acquire_nowait()
        except anyio.WouldBlock:
            await self._window.acquire()
            try:
                tg = self._open_tg()  # it may have closed meanwhile
            except ClientError:
                self._window.release()
                raise
        self._begin(tg, message, callback, sharding_key)

    @property
    def in_flight(self) -> int:
        """Sends started by ``send_async`` whose callback has not been called yet."""
        return self._in_flight

    def _open_tg(self) -> anyio.abc.TaskGroup:
        if self._tg is None or self._closing:
            raise ClientError("the producer is not open: use it as an async context manager")
        return self._tg

    def _begin(self, tg: anyio.abc.TaskGroup, message: Message, callback: SendCallback | None,
               sharding_key: str | None) -> None:
        """The window is acquired: start the send (on the connection now, else as a task
        of the producer's task group, scheduled now)."""
        self._in_flight += 1
        try:
            started = self._send_nowait(message, callback, sharding_key)
        except BaseException:
            self._finish_count()
            raise
        if not started:
            tg.start_soon(self._run_async, message, callback, sharding_key)

    def _finish_count(self) -> None:
        self._window.release()
        self._in_flight -= 1
        if self._in_flight == 0:
            self._idle.set()

    def _finish(self, callback: SendCallback | None, result: SendResult | BaseException) -> None:
        self._finish_count()
        if callback is None:
            if isinstance(result, BaseException):
                log.warning("async send failed: %s", result)
            return
        try:
            outcome = callback(result)
            if inspect.isawaitable(outcome) and self._tg is not None:
                self._tg.start_soon(_await, outcome)  # an async callback runs as our task
        except Exception:  # the user's callback: never let it break a connection or us
            log.exception("a send_async callback failed")

    def _send_nowait(self, message: Message, callback: SendCallback | None,
                     sharding_key: str | None) -> bool:
        """The fast path: the route is known and the connection open. False: take
        the general path."""
        inst = self.instance
        topic = message.topic
        queues = self._known_queues(topic)
        if not queues:
            return False
        if sharding_key is not None:
            mq = queues[zlib.crc32(sharding_key.encode()) % len(queues)]
        else:
            mq = self._choose(queues, set())
        addr = inst.broker_addrs.get(mq.brokerName)
        conn = inst.remoting.connections.get(addr) if addr else None
        if conn is None or conn.closed:
            return False
        uniq = new_uniq_key()
        cmd = request(RequestCode.SEND_MESSAGE_V2, 0,
                      self._header(topic, mq, _properties_text(message, uniq, sharding_key),
                                   False, message.flag),
                      bytes(message.body))

        def done(resp: Any) -> None:
            if isinstance(resp, RemotingCommand) and resp.code == ResponseCode.SUCCESS:
                self._finish(callback, SendResult(uniq, resp.ext("msgId") or "", mq,
                                                  int(resp.ext("queueOffset") or 0)))
            elif self._tg is not None:
                # A failure or a refusal: retry the long way (other brokers, backoff),
                # keeping this send's place in the window. (The task group is open:
                # the close waits for every send in flight.)
                self._tg.start_soon(self._run_async, message, callback, sharding_key)
            else:
                self._finish(callback, resp if isinstance(resp, BaseException)
                             else BrokerError(resp.code, resp.remark, addr or ""))

        try:
            conn.send_nowait(cmd, done, self.timeout)
        except ClientError:
            return False
        return True

    async def _run_async(self, message: Message, callback: SendCallback | None,
                         sharding_key: str | None) -> None:
        try:
            result: SendResult | BaseException = await self.send(message,
                                                                  sharding_key=sharding_key)
        except Exception as exc:  # every outcome goes to the callback
            result = exc
        self._finish(callback, result)


def _properties_text(message: Message, uniq: str, sharding_key: str | None) -> str:
    """The properties header field of a single send."""
    if sharding_key is None:
        return message.wire_properties_text(uniq)
    props = message.wire_properties(uniq)
    props[SHARDING_KEY] = sharding_key
    return encode_properties(props)


async def _await(outcome: Awaitable[Any]) -> None:
    try:
        await outcome
    except Exception:
        log.exception("a send_async callback failed")
