"""Consumers: a PushConsumer (rebalanced or broadcast, concurrent or orderly) and a PullConsumer.

PushConsumer follows RocketMQ's DefaultMQPushConsumer:

- Clustering: every ``rebalance_s`` (RocketMQ: 20 s) and whenever a broker
  sends NOTIFY_CONSUMER_IDS_CHANGED, the consumer lists the topic's queues (from
  the NameServer route) and the group's members (GET_CONSUMER_LIST_BY_GROUP),
  sorts both and takes its share with ``allocate_average``
  (AllocateMessageQueueAveragely). It also consumes ``%RETRY%<group>``.
- Handover (RocketMQ's RebalanceImpl, plus the broker's queue lock for every
  clustering member, not only orderly ones): a queue given up stops after the
  batch in hand, its offset is persisted once while this member still owns it,
  then forgotten, then its lock released; a queue taken is locked first, then
  consumed from the group's committed offset on the broker, never from a value
  held before. So a member that joins or leaves cleanly causes no duplicate, and
  no member writes the offset of a queue it no longer owns.
- Broadcasting: every member takes every queue; offsets live in a local file.
- Per owned queue one task long-polls PULL_MESSAGE and hands messages to the
  handler ``consume_batch_size`` at a time; the next offset is kept in memory,
  sent with each pull (commitOffset) and persisted every ``persist_s``, when the
  queue is given up, and at shutdown: at-least-once, duplicates only for what
  was consumed since the last persisted offset before a crash.
- Concurrent consumption: a failed batch (RECONSUME_LATER or an exception) is
  sent back (CONSUMER_SEND_MSG_BACK) and the queue moves on; the broker
  redelivers through the retry topic, or dead-letters past ``max_reconsume_times``.
- Orderly consumption: a queue is consumed only while this client holds its
  broker lock (LOCK_BATCH_MQ, renewed every 20 s); a failed batch is retried
  in place after ``suspend_s`` (RocketMQ: 1 s) until it succeeds or runs out
  of attempts, then dead-lettered.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import anyio.abc

from ..protocols import record as rec
from ..protocols.remoting import RemotingCommand, RequestCode, ResponseCode, request
from ..protocols.remoting import bodies as B
from ..protocols.remoting import headers as H
from ..protocols.remoting.codes import (
    PULL_FLAG_COMMIT_OFFSET,
    PULL_FLAG_SUBSCRIPTION,
    PULL_FLAG_SUSPEND,
    RETRY_GROUP_TOPIC_PREFIX,
)
from ..protocols.remoting.messages import MessageExt, decode_messages
from .instance import ClientInstance, NoRouteError
from .message import RETRY_TOPIC, ConsumeResult
from .offsets import PERSIST_S, LocalOffsetFile
from .remoting import DEFAULT_TIMEOUT, BrokerError, ClientError, check

log = logging.getLogger("ferrymq.client")

REBALANCE_S = 20.0  # RocketMQ MQClientInstance rebalance period
LOCK_RENEW_S = 20.0  # RocketMQ ConsumeMessageOrderlyService lock renewal
SUSPEND_MS = 15_000  # RocketMQ BROKER_SUSPEND_MAX_TIME_MILLIS
PULL_ERROR_BACKOFF_S = 1.0
# A queue just allocated is locked by its last owner until that one has persisted its
# offset (a few round trips): ask again soon, then back off to suspend_s.
LOCK_RETRY_MIN_S = 0.05
# How long a shutdown waits for the handlers to finish the batches they hold.
SHUTDOWN_GRACE_S = 10.0
MAX_RECONSUME_TIMES = 16

Handler = Callable[[list[MessageExt]], Any]


def allocate_average(consumer_ids: Sequence[str], me: str,
                     queues: Sequence[B.MessageQueue]) -> list[B.MessageQueue]:
    """RocketMQ's AllocateMessageQueueAveragely: contiguous, near-equal shares of the
    sorted queues by the position of ``me`` among the sorted consumer ids."""
    cids = sorted(consumer_ids)
    mqs = sorted(queues, key=lambda q: (q.topic, q.brokerName, q.queueId))
    if me not in cids or not mqs:
        return []
    index, n, total = cids.index(me), len(cids), len(mqs)
    mod = total % n
    if total <= n:
        size = 1
    elif mod > 0 and index < mod:
        size = total // n + 1
    else:
        size = total // n
    start = index * size if mod > 0 and index < mod else index * size + mod
    return [mqs[(start + i) % total] for i in range(min(size, total - start))]


def _ok(result: object) -> bool:
    return result is None or result is True or result == ConsumeResult.SUCCESS


async def _call(handler: Handler, msgs: list[MessageExt]) -> bool:
    try:
        if inspect.iscoroutinefunction(handler):
            return _ok(await handler(msgs))
        return _ok(await anyio.to_thread.run_sync(handler, msgs))
    except Exception:
        log.exception("message handler failed; the messages will be redelivered")
        return False


def _restore_retry_topic(m: MessageExt) -> MessageExt:
    if not m.topic.startswith(RETRY_GROUP_TOPIC_PREFIX):
        return m
    real = m.properties.get(RETRY_TOPIC)
    return m._replace(topic=real) if real else m


async def _start_offset(inst: ClientInstance, group: str, mq: B.MessageQueue,
                        consume_from: str | int) -> int:
    """The committed offset, or where a group without one starts."""
    resp = await inst.broker_invoke(mq.brokerName, request(
        RequestCode.QUERY_CONSUMER_OFFSET, 0, H.QueryConsumerOffsetRequestHeader(
            group, mq.topic, mq.queueId, False).to_ext()))
    if resp.code == ResponseCode.SUCCESS:
        return int(resp.ext("offset") or 0)
    check(resp, mq.brokerName, (ResponseCode.QUERY_NOT_FOUND,))
    return await _initial_offset(inst, mq, "FIRST" if mq.topic.startswith(
        RETRY_GROUP_TOPIC_PREFIX) else consume_from)


async def _initial_offset(inst: ClientInstance, mq: B.MessageQueue, where: str | int) -> int:
    if isinstance(where, int):
        code, ext = RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, {
            "topic": mq.topic, "queueId": str(mq.queueId), "timestamp": str(where)}
    else:
        code = RequestCode.GET_MIN_OFFSET if where.upper() in ("FIRST", "EARLIEST") \
            else RequestCode.GET_MAX_OFFSET
        ext = {"topic": mq.topic, "queueId": str(mq.queueId)}
    resp = check(await inst.broker_invoke(mq.brokerName, request(code, 0, ext)), mq.brokerName)
    return int(resp.ext("offset") or 0)


async def pull(inst: ClientInstance, group: str, mq: B.MessageQueue, offset: int, *,
               max_msgs: int = 32, sub: B.SubscriptionData | None = None, suspend_ms: int = 0,
               commit_offset: int = 0) -> tuple[int, int, list[MessageExt]]:
    """One PULL_MESSAGE: (response code, next offset, messages)."""
    flag = PULL_FLAG_SUBSCRIPTION if sub else 0
    if suspend_ms:
        flag |= PULL_FLAG_SUSPEND
    if commit_offset > 0:
        flag |= PULL_FLAG_COMMIT_OFFSET
    h = H.PullMessageRequestHeader(
        group, mq.topic, mq.queueId, offset, max_msgs, flag, commit_offset, suspend_ms,
        sub.subString if sub else None, sub.subVersion if sub else 0,
        sub.expressionType if sub else None)
    ext = h.to_ext()
    ext[rec.PULL_LONG_PROPERTIES] = "true"  # we read long property areas (docs/storage.md)
    key = (mq.brokerName, mq.topic, mq.queueId)
    member = inst.pull_from.get(key, 0)
    addr = inst.member_addr(mq.brokerName, member) if member else None
    try:
        if addr is None:
            addr = await inst.resolve_broker(mq.brokerName)
        resp = await inst.remoting.invoke(addr, request(RequestCode.PULL_MESSAGE, 0, ext),
                                          suspend_ms / 1000 + inst.timeout)
    except ClientError:
        # The broker is gone: in a broker group its master may have moved; the next pull
        # asks the NameServer again (docs/cluster.md, "Clients follow the master").
        inst.pull_from.pop(key, None)
        if mq.brokerName in inst.broker_groups:
            with contextlib.suppress(ClientError):
                await inst.fetch_route(mq.topic)
        raise
    suggested = int(resp.ext("suggestWhichBrokerId") or 0)
    if suggested:
        inst.pull_from[key] = suggested
    else:
        inst.pull_from.pop(key, None)
    nxt = int(resp.ext("nextBeginOffset") or offset)
    if resp.code == ResponseCode.SUCCESS:
        try:
            return resp.code, nxt, decode_messages(resp.body)
        except rec.RecordError as exc:
            raise BrokerError(ResponseCode.SYSTEM_ERROR, f"undecodable pull body: {exc}",
                              mq.brokerName) from None
    if resp.code in (ResponseCode.PULL_NOT_FOUND, ResponseCode.PULL_RETRY_IMMEDIATELY,
                     ResponseCode.PULL_OFFSET_MOVED):
        return resp.code, nxt, []
    if resp.code == ResponseCode.SERVICE_NOT_AVAILABLE and mq.brokerName in inst.broker_groups:
        with contextlib.suppress(ClientError):  # not the master (any more): look again
            await inst.fetch_route(mq.topic)
    raise BrokerError(resp.code, resp.remark, mq.brokerName)


@dataclass(eq=False)
class _ProcessQueue:
    """One queue this consumer is consuming (RocketMQ's ProcessQueue): the cancel scope
    of its task, and whether it is being given up. A queue given up stops after the
    batch in hand: at once when its task is between batches (pulling, waiting for its
    lock, backing off), else when the handler returns, so that a clean handover never
    cuts a handler short and hands the same messages to the next owner."""

    mq: B.MessageQueue
    scope: anyio.CancelScope = field(default_factory=anyio.CancelScope)
    done: anyio.Event = field(default_factory=anyio.Event)
    dropped: bool = False
    busy: bool = False  # in the handler, or sending a failed batch back

    def drop(self) -> None:
        self.dropped = True
        if not self.busy:
            self.scope.cancel()

    @contextlib.contextmanager
    def busy_section(self) -> Iterator[None]:
        self.busy = True
        try:
            yield
        finally:
            self.busy = False


class PushConsumer:
    """``async with PushConsumer(ns, "group", handler) as c`` after ``c.subscribe(topic)``;
    or ``await nursery.start(c.run)`` / ``await c.shutdown()``."""

    def __init__(self, namesrv: str | list[str], group: str, handler: Handler, *,
                 message_model: str = "CLUSTERING", orderly: bool = False,
                 consume_from: str | int = "LAST", consume_batch_size: int = 1,
                 pull_batch_size: int = 32, max_reconsume_times: int = MAX_RECONSUME_TIMES,
                 offset_dir: str | None = None, client_name: str | None = None,
                 rebalance_s: float = REBALANCE_S, persist_s: float = PERSIST_S,
                 suspend_ms: int = SUSPEND_MS, suspend_s: float = 1.0,
                 shutdown_grace_s: float = SHUTDOWN_GRACE_S,
                 timeout: float = DEFAULT_TIMEOUT, **instance_options: Any) -> None:
        if message_model not in ("CLUSTERING", "BROADCASTING"):
            raise ValueError("message_model is CLUSTERING or BROADCASTING")
        self.group = group
        self.handler = handler
        self.broadcasting = message_model == "BROADCASTING"
        self.orderly = orderly
        self.consume_from = consume_from
        self.consume_batch_size = max(1, consume_batch_size)
        self.pull_batch_size = max(1, pull_batch_size)
        self.max_reconsume_times = max_reconsume_times
        self.rebalance_s = rebalance_s
        self.persist_s = persist_s
        self.suspend_ms = suspend_ms
        self.suspend_s = suspend_s
        self.shutdown_grace_s = shutdown_grace_s
        self.instance = ClientInstance(namesrv, timeout=timeout, **instance_options)
        self.instance.consumer_data = self._consumer_data
        self.instance.on_server_request = self._server_request
        self.subscriptions: dict[str, B.SubscriptionData] = {}
        # The next offset of every queue this consumer owns (clustering: only while it
        # owns it, see _release; broadcasting: every queue, mirrored in the local file).
        self.offsets: dict[B.MessageQueue, int] = {}
        self._dirty: set[B.MessageQueue] = set()
        self._running: dict[B.MessageQueue, _ProcessQueue] = {}
        self._releasing: set[B.MessageQueue] = set()
        self._wanted: set[B.MessageQueue] = set()
        self._reset_to: dict[B.MessageQueue, int] = {}
        self._locked: set[B.MessageQueue] = set()
        # Clustering members hold a queue's broker lock while they consume it (orderly
        # or not): the next owner cannot start before the last one persisted its offset.
        self._locking = not self.broadcasting
        self._rebalance_now = anyio.Event()
        self._tg: anyio.abc.TaskGroup | None = None
        self._offsets_lock: anyio.Lock | None = None
        self._stopping = False
        self._stop: anyio.Event | None = None
        self._stopped: anyio.Event | None = None
        self._local = (LocalOffsetFile(offset_dir, client_name or "default", group)
                       if self.broadcasting else None)
        self.consumed = 0

    # ------------------------------------------------------------ configuration

    def subscribe(self, topic: str, expression: str = "*", expression_type: str = "TAG"
                  ) -> None:
        """Subscribe to ``topic`` with a tag expression (``TagA || TagB``) or, with
        ``expression_type="SQL92"``, a property selector."""
        tags: tuple[str, ...] = ()
        if expression_type.upper() == "TAG" and expression.strip() not in ("", "*"):
            tags = tuple(t.strip() for t in expression.split("||") if t.strip())
        self.subscriptions[topic] = B.SubscriptionData(topic, expression or "*",
                                                       expression_type.upper(), tags)
        if self._tg is not None:
            self._rebalance_now.set()

    def _all_subscriptions(self) -> list[B.SubscriptionData]:
        subs = list(self.subscriptions.values())
        if not self.broadcasting:
            subs.append(B.SubscriptionData(RETRY_GROUP_TOPIC_PREFIX + self.group))
        return subs

    def _consumer_data(self) -> list[B.ConsumerData]:
        where = ("CONSUME_FROM_TIMESTAMP" if isinstance(self.consume_from, int)
                 else "CONSUME_FROM_FIRST_OFFSET" if self.consume_from.upper() in (
                     "FIRST", "EARLIEST") else "CONSUME_FROM_LAST_OFFSET")
        return [B.ConsumerData(self.group, "CONSUME_PASSIVELY",
                               "BROADCASTING" if self.broadcasting else "CLUSTERING", where,
                               tuple(self._all_subscriptions()))]

    # ------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> PushConsumer:
        if not self.subscriptions:
            raise ValueError("subscribe to a topic before starting")
        self._outer = anyio.create_task_group()
        await self._outer.__aenter__()
        try:
            await self._outer.start(self.run)
        except BaseException as exc:
            await self._outer.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        try:
            await self.shutdown()
        finally:
            await self._outer.__aexit__(None, None, None)

    async def run(self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
                  ) -> None:
        """Consume until ``shutdown``: ``await nursery.start(consumer.run)``. On the way
        out the batches in hand are finished (up to ``shutdown_grace_s``), the offsets of
        the queues still owned persisted, the queue locks released and the group left."""
        if not self.subscriptions:
            raise ValueError("subscribe to a topic before starting")
        self._stop = anyio.Event()
        self._stopped = anyio.Event()
        self._offsets_lock = anyio.Lock()
        self._stopping = False
        try:
            async with self.instance:
                if self._local is not None:
                    self.offsets.update(self._local.load())
                for sub in self._all_subscriptions():
                    try:
                        await self.instance.route(sub.topic, refresh=True)
                    except NoRouteError as exc:
                        log.info("no route for %s yet: %s", sub.topic, exc)
                await self.instance.send_heartbeats()
                try:
                    async with anyio.create_task_group() as tg:
                        self._tg = tg
                        tg.start_soon(self._rebalance_loop)
                        tg.start_soon(self._persist_loop)
                        if self._locking:
                            tg.start_soon(self._lock_loop)
                        task_status.started()
                        await self._stop.wait()
                        await self._finish_batches()
                        tg.cancel_scope.cancel()
                finally:
                    self._tg = None
                    self._running.clear()
                    self._releasing.clear()
                    with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                        await self._persist(list(self.offsets))
                        if self._locked:
                            await self._unlock(list(self._locked))
                        await self.instance.unregister(consumer_group=self.group)
                    if not self.broadcasting:
                        self.offsets.clear()  # another run reads the group's offsets anew
                        self._dirty.clear()
        finally:
            self._stopped.set()

    async def _finish_batches(self) -> None:
        """Stop every queue after the batch in hand, waiting up to shutdown_grace_s."""
        self._stopping = True
        pqs = list(self._running.values())
        for pq in pqs:
            pq.drop()
        with anyio.move_on_after(self.shutdown_grace_s):
            for pq in pqs:
                await pq.done.wait()

    async def shutdown(self) -> None:
        """Stop consuming and wait until ``run`` has cleaned up."""
        if self._stop is None or self._stopped is None:
            return
        self._stop.set()
        await self._stopped.wait()

    # ------------------------------------------------------------ server requests

    async def _server_request(self, cmd: RemotingCommand) -> None:
        if cmd.code == RequestCode.NOTIFY_CONSUMER_IDS_CHANGED:
            self._rebalance_now.set()
        elif cmd.code == RequestCode.RESET_CONSUMER_CLIENT_OFFSET:
            # The broker has committed the new offsets. A queue consumed here restarts
            # at its new offset, written again once its task stopped, so that nothing
            # this member persists on the way can undo the reset.
            for mq, off in B.decode_queue_table(cmd.body):
                if mq in self._running or mq in self._releasing:
                    self._reset_to[mq] = int(off)
                if mq in self._running and self._tg is not None:
                    self._release_soon(mq, restart=True)
                elif self.broadcasting:
                    self.offsets[mq] = int(off)
            self._rebalance_now.set()

    # ------------------------------------------------------------ rebalance

    async def _rebalance_loop(self) -> None:
        while True:
            self._rebalance_now = anyio.Event()
            try:
                await self.rebalance()
            except ClientError as exc:
                log.info("rebalance of %s failed: %s", self.group, exc)
            with anyio.move_on_after(self.rebalance_s):
                await self._rebalance_now.wait()

    async def _consumer_ids(self, queues: list[B.MessageQueue]) -> list[str]:
        for name in sorted({q.brokerName for q in queues}):
            try:
                resp = await self.instance.broker_invoke(name, request(
                    RequestCode.GET_CONSUMER_LIST_BY_GROUP, 0, {"consumerGroup": self.group}))
            except ClientError:
                continue
            if resp.code == ResponseCode.SUCCESS:
                return B.decode_consumer_ids(resp.body)
        return []

    async def rebalance(self) -> None:
        """Work out the queues this consumer owns now; give up the others (each after
        the batch in hand, its offset persisted once, then forgotten and its lock
        released) and start consuming the new ones."""
        want: set[B.MessageQueue] = set()
        for sub in self._all_subscriptions():
            queues = await self.instance.subscribe_queues(sub.topic, refresh=True)
            if not queues:
                continue
            if self.broadcasting:
                want.update(queues)
            else:
                ids = await self._consumer_ids(queues)
                want.update(allocate_average(ids, self.instance.client_id, queues))
        if self._stopping or self._tg is None:
            return
        self._wanted = want
        for q in [q for q in self._running if q not in want]:
            self._release_soon(q)
        for q in want:
            if q not in self._running and q not in self._releasing:
                self._start_queue(q)

    @property
    def assigned(self) -> set[B.MessageQueue]:
        return set(self._running)

    def _start_queue(self, mq: B.MessageQueue) -> None:
        assert self._tg is not None
        pq = self._running[mq] = _ProcessQueue(mq)
        self._tg.start_soon(self._consume_queue, pq)

    def _release_soon(self, mq: B.MessageQueue, *, persist: bool = True,
                      restart: bool = False) -> None:
        assert self._tg is not None
        pq = self._running.pop(mq)
        self._releasing.add(mq)
        pq.drop()
        self._tg.start_soon(self._release, pq, persist, restart)

    async def _release(self, pq: _ProcessQueue, persist: bool, restart: bool) -> None:
        """Give ``pq``'s queue up once its task has stopped: persist its offset while
        this member still owns it (RocketMQ's removeUnnecessaryMessageQueue), forget it,
        and only then release the broker lock, so that the next owner reads that
        offset. ``restart``: an offset reset; keep the queue and consume it again."""
        mq = pq.mq
        assert self._offsets_lock is not None
        try:
            await pq.done.wait()
            restart = restart and mq in self._wanted and not self._stopping
            async with self._offsets_lock:
                reset = self._reset_to.pop(mq, None)
                if reset is not None and mq in self.offsets:
                    self.offsets[mq] = reset
                    persist = True
                if persist and mq in self.offsets:
                    await self._store_offsets([mq])
                if not restart and not self.broadcasting:
                    self.offsets.pop(mq, None)
                    self._dirty.discard(mq)
            if not restart and self._locking:
                await self._unlock([mq])
        finally:
            self._releasing.discard(mq)
        if restart:
            self._start_queue(mq)
        elif mq in self._wanted:
            self._rebalance_now.set()  # given up and wanted again meanwhile: take it back

    # ------------------------------------------------------------ consuming

    async def _first_offset(self, mq: B.MessageQueue) -> int:
        """Where consumption of a queue just taken starts: the group's committed offset
        on the broker (RocketMQ's computePullFromWhere), else ``consume_from``."""
        while True:
            try:
                return await _start_offset(self.instance, self.group, mq, self.consume_from)
            except ClientError as exc:
                log.info("no start offset for %s yet: %s", mq, exc)
                await anyio.sleep(PULL_ERROR_BACKOFF_S)

    async def _consume_queue(self, pq: _ProcessQueue) -> None:
        mq = pq.mq
        inst = self.instance
        sub = self.subscriptions.get(mq.topic) or B.SubscriptionData(mq.topic)
        try:
            with pq.scope:
                if self._locking:
                    await self._acquire_lock(mq)
                offset = self.offsets.get(mq)  # only after a reset, or broadcasting
                if offset is None:
                    offset = self.offsets[mq] = await self._first_offset(mq)
                    self._dirty.add(mq)
                while True:
                    commit = self.offsets.get(mq, 0) if not self.broadcasting else 0
                    try:
                        code, nxt, msgs = await pull(
                            inst, self.group, mq, offset, max_msgs=self.pull_batch_size,
                            sub=sub, suspend_ms=self.suspend_ms, commit_offset=commit)
                    except ClientError as exc:
                        log.info("pull from %s failed: %s", mq, exc)
                        await anyio.sleep(PULL_ERROR_BACKOFF_S)
                        continue
                    if code == ResponseCode.PULL_OFFSET_MOVED:
                        offset = nxt
                        self._set_offset(mq, nxt)
                        continue
                    if not msgs:
                        offset = nxt
                        continue
                    if sub.tagsSet:
                        wanted = set(sub.tagsSet)
                        msgs = [m for m in msgs if m.tags in wanted]
                    for i in range(0, len(msgs), self.consume_batch_size):
                        if pq.dropped:
                            return
                        batch = msgs[i:i + self.consume_batch_size]
                        if not await self._consume(pq, batch):
                            return  # given up while retrying: the next owner retries
                        self._set_offset(mq, batch[-1].queue_offset + 1)
                    if pq.dropped:
                        return
                    offset = nxt
                    self._set_offset(mq, nxt)
        finally:
            pq.done.set()

    def _set_offset(self, mq: B.MessageQueue, offset: int) -> None:
        if self.offsets.get(mq) != offset:
            self.offsets[mq] = offset
            self._dirty.add(mq)

    async def _consume(self, pq: _ProcessQueue, msgs: list[MessageExt]) -> bool:
        """Hand ``msgs`` to the handler until it takes them (orderly) or they are taken
        or sent back (concurrent). False: the queue was given up before that; the
        batch is left to the next owner."""
        mq = pq.mq
        view = [_restore_retry_topic(m) for m in msgs]
        if self.orderly:
            attempts = 0
            while True:
                with pq.busy_section():
                    if await _call(self.handler, view):
                        break
                attempts += 1
                if attempts > self.max_reconsume_times:
                    with pq.busy_section():
                        for m in msgs:
                            await self._send_back(mq, m, -1)
                    break
                if pq.dropped:
                    return False
                await anyio.sleep(self.suspend_s)
            self.consumed += len(msgs)
            return True
        while True:
            with pq.busy_section():
                if await _call(self.handler, view):
                    break
                failed = [m for m in msgs if not await self._send_back(mq, m, 0)]
            if not failed:
                break
            if pq.dropped:
                return False
            msgs = failed  # the broker refused: consume them here again a little later
            view = [_restore_retry_topic(m) for m in msgs]
            await anyio.sleep(self.suspend_s)
        self.consumed += len(msgs)
        return True

    async def _send_back(self, mq: B.MessageQueue, m: MessageExt, delay_level: int) -> bool:
        h = H.ConsumerSendMsgBackRequestHeader(
            m.physical_offset, self.group, delay_level, m.msg_id,
            m.properties.get(RETRY_TOPIC, m.topic), False, self.max_reconsume_times)
        try:
            resp = await self.instance.broker_invoke(
                mq.brokerName, request(RequestCode.CONSUMER_SEND_MSG_BACK, 0, h.to_ext()))
        except ClientError as exc:
            log.info("send-back to %s failed: %s", mq.brokerName, exc)
            return False
        return resp.code == ResponseCode.SUCCESS

    # ------------------------------------------------------------ offsets

    async def _persist_loop(self) -> None:
        while True:
            await anyio.sleep(self.persist_s)
            await self._persist(list(self._dirty))

    async def _persist(self, queues: list[B.MessageQueue]) -> None:
        """Persist the offsets of ``queues`` this consumer still owns."""
        assert self._offsets_lock is not None
        async with self._offsets_lock:
            await self._store_offsets(queues)

    async def _store_offsets(self, queues: list[B.MessageQueue]) -> None:
        """(The offsets lock held: a periodic write can never land after the write of a
        give-up, nor after the lock that followed it went to another member.)"""
        if self._local is not None:
            if self._dirty or queues:
                self._local.save(self.offsets)
                self._dirty.clear()
            return
        for mq in queues:
            off = self.offsets.get(mq)
            if off is None:
                continue  # not ours (any more): its owner keeps its offset
            try:
                check(await self.instance.broker_invoke(mq.brokerName, request(
                    RequestCode.UPDATE_CONSUMER_OFFSET, 0, H.UpdateConsumerOffsetRequestHeader(
                        self.group, mq.topic, mq.queueId, off).to_ext())), mq.brokerName)
                if self.offsets.get(mq) == off:
                    self._dirty.discard(mq)
            except ClientError as exc:
                log.info("persisting the offset of %s failed: %s", mq, exc)

    # ------------------------------------------------------------ queue locks

    async def _lock(self, queues: list[B.MessageQueue]) -> set[B.MessageQueue]:
        """LOCK_BATCH_MQ: lock (or renew) ``queues``; returns those the brokers refused
        (held by another member). A broker that did not answer changes nothing."""
        refused: set[B.MessageQueue] = set()
        by_broker: dict[str, list[B.MessageQueue]] = {}
        for q in queues:
            by_broker.setdefault(q.brokerName, []).append(q)
        for name, qs in by_broker.items():
            body = B.LockBatchRequestBody(self.group, self.instance.client_id, tuple(qs)).encode()
            try:
                resp = check(await self.instance.broker_invoke(
                    name, request(RequestCode.LOCK_BATCH_MQ, 0, {}, body)), name)
                locked = set(B.decode_lock_ok(resp.body))
            except ClientError as exc:
                log.info("locking queues on %s failed: %s", name, exc)
                continue
            for q in qs:
                if q in locked:
                    self._locked.add(q)
                else:
                    self._locked.discard(q)
                    refused.add(q)
        return refused

    async def _acquire_lock(self, mq: B.MessageQueue) -> None:
        """Wait until this member holds ``mq``'s broker lock: its last owner has
        persisted its offset and let go (or crashed: its connection closed)."""
        delay = LOCK_RETRY_MIN_S
        while True:
            refused = await self._lock([mq])
            if mq in self._locked and mq not in refused:
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, max(self.suspend_s, LOCK_RETRY_MIN_S))

    async def _unlock(self, queues: list[B.MessageQueue]) -> None:
        by_broker: dict[str, list[B.MessageQueue]] = {}
        for q in queues:
            by_broker.setdefault(q.brokerName, []).append(q)
            self._locked.discard(q)
        for name, qs in by_broker.items():
            body = B.LockBatchRequestBody(self.group, self.instance.client_id, tuple(qs)).encode()
            with contextlib.suppress(ClientError):
                await self.instance.broker_invoke(name, request(RequestCode.UNLOCK_BATCH_MQ, 0,
                                                                {}, body))

    async def _lock_loop(self) -> None:
        """Renew the locks of the queues being consumed; a queue whose lock went to
        another member (ours expired: this member was unreachable for the lock's
        lifetime) is given up without writing its offset: the other owns it now."""
        while True:
            await anyio.sleep(LOCK_RENEW_S)
            held = [q for q in self._running if q in self._locked]
            if not held:
                continue
            for q in await self._lock(held):
                if q in self._running and self._tg is not None:
                    log.warning("the lock of %s went to another member of %s", q, self.group)
                    self._release_soon(q, persist=False)


class PullConsumer:
    """Assign queues, seek, poll, commit: the consumer that leaves scheduling to you.

    Offsets are the group's offsets on the brokers (``commit``); an assigned queue
    without a position starts at the committed offset, else at ``consume_from``."""

    def __init__(self, namesrv: str | list[str], group: str, *, consume_from: str | int = "LAST",
                 timeout: float = DEFAULT_TIMEOUT, **instance_options: Any) -> None:
        self.group = group
        self.consume_from = consume_from
        self.instance = ClientInstance(namesrv, timeout=timeout, **instance_options)
        self.positions: dict[B.MessageQueue, int] = {}
        self._assigned: list[B.MessageQueue] = []
        self._next = 0
        self.filters: dict[str, B.SubscriptionData] = {}

    async def __aenter__(self) -> PullConsumer:
        await self.instance.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.instance.__aexit__(None, None, None)

    async def queues(self, topic: str) -> list[B.MessageQueue]:
        return await self.instance.subscribe_queues(topic, refresh=True)

    def assign(self, queues: Sequence[B.MessageQueue]) -> None:
        self._assigned = list(queues)
        self.positions = {q: o for q, o in self.positions.items() if q in self._assigned}

    def set_filter(self, topic: str, expression: str, expression_type: str = "TAG") -> None:
        self.filters[topic] = B.SubscriptionData(topic, expression, expression_type.upper())

    async def seek(self, mq: B.MessageQueue, offset: int) -> None:
        self.positions[mq] = offset

    async def seek_to_time(self, mq: B.MessageQueue, timestamp_ms: int) -> int:
        self.positions[mq] = await _initial_offset(self.instance, mq, timestamp_ms)
        return self.positions[mq]

    async def seek_to_beginning(self, mq: B.MessageQueue) -> int:
        self.positions[mq] = await _initial_offset(self.instance, mq, "FIRST")
        return self.positions[mq]

    async def seek_to_end(self, mq: B.MessageQueue) -> int:
        self.positions[mq] = await _initial_offset(self.instance, mq, "LAST")
        return self.positions[mq]

    async def position(self, mq: B.MessageQueue) -> int:
        if mq not in self.positions:
            self.positions[mq] = await _start_offset(self.instance, self.group, mq,
                                                     self.consume_from)
        return self.positions[mq]

    async def committed(self, mq: B.MessageQueue) -> int | None:
        resp = await self.instance.broker_invoke(mq.brokerName, request(
            RequestCode.QUERY_CONSUMER_OFFSET, 0, H.QueryConsumerOffsetRequestHeader(
                self.group, mq.topic, mq.queueId, False).to_ext()))
        if resp.code == ResponseCode.QUERY_NOT_FOUND:
            return None
        return int(check(resp, mq.brokerName).ext("offset") or 0)

    async def poll(self, max_messages: int = 32, timeout: float = 1.0) -> list[MessageExt]:
        """Messages from the next assigned queue that has some, waiting up to ``timeout``."""
        if not self._assigned:
            raise ValueError("assign queues first")
        with anyio.move_on_after(timeout):
            while True:
                for _ in range(len(self._assigned)):
                    mq = self._assigned[self._next % len(self._assigned)]
                    self._next += 1
                    offset = await self.position(mq)
                    _code, nxt, msgs = await pull(self.instance, self.group, mq, offset,
                                                 max_msgs=max_messages,
                                                 sub=self.filters.get(mq.topic))
                    self.positions[mq] = nxt
                    if msgs:
                        return msgs
                await anyio.sleep(0.02)
        return []

    async def commit(self, offsets: dict[B.MessageQueue, int] | None = None) -> None:
        """Store the group's offsets (default: the current positions) on the brokers."""
        for mq, off in (offsets or self.positions).items():
            check(await self.instance.broker_invoke(mq.brokerName, request(
                RequestCode.UPDATE_CONSUMER_OFFSET, 0, H.UpdateConsumerOffsetRequestHeader(
                    self.group, mq.topic, mq.queueId, off).to_ext())), mq.brokerName)


