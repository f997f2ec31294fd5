"""Bytes <-> MQTT packets for 3.1, 3.1.1 and 5.0: the wire codec, strict about every rule.

``decode(first_byte, body, version)`` turns one packet's bytes (fixed header
byte and the body after the Remaining Length) into a ``packets`` value;
``encode(packet, version)`` builds a whole packet. Framing (finding where a
packet ends, refusing oversized ones before buffering them) is
``connection.py``'s job; ``split_frame`` is its helper.

Every decoding error raises ``MqttError`` carrying the 5.0 reason code the
server answers with (4.13: a Malformed Packet or Protocol Error closes the
connection, after a DISCONNECT with that reason code in 5.0). Any other
exception escaping ``decode`` is a bug.
"""

from __future__ import annotations

import re
import struct
from typing import Any

from ..errors import RemoteProtocolError
from .constants import (
    ALLOWED_PROPERTIES,
    MAX_REMAINING_LENGTH,
    MQTT_3_1,
    MQTT_3_1_1,
    MQTT_5,
    PROPERTY_TYPES,
    REPEATABLE,
    REQUIRED_FLAGS,
    SUBACK_FAILURE_311,
    PacketType,
    Prop,
    PType,
    Reason,
    connack_code_311,
)
from .packets import (
    NO_PROPERTIES,
    Auth,
    Connack,
    Connect,
    Disconnect,
    Packet,
    Pingreq,
    Pingresp,
    Properties,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
)

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

# 1.5.4: a UTF-8 string MUST NOT contain U+0000 and SHOULD NOT contain control
# characters or non-characters, which a receiver MAY treat as malformed. FerryMQ
# does (its store separates properties with U+0001 and U+0002, so a topic or
# property carrying them could not be stored faithfully anyway).
_FORBIDDEN_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\ufdd0-\ufdef\ufffe\uffff]")


