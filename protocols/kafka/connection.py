"""The server side of one Kafka connection as a pure object: bytes in, requests out.

Feed received bytes to ``receive_data``; call ``next_event`` until it returns
``NEED_DATA``. Events:

- ``Request``: a decoded request of a supported (api key, version);
- ``UnsupportedVersion``: a known header whose version this server does not
  offer (answer ApiVersions with error 35 in v0 format; anything else: close);
- ``UnknownApi``: an api key this server does not implement (close);
- ``BadRequest``: a well-framed request whose body does not decode (close).

Framing errors (a size below the header, above ``max_frame_size``) raise
``FrameError``: the stream cannot be resynchronised, so the connection must be
closed. The frame size is checked before buffering its bytes, so a frame
announcing 2 GiB costs nothing. Responses are built with ``response_bytes``:
``size | correlation id | [tagged fields, flexible responses but ApiVersions]
| body`` as a list of chunks (a fetch response's batches are never joined).
"""

from __future__ import annotations

import contextlib
import mmap
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import RemoteProtocolError
from ..sentinels import NEED_DATA, NeedData
from . import schema
from .schema import DecodeError

DEFAULT_MAX_FRAME = 100 << 20  # Kafka's socket.request.max.bytes default (104857600)
LARGE_FRAME = 64 << 10  # frames from this size on are received into a buffer of their own
MAX_PREALLOCATED_FRAME = 16 << 20  # larger ones still grow with what arrives
API_VERSIONS = 18
_HEAD = struct.Struct(">ihhi")  # size, api key, api version, correlation id
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")


class FrameError(RemoteProtocolError, ValueError):
    """The peer broke framing; close the connection."""


@dataclass(frozen=True, slots=True)
class Header:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None


@dataclass(frozen=True, slots=True)
class Request:
    header: Header
    body: Any  # the generated request dataclass of header.api_key


@dataclass(frozen=True, slots=True)
class UnsupportedVersion:
    header: Header


@dataclass(frozen=True, slots=True)
class UnknownApi:
    header: Header


@dataclass(frozen=True, slots=True)
class BadRequest:
    header: Header
    reason: str


Event = Request | UnsupportedVersion | UnknownApi | BadRequest


class ServerConnection:
    """See the module docstring. ``supported`` maps api key -> (min, max) version."""

    def __init__(self, supported: Mapping[int, tuple[int, int]], *,
                 max_frame_size: int = DEFAULT_MAX_FRAME) -> None:
        self.supported = supported
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        # A large frame under way gets a buffer of its own size, filled in place
        # (``frame_buffer``/``frame_received``: the socket reads straight into it) and
        # parsed where it lies: no growing buffer, no slicing out, no page faults on
        # the copies between. Measured on produce requests of ~600 KB, the buffer
        # handling went from a third of the broker's CPU to noise.
        self._frame: mmap.mmap | None = None
        self._frame_have = 0
        # Zero-copy path: a read that arrives into an empty buffer is kept as the bytes
        # it is, and whole frames are parsed out of it through memoryviews. A produce
        # request of a megabyte then costs no copy here (two before: into the buffer,
        # out of it). Whatever is left of it moves to the buffer on the next read.
        self._data: bytes | None = None
        self._pos = 0

    @property
    def buffered(self) -> int:
        return (len(self._buf) + (len(self._data) - self._pos if self._data is not None else 0)
                + self._frame_have)

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        frame = self._frame
        if frame is not None:
            have = self._frame_have
            n = min(len(data), len(frame) - have)
            frame[have:have + n] = memoryview(data)[:n]
            self._frame_have = have + n
            if n == len(data):
                return
            data = bytes(memoryview(data)[n:])  # the start of the next frame
        if self._data is not None:
            self._spill()
        if not self._buf and type(data) is bytes:
            self._data, self._pos = data, 0
        else:
            self._buf += data

    def _spill(self) -> None:
        """Move the unparsed rest of the kept read into the buffer."""
        assert self._data is not None
        self._buf += memoryview(self._data)[self._pos:]
        self._data = None

    def frame_buffer(self) -> memoryview | None:
        """The unfilled rest of a large frame's buffer, when one is under way: receive
        into it, then call ``frame_received``. None: use ``receive_data``."""
        frame = self._frame
        if frame is None or self._frame_have == len(frame):
            return None
        return memoryview(frame)[self._frame_have:]

    def frame_received(self, n: int) -> None:
        """``n`` bytes were written into ``frame_buffer()``."""
        self._frame_have += n

    def frame_wanted(self) -> int:
        """How many more bytes complete the frame being received (0 if one is ready)."""
        if self._frame is not None:
            return len(self._frame) - self._frame_have
        if self._data is not None:
            self._spill()
        if len(self._buf) < 4:
            return 4 - len(self._buf)
        (size,) = _I32.unpack_from(self._buf, 0)
        return max(0, 4 + size - len(self._buf))

    def close(self) -> None:
        """Give back what is buffered now (a large frame's buffer is megabytes), not when
        the collector finds the connection."""
        frame, self._frame, self._frame_have = self._frame, None, 0
        if frame is not None:
            with contextlib.suppress(BufferError):  # a request parsed from it is still held
                frame.close()
        self._buf = bytearray()
        self._data = None

    def frame_in_progress(self) -> int:
        """The size (with its length word) of the frame begun but not complete; 0 when
        none has begun. A reader uses it to hold a budget before reading the rest."""
        if self._frame is not None:
            return 4 + len(self._frame) if self._frame_have < len(self._frame) else 0
        if self._data is not None:
            self._spill()
        n = len(self._buf)
        if n == 0:
            return 0
        if n < 4:
            return 4
        (size,) = _I32.unpack_from(self._buf, 0)
        return 4 + size if n < 4 + size else 0

    def next_raw_frame(self) -> bytes | NeedData:
        """The next size-prefixed frame as bare bytes (SASL tokens after a v0
        SaslHandshake travel outside Kafka's request framing)."""
        if self._data is not None:
            self._spill()
        buf = self._buf
        if len(buf) < 4:
            return NEED_DATA
        (size,) = _I32.unpack_from(buf, 0)
        if size < 0 or size > self.max_frame_size:
            raise FrameError(f"frame size {size} outside 0..{self.max_frame_size}")
        if len(buf) < 4 + size:
            return NEED_DATA
        frame = bytes(buf[4:4 + size])
        del buf[:4 + size]
        return frame

    def next_event(self) -> Event | NeedData:
        frame = self._frame
        if frame is not None:
            if self._frame_have < len(frame):
                return NEED_DATA
            self._frame, self._frame_have = None, 0
            return self._parse(memoryview(frame).toreadonly())
        data = self._data
        if data is not None:
            p = self._pos
            if len(data) - p >= 4:
                (size,) = _I32.unpack_from(data, p)
                if size < 8 or size > self.max_frame_size:
                    raise FrameError(f"request size {size} outside 8..{self.max_frame_size}")
                end = p + 4 + size
                if end <= len(data):
                    if end == len(data):
                        self._data = None
                    else:
                        self._pos = end
                    return self._parse(memoryview(data)[p + 4:end])
            self._spill()
        buf = self._buf
        if len(buf) < 4:
            return NEED_DATA
        (size,) = _I32.unpack_from(buf, 0)
        if size < 8 or size > self.max_frame_size:
            raise FrameError(f"request size {size} outside 8..{self.max_frame_size}")
        if len(buf) < 4 + size:
            if size >= LARGE_FRAME and size <= MAX_PREALLOCATED_FRAME:
                # Anonymous memory: its pages cost memory only as the bytes arrive
                # (bytearray(size) would zero, so touch, all of them at once).
                frame = self._frame = mmap.mmap(-1, size)
                self._frame_have = have = len(buf) - 4
                frame[:have] = memoryview(buf)[4:]
                buf.clear()
            return NEED_DATA
        whole = bytes(memoryview(buf)[4:4 + size])
        del buf[:4 + size]
        return self._parse(whole)

    def _parse(self, frame: bytes | memoryview) -> Event:
        api_key, version, correlation = struct.unpack_from(">hhi", frame, 0)
        view = memoryview(frame)
        try:
            client_id, pos = _client_id(view, 8)
        except DecodeError as exc:
            return BadRequest(Header(api_key, version, correlation, None), str(exc))
        header = Header(api_key, version, correlation, client_id)
        if api_key not in schema.API_NAMES:
            return UnknownApi(header)
        rng = self.supported.get(api_key)
        if rng is None:
            return UnknownApi(header)
        if not rng[0] <= version <= rng[1]:
            return UnsupportedVersion(header)
        try:
            if schema.is_flexible(api_key, version):
                pos = schema._skip_tagged(view, pos)  # request header v2's tagged fields
            # Bytes after a whole request are ignored, as Kafka's own parser ignores
            # them: librdkafka 2.x sends three after a Metadata v12 request.
            body = schema.decode(api_key, version, view[pos:], trailing=True)
        except DecodeError as exc:
            return BadRequest(header, str(exc))
        return Request(header, body)


