"""Kafka message codecs interpreted from the derived layouts in ``schema_data``: a version is data.

At import, every request and response struct of ``schema_data.APIS`` becomes a
frozen dataclass holding the union of its fields over all versions (a field
absent from a version keeps its default). Codecs are compiled lazily per
(api key, version, direction) into lists of small closures, so decoding a
Produce request costs a few dictionary-free function calls per field.

Wire rules implemented here (Kafka protocol guide; KIP-482 for flexible
versions): big-endian fixed-width integers; classic strings (int16 length,
-1 = null), bytes and arrays (int32 length, -1 = null); in flexible versions
the compact forms (unsigned varint length + 1, 0 = null) and a tagged-field
section closing every struct. A tagged field is written only when it differs
from its default (librdkafka before 2.2 mis-skips tags it does not know).

``DecodeError`` says the peer sent bytes that do not fit the layout; any
other exception from a decoder is a bug here.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import field, make_dataclass
from typing import Any

from ..errors import RemoteProtocolError
from .schema_data import APIS, OPEN

__all__ = ["API_NAMES", "DecodeError", "Message", "api_key_of", "decode", "encode",
           "request_class", "response_class", "valid_versions"]


class DecodeError(RemoteProtocolError, ValueError):
    """The bytes do not decode as the announced message and version."""


Message = Any  # an instance of one of the generated dataclasses
Reader = Callable[[memoryview, int], tuple[Any, int]]
Writer = Callable[[Any, list[Any]], None]

_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_U16 = struct.Struct(">H")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_F64 = struct.Struct(">d")
_FIXED = {"int8": _I8, "int16": _I16, "uint16": _U16, "int32": _I32, "int64": _I64,
          "float64": _F64}
_REQUEST, _RESPONSE = 0, 1

API_NAMES: dict[int, str] = {k: v[0] for k, v in APIS.items()}


def _in(rng: tuple[int, int] | None, v: int) -> bool:
    return rng is not None and rng[0] <= v <= rng[1]


# ------------------------------------------------------------------ varints


def read_uvarint(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 varint (at most 5 bytes: Kafka's uvarint is 32-bit)."""
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise DecodeError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 28:
            raise DecodeError("varint longer than 5 bytes")


def write_uvarint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# ------------------------------------------------------------------ primitives


def _fixed_reader(st: struct.Struct) -> Reader:
    unpack, size = st.unpack_from, st.size

    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        if pos + size > len(buf):
            raise DecodeError("truncated field")
        return unpack(buf, pos)[0], pos + size
    return read


def _fixed_writer(st: struct.Struct) -> Writer:
    pack = st.pack

    def write(value: Any, out: list[Any]) -> None:
        out.append(pack(value))
    return write


def _read_bool(buf: memoryview, pos: int) -> tuple[Any, int]:
    if pos >= len(buf):
        raise DecodeError("truncated field")
    return buf[pos] != 0, pos + 1


def _write_bool(value: Any, out: list[Any]) -> None:
    out.append(b"\x01" if value else b"\x00")


def _read_uuid(buf: memoryview, pos: int) -> tuple[Any, int]:
    if pos + 16 > len(buf):
        raise DecodeError("truncated uuid")
    return bytes(buf[pos:pos + 16]), pos + 16


def _write_uuid(value: Any, out: list[Any]) -> None:
    out.append(bytes(value or bytes(16)))


def _length_reader(compact: bool, wide: bool) -> Callable[[memoryview, int], tuple[int, int]]:
    """Reads a length: -1 means null."""
    if compact:
        def read(buf: memoryview, pos: int) -> tuple[int, int]:
            n, pos = read_uvarint(buf, pos)
            return n - 1, pos
        return read
    return _fixed_reader(_I32 if wide else _I16)


def _length_writer(compact: bool, wide: bool) -> Callable[[int], bytes]:
    if compact:
        return lambda n: write_uvarint(n + 1)
    return (_I32 if wide else _I16).pack


def _string_reader(compact: bool, nullable: bool) -> Reader:
    length = _length_reader(compact, False)

    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        n, pos = length(buf, pos)
        if n < 0:
            if n == -1 and nullable:
                return None, pos
            raise DecodeError("null or negative string length")
        end = pos + n
        if end > len(buf):
            raise DecodeError("truncated string")
        try:
            return str(buf[pos:end], "utf-8"), end
        except UnicodeDecodeError as exc:
            raise DecodeError("string is not UTF-8") from exc
    return read


def _string_writer(compact: bool) -> Writer:
    length = _length_writer(compact, False)

    def write(value: Any, out: list[Any]) -> None:
        if value is None:
            out.append(length(-1))
            return
        raw = value.encode()
        out.append(length(len(raw)))
        out.append(raw)
    return write


