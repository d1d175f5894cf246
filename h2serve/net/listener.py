"""Listening sockets and the accept loop, with a cap on connections at once.

asyncio's own `create_server` accepts as long as the kernel hands out sockets, and on EMFILE it
logs an error and retries a second later. A public server wants a limit of its own: at
`max_connections` (handshakes in progress included) the listener stops accepting, and new clients
wait in the kernel's backlog until a connection closes. The accepted socket is handed to
`loop.connect_accepted_socket`, which does the TLS handshake with its timeout.

On a TLS port the client's first byte is looked at (MSG_PEEK: it stays for the TLS layer) before
the handshake starts. A TLS client begins with a handshake record (0x16); one that begins with an
upper-case letter is speaking plain HTTP to the HTTPS port (`curl http://host:443/`: the first
letter of a method), and gets a plain-text 400 saying so, as nginx answers, instead of a
connection closed without a word. Anything else goes to the TLS layer, which refuses it.

Memory per TLS connection: asyncio's SSL protocol gives every connection a read buffer of its
class attribute `max_size`, 256 KiB, allocated (and touched) when the connection is accepted and
kept for its life: 500 MiB for 2,000 idle clients. On the event loop h2serve runs itself (`--loop
asyncio`: tls.py's `SmallTLSBufferLoop`) it is `TLS_READ_BUFFER`, 32 KiB (two TLS records), which
costs nothing a static server notices: its clients send requests, not bodies. An application that
embeds `Server` on its own loop keeps asyncio's default: nothing here changes asyncio for others.

Under uvloop (`--loop`, server.py) that setting is simply unused: uvloop has its own TLS layer, whose
per-connection read buffer (256 KiB, a compile-time constant: nothing to tune from Python) is
malloc'd but not touched, so only the pages a read fills become resident. Measured with 1,000 idle
TLS HTTP/2 connections: about 42 KiB each under uvloop, 71 KiB under asyncio with the 32 KiB buffer.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
import sys
from collections.abc import Callable
from typing import Any

log = logging.getLogger("h2serve")

BACKLOG = 1024
ACCEPT_BATCH = 64               # connections accepted per wake-up, so one listener cannot hog the loop
RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)
RESOURCE_RETRY = 1.0            # seconds to stop accepting after running out of file descriptors
PLAIN_HTTP_BODY = b"This is an HTTPS port: the request was sent as plain HTTP. Use https://.\n"
PLAIN_HTTP_ANSWER = (b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                     % (len(PLAIN_HTTP_BODY), PLAIN_HTTP_BODY))


def bind(host: str, port: int) -> list[socket.socket]:
    """Listening sockets for every address `host` resolves to (port 0: each gets a free port)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    sockets: list[socket.socket] = []
    seen = set()
    try:
        for family, kind, proto, _, address in infos:
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            _listen(sock, address)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def spread(sock: socket.socket, count: int) -> list[socket.socket]:
    """`count` listening sockets in place of `sock` (closed), on its very address and port, in one
    SO_REUSEPORT group: the kernel gives each new connection to one of them by a hash of the
    client's address and port, so `count` worker processes, each accepting on its own socket, get
    even shares. (On one shared socket whichever worker wakes first takes a whole burst: all 32 of
    h2load's connections.) `sock` itself was bound without SO_REUSEPORT, which made sure that
    nothing else listened there: another server with SO_REUSEPORT would otherwise be joined
    silently. Without load-balancing SO_REUSEPORT (not Linux), `sock` is shared by all."""
    if count == 1 or sys.platform != "linux" or not hasattr(socket, "SO_REUSEPORT"):
        return [sock] * count
    family, kind, proto, address = sock.family, sock.type, sock.proto, sock.getsockname()
    sock.close()
    group: list[socket.socket] = []
    try:
        for _ in range(count):
            member = socket.socket(family, kind, proto)
            group.append(member)
            member.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            _listen(member, address)
    except OSError:
        for member in group:
            member.close()
        raise
    return group


def _listen(sock: socket.socket, address: tuple[Any, ...]) -> None:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind(address)
    sock.listen(BACKLOG)
    sock.setblocking(False)


