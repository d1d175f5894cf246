"""What the server knows of files on disk: metadata, small contents, precompressed siblings.

A hot small file must cost no system call per request, yet an edited file must be served new on the
next request. So an entry, once loaded, is trusted as long as a watcher on its folders (inotify, see
`watch.py`) has not reported a change there; where no watcher runs, it is trusted for `REVALIDATE`
seconds and then checked with `stat` again.

Containment lives here too: an entry exists only for a regular file whose real path (symlinks
followed) is inside the root it was looked up in, and a file is opened only if it is still the very
file (device and inode) that was vetted.

Loads block (stat, realpath, a read, watches added), so they may run in worker threads, several at
once, while the event loop answers from what is loaded (`get(..., block=False)`) and handles the
watcher's reports (`changed`, `clear`); see `FileCache` for how that stays consistent.
"""

from __future__ import annotations

import itertools
import logging
import os
import stat
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

from . import zstdcodec
from .blocking import WouldBlock

log = logging.getLogger("h2serve")

SMALL_FILE = 64 * 1024          # files up to this size are kept in memory
CACHE_BYTES = 64 * 1024 * 1024  # total bytes of small files kept
REVALIDATE = 1.0                # seconds an unwatched entry is trusted before looking again
SIBLINGS = {"br": ".br", "zstd": ".zst", "gzip": ".gz"}  # precompressed versions beside a file
LOOKS = 3                       # looks at a file that changes while loaded, before it is kept untrusted
RECENT = 256                    # changes remembered, for a load to tell which concern its file
MAX_ABSENT = 16384              # paths known (while watched) to hold no file to serve


@dataclass(slots=True)
class FileEntry:
    """One vetted regular file."""

    path: str
    real: str
    size: int
    mtime_ns: int
    dev: int
    ino: int
    checked: float
    data: bytes | None                   # the contents, for small files
    watched: bool = False                # a watcher reports changes: no need to stat again
    siblings: dict[str, FileEntry] = field(default_factory=dict)  # coding -> precompressed file
    _last_modified: bytes = b""
    kind: tuple[bytes, bytes, object] | None = None  # (Content-Type, Cache-Control, the policy): handler.py

    @property
    def etag(self) -> str:
        """A strong validator: changes whenever the file's size or modification time does."""
        return f'"{self.size:x}-{self.mtime_ns:x}"'

    @property
    def mtime(self) -> int:
        return self.mtime_ns // 1_000_000_000

    @property
    def last_modified(self) -> bytes:
        if not self._last_modified:
            self._last_modified = formatdate(self.mtime, usegmt=True).encode()
        return self._last_modified


