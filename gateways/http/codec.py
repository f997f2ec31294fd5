"""JSON envelopes, raw bodies and CloudEvents 1.0 to and from broker messages (pure, no I/O).

Produce accepts four shapes (docs/http.md, "Producing"): a JSON envelope or a
batch of them, NDJSON (one envelope per line), a raw body with metadata in
``FerryMQ-*`` headers, and CloudEvents (binary mode: ``ce-*`` headers;
structured mode: ``application/cloudevents+json``; batch mode:
``application/cloudevents-batch+json``).

CloudEvents attributes are stored as message properties named as the
CloudEvents *Kafka* protocol binding names its headers (``ce_id``,
``ce_source``, ..., and ``content-type`` for ``datacontenttype``), because a
FerryMQ property IS a Kafka header (DESIGN.md, "Cross-protocol mapping"): an
event produced over HTTP is a binary-mode CloudEvent to a Kafka consumer too.

Every JSON text this door reads goes through ``loads`` (protocols/boundedjson.py,
``JSON_LIMITS``): a request body past the limits is malformed JSON (400), and a
stored body labelled JSON that is past them, whichever door produced it, is
shown as text (or base64) instead of failing every read of its queue.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

from ...core.message import (
    KEY_SEPARATOR,
    PROPERTY_DOOR,
    PROPERTY_KEYS,
    PROPERTY_TAGS,
    PROPERTY_TIMER_DELAY_MS,
    PROPERTY_TIMER_DELIVER_MS,
    PROPERTY_UNIQ_KEY,
    ConsumedMessage,
    Message,
    now_ms,
)
from ...protocols import boundedjson
from .problems import Problem

DOOR = "http"  # this door's name in the FERRY_DOOR property of what it stores
CONTENT_TYPE_PROPERTY = "content-type"  # as the CloudEvents Kafka binding names it
CE_PREFIX = "ce_"
CE_SPECVERSION = "1.0"
CE_REQUIRED = ("id", "source", "specversion", "type")
# CloudEvents 1.0 section 3.1.1: attribute names are lower-case a-z and 0-9.
CE_ATTRIBUTE = re.compile(r"^[a-z0-9]{1,20}$")
CE_RESERVED = {"data", "data_base64"}
MAX_PROPERTY_NAME = 255
JSON_TYPES = ("application/json", "text/json")
_HEADER_INT = re.compile(r"-?\d{1,15}")

# The body limit (max_body_bytes) bounds a request's size; these bound what a text of
# that size may cost once parsed (docs/http.md, "Limits").
JSON_LIMITS = boundedjson.JsonLimits(max_bytes=64 << 20, max_depth=64, max_containers=200_000)

ENVELOPE_FIELDS = {"body", "body_base64", "key", "keys", "tag", "properties", "queue",
                   "deliver_at", "delay_ms", "content_type"}


def loads(data: bytes | str) -> Any:
    """A JSON text within ``JSON_LIMITS``. Raises ValueError (malformed, or past them)."""
    return boundedjson.loads(data, JSON_LIMITS)


def is_json_type(ct: str | None) -> bool:
    if not ct:
        return False
    ct = ct.split(";", 1)[0].strip().lower()
    return ct in JSON_TYPES or ct.endswith("+json")


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise Problem("invalid_body", f"{what} must be a string")
    if "\x01" in value or "\x02" in value:
        raise Problem("invalid_body", f"{what} must not contain the characters \\x01 or \\x02")
    return value


def _horizon(ms: int) -> str:
    """``ms`` in words for a problem's detail: "365 days", "2 hours", "1500 ms"."""
    for unit, size in (("day", 86_400_000), ("hour", 3_600_000), ("minute", 60_000),
                       ("second", 1000)):
        if ms >= size and ms % size == 0:
            n = ms // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{ms} ms"


