"""FerryMQ's HTTP API: the route table and its handlers, each a translation into ``Broker`` calls.

Produce, pop-style consume with long polling, acks, change of invisible
time, peek, server-sent-event streams, reads by offset, admin (topics, groups,
lookups), health, metrics and the OpenAPI document. docs/http.md describes
each endpoint with curl; the schemas below are what ``/openapi.json`` shows.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from functools import partial
from typing import Any

import trio

from ...core import topicconfig
from ...core.access import Principal
from ...core.broker import Broker
from ...core.errors import FerryError, PermissionDenied
from ...core.filter import Filter, parse_filter
from ...core.message import ConsumedMessage, Message, PutResult
from ...core.metadata import MAX_QUEUES, MESSAGE_TYPES, PERM_READ_WRITE, TopicConfig
from ...core.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from ...core.metrics import DoorMetrics
from ...core.pop import MAX_INVISIBLE_MS, MAX_POP_MESSAGES, MIN_INVISIBLE_MS
from ...core.tracing import TRACEPARENT, TRACESTATE, Delivery, TraceContext, parse_traceparent
from . import codec
from .app import json_response
from .problems import PROBLEM_CONTENT_TYPE, Problem, from_ferry_error, problem_body
from .routing import Param, Resp, Route, Router
from .server import Limits, Request, Response, StreamResponse

JSON = "application/json"
NDJSON_TYPES = ("application/x-ndjson", "application/jsonl", "application/ndjson")
CE_JSON = "application/cloudevents+json"
CE_BATCH = "application/cloudevents-batch+json"
SSE = "text/event-stream"
MAX_BATCH_MESSAGES = 10_000
MAX_READ_MESSAGES = 1024
READ_MAX_BYTES = 4 << 20
SSE_BATCH = 64  # messages read per queue per round of a stream
DEFAULT_INVISIBLE_S = 30.0

# ---------------------------------------------------------------- schemas

TOPIC_SCHEMA = {"type": "string", "pattern": "^[A-Za-z0-9._%|-]{1,127}$",
                "description": "Topic name: 1-127 of A-Z a-z 0-9 . _ - % |"}
GROUP_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 255,
                "description": "Consumer group name: 1-255 characters, no control characters"}
QUEUE_SCHEMA = {"type": "integer", "minimum": 0, "maximum": MAX_QUEUES - 1}
RECEIPT_SCHEMA = {"type": "string", "minLength": 1, "maxLength": 1024,
                  "description": "An opaque receipt handle from a pop"}
DELIVER_AT_SCHEMA = {"oneOf": [{"type": "integer", "minimum": 0},
                               {"type": "string", "format": "date-time"}],
                     "description": "Deliver at this time (epoch ms or RFC 3339); "
                                    "stored as TIMER_DELIVER_MS"}


def _envelope_schema(max_delay_ms: int) -> dict[str, Any]:
    """A message envelope; ``max_delay_ms`` is the broker's timer horizon."""
    return {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "body": {"description": "A string is stored as UTF-8 text; any other JSON value "
                                    "as its JSON text (content_type application/json)"},
            "body_base64": {"type": "string", "contentEncoding": "base64"},
            "key": {"type": "string", "minLength": 1, "pattern": "^[^ \\u0001\\u0002]+$"},
            "keys": {"type": "array", "items": {"type": "string", "minLength": 1,
                                                "pattern": "^[^ \\u0001\\u0002]+$"}},
            "tag": {"type": "string", "minLength": 1, "pattern": "^[^\\u0001\\u0002|]+$"},
            "properties": {"type": "object", "additionalProperties": {"type": "string"}},
            "queue": {"type": "integer", "minimum": -1, "maximum": MAX_QUEUES - 1},
            "deliver_at": DELIVER_AT_SCHEMA,
            "delay_ms": {"type": "integer", "minimum": 0, "maximum": max_delay_ms},
            "content_type": {"type": "string"},
        },
        "anyOf": [{"required": ["body"]}, {"required": ["body_base64"]}],
    }


def _batch_schema(envelope: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "type": "object", "additionalProperties": False, "required": ["messages"],
        "properties": {"messages": {"type": "array", "minItems": 1,
                                    "maxItems": MAX_BATCH_MESSAGES, "items": envelope},
                       "queue": {"type": "integer", "minimum": -1, "maximum": MAX_QUEUES - 1}},
    }


CLOUDEVENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["specversion", "id", "source", "type"],
    "properties": {"specversion": {"const": "1.0"}, "id": {"type": "string", "minLength": 1},
                   "source": {"type": "string", "minLength": 1},
                   "type": {"type": "string", "minLength": 1},
                   "datacontenttype": {"type": "string"}, "subject": {"type": "string"},
                   "time": {"type": "string"}, "data": {},
                   "data_base64": {"type": "string", "contentEncoding": "base64"}},
    "propertyNames": {"pattern": "^([a-z0-9]{1,20}|data_base64)$"},
}
PRODUCE_RESULT: dict[str, Any] = {
    "type": "object", "required": ["topic", "queue", "base_offset", "count", "ids"],
    "properties": {"topic": {"type": "string"}, "queue": {"type": "integer"},
                   "base_offset": {"type": "integer"}, "count": {"type": "integer"},
                   "ids": {"type": "array", "items": {"type": "string"}},
                   "store_timestamp": {"type": "integer"}},
}
HALF_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["transaction_id", "message_id", "topic", "group", "stored_at"],
    "properties": {"transaction_id": {"type": "string"}, "message_id": {"type": "string"},
                   "topic": {"type": "string"}, "group": {"type": "string"},
                   "stored_at": {"type": "integer"}, "checks": {"type": "integer"}},
}
MESSAGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "topic", "queue", "offset", "properties", "reconsume_times"],
    "properties": {
        "id": {"type": "string"}, "topic": {"type": "string"}, "queue": {"type": "integer"},
        "offset": {"type": "integer"}, "keys": {"type": "array", "items": {"type": "string"}},
        "tag": {"type": "string"}, "content_type": {"type": "string"},
        "properties": {"type": "object", "additionalProperties": {"type": "string"}},
        "body": {}, "body_base64": {"type": "string"},
        "born_timestamp": {"type": "integer"}, "store_timestamp": {"type": "integer"},
        "reconsume_times": {"type": "integer"},
        "receipt": {"type": "string"}, "invisible_until": {"type": "integer"},
    },
}
MESSAGES_SCHEMA = {"type": "object", "required": ["messages"],
                   "properties": {"messages": {"type": "array", "items": MESSAGE_SCHEMA}}}
