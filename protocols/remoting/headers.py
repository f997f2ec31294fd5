"""Typed request and response headers: RocketMQ's ``*RequestHeader`` classes as frozen dataclasses.

A header travels as a command's ``extFields`` (a string map). ``from_ext``
reads one loosely (a number or a boolean where a string belongs, "1"/"true"
for booleans, surrounding spaces); a required field that is missing or a
number that is not one raises ``HeaderError`` (answered with SYSTEM_ERROR, as
RocketMQ answers a RemotingCommandException). ``to_ext`` emits RocketMQ's form:
every value a string, ``None`` fields left out.

Field names are RocketMQ's. ``SendMessageRequestHeader`` also has the
single-letter form of SEND_MESSAGE_V2 (``to_ext_v2``/``from_ext_v2``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from ..errors import RemoteProtocolError
from .codes import ResponseCode

H = TypeVar("H", bound="Header")


class HeaderError(RemoteProtocolError, ValueError):
    """A header field is missing or malformed. ``response_code`` is what to answer."""

    response_code = ResponseCode.SYSTEM_ERROR


def _to_bool(v: object) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return v != 0
    s = str(v).strip().lower()
    if s in ("true", "1", "yes"):
        return True
    if s in ("false", "0", "no", ""):
        return False
    raise ValueError(f"not a boolean: {v!r}")


def _to_int(v: object) -> int:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return int(str(v).strip())


def _to_str(v: object) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


_CONVERT = {"int": _to_int, "bool": _to_bool, "str": _to_str}


class Header:
    """Base of every typed header: ``from_ext`` / ``to_ext`` driven by the dataclass fields."""

    __slots__ = ()

    WIRE: ClassVar[Mapping[str, str]] = {}  # attribute -> wire name where they differ
    _spec: ClassVar[tuple[tuple[str, str, Any, bool], ...]]

    @classmethod
    def _fields_spec(cls) -> tuple[tuple[str, str, Any, bool], ...]:
        spec = cls.__dict__.get("_spec_cache")
        if spec is None:
            out = []
            for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                kind = str(f.type).split("|")[0].strip()
                required = (f.default is dataclasses.MISSING
                            and f.default_factory is dataclasses.MISSING)
                out.append((f.name, cls.WIRE.get(f.name, f.name), _CONVERT[kind], required))
            spec = tuple(out)
            type.__setattr__(cls, "_spec_cache", spec)
        return spec

    @classmethod
    def from_ext(cls: type[H], ext: Mapping[str, object]) -> H:
        kw: dict[str, object] = {}
        for name, wire, conv, required in cls._fields_spec():
            v = ext.get(wire)
            if v is None:
                if required:
                    raise HeaderError(f"the request header has no field {wire!r}")
                continue
            try:
                kw[name] = conv(v)
            except (TypeError, ValueError):
                raise HeaderError(f"header field {wire!r} is malformed: {v!r}") from None
        return cls(**kw)

    def to_ext(self) -> dict[str, str]:
        out = {}
        for name, wire, _conv, _req in self._fields_spec():
            v = getattr(self, name)
            if v is not None:
                out[wire] = _to_str(v)
        return out


# ------------------------------------------------------------------ producing


@dataclass(frozen=True, slots=True)
class SendMessageRequestHeader(Header):
    """SEND_MESSAGE (long names) and SEND_MESSAGE_V2 / SEND_BATCH_MESSAGE (letters)."""

    producerGroup: str
    topic: str
    defaultTopic: str = "TBW102"
    defaultTopicQueueNums: int = 4
    queueId: int = -1
    sysFlag: int = 0
    bornTimestamp: int = 0
    flag: int = 0
    properties: str | None = None
    reconsumeTimes: int | None = None
    unitMode: bool | None = None
    maxReconsumeTimes: int | None = None
    batch: bool | None = None
    brokerName: str | None = None

    V2: ClassVar[Mapping[str, str]] = {
        "producerGroup": "a", "topic": "b", "defaultTopic": "c", "defaultTopicQueueNums": "d",
        "queueId": "e", "sysFlag": "f", "bornTimestamp": "g", "flag": "h", "properties": "i",
        "reconsumeTimes": "j", "unitMode": "k", "maxReconsumeTimes": "l", "batch": "m",
        "brokerName": "n"}

    @classmethod
    def from_ext_v2(cls, ext: Mapping[str, object]) -> SendMessageRequestHeader:
        """The single-letter form. Hot path (every SEND_MESSAGE_V2): strings, the common
        case, are converted directly; anything else takes the generic loose path."""
        g = ext.get
        try:
            a, b, c, d, e, f, gg, h = (g("a"), g("b"), g("c"), g("d"), g("e"), g("f"),
                                       g("g"), g("h"))
            if (type(a) is str and type(b) is str and type(e) is str and type(gg) is str
                    and type(f) is str and type(h) is str):
                i, j, m = g("i"), g("j"), g("m")
                return cls(a, b, c if type(c) is str else "TBW102",
                           int(d) if type(d) is str else 4,
                           int(e), int(f), int(gg), int(h), i,  # type: ignore[arg-type]
                           int(j) if type(j) is str else None,
                           None, None, (m == "true") if type(m) is str else None)
        except ValueError:
            pass
        return cls.from_ext({long: ext[short] for long, short in cls.V2.items()
                             if short in ext})

    def to_ext_v2(self) -> dict[str, str]:
        return {self.V2[k]: v for k, v in self.to_ext().items()}


@dataclass(frozen=True, slots=True)
class SendMessageResponseHeader(Header):
    msgId: str
    queueId: int
    queueOffset: int
    transactionId: str | None = None
    batchUniqId: str | None = None


# ------------------------------------------------------------------ consuming


@dataclass(frozen=True, slots=True)
class PullMessageRequestHeader(Header):
    consumerGroup: str
    topic: str
    queueId: int
    queueOffset: int
    maxMsgNums: int
    sysFlag: int = 0
    commitOffset: int = 0
    suspendTimeoutMillis: int = 0
    subscription: str | None = None
    subVersion: int = 0
    expressionType: str | None = None
    maxMsgBytes: int | None = None


@dataclass(frozen=True, slots=True)
class PullMessageResponseHeader(Header):
    suggestWhichBrokerId: int
    nextBeginOffset: int
    minOffset: int
    maxOffset: int


@dataclass(frozen=True, slots=True)
class QueryConsumerOffsetRequestHeader(Header):
    consumerGroup: str
    topic: str
    queueId: int
    setZeroIfNotFound: bool | None = None


@dataclass(frozen=True, slots=True)
class OffsetResponseHeader(Header):
    """QueryConsumerOffset / GetMaxOffset / GetMinOffset / SearchOffset response."""

    offset: int


@dataclass(frozen=True, slots=True)
class UpdateConsumerOffsetRequestHeader(Header):
    consumerGroup: str
    topic: str
    queueId: int
    commitOffset: int


@dataclass(frozen=True, slots=True)
class UnregisterClientRequestHeader(Header):
    clientID: str
    producerGroup: str | None = None
    consumerGroup: str | None = None


@dataclass(frozen=True, slots=True)
class ConsumerGroupHeader(Header):
    """GET_CONSUMER_LIST_BY_GROUP, NOTIFY_CONSUMER_IDS_CHANGED, GET_CONSUMER_CONNECTION_LIST."""

    consumerGroup: str


@dataclass(frozen=True, slots=True)
class ConsumerSendMsgBackRequestHeader(Header):
    offset: int
    group: str
    delayLevel: int = 0
    originMsgId: str | None = None
    originTopic: str | None = None
    unitMode: bool | None = None
    maxReconsumeTimes: int | None = None


@dataclass(frozen=True, slots=True)
class SearchOffsetRequestHeader(Header):
    topic: str
    queueId: int
    timestamp: int


@dataclass(frozen=True, slots=True)
class QueueHeader(Header):
    """GET_MAX_OFFSET, GET_MIN_OFFSET, GET_EARLIEST_MSG_STORETIME."""

    topic: str
    queueId: int


@dataclass(frozen=True, slots=True)
class ViewMessageByIdRequestHeader(Header):
    """RocketMQ sends the CommitLog offset decoded from an offset message id; FerryMQ's
    client adds ``msgId`` so that client ids (UNIQ_KEY) are found through the index."""

    offset: int
    msgId: str | None = None


@dataclass(frozen=True, slots=True)
class QueryMessageRequestHeader(Header):
    topic: str
    key: str
    maxNum: int = 32
    beginTimestamp: int = 0
    endTimestamp: int = 0


@dataclass(frozen=True, slots=True)
class QueryMessageResponseHeader(Header):
    indexLastUpdateTimestamp: int
    indexLastUpdatePhyoffset: int


# ------------------------------------------------------------------ transactions


@dataclass(frozen=True, slots=True)
class EndTransactionRequestHeader(Header):
    """END_TRANSACTION (37): a producer's COMMIT (8), ROLLBACK (12) or UNKNOWN (0) for the
    half stored at ``commitLogOffset``; ``fromTransactionCheck`` when it answers a
    CHECK_TRANSACTION_STATE. ``bname`` is RpcRequestHeader's broker name."""

    producerGroup: str
    tranStateTableOffset: int
    commitLogOffset: int
    commitOrRollback: int
    msgId: str
    fromTransactionCheck: bool = False
    transactionId: str | None = None
    topic: str | None = None
    bname: str | None = None


