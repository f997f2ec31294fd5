"""The one place where FerryMQ's core errors become Kafka error codes."""

from __future__ import annotations

from ...core.errors import FerryError
from ...protocols.kafka import errors as ke

_BY_CODE: dict[str, int] = {
    "invalid_argument": ke.INVALID_REQUEST,
    "invalid_topic_name": ke.INVALID_TOPIC_EXCEPTION,
    "invalid_group_name": ke.INVALID_GROUP_ID,
    "invalid_message": ke.CORRUPT_MESSAGE,
    "corrupt_message": ke.CORRUPT_MESSAGE,
    "message_too_large": ke.MESSAGE_TOO_LARGE,
    "invalid_filter": ke.INVALID_REQUEST,
    "topic_not_found": ke.UNKNOWN_TOPIC_OR_PARTITION,
    "topic_exists": ke.TOPIC_ALREADY_EXISTS,
    "queue_not_found": ke.UNKNOWN_TOPIC_OR_PARTITION,
    "group_not_found": ke.GROUP_ID_NOT_FOUND,
    "permission_denied": ke.TOPIC_AUTHORIZATION_FAILED,
    "offset_out_of_range": ke.OFFSET_OUT_OF_RANGE,
    "store_error": ke.KAFKA_STORAGE_ERROR,
    "flush_failed": ke.KAFKA_STORAGE_ERROR,
    "disk_full": ke.KAFKA_STORAGE_ERROR,
    "invalid_delay": ke.INVALID_RECORD,  # a delivery-time header the broker refuses
    # Retriable for every client: it refreshes metadata and tries again (elsewhere).
    "shutting_down": ke.LEADER_NOT_AVAILABLE,
}


def kafka_error(exc: FerryError) -> int:
    """The Kafka error code for a core error (UNKNOWN_SERVER_ERROR for anything unmapped)."""
    return _BY_CODE.get(exc.code, ke.UNKNOWN_SERVER_ERROR)