class Acceptor:
    """Accepts connections on one listening socket while `room()` says there is room."""

    def __init__(self, sock: socket.socket, factory: Callable[[], asyncio.Protocol],
                 ssl_ctx: ssl.SSLContext | None, handshake_timeout: float,
                 room: Callable[[], bool]) -> None:
        self.sock = sock
        self.factory = factory
        self.ssl_ctx = ssl_ctx
        self.handshake_timeout = handshake_timeout
        self.room = room
        self.handshakes = 0            # TLS handshakes under way: they count as connections
        self.sniffing: dict[socket.socket, tuple[asyncio.TimerHandle, float]] = {}  # first byte awaited
        self.accepting = False
        self.closed = False
        self.handshake_failed: Callable[[], None] | None = None  # the metrics' count, if on
        self._loop = asyncio.get_running_loop()
        self._warned = False

    def start(self) -> None:
        """Accept again (after a pause); a no-op while accepting or once closed."""
        if not self.accepting and not self.closed:
            self.accepting = True
            self._loop.add_reader(self.sock.fileno(), self._accept)

    def pause(self) -> None:
        if self.accepting:
            self.accepting = False
            self._loop.remove_reader(self.sock.fileno())

    def close(self) -> None:
        self.pause()
        self.closed = True
        self.sock.close()
        for conn in list(self.sniffing):
            self._drop(conn)

    def _accept(self) -> None:
        for _ in range(ACCEPT_BATCH):
            if not self.room():
                self.pause()  # resumed by the server when a connection closes
                return
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                self._accept_failed(e)
                return
            conn.setblocking(False)
            self.handshakes += 1
            if self.ssl_ctx is None:
                self._connect(conn)
            else:
                self._sniff(conn, self._loop.time() + self.handshake_timeout)

    def _connect(self, conn: socket.socket, deadline: float = 0.0) -> None:
        """The connection to its protocol; over TLS once the handshake is done by `deadline`."""
        timeout = max(deadline - self._loop.time(), 0.1) if self.ssl_ctx else None
        task = self._loop.create_task(self._loop.connect_accepted_socket(
            self.factory, conn, ssl=self.ssl_ctx, ssl_handshake_timeout=timeout))
        task.add_done_callback(self._handshake_done)

    def _handshake_done(self, task: asyncio.Task[object]) -> None:
        if not task.cancelled() and task.exception() is not None:
            # A client that fails or stalls its TLS handshake: nothing the operator can act on.
            log.debug("TLS handshake failed: %s", task.exception())
            if self.handshake_failed is not None:
                self.handshake_failed()
        self._handshake_over()

    def _handshake_over(self) -> None:
        self.handshakes -= 1
        if not self.accepting and self.room():
            self.start()

    # -- the first byte on a TLS port ------------------------------------------------------------

    def _sniff(self, conn: socket.socket, deadline: float) -> None:
        """Look at the client's first byte (usually in by now), or wait for it until `deadline`:
        the handshake timeout counts from the accept, whatever the wait."""
        try:
            first = conn.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            timer = self._loop.call_at(deadline, self._drop, conn)
            self.sniffing[conn] = (timer, deadline)
            self._loop.add_reader(conn.fileno(), self._sniffed, conn)
            return
        except OSError:
            first = b""  # reset by the client: nothing to answer
        if first and not first.isupper():  # a TLS record (0x16), or garbage the TLS layer refuses
            self._connect(conn, deadline)
            return
        if first:  # "G" of GET, "P" of POST or of the HTTP/2 preface...
            self._answer_plain_http(conn)
        conn.close()
        self._handshake_over()

    def _sniffed(self, conn: socket.socket) -> None:
        """Readable: look again (a spurious wake-up just waits on, until the same deadline)."""
        deadline = self._unwatch(conn)
        if deadline is not None:
            self._sniff(conn, deadline)

    def _answer_plain_http(self, conn: socket.socket) -> None:
        """A 400 in plain text. What the client already sent (a request head, 64 KiB at most) is
        read first: closing a socket with unread input makes the kernel send a reset, which can
        destroy the answer in flight."""
        try:
            for _ in range(4):
                if not conn.recv(16384):
                    break
        except OSError:
            pass  # nothing more to read for now (or the client is gone)
        try:
            conn.send(PLAIN_HTTP_ANSWER)  # small: it fits the socket's buffer in one go
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            return
        log.info("plain HTTP request on a TLS port from %s: answered 400", _peer(conn))

    def _drop(self, conn: socket.socket) -> None:
        """A client that sent nothing within the handshake timeout (or the server is closing)."""
        if self._unwatch(conn) is not None:
            conn.close()
            self._handshake_over()

    def _unwatch(self, conn: socket.socket) -> float | None:
        """Stop waiting for `conn`'s first byte: its deadline, or None if it was not awaited."""
        entry = self.sniffing.pop(conn, None)
        if entry is None:
            return None
        entry[0].cancel()
        self._loop.remove_reader(conn.fileno())
        return entry[1]

    def _accept_failed(self, error: OSError) -> None:
        if error.errno in RESOURCE_ERRORS:
            if not self._warned:
                log.warning("out of file descriptors (%s): not accepting for %gs; raise `ulimit -n` "
                            "or lower --max-connections", error.strerror, RESOURCE_RETRY)
                self._warned = True
            self.pause()
            self._loop.call_later(RESOURCE_RETRY, self.start)
        else:
            log.warning("accept failed: %s", error)


def _peer(conn: socket.socket) -> str:
    try:
        return str(conn.getpeername()[0])
    except OSError:
        return "-"
