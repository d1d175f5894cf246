"""Change notification for the file cache: inotify (Linux), read from the event loop.

The cache trusts an entry only while the folders holding it are watched here, so a hot file costs
no system call per request and an edit is seen as soon as the kernel reports it. Where inotify is
missing, or a watch cannot be added (the per-user limit), `add` says False and the cache falls back
to checking with `stat` once a second.

Events are read and handled on the event loop; `add` may be called from worker threads too (the
cache's loads), several at once. Its system calls run outside the lock, which guards only the two
maps; a watch added while the loop handled a move or an overflow (which may have left its path
leading elsewhere) is added again.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import struct
import threading
from collections.abc import Callable

log = logging.getLogger("h2serve")

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC
MASK = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE
        | IN_DELETE | IN_DELETE_SELF | IN_MOVE_SELF)
EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name, NUL-padded)
MAX_WATCHES = 8192             # our own bound, well under the usual kernel limit


class Watcher:
    """Watches folders and reports each changed path to `on_change`; `on_overflow` when events
    were lost (the caller must then forget everything). Listeners added with `subscribe` hear of
    every change too."""

    def __init__(self, on_change: Callable[[str], None], on_overflow: Callable[[], None]) -> None:
        self.on_change = on_change
        self.on_overflow = on_overflow
        self._listeners: list[Callable[[str, bool], None]] = []
        self._folders: dict[str, int] = {}
        self._by_wd: dict[int, str] = {}
        self._lock = threading.Lock()  # over changes to _folders and _by_wd, never a system call
        self._epoch = 0                # bumped whenever watches are dropped (a folder moved, overflow)
        self._fd = -1
        self._libc: ctypes.CDLL | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> bool:
        """Begin watching on `loop`; False where inotify is not available."""
        name = ctypes.util.find_library("c")
        try:
            libc = ctypes.CDLL(name, use_errno=True)
            fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        except (OSError, AttributeError):
            return False
        if fd < 0:
            return False
        self._libc, self._fd, self._loop = libc, fd, loop
        loop.add_reader(fd, self._read)
        return True

    def subscribe(self, listener: Callable[[str, bool], None]) -> Callable[[], None]:
        """Also call `listener(path, folder)` for every change, after `on_change`: `folder` when
        the path is (or was) a folder, whose contents may all have changed; `("/", True)` when
        events were lost. Returns the function that unsubscribes."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    def add(self, folder: str) -> bool:
        """Watch `folder`; True if changes in it will be reported. Any thread may call it (the
        first call for a folder makes system calls; later ones are a dict lookup)."""
        for _ in range(3):
            if folder in self._folders:
                return True
            libc, fd, epoch = self._libc, self._fd, self._epoch
            if libc is None or fd < 0 or len(self._folders) >= MAX_WATCHES:
                return False
            wd = libc.inotify_add_watch(fd, os.fsencode(folder), MASK)
            if wd < 0:
                return False
            # One folder may be reached by several paths (a symlinked alias): the kernel gives them
            # one watch. Its events name the real path, which the cache maps to every alias of a file.
            real = os.path.realpath(folder)
            with self._lock:
                if self._fd != fd:
                    return False  # closed meanwhile
                if self._epoch == epoch:
                    self._folders[folder] = wd
                    self._by_wd[wd] = real
                    return True
                # Watches were dropped meanwhile (a folder moved, an overflow): `folder` may lead
                # elsewhere now, and `real` be wrong. Watch whatever is there now.
                orphan = wd not in self._by_wd
            if orphan:
                libc.inotify_rm_watch(fd, wd)  # known to no one: not worth a kernel watch
        return False

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            self._epoch += 1
            self._folders.clear()
            self._by_wd.clear()
        if fd >= 0:
            if self._loop is not None:
                with contextlib.suppress(Exception):
                    self._loop.remove_reader(fd)
            os.close(fd)

    def drain(self) -> None:
        """Handle every change already reported, now.

        The event loop may well run a request's callback before the watcher's, even though the
        change came first (epoll does not keep order); the cache calls this before answering, so a
        file edited before a request was sent is never served stale. Nothing to read costs one
        read(2) that fails with EAGAIN."""
        while self._fd >= 0 and self._read():
            pass

    def _read(self) -> bool:
        """Handle one batch of events; False when there was none."""
        try:
            data = os.read(self._fd, 64 * 1024)
        except BlockingIOError:
            return False
        except OSError as e:
            log.warning("file watcher failed (%s); checking files by time instead", e)
            self.close()
            self._lost()
            return False
        offset = 0
        while offset + EVENT.size <= len(data):
            wd, mask, _, length = EVENT.unpack_from(data, offset)
            name = data[offset + EVENT.size:offset + EVENT.size + length].rstrip(b"\0")
            offset += EVENT.size + length
            self._event(wd, mask, os.fsdecode(name))
        return bool(data)

    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            # Events were lost, moves of folders perhaps: no watch can be trusted to name its path.
            with self._lock:
                self._epoch += 1
                gone = list(self._by_wd)
                self._by_wd.clear()
                self._folders.clear()
            self._unwatch(gone)
            self._lost()
            return
        folder = self._by_wd.get(wd)
        if folder is None:
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF | IN_IGNORED):
            # The folder itself went away: whatever was below it is unknown now.
            self._forget_below(folder)
            self._report(folder, True)
            return
        path = os.path.join(folder, name) if name else folder
        if mask & IN_ISDIR and name:
            # A subfolder created, deleted or moved: the paths at and below it may now lead to
            # other folders than the ones watched under those names.
            self._forget_below(path)
        self._report(path, bool(mask & IN_ISDIR))

    def _report(self, path: str, folder: bool) -> None:
        self.on_change(path)
        for listener in list(self._listeners):
            listener(path, folder)

    def _lost(self) -> None:
        self.on_overflow()
        for listener in list(self._listeners):
            listener(os.sep, True)

    def _forget_below(self, folder: str) -> None:
        """Stop trusting the watches of `folder` and of every folder below it (by real path, and
        by any path that led to them): the next `add` for those paths watches what is there now."""
        prefix = folder.rstrip(os.sep) + os.sep
        with self._lock:
            self._epoch += 1
            gone = [wd for wd, real in self._by_wd.items() if real == folder or real.startswith(prefix)]
            for path in [p for p, wd in self._folders.items()
                         if wd in gone or p == folder or p.startswith(prefix)]:
                del self._folders[path]
            for wd in gone:
                del self._by_wd[wd]
        self._unwatch(gone)

    def _unwatch(self, wds: list[int]) -> None:
        """Remove the kernel's watches (already out of the maps)."""
        for wd in wds:
            if self._libc is not None and self._fd >= 0:
                self._libc.inotify_rm_watch(self._fd, wd)  # fails harmlessly if already gone
