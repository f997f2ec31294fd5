"""Compressed Kafka batches are inflated within MAX_DECOMPRESSED, whatever they claim: a 16 KB
zstd frame of 512 MiB of zeros is refused as it passes the limit, not after it was made."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import cramjam
import pytest
from ferrymq.protocols.kafka import records as kr

# Run in a child: ru_maxrss is the process's high-water mark, so only a fresh process
# shows what one call costs.
PROBE = textwrap.dedent("""
    import resource, sys, zstandard, lz4.frame
    from ferrymq.protocols.kafka import records as kr
    codec = int(sys.argv[1])
    mib = b"\\0" * (1 << 20)
    if codec == kr.ZSTD:
        c = zstandard.ZstdCompressor().compressobj()
        bomb = b"".join([c.compress(mib) for _ in range(512)] + [c.flush()])
    else:
        c = lz4.frame.LZ4FrameCompressor()
        bomb = b"".join([c.begin()] + [c.compress(mib) for _ in range(512)] + [c.flush()])
    del mib, c
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        kr.decompress(codec, bomb)
        print("inflated")
    except kr.RecordsError as exc:
        print("refused", exc)
    grew = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    print("peak_growth_kib", grew)
""")


@pytest.mark.parametrize("codec", [kr.ZSTD, kr.LZ4])
def test_a_decompression_bomb_is_refused_within_the_limit(codec: int) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, str(codec)], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert "refused decompressed batch too large" in out, out
    grew = int(out.split("peak_growth_kib")[1])
    assert grew < (kr.MAX_DECOMPRESSED >> 10) + 32 * 1024, f"peak memory grew by {grew} KiB"


def test_a_snappy_block_claiming_too_much_is_refused_before_inflating() -> None:
    # A raw snappy preamble is the uncompressed length as a varint: claim 1 GiB.
    claim = 1 << 30
    varint = bytearray()
    while True:
        byte = claim & 0x7F
        claim >>= 7
        varint.append(byte | (0x80 if claim else 0))
        if not claim:
            break
    with pytest.raises(kr.RecordsError, match="too large"):
        kr.decompress(kr.SNAPPY, bytes(varint) + b"\x00" * 16)


@pytest.mark.parametrize("codec", [kr.GZIP, kr.SNAPPY, kr.LZ4, kr.ZSTD])
def test_ordinary_batches_still_round_trip(codec: int) -> None:
    data = b"a record or two " * 5000
    assert kr.decompress(codec, kr.compress(codec, data)) == data
    big = bytes(range(256)) * 8192  # 2 MiB: past the size whose pages are handed back
    assert kr.decompress(codec, kr.compress(codec, big)) == big
    assert kr.decompress(codec, kr.compress(codec, b"again")) == b"again"


def test_garbage_is_still_a_records_error() -> None:
    for codec in (kr.LZ4, kr.ZSTD, kr.SNAPPY):
        with pytest.raises(kr.RecordsError):
            kr.decompress(codec, b"certainly not compressed data")
    assert isinstance(cramjam.DecompressionError("x"), Exception)
