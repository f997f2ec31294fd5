"""The one place where FerryMQ's core errors become Kafka error codes.

``ERROR_CODES`` maps every ``FerryError.code`` of core/errors.py (a test holds it
to that: tests/test_error_tables.py). Codes no Kafka request can meet (receipts,
timers, transactions of the RocketMQ model) still have an answer: the nearest
Kafka code, so that a future call cannot reach a client as UNKNOWN_SERVER_ERROR
by accident.
"""

from __future__ import annotations

from ...core.errors import FerryError
from ...protocols.kafka import errors as ke

ERROR_CODES: dict[str, int] = {
    "internal_error": ke.UNKNOWN_SERVER_ERROR,
    "invalid_argument": ke.INVALID_REQUEST,
    "invalid_topic_name": ke.INVALID_TOPIC_EXCEPTION,
    "invalid_config": ke.INVALID_CONFIG,
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
    "disk_pressure": ke.KAFKA_STORAGE_ERROR,  # retriable: clients back off and retry
    "invalid_delay": ke.INVALID_RECORD,  # a delivery-time header the broker refuses
    # Retriable for every client: it refreshes metadata and tries again (elsewhere).
    "shutting_down": ke.LEADER_NOT_AVAILABLE,
    # Not met through Kafka requests today (pop, lookups, timers, RocketMQ transactions).
    "invalid_receipt": ke.INVALID_REQUEST,
    "receipt_stale": ke.INVALID_REQUEST,
    "message_not_found": ke.INVALID_REQUEST,
    "timer_not_found": ke.INVALID_REQUEST,
    "transaction_not_found": ke.INVALID_REQUEST,
    "transaction_already_ended": ke.INVALID_REQUEST,
    # Issue 14: broker groups; what a Kafka broker answers in the same cases.
    "not_leader": ke.NOT_LEADER_OR_FOLLOWER,
    "not_enough_replicas": ke.NOT_ENOUGH_REPLICAS,
    "replication_timeout": ke.REQUEST_TIMED_OUT,
}


def kafka_error(exc: FerryError) -> int:
    """The Kafka error code for a core error (UNKNOWN_SERVER_ERROR for anything unmapped,
    which tests/test_error_tables.py keeps from happening). An access refusal names
    the kind of resource refused: GROUP_, CLUSTER_, TRANSACTIONAL_ID_AUTHORIZATION_FAILED."""
    if exc.code == "permission_denied":
        return _DENIED.get(getattr(exc, "resource", "topic"), ke.TOPIC_AUTHORIZATION_FAILED)
    return ERROR_CODES.get(exc.code, ke.UNKNOWN_SERVER_ERROR)


_DENIED = {"topic": ke.TOPIC_AUTHORIZATION_FAILED, "group": ke.GROUP_AUTHORIZATION_FAILED,
           "cluster": ke.CLUSTER_AUTHORIZATION_FAILED,
           "transactional_id": ke.TRANSACTIONAL_ID_AUTHORIZATION_FAILED}
