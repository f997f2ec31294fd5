"""Every HTTP error as an RFC 9457 problem+json; the one table mapping core error codes to HTTP.

A problem's ``type`` is a stable URN per error kind (``urn:ferrymq:problem:<code>``,
the ``code`` being the core's ``FerryError.code`` or an HTTP-only kind below);
``title`` is fixed per kind; ``detail`` says what happened this time. Clients
branch on ``type`` (or the same ``code`` member), never on ``detail``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ...core.errors import FerryError

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:ferrymq:problem:"

# code -> (HTTP status, title). Core codes first (core/errors.py), then the
# door's own. Anything absent is a bug: 500 internal_error.
PROBLEMS: dict[str, tuple[int, str]] = {
    "invalid_argument": (400, "Invalid argument"),
    "invalid_topic_name": (400, "Invalid topic name"),
    "invalid_config": (400, "Invalid topic config"),
    "invalid_group_name": (400, "Invalid group name"),
    "invalid_message": (400, "Invalid message"),
    "corrupt_message": (400, "Corrupt message"),
    "message_too_large": (413, "Message too large"),
    "invalid_filter": (400, "Invalid filter expression"),
    "topic_not_found": (404, "Topic not found"),
    "topic_exists": (409, "Topic exists"),
    "queue_not_found": (404, "Queue not found"),
    "group_not_found": (404, "Consumer group not found"),
    "permission_denied": (403, "Permission denied"),
    "offset_out_of_range": (400, "Offset out of range"),
    "store_error": (503, "Store unavailable"),
    "flush_failed": (503, "Store unavailable: flush failed"),
    "disk_full": (507, "Disk full"),
    "disk_pressure": (507, "Disk above its high watermark: writes refused for now"),
    "shutting_down": (503, "Shutting down"),
    "invalid_receipt": (400, "Invalid receipt handle"),
    "receipt_stale": (410, "Receipt handle no longer valid"),
    "invalid_delay": (400, "Invalid delivery time or delay"),
    "timer_not_found": (404, "No such pending timer"),
    "transaction_not_found": (404, "Transaction not found"),
    "transaction_already_ended": (409, "Transaction already ended"),
    "not_leader": (503, "Not the group's master"),
    "not_enough_replicas": (503, "Not enough in-sync replicas"),
    "replication_timeout": (504, "Replication timed out"),
    "internal_error": (500, "Internal error"),
    # The HTTP door's own kinds.
    "bad_request": (400, "Malformed HTTP request"),
    "malformed_json": (400, "Malformed JSON"),
    "invalid_body": (400, "Invalid request body"),
    "invalid_parameter": (400, "Invalid parameter"),
    "invalid_base64": (400, "Invalid base64"),
    "invalid_cloudevent": (400, "Invalid CloudEvent"),
    "unauthorized": (401, "Unauthorized"),
    "cors_refused": (403, "Cross-origin request refused"),
    "not_found": (404, "Not found"),
    "message_not_found": (404, "Message not found"),
    "method_not_allowed": (405, "Method not allowed"),
    "not_acceptable": (406, "Not acceptable"),
    "request_timeout": (408, "Request timeout"),
    "body_too_large": (413, "Request body too large"),
    "unsupported_media_type": (415, "Unsupported media type"),
    "headers_too_large": (431, "Request header fields too large"),
    "too_many_long_polls": (429, "Too many long polls"),
    "too_many_connections": (503, "Too many connections"),
    "not_ready": (503, "Not ready"),
    "http_version_not_supported": (505, "HTTP version not supported"),
}


@dataclass
class Problem(Exception):
    """Raise anywhere in the door to answer with this problem."""

    code: str
    detail: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        if self.code not in PROBLEMS:
            raise ValueError(f"unknown problem code {self.code!r}")

    @property
    def status(self) -> int:
        return PROBLEMS[self.code][0]

    def body(self, instance: str | None = None) -> bytes:
        return problem_body(self.code, self.detail, instance)


def from_ferry_error(exc: FerryError) -> Problem:
    """The problem for a core error: by its stable code, else by its nearest ancestor's."""
    for cls in type(exc).__mro__:
        code = getattr(cls, "code", None)
        if code in PROBLEMS:
            return Problem(code, exc.detail)
    return Problem("internal_error", exc.detail)


def problem_body(code: str, detail: str = "", instance: str | None = None) -> bytes:
    status, title = PROBLEMS[code]
    doc: dict[str, object] = {"type": TYPE_PREFIX + code, "title": title, "status": status,
                              "code": code}
    if detail:
        doc["detail"] = detail
    if instance:
        doc["instance"] = instance
    return json.dumps(doc).encode()


PROBLEM_SCHEMA: dict[str, object] = {
    "type": "object",
    "required": ["type", "title", "status", "code"],
    "properties": {
        "type": {"type": "string", "format": "uri"},
        "title": {"type": "string"},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "code": {"type": "string", "enum": sorted(PROBLEMS)},
    },
}
