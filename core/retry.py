"""Retry and dead letters: a message a consumer failed goes back with a growing delay, then to the DLQ.

``send_back`` (RocketMQ's CONSUMER_SEND_MSG_BACK) puts a copy of the message
into ``%RETRY%<group>`` with its reconsume count raised and a delay of level
``3 + reconsume count`` (10 s, 30 s, 1 min, 2 min, ... capped at 2 h: the
timers of ``core/timers.py`` deliver it); past the group's maximum reconsume
count it goes to ``%DLQ%<group>`` instead, carrying its original topic and
message id (``DLQ_ORIGIN_TOPIC``, ``DLQ_ORIGIN_MESSAGE_ID``). The copy keeps
the message's client id (``UNIQ_KEY``), so a consumer sees the same id on
every attempt.

Dead letters can be listed, shown and *resent* to their original topic
(RocketMQ has no resend: apache/rocketmq #2199, #2436). A resend appends a
marker to the system topic ``RMQ_SYS_DLQ_RESENT`` (its ConsumeQueue tag-hash
field is the dead letter's CommitLog offset), so a second resend of the same
letter is refused unless forced, also after a restart. The marker follows
the resend: a crash between the two can let one letter be resent twice
(at-least-once), never lost.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from ..protocols import record as rec
from .errors import InvalidArgument, MessageNotFound
from .message import (
    PROPERTY_DELAY_LEVEL,
    PROPERTY_DLQ_ORIGIN_MESSAGE_ID,
    PROPERTY_DLQ_ORIGIN_TOPIC,
    PROPERTY_MAX_RECONSUME_TIMES,
    PROPERTY_ORIGIN_MESSAGE_ID,
    PROPERTY_REAL_QUEUE_ID,
    PROPERTY_REAL_TOPIC,
    PROPERTY_RETRY_TOPIC,
    PROPERTY_TRANSACTION_PREPARED,
    PROPERTY_UNIQ_KEY,
    ConsumedMessage,
    Message,
    PutResult,
    parse_offset_message_id,
)
from .metadata import DLQ_PREFIX, PERM_READ_WRITE, RETRY_PREFIX, validate_group_name
from .paths import Paths
from .store.store import MessageStore
from .timers import MAX_DELAY_LEVEL, PROPERTY_TIMER_FROM, PROPERTY_TIMER_OUT_MS, REQUEST_PROPERTIES

log = logging.getLogger("ferrymq.retry")

RESENT_TOPIC = "RMQ_SYS_DLQ_RESENT"
PROPERTY_RESENT = "DLQ_RESENT"  # on a marker: the dead letter's CommitLog offset
FIRST_RETRY_LEVEL = 3  # RocketMQ: delayLevel 0 means "3 + reconsume times" (10 s first)
DLQ_QUEUES = 1  # RocketMQ's DLQ topics have one queue

# Not carried from a failed message into its retry or dead-letter copy: they are
# about the copy they came with (a delay already served, a timer's bookkeeping).
_NOT_COPIED = frozenset((*REQUEST_PROPERTIES, PROPERTY_REAL_TOPIC, PROPERTY_REAL_QUEUE_ID,
                         PROPERTY_TIMER_OUT_MS, PROPERTY_TIMER_FROM,
                         PROPERTY_TRANSACTION_PREPARED))
# Dropped again when a dead letter goes back to its topic: it starts afresh.
_NOT_RESENT = _NOT_COPIED | {PROPERTY_DLQ_ORIGIN_TOPIC, PROPERTY_DLQ_ORIGIN_MESSAGE_ID,
                             PROPERTY_RETRY_TOPIC, PROPERTY_ORIGIN_MESSAGE_ID}


@dataclass(frozen=True, slots=True)
class SendBackResult:
    """Where a failed message went: its retry topic (with a delay level) or the DLQ."""

    topic: str
    dead: bool
    delay_level: int  # 0 for the DLQ
    reconsume_times: int
    put: PutResult


@dataclass(frozen=True, slots=True)
class DeadLetter:
    group: str
    queue_offset: int  # in %DLQ%<group>
    msg_id: str
    origin_topic: str
    origin_msg_id: str
    reconsume_times: int
    store_timestamp: int
    resent: bool
    message: ConsumedMessage


@dataclass(frozen=True, slots=True)
class ResendResult:
    letter: DeadLetter
    put: PutResult


class RetryService:
    """Send-back and the dead-letter queue of every group; the Broker owns one. Copies
    go through the write path (``paths``): a retry's delay makes it a timer there."""

    def __init__(self, store: MessageStore, paths: Paths) -> None:
        self.paths = paths
        self.store = store
        self.retried: dict[str, int] = {}
        self.dead_lettered: dict[str, int] = {}
        self.resent: dict[str, int] = {}

    # ================================================================ send back

    def _resolve(self, message: ConsumedMessage | str | int) -> ConsumedMessage:
        if isinstance(message, ConsumedMessage):
            return message
        if isinstance(message, int):
            m = self.store.message_at(message)
        else:
            # A client id is shared by the message, its retries, its dead letter and
            # the timer records of delayed copies: take the newest consumable copy.
            topic_config = self.paths.topic_config
            copies = [c for c in self.store.lookup_key(message, limit=8)
                      if (t := topic_config(c.topic)) is None or t.readable]
            m = copies[0] if copies else self.paths.message_by_id(message)
        if m is None:
            raise MessageNotFound(f"no message {message!r} (gone with retention?)")
        return m

    async def send_back(self, group: str, message: ConsumedMessage | str | int,
                        delay_level: int = 0, *, max_reconsume_times: int | None = None
                        ) -> SendBackResult:
        """A consumer of ``group`` failed ``message`` (the message itself, its id, or
        its CommitLog offset). ``delay_level`` 0 means "3 + reconsume times";
        a negative level sends it straight to the DLQ (RocketMQ's convention).
        Raises MessageNotFound, InvalidGroupName, GroupNotFound, InvalidArgument."""
        validate_group_name(group)
        paths = self.paths
        g = paths.consumer_group(group)
        m = self._resolve(message)
        props = m.properties
        limit = max_reconsume_times
        if limit is None:
            raw = props.get(PROPERTY_MAX_RECONSUME_TIMES, "")
            limit = int(raw) if raw.isdigit() else g.max_reconsume_times
        if limit < 0:
            raise InvalidArgument("max_reconsume_times must not be negative")
        origin_topic = props.get(PROPERTY_RETRY_TOPIC) or m.topic
        origin_id = props.get(PROPERTY_ORIGIN_MESSAGE_ID) or m.msg_id
        copy = {k: v for k, v in props.items() if k not in _NOT_COPIED}
        copy.setdefault(PROPERTY_UNIQ_KEY, m.msg_id)
        reconsume = m.reconsume_times + 1
        sys_flag = m.sys_flag & ~(rec.FORMAT_MASK | rec.TRANSACTION_MASK)
        if m.reconsume_times >= limit or delay_level < 0:
            topic = DLQ_PREFIX + group
            copy[PROPERTY_DLQ_ORIGIN_TOPIC] = origin_topic
            copy[PROPERTY_DLQ_ORIGIN_MESSAGE_ID] = origin_id
            copy[PROPERTY_RETRY_TOPIC] = origin_topic
            await paths.ensure_topic(topic, DLQ_QUEUES, PERM_READ_WRITE)
            r = await paths.put(Message(topic, m.body, copy, 0, m.flag, m.born_timestamp,
                                         m.born_host[:8], reconsume, sys_flag))
            self.dead_lettered[group] = self.dead_lettered.get(group, 0) + 1
            log.info("message %s of group %s to the DLQ after %d attempts", origin_id, group,
                     reconsume)
            return SendBackResult(topic, True, 0, reconsume, r)
        level = delay_level or FIRST_RETRY_LEVEL + m.reconsume_times
        level = min(level, MAX_DELAY_LEVEL)
        topic = RETRY_PREFIX + group
        copy[PROPERTY_RETRY_TOPIC] = origin_topic
        copy[PROPERTY_ORIGIN_MESSAGE_ID] = origin_id
        copy[PROPERTY_DELAY_LEVEL] = str(level)
        await paths.ensure_topic(topic, max(1, g.retry_queues), PERM_READ_WRITE)
        r = await paths.put(Message(topic, m.body, copy, -1, m.flag, m.born_timestamp,
                                     m.born_host[:8], reconsume, sys_flag))
        self.retried[group] = self.retried.get(group, 0) + 1
        return SendBackResult(topic, False, level, reconsume, r)

    # ================================================================ dead letters

    def _resent_offsets(self) -> set[int]:
        q = self.store.queues.get((RESENT_TOPIC, 0))
        if q is None:
            return set()
        return {q.entry(i).tag_hash for i in range(q.first_entry, q.next_entry)}

    def _letter(self, group: str, m: ConsumedMessage, resent: set[int]) -> DeadLetter:
        p = m.properties
        return DeadLetter(group, m.queue_offset, m.msg_id,
                          p.get(PROPERTY_DLQ_ORIGIN_TOPIC) or p.get(PROPERTY_RETRY_TOPIC, ""),
                          p.get(PROPERTY_DLQ_ORIGIN_MESSAGE_ID, m.msg_id), m.reconsume_times,
                          m.store_timestamp, _letter_key(m) in resent, m)

    def dead_letters(self, group: str, offset: int = 0, limit: int = 100) -> list[DeadLetter]:
        """Dead letters of ``group`` from DLQ queue offset ``offset`` on, oldest first."""
        validate_group_name(group)
        if limit < 1 or offset < 0:
            raise InvalidArgument("offset must be >= 0 and limit >= 1")
        topic = DLQ_PREFIX + group
        t = self.paths.topic_config(topic)
        if t is None:
            return []
        resent = self._resent_offsets()
        out: list[DeadLetter] = []
        for qid in range(t.queues):
            lo, hi = self.store.queue_bounds(topic, qid)
            pos = max(offset, lo)
            while pos < hi and len(out) < limit:
                got = self.store.get(topic, qid, pos, limit - len(out), 8 << 20)
                for m in got.messages(pos):
                    out.append(self._letter(group, m, resent))
                    if len(out) >= limit:
                        break
                if got.next_offset <= pos:
                    break
                pos = got.next_offset
        return out

    def dead_letter(self, group: str, ref: str | int) -> DeadLetter:
        """One dead letter of ``group`` by its message id or DLQ queue offset.
        Raises MessageNotFound."""
        validate_group_name(group)
        topic = DLQ_PREFIX + group
        t = self.paths.topic_config(topic)
        if t is not None:
            if isinstance(ref, int):
                got = self.store.get(topic, 0, ref, 1, 8 << 20)
                for m in got.messages(ref):
                    if m.queue_offset == ref:
                        return self._letter(group, m, self._resent_offsets())
            else:
                for m in self.store.lookup_key(ref, topic, limit=1):
                    return self._letter(group, m, self._resent_offsets())
                decoded = parse_offset_message_id(ref)
                if decoded is not None:
                    found = self.store.message_at(*decoded)
                    if found is not None and found.topic == topic:
                        return self._letter(group, found, self._resent_offsets())
        raise MessageNotFound(f"no dead letter {ref!r} in {topic}")

    async def resend(self, group: str, refs: Iterable[str | int] | None = None, *,
                     force: bool = False, authorize: Callable[[str], None] | None = None
                     ) -> list[ResendResult]:
        """Put dead letters back into their original topic as fresh messages
        (reconsume count 0, same client id). ``refs`` None means every letter not
        resent yet. A letter resent before is refused (InvalidArgument) unless
        ``force``. ``authorize`` is called with every original topic before any
        letter is resent (the Broker's access check). Raises MessageNotFound for an
        unknown ref."""
        paths = self.paths
        if refs is None:
            letters = [d for d in self._all(group) if not d.resent]
        else:
            letters = [self.dead_letter(group, r) for r in refs]
            again = [d.msg_id for d in letters if d.resent]
            if again and not force:
                raise InvalidArgument(f"already resent: {', '.join(again)} (force to resend)")
        if authorize is not None:
            for topic in sorted({d.origin_topic for d in letters if d.origin_topic}):
                authorize(topic)
        out = []
        for d in letters:
            if not d.origin_topic:
                raise InvalidArgument(f"dead letter {d.msg_id} does not name its original topic")
            m = d.message
            props = {k: v for k, v in m.properties.items() if k not in _NOT_RESENT}
            props.setdefault(PROPERTY_UNIQ_KEY, d.msg_id)
            r = await paths.put(Message(d.origin_topic, m.body, props, -1, m.flag,
                                         m.born_timestamp, m.born_host[:8], 0,
                                         m.sys_flag & ~(rec.FORMAT_MASK | rec.TRANSACTION_MASK)))
            await paths.system_topic(RESENT_TOPIC)
            marker = self.store.append(RESENT_TOPIC, 0, b"", b"DLQ_RESENT\x01%d\x02"
                                       % _letter_key(m), 0, 0, 0, b"\x00" * 8, 0, 0, 1,
                                       _letter_key(m))
            await paths.after_put(marker)
            self.resent[group] = self.resent.get(group, 0) + 1
            out.append(ResendResult(d, r))
        return out

    def _all(self, group: str) -> list[DeadLetter]:
        out: list[DeadLetter] = []
        while True:
            page = self.dead_letters(group, out[-1].queue_offset + 1 if out else 0, 1000)
            out.extend(page)
            if len(page) < 1000:
                return out

    def register_hooks(self) -> None:
        self.store.tag_hash_hooks[RESENT_TOPIC] = _resent_tag_hash


def _letter_key(m: ConsumedMessage) -> int:
    """A dead letter's identity in the resend markers: CommitLog offset and batch member."""
    return m.physical_offset * 65536 + m.batch_index


def _resent_tag_hash(props: Mapping[str, str]) -> int:
    raw = props.get(PROPERTY_RESENT, "")
    return int(raw) if raw.isdigit() else 0
