"""The server's file cache (h2serve/filecache.py, watch.py): metadata and small files kept in memory,
trusted while inotify reports no change, so that an edit is served on the very next request; and
loads in worker threads, several at once, while the loop answers from memory and reports changes.

Every edit here is followed at once by a request, with no sleep, on a connection that stays open;
the last test drives `Site` directly (no sockets, no watcher) for the once-a-second fallback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import brotli
import httpx
import pytest
from conftest import STATIC, TEMPLATES, RunningServer

from h2serve.site import filecache
from h2serve.site.blocking import WouldBlock
from h2serve.site.body import BytesBody, Response
from h2serve.site.filecache import LOOKS, REVALIDATE, SMALL_FILE, FileCache, FileEntry
from h2serve.site.handler import Site
from h2serve.site.watch import Watcher

PROTOCOLS = ["h2", "http/1.1"]
HTTPX_VERSION = {"h2": "HTTP/2", "http/1.1": "HTTP/1.1"}
NOT_FOUND = (TEMPLATES / "404.html").read_bytes()


@pytest.fixture
def served(site: Path, make_server: Callable[..., RunningServer]) -> RunningServer:
    return make_server(templates=str(site / "templates"), static=str(site / "static"))


class Session:
    """Requests on one client that must all travel on one connection."""

    def __init__(self, client: httpx.Client, proto: str, base: str) -> None:
        self.client, self.proto, self.base = client, proto, base
        self.local: object = None

    def get(self, path: str, **headers: str) -> httpx.Response:
        r = self.client.get(self.base + path, headers=headers)
        assert r.http_version == HTTPX_VERSION[self.proto]
        local = r.extensions["network_stream"].get_extra_info("client_addr")
        if self.local is None:
            self.local = local
        assert local == self.local, "a new connection was opened"
        return r

    def raw(self, path: str, accept_encoding: str) -> tuple[httpx.Response, bytes]:
        with self.client.stream("GET", self.base + path, headers={"accept-encoding": accept_encoding}) as r:
            assert r.http_version == HTTPX_VERSION[self.proto]
            return r, b"".join(r.iter_raw())


@pytest.fixture
def session(served: RunningServer, client: httpx.Client, proto: str) -> Session:
    s = Session(client, proto, served.url)
    assert s.get("/").status_code == 200  # the connection is open before the first edit
    return s


# -- edits seen at once -------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [64, SMALL_FILE + 1000], ids=["in-memory", "on-disk"])
def test_rewrite_same_size_seen_at_once(site: Path, session: Session, size: int) -> None:
    """Ten rewrites of a file, each the same size as the last, each requested right after the
    write: every answer is the new content, and every ETag is new."""
    path = site / "static" / "live.txt"
    path.write_bytes(b"x" * size)
    assert session.get("/static/live.txt").content == b"x" * size
    etags = set()
    for i in range(10):
        content = (b"version %04d\n" % i).ljust(size, b".")
        path.write_bytes(content)
        r = session.get("/static/live.txt")
        assert r.status_code == 200
        assert r.content == content, f"edit {i} not seen"
        assert r.headers["content-length"] == str(size)
        etags.add(r.headers["etag"])
    assert len(etags) == 10


def test_rewrite_changing_size_seen_at_once(site: Path, session: Session) -> None:
    """Growing and shrinking across the in-memory limit: right bytes, right Content-Length."""
    path = site / "static" / "css" / "site.css"
    for i, size in enumerate((10, SMALL_FILE - 1, SMALL_FILE + 1, 300_000, 5, 0, 100_000, 7)):
        content = bytes([65 + i]) * size
        path.write_bytes(content)
        r = session.get("/static/css/site.css")
        assert (r.status_code, r.headers["content-length"]) == (200, str(size))
        assert r.content == content


def test_page_edit_seen_at_once(site: Path, session: Session) -> None:
    """Pages (/about is about.html) and the 404 page itself."""
    for i in range(5):
        (site / "templates" / "about.html").write_text(f"<p>about v{i}</p>\n")
        (site / "templates" / "404.html").write_text(f"<p>missing v{i}</p>\n")
        assert session.get("/about").text == f"<p>about v{i}</p>\n"
        r = session.get("/nope")
        assert (r.status_code, r.text) == (404, f"<p>missing v{i}</p>\n")


def test_delete_then_create(site: Path, session: Session) -> None:
    """A deleted file is 404 on the next request; a created one (even one just answered 404) is
    200 on the next request."""
    css = site / "static" / "css" / "site.css"
    assert session.get("/static/css/site.css").status_code == 200
    css.unlink()
    r = session.get("/static/css/site.css")
    assert (r.status_code, r.content) == (404, NOT_FOUND)
    css.write_bytes(b"p { color: red }\n")
    r = session.get("/static/css/site.css")
    assert (r.status_code, r.content) == (200, b"p { color: red }\n")
    for path, file in (("/static/new.txt", site / "static" / "new.txt"),
                       ("/fresh", site / "templates" / "fresh.html")):
        assert session.get(path).status_code == 404
        file.write_text("brand new\n")
        r = session.get(path)
        assert (r.status_code, r.text) == (200, "brand new\n"), path
        file.unlink()
        assert session.get(path).status_code == 404, path


@pytest.mark.parametrize("size", [100, 200_000], ids=["in-memory", "on-disk"])
def test_atomic_replace_seen_at_once(site: Path, session: Session, size: int) -> None:
    """os.replace() of a temporary file over the served one, ten times: the new content each time."""
    target = site / "static" / "js" / "site.js"
    etags = set()
    for i in range(10):
        tmp = site / "static" / "js" / f".site.js.tmp{i}"
        content = (b"// build %d\n" % i).ljust(size, b" ")
        tmp.write_bytes(content)
        os.replace(tmp, target)
        r = session.get("/static/js/site.js")
        assert r.content == content, f"replacement {i} not seen"
        etags.add(r.headers["etag"])
    assert len(etags) == 10


def test_precompressed_sibling_changes_seen_at_once(site: Path, session: Session) -> None:
    """A sibling rewritten, removed, or added beside a cached file counts from the next request."""
    static = site / "static"
    css = (STATIC / "css/site.css").read_bytes()
    (static / "x.css").write_bytes(css)
    for i in range(3):
        gz = gzip.compress(b"/* sibling %d */\n" % i + css, mtime=i)
        (static / "x.css.gz").write_bytes(gz)
        r, body = session.raw("/static/x.css", "gzip")
        assert (r.headers["content-encoding"], body) == ("gzip", gz), i
    (static / "x.css.gz").unlink()
    r, body = session.raw("/static/x.css", "gzip")
    assert r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(body) == css  # compressed here now, from x.css itself
    br = brotli.compress(b"/* br sibling */\n" + css)
    (static / "x.css.br").write_bytes(br)
    r, body = session.raw("/static/x.css", "br")
    assert (r.headers["content-encoding"], body) == ("br", br)


def test_folder_renamed_or_removed_above_a_file(site: Path, session: Session) -> None:
    """A folder two levels above a cached file renamed and replaced (a deploy swapping a tree), or
    removed: the next request sees the new tree, or 404."""
    deep = site / "static" / "a" / "b"
    deep.mkdir(parents=True)
    (deep / "f.txt").write_text("old tree\n")
    assert session.get("/static/a/b/f.txt").text == "old tree\n"
    os.rename(site / "static" / "a", site / "static" / "a.old")
    (site / "static" / "a" / "b").mkdir(parents=True)
    (site / "static" / "a" / "b" / "f.txt").write_text("new tree\n")
    assert session.get("/static/a/b/f.txt").text == "new tree\n"
    assert session.get("/static/a.old/b/f.txt").text == "old tree\n"
    shutil.rmtree(site / "static" / "a")
    assert session.get("/static/a/b/f.txt").status_code == 404
    # The static folder's own subfolder swapped by rename over it.
    (site / "static" / "css.new").mkdir()
    (site / "static" / "css.new" / "site.css").write_text("swapped\n")
    assert session.get("/static/css/site.css").status_code == 200
    shutil.rmtree(site / "static" / "css")
    os.rename(site / "static" / "css.new", site / "static" / "css")
    assert session.get("/static/css/site.css").text == "swapped\n"


def test_symlink_target_edited(site: Path, session: Session) -> None:
    """A symlink inside the site to a file elsewhere in it: editing the target shows through the
    link at once (its real folder is watched too)."""
    (site / "static" / "real").mkdir()
    target = site / "static" / "real" / "t.txt"
    target.write_text("one\n")
    (site / "static" / "alias.txt").symlink_to(target)
    assert session.get("/static/alias.txt").text == "one\n"
    for i in range(5):
        target.write_text(f"edit {i}\n")
        assert session.get("/static/alias.txt").text == f"edit {i}\n"


# -- without inotify: checked once a second -------------------------------------------------------------

def body_of(response: Response) -> bytes:
    body = response.body
    assert isinstance(body, BytesBody)
    return body.read(body.remaining)


def test_fallback_revalidates_after_a_second(site: Path) -> None:
    """`Site` alone has no watcher: entries are trusted for REVALIDATE seconds, then checked with
    stat; edits, deletions, new files and precompressed siblings that came, changed or went are
    all seen after that."""
    static = site / "static"
    s = Site.from_folders(root=None, templates=str(site / "templates"), static=str(static))
    assert s.cache.watch is None
    css = (STATIC / "css/site.css").read_bytes()
    (static / "live.txt").write_bytes(b"one\n")
    (static / "x.css").write_bytes(css)
    old_gz = gzip.compress(b"/* old */" + css, mtime=1)
    (static / "x.css.gz").write_bytes(old_gz)
    gzip_asked = [(b"accept-encoding", b"gzip")]
    br_asked = [(b"accept-encoding", b"br")]

    first = s.respond("GET", b"/static/live.txt")
    assert body_of(first) == b"one\n"
    assert body_of(s.respond("GET", b"/static/x.css", gzip_asked)) == old_gz
    assert brotli.decompress(body_of(s.respond("GET", b"/static/x.css", br_asked))) == css

    (static / "live.txt").write_bytes(b"two\n")
    new_gz = gzip.compress(b"/* new */" + css, mtime=2)
    (static / "x.css.gz").write_bytes(new_gz)
    br = brotli.compress(b"/* br */" + css)
    (static / "x.css.br").write_bytes(br)
    (static / "css" / "site.css").unlink()
    # Within the second: the cached answers (what makes a hot file cost no system call).
    assert body_of(s.respond("GET", b"/static/live.txt")) == b"one\n"
    assert body_of(s.respond("GET", b"/static/x.css", gzip_asked)) == old_gz
    assert s.respond("GET", b"/static/new.txt").status == 404
    (static / "new.txt").write_bytes(b"new\n")
    time.sleep(REVALIDATE + 0.1)

    again = s.respond("GET", b"/static/live.txt")
    assert body_of(again) == b"two\n"
    assert dict(again.headers)[b"etag"] != dict(first.headers)[b"etag"]
    assert body_of(s.respond("GET", b"/static/x.css", gzip_asked)) == new_gz
    assert body_of(s.respond("GET", b"/static/x.css", br_asked)) == br
    assert s.respond("GET", b"/static/css/site.css").status == 404
    assert body_of(s.respond("GET", b"/static/new.txt")) == b"new\n"

    (static / "x.css.gz").unlink()
    time.sleep(REVALIDATE + 0.1)
    coded = s.respond("GET", b"/static/x.css", gzip_asked)
    assert gzip.decompress(body_of(coded)) == css  # the sibling is gone: compressed here


def test_symlinked_folder_recreated(site: Path, session: Session) -> None:
    """A folder reached through a symlinked alias (static/styles -> css), deleted and made again:
    edits in the new folder still show through the alias at once."""
    (site / "static" / "styles").symlink_to("css")
    assert session.get("/static/styles/site.css").status_code == 200
    assert session.get("/static/css/site.css").status_code == 200
    shutil.rmtree(site / "static" / "css")
    assert session.get("/static/styles/site.css").status_code == 404
    (site / "static" / "css").mkdir()
    for i in range(3):
        (site / "static" / "css" / "site.css").write_text(f"v{i}\n")
        assert session.get("/static/styles/site.css").text == f"v{i}\n", i
    assert session.get("/static/css/site.css").text == "v2\n"
    for i in range(3, 6):
        (site / "static" / "css" / "site.css").write_text(f"v{i}\n")
        assert session.get("/static/styles/site.css").text == f"v{i}\n", i
        assert session.get("/static/css/site.css").text == f"v{i}\n", i


def test_whole_static_folder_swapped(site: Path, session: Session) -> None:
    """The served folder itself renamed away and a new one put in its place (a deploy)."""
    assert session.get("/static/css/site.css").status_code == 200
    assert session.get("/static/docs.txt").status_code == 200
    os.rename(site / "static", site / "static.old")
    (site / "static" / "css").mkdir(parents=True)
    (site / "static" / "css" / "site.css").write_text("release 2\n")
    assert session.get("/static/css/site.css").text == "release 2\n"
    assert session.get("/static/docs.txt").status_code == 404
    (site / "static" / "css" / "site.css").write_text("release 2.1\n")
    assert session.get("/static/css/site.css").text == "release 2.1\n"


# -- loads in worker threads ----------------------------------------------------------------------------

class Cache:
    """A FileCache on the demo site's static folder, told of changes by a real inotify watcher on
    an event loop that never runs: `report()` handles the events, as the loop would."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.cache = FileCache()
        self.loop = asyncio.new_event_loop()
        self.watcher = Watcher(self.cache.changed, self.cache.clear)
        assert self.watcher.start(self.loop)
        self.cache.watch, self.cache.sync = self.watcher.add, self.watcher.drain

    def report(self) -> None:
        self.cache.catch_up()

    def close(self) -> None:
        self.watcher.close()
        self.loop.close()