CE_LIST_SCHEMA = {"type": "array", "items": CLOUDEVENT_SCHEMA}
TOPIC_OUT: dict[str, Any] = {
    "type": "object", "required": ["name", "queues", "perm", "message_type"],
    "properties": {"name": {"type": "string"}, "queues": {"type": "integer"},
                   "perm": {"type": "integer"}, "message_type": {"type": "string"},
                   "created_at": {"type": "integer"}, "system": {"type": "boolean"},
                   "attributes": {"type": "object", "additionalProperties": {"type": "string"}},
                   "messages": {"type": "integer"}, "messages_in": {"type": "integer"},
                   "bytes_in": {"type": "integer"},
                   "queue_offsets": {"type": "array", "items": {
                       "type": "object", "properties": {
                           "queue": {"type": "integer"}, "min_offset": {"type": "integer"},
                           "max_offset": {"type": "integer"}}}}},
}
GROUP_OUT: dict[str, Any] = {
    "type": "object", "required": ["name"],
    "properties": {"name": {"type": "string"}, "max_reconsume_times": {"type": "integer"},
                   "consume_enable": {"type": "boolean"}, "broadcast": {"type": "boolean"},
                   "created_at": {"type": "integer"}, "lag": {"type": "integer"},
                   "created": {"type": "boolean"},
                   "topics": {"type": "array", "items": {"type": "object"}},
                   "pop": {"type": "array", "items": {"type": "object"}}},
}
ACK_RESULT: dict[str, Any] = {
    "type": "object", "required": ["acked", "failed"],
    "properties": {"acked": {"type": "integer"}, "failed": {"type": "array", "items": {
        "type": "object", "required": ["index", "problem"],
        "properties": {"index": {"type": "integer"}, "receipt": {"type": "string"},
                       "problem": {"$ref": "#/components/schemas/Problem"}}}}},
}
RENEWAL_SCHEMA = {"type": "object", "required": ["receipt", "invisible_until"],
                  "properties": {"receipt": {"type": "string"},
                                 "invisible_until": {"type": "integer"}}}
READ_RESULT: dict[str, Any] = {
    "type": "object", "required": ["status", "messages", "next_offset"],
    "properties": {"status": {"type": "string"}, "messages": {"type": "array",
                                                              "items": MESSAGE_SCHEMA},
                   "next_offset": {"type": "integer"}, "min_offset": {"type": "integer"},
                   "max_offset": {"type": "integer"}},
}
SSE_EVENT_SCHEMA = {
    "type": "object", "required": ["data"],
    "description": "One server-sent event: event 'message' carries a Message (or a "
                   "CloudEvent) as JSON data, 'error' a Problem that ends the stream",
    "properties": {"event": {"enum": ["message", "error"]}, "id": {"type": "string"},
                   "retry": {"type": "integer"},
                   "data": {"type": "string", "contentMediaType": "application/json"}},
}
STATUS_SCHEMA = {"type": "object", "required": ["status"],
                 "properties": {"status": {"type": "string"}}}

TIMER_CANCEL_OUT: dict[str, Any] = {
    "type": "object", "required": ["id", "deliver_at", "timer_offset"],
    "properties": {"id": {"type": "string"},
                   "deliver_at": {"type": "integer", "description": "Epoch ms it was due"},
                   "timer_offset": {"type": "integer"}},
}
P_TOPIC = Param("topic", "path", TOPIC_SCHEMA)
P_GROUP_Q = Param("group", "query", GROUP_SCHEMA, True, "Consumer group")
P_TRANSACTION = Param("transaction", "path",
                      {"type": "string", "minLength": 1, "maxLength": 128},
                      description="The transaction id prepare answered")
P_TAG = Param("tag", "query", {"type": "string", "minLength": 1, "maxLength": 4096},
              description="Tag filter, e.g. A||B")
P_SQL = Param("sql", "query", {"type": "string", "minLength": 1, "maxLength": 4096},
              description="SQL92 property filter (RocketMQ syntax)")
P_ENCODING = Param("encoding", "query", {"type": "string", "enum": ["auto", "base64"]},
                   description="auto: bodies as JSON or text when they are; base64: always "
                               "body_base64")
P_QUEUE_Q = Param("queue", "query", QUEUE_SCHEMA, description="Only this queue")
P_TRACEPARENT = Param("traceparent", "header", {"type": "string", "maxLength": 512},
                      description="W3C Trace Context: on a produce, stored with each message "
                                  "that carries none; on a consume, the consumer's context of "
                                  "the broker's deliver span (an invalid one is ignored)")
P_TRACESTATE = Param("tracestate", "header", {"type": "string", "maxLength": 512},
                     description="W3C Trace Context vendor state, kept with traceparent")


def _ok(schema: Mapping[str, Any], description: str = "OK", ct: str = JSON) -> Resp:
    return Resp(description, {ct: schema})


def _problem(description: str) -> Resp:
    return Resp(description, {PROBLEM_CONTENT_TYPE: {"$ref": "#/components/schemas/Problem"}})


# ---------------------------------------------------------------- helpers

def _accepts(req: Request, *types: str) -> str | None:
    """The first of ``types`` the Accept header allows (``types[0]`` when absent)."""
    accept = req.header(b"accept")
    if not accept:
        return types[0]
    offered = []
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for prm in params.split(";"):
            k, _, v = prm.strip().partition("=")
            if k == "q":
                try:
                    q = float(v)
                except ValueError:
                    q = 0.0
        if q > 0:
            offered.append(media.strip().lower())
    for t in types:
        for o in offered:
            if o == t or o == "*/*" or (o.endswith("/*") and t.startswith(o[:-1])):
                return t
    return None


def _filter(params: Mapping[str, Any]) -> Filter | None:
    tag, sql = params.get("tag"), params.get("sql")
    if tag is not None and sql is not None:
        raise Problem("invalid_parameter", "give tag or sql, not both")
    if sql is not None:
        return parse_filter(sql, "SQL92")
    return parse_filter(tag, "TAG") if tag is not None else None