def _delivery(props: dict[str, str], deliver_at: Any, delay_ms: Any, max_delay_ms: int) -> None:
    """Store a delivery time as the TIMER_DELIVER_MS / TIMER_DELAY_MS property (core/timers.py
    acts on them). ``max_delay_ms`` is the broker's horizon (``timer_max_delay_ms``):
    refused here already, with the door's own problem."""
    if deliver_at is not None and delay_ms is not None:
        raise Problem("invalid_body", "give deliver_at or delay_ms, not both")
    if deliver_at is not None:
        if isinstance(deliver_at, str):
            try:
                dt = datetime.fromisoformat(deliver_at.replace("Z", "+00:00"))
            except ValueError:
                raise Problem("invalid_body", "deliver_at must be epoch milliseconds or an "
                                              "RFC 3339 date-time") from None
            if dt.tzinfo is None:
                raise Problem("invalid_body", "deliver_at needs a time zone (e.g. Z)")
            deliver_at = int(dt.timestamp() * 1000)
        if isinstance(deliver_at, bool) or not isinstance(deliver_at, int):
            raise Problem("invalid_body", "deliver_at must be epoch milliseconds or an "
                                          "RFC 3339 date-time")
        if deliver_at < 0 or deliver_at > now_ms() + max_delay_ms:
            raise Problem("invalid_body", f"deliver_at must lie between the epoch and "
                                          f"{_horizon(max_delay_ms)} from now")
        props[PROPERTY_TIMER_DELIVER_MS] = str(deliver_at)
    elif delay_ms is not None:
        if isinstance(delay_ms, bool) or not isinstance(delay_ms, int) \
                or not 0 <= delay_ms <= max_delay_ms:
            raise Problem("invalid_body", f"delay_ms must be an integer 0..{max_delay_ms}")
        props[PROPERTY_TIMER_DELAY_MS] = str(delay_ms)


def envelope_message(topic: str, env: Any, *, max_delay_ms: int) -> tuple[Message, int]:
    """One JSON envelope as a Message and its queue id (-1: the broker picks).
    ``max_delay_ms``: the latest delivery time accepted, from now (the broker's)."""
    if not isinstance(env, dict):
        raise Problem("invalid_body", "a message envelope must be a JSON object")
    unknown = env.keys() - ENVELOPE_FIELDS
    if unknown:
        raise Problem("invalid_body", f"unknown envelope field(s): {', '.join(sorted(unknown))}")
    props: dict[str, str] = {}
    raw_props = env.get("properties")
    if raw_props is not None:
        if not isinstance(raw_props, dict):
            raise Problem("invalid_body", "properties must be an object of strings")
        for k, v in raw_props.items():
            if not k or len(k) > MAX_PROPERTY_NAME:
                raise Problem("invalid_body", "a property name must be 1-255 characters")
            props[_text(k, "a property name")] = _text(v, f"property {k}")
    content_type = env.get("content_type")
    if "body_base64" in env:
        if "body" in env:
            raise Problem("invalid_body", "give body or body_base64, not both")
        body = decode_base64(env["body_base64"])
    elif "body" in env:
        value = env["body"]
        if isinstance(value, str):
            body = value.encode()
        else:
            body = json.dumps(value, separators=(",", ":")).encode()
            content_type = content_type or "application/json"
    else:
        raise Problem("invalid_body", "a message needs body or body_base64")
    if content_type is not None:
        props[CONTENT_TYPE_PROPERTY] = _text(content_type, "content_type")
    keys = env.get("keys", env.get("key"))
    if keys is not None:
        if "key" in env and "keys" in env:
            raise Problem("invalid_body", "give key or keys, not both")
        if isinstance(keys, str):
            keys = [keys]
        if not isinstance(keys, list) or not all(isinstance(k, str) and k for k in keys):
            raise Problem("invalid_body", "keys must be non-empty strings")
        if any(KEY_SEPARATOR in k for k in keys):
            raise Problem("invalid_body", "a key must not contain spaces")
        props[PROPERTY_KEYS] = _text(KEY_SEPARATOR.join(keys), "keys")
    tag = env.get("tag")
    if tag is not None:
        if not _text(tag, "tag") or "||" in tag:
            raise Problem("invalid_body", "a tag is a non-empty string without '||'")
        props[PROPERTY_TAGS] = tag
    if "deliver_at" in env or "delay_ms" in env:
        _delivery(props, env.get("deliver_at"), env.get("delay_ms"), max_delay_ms)
    queue = env.get("queue", -1)
    if isinstance(queue, bool) or not isinstance(queue, int) or queue < -1:
        raise Problem("invalid_body", "queue must be a queue id (integer >= 0)")
    props[PROPERTY_DOOR] = DOOR  # last: a client's own FERRY_DOOR never stands
    return Message(topic, body, props, queue), queue


