"""`--workers N`: a supervisor process and N worker processes serving the same listening sockets.

    supervisor (python -m h2serve --workers 2)     checks, binds, forks, restarts, forwards signals
      |-- worker                                   the single-process server (`server.run`) on the
      `-- worker                                   inherited sockets, with its own event loop

Why it is built this way:

* **The supervisor binds, the workers inherit.** `Server.preflight()` checks everything
  `Server.start()` would (folders, certificate, access log, push map, event loop) and binds every
  address before any worker exists. So a bad setting or a port in use is one line and exit status 2
  with no worker started; port 0 means one port the OS chose, named in the one startup line; a
  privileged port needs only the supervisor's privilege; a dev certificate is made once. Workers
  binding for themselves (each with SO_REUSEPORT) would get a port each for port 0, and report every
  error N times.
* **One socket per worker, all bound by the supervisor.** Had all workers accepted on one shared
  socket, whichever woke first would take a whole burst of connections: all 32 of h2load's in each
  of three runs, and still 0/29 or 26/6 when accepting one connection per wake-up. So the supervisor
  turns each bound socket into an SO_REUSEPORT group on the same port, one member per worker slot
  (`listener.spread`), and the kernel spreads new connections evenly by a hash of the client's
  address and port. Each worker keeps its slot's sockets and closes the others' copies; the
  supervisor keeps them all open, so a connection the kernel gives to a worker being replaced waits
  in the backlog for the replacement instead of being refused.
* **Workers are forked (`os.fork`)**, not spawned: they inherit the sockets as they are, with nothing
  to pass or re-import, and a restart costs milliseconds. Forking is safe here because the supervisor
  has no thread and no event loop, only a checked `Config` and the sockets; everything with state
  (event loop, uvloop included, file cache, inotify watcher, TLS context, access-log handle) is made
  in the worker by `Server.start()`, exactly as in one process. `multiprocessing` would add pickling
  and a resource tracker for nothing, and `subprocess` with `pass_fds` would re-import and re-check
  everything in each worker; `os.waitpid` gives a dead worker's exit status or signal directly.
* **Signals go through the supervisor.** Each worker has a process group of its own, so a Ctrl-C at
  the terminal (SIGINT to the foreground group) reaches only the supervisor, which forwards it once:
  a worker that got it twice would take the second as "cut downloads short". SIGINT and SIGTERM are
  forwarded as they come (the first stops each worker gracefully: GOAWAY, drain; the second forces),
  as is SIGHUP (reload.py: the supervisor reads the configuration first, then every worker
  reloads). The supervisor closes its own copies of the listening sockets at once, so new
  connections are refused as soon as the workers close theirs, and exits 0 when the
  last worker has; one that outlives `--graceful-timeout` by STOP_MARGIN is killed. On Linux a worker
  is sent SIGTERM if its supervisor dies (PR_SET_PDEATHSIG), so none is left behind.
* **The supervisor's loop** is `select()` on two pipes: the signal wakeup pipe (its handlers do
  nothing else) and the pipe where a worker writes its pid once it serves. The startup line is
  printed when every worker serves; a worker that dies before that fails the start (exit 1, or 2 if
  the worker reported a bad setting).
* **Restarts.** A worker that dies unasked is logged with its exit status or signal and replaced, at
  most `max(RESTART_BURST, N)` times in any RESTART_WINDOW seconds: a worker that dies at once
  (a certificate deleted since) is retried about once a second or two, never in a fork loop.
* **Access log.** Each worker opens a log file itself in append mode (O_APPEND) and writes each batch
  of lines with one write(2), so lines of different workers never interleave. Standard output ('-')
  may be a pipe, where only writes of up to PIPE_BUF bytes are atomic: a worker writes it through
  `LineWriter`, whole lines at most PIPE_BUF bytes at a time. Server log lines (standard error)
  carry the worker's pid: `h2serve[4242]: ...`.
"""

from __future__ import annotations

import contextlib
import ctypes
import io
import logging
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from . import metrics
from .cli import setup_logging
from .config import Config, ConfigError
from .net.activation import is_inherited
from .net.listener import spread
from .reload import reread_config
from .server import Server, Sockets, addresses, event_loop, run

log = logging.getLogger("h2serve")

RESTART_WINDOW = 5.0   # seconds over which restarts are counted
RESTART_BURST = 3      # restarts allowed in any window (at least the number of workers)
STOP_MARGIN = 5.0      # seconds past --graceful-timeout before a worker that has not exited is killed
PR_SET_PDEATHSIG = 1   # <linux/prctl.h>
PID = struct.Struct("=i")
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
SIGNALS = (*STOP_SIGNALS, signal.SIGHUP, signal.SIGCHLD)