def _json_body(req: Request) -> Any:
    if req.content_type not in (JSON, ""):
        raise Problem("unsupported_media_type", "send application/json")
    try:
        return codec.loads(req.body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise Problem("malformed_json", str(exc)) from None


def _headers_map(req: Request) -> dict[str, str]:
    return {k.decode("latin-1"): v.decode("latin-1") for k, v in req.headers.items()}


def _trace_context(req: Request) -> dict[str, str]:
    """A request's W3C trace context as message properties: ``traceparent`` (and its
    ``tracestate``) when valid; an invalid one is ignored, as W3C Trace Context says."""
    ctx = parse_traceparent(req.header(b"traceparent"), req.header(b"tracestate"))
    if ctx is None:
        return {}
    out = {TRACEPARENT: ctx.traceparent()}
    if ctx.state:
        out[TRACESTATE] = ctx.state
    return out


def _put_result(r: PutResult) -> dict[str, Any]:
    return {"topic": r.topic, "queue": r.queue_id, "base_offset": r.queue_offset,
            "count": r.count, "ids": r.message_ids, "store_timestamp": r.store_timestamp}


STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_SOURCES = {topicconfig.SOURCE_DYNAMIC_TOPIC: "topic", topicconfig.SOURCE_STATIC_BROKER: "broker",
            topicconfig.SOURCE_DEFAULT: "default"}
CONFIG_OUT = {"type": "object", "required": ["name", "value", "source", "read_only"],
              "properties": {"name": {"type": "string"}, "value": {"type": "string"},
                             "source": {"type": "string", "enum": sorted(_SOURCES.values())},
                             "read_only": {"type": "boolean"}, "type": {"type": "string"},
                             "documentation": {"type": "string"}}}


def _config_json(e: topicconfig.Entry) -> dict[str, Any]:
    return {"name": e.name, "value": e.value, "source": _SOURCES.get(e.source, "default"),
            "read_only": e.read_only, "type": e.type, "documentation": e.doc}


def _topic_json(t: TopicConfig) -> dict[str, Any]:
    return {"name": t.name, "queues": t.queues, "perm": t.perm, "message_type": t.message_type,
            "created_at": t.created_at, "system": t.system, "attributes": dict(t.attributes)}


# What the door's other route modules (admin.py, history.py, webconsole.py) share.
ok_resp, problem_resp, json_body = _ok, _problem, _json_body


class Api:
    """The handlers, bound to one broker and the door's limits."""

    def __init__(self, broker: Broker, limits: Limits, info: Mapping[str, Any],
                 security: bool) -> None:
        self.broker = broker
        self.limits = limits
        # Delivery times are refused past the broker's own horizon, not a door's guess.
        self.max_delay_ms = broker.config.timer_max_delay_ms
        self.info = info
        self.security = security
        self.long_polls = 0
        self.door_metrics = DoorMetrics(broker.metrics, "http")  # messages in and out
        self.long_polls_by_group: dict[str, int] = {}
        self.streams = 0
        self._polls_gauge = broker.metrics.gauge(
            "ferrymq_long_polls", "Long polls waiting, per protocol.", ("protocol",)).labels("http")
        self._streams_gauge = broker.metrics.gauge(
            "ferrymq_streams", "Open message streams, per protocol.", ("protocol",)).labels("http")
        self._openapi: bytes | None = None
        self.routes = self._routes()

    # ------------------------------------------------------------ produce

    async def produce(self, req: Request) -> Response:
        topic = req.params["topic"]
        ct = req.content_type
        if req.params.get("raw"):
            messages, queue = [codec.header_message(topic, req.body, req.header(b"content-type"),
                                                    _headers_map(req),
                                                    max_delay_ms=self.max_delay_ms)[0]], -1
        elif req.header(b"ce-specversion") is not None:
            messages, queue = [codec.cloudevent_binary(
                topic, req.body, req.header(b"content-type"), _headers_map(req))], -1
        elif ct == JSON:
            doc = self._load(req.body)
            messages, queue = self._envelopes(topic, doc)
        elif ct in NDJSON_TYPES:
            items = codec.split_ndjson(req.body)
            messages, queue = self._batch(topic, items, -1)
        elif ct == CE_JSON:
            messages, queue = [codec.cloudevent_structured(topic, self._load(req.body))], -1
        elif ct == CE_BATCH:
            doc = self._load(req.body)
            if not isinstance(doc, list) or not doc:
                raise Problem("invalid_cloudevent", "a CloudEvents batch is a non-empty array")
            if len(doc) > MAX_BATCH_MESSAGES:
                raise Problem("invalid_body", f"at most {MAX_BATCH_MESSAGES} messages a batch")
            messages, queue = [codec.cloudevent_structured(topic, e) for e in doc], -1
        else:
            messages, queue = [codec.header_message(topic, req.body, req.header(b"content-type"),
                                                    _headers_map(req),
                                                    max_delay_ms=self.max_delay_ms)[0]], -1
        trace = _trace_context(req)
        if trace:  # the producer's context, on each message that carries none of its own
            messages = [m if TRACEPARENT in m.properties
                        else m._replace(properties={**m.properties, **trace}) for m in messages]
        if len(messages) == 1:
            m = messages[0]
            result = await self.broker.put(m, principal=req.principal)
        else:
            if queue >= 0:
                messages = [Message(m.topic, m.body, m.properties, queue) for m in messages]
            timed = [self.broker.delivery_time(m.properties) is not None for m in messages]
            if any(timed):
                done = await self._put_split(messages, timed, req.principal)
                self.door_metrics.messages_in(topic, len(messages))
                return json_response(done, 201)
            result = await self.broker.put(messages, principal=req.principal)
        self.door_metrics.messages_in(topic, len(messages))
        return json_response(_put_result(result), 201)

    async def _put_split(self, messages: list[Message], timed: list[bool], who: Principal
                         ) -> dict[str, Any]:
        """A batch with timed messages: a batch is one record, delivered at once, so
        each timed message is stored as its own timer (after every delivery time was
        checked, by ``delivery_time`` above) and the others as one batch. The answer
        lists every id in the request's order; ``timers`` the timed ones (cancel them
        with DELETE /v1/timers/{id}); ``queue`` and ``base_offset`` are the batch's."""
        now = [m for m, t in zip(messages, timed, strict=True) if not t]
        ids: list[str] = []
        timers: list[str] = []
        out: dict[str, Any] = {"topic": messages[0].topic, "count": len(messages)}
        batch_ids: list[str] = []
        if now:
            r = await self.broker.put(now if len(now) > 1 else now[0], principal=who)
            batch_ids = r.message_ids
            out.update(queue=r.queue_id, base_offset=r.queue_offset,
                       store_timestamp=r.store_timestamp)
        it = iter(batch_ids)
        for m, t in zip(messages, timed, strict=True):
            if t:
                tid = (await self.broker.put(m, principal=who)).message_id(0)
                timers.append(tid)
                ids.append(tid)
            else:
                ids.append(next(it))
        out.update(ids=ids, timers=timers)
        return out

    @staticmethod
    def _load(body: bytes) -> Any:
        try:
            return codec.loads(body)
        except (ValueError, UnicodeDecodeError) as exc:
            raise Problem("malformed_json", str(exc)) from None

    def _envelopes(self, topic: str, doc: Any) -> tuple[list[Message], int]:
        if isinstance(doc, dict) and "messages" in doc:
            extra = doc.keys() - {"messages", "queue"}
            if extra:
                raise Problem("invalid_body", f"unknown batch field(s): "
                                              f"{', '.join(sorted(extra))}")
            queue = doc.get("queue", -1)
            if isinstance(queue, bool) or not isinstance(queue, int) or queue < -1:
                raise Problem("invalid_body", "queue must be a queue id (integer >= 0)")
            items = doc["messages"]
            if not isinstance(items, list) or not items:
                raise Problem("invalid_body", "messages must be a non-empty array")
            return self._batch(topic, items, queue)
        m, queue = codec.envelope_message(topic, doc, max_delay_ms=self.max_delay_ms)
        return [m], queue

    def _batch(self, topic: str, items: Any, queue: int) -> tuple[list[Message], int]:
        if not items:
            raise Problem("invalid_body", "an empty batch")
        if len(items) > MAX_BATCH_MESSAGES:
            raise Problem("invalid_body", f"at most {MAX_BATCH_MESSAGES} messages a batch")
        out = []
        for env in items:
            m, q = codec.envelope_message(topic, env, max_delay_ms=self.max_delay_ms)
            if q >= 0:
                if queue >= 0 and q != queue:
                    raise Problem("invalid_body", "a batch is stored in one queue: the "
                                                  "messages name different queues")
                queue = q
            out.append(m)
        if queue >= 0:
            out[0] = Message(topic, out[0].body, out[0].properties, queue)
        return out, queue

    # ------------------------------------------------------------ consume (pop)

    def _long_poll_slot(self, group: str) -> None:
        lim = self.limits
        if self.long_polls >= lim.max_long_polls:
            raise Problem("too_many_long_polls", f"{lim.max_long_polls} long polls are "
                          "waiting already", (("Retry-After", "1"),))
        if self.long_polls_by_group.get(group, 0) >= lim.max_long_polls_per_group:
            raise Problem("too_many_long_polls", f"group {group} has "
                          f"{lim.max_long_polls_per_group} long polls waiting already",
                          (("Retry-After", "1"),))
        self.long_polls += 1
        self._polls_gauge.set(self.long_polls)
        self.long_polls_by_group[group] = self.long_polls_by_group.get(group, 0) + 1

    def _release_slot(self, group: str) -> None:
        self.long_polls -= 1
        self._polls_gauge.set(self.long_polls)
        n = self.long_polls_by_group[group] - 1
        if n:
            self.long_polls_by_group[group] = n
        else:
            del self.long_polls_by_group[group]

    async def consume(self, req: Request) -> Response:
        started = time.time_ns()
        p = req.params
        topic, group = p["topic"], p["group"]
        out_type = _accepts(req, JSON, CE_BATCH, CE_JSON)
        if out_type is None:
            raise Problem("not_acceptable", f"this answers {JSON} or {CE_BATCH}")
        flt = _filter(p)
        self.broker.topic(topic, principal=req.principal)  # 404 before waiting
        wait_s = min(p.get("wait", 0.0), self.limits.max_wait_s)
        invisible_ms = int(p.get("invisible", DEFAULT_INVISIBLE_S) * 1000)

        async def pop(wait_ms: int) -> Any:
            return await self.broker.pop(group, topic, p.get("max", 16), invisible_ms, flt,
                                         queue_id=p.get("queue", -1), wait_ms=wait_ms,
                                         init=p.get("from", "earliest"),
                                         principal=req.principal)

        # First without waiting: a pop that finds messages is no long poll, and skips
        # the disconnect watch (a nursery and a second task per request: ~5% of the CPU
        # of "pop 32 + ack" under load, docs/http.md "Performance").
        popped = await pop(0)
        if not popped and wait_s > 0:
            self._long_poll_slot(group)
            try:
                popped = await req.conn.until_disconnect(partial(pop, int(wait_s * 1000)))
            finally:
                self._release_slot(group)
        if popped:
            self.door_metrics.messages_out(topic, len(popped))
        tracer = self.broker.tracer
        if tracer is not None and popped:  # the deliver span (core/tracing.py)
            tracer.delivered(Delivery("http", group, topic, p.get("queue"),
                                      [x.message for x in popped], started,
                                      parse_traceparent(req.header(b"traceparent"))))
        if out_type != JSON:
            events = [codec.to_cloudevent(x.message, {"ferrymqreceipt": x.receipt,
                                                      "ferrymqinvisibleuntil": x.invisible_until})
                      for x in popped]
            return json_response(events, 200, CE_BATCH)
        enc = p.get("encoding", "auto")
        msgs = []
        for x in popped:
            d = codec.message_json(x.message, enc)
            d["receipt"] = x.receipt
            d["invisible_until"] = x.invisible_until
            msgs.append(d)
        return json_response({"messages": msgs})

    async def peek(self, req: Request) -> Response:
        p = req.params
        msgs = self.broker.peek(p["group"], p["topic"], p.get("max", 16), _filter(p),
                                queue_id=p.get("queue", -1), principal=req.principal)
        enc = p.get("encoding", "auto")
        return json_response({"messages": [codec.message_json(m, enc) for m in msgs]})

    def _check_receipt_topic(self, receipt: str, topic: str) -> None:
        r = self.broker.receipt(receipt)
        if r.topic != topic:
            raise Problem("invalid_parameter", f"the receipt handle is for topic {r.topic}")

    async def ack_one(self, req: Request) -> Response:
        receipt = req.params["receipt"]
        self._check_receipt_topic(receipt, req.params["topic"])
        self.broker.ack(receipt, principal=req.principal)
        return Response(204, b"", JSON)

    async def ack_many(self, req: Request) -> Response:
        doc = _json_body(req)
        if not isinstance(doc, dict) or set(doc) != {"receipts"} \
                or not isinstance(doc["receipts"], list) or not doc["receipts"] \
                or len(doc["receipts"]) > MAX_BATCH_MESSAGES \
                or not all(isinstance(r, str) for r in doc["receipts"]):
            raise Problem("invalid_body", 'send {"receipts": ["...", ...]} (1-10000 strings)')
        receipts = doc["receipts"]
        results = self.broker.ack_batch(receipts, principal=req.principal)
        failed = []
        for i, (receipt, err) in enumerate(zip(receipts, results, strict=True)):
            if err is not None:
                prob = from_ferry_error(err)
                failed.append({"index": i, "receipt": receipt[:1024],
                               "problem": json.loads(problem_body(prob.code, prob.detail))})
        if not failed:
            return Response(204, b"", JSON)
        return json_response({"acked": len(receipts) - len(failed), "failed": failed})

    async def change_invisible(self, req: Request) -> Response:
        receipt = req.params["receipt"]
        self._check_receipt_topic(receipt, req.params["topic"])
        doc = _json_body(req)
        if not isinstance(doc, dict) or set(doc) != {"invisible"}:
            raise Problem("invalid_body", 'send {"invisible": <seconds>}')
        secs = doc["invisible"]
        if isinstance(secs, bool) or not isinstance(secs, int | float):
            raise Problem("invalid_body", "invisible is a number of seconds")
        if not MIN_INVISIBLE_MS <= secs * 1000 <= MAX_INVISIBLE_MS:
            raise Problem("invalid_body", f"invisible must be {MIN_INVISIBLE_MS / 1000}.."
                                          f"{MAX_INVISIBLE_MS // 1000} seconds")
        renewal = self.broker.change_invisible_time(receipt, int(secs * 1000),
                                                    principal=req.principal)
        return json_response({"receipt": renewal.receipt,
                              "invisible_until": renewal.invisible_until})

    # ------------------------------------------------------------ stream (SSE)

    async def stream(self, req: Request) -> StreamResponse:
        p = req.params
        topic = p["topic"]
        group = p.get("group")
        # Event data as CloudEvents when asked for by format=cloudevents or by an
        # Accept header naming the CloudEvents JSON type (next to text/event-stream).
        accept = (req.header(b"accept") or "").lower()
        ce = p.get("format") == "cloudevents" or CE_JSON in accept
        if not ce and _accepts(req, SSE) is None:
            raise Problem("not_acceptable", f"this answers {SSE}")
        t = self.broker.topic(topic, principal=req.principal)
        if not t.readable:
            raise PermissionDenied(f"topic {topic} is not readable")
        flt = _filter(p)
        single = p.get("queue")
        queues = [single] if single is not None else list(range(t.queues))
        if single is not None and single >= t.queues:
            raise Problem("queue_not_found", f"topic {topic} has {t.queues} queues")
        positions = self._stream_start(req, topic, group, queues, single is not None)
        if self.streams >= self.limits.max_streams:
            raise Problem("too_many_long_polls", f"{self.limits.max_streams} streams are open",
                          (("Retry-After", "1"),))
        enc = p.get("encoding", "auto")
        self.streams += 1
        self._streams_gauge.set(self.streams)
        return StreamResponse(200, SSE, self._events(topic, group, queues, positions,
                                                     single is not None, flt, ce, enc,
                                                     req.principal,
                                                     parse_traceparent(
                                                         req.header(b"traceparent"))),
                              [("cache-control", "no-store"), ("x-accel-buffering", "no")])

    def _stream_start(self, req: Request, topic: str, group: str | None, queues: list[int],
                      single: bool) -> dict[int, int]:
        last = req.header(b"last-event-id")
        positions: dict[int, int] = {}
        if last:
            try:
                if single:
                    positions[queues[0]] = int(last) + 1
                else:
                    for part in last.split(","):
                        qid, _, o = part.partition(":")
                        positions[int(qid)] = int(o)
            except ValueError:
                raise Problem("invalid_parameter", "Last-Event-ID is not an id this stream "
                                                   "sent") from None
            if any(o < 0 for o in positions.values()):
                raise Problem("invalid_parameter", "Last-Event-ID holds a negative offset")
        start = req.params.get("from", "latest" if group is None else "earliest")
        for q in queues:
            if q in positions:
                continue
            committed = self.broker.committed_offset(group, topic, q, principal=req.principal) \
                if group else None
            lo, hi = self.broker.queue_bounds(topic, q, principal=req.principal)
            positions[q] = committed if committed is not None else (lo if start == "earliest"
                                                                    else hi)
        return {q: positions[q] for q in queues}

    async def _events(self, topic: str, group: str | None, queues: list[int],
                      pos: dict[int, int], single: bool, flt: Filter | None, ce: bool,
                      enc: str, who: Principal, parent: TraceContext | None = None
                      ) -> AsyncIterator[bytes]:
        broker = self.broker
        end = trio.current_time() + self.limits.stream_max_s
        try:
            yield b"retry: 1000\n\n"
            while trio.current_time() < end:
                sent = False
                for q in queues:
                    try:
                        r = broker.get(group, topic, q, pos[q], SSE_BATCH, READ_MAX_BYTES, flt,
                                       principal=who)
                    except FerryError as exc:
                        prob = from_ferry_error(exc)
                        yield (b"event: error\ndata: " + problem_body(prob.code, prob.detail)
                               + b"\n\n")
                        return
                    tracer = broker.tracer
                    for m in r.messages(pos[q]):
                        pos[q] = m.queue_offset + 1
                        self.door_metrics.messages_out(topic)
                        if tracer is not None:  # the deliver span, one per event
                            tracer.delivered(Delivery("http", group, topic, q, (m,),
                                                      time.time_ns(), parent))
                        yield self._event(m, pos, single, ce, enc)
                        sent = True
                        if group:  # the event is written: the group is past it
                            broker.commit_offset(group, topic, q, pos[q], principal=who)
                    if r.next_offset > pos[q] or r.status.value == "offset_too_small":
                        pos[q] = max(r.next_offset, r.min_offset)
                        if group:
                            broker.commit_offset(group, topic, q, pos[q], principal=who)
                if not sent:
                    got = await broker.wait_any(
                        [(topic, q, pos[q]) for q in queues],
                        max(0.0, min(self.limits.sse_heartbeat_s, end - trio.current_time())),
                        principal=who)
                    if not got:
                        yield b": keep-alive\n\n"
                    if self._gone(topic, who):
                        prob = Problem("topic_not_found", f"topic {topic} was deleted")
                        yield b"event: error\ndata: " + prob.body() + b"\n\n"
                        return
        finally:
            self.streams -= 1
            self._streams_gauge.set(self.streams)

    def _gone(self, topic: str, who: Principal) -> bool:
        """Whether a streamed topic was deleted (or may no longer be seen)."""
        try:
            return self.broker.find_topic(topic, principal=who) is None
        except FerryError:
            return True

    @staticmethod
    def _event(m: ConsumedMessage, pos: dict[int, int], single: bool, ce: bool,
               enc: str) -> bytes:
        eid = str(m.queue_offset) if single else ",".join(f"{q}:{o}" for q, o in pos.items())
        doc = codec.to_cloudevent(m) if ce else codec.message_json(m, enc)
        return (f"id: {eid}\nevent: message\ndata: ".encode()
                + json.dumps(doc, separators=(",", ":")).encode() + b"\n\n")

    # ------------------------------------------------------------ timers

    async def cancel_timer(self, req: Request) -> Response:
        r = await self.broker.cancel_timer(req.params["message_id"], principal=req.principal)
        return json_response({"id": r.message_id, "deliver_at": r.deliver_ms,
                              "timer_offset": r.timer_offset})

    # ------------------------------------------------------------ read by offset

    async def read(self, req: Request) -> Response:
        p = req.params
        topic, q, offset = p["topic"], p["queue"], p["offset"]
        started = time.time_ns()
        r = await self.broker.get_large(None, topic, q, offset, p.get("max", 16),
                                        READ_MAX_BYTES, _filter(p), principal=req.principal)
        enc = p.get("encoding", "auto")
        found = list(r.messages(offset))[:p.get("max", 16)]
        self.door_metrics.messages_out(topic, len(found))
        tracer = self.broker.tracer
        if tracer is not None and found:  # the deliver span (core/tracing.py)
            tracer.delivered(Delivery("http", None, topic, q, found, started,
                                      parse_traceparent(req.header(b"traceparent"))))
        msgs = [codec.message_json(m, enc) for m in found]
        nxt = msgs[-1]["offset"] + 1 if len(msgs) == p.get("max", 16) else r.next_offset
        return json_response({"status": r.status.value, "messages": msgs, "next_offset": nxt,
                              "min_offset": r.min_offset, "max_offset": r.max_offset})

    # ------------------------------------------------------------ admin

    async def list_topics(self, req: Request) -> Response:
        show_system = req.params.get("system", False)
        who = req.principal
        out = []
        for t in self.broker.topics(principal=who):
            if show_system or not t.system:
                doc = _topic_json(t)
                if req.params.get("stats"):
                    st = self.broker.topic_stats(t.name, principal=who)
                    doc.update(messages=st.messages, messages_in=st.messages_in,
                               bytes_in=st.bytes_in)
                out.append(doc)
        return json_response({"topics": out})

    async def create_topic(self, req: Request) -> Response:
        doc = _json_body(req)
        if not isinstance(doc, dict) or "name" not in doc \
                or doc.keys() - {"name", "queues", "perm", "message_type", "attributes"}:
            raise Problem("invalid_body", 'send {"name": ..., "queues"?, "perm"?, '
                                          '"message_type"?, "attributes"?}')
        name = doc["name"]
        if not isinstance(name, str):
            raise Problem("invalid_body", "name must be a string")
        queues = doc.get("queues", self.broker.config.default_queues)
        if isinstance(queues, bool) or not isinstance(queues, int):
            raise Problem("invalid_body", "queues must be an integer")
        perm = doc.get("perm", PERM_READ_WRITE)
        if isinstance(perm, bool) or not isinstance(perm, int):
            raise Problem("invalid_body", "perm must be an integer")
        attrs = doc.get("attributes", {})
        if not isinstance(attrs, dict) or not all(isinstance(v, str) for v in attrs.values()):
            raise Problem("invalid_body", "attributes must be an object of strings")
        mtype = doc.get("message_type", "NORMAL")
        if not isinstance(mtype, str):
            raise Problem("invalid_body", "message_type must be a string")
        t = await self.broker.create_topic(name, queues, perm=perm, message_type=mtype,
                                           attributes=attrs, principal=req.principal)
        return json_response(_topic_json(t), 201, headers=[("location", f"/v1/topics/{name}")])

    async def describe_topic(self, req: Request) -> Response:
        t = self.broker.topic(req.params["topic"], principal=req.principal)
        st = self.broker.topic_stats(t.name, principal=req.principal)
        doc = _topic_json(t)
        doc.update(messages=st.messages, messages_in=st.messages_in, bytes_in=st.bytes_in,
                   queue_offsets=[{"queue": q, "min_offset": lo, "max_offset": hi}
                                  for q, lo, hi in st.queues])
        return json_response(doc)

    async def topic_configs(self, req: Request) -> Response:
        """The topic's configs (core/topicconfig.py), as Kafka's DescribeConfigs lists them."""
        entries = self.broker.describe_topic_configs(req.params["topic"], principal=req.principal)
        return json_response({"configs": [_config_json(e) for e in entries]})

    async def alter_topic_configs(self, req: Request) -> Response:
        """Change configs: ``set`` and ``append``/``subtract`` (list configs) map names to
        values, ``delete`` lists names going back to their defaults; ``validate_only``
        checks without changing. Answers the configs as they are (or would be)."""
        doc = _json_body(req)
        keys = {"set", "delete", "append", "subtract", "validate_only"}
        if not isinstance(doc, dict) or doc.keys() - keys:
            raise Problem("invalid_body", 'send {"set"?: {name: value}, "delete"?: [name], '
                                          '"append"?: {...}, "subtract"?: {...}, '
                                          '"validate_only"?: bool}')
        ops: list[tuple[str, int, str | None]] = []
        for key, op in (("set", topicconfig.OP_SET), ("append", topicconfig.OP_APPEND),
                        ("subtract", topicconfig.OP_SUBTRACT)):
            given = doc.get(key, {})
            if not isinstance(given, dict) or not all(isinstance(v, str) for v in given.values()):
                raise Problem("invalid_body", f"{key} must be an object of strings")
            ops += [(name, op, value) for name, value in given.items()]
        deleted = doc.get("delete", [])
        if not isinstance(deleted, list) or not all(isinstance(n, str) for n in deleted):
            raise Problem("invalid_body", "delete must be a list of names")
        ops += [(name, topicconfig.OP_DELETE, None) for name in deleted]
        validate_only = doc.get("validate_only", False)
        if not isinstance(validate_only, bool):
            raise Problem("invalid_body", "validate_only must be a boolean")
        t = await self.broker.alter_topic_configs(req.params["topic"], ops,
                                                  validate_only=validate_only,
                                                  principal=req.principal)
        return json_response({"validate_only": validate_only,
                              "configs": [_config_json(e) for e in
                                          topicconfig.describe(t.attributes, self.broker.config)]})

    async def delete_topic(self, req: Request) -> Response:
        await self.broker.delete_topic(req.params["topic"], principal=req.principal)
        return Response(204, b"", JSON)

    async def list_groups(self, req: Request) -> Response:
        who = req.principal
        if not req.params.get("stats"):
            return json_response({"groups": [self._group_json(g.name, False, who)
                                             for g in self.broker.groups(principal=who)]})
        # With their lag, and those known only by committed offsets (a Kafka group).
        out = []
        for name in self.broker.known_groups(principal=who):
            g = self.broker.find_group(name, principal=who)
            doc: dict[str, Any] = self._group_json(name, False, who) if g is not None \
                else {"name": name}
            lags = self.broker.group_lags(name, principal=who)
            doc.update(created=g is not None, lag=sum(x.lag for x in lags),
                       topics=[{"topic": t} for t in sorted({x.topic for x in lags})])
            out.append(doc)
        return json_response({"groups": out})

    def _group_json(self, name: str, detail: bool, who: Principal) -> dict[str, Any]:
        g = self.broker.group(name, principal=who)
        doc: dict[str, Any] = {"name": g.name, "max_reconsume_times": g.max_reconsume_times,
                               "consume_enable": g.consume_enable, "broadcast": g.broadcast,
                               "created_at": g.created_at}
        if detail:
            stats = self.broker.group_stats(name, principal=who)
            doc["lag"] = sum(s.lag for s in stats)
            doc["topics"] = [{"topic": s.topic, "lag": s.lag, "messages_out": s.messages_out,
                              "queues": [{"queue": q.queue_id, "committed": q.committed,
                                          "min_offset": q.min_offset,
                                          "max_offset": q.max_offset, "lag": q.lag}
                                         for q in s.queues]} for s in stats]
            doc["pop"] = [{"topic": s.topic, "queue": s.queue_id, "pop_offset": s.pop_offset,
                           "in_flight": s.in_flight, "ready": s.ready}
                          for s in self.broker.pop_status(name, principal=who)]
        return doc

    async def create_group(self, req: Request) -> Response:
        doc = _json_body(req)
        if not isinstance(doc, dict) or "name" not in doc \
                or doc.keys() - {"name", "max_reconsume_times"}:
            raise Problem("invalid_body", 'send {"name": ..., "max_reconsume_times"?}')
        name = doc["name"]
        if not isinstance(name, str):
            raise Problem("invalid_body", "name must be a string")
        settings: dict[str, Any] = {}
        if "max_reconsume_times" in doc:
            mrt = doc["max_reconsume_times"]
            if isinstance(mrt, bool) or not isinstance(mrt, int) or not 0 <= mrt <= 1000:
                raise Problem("invalid_body", "max_reconsume_times must be 0..1000")
            settings["max_reconsume_times"] = mrt
        await self.broker.create_group(name, principal=req.principal, **settings)
        return json_response(self._group_json(name, False, req.principal), 201)

    async def describe_group(self, req: Request) -> Response:
        return json_response(self._group_json(req.params["group"], True, req.principal))

    async def delete_group(self, req: Request) -> Response:
        await self.broker.delete_group(req.params["group"], principal=req.principal)
        return Response(204, b"", JSON)

    async def message_by_id(self, req: Request) -> Response:
        m = self.broker.message_by_id(req.params["id"], principal=req.principal)
        if m is None:
            raise Problem("message_not_found", f"no message with id {req.params['id']}")
        return json_response(codec.message_json(m, req.params.get("encoding", "auto")))

    async def messages_by_key(self, req: Request) -> Response:
        p = req.params
        msgs = self.broker.messages_by_key(p["topic"], p["key"], p.get("max", 32),
                                           principal=req.principal)
        enc = p.get("encoding", "auto")
        return json_response({"messages": [codec.message_json(m, enc) for m in msgs]})

    # ------------------------------------------------------------ operations

    async def healthz(self, req: Request) -> Response:
        return json_response({"status": "ok"})

    async def readyz(self, req: Request) -> Response:
        health = self.broker.health()
        if not health.ready:
            raise Problem("not_ready", health.reason)
        return json_response({"status": "ready"})

    async def metrics(self, req: Request) -> Response:
        return Response(200, self.broker.metrics.render().encode(), METRICS_CONTENT_TYPE)

    async def openapi(self, req: Request) -> Response:
        if self._openapi is None:
            doc = Router(self.routes).openapi(self.info, security=self.security)
            self._openapi = json.dumps(doc, indent=1).encode()
        return Response(200, self._openapi, JSON)

    # ------------------------------------------------------------ transactions

    async def prepare(self, req: Request) -> Response:
        """A half message: stored, invisible until committed (docs/transactions.md)."""
        m, queue = codec.envelope_message(req.params["topic"], _json_body(req),
                                          max_delay_ms=self.max_delay_ms)
        if queue >= 0:
            m = m._replace(queue_id=queue)
        h = await self.broker.prepare(m, req.params["group"], principal=req.principal)
        return json_response({"transaction_id": h.transaction_id, "message_id": h.msg_id,
                              "topic": h.topic, "group": h.producer_group,
                              "stored_at": h.store_timestamp}, 201)

    async def pending(self, req: Request) -> Response:
        """A producer group's open halves: an HTTP producer has no connection the
        broker could check back on, so it asks for its undecided transactions."""
        halves = self.broker.pending_transactions(int(req.params.get("max") or 100),
                                                  req.params.get("group"),
                                                  principal=req.principal)
        return json_response({"transactions": [
            {"transaction_id": h.transaction_id, "message_id": h.msg_id, "topic": h.topic,
             "group": h.producer_group, "stored_at": h.stored_ms, "checks": h.checks}
            for h in halves]})

    async def commit(self, req: Request) -> Response:
        r = await self.broker.end_transaction(req.params["transaction"], "commit",
                                              principal=req.principal)
        assert r is not None
        return json_response(_put_result(r))

    async def rollback(self, req: Request) -> Response:
        await self.broker.end_transaction(req.params["transaction"], "rollback",
                                          principal=req.principal)
        return Response(204, b"", JSON)

    # ------------------------------------------------------------ the table

    def _routes(self) -> list[Route]:
        max_p = Param("max", "query", {"type": "integer", "minimum": 1,
                                       "maximum": MAX_POP_MESSAGES},
                      description="At most this many messages (default 16)")
        receipt_p = Param("receipt", "path", RECEIPT_SCHEMA)
        envelope = _envelope_schema(self.max_delay_ms)
        produce_body: dict[str, dict[str, Any]] = {
            JSON: {"oneOf": [envelope, _batch_schema(envelope)]},
            "application/x-ndjson": {"type": "string",
                                     "description": "One envelope (JSON object) per line"},
            CE_JSON: CLOUDEVENT_SCHEMA,
            CE_BATCH: {"type": "array", "minItems": 1, "items": CLOUDEVENT_SCHEMA},
            "application/octet-stream": {"type": "string", "format": "binary"},
            "text/plain": {"type": "string"},
        }
        return [
            Route("POST", "/v1/topics/{topic}/messages", self.produce, "produce",
                  "Produce one message, a batch, NDJSON, a raw body or CloudEvents", "messages",
                  (P_TOPIC,
                   Param("raw", "query", {"type": "boolean"},
                         description="Store the body as it is, whatever its content type"),
                   Param("FerryMQ-Key", "header", {"type": "string"},
                         description="Raw body: key(s), comma-separated"),
                   Param("FerryMQ-Tag", "header", {"type": "string"}, description="Raw body: tag"),
                   Param("FerryMQ-Delay-Ms", "header", {"type": "string"},
                         description="Raw body: deliver after this many ms"),
                   Param("FerryMQ-Deliver-At", "header", {"type": "string"},
                         description="Raw body: deliver at (epoch ms or RFC 3339)"),
                   P_TRACEPARENT, P_TRACESTATE),
                  produce_body, True,
                  {201: _ok(PRODUCE_RESULT, "Stored: ids, queue and offsets"),
                   403: _problem("The topic is not writable"),
                   404: _problem("No such topic (auto-create off)"),
                   413: _problem("Body or message too large"),
                   415: _problem("Unsupported media type"),
                   507: _problem("Disk full")},
                  "A JSON envelope or {\"messages\": [...]} batch (one record in one queue), "
                  "NDJSON, CloudEvents (structured, batch, or binary with ce-* headers), or "
                  "any other content type as a raw body with FerryMQ-* headers."),
            Route("POST", "/v1/topics/{topic}/transactions", self.prepare, "prepare",
                  "Produce a half message: invisible until its transaction commits",
                  "transactions",
                  (P_TOPIC, Param("group", "query", GROUP_SCHEMA, True, "Producer group")),
                  {JSON: envelope}, True,
                  {201: _ok(HALF_SCHEMA, "The half is stored"),
                   403: _problem("The topic is not writable"),
                   413: _problem("Message too large"),
                   415: _problem("Unsupported media type")}),
            Route("GET", "/v1/transactions", self.pending, "pending_transactions",
                  "Undecided transactions (of one producer group, or all), oldest first",
                  "transactions",
                  (Param("group", "query", GROUP_SCHEMA, False,
                         "Only this producer group's (default: every group's)"),
                   Param("max", "query", {"type": "integer", "minimum": 1, "maximum": 1000},
                         description="At most this many (default 100)")),
                  None, True,
                  {200: _ok({"type": "object", "required": ["transactions"],
                             "properties": {"transactions": {"type": "array",
                                                             "items": HALF_SCHEMA}}},
                            "Open halves")}),
            Route("POST", "/v1/transactions/{transaction}/commit", self.commit, "commit",
                  "Commit: the message becomes visible in its topic, exactly once",
                  "transactions", (P_TRANSACTION,), None, False,
                  {200: _ok(PRODUCE_RESULT, "Delivered to its topic"),
                   404: _problem("No such transaction"),
                   409: _problem("The transaction already ended")}),
            Route("POST", "/v1/transactions/{transaction}/rollback", self.rollback, "rollback",
                  "Roll back: the message is never delivered", "transactions",
                  (P_TRANSACTION,), None, False,
                  {204: Resp("Rolled back"), 404: _problem("No such transaction"),
                   409: _problem("The transaction already ended")}),
            Route("GET", "/v1/topics/{topic}/messages", self.consume, "consume",
                  "Pop messages with receipt handles (long polling)", "messages",
                  (P_TOPIC, P_GROUP_Q, max_p, P_TRACEPARENT,
                   Param("wait", "query", {"type": "number", "minimum": 0, "maximum": 30},
                         description="Long-poll up to this many seconds (capped at 30)"),
                   Param("invisible", "query", {"type": "number", "minimum": 0.1,
                                                "maximum": MAX_INVISIBLE_MS // 1000},
                         description="Seconds the messages stay invisible (default 30)"),
                   P_TAG, P_SQL, P_QUEUE_Q, P_ENCODING,
                   Param("from", "query", {"type": "string", "enum": ["earliest", "latest"]},
                         description="Where a group without position starts")),
                  None, True,
                  {200: Resp("Messages (empty list at the timeout)",
                             {JSON: MESSAGES_SCHEMA, CE_BATCH: CE_LIST_SCHEMA}),
                   403: _problem("The topic is not readable"),
                   406: _problem("Not acceptable"),
                   429: _problem("Too many long polls")}, long=True),
            Route("DELETE", "/v1/topics/{topic}/messages/{receipt}", self.ack_one, "ack",
                  "Ack one message by its receipt handle", "messages", (P_TOPIC, receipt_p),
                  None, True, {204: Resp("Acked"),
                               410: _problem("The receipt is no longer current")}),
            Route("POST", "/v1/topics/{topic}/messages/{receipt}/invisible-time",
                  self.change_invisible, "change_invisible_time",
                  "Change how long a popped message stays invisible", "messages",
                  (P_TOPIC, receipt_p),
                  {JSON: {"type": "object", "required": ["invisible"],
                          "additionalProperties": False,
                          "properties": {"invisible": {"type": "number", "minimum": 0.1,
                                                       "maximum": MAX_INVISIBLE_MS // 1000}}}},
                  True, {200: _ok(RENEWAL_SCHEMA, "The new receipt handle"),
                         410: _problem("The receipt is no longer current")}),
            Route("POST", "/v1/acks", self.ack_many, "ack_batch", "Ack many receipt handles",
                  "messages", (),
                  {JSON: {"type": "object", "required": ["receipts"],
                          "additionalProperties": False,
                          "properties": {"receipts": {"type": "array", "minItems": 1,
                                                      "maxItems": MAX_BATCH_MESSAGES,
                                                      "items": {"type": "string"}}}}},
                  True, {204: Resp("All acked"),
                         200: _ok(ACK_RESULT, "Some handles failed: per-item problems")}),
            Route("GET", "/v1/topics/{topic}/peek", self.peek, "peek",
                  "The messages a pop would get next, without leasing them", "messages",
                  (P_TOPIC, P_GROUP_Q, max_p, P_TAG, P_SQL, P_QUEUE_Q, P_ENCODING), None, True,
                  {200: _ok(MESSAGES_SCHEMA)}),
            Route("GET", "/v1/topics/{topic}/stream", self.stream, "stream",
                  "Server-sent events, one per message; Last-Event-ID resumes", "messages",
                  (P_TOPIC, P_TRACEPARENT,
                   Param("group", "query", GROUP_SCHEMA,
                         description="Commit the stream's position for this group"),
                   P_QUEUE_Q, P_TAG, P_SQL, P_ENCODING,
                   Param("from", "query", {"type": "string", "enum": ["earliest", "latest"]},
                         description="Start without Last-Event-ID or committed offset"),
                   Param("format", "query", {"type": "string", "enum": ["json", "cloudevents"]},
                         description="Event data as message JSON or structured CloudEvents"),
                   Param("Last-Event-ID", "header", {"type": "string", "maxLength": 4096})),
                  None, True,
                  {200: Resp("An endless text/event-stream", {SSE: SSE_EVENT_SCHEMA}),
                   403: _problem("The topic is not readable"),
                   406: _problem("Not acceptable"), 429: _problem("Too many streams")},
                  long=True),
            Route("GET", "/v1/topics/{topic}/queues/{queue}/messages", self.read,
                  "read", "Read a queue from an offset (no group, no receipts)", "messages",
                  (P_TOPIC, Param("queue", "path", QUEUE_SCHEMA),
                   Param("offset", "query", {"type": "integer", "minimum": 0}, True),
                   Param("max", "query", {"type": "integer", "minimum": 1,
                                          "maximum": MAX_READ_MESSAGES}),
                   P_TAG, P_SQL, P_ENCODING, P_TRACEPARENT), None, True,
                  {200: _ok(READ_RESULT), 403: _problem("The topic is not readable")}),
            Route("GET", "/v1/topics/{topic}/keys/{key}", self.messages_by_key,
                  "messages_by_key", "Messages of a topic by key", "admin",
                  (P_TOPIC, Param("key", "path", {"type": "string", "minLength": 1}),
                   Param("max", "query", {"type": "integer", "minimum": 1, "maximum": 256}),
                   P_ENCODING), None, True, {200: _ok(MESSAGES_SCHEMA)}),
            Route("GET", "/v1/messages/{id}", self.message_by_id, "message_by_id",
                  "A message by its id", "admin",
                  (Param("id", "path", {"type": "string", "minLength": 1, "maxLength": 255}),
                   P_ENCODING), None, True, {200: _ok(MESSAGE_SCHEMA)}),
            Route("GET", "/v1/topics", self.list_topics, "list_topics", "List topics", "admin",
                  (Param("system", "query", {"type": "boolean"},
                         description="Include %RETRY%, %DLQ% and other system topics"),
                   Param("stats", "query", {"type": "boolean"},
                         description="Add messages stored, and messages and bytes in since "
                                     "start")),
                  None, True,
                  {200: _ok({"type": "object", "required": ["topics"],
                             "properties": {"topics": {"type": "array", "items": TOPIC_OUT}}})}),
            Route("POST", "/v1/topics", self.create_topic, "create_topic", "Create a topic",
                  "admin", (),
                  {JSON: {"type": "object", "required": ["name"], "additionalProperties": False,
                          "properties": {
                              "name": TOPIC_SCHEMA,
                              "queues": {"type": "integer", "minimum": 1, "maximum": MAX_QUEUES},
                              "perm": {"type": "integer", "enum": [0, 2, 4, 6]},
                              "message_type": {"type": "string", "enum": list(MESSAGE_TYPES)},
                              "attributes": {"type": "object",
                                             "additionalProperties": {"type": "string"}}}}},
                  True, {201: Resp("Created", {JSON: TOPIC_OUT},
                                   {"Location": {"type": "string"}}),
                         409: _problem("The topic exists")}),
            Route("GET", "/v1/topics/{topic}", self.describe_topic, "describe_topic",
                  "A topic with its queues' offsets and counters", "admin", (P_TOPIC,), None,
                  True, {200: _ok(TOPIC_OUT)}),
            Route("GET", "/v1/topics/{topic}/configs", self.topic_configs, "topic_configs",
                  "Every topic config with its value and source (Kafka's names)", "admin",
                  (P_TOPIC,), None, True,
                  {200: _ok({"type": "object", "required": ["configs"],
                             "properties": {"configs": {"type": "array", "items": CONFIG_OUT}}})}),
            Route("PATCH", "/v1/topics/{topic}/configs", self.alter_topic_configs,
                  "alter_topic_configs", "Set, delete, append to or subtract from topic configs",
                  "admin", (P_TOPIC,),
                  {JSON: {"type": "object", "additionalProperties": False, "properties": {
                      "set": STRING_MAP, "append": STRING_MAP, "subtract": STRING_MAP,
                      "delete": {"type": "array", "items": {"type": "string"}},
                      "validate_only": {"type": "boolean"}}}},
                  True, {200: _ok({"type": "object", "required": ["configs"], "properties": {
                      "validate_only": {"type": "boolean"},
                      "configs": {"type": "array", "items": CONFIG_OUT}}}),
                         400: _problem("An unknown config, an invalid value, a read-only config")}),
            Route("DELETE", "/v1/topics/{topic}", self.delete_topic, "delete_topic",
                  "Delete a topic", "admin", (P_TOPIC,), None, True, {204: Resp("Deleted")}),
            Route("GET", "/v1/groups", self.list_groups, "list_groups", "List consumer groups",
                  "admin", (Param("stats", "query", {"type": "boolean"},
                                  description="Add each group's lag, and the groups known "
                                              "only by committed offsets (Kafka's)"),),
                  None, True,
                  {200: _ok({"type": "object", "required": ["groups"],
                             "properties": {"groups": {"type": "array", "items": GROUP_OUT}}})}),
            Route("POST", "/v1/groups", self.create_group, "create_group",
                  "Create a consumer group", "admin", (),
                  {JSON: {"type": "object", "required": ["name"], "additionalProperties": False,
                          "properties": {"name": GROUP_SCHEMA,
                                         "max_reconsume_times": {"type": "integer",
                                                                 "minimum": 0,
                                                                 "maximum": 1000}}}},
                  True, {201: _ok(GROUP_OUT, "Created")}),
            Route("GET", "/v1/groups/{group}", self.describe_group, "describe_group",
                  "A group with its lag per topic and queue, and its pop state", "admin",
                  (Param("group", "path", GROUP_SCHEMA),), None, True, {200: _ok(GROUP_OUT)}),
            Route("DELETE", "/v1/groups/{group}", self.delete_group, "delete_group",
                  "Delete a consumer group and its offsets", "admin",
                  (Param("group", "path", GROUP_SCHEMA),), None, True, {204: Resp("Deleted")}),
            Route("DELETE", "/v1/timers/{message_id}", self.cancel_timer, "cancel_timer",
                  "Cancel a timed message before its delivery time", "timers",
                  (Param("message_id", "path", {"type": "string", "minLength": 1,
                                                "maxLength": 128},
                         description="The id the produce answered for the timed message"),),
                  None, True,
                  {200: _ok(TIMER_CANCEL_OUT),
                   404: _problem("No pending timer has that id (delivered, cancelled, or "
                                 "never timed)")}),
            Route("GET", "/healthz", self.healthz, "healthz", "Liveness", "operations", (),
                  None, True, {200: _ok(STATUS_SCHEMA)}, public=True),
            Route("GET", "/readyz", self.readyz, "readyz", "Readiness: the store takes writes",
                  "operations", (), None, True,
                  {200: _ok(STATUS_SCHEMA), 503: _problem("Not ready")}, public=True),
            Route("GET", "/metrics", self.metrics, "metrics",
                  "Prometheus metrics of the whole broker", "operations", (), None, True,
                  {200: Resp("Prometheus text format 0.0.4",
                             {METRICS_CONTENT_TYPE: {"type": "string"}})}),
            Route("GET", "/openapi.json", self.openapi, "openapi", "This document",
                  "operations", (), None, True, {200: _ok({"type": "object"})}, public=True),
        ]