def decode_base64(value: Any) -> bytes:
    if not isinstance(value, str):
        raise Problem("invalid_base64", "body_base64 must be a string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise Problem("invalid_base64", "body_base64 is not valid base64 (RFC 4648)") from None


def header_message(topic: str, body: bytes, content_type: str | None,
                   header: Mapping[str, str], *, max_delay_ms: int) -> tuple[Message, int]:
    """A raw body with its metadata in headers (names lower-case, ``ferrymq-`` prefix:
    key (comma-separated), tag, queue, deliver-at, delay-ms, and property-<name> per
    property; values percent-decoded), read as the envelope they spell."""
    props = {unquote(name[len("ferrymq-property-"):]): unquote(value)
             for name, value in header.items() if name.startswith("ferrymq-property-")}
    env: dict[str, Any] = {"body": "", "properties": props}
    if content_type:
        env["content_type"] = content_type
    if "ferrymq-key" in header:
        env["keys"] = [k for k in unquote(header["ferrymq-key"]).split(",") if k] or [""]
    if "ferrymq-tag" in header:
        env["tag"] = unquote(header["ferrymq-tag"])
    for h, f in (("ferrymq-queue", "queue"), ("ferrymq-delay-ms", "delay_ms")):
        if h in header:
            v = header[h].strip()
            if not _HEADER_INT.fullmatch(v):
                raise Problem("invalid_parameter", f"{h} must be an integer")
            env[f] = int(v)
    if "ferrymq-deliver-at" in header:
        v = header["ferrymq-deliver-at"].strip()
        env["deliver_at"] = int(v) if _HEADER_INT.fullmatch(v) else v
    m, queue = envelope_message(topic, env, max_delay_ms=max_delay_ms)
    return m._replace(body=body), queue


# ---------------------------------------------------------------- CloudEvents

def _ce_value(name: str, value: Any) -> str:
    if name == "specversion" and value != CE_SPECVERSION:
        raise Problem("invalid_cloudevent", f"specversion must be {CE_SPECVERSION}")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if not isinstance(value, str):
        raise Problem("invalid_cloudevent", f"attribute {name} must be a string, "
                                            "integer or boolean")
    return _text(value, f"attribute {name}")


def _ce_check(props: Mapping[str, str]) -> None:
    for attr in CE_REQUIRED:
        if not props.get(CE_PREFIX + attr):
            raise Problem("invalid_cloudevent", f"a CloudEvent needs a non-empty {attr}")


def cloudevent_binary(topic: str, body: bytes, content_type: str | None,
                      headers: Mapping[str, str]) -> Message:
    """Binary mode (CloudEvents HTTP binding 3.1): attributes in ``ce-*`` headers,
    percent-encoded; the body is the data."""
    props: dict[str, str] = {}
    for name, value in headers.items():
        if name.startswith("ce-"):
            attr = name[3:]
            if not CE_ATTRIBUTE.match(attr):
                raise Problem("invalid_cloudevent", f"bad attribute name {attr!r}")
            props[CE_PREFIX + attr] = _ce_value(attr, unquote(value))
    _ce_check(props)
    if content_type:
        props[CONTENT_TYPE_PROPERTY] = content_type
    props[PROPERTY_DOOR] = DOOR
    return Message(topic, body, props)


def cloudevent_structured(topic: str, event: Any) -> Message:
    """Structured mode (CloudEvents JSON format 1.0): one event object."""
    if not isinstance(event, dict):
        raise Problem("invalid_cloudevent", "a structured CloudEvent is a JSON object")
    props: dict[str, str] = {}
    for attr, value in event.items():
        if attr in CE_RESERVED:
            continue
        if not CE_ATTRIBUTE.match(attr):
            raise Problem("invalid_cloudevent", f"bad attribute name {attr!r}")
        if value is None:
            continue
        if attr == "datacontenttype":
            props[CONTENT_TYPE_PROPERTY] = _ce_value(attr, value)
        else:
            props[CE_PREFIX + attr] = _ce_value(attr, value)
    _ce_check(props)
    if "data" in event and "data_base64" in event:
        raise Problem("invalid_cloudevent", "give data or data_base64, not both")
    if "data_base64" in event:
        body = decode_base64(event["data_base64"])
    elif "data" in event:
        data = event["data"]
        ct = props.get(CONTENT_TYPE_PROPERTY)
        if isinstance(data, str) and not is_json_type(ct):
            body = data.encode()
        else:
            body = json.dumps(data, separators=(",", ":")).encode()
            if ct is None:
                props[CONTENT_TYPE_PROPERTY] = "application/json"
    else:
        body = b""
    props[PROPERTY_DOOR] = DOOR
    return Message(topic, body, props)


def _rfc3339(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds") \
        .replace("+00:00", "Z")


def to_cloudevent(m: ConsumedMessage, extra: Mapping[str, Any] | None = None
                  ) -> dict[str, Any]:
    """A stored message as a structured CloudEvent. A message produced as a
    CloudEvent gets its own attributes back; any other gets id = message id,
    source = /topics/<topic>, type = ferrymq.message, time = store time."""
    props = m.properties
    ev: dict[str, Any] = {}
    for k, v in props.items():
        if k.startswith(CE_PREFIX) and CE_ATTRIBUTE.match(k[3:]):
            ev[k[3:]] = v
    ev.setdefault("specversion", CE_SPECVERSION)
    ev.setdefault("id", m.msg_id)
    ev.setdefault("source", f"/topics/{m.topic}")
    ev.setdefault("type", "ferrymq.message")
    ev.setdefault("time", _rfc3339(m.store_timestamp))
    ct = props.get(CONTENT_TYPE_PROPERTY)
    if ct:
        ev["datacontenttype"] = ct
    if m.tags:
        ev.setdefault("ferrymqtag", m.tags)
    keys = m.keys
    if keys:
        ev.setdefault("subject", keys[0])
    ev["ferrymqtopic"] = m.topic
    ev["ferrymqqueue"] = m.queue_id
    ev["ferrymqoffset"] = m.queue_offset
    if extra:
        ev.update(extra)
    body = m.body
    if is_json_type(ct):
        try:
            ev["data"] = loads(body)
            return ev
        except ValueError:
            pass
    try:
        ev["data"] = body.decode("utf-8")
        if not ct:
            ev["datacontenttype"] = "text/plain"
    except UnicodeDecodeError:
        ev["data_base64"] = base64.b64encode(body).decode()
    return ev


# ---------------------------------------------------------------- consumed messages

HIDDEN_PROPERTIES = {PROPERTY_KEYS, PROPERTY_TAGS, CONTENT_TYPE_PROPERTY}


def message_json(m: ConsumedMessage, encoding: str = "auto") -> dict[str, Any]:
    """A consumed message as the HTTP API shows it (schema ``Message``). Per message of
    every pop answer: the properties are decoded once into a dict and read from it
    (a stored message's are still encoded: each lookup there is a scan)."""
    props = m.properties
    if props:
        if type(props) is not dict:
            props = dict(props.items())
        shown = {k: v for k, v in props.items() if k not in HIDDEN_PROPERTIES}
        get = props.get
        msg_id = get(PROPERTY_UNIQ_KEY) or m.offset_msg_id
        raw_keys, tag, ct = get(PROPERTY_KEYS), get(PROPERTY_TAGS), get(CONTENT_TYPE_PROPERTY)
    else:
        shown, msg_id, raw_keys, tag, ct = {}, m.offset_msg_id, None, None, None
    out: dict[str, Any] = {
        "id": msg_id, "topic": m.topic, "queue": m.queue_id, "offset": m.queue_offset,
        "born_timestamp": m.born_timestamp, "store_timestamp": m.store_timestamp,
        "reconsume_times": m.reconsume_times, "properties": shown,
    }
    if raw_keys:
        keys = [k for k in raw_keys.split(KEY_SEPARATOR) if k]
        if keys:
            out["keys"] = keys
    if tag:
        out["tag"] = tag
    if ct:
        out["content_type"] = ct
    body = m.body
    if encoding != "base64":
        if ct and is_json_type(ct):
            try:
                out["body"] = loads(body)
                return out
            except ValueError:
                pass
        try:
            out["body"] = body.decode("utf-8")
            return out
        except UnicodeDecodeError:
            pass
    out["body_base64"] = base64.b64encode(body).decode()
    return out


def split_ndjson(body: bytes) -> Sequence[Any]:
    """The JSON values of an NDJSON body, one per non-blank line."""
    lines = [line for line in body.split(b"\n") if line.strip()]
    try:
        # One C call for the whole body; a line that is not exactly one value
        # (bad JSON, or "1,2") falls back to line by line, to name the line.
        values = loads(b"[" + b",".join(lines) + b"]")
        if len(values) == len(lines):
            return values
    except (ValueError, UnicodeDecodeError):
        pass
    out = []
    for n, line in enumerate(body.split(b"\n"), 1):
        if line.strip():
            try:
                out.append(loads(line))
            except (ValueError, UnicodeDecodeError) as exc:
                raise Problem("malformed_json", f"line {n}: {exc}") from None
    return out