def _client_id(view: memoryview, pos: int) -> tuple[str | None, int]:
    """The header's client id: a classic nullable string in every header version."""
    if pos + 2 > len(view):
        raise DecodeError("truncated request header")
    (n,) = _I16.unpack_from(view, pos)
    pos += 2
    if n < 0:
        return None, pos
    if pos + n > len(view):
        raise DecodeError("truncated client id")
    return str(view[pos:pos + n], "utf-8", "replace"), pos + n


def response_bytes(header: Header, body: Any, version: int | None = None) -> list[Any]:
    """A response frame for ``header``'s request as byte chunks. ``version`` overrides
    the encoding version (ApiVersions answers an unsupported version in v0)."""
    api_key = header.api_key
    v = header.api_version if version is None else version
    parts: list[Any] = [b"", _I32.pack(header.correlation_id)]
    if api_key != API_VERSIONS and schema.is_flexible(api_key, v, response=True):
        parts.append(b"\x00")  # response header v1: no tagged fields
    schema.encode(api_key, v, body, out=parts)
    parts[0] = _I32.pack(sum(len(p) for p in parts))
    return parts


def request_bytes(api_key: int, version: int, correlation_id: int, body: Any,
                  client_id: str | None = "test") -> bytes:
    """A request frame (the client side; tests and the benchmark use it)."""
    head = [struct.pack(">hhi", api_key, version, correlation_id)]
    if client_id is None:
        head.append(_I16.pack(-1))
    else:
        raw = client_id.encode()
        head.append(_I16.pack(len(raw)) + raw)
    if schema.is_flexible(api_key, version):
        head.append(b"\x00")
    payload = b"".join(head) + schema.encode_bytes(api_key, version, body, response=False)
    return _I32.pack(len(payload)) + payload


def parse_response(api_key: int, version: int, frame: bytes) -> tuple[int, Any]:
    """(correlation id, body) of a response frame without its size prefix (client side)."""
    (correlation,) = _I32.unpack_from(frame, 0)
    pos = 4
    if api_key != API_VERSIONS and schema.is_flexible(api_key, version, response=True):
        pos = schema._skip_tagged(memoryview(frame), pos)
    return correlation, schema.decode(api_key, version, frame[pos:], response=True)