@dataclass(frozen=True, slots=True)
class CheckTransactionStateRequestHeader(Header):
    """CHECK_TRANSACTION_STATE (39), broker to producer (oneway): what RocketMQ's
    AbstractTransactionalMessageCheckListener.sendCheckMessage fills in. ``topic`` is
    the half's (system) topic, ``msgId`` and ``transactionId`` the client id,
    ``offsetMsgId`` encodes ``commitLogOffset``; the body is the message as sent."""

    tranStateTableOffset: int
    commitLogOffset: int
    msgId: str | None = None
    transactionId: str | None = None
    offsetMsgId: str | None = None
    topic: str | None = None
    bname: str | None = None


# ------------------------------------------------------------------ pop consumption


@dataclass(frozen=True, slots=True)
class PopMessageRequestHeader(Header):
    """POP_MESSAGE (200050). ``queueId`` -1: every queue; ``invisibleTime`` and
    ``pollTime`` (how long to wait for a message) in ms; ``initMode`` 0 starts a new
    group at the queue's start, 1 at its end (ConsumeInitMode)."""

    consumerGroup: str
    topic: str
    queueId: int
    maxMsgNums: int
    invisibleTime: int
    pollTime: int = 0
    bornTime: int = 0
    initMode: int = 0
    expType: str | None = None
    exp: str | None = None
    order: bool = False
    attemptId: str | None = None


