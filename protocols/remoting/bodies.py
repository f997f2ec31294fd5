"""JSON bodies of remoting commands: route data, cluster info, heartbeats, locks, admin tables.

RocketMQ writes these with fastjson, which emits maps with non-string keys
unquoted (``"brokerAddrs":{0:"10.0.0.1:10911"}``) and maps keyed by objects.
FerryMQ emits standard JSON (integer keys as strings; object-keyed tables as
lists of ``[key, value]`` pairs, see docs/remoting.md) and reads either
spelling of integer keys. Parsers ignore unknown fields and fill missing ones
with RocketMQ's defaults; ``BodyError`` says a body cannot be understood.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .. import boundedjson
from ..errors import RemoteProtocolError
from .codes import MASTER_ID, PERM_READ, PERM_WRITE
from .frame import DEFAULT_MAX_FRAME, RemotingProtocolError


class BodyError(RemoteProtocolError, ValueError):
    """A body is not the JSON document the command carries."""


class BodyLimitError(RemotingProtocolError):
    """A JSON body past the size, nesting or container limits (``BODY_JSON_LIMITS``).

    Not a ``BodyError``: a malformed body is answered and the connection kept, but a
    body built to exhaust the decoder is a protocol error: answered, then closed."""


# Route data and registrations nest five deep (topicConfigSerializeWrapper >
# topicConfigTable > topic > attributes); 32 leaves room for any client's extras.
# 200,000 containers: a registration of 50,000 topics, a heartbeat of tens of
# thousands of subscriptions (docs/remoting.md, "Limits").
BODY_JSON_LIMITS = boundedjson.JsonLimits(max_bytes=DEFAULT_MAX_FRAME, max_depth=32,
                                          max_containers=200_000)

_BARE_INT_KEY = re.compile(rb'([{,]\s*)(-?\d+)(\s*:)')


def loads(raw: bytes | str, limits: boundedjson.JsonLimits = BODY_JSON_LIMITS) -> Any:
    """Parse a body as JSON, accepting fastjson's unquoted integer map keys. Raises
    BodyError (not JSON) or BodyLimitError (past ``limits``)."""
    data = raw.encode() if isinstance(raw, str) else bytes(raw)
    try:
        return boundedjson.loads(data, limits)
    except boundedjson.JsonLimitError as exc:
        raise BodyLimitError(f"body refused: {exc}") from None
    except ValueError:
        pass
    try:
        return boundedjson.loads(_BARE_INT_KEY.sub(rb'\1"\2"\3', data), limits)
    except boundedjson.JsonLimitError as exc:
        raise BodyLimitError(f"body refused: {exc}") from None
    except ValueError as exc:
        raise BodyError(f"body is not JSON: {exc}") from None


def dumps(doc: Any) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def _obj(doc: Any, what: str) -> Mapping[str, Any]:
    if not isinstance(doc, Mapping):
        raise BodyError(f"{what} is not a JSON object")
    return doc


def _list(v: Any) -> list[Any]:
    return list(v) if isinstance(v, list | tuple) else []


def _int(v: Any, default: int = 0) -> int:
    try:
        return int(v)
    except (TypeError, ValueError):
        return default


def _bool(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1")
    return bool(v)


# ------------------------------------------------------------------ routes


@dataclass(frozen=True, slots=True)
class MessageQueue:
    """RocketMQ MessageQueue: one queue of a topic on one broker."""

    topic: str
    brokerName: str
    queueId: int

    def to_json(self) -> dict[str, Any]:
        return {"brokerName": self.brokerName, "queueId": self.queueId, "topic": self.topic}

    @classmethod
    def from_json(cls, d: Any) -> MessageQueue:
        d = _obj(d, "message queue")
        return cls(str(d.get("topic", "")), str(d.get("brokerName", "")), _int(d.get("queueId")))


@dataclass(frozen=True, slots=True)
class QueueData:
    brokerName: str
    readQueueNums: int
    writeQueueNums: int
    perm: int = PERM_READ | PERM_WRITE
    topicSysFlag: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"brokerName": self.brokerName, "perm": self.perm,
                "readQueueNums": self.readQueueNums, "topicSysFlag": self.topicSysFlag,
                "writeQueueNums": self.writeQueueNums}

    @classmethod
    def from_json(cls, d: Any) -> QueueData:
        d = _obj(d, "queue data")
        return cls(str(d.get("brokerName", "")), _int(d.get("readQueueNums")),
                   _int(d.get("writeQueueNums")), _int(d.get("perm"), 6),
                   _int(d.get("topicSysFlag")))


@dataclass(frozen=True, slots=True)
class BrokerData:
    cluster: str
    brokerName: str
    brokerAddrs: Mapping[int, str]

    @property
    def master_addr(self) -> str | None:
        return self.brokerAddrs.get(MASTER_ID)

    def to_json(self) -> dict[str, Any]:
        return {"brokerAddrs": {str(k): v for k, v in sorted(self.brokerAddrs.items())},
                "brokerName": self.brokerName, "cluster": self.cluster,
                "enableActingMaster": False}

    @classmethod
    def from_json(cls, d: Any) -> BrokerData:
        d = _obj(d, "broker data")
        addrs = d.get("brokerAddrs") or {}
        return cls(str(d.get("cluster", "")), str(d.get("brokerName", "")),
                   {_int(k): str(v) for k, v in _obj(addrs, "brokerAddrs").items()})


@dataclass(frozen=True, slots=True)
class TopicRouteData:
    """GET_ROUTEINFO_BY_TOPIC's body: which brokers hold how many queues of a topic."""

    queueDatas: tuple[QueueData, ...]
    brokerDatas: tuple[BrokerData, ...]
    orderTopicConf: str | None = None

    def to_json(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "brokerDatas": [b.to_json() for b in self.brokerDatas],
            "filterServerTable": {},
            "queueDatas": [q.to_json() for q in self.queueDatas]}
        if self.orderTopicConf:
            d["orderTopicConf"] = self.orderTopicConf
        return d

    def encode(self) -> bytes:
        return dumps(self.to_json())

    @classmethod
    def decode(cls, raw: bytes) -> TopicRouteData:
        d = _obj(loads(raw), "route data")
        return cls(tuple(QueueData.from_json(q) for q in _list(d.get("queueDatas"))),
                   tuple(BrokerData.from_json(b) for b in _list(d.get("brokerDatas"))),
                   d.get("orderTopicConf"))

    def broker_addr(self, broker_name: str) -> str | None:
        for b in self.brokerDatas:
            if b.brokerName == broker_name:
                return b.master_addr
        return None


