"""Who is asking: the principal every Broker call carries, and the one access decision.

Each door turns its connection (or request) into a ``Principal``: the Kafka door
its SASL user, the HTTP door its bearer token, the MQTT door its user name, and
``anonymous(peer)`` wherever nobody logged in. Every public ``Broker`` call that
produces, consumes, commits, administers, pops, transacts, or touches timers or
dead letters takes it (``principal=``) and asks ``AccessControl.check`` once per
resource it touches, in one method (``Broker._authorize``); docs/architecture.md
has the table of which call checks which resource and operation.

Today ``AccessControl`` allows everything: the doors authenticate (or not) and
nothing is authorized per resource yet. The security work (issue 13) fills in
``check`` (ACLs: principal x resource x operation x allow/deny, deny winning),
and from then on ``ANONYMOUS`` is only as good as the ACLs granted to it: the
default a caller gets when it passes no principal is fail-closed.

The broker's own work never meets a client's principal: timer deliveries,
retries, transaction commits, pop revives and dead-lettering run on the core's
internal write path (``core/paths.py``), not through the facade. A door's own
bookkeeping through the facade (route registration, replaying its state at
start-up) passes ``SYSTEM``.

Resources are a kind and a name, passed as two arguments rather than a value so
that the produce path, which checks once per message, allocates nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ResourceType(enum.Enum):
    """What a call touches (Kafka's resource types; RocketMQ ACL 2.0 has the same three
    and no transactional id)."""

    TOPIC = "topic"
    GROUP = "group"  # a consumer group
    TRANSACTIONAL_ID = "transactional_id"  # a producer group's transactions
    CLUSTER = "cluster"  # the broker itself: its statistics, timers, transactions


class Operation(enum.Enum):
    """What a call does to a resource (Kafka's operations; RocketMQ's pub/sub are WRITE
    and READ, its create/update/delete/get/list are CREATE, ALTER, DELETE, DESCRIBE)."""

    READ = "read"
    WRITE = "write"
    CREATE = "create"
    DELETE = "delete"
    DESCRIBE = "describe"
    ALTER = "alter"


TOPIC, GROUP, TRANSACTIONAL_ID, CLUSTER = (ResourceType.TOPIC, ResourceType.GROUP,
                                           ResourceType.TRANSACTIONAL_ID, ResourceType.CLUSTER)
READ, WRITE, CREATE, DELETE, DESCRIBE, ALTER = (Operation.READ, Operation.WRITE,
                                                Operation.CREATE, Operation.DELETE,
                                                Operation.DESCRIBE, Operation.ALTER)

# How a principal proved who it is.
MECHANISM_ANONYMOUS = "anonymous"  # nobody logged in
MECHANISM_INTERNAL = "internal"  # the broker itself (SYSTEM)
MECHANISM_SASL_PLAIN = "SASL/PLAIN"  # Kafka SASL PLAIN (RFC 4616)
MECHANISM_BEARER = "bearer"  # an HTTP bearer token (RFC 6750)
MECHANISM_MQTT_PASSWORD = "mqtt-password"  # MQTT CONNECT user name and password


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a call is made for: a name, how that name was proven (``mechanism``), and the
    peer address it came from ("host:port", or "host" where a door knows no port;
    None for the broker's own calls). Names are unique per mechanism only: the
    security work maps them onto one user model."""

    name: str
    mechanism: str
    peer: str | None = None

    def __post_init__(self) -> None:
        if not self.name or not self.mechanism:
            raise ValueError("a principal needs a name and a mechanism")

    @property
    def anonymous(self) -> bool:
        return self.mechanism == MECHANISM_ANONYMOUS


ANONYMOUS_NAME = "ANONYMOUS"  # Kafka's User:ANONYMOUS
ANONYMOUS = Principal(ANONYMOUS_NAME, MECHANISM_ANONYMOUS)
"""Nobody in particular: the default of every Broker call (fail-closed once ACLs exist)."""

SYSTEM = Principal("ferrymq", MECHANISM_INTERNAL)
"""The broker acting for itself through the facade (a door's own bookkeeping)."""


def anonymous(peer: str | None) -> Principal:
    """The anonymous principal of a connection from ``peer``."""
    return ANONYMOUS if peer is None else Principal(ANONYMOUS_NAME, MECHANISM_ANONYMOUS, peer)


class AccessControl:
    """The one access decision. ``check`` returns when ``principal`` may do ``operation``
    on the resource, and raises ``PermissionDenied`` otherwise (every door maps it:
    Kafka TOPIC_AUTHORIZATION_FAILED, RocketMQ NO_PERMISSION, HTTP 403).

    Today it allows everything."""

    __slots__ = ()

    def check(self, principal: Principal, kind: ResourceType, name: str,
              operation: Operation) -> None:
        return None
