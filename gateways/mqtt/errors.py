"""The one place where the core's errors (``core/errors.py``) become MQTT answers, by code.

A core error reaches an MQTT client in three places: a PUBLISH that could not
be stored (PUBACK / PUBREC with a reason code in 5.0), a failure before the
CONNACK (CONNACK with the reason; 3.1.1: its return code), and a failure of
anything else (DISCONNECT with the reason in 5.0; 3.1.1 just closes). 3.1.1
has no negative acknowledgement of a PUBLISH, so each code also says what a
3.1.1 client gets instead: the connection closed, so that it sends the
message again (for failures that may pass: the store, shutting down, the
unknown), or an ordinary acknowledgement with the message dropped and counted
(when sending it again cannot help: it is refused as such).

Every reason code here is one a PUBACK, a PUBREC, a CONNACK and a DISCONNECT
may all carry (5.0 3.4.2.1, 3.5.2.1, 3.2.2.2, 3.14.2.1); a test checks that
every ``FerryError`` code has its line.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...core.errors import FerryError
from ...protocols.mqtt.constants import Reason


@dataclass(frozen=True, slots=True)
class Answer:
    """How one core error code is answered."""

    reason: int  # the MQTT 5 reason code
    close_311: bool  # 3.1.1, a QoS 1/2 PUBLISH: close (the client resends) or ack and drop
    counter: str | None = "publish_failed"  # the door's statistic; "publish_failed" is logged too


_FAILED = Answer(Reason.UNSPECIFIED_ERROR, True)  # may pass: the client sends it again
_INVALID = Answer(Reason.IMPLEMENTATION_SPECIFIC_ERROR, True)

ANSWERS: dict[str, Answer] = {
    "internal_error": _FAILED,
    "invalid_argument": _INVALID,
    "invalid_config": _INVALID,
    "invalid_topic_name": Answer(Reason.TOPIC_NAME_INVALID, False),
    "invalid_group_name": _INVALID,
    "invalid_message": _INVALID,
    "corrupt_message": _INVALID,
    # Over the broker's maximum message size (possible when max_packet_size is
    # raised past it): an imposed limit, and 0x95 may not be used in a PUBACK.
    "message_too_large": Answer(Reason.QUOTA_EXCEEDED, False, None),
    "invalid_filter": _INVALID,
    # auto_create_topics off: the operator may create it, so a 3.1.1 client retries.
    "topic_not_found": _FAILED,
    "topic_exists": _FAILED,
    "queue_not_found": _INVALID,
    "group_not_found": _FAILED,
    "permission_denied": Answer(Reason.NOT_AUTHORIZED, False, None),  # the topic is not writable
    "offset_out_of_range": _INVALID,
    "store_error": _FAILED,
    "flush_failed": _FAILED,
    # Disk pressure refuses writes until there is room again: an imposed limit.
    "disk_full": Answer(Reason.QUOTA_EXCEEDED, True),
    "disk_pressure": Answer(Reason.QUOTA_EXCEEDED, True),
    "shutting_down": _FAILED,
    "invalid_receipt": _INVALID,
    "receipt_stale": _FAILED,
    "message_not_found": _FAILED,
    # A delivery-time user property the broker refuses (docs/mqtt.md, "Delivery time"):
    # only 5.0 clients can ask for one, and they get the reason code.
    "invalid_delay": Answer(Reason.IMPLEMENTATION_SPECIFIC_ERROR, False, "publish_bad_delay"),
    "timer_not_found": _FAILED,
    "transaction_not_found": _FAILED,
    "transaction_already_ended": _FAILED,
    # Broker groups: 0x9C "use another server" may not stand in a PUBACK; the client
    # sends again (3.1.1: after a reconnect, which finds the master).
    "not_leader": _FAILED,
    "not_enough_replicas": _FAILED,
    "replication_timeout": _FAILED,
}


def answer_for(exc: FerryError) -> Answer:
    """The answer to a core error (an unknown code is answered as an internal error)."""
    return ANSWERS.get(exc.code, _FAILED)
