"""Trace context carried with messages, and the hook through which the broker reports
its spans (docs/observability.md).

A W3C Trace Context (``traceparent``, ``tracestate``) travels with a message as two
ordinary properties of those names: every door maps its own carrier onto them (a
Kafka record header, an MQTT 5 user property, an HTTP request header, a RocketMQ user
property), so they are stored once, with the message, and every door hands them back
to its consumers. A trace begun by an HTTP producer continues at a Kafka consumer.

The broker's own spans (receive, store, deliver) are reported through ``Tracer``, a
hook interface: the core knows no OpenTelemetry. ``gateways/tracing.py`` implements
it with the OpenTelemetry SDK (an optional extra) when ``[tracing]`` is configured;
otherwise the hook is None and the write path pays one ``is None`` test per put.

Where each span is measured, one place per hop:

- receive and store: the write path (``core/paths.py``): ``Paths.put`` and its
  batch variants take the time they are entered (receive starts), the time the
  record is appended (store starts), and report one ``PutTrace`` when the put is
  complete (durable under sync flush), which ends both;
- deliver: each door's delivery point (a Kafka fetch, a remoting pull or pop, an
  HTTP pop, read or SSE event, an MQTT delivery), which reports one ``Delivery``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import NamedTuple, Protocol

from .message import ConsumedMessage, Message, PutResult

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
# RocketMQ's message-trace topic: clients with enableMsgTrace write their trace data
# there (TraceTopicEnable in RocketMQ's broker, on by default here).
TRACE_TOPIC = "RMQ_SYS_TRACE_TOPIC"
MAX_TRACESTATE = 512  # W3C: vendors may drop tracestate past 512 characters

# W3C Trace Context, section 3.2: version "00" exactly; a future version is read by its
# first four fields. All-zero trace or parent ids are invalid.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


class TraceContext(NamedTuple):
    """A span context from a ``traceparent``: ids as integers, as OpenTelemetry has them."""

    trace_id: int
    span_id: int
    flags: int
    state: str = ""

    @property
    def sampled(self) -> bool:
        return bool(self.flags & 1)

    def traceparent(self) -> str:
        return f"00-{self.trace_id:032x}-{self.span_id:016x}-{self.flags:02x}"


def parse_traceparent(value: str | None, state: str | None = None) -> TraceContext | None:
    """The context a ``traceparent`` value names, or None for a missing or invalid one
    (W3C: an invalid traceparent is ignored, and so is its tracestate)."""
    if not value or len(value) > 512:
        return None
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return None
    version, trace, span, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace, 16), int(span, 16)
    if not trace_id or not span_id:
        return None
    return TraceContext(trace_id, span_id, int(flags, 16),
                        (state or "")[:MAX_TRACESTATE])


def message_context(properties: Mapping[str, str]) -> TraceContext | None:
    """The producer's context a message carries, or None."""
    if not properties:
        return None
    return parse_traceparent(properties.get(TRACEPARENT), properties.get(TRACESTATE))


class PutTrace(NamedTuple):
    """One put as the write path saw it: what was put, where it landed, and when.

    ``kind`` is "message" (one Message), "batch" (Messages stored as one record),
    "encoded" (a RocketMQ batch body), "kafka" (a Kafka RecordBatch) or "special"
    (a timed message or a half, stored by its service). ``payload`` is the encoded
    batch for the last two kinds (decoded by the hook only when it traces)."""

    kind: str
    messages: Sequence[Message]
    payload: bytes | bytearray | memoryview | None
    result: PutResult
    received_ns: int
    appended_ns: int
    done_ns: int


class Delivery(NamedTuple):
    """Messages a door handed a consumer: which door (``system``, as OpenTelemetry's
    ``messaging.system``: kafka, rocketmq, mqtt, http), the consumer group (None for an
    anonymous read), the queue (None for a pop over several), the messages, when the
    door began serving the request, and the consumer's own context when its request
    carried one (an HTTP ``traceparent`` header)."""

    system: str
    group: str | None
    topic: str
    queue_id: int | None
    messages: Iterable[ConsumedMessage]
    started_ns: int
    parent: TraceContext | None = None


class Tracer(Protocol):
    """What the broker reports its spans to (gateways/tracing.py implements it).

    ``traces_all``: whether messages without a ``traceparent`` are traced too (a
    sampling ratio above 0). When False, the write path skips the hook for a single
    message that carries none: the cost of tracing on, for untraced traffic, is a
    property lookup."""

    traces_all: bool

    def stored(self, put: PutTrace) -> None:
        """A put completed: the receive span (``received_ns`` to ``done_ns``) and its
        child, the store span (``appended_ns`` to ``done_ns``). Must not raise: the
        message is stored and its producer is about to be told so."""

    def delivered(self, delivery: Delivery) -> None:
        """A door delivered messages: the deliver span, linked to each message's
        producer context, ending now."""
