"""Socket activation: `--bind fd://N` serves a listening socket this process was started with.

systemd (a `.socket` unit) binds the port, privileged or not, and starts the service with the
sockets as file descriptors 3, 4, ... (SD_LISTEN_FDS_START), saying how many in `LISTEN_FDS` and
for which process in `LISTEN_PID` (sd_listen_fds(3)). Because the socket outlives the server, a
restart loses no connection attempt: they wait in the kernel's backlog until the new process
accepts. Any launcher that does the same works (tests/activate.py is one).

The variables are honoured as sd_listen_fds does: they count only when `LISTEN_PID` is this
process; then `fd://N` must be one of the descriptors passed, and the variables are removed from
the environment so that no child takes them for its own. Whatever started it, the descriptor must
be a listening TCP socket: anything else is a ConfigError saying so.
"""

from __future__ import annotations

import os
import socket

from ..config import FD_PREFIX, ConfigError

SD_LISTEN_FDS_START = 3
_ENV = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def passed_fds() -> range | None:
    """The descriptors systemd passed to this process, or None if `LISTEN_PID` is not this one."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return None
    if pid != os.getpid():
        return None
    return range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count)


def forget_passed_fds() -> None:
    """Remove systemd's variables from the environment (sd_listen_fds' `unset_environment`)."""
    for name in _ENV:
        os.environ.pop(name, None)


def inherited(addr: str) -> list[socket.socket]:
    """The listening socket of `fd://N`, non-blocking; ConfigError if it is none."""
    fd = int(addr[len(FD_PREFIX):])
    passed = passed_fds()
    if passed is not None and fd not in passed:
        named = f"{passed.start} to {passed.stop - 1}" if len(passed) else "none"
        raise ConfigError(f"cannot listen on {addr}: LISTEN_FDS passes file descriptors {named}")
    try:
        sock = socket.socket(fileno=fd)
    except OSError as e:
        raise ConfigError(f"cannot listen on {addr}: {e.strerror or e} (is the socket unit "
                          "started, and does it pass this descriptor?)") from None
    try:
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError:
        listening = 0
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6) \
            or not listening:
        sock.detach()  # not ours to close
        raise ConfigError(f"cannot listen on {addr}: descriptor {fd} is not a listening TCP socket")
    sock.setblocking(False)
    return [sock]


def is_inherited(addr: str) -> bool:
    return addr.startswith(FD_PREFIX)
