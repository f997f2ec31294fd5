"""The client's message values: what a producer sends, what a send returns, a consumer's answer."""

from __future__ import annotations

import enum
import itertools
import os
import random
import socket
import struct
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NamedTuple

from ..protocols.remoting.bodies import MessageQueue
from ..protocols.remoting.messages import MessageExt

__all__ = ["ConsumeResult", "Message", "MessageExt", "MessageQueue", "SendResult", "SendStatus"]

# Property names (RocketMQ MessageConst).
KEYS = "KEYS"
TAGS = "TAGS"
UNIQ_KEY = "UNIQ_KEY"
DELAY = "DELAY"
TIMER_DELIVER_MS = "TIMER_DELIVER_MS"
SHARDING_KEY = "__SHARDINGKEY"
RETRY_TOPIC = "RETRY_TOPIC"
WAIT = "WAIT"


@dataclass(frozen=True, slots=True)
class Message:
    """A message to send. ``keys`` are indexed (lookup by key); ``tags`` is what tag
    subscriptions filter on; ``delay_level`` (1-18, RocketMQ's levels) and
    ``deliver_at_ms`` ask for delayed delivery (honoured once the broker has timers)."""

    topic: str
    body: bytes
    tags: str | None = None
    keys: str | tuple[str, ...] | list[str] | None = None
    properties: Mapping[str, str] = field(default_factory=dict)
    delay_level: int = 0
    deliver_at_ms: int = 0
    flag: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.body, str):
            object.__setattr__(self, "body", self.body.encode())
        if not isinstance(self.body, bytes | bytearray | memoryview):
            raise TypeError("a message body is bytes")

    def wire_properties(self, uniq_key: str) -> dict[str, str]:
        props = dict(self.properties)
        if self.keys:
            props[KEYS] = self.keys if isinstance(self.keys, str) else " ".join(self.keys)
        if self.tags:
            props[TAGS] = self.tags
        if self.delay_level:
            props[DELAY] = str(self.delay_level)
        if self.deliver_at_ms:
            props[TIMER_DELIVER_MS] = str(self.deliver_at_ms)
        props.setdefault(WAIT, "true")
        props[UNIQ_KEY] = uniq_key
        return props

    def wire_properties_text(self, uniq_key: str) -> str:
        """``encode_properties(wire_properties(uniq_key))`` without the dict (hot path:
        every message of a batch)."""
        if self.properties or self.delay_level or self.deliver_at_ms:
            return "".join(f"{k}\x01{v}\x02" for k, v in self.wire_properties(uniq_key).items())
        head = ""
        if self.keys:
            keys = self.keys if isinstance(self.keys, str) else " ".join(self.keys)
            head = f"KEYS\x01{keys}\x02"
        if self.tags:
            head += f"TAGS\x01{self.tags}\x02"
        return f"{head}WAIT\x01true\x02UNIQ_KEY\x01{uniq_key}\x02"

class SendStatus(enum.Enum):
    SEND_OK = "SEND_OK"


class SendResult(NamedTuple):
    """Where a message landed. ``msg_id`` is the client id (UNIQ_KEY), stable across
    retries and redeliveries; ``offset_msg_id`` names the stored copy. (An immutable
    NamedTuple: one is built per message sent, at a third of a dataclass's cost.)"""

    msg_id: str
    offset_msg_id: str
    queue: MessageQueue
    queue_offset: int
    status: SendStatus = SendStatus.SEND_OK


class ConsumeResult(enum.Enum):
    """A push consumer's handler answer (RocketMQ ConsumeConcurrentlyStatus)."""

    SUCCESS = "CONSUME_SUCCESS"
    RECONSUME_LATER = "RECONSUME_LATER"


def _local_ip() -> bytes:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: picks the outgoing address
            return socket.inet_aton(s.getsockname()[0])
    except OSError:
        return socket.inet_aton("127.0.0.1")


_IP = _local_ip()
_COUNTER = itertools.count(random.randrange(1 << 16))
_PREFIX = _IP + struct.pack(">HI", os.getpid() & 0xFFFF, random.getrandbits(32))


_PREFIX_HEX = _PREFIX.hex().upper()


def new_uniq_key() -> str:
    """A message id as RocketMQ's MessageClientIDSetter makes one: address, pid and a
    random instance part, then milliseconds and a counter (16 bytes, hex)."""
    return (f"{_PREFIX_HEX}{(time.time_ns() // 1_000_000) & 0xFFFFFFFF:08X}"
            f"{next(_COUNTER) & 0xFFFF:04X}")


def new_uniq_keys(n: int) -> list[str]:
    """``n`` message ids sharing one timestamp (a batch's), as ``new_uniq_key`` makes
    them; the broker indexes a batch's ids once per shared prefix."""
    head = f"{_PREFIX_HEX}{(time.time_ns() // 1_000_000) & 0xFFFFFFFF:08X}"
    return [f"{head}{next(_COUNTER) & 0xFFFF:04X}" for _ in range(n)]


def local_ip() -> str:
    return socket.inet_ntoa(_IP)
