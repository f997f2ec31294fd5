"""The one place where FerryMQ's core errors become RocketMQ response codes.

``ERROR_CODES`` maps every ``FerryError.code`` of core/errors.py (a test holds it
to that: tests/test_error_tables.py); docs/remoting.md, "Errors", gives the
reasons. The remark of the response carries the error's detail.
"""

from __future__ import annotations

from ...core.errors import FerryError
from ...protocols.remoting import ResponseCode

ERROR_CODES: dict[str, int] = {
    "internal_error": ResponseCode.SYSTEM_ERROR,
    "invalid_argument": ResponseCode.INVALID_PARAMETER,
    "invalid_topic_name": ResponseCode.INVALID_PARAMETER,
    "invalid_config": ResponseCode.INVALID_PARAMETER,
    "invalid_group_name": ResponseCode.INVALID_PARAMETER,
    "invalid_message": ResponseCode.MESSAGE_ILLEGAL,
    "corrupt_message": ResponseCode.MESSAGE_ILLEGAL,
    "message_too_large": ResponseCode.MESSAGE_ILLEGAL,
    "invalid_filter": ResponseCode.SUBSCRIPTION_PARSE_FAILED,
    "topic_not_found": ResponseCode.TOPIC_NOT_EXIST,
    "topic_exists": ResponseCode.TOPIC_EXIST_ALREADY,
    "queue_not_found": ResponseCode.INVALID_PARAMETER,
    "group_not_found": ResponseCode.SUBSCRIPTION_GROUP_NOT_EXIST,
    "permission_denied": ResponseCode.NO_PERMISSION,
    "offset_out_of_range": ResponseCode.INVALID_PARAMETER,
    "store_error": ResponseCode.SERVICE_NOT_AVAILABLE,
    "flush_failed": ResponseCode.SERVICE_NOT_AVAILABLE,
    "disk_full": ResponseCode.SERVICE_NOT_AVAILABLE,
    "disk_pressure": ResponseCode.SYSTEM_BUSY,  # the remark says why (disk above its watermark)
    "shutting_down": ResponseCode.SERVICE_NOT_AVAILABLE,
    # Issue 6: timers, transactions, pop, dead letters.
    "invalid_delay": ResponseCode.MESSAGE_ILLEGAL,  # RocketMQ: "timer message illegal"
    "invalid_receipt": ResponseCode.INVALID_PARAMETER,
    "receipt_stale": ResponseCode.NO_MESSAGE,
    "message_not_found": ResponseCode.QUERY_NOT_FOUND,
    "timer_not_found": ResponseCode.QUERY_NOT_FOUND,
    "transaction_not_found": ResponseCode.SYSTEM_ERROR,  # RocketMQ's answer, with a remark
    "transaction_already_ended": ResponseCode.ILLEGAL_OPERATION,
    # Issue 14: broker groups. A slave refuses writes as RocketMQ's does (SERVICE_NOT_AVAILABLE,
    # "the broker is a slave"); the two SYNC_MASTER answers keep RocketMQ's codes.
    "not_leader": ResponseCode.SERVICE_NOT_AVAILABLE,
    "not_enough_replicas": ResponseCode.SLAVE_NOT_AVAILABLE,
    "replication_timeout": ResponseCode.FLUSH_SLAVE_TIMEOUT,
}


def error_code(exc: FerryError) -> int:
    """The RocketMQ response code for a core error (SYSTEM_ERROR for anything unmapped,
    which tests/test_error_tables.py keeps from happening)."""
    return ERROR_CODES.get(exc.code, ResponseCode.SYSTEM_ERROR)
