"""What the server knows of files on disk: metadata, small contents, precompressed siblings.

A hot small file must cost no system call per request, yet an edited file must be served new on the
next request. So an entry, once loaded, is trusted as long as a watcher on its folders (inotify, see
`watch.py`) has not reported a change there; where no watcher runs, it is trusted for `REVALIDATE`
seconds and then checked with `stat` again.

Containment lives here too: an entry exists only for a regular file whose real path (symlinks
followed) is inside the root it was looked up in, and a file is opened only if it is still the very
file (device and inode) that was vetted.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import formatdate
from pathlib import Path

SMALL_FILE = 64 * 1024          # files up to this size are kept in memory
CACHE_BYTES = 64 * 1024 * 1024  # total bytes of small files kept
REVALIDATE = 1.0                # seconds an unwatched entry is trusted before looking again
SIBLINGS = {"br": ".br", "zstd": ".zst", "gzip": ".gz"}  # precompressed versions beside a file


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
    kind: tuple[bytes, bytes] | None = None  # (Content-Type, Cache-Control), set by files.py

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
    `sync()` (set with it) handles the changes already reported but not yet seen."""

    def __init__(self) -> None:
        self._entries: dict[str, FileEntry] = {}
        self._by_real: dict[str, set[str]] = {}
        self._cached_bytes = 0
        self.watch: Callable[[str], bool] | None = None
        self.sync: Callable[[], None] | None = None

    def catch_up(self) -> None:
        """Take in the changes reported so far; the protocol adapters call it once per read of
        input, before answering what it holds (one non-blocking read of the change queue, shared
        by every request in that read)."""
        if self.sync is not None:
            self.sync()

    def get(self, path: str, root: Path) -> FileEntry | None:
        """The entry for `path` if it is a regular file inside `root`, else None."""
        entry = self._entries.get(path)
        if entry is not None and (entry.watched or time.monotonic() - entry.checked < REVALIDATE):
            return entry
        fresh = self._load(path, root, entry)
        if fresh is None:
            self._forget(path)
        return fresh

    def is_dir(self, path: str, root: Path) -> bool:
        """Whether `path` is a folder inside `root` (for redirects and listings; not cached)."""
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
        stale = [p for n in named for p in (n, *self._by_real.get(n, ()))]  # by path and real path
        prefix = path.rstrip(os.sep) + os.sep
        stale += [p for p, e in self._entries.items() if p.startswith(prefix) or e.real.startswith(prefix)]
        for p in stale:
            self._forget(p)

    def clear(self) -> None:
        for p in list(self._entries):
            self._forget(p)

    def read_whole(self, entry: FileEntry, limit: int) -> bytes | None:
        """The contents of a file of at most `limit` bytes (for compressing it), or None."""
        if entry.data is not None:
            return entry.data
        if entry.size > limit:
            return None
        return _read_exact(entry)

    # -- loading ------------------------------------------------------------------------------

    def _load(self, path: str, root: Path, old: FileEntry | None) -> FileEntry | None:
        for _ in range(3):
            try:
                st = os.stat(path)
            except (OSError, ValueError):
                return None
            if not stat.S_ISREG(st.st_mode):
                return None
            real = os.path.realpath(path)
            if not within(real, root) or not _same_file(real, st):
                return None
            watched = self._watch(path, real, root)
            # A change made before the watch began is reported to no one: look again after it.
            if not watched or _unchanged(path, st):
                break
        else:
            watched = False  # changing as we look: trusted only for REVALIDATE seconds
        now = time.monotonic()
        if old is not None and (old.size, old.mtime_ns, old.dev, old.ino) == (
                st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino):
            old.checked = now
            old.watched = watched
            self._attach_siblings(old, root)  # unwatched until now: they may have come, gone or changed
            return old
        self._forget(path)
        entry = FileEntry(path, real, st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino, now, None)
        if st.st_size <= SMALL_FILE and self._cached_bytes + st.st_size <= CACHE_BYTES:
            entry.data = _read_exact(entry)
            self._cached_bytes += len(entry.data or b"")
        self._attach_siblings(entry, root)
        entry.watched = watched
        self._entries[path] = entry
        self._by_real.setdefault(real, set()).add(path)
        return entry

    def _attach_siblings(self, entry: FileEntry, root: Path) -> None:
        """Look up the precompressed versions beside a file (not beside a sibling itself)."""
        if entry.path.endswith(tuple(SIBLINGS.values())):
            return
        siblings = {}
        for coding, suffix in SIBLINGS.items():
            sibling = self.get(entry.path + suffix, root)
            if sibling is not None:
                siblings[coding] = sibling
        entry.siblings = siblings

    def _watch(self, path: str, real: str, root: Path) -> bool:
        """Watch the folders of `path` and of its real path, and every folder above them up to
        `root`: a folder renamed or replaced anywhere on the way is then reported too."""
        if self.watch is None:
            return False
        folders = {*_folders_up_to(os.path.dirname(path), root),
                   *_folders_up_to(os.path.dirname(real), root)}
        return all(self.watch(folder) for folder in sorted(folders))

    def _forget(self, path: str) -> None:
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


def _unchanged(path: str, st: os.stat_result) -> bool:
    """Whether `path` is still the file, of the same size and time, that `st` describes."""
    try:
        now = os.stat(path)
    except OSError:
        return False
    return (now.st_size, now.st_mtime_ns, now.st_dev, now.st_ino) == (
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