class MqttError(RemoteProtocolError):
    """The peer (the remote side) broke the protocol; ``reason`` is the 5.0 reason
    code to answer with before closing."""

    reason: int = Reason.UNSPECIFIED_ERROR

    def __init__(self, detail: str, reason: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        if reason is not None:
            self.reason = reason


class MalformedPacket(MqttError):
    """The bytes do not follow the encoding rules (4.13.1)."""

    reason = Reason.MALFORMED_PACKET


class ProtocolViolation(MqttError):
    """Well-formed bytes that break the protocol's rules (4.13.1)."""

    reason = Reason.PROTOCOL_ERROR


# ---------------------------------------------------------------- primitives

def encode_varint(value: int) -> bytes:
    """1.5.5: Variable Byte Integer."""
    if not 0 <= value <= MAX_REMAINING_LENGTH:
        raise ValueError(f"{value} does not fit a Variable Byte Integer")
    if value < 128:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(buf: bytes | bytearray | memoryview, pos: int) -> tuple[int, int] | None:
    """(value, position after it), or None if ``buf`` ends inside it. A fifth
    continuation byte is malformed (1.5.5 [MQTT-1.5.5-1])."""
    value = 0
    shift = 0
    end = len(buf)
    for i in range(4):
        if pos + i >= end:
            return None
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos + i + 1
        shift += 7
    raise MalformedPacket("Variable Byte Integer longer than four bytes")


def split_frame(buf: bytes | bytearray | memoryview, pos: int = 0) -> tuple[int, int, int] | None:
    """(first byte, body start, body end) of the packet at ``pos``, or None when
    its fixed header is still incomplete. The body may not be there yet."""
    if len(buf) - pos < 2:
        return None
    got = decode_varint(buf, pos + 1)
    if got is None:
        return None
    length, start = got
    return buf[pos], start, start + length


def _check_text(text: str, what: str) -> str:
    if _FORBIDDEN_CHARS.search(text) is not None:
        raise MalformedPacket(f"{what} contains a control character or a non-character")
    return text


def _utf8(buf: bytes, pos: int, what: str) -> tuple[str, int]:
    """1.5.4: a two-byte length and well-formed UTF-8 (no surrogates, no U+0000)."""
    if pos + 2 > len(buf):
        raise MalformedPacket(f"{what}: length runs past the packet")
    n = (buf[pos] << 8) | buf[pos + 1]
    end = pos + 2 + n
    if end > len(buf):
        raise MalformedPacket(f"{what}: string runs past the packet")
    try:
        text = buf[pos + 2:end].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket(f"{what} is not well-formed UTF-8") from None
    if (text.isascii() and text.isprintable()) or _FORBIDDEN_CHARS.search(text) is None:
        return text, end
    raise MalformedPacket(f"{what} contains a control character or a non-character")


def _binary(buf: bytes, pos: int, what: str) -> tuple[bytes, int]:
    """1.5.6: Binary Data, a two-byte length and the bytes."""
    if pos + 2 > len(buf):
        raise MalformedPacket(f"{what}: length runs past the packet")
    n = (buf[pos] << 8) | buf[pos + 1]
    end = pos + 2 + n
    if end > len(buf):
        raise MalformedPacket(f"{what}: data runs past the packet")
    return buf[pos + 2:end], end


def _u16(buf: bytes, pos: int, what: str) -> tuple[int, int]:
    if pos + 2 > len(buf):
        raise MalformedPacket(f"{what} missing")
    return (buf[pos] << 8) | buf[pos + 1], pos + 2


def _enc_utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 0xFFFF:
        raise ValueError("UTF-8 string longer than 65535 bytes")
    return _U16.pack(len(raw)) + raw


def _enc_binary(data: bytes) -> bytes:
    if len(data) > 0xFFFF:
        raise ValueError("binary data longer than 65535 bytes")
    return _U16.pack(len(data)) + data


def _packet_id(buf: bytes, pos: int) -> tuple[int, int]:
    pid, pos = _u16(buf, pos, "packet identifier")
    if pid == 0:
        # 2.2.1: a Packet Identifier is non-zero [MQTT-2.2.1-3].
        raise MalformedPacket("packet identifier 0")
    return pid, pos


# ---------------------------------------------------------------- properties

def decode_properties(buf: bytes, pos: int, kind: object) -> tuple[Properties, int]:
    """2.2.2: a property length and the properties allowed in ``kind``."""
    got = decode_varint(buf, pos)
    if got is None:
        raise MalformedPacket("property length runs past the packet")
    length, pos = got
    end = pos + length
    if end > len(buf):
        raise MalformedPacket("properties run past the packet")
    if not length:
        return NO_PROPERTIES, pos
    allowed = ALLOWED_PROPERTIES[kind]
    props: dict[int, Any] = {}
    while pos < end:
        got = decode_varint(buf, pos)
        if got is None:
            raise MalformedPacket("property identifier runs past the properties")
        ident, pos = got
        if ident not in allowed:
            raise MalformedPacket(f"property {ident:#x} is not valid in this packet")
        ptype = PROPERTY_TYPES[ident]
        value: Any
        if ptype is PType.BYTE:
            if pos >= end:
                raise MalformedPacket("byte property runs past the properties")
            value = buf[pos]
            pos += 1
        elif ptype is PType.U16:
            if pos + 2 > end:
                raise MalformedPacket("two-byte property runs past the properties")
            value = (buf[pos] << 8) | buf[pos + 1]
            pos += 2
        elif ptype is PType.U32:
            if pos + 4 > end:
                raise MalformedPacket("four-byte property runs past the properties")
            value = _U32.unpack_from(buf, pos)[0]
            pos += 4
        elif ptype is PType.VARINT:
            got = decode_varint(buf[:end], pos)
            if got is None:
                raise MalformedPacket("variable byte property runs past the properties")
            value, pos = got
        elif ptype is PType.UTF8:
            value, pos = _utf8(buf[:end], pos, f"property {ident:#x}")
        elif ptype is PType.BINARY:
            value, pos = _binary(buf[:end], pos, f"property {ident:#x}")
        else:
            name, pos = _utf8(buf[:end], pos, "user property name")
            val, pos = _utf8(buf[:end], pos, "user property value")
            value = (name, val)
        if ident in REPEATABLE:
            props[ident] = (*props.get(ident, ()), value)
        elif ident in props:
            raise ProtocolViolation(f"property {ident:#x} appears twice")
        else:
            props[ident] = value
    if pos != end:
        raise MalformedPacket("properties overrun their length")
    _check_property_values(props)
    return props, end


def _check_property_values(props: dict[int, Any]) -> None:
    """Values the specification rules out (Protocol Errors in 3.1.2.11 and 3.3.2.3)."""
    for ident in (Prop.PAYLOAD_FORMAT_INDICATOR, Prop.REQUEST_PROBLEM_INFORMATION,
                  Prop.REQUEST_RESPONSE_INFORMATION, Prop.MAXIMUM_QOS,
                  Prop.RETAIN_AVAILABLE, Prop.WILDCARD_SUBSCRIPTION_AVAILABLE,
                  Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE, Prop.SHARED_SUBSCRIPTION_AVAILABLE):
        if props.get(ident, 0) > 1:
            raise ProtocolViolation(f"property {ident:#x} must be 0 or 1")
    if props.get(Prop.RECEIVE_MAXIMUM) == 0:
        raise ProtocolViolation("Receive Maximum 0")  # 3.1.2.11.3
    if props.get(Prop.MAXIMUM_PACKET_SIZE) == 0:
        raise ProtocolViolation("Maximum Packet Size 0")  # 3.1.2.11.4
    if 0 in props.get(Prop.SUBSCRIPTION_IDENTIFIER, ()):
        raise ProtocolViolation("Subscription Identifier 0")  # 3.3.2.3.8


def encode_properties(props: Properties) -> bytes:
    if not props:
        return b"\x00"
    out = bytearray()
    for ident, value in props.items():
        ptype = PROPERTY_TYPES[ident]
        values = value if ident in REPEATABLE else (value,)
        for v in values:
            out += encode_varint(ident)
            if ptype is PType.BYTE:
                out.append(v)
            elif ptype is PType.U16:
                out += _U16.pack(v)
            elif ptype is PType.U32:
                out += _U32.pack(v)
            elif ptype is PType.VARINT:
                out += encode_varint(v)
            elif ptype is PType.UTF8:
                out += _enc_utf8(v)
            elif ptype is PType.BINARY:
                out += _enc_binary(bytes(v))
            else:
                out += _enc_utf8(v[0]) + _enc_utf8(v[1])
    return encode_varint(len(out)) + out


def extend_properties(block: bytes | None, extra: bytes) -> bytes:
    """An encoded property block with ``extra`` (encoded properties) appended."""
    if not block or block == b"\x00":
        return encode_varint(len(extra)) + extra
    got = decode_varint(block, 0)
    if got is None:
        raise ValueError("truncated property block")
    length, start = got
    return encode_varint(length + len(extra)) + block[start:] + extra


def subscription_ids(ids: tuple[int, ...]) -> bytes:
    """Encoded Subscription Identifier properties (3.3.2.3.8)."""
    return b"".join(bytes((Prop.SUBSCRIPTION_IDENTIFIER,)) + encode_varint(i) for i in ids)


# ---------------------------------------------------------------- decoding

# Acknowledgement classes by packet type (an int key: building the table, or an enum
# member from the type, per packet was a visible part of a QoS 1 PUBACK's cost).
_ACKS: dict[int, type[Puback | Pubrec | Pubrel | Pubcomp]] = {
    PacketType.PUBACK: Puback, PacketType.PUBREC: Pubrec,
    PacketType.PUBREL: Pubrel, PacketType.PUBCOMP: Pubcomp}


def decode(first: int, body: bytes, version: int) -> Packet:
    """One packet from its first byte and the ``body`` after the Remaining Length.
    ``version`` is the connection's protocol level (before CONNECT, pass 0: only
    a CONNECT decodes then). Raises MqttError."""
    ptype = first >> 4
    flags = first & 0x0F
    if ptype == PacketType.PUBLISH:
        return decode_publish(flags, body, version)
    required = REQUIRED_FLAGS.get(ptype, 0)  # type: ignore[call-overload]
    if flags != required:
        # 2.1.3 [MQTT-2.1.3-1]: reserved flags must be as listed, else malformed.
        raise MalformedPacket(f"packet type {ptype} with flags {flags:#06b}")
    if ptype == PacketType.CONNECT:
        return decode_connect(body)
    v5 = version == MQTT_5
    if ptype in (PacketType.PUBACK, PacketType.PUBREC, PacketType.PUBREL, PacketType.PUBCOMP):
        pid, pos = _packet_id(body, 0)
        reason = 0
        props: Properties = NO_PROPERTIES
        # 3.4.2.1: reason code and properties may be omitted when 0 / empty.
        if v5 and pos < len(body):
            reason = body[pos]
            pos += 1
            if pos < len(body):
                props, pos = decode_properties(body, pos, PacketType(ptype))
        if pos != len(body):
            raise MalformedPacket("trailing bytes after an acknowledgement")
        return _ACKS[ptype](pid, reason, props)
    if ptype == PacketType.SUBSCRIBE:
        return decode_subscribe(body, version)
    if ptype == PacketType.UNSUBSCRIBE:
        return decode_unsubscribe(body, version)
    if ptype == PacketType.PINGREQ:
        if body:
            raise MalformedPacket("PINGREQ has no body")
        return Pingreq()
    if ptype == PacketType.PINGRESP:
        if body:
            raise MalformedPacket("PINGRESP has no body")
        return Pingresp()
    if ptype == PacketType.DISCONNECT:
        if not v5:
            if body:
                raise MalformedPacket("DISCONNECT has no body before 5.0")
            return Disconnect()
        reason = body[0] if body else 0
        props = NO_PROPERTIES
        if len(body) > 1:
            props, pos = decode_properties(body, 1, PacketType.DISCONNECT)
            if pos != len(body):
                raise MalformedPacket("trailing bytes after DISCONNECT")
        return Disconnect(reason, props)
    if ptype == PacketType.AUTH:
        if not v5:
            raise MalformedPacket("AUTH exists only in 5.0")
        reason = body[0] if body else 0
        props = NO_PROPERTIES
        if len(body) > 1:
            props, pos = decode_properties(body, 1, PacketType.AUTH)
            if pos != len(body):
                raise MalformedPacket("trailing bytes after AUTH")
        return Auth(reason, props)
    if ptype == PacketType.CONNACK:
        if len(body) < 2 or body[0] > 1:
            raise MalformedPacket("bad CONNACK")
        props = decode_properties(body, 2, PacketType.CONNACK)[0] if v5 else NO_PROPERTIES
        return Connack(bool(body[0]), body[1], props)
    if ptype == PacketType.SUBACK or ptype == PacketType.UNSUBACK:
        pid, pos = _packet_id(body, 0)
        props = NO_PROPERTIES
        if v5:
            props, pos = decode_properties(body, pos, PacketType(ptype))
        codes = tuple(body[pos:])
        if ptype == PacketType.SUBACK:
            return Suback(pid, codes, props)
        return Unsuback(pid, codes, props)
    raise MalformedPacket(f"packet type {ptype} is reserved")  # 0 (2.1.2)


def decode_connect(body: bytes) -> Connect:
    """3.1: CONNECT. An unknown protocol level raises MqttError with reason 0x84;
    the caller answers it with CONNACK (3.1.2.2 [MQTT-3.1.2-2])."""
    name, pos = _utf8(body, 0, "protocol name")
    if pos >= len(body):
        raise MalformedPacket("CONNECT ends after the protocol name")
    level = body[pos]
    if name == "MQIsdp":
        if level != MQTT_3_1:
            raise MqttError(f"MQIsdp level {level}", Reason.UNSUPPORTED_PROTOCOL_VERSION)
    elif name == "MQTT":
        if level not in (MQTT_3_1_1, MQTT_5):
            raise MqttError(f"MQTT protocol level {level}", Reason.UNSUPPORTED_PROTOCOL_VERSION)
    else:
        # 3.1.2.1 [MQTT-3.1.2-1]: MAY disconnect without CONNACK.
        raise ProtocolViolation(f"unknown protocol name {name!r}")
    version = level
    pos += 1
    if pos + 3 > len(body):
        raise MalformedPacket("CONNECT ends inside its variable header")
    flags = body[pos]
    keep_alive = (body[pos + 1] << 8) | body[pos + 2]
    pos += 3
    if flags & 0x01:
        raise MalformedPacket("CONNECT reserved flag set")  # [MQTT-3.1.2-3]
    clean = bool(flags & 0x02)
    will_flag = bool(flags & 0x04)
    will_qos = (flags >> 3) & 0x03
    will_retain = bool(flags & 0x20)
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if will_qos == 3:
        raise MalformedPacket("Will QoS 3")  # [MQTT-3.1.2-14]
    if not will_flag and (will_qos or will_retain):
        raise MalformedPacket("Will QoS or Retain without a Will")  # [MQTT-3.1.2-11, -13, -15]
    if version != MQTT_5 and has_password and not has_username:
        raise MalformedPacket("password without user name")  # 3.1.1 [MQTT-3.1.2-22]
    props: Properties = NO_PROPERTIES
    if version == MQTT_5:
        props, pos = decode_properties(body, pos, PacketType.CONNECT)
    client_id, pos = _utf8(body, pos, "client identifier")
    will = None
    if will_flag:
        will_props: Properties = NO_PROPERTIES
        if version == MQTT_5:
            will_props, pos = decode_properties(body, pos, "will")
        will_topic, pos = _utf8(body, pos, "will topic")
        will_payload, pos = _binary(body, pos, "will payload")
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    username = None
    password = None
    if has_username:
        username, pos = _utf8(body, pos, "user name")
    if has_password:
        password, pos = _binary(body, pos, "password")
    if pos != len(body):
        raise MalformedPacket("trailing bytes after the CONNECT payload")
    return Connect(version, client_id, clean, keep_alive, props, will, username, password)


def decode_publish(flags: int, body: bytes, version: int) -> Publish:
    """3.3: PUBLISH from its body."""
    return decode_publish_at(flags, body, 0, len(body), version)


def decode_publish_at(flags: int, buf: bytes, pos: int, n: int, version: int) -> Publish:
    """3.3: the PUBLISH whose body is ``buf[pos:n]``, read in place (the hot path:
    plain indexing, one copy for the topic and one for the payload)."""
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH QoS 3")  # [MQTT-3.3.1-4]
    dup = bool(flags & 0x08)
    if dup and not qos:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH")  # [MQTT-3.3.1-2]
    body = buf
    if n - pos < 2:
        raise MalformedPacket("PUBLISH too short")
    tlen = (body[pos] << 8) | body[pos + 1]
    tstart = pos + 2
    pos = tstart + tlen
    if pos > n:
        raise MalformedPacket("topic name runs past the packet")
    try:
        topic = body[tstart:pos].decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("topic name is not well-formed UTF-8") from None
    if not (topic.isascii() and topic.isprintable()):
        _check_text(topic, "topic name")
    pid = None
    if qos:
        if pos + 2 > n:
            raise MalformedPacket("PUBLISH ends before its packet identifier")
        pid = (body[pos] << 8) | body[pos + 1]
        if not pid:
            raise MalformedPacket("packet identifier 0")
        pos += 2
    props: Properties = NO_PROPERTIES
    if version == MQTT_5:
        if pos < n and body[pos] == 0:
            pos += 1
        else:
            props, pos = decode_properties(body[:n], pos, PacketType.PUBLISH)
    return Publish(topic, body[pos:n], qos, bool(flags & 0x01), dup, pid, props)


def decode_subscribe(body: bytes, version: int) -> Subscribe:
    """3.8: SUBSCRIBE; at least one filter [MQTT-3.8.3-3]."""
    pid, pos = _packet_id(body, 0)
    props: Properties = NO_PROPERTIES
    if version == MQTT_5:
        props, pos = decode_properties(body, pos, PacketType.SUBSCRIBE)
        if len(props.get(Prop.SUBSCRIPTION_IDENTIFIER, ())) > 1:
            raise ProtocolViolation("more than one Subscription Identifier")
    subs = []
    n = len(body)
    while pos < n:
        topic_filter, pos = _utf8(body, pos, "topic filter")
        if pos >= n:
            raise MalformedPacket("topic filter without its options byte")
        opts = body[pos]
        pos += 1
        qos = opts & 0x03
        if qos == 3:
            raise MalformedPacket("subscription QoS 3")  # [MQTT-3-8.3-4]
        if version == MQTT_5:
            if opts & 0xC0:
                raise MalformedPacket("reserved subscription option bits set")  # [MQTT-3.8.3-5]
            retain_handling = (opts >> 4) & 0x03
            if retain_handling == 3:
                raise ProtocolViolation("Retain Handling 3")  # 3.8.3.1
            subs.append(Subscription(topic_filter, qos, bool(opts & 0x04), bool(opts & 0x08),
                                     retain_handling))
        else:
            if opts & 0xFC:
                # 3.1.1 [MQTT-3.8.3-4]
                raise MalformedPacket("reserved subscription option bits set")
            subs.append(Subscription(topic_filter, qos))
    if not subs:
        raise ProtocolViolation("SUBSCRIBE without a topic filter")
    return Subscribe(pid, tuple(subs), props)


def decode_unsubscribe(body: bytes, version: int) -> Unsubscribe:
    """3.10: UNSUBSCRIBE; at least one filter [MQTT-3.10.3-2]."""
    pid, pos = _packet_id(body, 0)
    props: Properties = NO_PROPERTIES
    if version == MQTT_5:
        props, pos = decode_properties(body, pos, PacketType.UNSUBSCRIBE)
    filters = []
    while pos < len(body):
        topic_filter, pos = _utf8(body, pos, "topic filter")
        filters.append(topic_filter)
    if not filters:
        raise ProtocolViolation("UNSUBSCRIBE without a topic filter")
    return Unsubscribe(pid, tuple(filters), props)


# ---------------------------------------------------------------- encoding

def _frame(first: int, body: bytes | bytearray) -> bytes:
    n = len(body)
    if n < 128:
        return bytes((first, n)) + body
    return bytes((first,)) + encode_varint(n) + body


def encode_publish(topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool,
                   packet_id: int | None, props: bytes | None) -> bytes:
    """A PUBLISH from pre-encoded parts (``topic`` UTF-8; ``props`` the encoded
    property block for 5.0, None before 5.0): the fan-out fast path."""
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    tl = len(topic)
    head = bytes((tl >> 8, tl & 0xFF)) + topic
    if qos:
        head += bytes((packet_id >> 8, packet_id & 0xFF))  # type: ignore[operator]
    if props is not None:
        head += props
    n = len(head) + len(payload)
    if n < 128:
        return bytes((first, n)) + head + payload
    return b"".join((bytes((first,)), encode_varint(n), head, payload))


def encode(packet: Packet, version: int) -> bytes:
    """The whole packet (fixed header included) for a connection at ``version``.
    Raises ValueError for values that cannot be encoded (a bug of the caller)."""
    v5 = version == MQTT_5
    if isinstance(packet, Publish):
        return encode_publish(packet.topic.encode(), packet.payload, packet.qos, packet.retain,
                              packet.dup, packet.packet_id,
                              encode_properties(packet.properties) if v5 else None)
    if isinstance(packet, (Puback, Pubrec, Pubrel, Pubcomp)):
        first = {Puback: 0x40, Pubrec: 0x50, Pubrel: 0x62, Pubcomp: 0x70}[type(packet)]
        body: bytes | bytearray = _U16.pack(packet.packet_id)
        if v5 and (packet.reason or packet.properties):
            body += bytes((packet.reason,))
            if packet.properties:
                body += encode_properties(packet.properties)
        return _frame(first, body)
    if isinstance(packet, Connack):
        if v5:
            return _frame(0x20, bytes((int(packet.session_present), packet.reason))
                          + encode_properties(packet.properties))
        code = connack_code_311(packet.reason)
        present = packet.session_present and code == 0
        return _frame(0x20, bytes((int(present), code)))
    if isinstance(packet, Suback):
        if v5:
            return _frame(0x90, _U16.pack(packet.packet_id) + encode_properties(packet.properties)
                          + bytes(packet.reasons))
        codes = bytes(c if c <= 2 else SUBACK_FAILURE_311 for c in packet.reasons)
        return _frame(0x90, _U16.pack(packet.packet_id) + codes)
    if isinstance(packet, Unsuback):
        if v5:
            return _frame(0xB0, _U16.pack(packet.packet_id) + encode_properties(packet.properties)
                          + bytes(packet.reasons))
        return _frame(0xB0, _U16.pack(packet.packet_id))
    if isinstance(packet, Pingresp):
        return b"\xd0\x00"
    if isinstance(packet, Pingreq):
        return b"\xc0\x00"
    if isinstance(packet, Disconnect):
        if not v5:
            return b"\xe0\x00"
        if not packet.reason and not packet.properties:
            return b"\xe0\x00"
        return _frame(0xE0, bytes((packet.reason,)) + encode_properties(packet.properties))
    if isinstance(packet, Auth):
        return _frame(0xF0, bytes((packet.reason,)) + encode_properties(packet.properties))
    if isinstance(packet, Subscribe):
        body = bytearray(_U16.pack(packet.packet_id))
        if v5:
            body += encode_properties(packet.properties)
        for s in packet.subscriptions:
            body += _enc_utf8(s.filter)
            opts = s.qos
            if v5:
                opts |= (s.no_local << 2) | (s.retain_as_published << 3) | (s.retain_handling << 4)
            body.append(opts)
        return _frame(0x82, body)
    if isinstance(packet, Unsubscribe):
        body = bytearray(_U16.pack(packet.packet_id))
        if v5:
            body += encode_properties(packet.properties)
        for f in packet.filters:
            body += _enc_utf8(f)
        return _frame(0xA2, body)
    if isinstance(packet, Connect):
        return encode_connect(packet)
    raise TypeError(f"cannot encode {type(packet).__name__}")


def encode_connect(c: Connect) -> bytes:
    """CONNECT (the server never sends one; tests and the bench client do)."""
    v5 = c.version == MQTT_5
    name = "MQIsdp" if c.version == MQTT_3_1 else "MQTT"
    flags = (0x02 if c.clean_start else 0)
    if c.will is not None:
        flags |= 0x04 | (c.will.qos << 3) | (0x20 if c.will.retain else 0)
    if c.username is not None:
        flags |= 0x80
    if c.password is not None:
        flags |= 0x40
    body = bytearray(_enc_utf8(name) + bytes((c.version, flags)) + _U16.pack(c.keep_alive))
    if v5:
        body += encode_properties(c.properties)
    body += _enc_utf8(c.client_id)
    if c.will is not None:
        if v5:
            body += encode_properties(c.will.properties)
        body += _enc_utf8(c.will.topic) + _enc_binary(c.will.payload)
    if c.username is not None:
        body += _enc_utf8(c.username)
    if c.password is not None:
        body += _enc_binary(c.password)
    return _frame(0x10, body)
