"""The checkpoint: the CommitLog offset below which the ConsumeQueues and the key index are durable.

Recovery re-dispatches records from this offset on, so it bounds the scan after
a crash. It also keeps the previous, different checkpoint offset: recovery
validates (magic, sizes, CRC) from there, so that damage to the last records
written before the checkpoint caught up with them (a torn or tampered tail after
an idle second) is found too. Layout (big-endian, 36 bytes): magic 4 | version 4 |
CommitLog offset 8 | previous offset 8 | written at (ms) 8 | CRC-32 of the
preceding bytes 4. Written with ``atomic_write``; a checkpoint that fails its
CRC is ignored (recovery then scans from the start).
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

from .files import atomic_write, read_file

_LAYOUT = struct.Struct(">iiqqq")
_MAGIC = 0x46434B50  # "FCKP"
_VERSION = 2


@dataclass(frozen=True, slots=True)
class Checkpoint:
    physical_offset: int
    previous_offset: int
    written_at_ms: int


def write_checkpoint(directory: str, cp: Checkpoint) -> None:
    head = _LAYOUT.pack(_MAGIC, _VERSION, cp.physical_offset, cp.previous_offset,
                        cp.written_at_ms)
    atomic_write(os.path.join(directory, "checkpoint"), head + struct.pack(">I", zlib.crc32(head)))


def read_checkpoint(directory: str) -> Checkpoint | None:
    raw = read_file(os.path.join(directory, "checkpoint"))
    if raw is None or len(raw) != _LAYOUT.size + 4:
        return None
    head = raw[:_LAYOUT.size]
    if struct.unpack(">I", raw[_LAYOUT.size:])[0] != zlib.crc32(head):
        return None
    magic, version, phys, previous, ts = _LAYOUT.unpack(head)
    if magic != _MAGIC or version != _VERSION or not 0 <= previous <= phys:
        return None
    return Checkpoint(phys, previous, ts)
