"""The broker's remoting processor: each RocketMQ request code translated into Broker calls.

``Processor.handle(conn, cmd)`` returns the response (or None for a oneway
request, or when the request was suspended and will answer later). Every
code RocketMQ clients use for producing, consuming, client bookkeeping and
administration is here; any other code gets REQUEST_CODE_NOT_SUPPORTED. A
FerryError from the core becomes the RocketMQ response code that means the
same (``error_code``); a malformed header becomes SYSTEM_ERROR, as in
RocketMQ. See docs/remoting.md for the mapping and its reasons.

Issue 6's requests live in modules of their own, which install their handlers
here: transactions.py (END_TRANSACTION, the check-back), pop.py (the five pop
codes), deadletters.py (CONSUMER_SEND_MSG_BACK and FerryMQ's dead-letter
requests). They and this module share a ``RequestContext`` (context.py) and
import nothing of each other; the error table is errors.py, the record
building records.py.

Every Broker call carries the principal of the request's connection
(``RequestContext.principal``: anonymous, with the peer address, until
RocketMQ's ACL signature is checked).
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
import time
from collections.abc import Awaitable, Callable
from time import perf_counter
from typing import Any

import trio

from ...core.access import MECHANISM_SIGNATURE, SYSTEM, Principal, anonymous
from ...core.broker import Broker
from ...core.errors import FerryError
from ...core.filter import Filter, parse_filter
from ...core.message import PROPERTY_DOOR, GetStatus, Message, offset_message_id
from ...core.metadata import DLQ_PREFIX, PERM_READ_WRITE, RETRY_PREFIX
from ...core.metrics import DoorMetrics
from ...core.replication import Role
from ...core.tracing import Delivery
from ...protocols import record as rec
from ...protocols.remoting import (
    RemotingCommand,
    RequestCode,
    ResponseCode,
    encode,
    response_to,
    signature,
)
from ...protocols.remoting import bodies as B
from ...protocols.remoting import headers as H
from ...protocols.remoting.codes import (
    DEFAULT_TOPIC,
    PULL_FLAG_COMMIT_OFFSET,
    PULL_FLAG_SUBSCRIPTION,
    PULL_FLAG_SUSPEND,
    FerryRequestCode,
)
from ...protocols.remoting.frame import encode_send_ok
from . import topicattributes
from .client_table import ClientTable
from .context import Connection, Handler, RequestContext
from .deadletters import DeadLetterRequests
from .errors import ERROR_CODES, error_code
from .pop import PopRequests
from .records import batch_offset_ids, encode_message, host_bytes_of, unpack_native_batch
from .transactions import TransactionRequests

# Re-exported: the names tests and tools import from here.
__all__ = ["ERROR_CODES", "MAX_SUSPEND_S", "Handler", "Processor", "batch_offset_ids",
           "encode_message", "error_code", "host_bytes_of", "unpack_native_batch"]

log = logging.getLogger("ferrymq.remoting")
_OFFSET_ID = struct.Struct(">8sq")  # offsetMsgId: store host and CommitLog offset

MAX_SUSPEND_S = 30.0  # cap on a long poll (RocketMQ clients ask 15-20 s)
DEFAULT_MAX_PULL_BYTES = 4 << 20
MAX_PULL_MESSAGES = 1024
MAX_RECONSUME_TIMES = 16  # RocketMQ SubscriptionGroupConfig.retryMaxTimes default

async def _nothing() -> None:
    pass


_REQUEST_NAMES = {int(code): code.name.lower() for code in (*RequestCode, *FerryRequestCode)}


class Processor:
    def __init__(self, broker: Broker, *, broker_addr: str, client_table: ClientTable,
                 max_suspend_s: float = MAX_SUSPEND_S) -> None:
        self.broker = broker
        self.broker_addr = broker_addr
        self.clients = client_table
        self.register_now: Callable[[], Awaitable[None]] = _nothing
        # Which brokerId the consumer should pull from next (RocketMQ's
        # suggestWhichBrokerId), from (next offset, queue's max offset): 0, the master,
        # unless the door sets a broker group's rule (slave_read_enable).
        self.suggest_broker: Callable[[int, int], int] = lambda next_offset, max_offset: 0
        self.max_suspend_s = max_suspend_s
        self.metrics = DoorMetrics(broker.metrics, "rocketmq")
        self.store_host = rec.host_bytes(broker.config.store_host, broker.config.store_port)
        self.ctx = RequestContext(broker, client_table, store_host=self.store_host,
                                  max_suspend_s=max_suspend_s)
        self.counters = self.ctx.counters
        self.started = time.time()
        C = RequestCode
        self.handlers: dict[int, Handler] = {
            C.SEND_MESSAGE: self.send_message,
            C.SEND_MESSAGE_V2: self.send_message,
            C.SEND_BATCH_MESSAGE: self.send_message,
            C.PULL_MESSAGE: self.pull_message,
            C.QUERY_CONSUMER_OFFSET: self.query_consumer_offset,
            C.UPDATE_CONSUMER_OFFSET: self.update_consumer_offset,
            C.HEART_BEAT: self.heart_beat,
            C.UNREGISTER_CLIENT: self.unregister_client,
            C.GET_CONSUMER_LIST_BY_GROUP: self.get_consumer_list,
            C.LOCK_BATCH_MQ: self.lock_batch,
            C.UNLOCK_BATCH_MQ: self.unlock_batch,
            C.SEARCH_OFFSET_BY_TIMESTAMP: self.search_offset,
            C.GET_MAX_OFFSET: self.get_max_offset,
            C.GET_MIN_OFFSET: self.get_min_offset,
            C.GET_EARLIEST_MSG_STORETIME: self.get_earliest_store_time,
            C.VIEW_MESSAGE_BY_ID: self.view_message,
            C.QUERY_MESSAGE: self.query_message,
            C.UPDATE_AND_CREATE_TOPIC: self.create_topic,
            C.GET_TOPIC_CONFIG: self.topic_config,
            C.DELETE_TOPIC_IN_BROKER: self.delete_topic,
            C.GET_ALL_TOPIC_CONFIG: self.all_topic_config,
            C.GET_TOPIC_STATS_INFO: self.topic_stats,
            C.GET_CONSUME_STATS: self.consume_stats,
            C.GET_ALL_SUBSCRIPTIONGROUP_CONFIG: self.all_groups,
            C.UPDATE_AND_CREATE_SUBSCRIPTIONGROUP: self.create_group,
            C.DELETE_SUBSCRIPTIONGROUP: self.delete_group,
            C.GET_CONSUMER_CONNECTION_LIST: self.consumer_connections,
            C.INVOKE_BROKER_TO_RESET_OFFSET: self.reset_offset,
            C.GET_BROKER_RUNTIME_INFO: self.runtime_info,
            C.GET_ROUTEINFO_BY_TOPIC: self.route_info,
            C.GET_BROKER_CLUSTER_INFO: self.cluster_info,
            C.GET_ALL_TOPIC_LIST_FROM_NAMESERVER: self.topic_list,
            C.QUERY_TOPIC_CONSUME_BY_WHO: self.consumed_by,
        }
        # Issue 6's requests, one module each: transactions, pop, retry and dead letters.
        self.transactions = TransactionRequests(self.ctx)
        for part in (self.transactions, PopRequests(self.ctx), DeadLetterRequests(self.ctx)):
            part.install(self.handlers)

    # ================================================================ dispatch

    async def handle(self, conn: Connection, cmd: RemotingCommand
                     ) -> RemotingCommand | bytes | None:
        """The response (a command, or an already encoded frame on hot paths), or None
        (a oneway request, or a suspended one that answers later)."""
        handler = self.handlers.get(cmd.code)
        if handler is None:
            self.counters["unsupported"] += 1
            self.metrics.error("unknown", "request_code_not_supported")
            return response_to(cmd, ResponseCode.REQUEST_CODE_NOT_SUPPORTED,
                               remark=f"request type {cmd.code} not supported")
        name = _REQUEST_NAMES.get(cmd.code) or str(cmd.code)
        if self.broker.auth_enabled and not self._authenticate(conn, cmd):
            self.counters["bad_signature"] += 1
            self.metrics.error(name, "bad_signature")
            return response_to(cmd, ResponseCode.SYSTEM_ERROR,
                               remark="check signature failed: unknown AccessKey or a "
                                      "signature that does not match")
        t0 = perf_counter()
        try:
            resp = await handler(conn, cmd)
        except H.HeaderError as exc:
            self.counters["bad_header"] += 1
            self.metrics.error(name, "invalid_header")
            return response_to(cmd, exc.response_code, remark=str(exc))
        except B.BodyError as exc:
            self.counters["bad_body"] += 1
            self.metrics.error(name, "invalid_body")
            return response_to(cmd, ResponseCode.SYSTEM_ERROR, remark=str(exc))
        except FerryError as exc:
            self.metrics.error(name, exc.code)
            return response_to(cmd, error_code(exc), remark=exc.detail)
        self.metrics.observe(name, perf_counter() - t0)
        return resp

    def _authenticate(self, conn: Connection, cmd: RemotingCommand) -> bool:
        """``[auth] enabled``: the request's principal is its signature's user (RocketMQ's
        AccessKey + HMAC, protocols/remoting/signature.py), or anonymous when it is
        not signed. False: signed, but not by a known key."""
        fields = cmd.ext_fields
        peer = getattr(conn, "peer", None)
        ak = fields.get(signature.ACCESS_KEY)
        if ak is None and signature.SIGNATURE not in fields:
            who = self.ctx.principal(conn)
            if not who.anonymous:
                self.ctx.set_principal(conn, anonymous(peer))
            return True
        found = self.broker.access_secret(str(ak)) if ak is not None else None
        if found is None or not signature.verify(found[1], fields, cmd.body):
            return False
        who = self.ctx.principal(conn)
        if who.name != found[0] or who.anonymous:
            self.ctx.set_principal(conn, Principal(found[0], MECHANISM_SIGNATURE, peer))
        return True

    def connection_closed(self, conn: Connection) -> None:
        self.ctx.forget(conn)
        self.notify_changed(self.clients.connection_closed(conn))

    # ================================================================ producing

    async def send_message(self, conn: Connection, cmd: RemotingCommand
                           ) -> RemotingCommand | bytes:
        fast = (H.send_v2_fields(cmd.ext_fields) if cmd.code != RequestCode.SEND_MESSAGE
                else None)
        max_reconsume: int | None = None
        if fast is None:
            if cmd.code == RequestCode.SEND_MESSAGE:
                h = H.SendMessageRequestHeader.from_ext(cmd.ext_fields)
            else:
                h = H.SendMessageRequestHeader.from_ext_v2(cmd.ext_fields)
            _group, topic, qid, sys_flag, born_ts, flag, props_text, reconsume, batch = (
                h.producerGroup, h.topic, h.queueId, h.sysFlag, h.bornTimestamp, h.flag,
                h.properties, h.reconsumeTimes or 0, bool(h.batch))
            max_reconsume = h.maxReconsumeTimes
        else:
            _group, topic, qid, sys_flag, born_ts, flag, props_text, reconsume, batch = fast
        broker = self.broker
        who = self.ctx.principal(conn)
        t = broker.find_topic(topic, principal=who)
        if t is not None and qid >= t.queues:
            qid %= t.queues  # RocketMQ: queueIdInt % writeQueueNums
        born_host = conn.peer_bytes
        # The C++ client sends batches as SEND_MESSAGE with batch=true.
        if cmd.code == RequestCode.SEND_BATCH_MESSAGE or batch:
            result = await broker.put_encoded_batch(topic, qid, cmd.body, born_host,
                                                    principal=who)
            self.metrics.messages_in(topic, result.count)
            # The single send's answer, with every member's offset id (hex and commas:
            # nothing to escape), from the same template.
            return encode_send_ok(cmd, batch_offset_ids(result.store_host,
                                                        result.physical_offset, result.count),
                                  result.queue_id, result.queue_offset)
        # Stored as they came: the store reads TAGS, KEYS and UNIQ_KEY from the text.
        props = rec.EncodedProperties(_with_door(props_text.encode() if props_text else b""))
        if topic.startswith(RETRY_PREFIX):
            # A client re-sending a retry message itself (RocketMQ's send-back fallback):
            # past the maximum it goes to the dead-letter topic.
            if max_reconsume is None and cmd.code != RequestCode.SEND_MESSAGE:
                max_reconsume = H.SendMessageRequestHeader.from_ext_v2(
                    cmd.ext_fields).maxReconsumeTimes
            limit = max_reconsume if max_reconsume is not None else \
                self._max_reconsume(topic[len(RETRY_PREFIX):], who)
            if reconsume > limit:
                topic = DLQ_PREFIX + topic[len(RETRY_PREFIX):]
                await broker.create_topic(topic, 1, exist_ok=True, principal=who)
                qid = 0
        msg = Message(topic, cmd.body, props, qid, flag, born_ts, born_host, reconsume, sys_flag)
        result = await broker.put(msg, principal=who)  # an auto-created topic reaches the NameServer
        self.metrics.messages_in(topic)
        return encode_send_ok(                  # through Broker.watch_topics
            cmd, _OFFSET_ID.pack(result.store_host, result.physical_offset).hex().upper(),
            result.queue_id, result.queue_offset)

    # ================================================================ consuming

    def _filter_for(self, h: H.PullMessageRequestHeader) -> Filter | None:
        if h.sysFlag & PULL_FLAG_SUBSCRIPTION and h.subscription is not None:
            return parse_filter(h.subscription, h.expressionType or "TAG")
        sub = self.clients.subscription(h.consumerGroup, h.topic)
        if sub is None:
            return None
        return parse_filter(sub.subString, sub.expressionType)

    async def pull_message(self, conn: Connection, cmd: RemotingCommand
                           ) -> RemotingCommand | None:
        h = H.PullMessageRequestHeader.from_ext(cmd.ext_fields)
        filt = self._filter_for(h)
        broker = self.broker
        who = self.ctx.principal(conn)
        if h.sysFlag & PULL_FLAG_COMMIT_OFFSET and h.commitOffset > 0:
            # RocketMQ ignores a piggy-backed commit it cannot apply; so do we.
            with contextlib.suppress(FerryError):
                broker.commit_offset(h.consumerGroup, h.topic, h.queueId, h.commitOffset,
                                     principal=who)
        resp = self._pull_once(cmd, h, filt, who)
        timeout = min(h.suspendTimeoutMillis / 1000, self.max_suspend_s)
        if resp is not None or not h.sysFlag & PULL_FLAG_SUSPEND or timeout <= 0:
            return resp if resp is not None else self._not_found(cmd, h, who)
        try:
            conn.suspended.acquire_nowait()
        except trio.WouldBlock:
            self.counters["suspend_refused"] += 1
            return self._not_found(cmd, h, who)

        async def suspended() -> None:
            try:
                await broker.wait(h.topic, h.queueId, h.queueOffset, timeout, principal=who)
                try:
                    late = self._pull_once(cmd, h, filt, who) or self._not_found(cmd, h, who)
                except FerryError as exc:
                    late = response_to(cmd, error_code(exc), remark=exc.detail)
                await conn.send(encode(late))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
            finally:
                conn.suspended.release()

        self.counters["suspended"] += 1
        conn.spawn(suspended)
        return None

    def _not_found(self, cmd: RemotingCommand, h: H.PullMessageRequestHeader,
                   who: Principal) -> RemotingCommand:
        lo, hi = self.broker.queue_bounds(h.topic, h.queueId, principal=who)
        return response_to(cmd, ResponseCode.PULL_NOT_FOUND, H.PullMessageResponseHeader(
            self.suggest_broker(h.queueOffset, hi), h.queueOffset, lo, hi).to_ext())

    def _pull_once(self, cmd: RemotingCommand, h: H.PullMessageRequestHeader,
                   filt: Filter | None, who: Principal) -> RemotingCommand | None:
        """The response if there is something to say now; None to wait (no new message)."""
        max_msgs = max(1, min(h.maxMsgNums, MAX_PULL_MESSAGES))
        started = time.time_ns()
        r = self.broker.get(h.consumerGroup, h.topic, h.queueId, h.queueOffset, max_msgs,
                            h.maxMsgBytes or DEFAULT_MAX_PULL_BYTES, filt, principal=who)
        st = r.status
        if st is GetStatus.FOUND:
            self.metrics.messages_out(h.topic, r.message_count)
            tracer = self.broker.tracer
            if tracer is not None:  # the deliver span (core/tracing.py)
                tracer.delivered(Delivery("rocketmq", h.consumerGroup, h.topic, h.queueId,
                                          r.messages(h.queueOffset), started))
            parts: list[bytes] = []
            n = 0
            next_offset = r.next_offset
            for sr in r.records:
                if not sr.is_batch and (filt is None or sr.queue_offset >= h.queueOffset):
                    parts.append(sr.data)
                    n += 1
                elif sr.format == rec.FORMAT_NATIVE_BATCH and filt is None:
                    k, last = unpack_native_batch(sr.data, h.queueOffset, max_msgs - n, parts)
                    n += k
                    if n >= max_msgs:
                        next_offset = last + 1
                else:
                    long_ok = cmd.ext(rec.PULL_LONG_PROPERTIES) == "true"
                    for m in sr.messages(h.queueOffset):
                        parts.append(encode_message(m, long_ok))
                        n += 1
                        if n >= max_msgs:
                            next_offset = m.queue_offset + 1
                            break
                if n >= max_msgs:
                    break
            self.counters["pulled"] += n
            return response_to(cmd, ResponseCode.SUCCESS, H.PullMessageResponseHeader(
                self.suggest_broker(next_offset, r.max_offset), next_offset, r.min_offset,
                r.max_offset).to_ext(), b"".join(parts))
        ext = H.PullMessageResponseHeader(self.suggest_broker(r.next_offset, r.max_offset),
                                          r.next_offset, r.min_offset, r.max_offset).to_ext()
        if st is GetStatus.NO_MATCHED_MESSAGE:
            return response_to(cmd, ResponseCode.PULL_RETRY_IMMEDIATELY, ext)
        if st in (GetStatus.OFFSET_TOO_SMALL, GetStatus.OFFSET_OVERFLOW_BADLY):
            return response_to(cmd, ResponseCode.PULL_OFFSET_MOVED, ext)
        if st is GetStatus.NO_MESSAGE_IN_QUEUE and h.queueOffset != 0:
            return response_to(cmd, ResponseCode.PULL_OFFSET_MOVED, ext)
        return None  # NO_NEW_MESSAGE, OFFSET_OVERFLOW_ONE, empty queue at 0: wait

    async def query_consumer_offset(self, conn: Connection, cmd: RemotingCommand
                                    ) -> RemotingCommand:
        h = H.QueryConsumerOffsetRequestHeader.from_ext(cmd.ext_fields)
        who = self.ctx.principal(conn)
        off = self.broker.committed_offset(h.consumerGroup, h.topic, h.queueId, principal=who)
        if off is None:
            t = self.broker.find_topic(h.topic, principal=who)
            lo, hi = self.broker.queue_bounds(h.topic, h.queueId, principal=who) if t else (0, 0)
            # RocketMQ: a group without an offset on a queue that still holds its first
            # message starts at 0 (ConsumerManageProcessor), unless told not to.
            if h.setZeroIfNotFound is not False and lo == 0 and hi > 0:
                off = 0
            else:
                return response_to(cmd, ResponseCode.QUERY_NOT_FOUND,
                                   remark="Not found, maybe this group consumer boot first")
        return response_to(cmd, ResponseCode.SUCCESS, {"offset": str(off)})

    async def update_consumer_offset(self, conn: Connection, cmd: RemotingCommand
                                     ) -> RemotingCommand:
        h = H.UpdateConsumerOffsetRequestHeader.from_ext(cmd.ext_fields)
        self.broker.commit_offset(h.consumerGroup, h.topic, h.queueId, h.commitOffset,
                                  principal=self.ctx.principal(conn))
        await self.broker.wait_durable()  # acknowledged commits survive a crash (sync flush)
        return response_to(cmd, ResponseCode.SUCCESS)

    async def search_offset(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        h = H.SearchOffsetRequestHeader.from_ext(cmd.ext_fields)
        who = self.ctx.principal(conn)
        self.broker.queue_bounds(h.topic, h.queueId, principal=who)  # validates topic and queue
        off = self.broker.offset_for_time(h.topic, h.queueId, h.timestamp, principal=who)
        return response_to(cmd, ResponseCode.SUCCESS, {"offset": str(off)})

    async def get_max_offset(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        h = H.QueueHeader.from_ext(cmd.ext_fields)
        return response_to(cmd, ResponseCode.SUCCESS,
                           {"offset": str(self.broker.queue_bounds(
                               h.topic, h.queueId, principal=self.ctx.principal(conn))[1])})

    async def get_min_offset(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        h = H.QueueHeader.from_ext(cmd.ext_fields)
        return response_to(cmd, ResponseCode.SUCCESS,
                           {"offset": str(self.broker.queue_bounds(
                               h.topic, h.queueId, principal=self.ctx.principal(conn))[0])})

    async def get_earliest_store_time(self, conn: Connection, cmd: RemotingCommand
                                      ) -> RemotingCommand:
        h = H.QueueHeader.from_ext(cmd.ext_fields)
        who = self.ctx.principal(conn)
        lo, _hi = self.broker.queue_bounds(h.topic, h.queueId, principal=who)
        r = self.broker.get(None, h.topic, h.queueId, lo, 1, 1, principal=who)
        ts = r.records[0].store_timestamp if r.records else 0
        return response_to(cmd, ResponseCode.SUCCESS, {"timestamp": str(ts)})

    # ================================================================ clients

    def notify_changed(self, groups: set[str]) -> None:
        """Tell the online members of each group that its membership changed."""
        for g in groups:
            for c in self.clients.members(g):
                c.conn.send_request_soon(RequestCode.NOTIFY_CONSUMER_IDS_CHANGED,
                                         {"consumerGroup": g})

    async def heart_beat(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        hb = B.HeartbeatData.decode(cmd.body)
        if not hb.clientID:
            raise B.BodyError("heartbeat without clientID")
        created = False
        who = self.ctx.principal(conn)
        for c in hb.consumers:
            if not c.groupName:
                continue
            await self.broker.create_group(c.groupName, exist_ok=True, principal=who,
                                           broadcast=c.messageModel == "BROADCASTING")
            if c.messageModel != "BROADCASTING":
                # RocketMQ creates the group's retry topic on its first heartbeat, so
                # that consumers find a route for it.
                retry = RETRY_PREFIX + c.groupName
                if self.broker.find_topic(retry, principal=who) is None:
                    await self.broker.create_topic(retry, 1, exist_ok=True, principal=who)
                    created = True
        if created:
            # ... and registers it with the NameServers before answering
            # (createTopicInSendMessageBackMethod -> registerBrokerAll): the client
            # looks the retry topic up next, and one that finds no route consumes its
            # retries only after its next route refresh and rebalance (20-30 s).
            # Bounded below the clients' 3 s request timeout: a NameServer that does
            # not answer must not fail the heartbeat (the registrar retries anyway).
            with trio.move_on_after(2.0):
                await self.register_now()
        changed = self.clients.heartbeat(hb.clientID, conn, hb.producerGroups, hb.consumers,
                                         cmd.language, cmd.version)
        self.notify_changed(changed)
        return response_to(cmd, ResponseCode.SUCCESS)

    async def unregister_client(self, conn: Connection, cmd: RemotingCommand
                                ) -> RemotingCommand:
        h = H.UnregisterClientRequestHeader.from_ext(cmd.ext_fields)
        self.notify_changed(self.clients.unregister(h.clientID, h.producerGroup,
                                                     h.consumerGroup))
        return response_to(cmd, ResponseCode.SUCCESS)

    async def get_consumer_list(self, conn: Connection, cmd: RemotingCommand
                                ) -> RemotingCommand:
        h = H.ConsumerGroupHeader.from_ext(cmd.ext_fields)
        ids = [c.client_id for c in self.clients.members(h.consumerGroup)]
        if not ids:
            return response_to(cmd, ResponseCode.SYSTEM_ERROR,
                               remark=f"no consumer of group {h.consumerGroup} is online")
        return response_to(cmd, ResponseCode.SUCCESS, body=B.encode_consumer_ids(ids))

    async def lock_batch(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        body = B.LockBatchRequestBody.decode(cmd.body)
        ok = self.clients.lock(body.consumerGroup, body.clientId, body.mqSet)
        return response_to(cmd, ResponseCode.SUCCESS, body=B.encode_lock_ok(ok))

    async def unlock_batch(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        body = B.LockBatchRequestBody.decode(cmd.body)
        self.clients.unlock(body.consumerGroup, body.clientId, body.mqSet)
        return response_to(cmd, ResponseCode.SUCCESS)

    def _max_reconsume(self, group: str, who: Principal) -> int:
        g = self.broker.find_group(group, principal=who)
        return g.max_reconsume_times if g else MAX_RECONSUME_TIMES

    # ================================================================ lookups

    async def view_message(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        h = H.ViewMessageByIdRequestHeader.from_ext(cmd.ext_fields)
        who = self.ctx.principal(conn)
        m = self.broker.message_by_id(h.msgId, principal=who) if h.msgId else None
        if m is None:
            m = self.broker.message_by_id(offset_message_id(self.store_host, h.offset),
                                          principal=who)
        if m is None:
            return response_to(cmd, ResponseCode.SYSTEM_ERROR,
                               remark=f"no message with id {h.msgId or h.offset}")
        return response_to(cmd, ResponseCode.SUCCESS, body=encode_message(m))

    async def query_message(self, conn: Connection, cmd: RemotingCommand
                            ) -> RemotingCommand:
        h = H.QueryMessageRequestHeader.from_ext(cmd.ext_fields)
        found = self.broker.messages_by_key(h.topic, h.key, max(1, min(h.maxNum, 64)),
                                            principal=self.ctx.principal(conn))
        if h.endTimestamp:
            found = [m for m in found if h.beginTimestamp <= m.store_timestamp <= h.endTimestamp]
        if not found:
            return response_to(cmd, ResponseCode.QUERY_NOT_FOUND,
                               remark=f"no message with key {h.key}")
        return response_to(cmd, ResponseCode.SUCCESS, H.QueryMessageResponseHeader(
            max(m.store_timestamp for m in found), 0).to_ext(),
            b"".join(encode_message(m) for m in found))

    # ================================================================ admin

    async def create_topic(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        h = H.CreateTopicRequestHeader.from_ext(cmd.ext_fields)
        queues = max(h.readQueueNums, h.writeQueueNums)
        who = self.ctx.principal(conn)
        message_type, ops = topicattributes.parse(h.attributes)  # RocketMQ 5's attributes
        t = self.broker.find_topic(h.topic, principal=who)
        if t is None:
            await self.broker.create_topic(
                h.topic, queues, perm=h.perm & PERM_READ_WRITE,
                message_type=message_type or ("FIFO" if h.order else "NORMAL"),
                attributes=topicattributes.created_attributes(ops), principal=who)
        else:
            if ops:
                await self.broker.alter_topic_configs(h.topic, ops, validate_only=True,
                                                      principal=who)
            await self.broker.update_topic(h.topic, queues=max(queues, t.queues),
                                           perm=h.perm & PERM_READ_WRITE,
                                           message_type=message_type, principal=who)
            if ops:
                await self.broker.alter_topic_configs(h.topic, ops, principal=who)
        await self.register_now()
        return response_to(cmd, ResponseCode.SUCCESS)

    async def topic_config(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        """GET_TOPIC_CONFIG (RocketMQ 5): the topic's config and attributes."""
        h = H.TopicHeader.from_ext(cmd.ext_fields)
        who = self.ctx.principal(conn)
        t = self.broker.topic(h.topic, principal=who)
        entries = self.broker.describe_topic_configs(h.topic, principal=who)
        return response_to(cmd, ResponseCode.SUCCESS,
                           body=topicattributes.topic_config_body(t, entries))

    async def delete_topic(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        h = H.TopicHeader.from_ext(cmd.ext_fields)
        await self.broker.delete_topic(h.topic, principal=self.ctx.principal(conn))
        await self.register_now()
        return response_to(cmd, ResponseCode.SUCCESS)

    def topic_configs(self, principal: Principal = SYSTEM) -> list[B.TopicConfigData]:
        """The topics as RocketMQ's route data knows them: what the door registers with
        the NameServer (as the broker itself) and answers route queries with."""
        out = [B.TopicConfigData(t.name, t.queues, t.queues, t.perm, t.message_type == "FIFO")
               for t in self.broker.topics(principal=principal)]
        if self.broker.config.auto_create_topics \
                and self.broker.find_topic(DEFAULT_TOPIC, principal=principal) is None:
            # RocketMQ's autoCreateTopicEnable: the default topic's route tells clients
            # which brokers create unknown topics on first send.
            q = self.broker.config.default_queues
            out.append(B.TopicConfigData(DEFAULT_TOPIC, q, q, 7))
        return out

    async def all_topic_config(self, conn: Connection, cmd: RemotingCommand
                               ) -> RemotingCommand:
        return response_to(cmd, ResponseCode.SUCCESS, body=B.RegisterBrokerBody(
            tuple(self.topic_configs(self.ctx.principal(conn)))).encode())

    def _mq(self, topic: str, qid: int) -> B.MessageQueue:
        return B.MessageQueue(topic, self.broker.config.broker_name, qid)

    async def topic_stats(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        h = H.TopicHeader.from_ext(cmd.ext_fields)
        who = self.ctx.principal(conn)
        st = self.broker.topic_stats(h.topic, principal=who)
        rows = []
        for qid, lo, hi in st.queues:
            last = 0
            if hi > lo:
                r = self.broker.get(None, h.topic, qid, hi - 1, 1, 1, principal=who)
                last = r.records[-1].store_timestamp if r.records else 0
            rows.append((self._mq(h.topic, qid),
                         {"lastUpdateTimestamp": last, "maxOffset": hi, "minOffset": lo}))
        return response_to(cmd, ResponseCode.SUCCESS, body=B.encode_queue_table(rows))

    async def consume_stats(self, conn: Connection, cmd: RemotingCommand
                            ) -> RemotingCommand:
        h = H.GetConsumeStatsRequestHeader.from_ext(cmd.ext_fields)
        who = self.ctx.principal(conn)
        self.broker.group(h.consumerGroup, principal=who)
        rows = []
        for gs in self.broker.group_stats(h.consumerGroup, h.topic or None, principal=who):
            for q in gs.queues:
                rows.append((self._mq(gs.topic, q.queue_id),
                             {"brokerOffset": q.max_offset,
                              "consumerOffset": -1 if q.committed is None else q.committed,
                              "lastTimestamp": 0}))
        return response_to(cmd, ResponseCode.SUCCESS,
                           body=B.encode_queue_table(rows, consumeTps=0.0))

    async def all_groups(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        table = {g.name: {"groupName": g.name, "consumeEnable": g.consume_enable,
                          "consumeBroadcastEnable": g.broadcast,
                          "retryMaxTimes": g.max_reconsume_times,
                          "retryQueueNums": g.retry_queues,
                          "online": bool(self.clients.members(g.name))}
                 for g in self.broker.groups(principal=self.ctx.principal(conn))}
        return response_to(cmd, ResponseCode.SUCCESS, body=B.dumps({
            "dataVersion": {"counter": 0, "timestamp": 0}, "subscriptionGroupTable": table}))

    async def create_group(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        d = B.loads(cmd.body) if cmd.body else {}
        if not isinstance(d, dict) or not d.get("groupName"):
            raise B.BodyError("subscription group config without groupName")
        name = str(d["groupName"])
        settings: dict[str, Any] = {}
        if "retryMaxTimes" in d:
            settings["max_reconsume_times"] = int(d["retryMaxTimes"])
        if "consumeBroadcastEnable" in d:
            settings["broadcast"] = bool(d["consumeBroadcastEnable"])
        who = self.ctx.principal(conn)
        if self.broker.find_group(name, principal=who) is not None:
            await self.broker.update_group(name, principal=who, **settings)
        else:
            await self.broker.create_group(name, principal=who, **settings)
        return response_to(cmd, ResponseCode.SUCCESS)

    async def delete_group(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        h = H.DeleteSubscriptionGroupRequestHeader.from_ext(cmd.ext_fields)
        await self.broker.delete_group(h.groupName, principal=self.ctx.principal(conn))
        return response_to(cmd, ResponseCode.SUCCESS)

    async def consumer_connections(self, conn: Connection, cmd: RemotingCommand
                                   ) -> RemotingCommand:
        h = H.ConsumerGroupHeader.from_ext(cmd.ext_fields)
        members = self.clients.members(h.consumerGroup)
        if not members:
            return response_to(cmd, ResponseCode.CONSUMER_NOT_ONLINE,
                               remark=f"no consumer of group {h.consumerGroup} is online")
        cd = members[0].consumers[h.consumerGroup]
        return response_to(cmd, ResponseCode.SUCCESS, body=B.dumps({
            "connectionSet": [{"clientAddr": c.conn.peer, "clientId": c.client_id,
                               "language": c.language, "version": c.version}
                              for c in members],
            "consumeFromWhere": cd.consumeFromWhere, "consumeType": cd.consumeType,
            "messageModel": cd.messageModel,
            "subscriptionTable": {s.topic: s.to_json() for s in cd.subscriptionDataSet}}))

    async def reset_offset(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        """Move the group's offsets on every queue of the topic to the first message
        stored at or after the timestamp (-1: the end), and tell online members."""
        h = H.ResetOffsetRequestHeader.from_ext(cmd.ext_fields)
        who = self.ctx.principal(conn)
        t = self.broker.topic(h.topic, principal=who)
        rows = []
        for qid in range(t.queues):
            lo, hi = self.broker.queue_bounds(h.topic, qid, principal=who)
            off = hi if h.timestamp < 0 else max(lo, self.broker.offset_for_time(
                h.topic, qid, h.timestamp, principal=who))
            self.broker.commit_offset(h.group, h.topic, qid, off, principal=who)
            rows.append((self._mq(h.topic, qid), off))
        body = B.encode_queue_table(rows)
        for c in self.clients.members(h.group):
            c.conn.send_request_soon(RequestCode.RESET_CONSUMER_CLIENT_OFFSET, {
                "topic": h.topic, "group": h.group, "timestamp": str(h.timestamp),
                "isForce": "true"}, body)
        await self.broker.flush_offsets()
        return response_to(cmd, ResponseCode.SUCCESS, body=body)

    async def runtime_info(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        st = self.broker.broker_stats(principal=self.ctx.principal(conn))
        table = {"brokerVersionDesc": "FerryMQ", "bootTimestamp": str(st.started_at),
                 "msgPutTotalTodayNow": str(st.messages_in),
                 "commitLogMaxOffset": str(st.commitlog_max_offset),
                 "topics": str(st.topics), "groups": str(st.groups),
                 "clients": str(len(self.clients.clients))}
        pos = self.broker.replication_position()
        if pos.role is not Role.STANDALONE:  # a broker group's member (``cluster list``)
            table.update({"replicationRole": pos.role.value, "replicationEpoch": str(pos.epoch),
                          "commitLogConfirmOffset": str(pos.confirm),
                          "replicas": json.dumps([
                              {"node": r.node, "acked": r.acked, "connected": r.connected,
                               "in_sync": r.in_sync, "lag_bytes": r.lag_bytes}
                              for r in self.broker.replica_status()])})
        return response_to(cmd, ResponseCode.SUCCESS, body=B.dumps({"table": table}))

    # A broker answers the NameServer's route queries for itself, so that a client
    # pointed straight at a broker (no NameServer) still finds its way.

    def own_broker_data(self) -> B.BrokerData:
        c = self.broker.config
        return B.BrokerData(c.cluster_name, c.broker_name, {0: self.broker_addr})

    async def route_info(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        h = H.TopicHeader.from_ext(cmd.ext_fields)
        for tc in self.topic_configs(self.ctx.principal(conn)):
            if tc.topicName == h.topic:
                route = B.TopicRouteData(
                    (B.QueueData(self.broker.config.broker_name, tc.readQueueNums,
                                 tc.writeQueueNums, tc.perm),), (self.own_broker_data(),))
                return response_to(cmd, ResponseCode.SUCCESS, body=route.encode())
        return response_to(cmd, ResponseCode.TOPIC_NOT_EXIST,
                           remark=f"No topic route info in name server for the topic: {h.topic}")

    async def cluster_info(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        bd = self.own_broker_data()
        return response_to(cmd, ResponseCode.SUCCESS, body=B.ClusterInfo(
            {bd.brokerName: bd}, {bd.cluster: (bd.brokerName,)}).encode())

    async def topic_list(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        return response_to(cmd, ResponseCode.SUCCESS, body=B.encode_topic_list(
            (t.name for t in self.broker.topics(principal=self.ctx.principal(conn))), self.broker_addr))

    async def consumed_by(self, conn: Connection, cmd: RemotingCommand) -> RemotingCommand:
        h = H.TopicHeader.from_ext(cmd.ext_fields)
        groups = self.broker.consuming_groups(h.topic, principal=self.ctx.principal(conn))
        return response_to(cmd, ResponseCode.SUCCESS, body=B.dumps({"groupList": groups}))


_DOOR_PROPERTY = f"{PROPERTY_DOOR}\x01remoting\x02".encode()


def _with_door(raw: bytes) -> bytes:
    """A message's encoded properties with the door it came in by appended: decoded, the
    last value of a name wins, so a client's own FERRY_DOOR never stands."""
    if raw and not raw.endswith(b"\x02"):
        raw += b"\x02"
    return raw + _DOOR_PROPERTY
