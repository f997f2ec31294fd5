"""The replication stream between a group's master and its slaves (docs/cluster.md, "The stream")."""

from .connection import DEFAULT_MAX_FRAME, ReplicationConnection, Side, State
from .frames import (
    PROTOCOL_VERSION,
    Ack,
    Frame,
    Hello,
    LocalReplicationError,
    Refuse,
    RefuseReason,
    ReplicationProtocolError,
    Transfer,
    Welcome,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "PROTOCOL_VERSION",
    "Ack",
    "Frame",
    "Hello",
    "LocalReplicationError",
    "Refuse",
    "RefuseReason",
    "ReplicationConnection",
    "ReplicationProtocolError",
    "Side",
    "State",
    "Transfer",
    "Welcome",
]
