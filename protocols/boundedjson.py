"""JSON decoding with limits: size, nesting depth and container count, refused with a ValueError.

The standard library's ``json.loads`` has none of these. A 10 KB text of
``[`` x 5,000 then ``]`` x 5,000 makes it raise ``RecursionError`` (not a
``ValueError``, so a decoder's ``except ValueError`` lets it through); a text
nested just below the interpreter's limit parses, and a ``repr``, ``str`` or
``json.dumps`` of the result from a deeper point of the stack raises it there,
far from the input; and ``[[],[],...]`` costs about twenty times its size in
Python objects. Every JSON a peer sends FerryMQ (remoting
headers and bodies, the HTTP door's envelopes, NDJSON and CloudEvents, JSON
kept in message properties) goes through ``loads`` here instead, with limits
that fit the format:

- ``max_bytes``: the text's length;
- ``max_containers``: arrays and objects, counted as ``[`` and ``{`` bytes
  before parsing (C speed; brackets inside strings count too, so the count can
  only err on the safe side): memory stays within a small multiple of the text;
- ``max_depth``: nesting, checked without recursion after parsing, and only
  when the text holds more brackets than the limit (a flat header never pays).

``JsonLimitError`` is a ``ValueError``, so callers that already turn a
malformed document into their protocol's error do the same for these.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from .errors import RemoteProtocolError


class JsonLimitError(RemoteProtocolError, ValueError):
    """The text is too large, too nested or holds too many containers."""


@dataclass(frozen=True, slots=True)
class JsonLimits:
    max_bytes: int = 16 << 20
    max_depth: int = 64
    max_containers: int = 200_000


DEFAULT_LIMITS = JsonLimits()


def loads(data: bytes | bytearray | memoryview | str, limits: JsonLimits = DEFAULT_LIMITS) -> Any:
    """``json.loads`` within ``limits``. Raises ValueError (``json.JSONDecodeError``,
    ``UnicodeDecodeError`` or ``JsonLimitError``) for anything it will not return."""
    if isinstance(data, memoryview | bytearray):
        data = bytes(data)
    n = len(data)
    if n > limits.max_bytes:
        raise JsonLimitError(f"JSON text of {n} bytes; the limit is {limits.max_bytes}")
    if isinstance(data, str):
        opens = data.count("[") + data.count("{")
    else:
        opens = data.count(b"[") + data.count(b"{")
    if opens > limits.max_containers:
        raise JsonLimitError(f"JSON text with {opens} arrays and objects; the limit is "
                             f"{limits.max_containers}")
    try:
        doc = json.loads(data)
    except RecursionError:
        raise JsonLimitError(f"JSON nested deeper than {limits.max_depth}") from None
    if opens > limits.max_depth and depth_exceeds(doc, limits.max_depth):
        raise JsonLimitError(f"JSON nested deeper than {limits.max_depth}")
    return doc


def depth_exceeds(doc: Any, limit: int) -> bool:
    """Whether ``doc`` nests arrays and objects deeper than ``limit`` (a scalar has
    depth 0, ``[]`` depth 1). Iterative: it cannot itself overflow the stack."""
    stack: list[tuple[Any, int]] = [(doc, 0)]
    pop, push = stack.pop, stack.append
    while stack:
        value, depth = pop()
        kind = type(value)
        if kind is dict:
            children = value.values()
        elif kind is list:
            children = value
        else:
            continue
        depth += 1
        if depth > limit:
            return True
        for child in children:
            if type(child) in (dict, list):
                push((child, depth))
    return False
