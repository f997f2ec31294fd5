"""RocketMQ 4.x remoting, sans-I/O: frames, codes, typed headers, JSON bodies, message bodies.

``FrameDecoder`` turns a byte stream into ``RemotingCommand`` values and
``encode`` turns them back into bytes; ``headers`` gives each command's
extFields a type; ``bodies`` reads and writes the JSON bodies (route data,
heartbeats, locks); ``messages`` reads pull bodies and writes batch bodies.
No sockets here: the broker door, the NameServer and the client all drive it.
"""

from .codes import (
    FLAG_ONEWAY,
    FLAG_RESPONSE,
    LanguageCode,
    RequestCode,
    ResponseCode,
    SerializeType,
)
from .frame import (
    DEFAULT_MAX_FRAME,
    FrameDecoder,
    RemotingCommand,
    RemotingProtocolError,
    decode_frame,
    encode,
    request,
    response_to,
)

__all__ = [
    "DEFAULT_MAX_FRAME",
    "FLAG_ONEWAY",
    "FLAG_RESPONSE",
    "FrameDecoder",
    "LanguageCode",
    "RemotingCommand",
    "RemotingProtocolError",
    "RequestCode",
    "ResponseCode",
    "SerializeType",
    "decode_frame",
    "encode",
    "request",
    "response_to",
]