def supervise(config: Config, reread: Callable[[], Config] | None = None) -> int:
    """Check the configuration and bind (exit status 2 on a bad setting, with no worker started),
    then run `config.worker_count()` workers until SIGINT or SIGTERM; the command's exit status.
    `reread()`: the configuration read again, for SIGHUP.

    With --metrics-bind, the workers' metric files go to a directory made here for this run and
    removed at the end (metrics.py), and the metrics socket is shared by every worker: whichever
    takes a scrape adds up all of their files."""
    count = config.worker_count()
    server = Server(config)
    folder = metrics.start_multiprocess() if config.metrics_bind is not None else None
    try:
        try:
            loop, _ = event_loop(config.loop)
            shared = [is_inherited(addr) for addr, _ in addresses(config)]
            slots = worker_sockets(server.preflight(), count, shared)
        except ConfigError as e:
            log.error("%s", e)
            return 2
        startup = server.describe(loop, count)
        if server.ca_file is not None:
            startup += f"\nclients can verify the development certificate with {server.ca_file}"
        return Supervisor(config, slots, server.ops_sockets or [], reread, folder).run(startup)
    finally:
        if folder is not None:
            metrics.end_multiprocess(folder)


def worker_sockets(bound: Sockets, count: int, shared: list[bool] | None = None) -> list[Sockets]:
    """The listening sockets of each of `count` worker slots: every socket `bound` made into an
    SO_REUSEPORT group of `count` on its address (`listener.spread`); ConfigError if that fails.
    An address marked `shared` (a socket passed by systemd, `fd://N`) is not spread but shared by
    every worker: rebinding it would take it from the socket unit, which holds it across restarts."""
    groups: list[list[list[socket.socket]]] = []
    try:
        for number, sockets in enumerate(bound):
            groups.append([])
            for sock in sockets:
                host, port = sock.getsockname()[:2]
                groups[-1].append([sock] * count if shared and shared[number] else spread(sock, count))
    except OSError as e:
        for sock in _flatten(bound, *groups):
            sock.close()
        raise ConfigError(f"cannot listen on {host}:{port} once per worker: {e.strerror or e}") from None
    return [[[group[slot] for group in address] for address in groups] for slot in range(count)]


@dataclass
class Worker:
    pid: int
    slot: int          # which of the supervisor's socket sets it serves on
    started: float
    ready: bool = False


