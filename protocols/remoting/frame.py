"""The remoting frame: ``RemotingCommand`` to bytes and back, and a sans-I/O stream decoder.

Wire layout (RocketMQ ``RemotingCommand.encode``/``decode``, big-endian)::

    int32 length            bytes that follow this word (header word + header + body)
    int32 type<<24 | hlen   serialize type in the top byte, header length below
    header                  JSON (type 0) or RocketMQ binary (type 1)
    body                    the rest

JSON header: ``{"code", "language", "version", "opaque", "flag", "remark",
"extFields", "serializeTypeCurrentRPC"}``. Binary header (RocketMQSerializable):
``int16 code | int8 language | int16 version | int32 opaque | int32 flag |
int32 remark length | remark | int32 ext length | (int16 klen | key | int32 vlen
| value)*``.

Loose input is accepted (numbers and booleans where strings belong, a language
as a name or a number, missing fields); what we emit is what RocketMQ emits
(every extField a string, ``language`` as a name). The decoder enforces the
maximum frame size itself: a peer cannot make it buffer more than that.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import re
import struct
from collections.abc import Mapping
from types import MappingProxyType
from typing import NamedTuple

from .. import boundedjson
from ..errors import RemoteProtocolError
from ..sentinels import NEED_DATA, NeedData
from .codes import FLAG_ONEWAY, FLAG_RESPONSE, LanguageCode, SerializeType

DEFAULT_MAX_FRAME = 16 * 1024 * 1024  # NettySystemConfig: 16 MiB frame maximum
# A JSON header is one flat object with one object inside (extFields): depth 2. The
# size allows SEND_MESSAGE's properties with a 65,535-byte MQTT topic name many times
# over; brackets inside strings (JSON kept in properties) count as containers, so that
# limit is generous. Past these a header is a protocol error (docs/remoting.md).
HEADER_JSON_LIMITS = boundedjson.JsonLimits(max_bytes=1 << 20, max_depth=8,
                                            max_containers=100_000)
_OPAQUE_IN_TEXT = re.compile(rb'"opaque"\s*:\s*"?(-?\d{1,10})')
MIN_FRAME = 4  # the header-length word alone
_I32 = struct.Struct(">i")
_U32 = struct.Struct(">I")
_FRAME_HEAD = struct.Struct(">iI")
_BIN_FIXED = struct.Struct(">hbhii")
_NO_FIELDS: Mapping[str, object] = MappingProxyType({})  # code, language, version, opaque, flag
_H = struct.Struct(">h")

_LANG_BY_NAME = {lang.name: lang for lang in LanguageCode}
_LANG_NAMES = {int(lang): lang.name for lang in LanguageCode}
_esc = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.encode_basestring


class RemotingProtocolError(RemoteProtocolError):
    """The peer broke the framing or sent an undecodable header: close the connection.

    ``opaque`` is set when the header was readable enough to answer the request."""

    def __init__(self, message: str, opaque: int | None = None) -> None:
        super().__init__(message)
        self.opaque = opaque


class RemotingCommand(NamedTuple):
    """One request or response. ``ext_fields`` holds the typed header's fields as
    RocketMQ carries them (strings when we build them; whatever the peer sent
    when decoded). See headers.py for the typed views.

    Immutable. A named tuple rather than a frozen dataclass: one is built for every
    frame in each direction, and a frozen dataclass's ``__init__`` (one
    ``object.__setattr__`` per field) showed up in the broker's profile."""

    code: int
    opaque: int = 0
    flag: int = 0
    ext_fields: Mapping[str, object] = _NO_FIELDS
    body: bytes = b""
    remark: str | None = None
    language: int = LanguageCode.PYTHON
    version: int = 0
    serialize_type: int = SerializeType.JSON

    @property
    def is_response(self) -> bool:
        return bool(self.flag & FLAG_RESPONSE)

    @property
    def is_oneway(self) -> bool:
        return bool(self.flag & FLAG_ONEWAY)

    def ext(self, name: str, default: str | None = None) -> str | None:
        """One extField as a string (loose input: ints and bools become strings)."""
        v = self.ext_fields.get(name)
        if v is None:
            return default
        if isinstance(v, bool):
            return "true" if v else "false"
        return v if isinstance(v, str) else str(v)


def request(code: int, opaque: int, ext_fields: Mapping[str, object] | None = None,
            body: bytes = b"", *, oneway: bool = False,
            serialize_type: int = SerializeType.JSON) -> RemotingCommand:
    return RemotingCommand(code, opaque, FLAG_ONEWAY if oneway else 0, ext_fields or {}, body,
                           serialize_type=serialize_type)