@dataclass(frozen=True, slots=True)
class PopMessageResponseHeader(Header):
    popTime: int
    invisibleTime: int
    reviveQid: int
    restNum: int
    startOffsetInfo: str | None = None
    msgOffsetInfo: str | None = None
    orderCountInfo: str | None = None


@dataclass(frozen=True, slots=True)
class AckMessageRequestHeader(Header):
    """ACK_MESSAGE (200051): ``extraInfo`` is the message's POP_CK property as given."""

    consumerGroup: str
    topic: str
    queueId: int
    extraInfo: str
    offset: int


@dataclass(frozen=True, slots=True)
class ChangeInvisibleTimeRequestHeader(Header):
    """CHANGE_MESSAGE_INVISIBLETIME (200053): a new lease of ``invisibleTime`` ms from now."""

    consumerGroup: str
    topic: str
    queueId: int
    extraInfo: str
    offset: int
    invisibleTime: int


@dataclass(frozen=True, slots=True)
class ChangeInvisibleTimeResponseHeader(Header):
    """RocketMQ's three fields, and FerryMQ's ``extraInfo``: the new POP_CK (with the
    new receipt handle), which RocketMQ's clients ignore and FerryMQ's client uses."""

    popTime: int
    invisibleTime: int
    reviveQid: int
    extraInfo: str | None = None


@dataclass(frozen=True, slots=True)
class PeekMessageRequestHeader(Header):
    """PEEK_MESSAGE (200052): what a pop would get, leasing nothing."""

    consumerGroup: str
    topic: str
    queueId: int
    maxMsgNums: int