@pytest.fixture
def cache(site: Path) -> Iterator[Cache]:
    c = Cache(site / "static")
    yield c
    c.close()


class StatHook:
    """Stands for `os` in filecache.py: `stat(path)` calls `hook(path)` after the real stat."""

    def __init__(self, hook: Callable[[str], None]) -> None:
        self.hook = hook

    def __getattr__(self, name: str) -> object:
        return getattr(os, name)

    def stat(self, path: str, *args: object, **kwargs: object) -> os.stat_result:
        try:
            return os.stat(path, *args, **kwargs)  # type: ignore[arg-type]
        finally:
            self.hook(path)


def in_thread(fn: Callable[[], object]) -> Future[object]:
    return ThreadPoolExecutor(1).submit(fn)


def test_change_reported_during_a_threaded_load_is_not_kept_stale(
        cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker thread has read a file's bytes (and is looking for its precompressed siblings) when
    the file is rewritten and the change reported on the loop: the load looks again, and keeps the
    new version, trusted; without the generation check it would keep the old one, trusted, for good."""
    path = cache.root / "docs.txt"
    at_sibling, reported = threading.Event(), threading.Event()

    def hook(p: str) -> None:
        if p == f"{path}.br" and not at_sibling.is_set():
            at_sibling.set()
            assert reported.wait(10)

    monkeypatch.setattr(filecache, "os", StatHook(hook))
    load = in_thread(lambda: cache.cache.get(str(path), cache.root))
    assert at_sibling.wait(10)
    path.write_bytes(b"the new version\n")
    cache.report()  # the loop handles the watcher's event: FileCache.changed(path)
    reported.set()
    entry = load.result(10)
    assert isinstance(entry, FileEntry) and entry.data == b"the new version\n" and entry.watched
    assert cache.cache.get(str(path), cache.root, block=False) is entry


def test_changes_reported_at_every_look_leave_the_entry_untrusted(
        cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """A file reported changed during each of the LOOKS looks of a load is kept, but checked
    again after REVALIDATE seconds, like an unwatched one."""
    path = cache.root / "docs.txt"
    looks = []

    def hook(p: str) -> None:
        if p == str(path):  # at each look (the stats of the file itself)
            looks.append(p)
            cache.cache.changed(str(path))

    monkeypatch.setattr(filecache, "os", StatHook(hook))
    entry = in_thread(lambda: cache.cache.get(str(path), cache.root)).result(10)
    assert len(looks) >= LOOKS
    assert isinstance(entry, FileEntry) and not entry.watched
    assert entry.data == (STATIC / "docs.txt").read_bytes()
    entry.checked -= REVALIDATE
    with pytest.raises(WouldBlock):
        cache.cache.get(str(path), cache.root, block=False)


def test_changes_elsewhere_during_a_load_leave_it_trusted(
        cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """Changes reported at every look to other files, even one beside it (a log written in the
    site, say), do not concern the file being loaded: it is kept trusted."""
    path = cache.root / "docs.txt"
    looks = []

    def hook(p: str) -> None:
        if p == f"{path}.br":
            looks.append(p)
            (cache.root / "access.log").write_text(f"line {len(looks)}\n")
            (cache.root / "css" / "site.css").write_text("p {}\n")
            cache.report()

    monkeypatch.setattr(filecache, "os", StatHook(hook))
    entry = in_thread(lambda: cache.cache.get(str(path), cache.root)).result(10)
    assert isinstance(entry, FileEntry) and entry.watched and looks


def test_file_created_while_a_thread_finds_nothing_there(
        cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread looks at a missing path and is about to remember it as missing when the file is
    created and reported: it looks again and finds the file."""
    path = cache.root / "late.txt"
    stats = []

    def hook(p: str) -> None:
        if p == str(path):
            stats.append(p)
            if len(stats) == 2:  # the second look, after the watch began: "still missing"
                path.write_bytes(b"made meanwhile\n")
                cache.report()

    monkeypatch.setattr(filecache, "os", StatHook(hook))
    entry = in_thread(lambda: cache.cache.get(str(path), cache.root)).result(10)
    assert isinstance(entry, FileEntry) and entry.data == b"made meanwhile\n"
    assert cache.cache.get(str(path), cache.root, block=False) is entry


def test_two_threads_loading_one_path(cache: Cache, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both in the middle of loading the same file at once: each gets a right entry, one is kept,
    and the byte count of what is kept stays exact."""
    path = cache.root / "css" / "site.css"
    both = threading.Barrier(2, timeout=10)

    def hook(p: str) -> None:
        if p == str(path) and threading.current_thread().name.startswith("load"):
            with contextlib.suppress(threading.BrokenBarrierError):
                both.wait()

    monkeypatch.setattr(filecache, "os", StatHook(hook))
    with ThreadPoolExecutor(2, thread_name_prefix="load") as pool:
        loads = [pool.submit(cache.cache.get, str(path), cache.root) for _ in range(2)]
        entries = [f.result(10) for f in loads]
    content = path.read_bytes()
    assert all(isinstance(e, FileEntry) and e.data == content and e.watched for e in entries)
    kept = cache.cache.get(str(path), cache.root, block=False)
    assert kept in entries
    held = cache.cache._entries.values()  # the accounting is the point
    assert cache.cache._cached_bytes == sum(len(e.data or b"") for e in held)


def test_loads_in_many_threads_while_the_loop_reports_changes(cache: Cache) -> None:
    """Four threads load and answer from memory while the main thread (the loop) keeps rewriting
    files and handling the events: no error, and once quiet every file is served as it is on disk.
    (A load that saw changes reported at each of its looks keeps what it saw untrusted: that one
    is checked again after REVALIDATE seconds; a trusted entry is never stale.)"""
    names = [f"f{i}.txt" for i in range(4)]
    for name in names:
        (cache.root / name).write_bytes(b"0\n")
    stop = threading.Event()

    def work(name: str) -> int:
        n = 0
        while not stop.is_set():
            cache.cache.get(str(cache.root / name), cache.root)
            with contextlib.suppress(WouldBlock):
                cache.cache.get(str(cache.root / name), cache.root, block=False)
            n += 1
        return n

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(work, name) for name in names]
        for i in range(40):
            (cache.root / names[i % 4]).write_bytes(b"%d\n" % i)
            cache.report()
        stop.set()
        assert all(f.result(10) > 0 for f in running)
    cache.report()
    for name in names:
        entry = cache.cache.get(str(cache.root / name), cache.root)
        assert entry is not None
        if not entry.watched:
            entry.checked -= REVALIDATE
            entry = cache.cache.get(str(cache.root / name), cache.root)
            assert entry is not None
        assert entry.watched and entry.data == (cache.root / name).read_bytes(), name
