"""Socket activation as systemd does it, for the tests: a listening socket as file descriptor 3,
LISTEN_FDS=1 and LISTEN_PID set to this process, then exec the command (which keeps the pid).

    python tests/activate.py 127.0.0.1:0 -- python -m h2serve --bind fd://3 ...
    python tests/activate.py --fd 7 -- python -m h2serve --bind fd://3 ...

The first form binds the address itself; the second takes a socket already listening on descriptor
7 (passed by the test, which keeps its own copy open as a socket unit would, across restarts).
"""

from __future__ import annotations

import os
import socket
import sys

SD_LISTEN_FDS_START = 3


def main(argv: list[str]) -> None:
    split = argv.index("--")
    where, command = argv[:split], argv[split + 1:]
    if where[0] == "--fd":
        fd = int(where[1])
    else:
        host, port = where[0].rsplit(":", 1)
        sock = socket.create_server((host, int(port)), backlog=128)
        fd = sock.detach()
    if fd != SD_LISTEN_FDS_START:
        os.dup2(fd, SD_LISTEN_FDS_START)  # inheritable, as dup2 makes it
        os.close(fd)
    else:
        os.set_inheritable(fd, True)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_PID"] = str(os.getpid())
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