# ------------------------------------------------------------------ FerryMQ's own admin


@dataclass(frozen=True, slots=True)
class DeadLettersRequestHeader(Header):
    """LIST_DEAD_LETTERS (900001): ``limit`` letters of ``group`` from DLQ offset ``offset``."""

    group: str
    offset: int = 0
    limit: int = 100


@dataclass(frozen=True, slots=True)
class DeadLetterRequestHeader(Header):
    """VIEW_DEAD_LETTER (900002): one letter by its message id or DLQ queue offset
    (``msgId`` wins when both are given)."""

    group: str
    msgId: str | None = None
    offset: int | None = None


@dataclass(frozen=True, slots=True)
class ResendDeadLettersRequestHeader(Header):
    """RESEND_DEAD_LETTERS (900003): ``msgIds`` (comma-separated message ids or DLQ
    offsets; absent: every letter not resent yet); ``force`` resends letters resent before."""

    group: str
    msgIds: str | None = None
    force: bool = False


# ------------------------------------------------------------------ admin


@dataclass(frozen=True, slots=True)
class CreateTopicRequestHeader(Header):
    topic: str
    defaultTopic: str = "TBW102"
    readQueueNums: int = 4
    writeQueueNums: int = 4
    perm: int = 6
    topicFilterType: str = "SINGLE_TAG"
    topicSysFlag: int | None = None
    order: bool = False
    attributes: str | None = None  # RocketMQ 5: "+name=value,-name"


@dataclass(frozen=True, slots=True)
class TopicHeader(Header):
    """DELETE_TOPIC_IN_BROKER, DELETE_TOPIC_IN_NAMESRV, GET_ROUTEINFO_BY_TOPIC,
    GET_TOPIC_STATS_INFO, QUERY_TOPIC_CONSUME_BY_WHO."""

    topic: str


@dataclass(frozen=True, slots=True)
class GetConsumeStatsRequestHeader(Header):
    consumerGroup: str
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class ResetOffsetRequestHeader(Header):
    topic: str
    group: str
    timestamp: int
    isForce: bool = True


@dataclass(frozen=True, slots=True)
class DeleteSubscriptionGroupRequestHeader(Header):
    groupName: str


# ------------------------------------------------------------------ NameServer


@dataclass(frozen=True, slots=True)
class RegisterBrokerRequestHeader(Header):
    brokerName: str
    brokerAddr: str
    clusterName: str
    haServerAddr: str = ""
    brokerId: int = 0
    heartbeatTimeoutMillis: int | None = None
    compressed: bool = False
    bodyCrc32: int = 0


@dataclass(frozen=True, slots=True)
class UnRegisterBrokerRequestHeader(Header):
    brokerName: str
    brokerAddr: str
    clusterName: str
    brokerId: int = 0


@dataclass(frozen=True, slots=True)
class RegisterBrokerResponseHeader(Header):
    haServerAddr: str | None = None
    masterAddr: str | None = None


SendFields = tuple[str, str, int, int, int, int, "str | None", int, bool]


def send_v2_fields(ext: Mapping[str, object]) -> SendFields | None:
    """SEND_MESSAGE_V2's fields the broker stores a message with: (producerGroup, topic,
    queueId, sysFlag, bornTimestamp, flag, properties, reconsumeTimes, batch), read
    straight from the letters without building a header object. Hot path: every
    message produced. None when a field is not a plain string of the expected form:
    then use ``SendMessageRequestHeader.from_ext_v2``, which reads loose input."""
    g = ext.get
    a, b, e, f, gg, h = g("a"), g("b"), g("e"), g("f"), g("g"), g("h")
    if not (type(a) is str and type(b) is str and type(e) is str and type(f) is str
            and type(gg) is str and type(h) is str):
        return None
    i, j, m = g("i"), g("j"), g("m")
    try:
        return (a, b, int(e), int(f), int(gg), int(h),
                i if type(i) is str else None,
                int(j) if type(j) is str and j else 0,
                m == "true")
    except ValueError:
        return None
