"""One MQTT connection, server side, as a sans-I/O state machine: bytes in, packets out.

Feed received bytes with ``receive_data``; take packets with ``next_event``
(``NEED_DATA``: need more bytes); turn outgoing packets into bytes with ``send``. The
object enforces what a single packet cannot show:

- framing: a packet announcing more than the server's Maximum Packet Size is
  refused from its fixed header alone, before its body is buffered (5.0
  3.1.2.11.4: DISCONNECT 0x95), so a client announcing 256 MiB costs nothing;
- order: CONNECT first and only once (3.1 [MQTT-3.1.0-1, -2]); nothing after
  DISCONNECT; no server-only packets from a client;
- topic aliases both ways (3.3.2.3.4): inbound ones are resolved so that every
  Publish event carries its full topic; outbound ones are assigned while the
  client's Topic Alias Maximum allows;
- the client's Maximum Packet Size: an outgoing PUBLISH larger than it is
  dropped (``send`` returns None, [MQTT-3.1.2-25]), other packets lose their
  Reason String and User Properties first ([MQTT-3.1.2-29]);
- DISCONNECT may not raise a Session Expiry Interval of 0 (3.14.2.2.2).

The QoS 1/2 flows (packet ids, PUBACK/PUBREC/PUBREL/PUBCOMP, the Receive
Maximum both ways) outlive a connection and are ``session.SessionState``'s.

State: ``AWAIT_CONNECT`` -> (CONNACK success sent) ``CONNECTED`` -> ``CLOSED``.
Violations raise ``MqttError``; ``error_bytes(err)`` is what to send before
closing (CONNACK with a reason during the handshake, DISCONNECT with a reason
in 5.0 afterwards, nothing in 3.1.1 where the server simply closes).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

from ..sentinels import NEED_DATA, NeedData
from . import codec
from .codec import MqttError, ProtocolViolation
from .constants import MQTT_5, PacketType, Prop, Reason
from .packets import Auth, Connack, Connect, Disconnect, Packet, Publish
from .topics import valid_topic_name

DEFAULT_MAX_PACKET_SIZE = 1 << 20
UNLIMITED = 268_435_460  # the largest packet MQTT can encode (2.1.4), + fixed header
_SERVER_ONLY = {PacketType.CONNACK, PacketType.SUBACK, PacketType.UNSUBACK, PacketType.PINGRESP}


class State(enum.Enum):
    AWAIT_CONNECT = "await_connect"
    CONNECTED = "connected"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What the server announces in CONNACK (5.0) and enforces on every version."""

    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    receive_maximum: int = 64  # 3.2.2.3.3 (enforced by SessionState); 5.0's default is 65,535
    topic_alias_maximum: int = 16  # 3.2.2.3.8