def queues_of(topic: str, route: TopicRouteData, *, write: bool) -> list[MessageQueue]:
    """The topic's queues by broker name then queue id, as RocketMQ's clients list them
    (``topicRouteData2TopicPublishInfo`` / ``topicRouteData2TopicSubscribeInfo``):
    only brokers with a master address and the needed permission."""
    masters = {b.brokerName for b in route.brokerDatas if b.master_addr}
    out: list[MessageQueue] = []
    for q in sorted(route.queueDatas, key=lambda q: q.brokerName):
        if q.brokerName not in masters:
            continue
        if write and not q.perm & PERM_WRITE:
            continue
        if not write and not q.perm & PERM_READ:
            continue
        n = q.writeQueueNums if write else q.readQueueNums
        out.extend(MessageQueue(topic, q.brokerName, i) for i in range(n))
    return out


@dataclass(frozen=True, slots=True)
class ClusterInfo:
    """GET_BROKER_CLUSTER_INFO's body."""

    brokerAddrTable: Mapping[str, BrokerData]
    clusterAddrTable: Mapping[str, tuple[str, ...]]

    def encode(self) -> bytes:
        return dumps({
            "brokerAddrTable": {k: v.to_json() for k, v in sorted(self.brokerAddrTable.items())},
            "clusterAddrTable": {k: sorted(v) for k, v in sorted(self.clusterAddrTable.items())}})

    @classmethod
    def decode(cls, raw: bytes) -> ClusterInfo:
        d = _obj(loads(raw), "cluster info")
        return cls({str(k): BrokerData.from_json(v)
                    for k, v in _obj(d.get("brokerAddrTable") or {}, "brokerAddrTable").items()},
                   {str(k): tuple(str(x) for x in _list(v))
                    for k, v in _obj(d.get("clusterAddrTable") or {},
                                     "clusterAddrTable").items()})