def response_to(req: RemotingCommand, code: int, ext_fields: Mapping[str, object] | None = None,
                body: bytes = b"", remark: str | None = None) -> RemotingCommand:
    """The response to ``req``: same opaque, same header encoding, response flag set."""
    return RemotingCommand(code, req.opaque, FLAG_RESPONSE, ext_fields or {}, body, remark,
                           LanguageCode.JAVA, req.version, req.serialize_type)


# ------------------------------------------------------------------ encoding


def _ext_str(v: object) -> str:
    if type(v) is str:
        return v
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def encode_header(cmd: RemotingCommand) -> bytes:
    """The header bytes of ``cmd`` in its serialize type."""
    if cmd.serialize_type != SerializeType.ROCKETMQ:
        return _encode_json_header(cmd)
    ext = {k: _ext_str(v) for k, v in cmd.ext_fields.items() if v is not None}
    parts = [_BIN_FIXED.pack(cmd.code, int(cmd.language), cmd.version, cmd.opaque, cmd.flag)]
    remark = cmd.remark.encode() if cmd.remark else b""
    parts.append(_I32.pack(len(remark)) + remark)
    kv = []
    for k, v in ext.items():
        kb, vb = k.encode(), v.encode()
        kv.append(_H.pack(len(kb)) + kb + _I32.pack(len(vb)) + vb)
    ext_bytes = b"".join(kv)
    parts.append(_I32.pack(len(ext_bytes)) + ext_bytes)
    return b"".join(parts)


def _encode_json_header(cmd: RemotingCommand) -> bytes:
    # Written by hand rather than with json.dumps: this is on every request and
    # response, and the shape is fixed (keys in RocketMQ's order: fastjson sorts them).
    # One pass over the fields, strings as they are (what FerryMQ builds is all strings).
    fields = [f"{_esc(k)}:{_esc(v if type(v) is str else _ext_str(v))}"
              for k, v in cmd.ext_fields.items() if v is not None]
    ext = '"extFields":{' + ",".join(fields) + "}," if fields else ""
    remark = "" if cmd.remark is None else f'"remark":{_esc(cmd.remark)},'
    return (f'{{"code":{int(cmd.code)},{ext}"flag":{int(cmd.flag)},"language":'
            f'"{_LANG_NAMES.get(cmd.language, "OTHER")}","opaque":{int(cmd.opaque)},{remark}'
            f'"serializeTypeCurrentRPC":"JSON","version":{int(cmd.version)}}}').encode()


def encode(cmd: RemotingCommand) -> bytes:
    """The whole frame of ``cmd``."""
    header = encode_header(cmd)
    body = cmd.body
    return b"".join((_FRAME_HEAD.pack(4 + len(header) + len(body),
                                      (int(cmd.serialize_type) << 24) | len(header)),
                     header, body))


_SEND_OK = ('{"code":0,"extFields":{"msgId":"%s","queueId":"%d","queueOffset":"%d",'
            '"MSG_REGION":"DefaultRegion","TRACE_ON":"true"},"flag":1,"language":"JAVA",'
            '"opaque":%d,"serializeTypeCurrentRPC":"JSON","version":%d}')


def encode_send_ok(req: RemotingCommand, msg_id: str, queue_id: int, queue_offset: int) -> bytes:
    """The SUCCESS response to a send, as ``encode(response_to(req, SUCCESS, {...}))``
    gives it, from a template: it answers every message produced (a JSON request only;
    ``msg_id`` is hex, comma-separated for a batch: nothing needs escaping)."""
    if req.serialize_type != SerializeType.JSON:
        return encode(response_to(req, 0, {
            "msgId": msg_id, "queueId": str(queue_id), "queueOffset": str(queue_offset),
            "MSG_REGION": "DefaultRegion", "TRACE_ON": "true"}))
    header = (_SEND_OK % (msg_id, queue_id, queue_offset, req.opaque, req.version)).encode()
    return _FRAME_HEAD.pack(4 + len(header), len(header)) + header


# ------------------------------------------------------------------ decoding


def _int(v: object, default: int = 0) -> int:
    if v is None or v == "":
        return default
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, int):
        return v
    return int(str(v).strip())