class FileCache:
    """Entries by path; `watch(folder) -> bool` (set by the I/O glue) subscribes to changes, and
    `sync()` (set with it) handles the changes already reported but not yet seen.

    Threads: loads (`get`/`is_dir` with `block=True`) may run in several worker threads at once,
    while the event loop answers from memory (`block=False`) and calls `changed`/`clear`/`catch_up`.
    Reads take no lock (a dict lookup, atomic in CPython); every change to the maps is made under
    `_lock`, held for a few dict operations and never over a system call, so the loop never waits
    behind a thread's disk I/O. `changed` and `clear` bump `_generation` (and note the path in
    `_recent`): a load that sees a change reported while it was looking, to its file or a folder
    above it, may hold what was there before, so it looks again (`LOOKS` looks at most, then keeps
    what it saw untrusted: checked again after `REVALIDATE` seconds). Changes elsewhere, a log
    written in the site say, do not concern it (beyond the last `RECENT` changes, all do). Two
    threads loading one path both keep a right entry; the later one stays."""

    def __init__(self) -> None:
        self._entries: dict[str, FileEntry] = {}
        self._by_real: dict[str, set[str]] = {}
        # Paths with no file to serve (missing, a folder, a FIFO...) -> whether it is a folder
        # inside its root (what `is_dir` says). Kept only while their folders are watched, and
        # only until the next change reported anywhere, they spare a stat per request for /about
        # (about.html) and for a 404, and let `block=False` answer those from memory.
        self._absent: dict[str, bool] = {}
        self._cached_bytes = 0
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every change reported
        self._recent: deque[str] = deque(maxlen=RECENT)  # the paths of the last changes reported
        self.watch: Callable[[str], bool] | None = None
        self.sync: Callable[[], None] | None = None
        # Lookups answered from memory, and those that looked at the disk: for the metrics, which
        # read them once a second (plain integers: no cost worth a lock on the event loop).
        self.hits = 0
        self.misses = 0

    def catch_up(self) -> None:
        """Take in the changes reported so far; the protocol adapters call it once per read of
        input, before answering what it holds (one non-blocking read of the change queue, shared
        by every request in that read)."""
        if self.sync is not None:
            self.sync()

    def get(self, path: str, root: Path, *, block: bool = True) -> FileEntry | None:
        """The entry for `path` if it is a regular file inside `root`, else None.

        `block=False` answers only from memory, and raises WouldBlock("io") where the disk must be
        looked at (a path not looked at yet, or an entry due for a check)."""
        entry = self._entries.get(path)
        if entry is not None and (entry.watched or time.monotonic() - entry.checked < REVALIDATE):
            self.hits += 1
            return entry
        if entry is None and path in self._absent:
            self.hits += 1
            return None
        if not block:
            raise WouldBlock("io")
        self.misses += 1
        return self._load(path, root, entry)

    def is_dir(self, path: str, root: Path, *, block: bool = True) -> bool:
        """Whether `path` is a folder inside `root` (for redirects and listings): what the last
        `get` of `path` found, while that is known (see `_absent`), else looked at (WouldBlock("io")
        with `block=False`)."""
        folder = self._absent.get(path)
        if folder is not None:
            return folder
        if not block:
            raise WouldBlock("io")
        try:
            if not stat.S_ISDIR(os.stat(path).st_mode):
                return False
        except (OSError, ValueError):
            return False
        return within(os.path.realpath(path), root)

    def changed(self, path: str) -> None:
        """Forget what is known of `path`, of anything below it, and of the file it is a sibling of.

        Called by the watcher for every change it sees; cheap when nothing matches.
        """
        named = [path, *(path[:-len(suffix)] for suffix in SIBLINGS.values() if path.endswith(suffix))]
        prefix = path.rstrip(os.sep) + os.sep
        with self._lock:
            self._generation += 1
            self._recent.append(path)
            self._absent.clear()
            stale = [p for n in named for p in (n, *self._by_real.get(n, ()))]  # by path and real path
            stale += [p for p, e in self._entries.items()
                      if p.startswith(prefix) or e.real.startswith(prefix)]
            for p in stale:
                self._forget(p)

    def clear(self) -> None:
        with self._lock:
            self._generation += 1
            self._recent.append(os.sep)  # everything
            self._absent.clear()
            for p in list(self._entries):
                self._forget(p)

    def read_whole(self, entry: FileEntry, limit: int) -> bytes | None:
        """The contents of a file of at most `limit` bytes (for compressing it), or None."""
        if entry.data is not None:
            return entry.data
        if entry.size > limit:
            return None
        return _read_exact(entry)

    # -- loading (blocking: worker threads, several at once) ---------------------------------------

    def _load(self, path: str, root: Path, old: FileEntry | None) -> FileEntry | None:
        """Look at `path` on disk and keep what is there; see the class docstring."""
        for look in range(LOOKS):
            last = look == LOOKS - 1
            generation = self._generation
            try:
                st: os.stat_result | None = os.stat(path)
            except ValueError:
                return None
            except OSError:
                st = None
            real = os.path.realpath(path)
            if st is None or not stat.S_ISREG(st.st_mode):
                # No file here: known as such only while watched (a file made here is reported).
                folder = st is not None and stat.S_ISDIR(st.st_mode) and within(real, root)
                watched = self._watch(path, real, root) and _unchanged(path, st)
                with self._lock:
                    moved = self._moved(generation, path, real)
                    if moved and not last:
                        continue
                    self._forget(path)
                    if watched and not moved:
                        self._absent[path] = folder
                        while len(self._absent) > MAX_ABSENT:
                            del self._absent[next(iter(self._absent))]
                return None
            if not within(real, root) or not _same_file(real, st):
                with self._lock:
                    self._forget(path)
                return None
            watched = self._watch(path, real, root)
            # A change made before the watch began is reported to no one: look again after it.
            if watched and not _unchanged(path, st):
                if not last:
                    continue
                watched = False  # changing as we look: trusted only for REVALIDATE seconds
            same = old is not None and (old.size, old.mtime_ns, old.dev, old.ino) == (
                st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)
            entry = old if same and old is not None else self._read(path, real, st, old)
            # Unwatched until now, an old entry's siblings may have come, gone or changed.
            siblings = self._siblings(entry, root)
            with self._lock:
                if self._moved(generation, path, real):
                    if not last:
                        continue  # a change reported while looking: what was seen may be older
                    watched = False
                entry.checked, entry.watched, entry.siblings = time.monotonic(), watched, siblings
                self._install(entry)
            return entry
        raise AssertionError("unreachable: the last look returns")

    def _moved(self, generation: int, path: str, real: str) -> bool:
        """Whether a change reported since `generation` may concern `path` (real path `real`): the
        file itself, a sibling of it, a folder above it (under `_lock`)."""
        since = self._generation - generation
        if since == 0:
            return False
        if since > len(self._recent):
            return True
        for changed in itertools.islice(reversed(self._recent), since):
            folder = changed.rstrip(os.sep) + os.sep
            if changed.startswith((path, real)) or path.startswith(folder) or real.startswith(folder):
                return True
        return False

    def _read(self, path: str, real: str, st: os.stat_result, old: FileEntry | None) -> FileEntry:
        """A new entry, with the contents of a small file while the byte budget allows (checked
        without the lock: loads in several threads at once may overshoot it by a file each)."""
        entry = FileEntry(path, real, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, 0.0, None)
        budget = CACHE_BYTES - self._cached_bytes + (len(old.data) if old and old.data else 0)
        if st.st_size <= SMALL_FILE and st.st_size <= budget:
            entry.data = _read_exact(entry)
        return entry

    def _siblings(self, entry: FileEntry, root: Path) -> dict[str, FileEntry]:
        """The precompressed versions beside a file (none beside a sibling itself)."""
        if entry.path.endswith(tuple(SIBLINGS.values())):
            return {}
        siblings = {}
        for coding, suffix in SIBLINGS.items():
            sibling = self.get(entry.path + suffix, root)
            if sibling is not None and (coding != "zstd" or _zstd_window_ok(sibling)):
                siblings[coding] = sibling
        return siblings

    def _watch(self, path: str, real: str, root: Path) -> bool:
        """Watch the folders of `path` and of its real path, and every folder above them up to
        `root`: a folder renamed or replaced anywhere on the way is then reported too."""
        if self.watch is None:
            return False
        folders = {*_folders_up_to(os.path.dirname(path), root),
                   *_folders_up_to(os.path.dirname(real), root)}
        return all(self.watch(folder) for folder in sorted(folders))

    def _install(self, entry: FileEntry) -> None:
        """Keep `entry` as what its path holds (under `_lock`)."""
        if self._entries.get(entry.path) is entry:
            return
        self._forget(entry.path)
        self._absent.pop(entry.path, None)
        self._entries[entry.path] = entry
        if entry.data is not None:
            self._cached_bytes += len(entry.data)
        self._by_real.setdefault(entry.real, set()).add(entry.path)

    def _forget(self, path: str) -> None:
        """Drop the entry of `path` (under `_lock`)."""
        old = self._entries.pop(path, None)
        if old is None:
            return
        if old.data is not None:
            self._cached_bytes -= len(old.data)
        paths = self._by_real.get(old.real)
        if paths is not None:
            paths.discard(path)
            if not paths:
                del self._by_real[old.real]


