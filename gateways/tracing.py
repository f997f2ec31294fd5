"""The broker's spans in OpenTelemetry: the ``core.tracing.Tracer`` hook, exported over
OTLP (docs/observability.md).

Everything OpenTelemetry-specific lives here; the core reports plain values
(``PutTrace``, ``Delivery``) and imports none of it. opentelemetry-sdk is an optional
extra (``pip install 'ferrymq[otel]'``): without it the broker runs, and a
configuration that asks for tracing says what to install.

Configuration, the ``[tracing]`` table::

    [tracing]
    enabled = true                  # default: true when the table has an exporter
    exporter = "otlp"               # otlp (HTTP/protobuf), console, or memory (tests)
    otlp_endpoint = "http://collector:4318/v1/traces"
    service_name = "ferrymq"
    sample_ratio = 0.0              # messages without a traceparent: this share traced

Spans, following OpenTelemetry's messaging semantic conventions:

- ``receive {topic}`` (SERVER): the door's publish, as the write path saw it; its parent
  is the producer's context the message carries (``traceparent``);
- ``store {topic}`` (INTERNAL): the append, child of receive; the CommitLog offset;
- ``deliver {topic}`` (SERVER): a consumer's fetch, pull, pop, SSE event or MQTT
  delivery; its parent is the consumer's own context when its request carried one, and
  it is linked to each delivered message's producer context.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..core.message import ConsumedMessage, Message
from ..core.tracing import TRACEPARENT, Delivery, PutTrace, TraceContext, message_context
from ..protocols import record as rec
from ..protocols.kafka import batch_header as bh
from ..protocols.kafka import records as kr
from .config import ConfigError

log = logging.getLogger("ferrymq.tracing")

# The door a message came in by (FERRY_DOOR) as OpenTelemetry's messaging.system.
SYSTEMS = {"kafka": "kafka", "remoting": "rocketmq", "mqtt": "mqtt", "http": "http"}
_KIND_SYSTEM = {"kafka": "kafka", "encoded": "rocketmq"}
DOOR_PROPERTY = "FERRY_DOOR"
MAX_LOGGED_FAILURES = 10
MAX_LINKS = 64  # links of one batch span: OTel's default span limit is 128
EXPORTERS = ("otlp", "console", "memory")
_CARRIERS = frozenset(("traceparent", "tracestate"))
_TRACEPARENT_BYTES = TRACEPARENT.encode()


def _parent(ctx: TraceContext | None) -> Any:
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

    if ctx is None:
        return None
    state = TraceState.from_header([ctx.state]) if ctx.state else None
    sc = SpanContext(ctx.trace_id, ctx.span_id, is_remote=True,
                     trace_flags=TraceFlags(ctx.flags & 1), trace_state=state)
    return trace.set_span_in_context(NonRecordingSpan(sc))


def _link(ctx: TraceContext) -> Any:
    from opentelemetry.trace import Link, SpanContext, TraceFlags

    return Link(SpanContext(ctx.trace_id, ctx.span_id, is_remote=True,
                            trace_flags=TraceFlags(ctx.flags & 1)))


def _payload_contexts(put: PutTrace) -> Iterator[TraceContext | None]:
    """The producer contexts of a put's messages. An encoded batch is decoded only when
    it may hold one: its bytes name ``traceparent`` (or, for a compressed Kafka batch,
    cannot be searched)."""
    if put.messages:
        for m in put.messages:
            props = m.properties
            if props and TRACEPARENT in props:
                yield message_context(props)
        return
    raw = put.payload
    if raw is None:
        return
    if not isinstance(raw, bytes):
        raw = bytes(raw)
    if put.kind == "kafka":
        if not bh.read_header(raw).attributes & kr.COMPRESSION_MASK \
                and _TRACEPARENT_BYTES not in raw:
            return
        for r in kr.iter_records(raw):
            yield message_context({k: v.decode("utf-8", "replace") for k, v in r.headers
                                   if v is not None and k in _CARRIERS})
    elif _TRACEPARENT_BYTES in raw:
        for member in rec.iter_members(raw):
            yield message_context(member.properties)


class OtelTracer:
    """``core.tracing.Tracer`` over an OpenTelemetry ``TracerProvider``."""

    def __init__(self, provider: Any, sample_ratio: float = 0.0) -> None:
        self.provider = provider
        self._tracer = provider.get_tracer("ferrymq")
        self._roots = sample_ratio > 0  # messages without a context start their own trace
        self.traces_all = self._roots  # core.tracing.Tracer: the write path asks
        self.failures = 0

    # ---------------------------------------------------------------- receive, store

    def stored(self, put: PutTrace) -> None:
        """Never raises: a put that is stored stays acknowledged whatever tracing does."""
        try:
            self._stored(put)
        except Exception:
            self._failed("store")

    def delivered(self, d: Delivery) -> None:
        """Never raises, as ``stored``."""
        try:
            self._delivered(d)
        except Exception:
            self._failed("deliver")

    def _failed(self, hop: str) -> None:
        self.failures += 1
        if self.failures <= MAX_LOGGED_FAILURES:  # a bug logs its first few, not a flood
            log.exception("tracing a %s failed (the message is unaffected)", hop)

    def _stored(self, put: PutTrace) -> None:
        contexts = [c for c in _payload_contexts(put) if c is not None]
        if not contexts and not self._roots:
            return  # the common case: an untraced put costs this much
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind

        r = put.result
        system = _KIND_SYSTEM.get(put.kind) or _system_of(put.messages)
        attrs: dict[str, Any] = {
            "messaging.system": system,
            "messaging.destination.name": r.topic,
            "messaging.destination.partition.id": str(r.queue_id),
            "messaging.operation.type": "send",
            "messaging.operation.name": "receive",
        }
        count = r.count
        if count > 1:
            attrs["messaging.batch.message_count"] = count
        else:
            attrs["messaging.message.id"] = r.message_id(0)
        tags = put.messages[0].properties.get("TAGS") if len(put.messages) == 1 else None
        if tags:
            attrs["messaging.rocketmq.message.tag"] = tags
        if system == "kafka":
            attrs["messaging.kafka.offset"] = r.queue_offset
        parent = contexts[0] if contexts else None
        links = [_link(c) for c in contexts[1:MAX_LINKS + 1]]
        receive = self._tracer.start_span(
            f"receive {r.topic}", context=_parent(parent), kind=SpanKind.SERVER,
            attributes=attrs, links=links, start_time=put.received_ns)
        store = self._tracer.start_span(
            f"store {r.topic}", context=trace.set_span_in_context(receive),
            kind=SpanKind.INTERNAL, start_time=put.appended_ns, attributes={
                "messaging.system": system,
                "messaging.destination.name": r.topic,
                "messaging.destination.partition.id": str(r.queue_id),
                "messaging.operation.name": "store",
                "ferrymq.commitlog.offset": r.physical_offset,
                "ferrymq.queue.offset": r.queue_offset,
                "ferrymq.timer": put.kind == "special",
            })
        store.end(end_time=put.done_ns)
        receive.end(end_time=put.done_ns)

    # ---------------------------------------------------------------- deliver

    def _delivered(self, d: Delivery) -> None:
        messages = list(d.messages)
        if not messages:
            return
        contexts = [c for c in (message_context(m.properties) for m in messages) if c]
        if not contexts and d.parent is None and not self._roots:
            return
        from opentelemetry.trace import SpanKind

        first = messages[0]
        attrs: dict[str, Any] = {
            "messaging.system": d.system,
            "messaging.destination.name": d.topic,
            "messaging.operation.type": "receive",
            "messaging.operation.name": "deliver",
        }
        if d.queue_id is not None:
            attrs["messaging.destination.partition.id"] = str(d.queue_id)
        if d.group:
            attrs["messaging.consumer.group.name"] = d.group
        if len(messages) > 1:
            attrs["messaging.batch.message_count"] = len(messages)
        else:
            attrs["messaging.message.id"] = first.msg_id
            if first.tags:
                attrs["messaging.rocketmq.message.tag"] = first.tags
        if d.system == "kafka":
            attrs["messaging.kafka.offset"] = first.queue_offset
        span = self._tracer.start_span(
            f"deliver {d.topic}", context=_parent(d.parent), kind=SpanKind.SERVER,
            attributes=attrs, links=[_link(c) for c in contexts[:MAX_LINKS]],
            start_time=d.started_ns)
        span.end()

    def shutdown(self) -> None:
        self.provider.shutdown()


def _system_of(messages: Sequence[Message | ConsumedMessage]) -> str:
    door = messages[0].properties.get(DOOR_PROPERTY) if messages else None
    return SYSTEMS.get(door or "", "ferrymq")


def _linked_or(ratio: Any) -> Any:
    """The sampler of spans without a parent: a deliver span of a consumer that sent no
    context of its own is kept when a message it links to was sampled (the producer's
    decision carries over to the consumer side), else by the configured ratio."""
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult

    class LinkedOr(Sampler):
        def should_sample(self, parent_context: Any, trace_id: int, name: str,
                          kind: Any = None, attributes: Any = None, links: Any = None,
                          trace_state: Any = None) -> SamplingResult:
            if links and any(link.context.trace_flags.sampled for link in links):
                return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
            return ratio.should_sample(parent_context, trace_id, name, kind, attributes,
                                       links, trace_state)

        def get_description(self) -> str:
            return f"LinkedOr{{{ratio.get_description()}}}"

    return LinkedOr()


def tracer_from_config(options: Mapping[str, Any], *, exporter: Any = None
                       ) -> OtelTracer | None:
    """The tracer a ``[tracing]`` table asks for, or None when tracing is off. Raises
    ConfigError for a bad table, or when opentelemetry-sdk is not installed.
    ``exporter``: a SpanExporter to use instead of the configured one (tests)."""
    if not options and exporter is None:
        return None
    unknown = set(options) - {"enabled", "exporter", "otlp_endpoint", "service_name",
                              "sample_ratio"}
    if unknown:
        raise ConfigError(f"[tracing]: unknown setting(s): {', '.join(sorted(unknown))}")
    if options.get("enabled", True) in (False, "false", "0", "off") and exporter is None:
        return None
    kind = str(options.get("exporter", "otlp"))
    if kind not in EXPORTERS:
        raise ConfigError(f"[tracing] exporter: one of {', '.join(EXPORTERS)}, not {kind!r}")
    try:
        ratio = float(options.get("sample_ratio", 0.0))
    except (TypeError, ValueError):
        raise ConfigError("[tracing] sample_ratio: a number between 0 and 1") from None
    if not 0.0 <= ratio <= 1.0:
        raise ConfigError("[tracing] sample_ratio: a number between 0 and 1")
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
    except ImportError:
        raise ConfigError("[tracing] needs the OpenTelemetry SDK: "
                          "pip install 'ferrymq[otel]'") from None
    provider = TracerProvider(
        resource=Resource.create({"service.name": str(options.get("service_name", "ferrymq"))}),
        sampler=ParentBased(_linked_or(TraceIdRatioBased(ratio))))
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    elif kind == "memory":
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        provider.add_span_processor(BatchSpanProcessor(InMemorySpanExporter()))
    elif kind == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ConfigError("[tracing] exporter = \"otlp\" needs the OTLP exporter: "
                              "pip install 'ferrymq[otel]'") from None
        endpoint = options.get("otlp_endpoint")
        provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=str(endpoint)) if endpoint else OTLPSpanExporter()))
    return OtelTracer(provider, ratio)
