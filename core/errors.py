"""The broker's one exception hierarchy: every error a caller of ``Broker`` can see.

Each class carries a stable ``code`` (a short snake-case string that never
changes once released) and whether retrying the same call may succeed. Gateways
map these onto their protocol's errors (a Kafka error code, a RocketMQ response
code, an MQTT reason code, an HTTP problem type) by ``code``; nothing else of
an exception's text is part of any contract. Any other exception escaping the
core is a bug.
"""

from __future__ import annotations


class FerryError(Exception):
    """Base of every error the core raises on purpose."""

    code = "internal_error"
    retriable = False

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.__class__.__doc__ or self.code)
        self.detail = detail or (self.__class__.__doc__ or self.code).strip()


class InvalidArgument(FerryError):
    """A request argument is malformed or out of range."""

    code = "invalid_argument"


class InvalidConfig(InvalidArgument):
    """A topic config is unknown, read-only here, or its value is invalid (core/topicconfig.py)."""

    code = "invalid_config"


class InvalidTopicName(InvalidArgument):
    """The topic name breaks the naming rules."""

    code = "invalid_topic_name"


class InvalidGroupName(InvalidArgument):
    """The group name breaks the naming rules."""

    code = "invalid_group_name"


class InvalidMessage(InvalidArgument):
    """The message cannot be stored as given (bad properties, batch or record)."""

    code = "invalid_message"


class CorruptMessage(InvalidMessage):
    """The message failed its integrity check (CRC, sizes)."""

    code = "corrupt_message"


class MessageTooLarge(InvalidArgument):
    """The message is larger than the broker's maximum message size."""

    code = "message_too_large"


class InvalidFilter(InvalidArgument):
    """The tag or SQL92 filter expression cannot be parsed."""

    code = "invalid_filter"


class TopicNotFound(FerryError):
    """No such topic (and auto-create is off or not applicable)."""

    code = "topic_not_found"


class TopicExists(FerryError):
    """A topic with that name exists already."""

    code = "topic_exists"


class QueueNotFound(InvalidArgument):
    """The topic has no queue with that id."""

    code = "queue_not_found"


class GroupNotFound(FerryError):
    """No such consumer group."""

    code = "group_not_found"


class PermissionDenied(FerryError):
    """The topic's permissions forbid this operation."""

    code = "permission_denied"


class OffsetOutOfRange(InvalidArgument):
    """The offset lies outside the queue's [min, max] range."""

    code = "offset_out_of_range"


class StoreError(FerryError):
    """The store cannot accept writes (an earlier flush failed, or the disk is full)."""

    code = "store_error"


class FlushFailed(StoreError):
    """fsync failed: the data written since the last good flush may not be durable.

    After a failed fsync the kernel may have dropped the dirty pages, so the
    store refuses further writes until it is restarted and has recovered."""

    code = "flush_failed"


class DiskFull(StoreError):
    """No room left to preallocate a CommitLog segment."""

    code = "disk_full"
    retriable = True


class DiskPressure(StoreError):
    """The file system holding the store is fuller than its high watermark
    (``max_disk_ratio``): producers' writes are refused until it is below the low
    watermark again; consumers still read, commit and ack (docs/operations.md, "Disk")."""

    code = "disk_pressure"
    retriable = True


class ShuttingDown(FerryError):
    """The broker is shutting down."""

    code = "shutting_down"
    retriable = True


class InvalidReceipt(InvalidArgument):
    """The receipt handle is malformed or was not issued by this broker (forged, truncated)."""

    code = "invalid_receipt"


class ReceiptStale(FerryError):
    """The receipt handle is no longer current: its message was acked, its invisible
    time ran out (the message was revived: only the newest handle counts), or its
    invisible time was changed (which issues a new handle)."""

    code = "receipt_stale"


class MessageNotFound(FerryError):
    """No message has that id or offset (or it left the store with retention)."""

    code = "message_not_found"


class InvalidDelay(InvalidArgument):
    """A delivery time or delay property is malformed, negative, or beyond the horizon."""

    code = "invalid_delay"


class TimerNotFound(FerryError):
    """No pending timer has that message id (never timed, delivered, or cancelled)."""

    code = "timer_not_found"


class TransactionNotFound(FerryError):
    """No half message matches that transaction (unknown offset or id)."""

    code = "transaction_not_found"


class TransactionAlreadyEnded(FerryError):
    """The transaction was already committed, rolled back or discarded.

    ``outcome`` says which ("commit", "rollback", "discard"), or "ended" when
    the broker no longer remembers; nothing was delivered by this call."""

    code = "transaction_already_ended"

    def __init__(self, detail: str = "", outcome: str = "ended") -> None:
        super().__init__(detail)
        self.outcome = outcome


# Issue 14: broker groups (docs/cluster.md).


class NotLeader(FerryError):
    """This broker is not its group's master (a slave, or a master whose term may have
    ended): writes go to the master; reads too unless slaves serve them."""

    code = "not_leader"
    retriable = True


class NotEnoughReplicas(FerryError):
    """The in-sync set is smaller than min_insync_replicas: a write that must be
    replicated is refused before it is stored."""

    code = "not_enough_replicas"
    retriable = True


class ReplicationTimeout(FerryError):
    """The write is stored on the master but the in-sync set did not confirm it in
    time; it may still become visible. Retrying may store it twice."""

    code = "replication_timeout"
    retriable = True