def _language(v: object) -> int:
    if isinstance(v, str):
        lang = _LANG_BY_NAME.get(v.upper())
        if lang is not None:
            return lang
        try:
            return int(v)
        except ValueError:
            return LanguageCode.OTHER
    if isinstance(v, int):
        return v
    return LanguageCode.OTHER


def _opaque_of(raw: bytes) -> int | None:
    """The opaque of a header that will not decode, when its text shows one: the error
    response can then name the request it answers."""
    m = _OPAQUE_IN_TEXT.search(raw[:4096])
    if m is None:
        return None
    value = int(m.group(1))
    return value if -(1 << 31) <= value < (1 << 31) else None


def decode_json_header(raw: bytes | memoryview, body: bytes) -> RemotingCommand:
    if len(raw) > HEADER_JSON_LIMITS.max_bytes:  # in bytes, before decoding any of it
        raise RemotingProtocolError(
            f"header refused: JSON text of {len(raw)} bytes; the limit is "
            f"{HEADER_JSON_LIMITS.max_bytes}", _opaque_of(bytes(raw[:4096])))
    try:
        # Decoded to text straight from the buffer (one copy, and json.loads need not
        # guess the encoding of bytes): RocketMQ's JSON headers are UTF-8.
        doc = boundedjson.loads(str(raw, "utf-8"), HEADER_JSON_LIMITS)
    except boundedjson.JsonLimitError as exc:
        raise RemotingProtocolError(f"header refused: {exc}", _opaque_of(bytes(raw))) from None
    except ValueError as exc:  # UnicodeDecodeError is one
        raise RemotingProtocolError(f"header is not JSON: {exc}",
                                    _opaque_of(bytes(raw))) from None
    if not isinstance(doc, dict):
        raise RemotingProtocolError("JSON header is not an object", _opaque_of(bytes(raw)))
    opaque = None
    try:
        opaque, code, flag, version = (doc.get("opaque"), doc.get("code"), doc.get("flag"),
                                       doc.get("version"))
        if type(opaque) is not int:
            opaque = _int(opaque)
        if type(code) is not int:
            code = _int(code)
        if type(flag) is not int:
            flag = _int(flag)
        if type(version) is not int:
            version = _int(version)
    except (TypeError, ValueError):
        raise RemotingProtocolError("JSON header has a non-numeric code, opaque, flag or "
                                    "version", opaque) from None
    ext = doc.get("extFields") or {}
    if not isinstance(ext, dict):
        raise RemotingProtocolError("extFields is not an object", opaque)
    remark = doc.get("remark")
    return RemotingCommand(code, opaque, flag, ext, body,
                           None if remark is None else str(remark),
                           _language(doc.get("language")), version, SerializeType.JSON)


def decode_binary_header(raw: bytes | memoryview, body: bytes) -> RemotingCommand:
    n = len(raw)
    if n < _BIN_FIXED.size + 8:
        raise RemotingProtocolError("binary header truncated")
    code, lang, version, opaque, flag = _BIN_FIXED.unpack_from(raw, 0)
    p = _BIN_FIXED.size
    (rlen,) = _I32.unpack_from(raw, p)
    p += 4
    if rlen < 0 or p + rlen + 4 > n:
        raise RemotingProtocolError("binary header: remark length out of range", opaque)
    try:
        remark = bytes(raw[p:p + rlen]).decode() if rlen else None
        p += rlen
        (elen,) = _I32.unpack_from(raw, p)
        p += 4
        end = p + elen
        if elen < 0 or end > n:
            raise RemotingProtocolError("binary header: extFields length out of range", opaque)
        ext: dict[str, str] = {}
        while p < end:
            if p + 2 > end:
                raise RemotingProtocolError("binary header: truncated key", opaque)
            (klen,) = _H.unpack_from(raw, p)
            p += 2
            if klen < 0 or p + klen + 4 > end:
                raise RemotingProtocolError("binary header: key length out of range", opaque)
            k = bytes(raw[p:p + klen]).decode()
            p += klen
            (vlen,) = _I32.unpack_from(raw, p)
            p += 4
            if vlen < 0 or p + vlen > end:
                raise RemotingProtocolError("binary header: value length out of range", opaque)
            ext[k] = bytes(raw[p:p + vlen]).decode()
            p += vlen
    except UnicodeDecodeError:
        raise RemotingProtocolError("binary header: text is not UTF-8", opaque) from None
    return RemotingCommand(code, opaque, flag, ext, body, remark, lang, version,
                           SerializeType.ROCKETMQ)