# ------------------------------------------------------------------ broker registration


@dataclass(frozen=True, slots=True)
class TopicConfigData:
    """One entry of TopicConfigSerializeWrapper.topicConfigTable."""

    topicName: str
    readQueueNums: int
    writeQueueNums: int
    perm: int = PERM_READ | PERM_WRITE
    order: bool = False
    topicSysFlag: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"order": self.order, "perm": self.perm, "readQueueNums": self.readQueueNums,
                "topicFilterType": "SINGLE_TAG", "topicName": self.topicName,
                "topicSysFlag": self.topicSysFlag, "writeQueueNums": self.writeQueueNums}

    @classmethod
    def from_json(cls, d: Any) -> TopicConfigData:
        d = _obj(d, "topic config")
        return cls(str(d.get("topicName", "")), _int(d.get("readQueueNums"), 4),
                   _int(d.get("writeQueueNums"), 4), _int(d.get("perm"), 6),
                   _bool(d.get("order", False)), _int(d.get("topicSysFlag")))


@dataclass(frozen=True, slots=True)
class RegisterBrokerBody:
    """REGISTER_BROKER's body (uncompressed form): the broker's topics and data version."""

    topics: tuple[TopicConfigData, ...]
    data_version: int = 0

    def encode(self) -> bytes:
        return dumps({"filterServerList": [], "topicConfigSerializeWrapper": {
            "dataVersion": {"counter": self.data_version, "timestamp": 0},
            "topicConfigTable": {t.topicName: t.to_json() for t in self.topics}}})

    @classmethod
    def decode(cls, raw: bytes) -> RegisterBrokerBody:
        if not raw:
            return cls(())
        d = _obj(loads(raw), "register body")
        w = _obj(d.get("topicConfigSerializeWrapper") or {}, "topicConfigSerializeWrapper")
        table = _obj(w.get("topicConfigTable") or {}, "topicConfigTable")
        dv = w.get("dataVersion") or {}
        return cls(tuple(TopicConfigData.from_json(v) for v in table.values()),
                   _int(dv.get("counter")) if isinstance(dv, Mapping) else 0)


def encode_topic_list(topics: Iterable[str], broker_addr: str | None = None) -> bytes:
    """TopicList: GET_ALL_TOPIC_LIST_FROM_NAMESERVER and GET_TOPICS_BY_CLUSTER."""
    d: dict[str, Any] = {"topicList": sorted(set(topics))}
    if broker_addr:
        d["brokerAddr"] = broker_addr
    return dumps(d)


def decode_topic_list(raw: bytes) -> list[str]:
    d = _obj(loads(raw), "topic list")
    return [str(t) for t in _list(d.get("topicList"))]


# ------------------------------------------------------------------ clients


@dataclass(frozen=True, slots=True)
class SubscriptionData:
    topic: str
    subString: str = "*"
    expressionType: str = "TAG"
    tagsSet: tuple[str, ...] = ()
    codeSet: tuple[int, ...] = ()
    subVersion: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"classFilterMode": False, "codeSet": list(self.codeSet),
                "expressionType": self.expressionType, "subString": self.subString,
                "subVersion": self.subVersion, "tagsSet": list(self.tagsSet),
                "topic": self.topic}

    @classmethod
    def from_json(cls, d: Any) -> SubscriptionData:
        d = _obj(d, "subscription")
        return cls(str(d.get("topic", "")), str(d.get("subString") or "*"),
                   str(d.get("expressionType") or "TAG"),
                   tuple(str(t) for t in _list(d.get("tagsSet"))),
                   tuple(_int(c) for c in _list(d.get("codeSet"))), _int(d.get("subVersion")))