# `.zst` siblings whose window breaks RFC 9659's limit, by (path, size, mtime): warned about once.
_WIDE_ZSTD: set[tuple[str, int, int]] = set()


def _zstd_window_ok(sibling: FileEntry) -> bool:
    """Whether a `.zst` sibling's frame keeps to the 8 MiB window browsers accept (RFC 9659); if
    not, one warning per version of it, and it is not served."""
    ok, window = zstdcodec.frame_ok(sibling.path)
    key = (sibling.path, sibling.size, sibling.mtime_ns)
    if not ok and key not in _WIDE_ZSTD:
        _WIDE_ZSTD.add(key)
        what = f"asks for a {window}-byte window" if window is not None else "is not a zstd frame"
        log.warning("%s %s, over the %d bytes browsers accept (RFC 9659): not served; "
                    "recompress it with a window of 8 MiB at most (zstd --long=23 or less)",
                    sibling.path, what, zstdcodec.WINDOW_LIMIT)
    return ok


def within(real: str, root: Path) -> bool:
    base = str(root)
    return real == base or real.startswith(base + os.sep)


def _folders_up_to(folder: str, root: Path) -> list[str]:
    """`folder` and the folders above it, up to and including `root` (just `folder` if outside)."""
    base = str(root)
    out = [folder]
    while folder != base and folder.startswith(base + os.sep):
        folder = os.path.dirname(folder)
        out.append(folder)
    return out


def _unchanged(path: str, st: os.stat_result | None) -> bool:
    """Whether `path` is still the file, of the same size and time, that `st` describes (still
    nothing, for None)."""
    try:
        now = os.stat(path)
    except (OSError, ValueError):
        return st is None
    return st is not None and (now.st_size, now.st_mtime_ns, now.st_dev, now.st_ino) == (
        st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)


def _same_file(real: str, st: os.stat_result) -> bool:
    """Whether `real` is still the file `st` describes (not swapped between the two looks)."""
    try:
        real_st = os.stat(real)
    except OSError:
        return False
    return (real_st.st_dev, real_st.st_ino) == (st.st_dev, st.st_ino)


def open_entry(entry: FileEntry) -> int | None:
    """Open the file for reading if it is still the one `entry` vetted (device and inode)."""
    try:
        fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        st = None
    if st is None or (st.st_dev, st.st_ino) != (entry.dev, entry.ino) or not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd


def _read_exact(entry: FileEntry) -> bytes | None:
    fd = open_entry(entry)
    if fd is None:
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(entry.size + 1)
    except OSError:
        return None
    return data if len(data) == entry.size else None