class ServerConnection:
    """See the module docstring. Not thread-safe; one per network connection."""

    __slots__ = ("_aliases_in", "_aliases_out", "_buf", "_partial", "_pos",
                 "_session_expiry", "accepted", "client_max_packet_size",
                 "client_receive_maximum", "client_topic_alias_maximum", "connect", "limits",
                 "state", "version")

    def __init__(self, limits: ServerLimits | None = None) -> None:
        self.limits = limits or ServerLimits()
        self.state = State.AWAIT_CONNECT
        self.version = 0
        self.connect: Connect | None = None
        self.client_max_packet_size = UNLIMITED
        self.client_receive_maximum = 65535  # 3.1.2.11.3 default
        self.client_topic_alias_maximum = 0
        self._buf = b""  # received bytes; complete packets are decoded from here
        self._pos = 0
        self._partial = bytearray()  # an incomplete packet's bytes
        self._aliases_in: dict[int, str] = {}
        self._aliases_out: dict[str, int] = {}
        self._session_expiry = 0
        self.accepted = False  # a successful CONNACK was sent

    # ---------------------------------------------------------- receiving

    @property
    def pending(self) -> int:
        """Bytes received of a packet that is not complete yet (0: between packets)."""
        return len(self._partial) + len(self._buf) - self._pos

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        # Complete packets are decoded in place from the received bytes (no copy);
        # an incomplete one collects in a bytearray (amortised O(1) per byte, so a
        # packet trickling in byte by byte costs linear time, not quadratic).
        if self.state is State.CLOSED:
            return
        if self._pos < len(self._buf):
            self._partial += memoryview(self._buf)[self._pos:]
            self._buf = b""
            self._pos = 0
        if self._partial:
            self._partial += data
        else:
            self._buf = bytes(data)
            self._pos = 0

    def next_event(self) -> Packet | NeedData:
        """The next complete packet, or NEED_DATA (also once CLOSED). Raises MqttError
        on a violation, after which the connection is CLOSED."""
        if self.state is State.CLOSED:
            return NEED_DATA
        try:
            if self._partial:
                partial = self._partial
                frame = codec.split_frame(partial, 0)
                if frame is None:
                    return NEED_DATA
                if frame[2] > self.limits.max_packet_size:
                    raise MqttError(f"packet of {frame[2]} bytes exceeds the maximum "
                                    f"{self.limits.max_packet_size}", Reason.PACKET_TOO_LARGE)
                if frame[2] > len(partial):
                    return NEED_DATA
                self._buf = bytes(partial)
                self._pos = 0
                self._partial = bytearray()
            buf = self._buf
            pos = self._pos
            if len(buf) - pos >= 2 and buf[pos + 1] < 0x80:  # a one-byte Remaining Length
                first = buf[pos]
                start = pos + 2
                end = start + buf[pos + 1]
            else:
                frame = codec.split_frame(buf, pos)
                if frame is None:
                    return NEED_DATA
                first, start, end = frame
            if end - pos > self.limits.max_packet_size:
                raise MqttError(f"packet of {end - pos} bytes exceeds the maximum "
                                f"{self.limits.max_packet_size}", Reason.PACKET_TOO_LARGE)
            if end > len(buf):
                return NEED_DATA
            self._pos = end
            if first & 0xF0 == 0x30 and self.state is State.CONNECTED:
                return self._on_publish(
                    codec.decode_publish_at(first & 0x0F, buf, start, end, self.version))
            if first >> 4 in _SERVER_ONLY:
                raise ProtocolViolation(f"a client may not send packet type {first >> 4}")
            packet = codec.decode(first, buf[start:end], self.version)
            return self._check(packet)
        except MqttError:
            self.state = State.CLOSED
            raise

    def _check(self, packet: Packet) -> Packet:
        if self.state is State.AWAIT_CONNECT:
            if not isinstance(packet, Connect):
                raise ProtocolViolation("the first packet must be CONNECT")  # [MQTT-3.1.0-1]
            return self._on_connect(packet)
        if isinstance(packet, Publish):
            return self._on_publish(packet)
        if isinstance(packet, Connect):
            raise ProtocolViolation("second CONNECT")  # [MQTT-3.1.0-2]
        if isinstance(packet, Disconnect):
            expiry = packet.properties.get(Prop.SESSION_EXPIRY_INTERVAL)
            if expiry and not self._session_expiry:
                raise ProtocolViolation("DISCONNECT raises a Session Expiry Interval of 0")
            self.state = State.CLOSED
            return packet
        if isinstance(packet, Auth):
            # 4.12: AUTH is only for an Authentication Method the CONNECT named;
            # FerryMQ offers none, so the CONNECT was refused or had none.
            raise ProtocolViolation("AUTH without enhanced authentication")
        return packet

    def _on_connect(self, c: Connect) -> Connect:
        self.version = c.version
        self.connect = c
        p = c.properties
        if p:
            self.client_max_packet_size = p.get(Prop.MAXIMUM_PACKET_SIZE, UNLIMITED)
            self.client_receive_maximum = p.get(Prop.RECEIVE_MAXIMUM, 65535)
            self.client_topic_alias_maximum = p.get(Prop.TOPIC_ALIAS_MAXIMUM, 0)
            self._session_expiry = p.get(Prop.SESSION_EXPIRY_INTERVAL, 0)
        if c.will is not None and not valid_topic_name(c.will.topic):
            raise MqttError(f"invalid will topic {c.will.topic!r}", Reason.TOPIC_NAME_INVALID)
        return c

    def _on_publish(self, p: Publish) -> Publish:
        topic = p.topic
        alias = p.properties.get(Prop.TOPIC_ALIAS) if p.properties else None
        if alias is not None:
            if not 0 < alias <= self.limits.topic_alias_maximum:
                raise MqttError(f"topic alias {alias}", Reason.TOPIC_ALIAS_INVALID)
            if topic:
                self._aliases_in[alias] = topic
            else:
                known = self._aliases_in.get(alias)
                if known is None:
                    raise ProtocolViolation(f"unknown topic alias {alias}")  # 3.3.2.3.4
                topic = known
            props = {k: v for k, v in p.properties.items() if k != Prop.TOPIC_ALIAS}
            p = replace(p, topic=topic, properties=props)
        if not topic:
            raise ProtocolViolation("empty topic name")  # [MQTT-4.7.3-1]
        if "+" in topic or "#" in topic:
            raise MqttError(f"wildcard in topic name {topic!r}", Reason.TOPIC_NAME_INVALID)
        return p

    # ---------------------------------------------------------- sending

    def send(self, packet: Packet) -> bytes | None:
        """Bytes for ``packet``; None for a PUBLISH over the client's Maximum Packet
        Size (drop it as if sent, [MQTT-3.1.2-25])."""
        if isinstance(packet, Publish):
            return self.send_publish(packet.topic, packet.payload, packet.qos, packet.retain,
                                     packet.dup, packet.packet_id,
                                     codec.encode_properties(packet.properties)
                                     if self.version == MQTT_5 else None)
        if isinstance(packet, Connack):
            self.accepted = packet.reason < 0x80
            self.state = State.CONNECTED if self.accepted else State.CLOSED
        elif isinstance(packet, Disconnect):
            self.state = State.CLOSED
        data = codec.encode(packet, self.version)
        if len(data) > self.client_max_packet_size:
            props = getattr(packet, "properties", None)
            if props:
                slim = {k: v for k, v in props.items()
                        if k not in (Prop.REASON_STRING, Prop.USER_PROPERTY)}
                # only packets with properties get here (props is not None)
                data = codec.encode(replace(packet, properties=slim), self.version)  # type: ignore[arg-type]
        return data

    def send_publish(self, topic: str, payload: bytes, qos: int, retain: bool, dup: bool,
                     packet_id: int | None, props: bytes | None) -> bytes | None:
        """A PUBLISH from parts; ``props`` is the encoded 5.0 property block (None
        before 5.0). Assigns an outbound topic alias while the client allows more."""
        if self.client_topic_alias_maximum:
            alias = self._aliases_out.get(topic)
            if alias is not None:
                props = _with_alias(props, alias)
                topic_bytes = b""
            else:
                topic_bytes = topic.encode()
                if len(self._aliases_out) < self.client_topic_alias_maximum:
                    alias = self._aliases_out[topic] = len(self._aliases_out) + 1
                    props = _with_alias(props, alias)
        else:
            topic_bytes = topic.encode()
        data = codec.encode_publish(topic_bytes, payload, qos, retain, dup, packet_id, props)
        if len(data) > self.client_max_packet_size:
            return None
        return data

    def error_bytes(self, err: MqttError) -> bytes:
        """What to send for ``err`` before closing (see the module docstring)."""
        if self.connect is not None and not self.accepted:
            # 4.13.2: an error in CONNECT is answered by CONNACK with a reason
            # code (3.1.1: only the return codes 1-5 exist; others just close).
            if self.version == MQTT_5 or err.reason in (
                    Reason.UNSUPPORTED_PROTOCOL_VERSION, Reason.CLIENT_IDENTIFIER_NOT_VALID):
                return codec.encode(Connack(False, err.reason), self.version)
            return b""
        if self.connect is None:
            if err.reason == Reason.UNSUPPORTED_PROTOCOL_VERSION:
                # 3.1.2.2 [MQTT-3.1.2-2]: CONNACK 0x01 in the 3.1.1 form, which
                # every version's client can read.
                return bytes((0x20, 2, 0, 1))
            return b""
        if self.version == MQTT_5:
            return codec.encode(Disconnect(err.reason), MQTT_5)
        return b""


def _with_alias(props: bytes | None, alias: int) -> bytes:
    """Append a Topic Alias property to an encoded property block."""
    return codec.extend_properties(props, bytes((Prop.TOPIC_ALIAS, alias >> 8, alias & 0xFF)))