@dataclass(frozen=True, slots=True)
class ConsumerData:
    groupName: str
    consumeType: str = "CONSUME_PASSIVELY"  # PUSH; CONSUME_ACTIVELY = PULL
    messageModel: str = "CLUSTERING"  # or BROADCASTING
    consumeFromWhere: str = "CONSUME_FROM_LAST_OFFSET"
    subscriptionDataSet: tuple[SubscriptionData, ...] = ()
    unitMode: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"consumeFromWhere": self.consumeFromWhere, "consumeType": self.consumeType,
                "groupName": self.groupName, "messageModel": self.messageModel,
                "subscriptionDataSet": [s.to_json() for s in self.subscriptionDataSet],
                "unitMode": self.unitMode}

    @classmethod
    def from_json(cls, d: Any) -> ConsumerData:
        d = _obj(d, "consumer data")
        return cls(str(d.get("groupName", "")), str(d.get("consumeType") or "CONSUME_PASSIVELY"),
                   str(d.get("messageModel") or "CLUSTERING"),
                   str(d.get("consumeFromWhere") or "CONSUME_FROM_LAST_OFFSET"),
                   tuple(SubscriptionData.from_json(s)
                         for s in _list(d.get("subscriptionDataSet"))),
                   _bool(d.get("unitMode", False)))


@dataclass(frozen=True, slots=True)
class HeartbeatData:
    """HEART_BEAT's body: the client's producer groups and consumer groups."""

    clientID: str
    producerGroups: tuple[str, ...] = ()
    consumers: tuple[ConsumerData, ...] = ()

    def encode(self) -> bytes:
        return dumps({"clientID": self.clientID,
                      "consumerDataSet": [c.to_json() for c in self.consumers],
                      "producerDataSet": [{"groupName": g} for g in self.producerGroups]})

    @classmethod
    def decode(cls, raw: bytes) -> HeartbeatData:
        d = _obj(loads(raw), "heartbeat")
        producers = tuple(str(_obj(p, "producer data").get("groupName", ""))
                          for p in _list(d.get("producerDataSet")))
        return cls(str(d.get("clientID", "")), producers,
                   tuple(ConsumerData.from_json(c) for c in _list(d.get("consumerDataSet"))))


@dataclass(frozen=True, slots=True)
class LockBatchRequestBody:
    consumerGroup: str
    clientId: str
    mqSet: tuple[MessageQueue, ...] = field(default_factory=tuple)

    def encode(self) -> bytes:
        return dumps({"clientId": self.clientId, "consumerGroup": self.consumerGroup,
                      "mqSet": [q.to_json() for q in self.mqSet], "onlyThisBroker": False})

    @classmethod
    def decode(cls, raw: bytes) -> LockBatchRequestBody:
        d = _obj(loads(raw), "lock request")
        return cls(str(d.get("consumerGroup", "")), str(d.get("clientId", "")),
                   tuple(MessageQueue.from_json(q) for q in _list(d.get("mqSet"))))


def encode_lock_ok(queues: Iterable[MessageQueue]) -> bytes:
    """LockBatchResponseBody."""
    return dumps({"lockOKMQSet": [q.to_json() for q in queues]})


def decode_lock_ok(raw: bytes) -> list[MessageQueue]:
    d = _obj(loads(raw), "lock response")
    return [MessageQueue.from_json(q) for q in _list(d.get("lockOKMQSet"))]


def encode_consumer_ids(ids: Iterable[str]) -> bytes:
    """GetConsumerListByGroupResponseBody."""
    return dumps({"consumerIdList": list(ids)})


def decode_consumer_ids(raw: bytes) -> list[str]:
    d = _obj(loads(raw), "consumer list")
    return [str(x) for x in _list(d.get("consumerIdList"))]


# ------------------------------------------------------------------ admin tables


def encode_queue_table(rows: Iterable[tuple[MessageQueue, Any]],
                       name: str = "offsetTable", **extra: Any) -> bytes:
    """A RocketMQ table keyed by MessageQueue (TopicStatsTable, ConsumeStats,
    ResetOffsetBody) in standard JSON: a list of ``[queue, value]`` pairs."""
    return dumps({name: [[q.to_json(), v] for q, v in rows], **extra})


def decode_queue_table(raw: bytes, name: str = "offsetTable"
                       ) -> list[tuple[MessageQueue, Any]]:
    d = _obj(loads(raw), "queue table")
    out: list[tuple[MessageQueue, Any]] = []
    for pair in _list(d.get(name)):
        if isinstance(pair, list) and len(pair) == 2:
            out.append((MessageQueue.from_json(pair[0]), pair[1]))
    return out