def _bytes_reader(compact: bool, nullable: bool, view: bool) -> Reader:
    length = _length_reader(compact, True)

    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        n, pos = length(buf, pos)
        if n < 0:
            if n == -1 and nullable:
                return None, pos
            raise DecodeError("null or negative bytes length")
        end = pos + n
        if end > len(buf):
            raise DecodeError("truncated bytes")
        return (buf[pos:end] if view else bytes(buf[pos:end])), end
    return read


def _bytes_writer(compact: bool) -> Writer:
    """Writes bytes; for ``records`` the value may also be a sequence of byte chunks
    (a fetch response's batches), appended without joining them."""
    length = _length_writer(compact, True)

    def write(value: Any, out: list[Any]) -> None:
        if value is None:
            out.append(length(-1))
        elif isinstance(value, (bytes, bytearray, memoryview)):
            out.append(length(len(value)))
            out.append(value)
        else:
            out.append(length(sum(len(p) for p in value)))
            out.extend(value)
    return write


# ------------------------------------------------------------------ structs

_CLASSES: dict[tuple[int, int], type] = {}
_CODECS: dict[tuple[int, int, int], tuple[Reader, Writer]] = {}


def _make_class(name: str, fields: tuple[Any, ...], top: type | None = None) -> type:
    """A frozen dataclass for a struct; every nested struct's class is reachable as an
    attribute of its parent and of the message's top-level class."""
    specs = []
    for f in fields:
        fname, kind, _v, _n, _tag, _tv, dflt, _sname, _sub = f
        if kind.startswith("[]"):
            dflt = ()
        specs.append((fname, Any, field(default=dflt)))
    cls = make_dataclass(name, specs, frozen=True, slots=True)
    cls.__module__ = __name__
    for f in fields:
        if f[8]:
            sub = _make_class(f[7], f[8], top or cls)
            setattr(cls, f[7], sub)
            setattr(top or cls, f[7], sub)
    return cls


def _field_codec(f: tuple[Any, ...], version: int, flexible: bool, owner: type
                 ) -> tuple[Reader, Writer]:
    _name, kind, _v, nullable, _tag, _tv, _dflt, sname, sub = f
    can_null = _in(nullable, version)
    if kind.startswith("[]"):
        elem = kind[2:]
        if elem == "struct":
            er, ew = _struct_codec(sub, version, flexible, getattr(owner, sname))
        else:
            er, ew = _primitive(elem, version, flexible, False)
        return _array(er, ew, flexible, can_null)
    if kind == "struct":
        return _struct_codec(sub, version, flexible, getattr(owner, sname))
    return _primitive(kind, version, flexible, can_null)


def _primitive(kind: str, version: int, flexible: bool, nullable: bool) -> tuple[Reader, Writer]:
    st = _FIXED.get(kind)
    if st is not None:
        return _fixed_reader(st), _fixed_writer(st)
    if kind == "bool":
        return _read_bool, _write_bool
    if kind == "uuid":
        return _read_uuid, _write_uuid
    if kind == "string":
        return _string_reader(flexible, nullable), _string_writer(flexible)
    if kind in ("bytes", "records"):
        return _bytes_reader(flexible, nullable, kind == "records"), _bytes_writer(flexible)
    raise AssertionError(f"unknown kind {kind}")


def _array(er: Reader, ew: Writer, compact: bool, nullable: bool) -> tuple[Reader, Writer]:
    length = _length_reader(compact, True)
    wlength = _length_writer(compact, True)

    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        n, pos = length(buf, pos)
        if n < 0:
            if n == -1 and nullable:
                return None, pos
            raise DecodeError("null or negative array length")
        if n > len(buf) - pos:  # every element takes at least one byte: bounds memory
            raise DecodeError("array longer than the message")
        items = []
        for _ in range(n):
            item, pos = er(buf, pos)
            items.append(item)
        return tuple(items), pos

    def write(value: Any, out: list[Any]) -> None:
        if value is None:
            out.append(wlength(-1))
            return
        out.append(wlength(len(value)))
        for item in value:
            ew(item, out)
    return read, write


def _skip_tagged(buf: memoryview, pos: int) -> int:
    n, pos = read_uvarint(buf, pos)
    for _ in range(n):
        _tag, pos = read_uvarint(buf, pos)
        size, pos = read_uvarint(buf, pos)
        pos += size
        if pos > len(buf):
            raise DecodeError("truncated tagged field")
    return pos