def decode_frame(frame: bytes | memoryview) -> RemotingCommand:
    """One frame without its leading length word. Raises RemotingProtocolError."""
    n = len(frame)
    if n < MIN_FRAME:
        raise RemotingProtocolError("frame shorter than its header-length word")
    (word,) = _U32.unpack_from(frame, 0)
    stype = word >> 24
    hlen = word & 0xFFFFFF
    if hlen > n - 4:
        raise RemotingProtocolError(f"header length {hlen} exceeds the frame ({n - 4} bytes)")
    header = memoryview(frame)[4:4 + hlen]
    body = bytes(frame[4 + hlen:])
    if stype == SerializeType.JSON:
        return decode_json_header(header, body)
    if stype == SerializeType.ROCKETMQ:
        return decode_binary_header(header, body)
    raise RemotingProtocolError(f"unknown serialize type {stype}")


LARGE_FRAME = 64 << 10  # a frame from this size on, incomplete, gets a buffer of its own


class FrameDecoder:
    """Feed bytes with ``receive_data``; take commands with ``next_command`` (NEED_DATA
    when more bytes are needed). Raises RemotingProtocolError for a frame larger
    than ``max_frame`` (as soon as its length word arrives), a negative length,
    or an undecodable header; after that the stream is unusable: close it.

    Memory held is at most one frame plus one read. A large frame that is not
    complete gets a buffer of exactly its size (anonymous memory: pages cost only
    once written), which the rest of it fills in place: no growing bytearray
    over-allocating and copying as it arrives, and all of it handed back at once."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self._pos = 0
        self._frame: mmap.mmap | None = None  # the large frame under way, without its length
        self._frame_have = 0

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos + self._frame_have

    def frame_in_progress(self) -> int:
        """The length of the frame begun but not complete (0: none, or only part of
        its length word): the bytes a reader will hold once it has all of them."""
        if self._frame is not None:
            return 4 + len(self._frame) if self._frame_have < len(self._frame) else 0
        avail = len(self._buf) - self._pos
        if avail == 0:
            return 0
        if avail < 4:
            return 4
        (length,) = _I32.unpack_from(self._buf, self._pos)
        return 4 + length if avail < 4 + length else 0

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        frame = self._frame
        if frame is not None:
            have = self._frame_have
            n = min(len(data), len(frame) - have)
            frame[have:have + n] = memoryview(data)[:n]
            self._frame_have = have + n
            if n == len(data):
                return
            data = memoryview(data)[n:]  # the next frame begins
        if self._pos and self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        self._buf += data
        if len(self._buf) - self._pos >= 4:
            (length,) = _I32.unpack_from(self._buf, self._pos)
            self._check(length)

    def _check(self, length: int) -> None:
        if length < MIN_FRAME or length > self.max_frame:
            raise RemotingProtocolError(
                f"frame length {length} outside {MIN_FRAME}..{self.max_frame}")

    def next_command(self) -> RemotingCommand | NeedData:
        frame = self._frame
        if frame is not None:
            if self._frame_have < len(frame):
                return NEED_DATA
            self._frame, self._frame_have = None, 0
            try:
                return decode_frame(memoryview(frame))  # the body comes out as bytes
            finally:
                with contextlib.suppress(BufferError):  # a traceback still holds a view
                    frame.close()
        buf = self._buf
        pos = self._pos
        avail = len(buf) - pos
        if avail < 4:
            self._compact()
            return NEED_DATA
        (length,) = _I32.unpack_from(buf, pos)
        self._check(length)
        if avail < 4 + length:
            if length >= LARGE_FRAME:
                big = self._frame = mmap.mmap(-1, length)
                self._frame_have = have = avail - 4
                big[:have] = memoryview(buf)[pos + 4:]
                buf.clear()
                self._pos = 0
            else:
                self._compact()
            return NEED_DATA
        self._pos = pos + 4 + length
        with memoryview(buf) as view:  # header and body read in place: the body is copied once
            return decode_frame(view[pos + 4:pos + 4 + length])

    def _compact(self) -> None:
        if self._pos:
            del self._buf[:self._pos]
            self._pos = 0

    def close(self) -> None:
        """Give back what is buffered now, not when the collector finds the connection
        (a closed connection's large frame is megabytes)."""
        frame, self._frame, self._frame_have = self._frame, None, 0
        if frame is not None:
            with contextlib.suppress(BufferError):
                frame.close()
        self._buf = bytearray()
        self._pos = 0
