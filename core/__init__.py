"""The broker core: the store, topics, groups, offsets and the ``Broker`` facade every gateway calls.

It knows nothing of sockets; it runs on trio and sends blocking disk work to
worker threads.
"""

from .access import ANONYMOUS, Principal
from .broker import Broker, BrokerConfig
from .errors import FerryError
from .filter import parse_filter
from .message import ConsumedMessage, GetResult, GetStatus, Message, PutResult, StoredRecord

__all__ = [
    "ANONYMOUS",
    "Broker",
    "BrokerConfig",
    "ConsumedMessage",
    "FerryError",
    "GetResult",
    "GetStatus",
    "Message",
    "Principal",
    "PutResult",
    "StoredRecord",
    "parse_filter",
]