class Supervisor:
    """Starts, watches and stops the workers; see the module docstring."""

    def __init__(self, config: Config, slots: list[Sockets], ops_sockets: list[socket.socket] | None = None,
                 reread: Callable[[], Config] | None = None, metrics_dir: str | None = None) -> None:
        self.config = config
        self.slots = slots
        self.ops_sockets = ops_sockets or []  # --metrics-bind: shared by every worker
        self.reread = reread
        self.metrics_dir = metrics_dir
        self.count = len(slots)
        self.workers: dict[int, Worker] = {}
        self.restarts: deque[float] = deque()  # when recent restarts happened (monotonic)
        self.restart_at: float | None = None   # a restart held back until then
        self.stop_signals = 0
        self.kill_at: float | None = None
        self.announced = False
        self.failed: int | None = None         # exit status of a worker that failed to start
        self.pid = os.getpid()
        self._wake_r, self._wake_w = _pipe(nonblocking=True)
        self._ready_r, self._ready_w = _pipe(nonblocking=False)
        os.set_blocking(self._ready_r, False)

    # -- the loop -----------------------------------------------------------------------------------

    def run(self, startup: str) -> int:
        """Start the workers and supervise them until they have all stopped; the exit status."""
        previous = {signum: signal.signal(signum, _wake_only) for signum in SIGNALS}
        old_wakeup = signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        try:
            self._start_all()
            while self.workers or not (self.stop_signals or self.failed is not None):
                self._start_missing()
                readable, _, _ = select.select([self._wake_r, self._ready_r], [], [], self._timeout())
                if self._ready_r in readable:
                    self._on_ready(startup)
                if self._wake_r in readable:
                    self._on_signals()
                self._kill_late()
        finally:
            self._abandon()
            signal.set_wakeup_fd(old_wakeup)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        if self.failed is not None:
            return 2 if self.failed == 2 else 1
        log.info("stopped")
        return 0

    def _timeout(self) -> float | None:
        deadlines = [t for t in (self.restart_at, self.kill_at) if t is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _on_ready(self, startup: str) -> None:
        data = _read_all(self._ready_r)
        for (pid,) in PID.iter_unpack(data[:len(data) - len(data) % PID.size]):
            if pid in self.workers:
                self.workers[pid].ready = True
        if not self.announced and not self.stop_signals and len(self.workers) == self.count and all(
                w.ready for w in self.workers.values()):
            self.announced = True
            for line in startup.splitlines():
                log.info("%s", line)

    def _on_signals(self) -> None:
        for signum in _read_all(self._wake_r):
            if signum == signal.SIGCHLD:
                self._reap()
            elif signum == signal.SIGHUP:
                self._reload()
            elif signum in STOP_SIGNALS:
                self._stop(signal.Signals(signum))

    def _reload(self) -> None:
        """SIGHUP: read the configuration here too (a worker started later gets the new one; an
        option that needs a restart is reported once, here), then have every worker reload."""
        if self.reread is not None:
            config = reread_config(self.reread, self.config)
            if config is None:
                return  # said why; the workers would fail the same way
            self.config = config
        log.info("SIGHUP: the %d workers reload the configuration and certificates", len(self.workers))
        self._signal_all(signal.SIGHUP)

    # -- workers coming and going ---------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        """Fork a worker. Signals are blocked across the fork, so none reaches the child while it
        still has the supervisor's handlers (which would wake the supervisor, not the worker)."""
        sys.stdout.flush()
        sys.stderr.flush()
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            raise
        if pid == 0:
            self._be_worker(mask, slot)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # before the child may get a terminal's signal meant for this group
        self.workers[pid] = Worker(pid, slot, time.monotonic())
        log.debug("worker %d started", pid)

    def _be_worker(self, mask: set[int | signal.Signals], slot: int) -> NoReturn:
        """In the child: become a worker, serve until told to stop, and exit with `run`'s status."""
        code = 1
        try:
            with contextlib.suppress(OSError):
                os.setpgid(0, 0)  # the supervisor does it too: whichever runs first
            signal.set_wakeup_fd(-1)
            for signum in SIGNALS:  # until `serve` installs its own: a stop signal stops it at once
                signal.signal(signum, signal.SIG_IGN if signum == signal.SIGHUP else signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            for fd in (self._wake_r, self._wake_w, self._ready_r):
                os.close(fd)
            mine = {id(sock) for sock in _flatten(self.slots[slot], [self.ops_sockets])}
            for sock in _flatten(*self.slots):
                if id(sock) not in mine:
                    sock.close()  # left open, another slot's socket would outlive its worker here
            _stop_with_parent(self.pid)
            setup_logging(self.config.log_level, worker=True)
            if self.config.access_log == "-":
                sys.stdout = LineWriter(sys.stdout.fileno())
            code = run(self.config, self.slots[slot], ready=self._say_ready,
                       ops_sockets=self.ops_sockets, reread=self.reread)
        except BaseException:
            traceback.print_exc()
        finally:
            with contextlib.suppress(Exception):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _say_ready(self) -> None:
        os.write(self._ready_w, PID.pack(os.getpid()))

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            worker = self.workers.pop(pid, None)
            if self.metrics_dir is not None:
                metrics.worker_died(self.metrics_dir, pid)
            if worker is not None:
                self._ended(worker, os.waitstatus_to_exitcode(status))

    def _ended(self, worker: Worker, code: int) -> None:
        how = describe_exit(code)
        if self.stop_signals or self.failed is not None:
            log.debug("worker %d %s", worker.pid, how)
        elif not self.announced:
            log.error("worker %d %s before it served: stopping", worker.pid, how)
            self._fail(code)
        else:
            lived = time.monotonic() - worker.started
            log.warning("worker %d %s after %.1fs: starting another", worker.pid, how, lived)

    def _start_all(self) -> None:
        try:
            for slot in range(self.count):
                self._spawn(slot)
        except OSError as e:
            log.error("cannot start a worker: %s", e)
            self._fail(1)

    def _fail(self, code: int) -> None:
        """The start failed (a worker died before all served): stop the others, exit with `code`."""
        self.failed = code
        self.kill_at = time.monotonic() + STOP_MARGIN
        self._signal_all(signal.SIGTERM)

    def _start_missing(self) -> None:
        """Replace dead workers, at most max(RESTART_BURST, N) in any RESTART_WINDOW seconds."""
        if self.stop_signals or self.failed is not None:
            return
        now = time.monotonic()
        if self.restart_at is not None and now < self.restart_at:
            return
        while self.restarts and now - self.restarts[0] >= RESTART_WINDOW:
            self.restarts.popleft()
        busy = {w.slot for w in self.workers.values()}
        for slot in (x for x in range(self.count) if x not in busy):
            if len(self.restarts) >= max(RESTART_BURST, self.count):
                at = self.restarts[0] + RESTART_WINDOW
                if at != self.restart_at:
                    log.warning("%d worker restarts in %gs: waiting %.1fs before the next",
                                len(self.restarts), RESTART_WINDOW, at - now)
                self.restart_at = at
                return
            self.restarts.append(now)
            try:
                self._spawn(slot)
            except OSError as e:  # out of memory or processes: try again in a while
                log.error("cannot start a worker: %s", e)
                self.restart_at = now + 1.0
                return
        self.restart_at = None

    # -- stopping -----------------------------------------------------------------------------------

    def _stop(self, signum: signal.Signals) -> None:
        """First stop signal: close the listening sockets here and forward it, so each worker
        stops gracefully; a second one is forwarded too, and each worker closes at once."""
        self.stop_signals += 1
        self.restart_at = None
        now = time.monotonic()
        if self.stop_signals == 1:
            log.info("%s: stopping %d workers, in-flight responses get %gs", signum.name,
                     len(self.workers), self.config.graceful_timeout)
            for sock in _flatten(*self.slots, [self.ops_sockets]):
                sock.close()
            self.kill_at = now + self.config.graceful_timeout + STOP_MARGIN
        else:
            log.warning("second %s: closing connections now", signum.name)
            self.kill_at = min(self.kill_at or now, now + STOP_MARGIN)
        self._signal_all(signum)

    def _kill_late(self) -> None:
        if self.kill_at is None or time.monotonic() < self.kill_at:
            return
        for pid in self.workers:
            log.warning("worker %d has not stopped: killing it", pid)
            _kill(pid, signal.SIGKILL)
        self.kill_at = None

    def _signal_all(self, signum: int) -> None:
        for pid in self.workers:
            _kill(pid, signum)

    def _abandon(self) -> None:
        """Leaving (normally with no worker left): stop any worker still there, close the pipes."""
        self._signal_all(signal.SIGTERM)
        for sock in _flatten(*self.slots, [self.ops_sockets]):
            sock.close()
        for fd in (self._wake_r, self._wake_w, self._ready_r, self._ready_w):
            with contextlib.suppress(OSError):
                os.close(fd)


class LineWriter(io.TextIOBase):
    """A worker's standard output for the access log: each write(2) holds whole lines and at most
    PIPE_BUF bytes (unless one line is longer), so that when several workers share a pipe their
    lines never interleave (POSIX makes a pipe write of up to PIPE_BUF bytes atomic)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def writable(self) -> bool:
        return True

    def fileno(self) -> int:
        return self.fd

    def write(self, text: str) -> int:
        for chunk in line_chunks(text.encode("utf-8", "backslashreplace"), select.PIPE_BUF):
            view = memoryview(chunk)
            while view:
                view = view[os.write(self.fd, view):]
        return len(text)


def line_chunks(data: bytes, limit: int) -> Iterator[bytes]:
    """`data` cut after newlines into pieces of at most `limit` bytes; a longer line is one piece."""
    start = 0
    while len(data) - start > limit:
        cut = data.rfind(b"\n", start, start + limit) + 1
        if cut <= start:
            cut = data.find(b"\n", start + limit) + 1 or len(data)
        yield data[start:cut]
        start = cut
    if start < len(data):
        yield data[start:]


def describe_exit(code: int) -> str:
    """A worker's end as `os.waitstatus_to_exitcode` gives it: `killed by SIGKILL`, `exited with 1`."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


def worker_pids(supervisor: int) -> list[int]:
    """The pids of a supervisor's workers (its children), from /proc (Linux)."""
    pids: list[int] = []
    for task in Path(f"/proc/{supervisor}/task").iterdir():
        with contextlib.suppress(OSError):
            pids += [int(x) for x in (task / "children").read_text().split()]
    return pids


def _flatten(*socket_sets: Sockets) -> Iterator[socket.socket]:
    for sockets in socket_sets:
        for group in sockets:
            yield from group


def _wake_only(signum: int, frame: object) -> None:
    """The supervisor's signal handler: the wakeup pipe carries the signal, this does nothing."""


def _pipe(*, nonblocking: bool) -> tuple[int, int]:
    r, w = os.pipe()
    os.set_blocking(r, not nonblocking)
    os.set_blocking(w, not nonblocking)
    return r, w


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except (BlockingIOError, InterruptedError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)


def _kill(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _stop_with_parent(parent: int) -> None:
    """Have the kernel send this worker SIGTERM (a graceful stop) when its supervisor dies, however
    it dies (Linux's PR_SET_PDEATHSIG); elsewhere a worker outlives a supervisor killed with -9."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)

