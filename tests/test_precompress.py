"""Best-ratio precompression (h2serve/site/precompress.py, --precompress-dir): brotli 11 and zstd 19
made once per file version in the background, on-the-fly codings until then, kept across restarts.

Encodings are counted by replacing `precompress.encode_best` (in-process servers), or by the files in
the folder, their inodes and times (a server process, restarted).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import brotli
import httpx
import pytest
import zstandard
from conftest import REPO, RunningServer, ServerProcess, wait_for

from benchmarks import jsbundle
from h2serve.config import Config, ConfigError
from h2serve.site import coding, precompress
from h2serve.site.precompress import DiskCache

LIMIT = 8 * 1024 * 1024
DECODE = {"br": brotli.decompress, "gzip": gzip.decompress,
          "zstd": lambda b: zstandard.ZstdDecompressor(max_window_size=LIMIT).decompress(b)}


def bundle(size: int = 200_000, seed: int = 0) -> bytes:
    """JavaScript-like text of about `size` bytes (benchmarks/jsbundle.py)."""
    return jsbundle.bundle(size, seed)


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> Counter[tuple[str, str]]:
    """Every best-ratio encoding made in this process, by (sha256 prefix of the input, coding)."""
    seen: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    encode = precompress.encode_best

    def counting(data: bytes, coding: str) -> bytes:
        with lock:
            seen[(hashlib.sha256(data).hexdigest()[:12], coding)] += 1
        return encode(data, coding)

    monkeypatch.setattr(precompress, "encode_best", counting)
    return seen


@pytest.fixture
def client(proto: str, verify: object) -> Iterator[httpx.Client]:
    with httpx.Client(http2=proto == "h2", verify=verify, timeout=30) as c:  # type: ignore[arg-type]
        yield c


def get(client: httpx.Client, url: str, coding: str) -> tuple[httpx.Response, bytes]:
    with client.stream("GET", url, headers={"accept-encoding": coding}) as r:
        return r, b"".join(r.iter_raw())


def test_twenty_concurrent_requests_one_encoding_per_version(
        site: Path, tmp_path: Path, make_server: Callable[..., RunningServer], client: httpx.Client,
        proto: str, counted: Counter[tuple[str, str]]) -> None:
    """20 requests at once for a new file version: they get the on-the-fly coding (the first
    surely; any that comes after the encodings are made, those), each version is encoded once per
    coding in the background; afterwards brotli 11 and zstd 19 bytes, decoded
    byte for byte, with ETags of their own; the folder holds exactly those two files."""
    js = bundle()
    (site / "static" / "app.js").write_bytes(js)
    folder = tmp_path / "pre"
    server = make_server(templates=str(site / "templates"), static=str(site / "static"),
                         precompress_dir=str(folder))
    url = server.url + "/static/app.js"
    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(lambda coding: get(client, url, coding), ["br", "zstd"] * 10))
    for r, body in answers:
        coding = r.headers["content-encoding"]
        assert DECODE[coding](body) == js
    server.server.services.site.precompressed.wait()
    assert sorted(counted.values()) == [1, 1] and {c for _, c in counted} == {"br", "zstd"}
    identity = client.get(url, headers={"accept-encoding": "identity"}).headers["etag"]
    for coding, level in (("br", "br11"), ("zstd", "zstd19")):
        r, body = get(client, url, coding)
        assert r.headers["content-encoding"] == coding
        assert r.headers["etag"] == identity[:-1] + f'-{level}"'
        assert r.headers["content-length"] == str(len(body))
        assert DECODE[coding](body) == js
        # (a request of the 20 that came once the encodings were made got them already)
        fast = next(b for a, b in answers if a.headers["etag"] == identity[:-1] + f'-{coding}"')
        assert len(body) < len(fast)
    best = sorted(p.suffix for p in (folder / "best").iterdir())
    assert best == [".br", ".zst"]
    # gzip is not precompressed: still made on the fly.
    r, body = get(client, url, "gzip")
    assert r.headers["etag"] == identity[:-1] + '-gzip"' and gzip.decompress(body) == js


def test_an_edited_file_is_a_new_version(site: Path, tmp_path: Path,
                                         make_server: Callable[..., RunningServer],
                                         counted: Counter[tuple[str, str]], verify: object) -> None:
    """Editing the file makes a new version: encoded again, in both codings, once."""
    path = site / "static" / "app.js"
    server = make_server(templates=str(site / "templates"), static=str(site / "static"),
                         precompress_dir=str(tmp_path / "pre"))
    pre = server.server.services.site.precompressed
    with httpx.Client(verify=verify, timeout=30) as c:  # type: ignore[arg-type]
        for seed in range(3):
            content = bundle(60_000, seed)
            path.write_bytes(content)
            for _ in range(2):
                c.get(server.url + "/static/app.js", headers={"accept-encoding": "br"})
                pre.wait()
            r = c.get(server.url + "/static/app.js", headers={"accept-encoding": "br"})
            assert r.headers["etag"].endswith('-br11"') and r.content == content
    assert len(counted) == 6 and set(counted.values()) == {1}


def test_range_requests_and_small_files_are_not_precompressed(
        site: Path, tmp_path: Path, make_server: Callable[..., RunningServer],
        counted: Counter[tuple[str, str]], verify: object) -> None:
    (site / "static" / "app.js").write_bytes(bundle())
    server = make_server(templates=str(site / "templates"), static=str(site / "static"),
                         precompress_dir=str(tmp_path / "pre"))
    with httpx.Client(verify=verify, timeout=30) as c:  # type: ignore[arg-type]
        r = c.get(server.url + "/static/app.js", headers={"accept-encoding": "br", "range": "bytes=0-9"})
        assert r.status_code == 206 and "content-encoding" not in r.headers
        c.get(server.url + "/static/js/site.js", headers={"accept-encoding": "br"})  # 550 bytes
    server.server.services.site.precompressed.wait()
    assert not counted


def test_survives_a_restart(site: Path, tmp_path: Path, spawn_server: Callable[..., ServerProcess],
                            verify: object) -> None:
    """A server process fills the folder; a new process on the same folder serves the best bytes
    from its very first request and encodes nothing (no file made or rewritten)."""
    js = bundle()
    (site / "static" / "app.js").write_bytes(js)
    folder = tmp_path / "pre"
    args = ("--templates", str(site / "templates"), "--static", str(site / "static"),
            "--precompress-dir", str(folder), "--access-log", "off")
    first = spawn_server(*args)
    url = f"https://localhost:{first.port}/static/app.js"
    with httpx.Client(verify=verify, timeout=30) as c:  # type: ignore[arg-type]
        assert c.get(url, headers={"accept-encoding": "br"}).headers["etag"].endswith('-br"')
        wait_for(lambda: len([p for p in (folder / "best").iterdir() if not p.name.startswith(".")]) == 2,
                 timeout=30)
    first.stop()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (folder / "best").iterdir()}
    second = spawn_server(*args)
    url = f"https://localhost:{second.port}/static/app.js"
    with httpx.Client(verify=verify, timeout=30) as c:  # type: ignore[arg-type]
        for coding, level in (("br", "br11"), ("zstd", "zstd19")):
            with c.stream("GET", url, headers={"accept-encoding": coding}) as r:
                body = b"".join(r.iter_raw())
            assert r.headers["etag"].endswith(f'-{level}"'), (coding, r.headers["etag"])
            assert DECODE[coding](body) == js
    second.stop()
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in (folder / "best").iterdir()}
    assert after == before


def test_disk_cache_is_bounded_least_recently_used_first(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "d", limit=250)
    for name in "abc":
        cache.put(name, name.encode() * 100)
    assert sorted(os.listdir(tmp_path / "d")) == ["b", "c"] and cache.size == 200
    assert cache.has("b")  # b is now the most recently used
    cache.put("d", b"d" * 100)
    assert sorted(os.listdir(tmp_path / "d")) == ["b", "d"]
    again = DiskCache(tmp_path / "d", limit=150)  # a restart with less room: the oldest go
    assert again.size == 100 and len(os.listdir(tmp_path / "d")) == 1


def test_an_encoding_too_big_for_the_folder_is_not_made_again_and_again(
        site: Path, tmp_path: Path, make_server: Callable[..., RunningServer],
        counted: Counter[tuple[str, str]], verify: object) -> None:
    """With --precompress-size 1, a MiB of incompressible text encodes to more than the folder's
    half MiB for best-ratio bytes: it cannot be kept, so it is encoded once per coding, not again
    on every request (the background thread would otherwise spend a core on it for good); the
    answers stay the on-the-fly coding."""
    data = os.urandom(coding.MAX_SIZE // 2).hex().encode()  # 1 MiB of text, 4 bits of entropy a byte
    (site / "static" / "noise.js").write_bytes(data)
    folder = tmp_path / "pre"
    server = make_server(templates=str(site / "templates"), static=str(site / "static"),
                         precompress_dir=str(folder), precompress_size=1)
    pre = server.server.services.site.precompressed
    with httpx.Client(verify=verify, timeout=30) as c:  # type: ignore[arg-type]
        for _ in range(3):
            r = c.get(server.url + "/static/noise.js", headers={"accept-encoding": "br"})
            assert r.headers["etag"].endswith('-br"') and r.content == data
            pre.wait()
    assert sorted(counted.values()) == [1, 1]
    assert list((folder / "best").iterdir()) == []


def test_lock_file_keeps_a_second_process_from_encoding(tmp_path: Path,
                                                        counted: Counter[tuple[str, str]]) -> None:
    """--workers: a version another process is encoding (its lock file is fresh) is left to it;
    the files it wrote are then adopted, not made again."""
    pre = precompress.Precompressor(tmp_path, 1 << 20)
    etag = '"1-1"'
    lock = tmp_path / (".lock-" + precompress.version_name("/a.js", etag, "best"))
    lock.touch()
    pre.start("/a.js", '"1-1"', lambda: bundle(5000))
    pre.wait()
    assert not counted and not pre.ready("/a.js", '"1-1"', "br")
    lock.unlink()
    other = precompress.Precompressor(tmp_path, 1 << 20)
    other.start("/a.js", '"1-1"', lambda: bundle(5000))
    other.wait()
    assert len(counted) == 2
    pre.start("/a.js", '"1-1"', lambda: bundle(5000))
    pre.wait()
    assert len(counted) == 2 and pre.ready("/a.js", '"1-1"', "br") and pre.ready("/a.js", '"1-1"', "zstd")


@pytest.mark.parametrize("options, message", [
    ({"precompress_size": 0}, "--precompress-size must be at least 1"),
    ({"precompress_dir": "FILE"}, "--precompress-dir"),
])
def test_bad_settings(tmp_path: Path, options: dict[str, object], message: str) -> None:
    (tmp_path / "FILE").write_text("x")
    if options.get("precompress_dir") == "FILE":
        options = {"precompress_dir": str(tmp_path / "FILE")}
    with pytest.raises(ConfigError, match=message):
        Config(**options)  # type: ignore[arg-type]


def test_bad_folder_from_the_command_line_is_one_line_and_status_2(tmp_path: Path) -> None:
    (tmp_path / "FILE").write_text("x")
    result = subprocess.run([sys.executable, "-m", "h2serve", "--bind", "127.0.0.1:0",
                             "--precompress-dir", str(tmp_path / "FILE")],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "--precompress-dir" in result.stderr and "not a folder" in result.stderr


def test_folder_that_cannot_be_made_is_one_line_and_status_2(tmp_path: Path) -> None:
    """A folder that cannot be made (here: under a file; also a folder without write access) is
    found at start-up, not on the first request."""
    (tmp_path / "FILE").write_text("x")
    result = subprocess.run([sys.executable, "-m", "h2serve", "--bind", "127.0.0.1:0",
                             "--precompress-dir", str(tmp_path / "FILE" / "sub")],
                            cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().count("\n") == 0, result.stderr
    assert "--precompress-dir" in result.stderr and "Not a directory" in result.stderr


def test_precompress_dir_needs_brotli_or_zstandard(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "zstandard", None)
    Config(precompress_dir=str(tmp_path))  # brotli alone will do
    monkeypatch.setitem(sys.modules, "brotli", None)
    with pytest.raises(ConfigError, match=r"--precompress-dir: neither brotli nor zstandard is installed"):
        Config(precompress_dir=str(tmp_path))