def _struct_codec(fields: tuple[Any, ...], version: int, flexible: bool, cls: type
                  ) -> tuple[Reader, Writer]:
    names = [f[0] for f in fields]
    defaults = [() if f[1].startswith("[]") else f[6] for f in fields]
    plain: list[tuple[int, Reader, Writer]] = []
    tagged: dict[int, tuple[int, Reader, Writer, Any, str]] = {}
    for i, f in enumerate(fields):
        if not _in(f[2], version):
            continue
        r, w = _field_codec(f, version, flexible, cls)
        if flexible and f[4] is not None and _in(f[5], version):
            tagged[f[4]] = (i, r, w, defaults[i], f[0])
        else:
            plain.append((i, r, w))
    ordered_tags = sorted(tagged.items())

    def read(buf: memoryview, pos: int) -> tuple[Any, int]:
        values = list(defaults)
        for i, r, _w in plain:
            values[i], pos = r(buf, pos)
        if flexible:
            n, pos = read_uvarint(buf, pos)
            for _ in range(n):
                tag, pos = read_uvarint(buf, pos)
                size, pos = read_uvarint(buf, pos)
                end = pos + size
                if end > len(buf):
                    raise DecodeError("truncated tagged field")
                known = tagged.get(tag)
                if known is not None:
                    values[known[0]], got = known[1](buf[:end], pos)
                    if got != end:
                        raise DecodeError(f"tagged field {tag} has a wrong size")
                pos = end
        return cls(*values), pos

    getters = [(names[i], w) for i, _r, w in plain]

    def write(obj: Any, out: list[Any]) -> None:
        if obj is None:
            obj = cls()
        for name, w in getters:
            w(getattr(obj, name), out)
        if flexible:
            present = []
            for tag, (_i, _r, w, dflt, name) in ordered_tags:
                value = getattr(obj, name)
                if value is None or value == dflt or (isinstance(value, (list, tuple))
                                                      and not value):
                    continue
                sub: list[Any] = []
                w(value, sub)
                data = b"".join(sub)
                present.append(write_uvarint(tag) + write_uvarint(len(data)) + data)
            out.append(write_uvarint(len(present)))
            out.extend(present)
    return read, write


# ------------------------------------------------------------------ public API

for _key, (_name, _req, _resp) in APIS.items():
    _camel = "".join(p.title() for p in _name.split("_"))
    _CLASSES[_key, _REQUEST] = _make_class(_camel + "Request", _req[2])
    _CLASSES[_key, _RESPONSE] = _make_class(_camel + "Response", _resp[2])


def api_key_of(name: str) -> int:
    for key, n in API_NAMES.items():
        if n == name:
            return key
    raise KeyError(name)


def valid_versions(api_key: int) -> tuple[int, int]:
    """The versions the derived layouts describe (not necessarily what a broker offers)."""
    return APIS[api_key][1][0]


# The message classes are made at import from data (schema_data), nested structs as
# class attributes: no type checker can know their fields, so they are typed Any.
def request_class(api_key: int) -> Any:
    return _CLASSES[api_key, _REQUEST]


def response_class(api_key: int) -> Any:
    return _CLASSES[api_key, _RESPONSE]


def is_flexible(api_key: int, version: int, response: bool = False) -> bool:
    return version >= APIS[api_key][2 if response else 1][1]


def _codec(api_key: int, version: int, direction: int) -> tuple[Reader, Writer]:
    key = (api_key, version, direction)
    codec = _CODECS.get(key)
    if codec is None:
        spec = APIS[api_key][1 + direction]
        lo, hi = spec[0]
        if not lo <= version <= min(hi, OPEN):
            raise DecodeError(f"{API_NAMES[api_key]} has no version {version}")
        codec = _CODECS[key] = _struct_codec(spec[2], version, version >= spec[1],
                                             _CLASSES[api_key, direction])
    return codec


def decode(api_key: int, version: int, data: bytes | memoryview, *, response: bool = False,
           pos: int = 0, trailing: bool = False) -> Message:
    """Decode a whole request (or response) body; trailing bytes are an error unless
    ``trailing`` (then they are ignored)."""
    buf = data if isinstance(data, memoryview) else memoryview(data)
    read = _codec(api_key, version, _RESPONSE if response else _REQUEST)[0]
    try:
        obj, end = read(buf, pos)
    except struct.error as exc:
        raise DecodeError(str(exc)) from exc
    if end != len(buf) and not trailing:
        raise DecodeError(f"{len(buf) - end} bytes after the message")
    return obj


def encode(api_key: int, version: int, message: Message, *, response: bool = True,
           out: list[Any] | None = None) -> list[Any]:
    """Encode a message into a list of byte chunks (appended to ``out`` if given).
    Raises ValueError/struct.error for values that do not fit their field (our bug)."""
    parts: list[Any] = [] if out is None else out
    _codec(api_key, version, _RESPONSE if response else _REQUEST)[1](message, parts)
    return parts


def encode_bytes(api_key: int, version: int, message: Message, *, response: bool = True) -> bytes:
    return b"".join(encode(api_key, version, message, response=response))


def chunk_sizes(parts: Sequence[Any]) -> int:
    return sum(len(p) for p in parts)
