"""Pop consumption on the remoting wire: RocketMQ 5's ``POP_CK`` strings and batch-ack bodies.

RocketMQ hands every popped message a check-point string, its ``POP_CK``
property ("extraInfo"), which the consumer gives back to ack it or to change
its invisible time. RocketMQ's layout (``ExtraInfoUtil.buildExtraInfo``) is
eight fields separated by ``MessageConst.KEY_SEPARATOR`` (a space)::

    ckQueueOffset popTime invisibleTime reviveQid retry brokerName queueId queueOffset

None of them is authenticated: a RocketMQ broker trusts them. FerryMQ acks by
its own signed receipt handle (core/pop.py: the lease number and an HMAC), so
FerryMQ's ``POP_CK`` is RocketMQ's eight fields followed by a ninth: the
receipt handle (URL-safe base64, never a space). RocketMQ's ``ExtraInfoUtil``
reads fields by index and ignores the ninth, and its clients echo ``POP_CK``
verbatim in ACK_MESSAGE and CHANGE_MESSAGE_INVISIBLETIME, so the handle comes
back with them. What RocketMQ's clients rebuild themselves (the extraInfo after
a change of invisible time, the bitset of a BATCH_ACK_MESSAGE) cannot carry it;
FerryMQ refuses those rather than ack without proof (docs/pop.md).

A BATCH_ACK_MESSAGE body is RocketMQ's BatchAckMessageRequestBody (JSON:
``brokerName`` and ``acks``, each a BatchAck with fastjson's short names ``c t
r so q rq pt it b``); FerryMQ adds ``rh``, the list of receipt handles it acks.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import RemoteProtocolError
from .bodies import BodyError, _list, _obj, dumps, loads

PROPERTY_POP_CK = "POP_CK"  # MessageConst.PROPERTY_POP_CK
PROPERTY_FIRST_POP_TIME = "1ST_POP_TIME"  # MessageConst.PROPERTY_FIRST_POP_TIME
KEY_SEPARATOR = " "  # MessageConst.KEY_SEPARATOR
NORMAL_TOPIC = "0"  # ExtraInfoUtil: "0" a normal topic, "1"/"2" a pop retry topic
REVIVE_QID = 0  # FerryMQ has no revive queues; 999 would mean "ordered" to RocketMQ's clients
_FIELDS = 8
MAX_EXTRA_INFO = 2048  # a POP_CK longer than this is not ours (a receipt is ~120 characters)


@dataclass(frozen=True, slots=True)
class ExtraInfo:
    """A ``POP_CK`` string's fields; ``receipt`` is FerryMQ's handle (None in
    RocketMQ's eight-field form)."""

    ck_offset: int
    pop_time: int
    invisible_time: int
    revive_qid: int
    retry: str
    broker_name: str
    queue_id: int
    queue_offset: int
    receipt: str | None = None

    def encode(self) -> str:
        parts = [str(self.ck_offset), str(self.pop_time), str(self.invisible_time),
                 str(self.revive_qid), self.retry, self.broker_name, str(self.queue_id),
                 str(self.queue_offset)]
        if self.receipt is not None:
            parts.append(self.receipt)
        return KEY_SEPARATOR.join(parts)


class ExtraInfoError(RemoteProtocolError, ValueError):
    """The extraInfo string is not one FerryMQ (or RocketMQ) makes."""


def parse_extra_info(text: str) -> ExtraInfo:
    """Read a ``POP_CK`` string: RocketMQ's eight fields, optionally FerryMQ's receipt.
    Raises ExtraInfoError."""
    if not isinstance(text, str) or len(text) > MAX_EXTRA_INFO:
        raise ExtraInfoError("extraInfo is not a string of at most 2048 characters")
    parts = text.split(KEY_SEPARATOR)
    if len(parts) not in (_FIELDS, _FIELDS + 1):
        raise ExtraInfoError(f"extraInfo has {len(parts)} fields; expected 8 (RocketMQ) "
                             "or 9 (FerryMQ: with the receipt handle)")
    try:
        ck, pop_time, invisible, revive, qid, qoff = (int(parts[0]), int(parts[1]),
                                                      int(parts[2]), int(parts[3]),
                                                      int(parts[6]), int(parts[7]))
    except ValueError:
        raise ExtraInfoError("extraInfo has a non-numeric field where a number belongs") from None
    receipt = parts[8] if len(parts) > _FIELDS and parts[8] else None
    return ExtraInfo(ck, pop_time, invisible, revive, parts[4], parts[5], qid, qoff, receipt)


def receipt_of(extra_info: str) -> str:
    """The receipt handle an ACK_MESSAGE or CHANGE_MESSAGE_INVISIBLETIME carries: the
    ninth field of FerryMQ's ``POP_CK``, or the whole string when it is a bare handle
    (no space). Raises ExtraInfoError when there is none (RocketMQ's eight-field form)."""
    if KEY_SEPARATOR not in extra_info:
        if not extra_info or len(extra_info) > MAX_EXTRA_INFO:
            raise ExtraInfoError("empty or oversized extraInfo")
        return extra_info
    info = parse_extra_info(extra_info)
    if info.receipt is None:
        raise ExtraInfoError(
            "extraInfo carries no FerryMQ receipt handle (RocketMQ's eight-field form, as a "
            "client rebuilds it after changing the invisible time): ack with the POP_CK "
            "property the broker sent")
    return info.receipt


def offset_info(groups: Mapping[int, Sequence[int]]) -> tuple[str, str]:
    """PopMessageResponseHeader's ``startOffsetInfo`` and ``msgOffsetInfo``
    (ExtraInfoUtil.buildStartOffsetInfo / buildMsgOffsetInfo) for the popped offsets
    per queue id: ``retry qid startOffset`` and ``retry qid off1,off2``, ``;``-joined."""
    starts = []
    offsets = []
    for qid, offs in groups.items():
        starts.append(f"{NORMAL_TOPIC} {qid} {min(offs)}")
        offsets.append(f"{NORMAL_TOPIC} {qid} " + ",".join(str(o) for o in offs))
    return ";".join(starts), ";".join(offsets)


# ------------------------------------------------------------------ BATCH_ACK_MESSAGE


@dataclass(frozen=True, slots=True)
class BatchAck:
    """One BatchAck of a BatchAckMessageRequestBody. ``offsets`` are the queue offsets
    its bitset names (start offset + bit index); ``receipts`` is FerryMQ's ``rh``."""

    consumer_group: str
    topic: str
    retry: str
    start_offset: int
    queue_id: int
    revive_queue_id: int
    pop_time: int
    invisible_time: int
    offsets: tuple[int, ...] = ()
    receipts: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        bits = 0
        for o in self.offsets:
            bits |= 1 << (o - self.start_offset)
        raw = bits.to_bytes((bits.bit_length() + 7) // 8, "little")  # java.util.BitSet order
        d: dict[str, Any] = {"c": self.consumer_group, "t": self.topic, "r": self.retry,
                             "so": self.start_offset, "q": self.queue_id,
                             "rq": self.revive_queue_id, "pt": self.pop_time,
                             "it": self.invisible_time, "b": base64.b64encode(raw).decode()}
        if self.receipts:
            d["rh"] = list(self.receipts)
        return d

    @classmethod
    def from_json(cls, d: Any) -> BatchAck:
        d = _obj(d, "BatchAck")

        def get(short: str, long: str, default: Any = None) -> Any:
            v = d.get(short, d.get(long, default))
            return default if v is None else v

        try:
            start = int(get("so", "startOffset", 0))
            raw = get("b", "bitSet", "")
            bits = base64.b64decode(raw, validate=True) if isinstance(raw, str) else \
                bytes(int(x) & 0xFF for x in _list(raw))
            n = int.from_bytes(bits, "little")
            if n.bit_length() > 65536:
                raise BodyError("a BatchAck bitset spans more than 65536 offsets")
            offsets = tuple(start + i for i in range(n.bit_length()) if n >> i & 1)
            receipts = tuple(str(r) for r in _list(get("rh", "receipts", [])))
            return cls(str(get("c", "consumerGroup", "")), str(get("t", "topic", "")),
                       str(get("r", "retry", NORMAL_TOPIC)), start,
                       int(get("q", "queueId", 0)), int(get("rq", "reviveQueueId", 0)),
                       int(get("pt", "popTime", 0)), int(get("it", "invisibleTime", 0)),
                       offsets, receipts)
        except (TypeError, ValueError) as exc:
            if isinstance(exc, BodyError):
                raise
            raise BodyError(f"malformed BatchAck: {exc}") from None


@dataclass(frozen=True, slots=True)
class BatchAckBody:
    broker_name: str
    acks: tuple[BatchAck, ...]

    def encode(self) -> bytes:
        return dumps({"brokerName": self.broker_name, "acks": [a.to_json() for a in self.acks]})

    @classmethod
    def decode(cls, raw: bytes) -> BatchAckBody:
        d = _obj(loads(raw), "BatchAckMessageRequestBody")
        return cls(str(d.get("brokerName") or ""),
                   tuple(BatchAck.from_json(a) for a in _list(d.get("acks"))))


def encode_ack_results(results: Iterable[tuple[str, int, str | None]]) -> bytes:
    """FerryMQ's BATCH_ACK_MESSAGE response body: per receipt handle its response code
    (0 acked) and remark, ``{"results": [{"receipt", "code", "remark"}...]}``."""
    return dumps({"results": [{"receipt": r, "code": c, "remark": m} for r, c, m in results]})


def decode_ack_results(raw: bytes) -> list[tuple[str, int, str | None]]:
    d = _obj(loads(raw), "batch ack results")
    out = []
    for item in _list(d.get("results")):
        item = _obj(item, "batch ack result")
        out.append((str(item.get("receipt", "")), int(item.get("code", 1)),
                    item.get("remark")))
    return out
