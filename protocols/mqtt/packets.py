"""MQTT control packets as immutable values: what the codec decodes to and encodes from.

One class per packet type, shared by 3.1, 3.1.1 and 5.0: fields a version does
not have keep their defaults (reason 0, no properties). Properties are a
mapping from ``constants.Prop`` to the value; the two properties that may repeat
hold tuples: ``USER_PROPERTY`` a tuple of (name, value) pairs in wire order,
``SUBSCRIPTION_IDENTIFIER`` a tuple of ints.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from .constants import Prop

Properties = Mapping[int, Any]


class _NoProperties(Mapping[int, Any]):
    """The shared, immutable (and hashable, so usable as a dataclass default) empty map."""

    def __getitem__(self, key: int) -> Any:
        raise KeyError(key)

    def __iter__(self) -> Iterator[int]:
        return iter(())

    def __len__(self) -> int:
        return 0

    def __hash__(self) -> int:
        return 0

    def __repr__(self) -> str:
        return "{}"


NO_PROPERTIES: Properties = _NoProperties()


@dataclass(frozen=True, slots=True)
class Will:
    """The Will Message of a CONNECT (3.1.2.5, 3.1.3.2)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties = NO_PROPERTIES

    @property
    def delay(self) -> int:
        """Will Delay Interval in seconds (3.1.3.2.2); 0 when absent."""
        return int(self.properties.get(Prop.WILL_DELAY_INTERVAL, 0))


@dataclass(frozen=True, slots=True)
class Connect:
    version: int
    client_id: str
    clean_start: bool = True
    keep_alive: int = 60
    properties: Properties = NO_PROPERTIES
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None


@dataclass(frozen=True, slots=True)
class Connack:
    session_present: bool = False
    reason: int = 0  # a 5.0 reason code; the encoder maps it for 3.1.1
    properties: Properties = NO_PROPERTIES


@dataclass(slots=True)
class Publish:
    """The one packet class that is not frozen: every message on the hot path is
    one, and a frozen dataclass costs 1.07 us to build against 0.19 us (timeit,
    measured for issue 5's CPU budget). Treat it as immutable all the same."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Puback:
    packet_id: int
    reason: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubrec:
    packet_id: int
    reason: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubrel:
    packet_id: int
    reason: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pubcomp:
    packet_id: int
    reason: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Subscription:
    """One topic filter of a SUBSCRIBE with its options (3.8.3.1)."""

    filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0  # 0 send retained, 1 only if new, 2 never


@dataclass(frozen=True, slots=True)
class Subscribe:
    packet_id: int
    subscriptions: tuple[Subscription, ...]
    properties: Properties = NO_PROPERTIES

    @property
    def subscription_id(self) -> int | None:
        ids = self.properties.get(Prop.SUBSCRIPTION_IDENTIFIER)
        return ids[0] if ids else None


@dataclass(frozen=True, slots=True)
class Suback:
    packet_id: int
    reasons: tuple[int, ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    packet_id: int
    filters: tuple[str, ...]
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Unsuback:
    packet_id: int
    reasons: tuple[int, ...] = ()  # 5.0 only
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Pingreq:
    pass


@dataclass(frozen=True, slots=True)
class Pingresp:
    pass


@dataclass(frozen=True, slots=True)
class Disconnect:
    reason: int = 0
    properties: Properties = NO_PROPERTIES


@dataclass(frozen=True, slots=True)
class Auth:
    reason: int = 0
    properties: Properties = NO_PROPERTIES


Packet = (Connect | Connack | Publish | Puback | Pubrec | Pubrel | Pubcomp | Subscribe | Suback
          | Unsubscribe | Unsuback | Pingreq | Pingresp | Disconnect | Auth)
