"""Admin: topics, consumer groups and their lag, offset reset by time, message lookups, the cluster.

Every call goes through the NameServer (for routes and the broker list) to the
brokers concerned, as RocketMQ's mqadmin does; a broker address given as the
"NameServer" works for a single broker.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from typing import Any

from ..protocols import record as rec
from ..protocols.remoting import RequestCode, ResponseCode, request
from ..protocols.remoting import bodies as B
from ..protocols.remoting import headers as H
from ..protocols.remoting.codes import FerryRequestCode
from ..protocols.remoting.messages import MessageExt, decode_messages, parse_offset_msg_id
from .instance import ClientInstance, NoRouteError
from .remoting import DEFAULT_TIMEOUT, BrokerError, ClientError, check


@dataclass(frozen=True, slots=True)
class QueueStats:
    queue: B.MessageQueue
    min_offset: int
    max_offset: int
    last_update_ms: int


@dataclass(frozen=True, slots=True)
class QueueLag:
    queue: B.MessageQueue
    broker_offset: int
    consumer_offset: int  # -1: never committed

    @property
    def lag(self) -> int:
        return max(0, self.broker_offset - max(self.consumer_offset, 0))


class Admin:
    def __init__(self, namesrv: str | list[str], *, timeout: float = DEFAULT_TIMEOUT,
                 **instance_options: Any) -> None:
        self.instance = ClientInstance(namesrv, timeout=timeout, **instance_options)

    async def __aenter__(self) -> Admin:
        await self.instance.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.instance.__aexit__(None, None, None)

    # ------------------------------------------------------------ cluster

    async def cluster(self) -> B.ClusterInfo:
        resp = await self.instance.namesrv_invoke(request(RequestCode.GET_BROKER_CLUSTER_INFO, 0))
        return B.ClusterInfo.decode(check(resp, "NameServer").body)

    async def brokers(self) -> dict[str, str]:
        """Broker name -> master address, for every live broker."""
        info = await self.cluster()
        out = {n: b.master_addr for n, b in info.brokerAddrTable.items() if b.master_addr}
        self.instance.broker_addrs.update(out)
        return out

    async def broker_runtime(self, addr: str) -> dict[str, str]:
        resp = check(await self.instance.remoting.invoke(
            addr, request(RequestCode.GET_BROKER_RUNTIME_INFO, 0)), addr)
        table = B.loads(resp.body).get("table", {})
        return {str(k): str(v) for k, v in table.items()}

    # ------------------------------------------------------------ topics

    async def topics(self) -> list[str]:
        resp = await self.instance.namesrv_invoke(
            request(RequestCode.GET_ALL_TOPIC_LIST_FROM_NAMESERVER, 0))
        return B.decode_topic_list(check(resp, "NameServer").body)

    async def create_topic(self, topic: str, queues: int = 4, *, perm: int = 6,
                           order: bool = False, brokers: list[str] | None = None,
                           configs: dict[str, str] | None = None) -> list[str]:
        """Create (or grow) the topic with ``queues`` queues on each of ``brokers`` (names;
        default every broker), with topic ``configs`` (Kafka's names, RocketMQ 5's
        attributes on the wire). Returns the broker names."""
        all_brokers = await self.brokers()
        names = brokers or sorted(all_brokers)
        if not names:
            raise NoRouteError("no broker is registered with the NameServer")
        attributes = ",".join(f"+{k}={v}" for k, v in (configs or {}).items()) or None
        ext = H.CreateTopicRequestHeader(topic, readQueueNums=queues, writeQueueNums=queues,
                                         perm=perm, order=order, attributes=attributes).to_ext()
        for name in names:
            addr = all_brokers.get(name)
            if addr is None:
                raise NoRouteError(f"no live broker named {name}")
            check(await self.instance.remoting.invoke(
                addr, request(RequestCode.UPDATE_AND_CREATE_TOPIC, 0, ext)), addr)
        return names

    async def topic_config(self, topic: str) -> dict[str, Any]:
        """GET_TOPIC_CONFIG from the topic's first master: RocketMQ 5's TopicConfig with its
        attributes, and (FerryMQ) ``ferrymqConfigs``, every config with value and source."""
        route = await self.route(topic)
        for bd in route.brokerDatas:
            if bd.master_addr:
                resp = check(await self.instance.remoting.invoke(bd.master_addr, request(
                    RequestCode.GET_TOPIC_CONFIG, 0, {"topic": topic})), bd.master_addr)
                doc: dict[str, Any] = json.loads(resp.body)
                return doc
        raise NoRouteError(f"no master holds topic {topic}")

    async def alter_topic_configs(self, topic: str, set_configs: dict[str, str] | None = None,
                                  delete: list[str] | None = None) -> None:
        """Set and remove topic configs on every master holding the topic (its queues and
        permissions stay as they are)."""
        items = [f"+{k}={v}" for k, v in (set_configs or {}).items()] + \
            [f"-{k}" for k in delete or ()]
        route = await self.route(topic)
        for bd in route.brokerDatas:
            if not bd.master_addr:
                continue
            addr = bd.master_addr
            current = json.loads(check(await self.instance.remoting.invoke(addr, request(
                RequestCode.GET_TOPIC_CONFIG, 0, {"topic": topic})), addr).body)
            ext = H.CreateTopicRequestHeader(topic, readQueueNums=0, writeQueueNums=0,
                                             perm=int(current["perm"]),
                                             attributes=",".join(items)).to_ext()
            check(await self.instance.remoting.invoke(
                addr, request(RequestCode.UPDATE_AND_CREATE_TOPIC, 0, ext)), addr)

    async def route(self, topic: str) -> B.TopicRouteData:
        route = await self.instance.fetch_route(topic)
        if route is None:
            raise BrokerError(ResponseCode.TOPIC_NOT_EXIST, f"topic {topic} has no route")
        return route

    async def topic_stats(self, topic: str) -> list[QueueStats]:
        route = await self.route(topic)
        out = []
        for bd in route.brokerDatas:
            if not bd.master_addr:
                continue
            resp = check(await self.instance.remoting.invoke(bd.master_addr, request(
                RequestCode.GET_TOPIC_STATS_INFO, 0, {"topic": topic})), bd.master_addr)
            for mq, v in B.decode_queue_table(resp.body):
                out.append(QueueStats(mq, int(v.get("minOffset", 0)), int(v.get("maxOffset", 0)),
                                      int(v.get("lastUpdateTimestamp", 0))))
        return sorted(out, key=lambda s: (s.queue.brokerName, s.queue.queueId))

    async def delete_topic(self, topic: str) -> None:
        route = await self.route(topic)
        for bd in route.brokerDatas:
            if bd.master_addr:
                check(await self.instance.remoting.invoke(bd.master_addr, request(
                    RequestCode.DELETE_TOPIC_IN_BROKER, 0, {"topic": topic})), bd.master_addr)
        for ns in self.instance.namesrvs:
            with contextlib.suppress(ClientError):
                await self.instance.remoting.invoke(ns, request(
                    RequestCode.DELETE_TOPIC_IN_NAMESRV, 0, {"topic": topic}))
        self.instance.routes.pop(topic, None)

    # ------------------------------------------------------------ groups

    async def groups(self) -> list[dict[str, Any]]:
        merged: dict[str, dict[str, Any]] = {}
        for name, addr in sorted((await self.brokers()).items()):
            resp = check(await self.instance.remoting.invoke(addr, request(
                RequestCode.GET_ALL_SUBSCRIPTIONGROUP_CONFIG, 0)), addr)
            table = B.loads(resp.body).get("subscriptionGroupTable", {})
            for g, cfg in table.items():
                row = merged.setdefault(g, dict(cfg, brokers=[]))
                row["brokers"].append(name)
                row["online"] = bool(row.get("online")) or bool(cfg.get("online"))
        return [merged[g] for g in sorted(merged)]

    async def group_lag(self, group: str, topic: str | None = None) -> list[QueueLag]:
        out = []
        for _name, addr in sorted((await self.brokers()).items()):
            ext = {"consumerGroup": group}
            if topic:
                ext["topic"] = topic
            resp = await self.instance.remoting.invoke(addr, request(
                RequestCode.GET_CONSUME_STATS, 0, ext))
            if resp.code == ResponseCode.SUBSCRIPTION_GROUP_NOT_EXIST:
                continue
            for mq, v in B.decode_queue_table(check(resp, addr).body):
                out.append(QueueLag(mq, int(v.get("brokerOffset", 0)),
                                    int(v.get("consumerOffset", -1))))
        return sorted(out, key=lambda r: (r.queue.topic, r.queue.brokerName, r.queue.queueId))

    async def group_members(self, group: str) -> list[dict[str, Any]]:
        seen: dict[str, dict[str, Any]] = {}
        for _name, addr in sorted((await self.brokers()).items()):
            resp = await self.instance.remoting.invoke(addr, request(
                RequestCode.GET_CONSUMER_CONNECTION_LIST, 0, {"consumerGroup": group}))
            if resp.code != ResponseCode.SUCCESS:
                continue
            doc = B.loads(resp.body)
            for c in doc.get("connectionSet", []):
                seen[c.get("clientId", "")] = dict(c, messageModel=doc.get("messageModel"))
        return [seen[k] for k in sorted(seen)]

    async def reset_offsets_preview(self, group: str, topic: str, timestamp_ms: int
                                    ) -> list[tuple[B.MessageQueue, int, int]]:
        """(queue, current committed offset or -1, offset the reset would set)."""
        lags = {r.queue: r.consumer_offset for r in await self.group_lag(group, topic)}
        route = await self.route(topic)
        out = []
        for mq in B.queues_of(topic, route, write=False):
            resp = check(await self.instance.broker_invoke(mq.brokerName, request(
                RequestCode.SEARCH_OFFSET_BY_TIMESTAMP, 0, {
                    "topic": topic, "queueId": str(mq.queueId),
                    "timestamp": str(timestamp_ms)})), mq.brokerName)
            out.append((mq, lags.get(mq, -1), int(resp.ext("offset") or 0)))
        return out

    async def reset_offsets(self, group: str, topic: str, timestamp_ms: int
                            ) -> list[tuple[B.MessageQueue, int]]:
        """Move the group's offsets on every queue of ``topic`` to the first message stored
        at or after ``timestamp_ms``; online consumers are told to follow."""
        route = await self.route(topic)
        out: list[tuple[B.MessageQueue, int]] = []
        ext = H.ResetOffsetRequestHeader(topic, group, timestamp_ms, True).to_ext()
        for bd in route.brokerDatas:
            if bd.master_addr:
                resp = check(await self.instance.remoting.invoke(bd.master_addr, request(
                    RequestCode.INVOKE_BROKER_TO_RESET_OFFSET, 0, ext)), bd.master_addr)
                out.extend((mq, int(o)) for mq, o in B.decode_queue_table(resp.body))
        return out

    # ------------------------------------------------------------ messages

    async def message_by_id(self, msg_id: str) -> MessageExt | None:
        """A message by its id (client id or offset id), asking every broker."""
        brokers = await self.brokers()
        addrs = list(brokers.values())
        parsed = parse_offset_msg_id(msg_id)
        if parsed and parsed[0] in addrs:
            addrs.remove(parsed[0])
            addrs.insert(0, parsed[0])
        ext = {"offset": str(parsed[1] if parsed else -1), "msgId": msg_id}
        for addr in addrs:
            resp = await self.instance.remoting.invoke(addr, request(
                RequestCode.VIEW_MESSAGE_BY_ID, 0, ext))
            if resp.code == ResponseCode.SUCCESS and resp.body:
                try:
                    return decode_messages(resp.body)[0]
                except rec.RecordError:
                    continue
        return None

    async def messages_by_key(self, topic: str, key: str, limit: int = 32) -> list[MessageExt]:
        route = await self.route(topic)
        out: list[MessageExt] = []
        ext = H.QueryMessageRequestHeader(topic, key, limit, 0, 0).to_ext()
        for bd in route.brokerDatas:
            if not bd.master_addr:
                continue
            resp = await self.instance.remoting.invoke(bd.master_addr, request(
                RequestCode.QUERY_MESSAGE, 0, ext))
            if resp.code == ResponseCode.SUCCESS:
                out.extend(decode_messages(resp.body))
        return sorted(out, key=lambda m: m.store_timestamp)

    # ------------------------------------------------------------ dead letters (FerryMQ's requests)

    async def _broker_addrs(self, broker: str | None) -> list[tuple[str, str]]:
        brokers = await self.brokers()
        if broker is not None:
            if broker not in brokers:
                raise NoRouteError(f"no live broker named {broker}")
            return [(broker, brokers[broker])]
        return sorted(brokers.items())

    async def dead_letters(self, group: str, offset: int = 0, limit: int = 100, *,
                           broker: str | None = None) -> list[dict[str, Any]]:
        """The dead letters of ``group`` on every broker (or one), oldest first per
        broker: DLQ offset, message id, original topic and id, reconsume count, store
        time, whether resent; each row names its ``broker``."""
        out: list[dict[str, Any]] = []
        ext = H.DeadLettersRequestHeader(group, offset, limit).to_ext()
        for name, addr in await self._broker_addrs(broker):
            resp = check(await self.instance.remoting.invoke(addr, request(
                FerryRequestCode.LIST_DEAD_LETTERS, 0, ext)), addr)
            out.extend(dict(d, broker=name) for d in B.loads(resp.body).get("letters", []))
        return out

    async def dead_letter(self, group: str, ref: str | int, *, broker: str | None = None
                          ) -> tuple[dict[str, str], MessageExt] | None:
        """One dead letter by message id or DLQ offset: (its fields, the message), or None."""
        ext = {"group": group, **({"offset": str(ref)} if isinstance(ref, int)
                                  else {"msgId": ref})}
        for _name, addr in await self._broker_addrs(broker):
            resp = await self.instance.remoting.invoke(addr, request(
                FerryRequestCode.VIEW_DEAD_LETTER, 0, ext))
            if resp.code == ResponseCode.SUCCESS and resp.body:
                return dict(resp.ext_fields), decode_messages(resp.body)[0]  # type: ignore[arg-type]
            if resp.code != ResponseCode.QUERY_NOT_FOUND:
                check(resp, addr)
        return None

    async def resend_dead_letters(self, group: str, refs: list[str | int] | None = None, *,
                                  force: bool = False, broker: str | None = None
                                  ) -> list[dict[str, Any]]:
        """Put dead letters back into their original topics (every letter not resent
        yet when ``refs`` is None). A letter resent before is refused (BrokerError,
        INVALID_PARAMETER) unless ``force``. Returns what was resent, and where."""
        ext = H.ResendDeadLettersRequestHeader(
            group, ",".join(str(r) for r in refs) if refs else None, force).to_ext()
        out: list[dict[str, Any]] = []
        not_found: BrokerError | None = None
        for name, addr in await self._broker_addrs(broker):
            resp = await self.instance.remoting.invoke(addr, request(
                FerryRequestCode.RESEND_DEAD_LETTERS, 0, ext))
            if resp.code == ResponseCode.QUERY_NOT_FOUND:
                # named letters live on one broker: the others do not know them
                not_found = BrokerError(resp.code, resp.remark, addr)
                continue
            check(resp, addr)
            out.extend(dict(d, broker=name) for d in B.loads(resp.body).get("resent", []))
        if not out and not_found is not None:
            raise not_found
        return out

    async def transaction_stats(self, *, broker: str | None = None, limit: int = 100
                                ) -> list[dict[str, Any]]:
        """Per broker: transaction counters, open halves and discarded halves."""
        out = []
        for name, addr in await self._broker_addrs(broker):
            resp = check(await self.instance.remoting.invoke(addr, request(
                FerryRequestCode.GET_TRANSACTION_STATS, 0, {"limit": str(limit)})), addr)
            out.append(dict(B.loads(resp.body), broker=name))
        return out

    # ------------------------------------------------------------ timers (FerryMQ's requests)

    async def cancel_timer(self, msg_id: str, *, broker: str | None = None) -> dict[str, Any]:
        """Cancel the pending timer of a timed message by the id its send returned, on
        the broker that holds it (every broker is asked, or only ``broker``): its
        ``msgId``, ``timerOffset``, ``deliverMs`` and ``broker``. Raises BrokerError
        (QUERY_NOT_FOUND: no broker holds such a pending timer)."""
        return await cancel_timer(self.instance, msg_id, await self._broker_addrs(broker))

    async def timer_stats(self, *, broker: str | None = None, hours: int | None = None
                          ) -> list[dict[str, Any]]:
        """Per broker: timers pending, scheduled, delivered, cancelled; lateness; with
        ``hours``, the pending timers per hour of delivery time (``perHour`` from
        ``scheduleStartMs``, ``hours`` of them, then ``later``)."""
        ext = {"hours": str(hours)} if hours else {}
        out = []
        for name, addr in await self._broker_addrs(broker):
            resp = check(await self.instance.remoting.invoke(addr, request(
                FerryRequestCode.GET_TIMER_STATS, 0, ext)), addr)
            out.append(dict(B.loads(resp.body), broker=name))
        return out


async def cancel_timer(instance: ClientInstance, msg_id: str,
                       brokers: list[tuple[str, str]]) -> dict[str, Any]:
    """CANCEL_TIMER on each of ``brokers`` (name, address) until one holds the timer."""
    not_found: BrokerError | None = None
    for name, addr in brokers:
        resp = await instance.remoting.invoke(addr, request(
            FerryRequestCode.CANCEL_TIMER, 0, {"msgId": msg_id}))
        if resp.code == ResponseCode.QUERY_NOT_FOUND:
            not_found = BrokerError(resp.code, resp.remark, addr)
            continue
        check(resp, addr)
        ext = resp.ext_fields
        return {"msgId": str(ext.get("msgId", msg_id)),
                "timerOffset": int(str(ext.get("timerOffset", -1))),
                "deliverMs": int(str(ext.get("deliverMs", -1))), "broker": name}
    if not_found is None:
        raise NoRouteError("no live broker to ask")
    raise not_found
