"""The admin API the web console reads (and any other tool may): brokers, a message's life,
dead letters, timers, offsets by time. Each handler is a translation into ``Broker`` calls.

The console (``webconsole.py``, docs/console.md) has no data of its own: every
number it shows comes from these routes and those of ``api.py``, documented in
the same OpenAPI document and fuzzed by schemathesis like the others. The one
route here that changes anything, the dead-letter resend, is an ordinary
authenticated POST: the console sends the credentials its user gave it.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import trio

from ...core.broker import Broker
from ...core.message import ConsumedMessage
from ...core.stats import LifeStep, TimerSchedule
from . import codec
from .api import GROUP_SCHEMA, JSON, MESSAGE_SCHEMA, P_ENCODING, P_TOPIC, json_body, ok_resp, problem_resp
from .app import json_response
from .problems import Problem
from .routing import Param, Route
from .server import Request, Response

MAX_LETTERS = 1000  # dead letters listed or resent by name per request

# ---------------------------------------------------------------- schemas

INT = {"type": "integer"}
STORED_SCHEMA: dict[str, Any] = {
    **MESSAGE_SCHEMA,
    "properties": {**MESSAGE_SCHEMA["properties"], "physical_offset": INT,
                   "batch_index": INT, "store_host": {"type": "string"}},
}
CONSUMER_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["group", "consumed"],
    "properties": {"group": {"type": "string"}, "committed": {"type": ["integer", "null"]},
                   "consumed": {"type": "boolean"},
                   "pop": {"enum": ["leased", "revived", "dead", "acked", None]},
                   "deliveries": INT, "invisible_until": {"type": ["integer", "null"]}},
}
LIFE_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["id", "door", "steps"],
    "properties": {
        "id": {"type": "string"},
        "door": {"type": ["string", "null"],
                 "description": "The door it came in by: http, kafka, mqtt, remoting"},
        "steps": {"type": "array", "items": {
            "type": "object", "required": ["kind", "message", "consumers"],
            "properties": {
                "kind": {"enum": ["produced", "timer", "delivered", "retry", "dead_letter",
                                  "resent", "half", "discarded_half", "copy"]},
                "group": {"type": "string"}, "due": INT, "resent": {"type": "boolean"},
                "message": STORED_SCHEMA,
                "consumers": {"type": "array", "items": CONSUMER_SCHEMA}}}}},
}
LETTER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["offset", "id", "origin_topic", "reconsume_times", "stored_at", "resent"],
    "properties": {"offset": INT, "id": {"type": "string"}, "origin_topic": {"type": "string"},
                   "origin_id": {"type": "string"}, "reconsume_times": INT, "stored_at": INT,
                   "resent": {"type": "boolean"}, "message": MESSAGE_SCHEMA},
}
LETTERS_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["dead_letters", "next_offset"],
    "properties": {"dead_letters": {"type": "array", "items": LETTER_SCHEMA},
                   "next_offset": INT}}
RESEND_BODY: dict[str, Any] = {
    "type": "object", "additionalProperties": False,
    "properties": {
        "letters": {"type": "array", "minItems": 1, "maxItems": MAX_LETTERS,
                    "items": {"oneOf": [{"type": "integer", "minimum": 0},
                                        {"type": "string", "minLength": 1, "maxLength": 255}]},
                    "description": "Dead letters by DLQ offset or message id"},
        "all": {"const": True, "description": "Every letter not resent yet"},
        "force": {"type": "boolean", "description": "Resend letters resent before"}},
    "oneOf": [{"required": ["letters"]}, {"required": ["all"]}],
}
RESENT_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["resent"],
    "properties": {"resent": {"type": "array", "items": {
        "type": "object", "required": ["offset", "id", "topic", "queue", "queue_offset"],
        "properties": {"offset": INT, "id": {"type": "string"}, "topic": {"type": "string"},
                       "queue": INT, "queue_offset": INT}}}}}
CLUSTER_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["brokers", "doors"],
    "properties": {
        "brokers": {"type": "array", "items": {
            "type": "object", "required": ["name", "cluster", "role", "address"],
            "properties": {"name": {"type": "string"}, "cluster": {"type": "string"},
                           "role": {"type": "string"}, "address": {"type": "string"},
                           "started_at": INT, "flush": {"enum": ["sync", "async"]},
                           "messages_in": INT, "topics": INT, "groups": INT,
                           "commitlog": {"type": "object", "properties": {
                               "min_offset": INT, "max_offset": INT, "flushed": INT}}}}},
        "doors": {"type": "array", "items": {
            "type": "object", "required": ["door", "connections", "accepted"],
            "properties": {"door": {"type": "string"}, "connections": INT,
                           "accepted": INT}}}}}
TIMERS_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["start", "hours", "later", "pending", "approximate"],
    "properties": {"start": INT, "hours": {"type": "array", "items": INT}, "later": INT,
                   "pending": INT, "approximate": {"type": "boolean"},
                   "stats": {"type": "object", "additionalProperties": {
                       "type": ["number", "null"]}}}}
OFFSETS_SCHEMA: dict[str, Any] = {
    "type": "object", "required": ["topic", "time", "queues"],
    "properties": {"topic": {"type": "string"}, "time": INT, "queues": {"type": "array", "items": {
        "type": "object", "required": ["queue", "offset"],
        "properties": {"queue": INT, "offset": INT, "min_offset": INT, "max_offset": INT}}}}}


def parse_time(text: str) -> int:
    """Epoch milliseconds, or an RFC 3339 date-time with a zone; raises the
    ``invalid_parameter`` problem."""
    if text.isdigit() and len(text) <= 15:
        return int(text)
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise Problem("invalid_parameter", "time must be epoch milliseconds or an RFC 3339 "
                                           "date-time") from None
    if dt.tzinfo is None:
        raise Problem("invalid_parameter", "time needs a time zone (e.g. Z)")
    return max(0, int(dt.timestamp() * 1000))


def stored_json(m: ConsumedMessage, encoding: str) -> dict[str, Any]:
    """A message as the API shows it, and where it is stored."""
    doc = codec.message_json(m, encoding)
    doc.update(physical_offset=m.physical_offset, batch_index=m.batch_index,
               store_host=_host(m.store_host))
    return doc


def _host(raw: bytes) -> str:
    if len(raw) == 8:
        return f"{raw[0]}.{raw[1]}.{raw[2]}.{raw[3]}:{int.from_bytes(raw[4:8], 'big')}"
    return raw.hex()


def _step_json(s: LifeStep, encoding: str) -> dict[str, Any]:
    doc: dict[str, Any] = {"kind": s.kind, "message": stored_json(s.message, encoding),
                           "consumers": [{"group": c.group, "committed": c.committed,
                                          "consumed": c.consumed, "pop": c.pop,
                                          "deliveries": c.deliveries,
                                          "invisible_until": c.invisible_until}
                                         for c in s.consumers]}
    if s.group is not None:
        doc["group"] = s.group
    if s.due_ms is not None:
        doc["due"] = s.due_ms
    if s.resent is not None:
        doc["resent"] = s.resent
    return doc


TIMERS_CACHE_S = 5.0  # a timer schedule is reused this long: the console refreshes every 5 s


class AdminApi:
    """The console's admin routes, bound to one broker."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        # hours -> (trio time it expires, the schedule): reading the wheel costs tens of
        # milliseconds of the event loop with many timers pending (docs/console.md).
        self._schedules: dict[int, tuple[float, TimerSchedule]] = {}

    async def cluster(self, req: Request) -> Response:
        b = self.broker.broker_info(principal=req.principal)
        doors = self.broker.door_connections(principal=req.principal)
        return json_response({
            "brokers": [{"name": b.name, "cluster": b.cluster, "role": b.role,
                         "address": b.address, "started_at": b.started_at, "flush": b.flush,
                         "messages_in": b.messages_in, "topics": b.topics, "groups": b.groups,
                         "commitlog": {"min_offset": b.commitlog_min,
                                       "max_offset": b.commitlog_max,
                                       "flushed": b.commitlog_flushed}}],
            "doors": [{"door": d, "connections": n, "accepted": a}
                      for d, (n, a) in doors.items()]})

    async def timers(self, req: Request) -> Response:
        hours = req.params.get("hours", 24)
        st = self.broker.timer_stats(principal=req.principal)  # checks the principal
        now = trio.current_time()
        cached = self._schedules.get(hours)
        if cached is not None and cached[0] > now:
            sched = cached[1]
        else:
            sched = self.broker.timer_schedule(hours, principal=req.principal)
            self._schedules[hours] = (now + TIMERS_CACHE_S, sched)
        return json_response({
            "start": sched.start_ms, "hours": list(sched.counts), "later": sched.later,
            "pending": sched.pending, "approximate": sched.approximate,
            "stats": {"scheduled": st.scheduled, "delivered": st.delivered,
                      "cancelled": st.cancelled, "rolled": st.rolled, "dropped": st.dropped,
                      "lateness_p50_ms": st.lateness_p50_ms,
                      "lateness_p99_ms": st.lateness_p99_ms,
                      "lateness_max_ms": st.lateness_max_ms}})

    async def life(self, req: Request) -> Response:
        life = self.broker.message_life(req.params["id"], principal=req.principal)
        enc = req.params.get("encoding", "auto")
        return json_response({"id": life.msg_id, "door": life.door,
                              "steps": [_step_json(s, enc) for s in life.steps]})

    async def dead_letters(self, req: Request) -> Response:
        p = req.params
        offset, limit = p.get("offset", 0), p.get("max", 100)
        letters = self.broker.dead_letters(p["group"], offset, limit, principal=req.principal)
        enc = p.get("encoding", "auto")
        return json_response({
            "dead_letters": [{"offset": d.queue_offset, "id": d.msg_id,
                              "origin_topic": d.origin_topic, "origin_id": d.origin_msg_id,
                              "reconsume_times": d.reconsume_times,
                              "stored_at": d.store_timestamp, "resent": d.resent,
                              "message": codec.message_json(d.message, enc)} for d in letters],
            "next_offset": letters[-1].queue_offset + 1 if letters else offset})

    async def resend(self, req: Request) -> Response:
        doc = _json_object(req)
        if doc.keys() - {"letters", "all", "force"} or ("letters" in doc) == ("all" in doc):
            raise Problem("invalid_body", 'send {"letters": [offset or id, ...]} or '
                                          '{"all": true}, and "force"?')
        force = doc.get("force", False)
        if not isinstance(force, bool):
            raise Problem("invalid_body", "force must be true or false")
        refs: list[str | int] | None = None
        if "letters" in doc:
            letters = doc["letters"]
            if not isinstance(letters, list) or not 1 <= len(letters) <= MAX_LETTERS or not all(
                    (isinstance(r, int) and not isinstance(r, bool) and r >= 0)
                    or (isinstance(r, str) and 0 < len(r) <= 255) for r in letters):
                raise Problem("invalid_body", f"letters: 1-{MAX_LETTERS} DLQ offsets or ids")
            refs = letters
        elif doc["all"] is not True:
            raise Problem("invalid_body", "all must be true")
        done = await self.broker.resend_dead_letters(req.params["group"], refs, force=force,
                                                     principal=req.principal)
        return json_response({"resent": [
            {"offset": r.letter.queue_offset, "id": r.letter.msg_id, "topic": r.put.topic,
             "queue": r.put.queue_id, "queue_offset": r.put.queue_offset} for r in done]})

    async def offsets(self, req: Request) -> Response:
        topic = req.params["topic"]
        when = parse_time(req.params["time"])
        t = self.broker.topic(topic, principal=req.principal)
        queues = []
        for q in range(t.queues):
            lo, hi = self.broker.queue_bounds(topic, q, principal=req.principal)
            queues.append({"queue": q, "offset": self.broker.offset_for_time(
                topic, q, when, principal=req.principal), "min_offset": lo, "max_offset": hi})
        return json_response({"topic": topic, "time": when, "queues": queues})

    def routes(self) -> list[Route]:
        group_p = Param("group", "path", GROUP_SCHEMA)
        return [
            Route("GET", "/v1/cluster", self.cluster, "cluster",
                  "The brokers (name, role, store) and each door's connections", "admin", (),
                  None, True, {200: ok_resp(CLUSTER_SCHEMA)}),
            Route("GET", "/v1/timers", self.timers, "timers",
                  "Pending timers per hour of delivery time, and the timers' counts", "admin",
                  (Param("hours", "query", {"type": "integer", "minimum": 1, "maximum": 168},
                         description="Hours from the current one (default 24)"),),
                  None, True, {200: ok_resp(TIMERS_SCHEMA)}),
            Route("GET", "/v1/messages/{id}/life", self.life, "message_life",
                  "A message's life: its door, every stored copy (timer, retries, dead "
                  "letters, resends) and where each consumer group stands with it", "admin",
                  (Param("id", "path", {"type": "string", "minLength": 1, "maxLength": 255}),
                   P_ENCODING), None, True,
                  {200: ok_resp(LIFE_SCHEMA), 404: problem_resp("No message with this id")}),
            Route("GET", "/v1/groups/{group}/dead-letters", self.dead_letters, "dead_letters",
                  "A group's dead letters (%DLQ%<group>), oldest first", "admin",
                  (group_p, Param("offset", "query", {"type": "integer", "minimum": 0},
                                  description="First DLQ offset (default 0)"),
                   Param("max", "query", {"type": "integer", "minimum": 1,
                                          "maximum": MAX_LETTERS}), P_ENCODING),
                  None, True, {200: ok_resp(LETTERS_SCHEMA)}),
            Route("POST", "/v1/groups/{group}/dead-letters/resend", self.resend,
                  "resend_dead_letters",
                  "Put dead letters back into their original topic (once; again with force)",
                  "admin", (group_p,), {JSON: RESEND_BODY}, True,
                  {200: ok_resp(RESENT_SCHEMA, "Resent: where each letter went"),
                   404: problem_resp("No such dead letter"),
                   415: problem_resp("Unsupported media type")}),
            Route("GET", "/v1/topics/{topic}/offsets", self.offsets, "offsets_for_time",
                  "Each queue's first offset stored at or after a time", "admin",
                  (P_TOPIC, Param("time", "query", {"type": "string", "minLength": 1,
                                                    "maxLength": 64}, True,
                                  "Epoch milliseconds or an RFC 3339 date-time")),
                  None, True, {200: ok_resp(OFFSETS_SCHEMA)}),
        ]


def _json_object(req: Request) -> Mapping[str, Any]:
    doc = json_body(req)
    if not isinstance(doc, dict):
        raise Problem("invalid_body", "send a JSON object")
    return doc
