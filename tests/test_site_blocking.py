"""Answering from memory only (h2serve/site/handler.py, blocking.py, workpool.py, push/plan.py):
`Site.respond(..., block=False)` answers what is cached exactly as `block=True` does, and raises
WouldBlock("io") or WouldBlock("cpu") where it would touch the disk or compress.

`Site` is driven directly, no sockets; a real inotify `Watcher` is attached to an event loop that
never runs: its events are handled by `drain()`, as the adapters' `catch_up()` does before answering.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from h2serve.push.manifest import build_map
from h2serve.push.plan import Client, Pusher
from h2serve.site.blocking import WouldBlock
from h2serve.site.body import BytesBody, Response
from h2serve.site.filecache import REVALIDATE, SMALL_FILE
from h2serve.site.handler import Policy, Site
from h2serve.site.paths import split_target
from h2serve.site.watch import Watcher
from h2serve.site.workpool import WorkPool

GZIP = [(b"accept-encoding", b"gzip")]
IDENTITY = [(b"accept-encoding", b"identity")]


class Watched:
    """A Site on a copy of the demo site, its cache told of changes by a real inotify watcher."""

    def __init__(self, root: Path, policy: Policy | None = None) -> None:
        self.root = root
        self.site = Site.from_folders(root=None, templates=str(root / "templates"),
                                      static=str(root / "static"), policy=policy)
        self.loop = asyncio.new_event_loop()
        self.watcher = Watcher(self.site.cache.changed, self.site.cache.clear)
        assert self.watcher.start(self.loop)
        self.site.cache.watch, self.site.cache.sync = self.watcher.add, self.watcher.drain

    def close(self) -> None:
        self.watcher.close()
        self.loop.close()

    def respond(self, target: bytes, headers: list[tuple[bytes, bytes]] | None = None, *,
                block: bool, method: str = "GET") -> Response:
        self.site.cache.catch_up()
        return self.site.respond(method, target, headers, block=block)

    def would_block(self, target: bytes, headers: list[tuple[bytes, bytes]] | None = None,
                    method: str = "GET") -> str:
        """The kind of WouldBlock a non-blocking answer raises."""
        with pytest.raises(WouldBlock) as raised:
            self.respond(target, headers, block=False, method=method)
        return raised.value.kind


@pytest.fixture
def watched(site: Path) -> Iterator[Watched]:
    w = Watched(site)
    yield w
    w.close()


def summary(r: Response) -> tuple[int, list[tuple[bytes, bytes]], bytes | None]:
    """Status, headers (Date aside) and body of an answer, to compare two answers."""
    body = None
    if isinstance(r.body, BytesBody):
        body = r.body.read(r.body.remaining)
    elif r.body is not None:
        r.body.close()
        body = b"<file>"
    return r.status, [(n, v) for n, v in r.headers if n != b"date"], body


# -- from memory, or WouldBlock -------------------------------------------------------------------------

@pytest.mark.parametrize("target, headers", [
    (b"/static/css/site.css", IDENTITY), (b"/static/css/site.css", GZIP), (b"/", IDENTITY),
    (b"/about", IDENTITY), (b"/nope", IDENTITY), (b"/static/css", IDENTITY),
    (b"/static/img/hero.png", [(b"range", b"bytes=10-19")])], ids=lambda x: repr(x)[:40])
def test_cold_io_then_the_same_answer_from_memory(watched: Watched, target: bytes,
                                                  headers: list[tuple[bytes, bytes]]) -> None:
    """Nothing loaded yet: WouldBlock("io"). After one blocking answer (in a worker thread, as the
    adapters do), the non-blocking one is the same answer, with no system call but the Date."""
    assert watched.would_block(target, headers) == "io"
    blocking = summary(watched.respond(target, headers, block=True))
    assert summary(watched.respond(target, headers, block=False)) == blocking
    head = summary(watched.respond(target, headers, block=True, method="HEAD"))
    assert summary(watched.respond(target, headers, block=False, method="HEAD")) == head


def test_compressing_bytes_in_memory_is_cpu(watched: Watched) -> None:
    """A small file loaded (and answered identity): its compressed bytes are CPU work, not I/O."""
    watched.respond(b"/static/css/site.css", IDENTITY, block=True)
    assert watched.would_block(b"/static/css/site.css", GZIP) == "cpu"
    assert watched.would_block(b"/static/css/site.css", [(b"accept-encoding", b"br")]) == "cpu"
    coded = watched.respond(b"/static/css/site.css", GZIP, block=True)
    assert dict(coded.headers)[b"content-encoding"] == b"gzip"
    assert summary(watched.respond(b"/static/css/site.css", GZIP, block=False)) == summary(coded)


def test_compressing_a_file_not_in_memory_is_io(watched: Watched) -> None:
    """Over SMALL_FILE a file is not kept: compressing it means reading it whole first. Once its
    compressed bytes are cached they are answered from memory, and its identity answer opens the
    vetted file on the loop (a file descriptor, no read)."""
    big = watched.root / "static" / "big.css"
    big.write_bytes(b".x { color: red }\n" * (SMALL_FILE // 10))
    watched.respond(b"/static/big.css", IDENTITY, block=True).body.close()  # type: ignore[union-attr]
    identity = watched.respond(b"/static/big.css", IDENTITY, block=False)
    assert summary(identity)[2] == b"<file>"
    assert watched.would_block(b"/static/big.css", GZIP) == "io"
    coded = summary(watched.respond(b"/static/big.css", GZIP, block=True))
    assert summary(watched.respond(b"/static/big.css", GZIP, block=False)) == coded


def test_a_change_makes_it_block_again(watched: Watched) -> None:
    """An edit reported by the watcher (or `FileCache.changed` called by hand) drops the entry: the
    next non-blocking answer raises, and the blocking one serves the new bytes."""
    path = watched.root / "static" / "docs.txt"
    watched.respond(b"/static/docs.txt", block=True)
    assert watched.respond(b"/static/docs.txt", block=False).status == 200
    path.write_bytes(b"edited\n")
    assert watched.would_block(b"/static/docs.txt") == "io"  # catch_up() read the event
    assert summary(watched.respond(b"/static/docs.txt", block=True))[2] == b"edited\n"
    assert summary(watched.respond(b"/static/docs.txt", block=False))[2] == b"edited\n"
    watched.site.cache.changed(str(path))
    assert watched.would_block(b"/static/docs.txt") == "io"


def test_missing_paths_known_while_watched(watched: Watched) -> None:
    """/about (about.html: /templates/about itself does not exist), a 404, a folder's redirect
    are answered from memory once looked at; a file created where there was none is seen at once."""
    for target in (b"/about", b"/nope", b"/static/css"):
        watched.respond(target, block=True)
    assert watched.respond(b"/about", block=False).status == 200
    assert watched.respond(b"/nope", block=False).status == 404
    redirect = watched.respond(b"/static/css", block=False)
    assert (redirect.status, dict(redirect.headers)[b"location"]) == (301, b"/static/css/")
    (watched.root / "templates" / "nope.html").write_text("now here\n")
    assert watched.would_block(b"/nope") == "io"
    assert summary(watched.respond(b"/nope", block=True))[2] == b"now here\n"


def test_the_404_page_must_be_in_memory(watched: Watched) -> None:
    """A 404 carries the site's own page: not loaded yet, that is I/O too; edited, the next 404
    blocks again and carries the new page."""
    watched.respond(b"/static/css/site.css", block=True)
    watched.site.cache.get(str(watched.root / "static" / "nope"), watched.root / "static")
    assert watched.would_block(b"/static/nope") == "io"  # only 404.html is missing from memory
    assert watched.respond(b"/static/nope", block=True).status == 404
    assert watched.respond(b"/static/nope", block=False).status == 404
    (watched.root / "templates" / "404.html").write_text("gone\n")
    assert watched.would_block(b"/static/nope") == "io"
    assert summary(watched.respond(b"/static/nope", block=True))[2] == b"gone\n"
    assert summary(watched.respond(b"/static/nope", block=False))[2] == b"gone\n"
    # Errors other than 404 carry no file: never blocked.
    assert watched.respond(b"/%2e%2e/x", block=False).status == 400
    assert watched.site.respond("POST", b"/", None, block=False).status == 405


def test_listing_is_io(site: Path) -> None:
    listed = Watched(site, Policy(list_dirs=True))
    try:
        listed.respond(b"/static/img/", block=True)
        assert listed.would_block(b"/static/img/") == "io"  # scandir, every time
        assert b"hero.png" in (summary(listed.respond(b"/static/img/", block=True))[2] or b"")
    finally:
        listed.close()


def test_unwatched_entries_are_checked_again(site: Path) -> None:
    """Without a watcher an entry is trusted for REVALIDATE seconds, then due for a stat: I/O;
    a missing path is not remembered at all."""
    s = Site.from_folders(root=None, templates=str(site / "templates"), static=str(site / "static"))
    s.respond("GET", b"/static/docs.txt", block=True)
    assert s.respond("GET", b"/static/docs.txt", block=False).status == 200
    entry = s.cache.get(str(site / "static" / "docs.txt"), site / "static")
    assert entry is not None
    entry.checked -= REVALIDATE
    with pytest.raises(WouldBlock, match="io"):
        s.respond("GET", b"/static/docs.txt", block=False)
    s.respond("GET", b"/about", block=True)
    with pytest.raises(WouldBlock, match="io"):
        s.respond("GET", b"/about", block=False)


def test_folder_moved_away_and_back(watched: Watched) -> None:
    """A whole folder swapped (a deploy): the entries below it are dropped, and what the blocking
    answer loads then is trusted again."""
    watched.respond(b"/static/css/site.css", IDENTITY, block=True)
    assert watched.respond(b"/static/css/site.css", IDENTITY, block=False).status == 200
    shutil.move(watched.root / "static" / "css", watched.root / "static" / "old")
    (watched.root / "static" / "css").mkdir()
    (watched.root / "static" / "css" / "site.css").write_text("new release\n")
    assert watched.would_block(b"/static/css/site.css", IDENTITY) == "io"
    assert summary(watched.respond(b"/static/css/site.css", IDENTITY, block=True))[2] == b"new release\n"
    assert summary(watched.respond(b"/static/css/site.css", IDENTITY, block=False))[2] == b"new release\n"


# -- push plans -----------------------------------------------------------------------------------------

def test_push_plan_looks_up_resources_from_memory(watched: Watched) -> None:
    site = watched.site
    pmap = build_map({"/": {"/static/css/site.css": {"type": "style", "weight": 2},
                            "/static/js/site.js": {"type": "script", "weight": 1}}}, site, "test")
    pusher = Pusher(site, pmap)
    page = site.lookup(split_target(b"/"))
    assert page is not None
    site.cache.changed(str(watched.root / "static" / "js" / "site.js"))
    client = Client("h2", "https", b"localhost", [], push_slots=10)
    with pytest.raises(WouldBlock, match="io"):
        pusher.plan(page, client, block=False)
    with pytest.raises(WouldBlock, match="io"):
        site.lookup(split_target(b"/static/js/site.js"), block=False)
    blocking = pusher.plan(page, client, block=True)
    plan = pusher.plan(page, client, block=False)
    assert plan is not None and blocking is not None
    assert [p.entry.path for p in plan.promises] == ["/static/css/site.css", "/static/js/site.js"]
    assert [p.file for p in plan.promises] == [p.file for p in blocking.promises]


# -- worker threads -------------------------------------------------------------------------------------

def test_work_pool_keeps_compressions_apart_from_file_loads(watched: Watched) -> None:
    """Every "cpu" thread busy: an "io" task still runs at once. The blocking answer given by a
    worker thread is the one the loop then gives from memory."""
    pool = WorkPool(io_threads=2, cpu_threads=1)
    release = threading.Event()
    try:
        stuck = pool.submit("cpu", lambda: release.wait(10))
        queued = pool.submit("cpu", lambda: "later")
        loaded = pool.submit("io", lambda: watched.site.respond("GET", b"/about", None, block=True))
        assert loaded.result(timeout=10).status == 200
        assert not stuck.done() and not queued.done()
        release.set()
        assert queued.result(timeout=10) == "later"
    finally:
        release.set()
        pool.shutdown(wait=True)
    assert watched.respond(b"/about", block=False).status == 200


def test_work_pool_shutdown_cancels_what_has_not_started() -> None:
    pool = WorkPool(io_threads=1, cpu_threads=1)
    release = threading.Event()
    running = pool.submit("io", lambda: release.wait(10))
    waiting = pool.submit("io", lambda: None)
    pool.shutdown()
    assert waiting.cancelled()
    release.set()
    assert running.result(timeout=10) is True
