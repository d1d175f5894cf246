"""zstd as HTTP uses it: the window limit browsers enforce, and the RFC 9842 `dcz` framing.

RFC 9659 (the `zstd` content coding) caps the window a decoder must accept at 8 MiB, and browsers
refuse a frame that asks for more, so every zstd frame sent keeps to it: the ones made here (their
window log is capped, and the content size written in the header lets a small file's frame ask
for no more than its size), and precompressed `.zst` siblings, whose frame header is read once at
load (`window_size`), one warning and the sibling left unused when it breaks the limit.

`dcz` (RFC 9842 section 4) is the 8-byte magic, the SHA-256 of the dictionary, then a zstd frame
compressed with the dictionary as raw content (no zstd dictionary header, no entropy tables).

Compressing needs the optional `zstandard` package (`pip install 'h2serve[zstd]'`); reading a frame
header does not, so `.zst` siblings are checked and served without it.
"""

from __future__ import annotations

import hashlib
from typing import Any

try:
    import zstandard
except ImportError:  # pragma: no cover - depends on the environment
    zstandard = None  # type: ignore[assignment]

WINDOW_LIMIT = 8 * 1024 * 1024   # RFC 9659 section 3: the largest window a decoder must accept
MAX_WINDOW_LOG = 23              # 2**23 = WINDOW_LIMIT
FAST_LEVEL = 3                   # on the fly: about gzip -6's speed, a better ratio
BEST_LEVEL = 19                  # precompressed once per file version (site/precompress.py)
DELTA_LEVEL = 19                 # dcz deltas, once per (file version, dictionary)
DCZ_MAGIC = b"\x5e\x2a\x4d\x18\x20\x00\x00\x00"  # RFC 9842 section 4: a skippable-frame header
DCZ_HEADER = len(DCZ_MAGIC) + 32
FRAME_MAGIC = b"\x28\xb5\x2f\xfd"
HEADER_BYTES = 18  # the longest frame header: magic, descriptor, window, 4-byte DID, 8-byte size


def available() -> bool:
    return zstandard is not None


def _window_log(size: int) -> int:
    """The smallest window log (10 at least, MAX_WINDOW_LOG at most) whose window holds `size`."""
    return min(MAX_WINDOW_LOG, max(10, (max(size, 1) - 1).bit_length()))


def compress(data: bytes, level: int = FAST_LEVEL) -> bytes:
    """One zstd frame of `data`, its window within WINDOW_LIMIT whatever the level."""
    assert zstandard is not None
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(data), window_log=_window_log(len(data)), write_content_size=True)
    return zstandard.ZstdCompressor(compression_params=params).compress(data)


def dictionary_hash(dictionary: bytes) -> bytes:
    return hashlib.sha256(dictionary).digest()


def compress_dcz(data: bytes, dictionary: bytes, level: int = DELTA_LEVEL) -> bytes:
    """`data` as a `dcz` body: the magic, the dictionary's SHA-256, a zstd frame whose matches may
    reach into `dictionary` (raw content). The window covers the dictionary and the data (capped at
    8 MiB; RFC 9842 lets the client accept up to 1.25 times the dictionary's size beyond that, which
    the files offered here, 1 MiB at most, never need)."""
    assert zstandard is not None
    raw = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    params = zstandard.ZstdCompressionParameters.from_level(
        level, source_size=len(data), window_log=_window_log(len(data) + len(dictionary)),
        write_content_size=True)
    frame = zstandard.ZstdCompressor(dict_data=raw, compression_params=params).compress(data)
    return DCZ_MAGIC + dictionary_hash(dictionary) + frame


def decompress_dcz(body: bytes, dictionary: bytes) -> bytes:
    """The inverse of `compress_dcz`, for tests and the benchmark (checks magic and hash)."""
    assert zstandard is not None
    if body[:8] != DCZ_MAGIC or body[8:DCZ_HEADER] != dictionary_hash(dictionary):
        raise ValueError("not a dcz body for this dictionary")
    raw = zstandard.ZstdCompressionDict(dictionary, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    reader: Any = zstandard.ZstdDecompressor(dict_data=raw, max_window_size=WINDOW_LIMIT)
    return bytes(reader.decompress(body[DCZ_HEADER:]))


def window_size(header: bytes) -> int | None:
    """The window a zstd frame asks for, from its first bytes (RFC 8878 section 3.1.1.1), or None
    if they are not the start of a zstd frame. A single-segment frame's window is its content size.
    Only the first frame is read: precompressing tools write one frame per file."""
    if len(header) < 6 or header[:4] != FRAME_MAGIC:
        return None
    descriptor = header[4]
    single = bool(descriptor & 0x20)
    fcs_flag = descriptor >> 6
    did_size = (0, 1, 2, 4)[descriptor & 3]
    fcs_size = (1 if single else 0, 2, 4, 8)[fcs_flag]
    pos = 5
    if not single:
        byte = header[pos]
        exponent, mantissa = byte >> 3, byte & 7
        base = 1 << (10 + exponent)
        return base + (base // 8) * mantissa
    pos += did_size
    if len(header) < pos + fcs_size:
        return None
    raw = header[pos:pos + fcs_size]
    size = int.from_bytes(raw, "little")
    return size + 256 if fcs_size == 2 else size


def frame_ok(path: str) -> tuple[bool, int | None]:
    """Whether a `.zst` file's first frame keeps to WINDOW_LIMIT, and the window it asks for."""
    try:
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError:
        return False, None
    window = window_size(head)
    return window is not None and window <= WINDOW_LIMIT, window

