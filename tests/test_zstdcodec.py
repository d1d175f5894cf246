"""zstd as HTTP uses it (h2serve/site/zstdcodec.py): the 8 MiB window limit of RFC 9659 on every frame
the server sends, made here or found beside a file, and the dcz framing of RFC 9842.

Frames are checked with `zstandard` (the reference library's binding): its reading of a frame header
is what `window_size` must agree with, and a decoder limited to 8 MiB, as browsers are, must take
every frame the server sends.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import zstandard
from conftest import RunningServer

from h2serve.site import zstdcodec

LIMIT = 8 * 1024 * 1024


def text(size: int) -> bytes:
    """Compressible text of `size` bytes with long-range repeats (what a big window would catch)."""
    block = b"".join(b"var item_%05d = compute(%d, 'label %d');\n" % (i, i * 7, i) for i in range(2000))
    return (block * (size // len(block) + 1))[:size]


def stream_frame(data: bytes, window_log: int) -> bytes:
    """A frame written as a stream (no content size in its header), with the window asked for:
    what `zstd --long=27` makes."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log)
    out = io.BytesIO()
    with zstandard.ZstdCompressor(compression_params=params).stream_writer(out, closefd=False) as w:
        w.write(data)
    return out.getvalue()


@pytest.mark.parametrize("frame", [
    pytest.param(lambda: zstdcodec.compress(b""), id="empty"),
    pytest.param(lambda: zstdcodec.compress(text(200)), id="1-byte size"),
    pytest.param(lambda: zstdcodec.compress(text(300)), id="2-byte size"),
    pytest.param(lambda: zstdcodec.compress(text(100_000), 19), id="4-byte size"),
    pytest.param(lambda: stream_frame(text(5000), 20), id="window 2^20"),
    pytest.param(lambda: stream_frame(text(5000), 27), id="window 2^27"),
    pytest.param(lambda: zstandard.ZstdCompressor(level=3, dict_data=zstandard.ZstdCompressionDict(
        text(4000), dict_type=zstandard.DICT_TYPE_RAWCONTENT)).compress(text(9000)), id="with dictionary"),
])
def test_window_size_agrees_with_zstandard(frame: Callable[[], bytes]) -> None:
    made = frame()
    expected = zstandard.get_frame_parameters(made).window_size
    assert zstdcodec.window_size(made[:zstdcodec.HEADER_BYTES]) == expected


def test_window_size_of_what_is_no_zstd_frame() -> None:
    assert zstdcodec.window_size(b"") is None
    assert zstdcodec.window_size(b"\x1f\x8b\x08\x00\x00\x00\x00\x00") is None  # gzip
    assert zstdcodec.window_size(zstdcodec.DCZ_MAGIC + bytes(32)) is None


@pytest.mark.parametrize("level", [zstdcodec.FAST_LEVEL, zstdcodec.BEST_LEVEL])
def test_frames_made_here_keep_the_window_limit_whatever_the_size(level: int) -> None:
    """Level 19 would use a 2^23 window anyway, but larger inputs and `--long` levels would not:
    the window log is capped at 23, and the data still decodes with an 8 MiB decoder."""
    data = text(12 * 1024 * 1024)
    made = zstdcodec.compress(data, level)
    assert zstandard.get_frame_parameters(made).window_size <= LIMIT
    assert zstandard.ZstdDecompressor(max_window_size=LIMIT).decompress(made) == data


def test_dcz_framing_and_window() -> None:
    """dcz: the 8 magic bytes, the dictionary's SHA-256, then a frame with a window of at most
    8 MiB that decodes only with the dictionary."""
    old, new = text(600_000), text(600_000).replace(b"item_00042", b"item_X0042")
    body = zstdcodec.compress_dcz(new, old)
    assert body[:8] == bytes([0x5E, 0x2A, 0x4D, 0x18, 0x20, 0x00, 0x00, 0x00])
    assert body[8:40] == zstdcodec.dictionary_hash(old)
    assert zstandard.get_frame_parameters(body[40:]).window_size <= LIMIT
    assert len(body) < 200
    assert zstdcodec.decompress_dcz(body, old) == new
    with pytest.raises(ValueError):
        zstdcodec.decompress_dcz(body, new)
    raw = zstandard.ZstdCompressionDict(old, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
    assert zstandard.ZstdDecompressor(dict_data=raw, max_window_size=LIMIT).decompress(body[40:]) == new


def test_zst_sibling_with_a_wide_window_is_not_served(
        site: Path, make_server: Callable[..., RunningServer], verify: object,
        caplog: pytest.LogCaptureFixture) -> None:
    """A `.zst` sibling asking for a 2^27 window (zstd --long=27) is never sent (a browser would
    fail the download): one warning naming it, however often the file is asked for, and zstd
    clients get the zstd made here instead. A sibling within the limit is sent as it is."""
    caplog.set_level(logging.WARNING, logger="h2serve")
    static = site / "static"
    css = text(200_000)
    (static / "wide.css").write_bytes(css)
    wide = stream_frame(css, 27)
    (static / "wide.css.zst").write_bytes(wide)
    (static / "fine.css").write_bytes(css)
    fine = stream_frame(css, 20)
    (static / "fine.css.zst").write_bytes(fine)
    server = make_server(templates=str(site / "templates"), static=str(static))
    with httpx.Client(http2=True, verify=verify, timeout=15) as c:  # type: ignore[arg-type]
        for _ in range(3):
            with c.stream("GET", server.url + "/static/wide.css", headers={"accept-encoding": "zstd"}) as r:
                body = b"".join(r.iter_raw())
            assert r.headers["content-encoding"] == "zstd"
            assert body != wide
            assert zstandard.get_frame_parameters(body).window_size <= LIMIT
            assert zstandard.ZstdDecompressor(max_window_size=LIMIT).decompress(body) == css
            with c.stream("GET", server.url + "/static/fine.css", headers={"accept-encoding": "zstd"}) as r:
                assert b"".join(r.iter_raw()) == fine
        (static / "wide.css").write_bytes(css + b"/* edited: loaded again */\n")
        r = c.get(server.url + "/static/wide.css", headers={"accept-encoding": "zstd"})
        assert r.content == css + b"/* edited: loaded again */\n"
    warnings = [rec.getMessage() for rec in caplog.records if "wide.css.zst" in rec.getMessage()]
    assert len(warnings) == 1, warnings
    assert "134217728-byte window" in warnings[0] and "RFC 9659" in warnings[0]
    assert not [rec for rec in caplog.records if "fine.css.zst" in rec.getMessage()]
