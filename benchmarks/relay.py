"""A latency relay: a TCP proxy on loopback that delays each direction by RTT/2 and, optionally, models
one access line of limited bandwidth shared by every connection through it.

Loopback has no delay, and a machine without netem cannot add one in the kernel, so the page-load
benchmark puts this relay between the client and the server:

    async with Relay(target_port=8443, rtt_ms=50) as relay:
        ...connect to 127.0.0.1:relay.port...

    python -m benchmarks.relay --target 127.0.0.1:8443 --rtt 50 [--mbit 10]

What it models:

* **Propagation delay**, per direction and per connection. Every chunk is stamped and written on at
  RTT/2 after its last bit left the link (at once without a cap), by one task per direction and
  connection draining a FIFO queue, so byte order is kept and a burst stays a burst.
* **The TCP handshake.** The client's kernel completes its handshake with the relay at once, so the
  relay holds the client's first bytes until one RTT after the connection arrived: a ClientHello sent
  at once reaches the server at 1.5 RTT, as it would after a real SYN/SYN-ACK (turn off with
  `handshake=False`).
* **One access line** (given `mbit`): a `Link` per direction, shared by all the relay's connections,
  serialises bytes at `mbit` megabits per second. It is a FIFO bottleneck queue, as a real line's
  router has: connections' bytes enter it in slices (`PACE_SLICE`) in the order they were read, so
  six HTTP/1.1 connections share one line's bandwidth rather than getting six. The queue holds about
  one bandwidth-delay product (`bdp`: rate * RTT, at least `MIN_BDP`): a connection reads more from
  its sender only when the queue has room for the read, so the order of bytes is the server's, not
  that of a deep queue in the relay, and the sender's TCP sees back-pressure as the line drains. The
  socket towards the server gets a receive buffer of about the same size, so the server can have
  about one BDP in flight to the relay: a stand-in for a congestion window of one BDP.

It is plain TCP: TLS passes through untouched, so ALPN is negotiated end to end. What it does not
model: TCP slow start and the growth and shrinking of congestion windows (each connection may have
about a BDP in flight from its first round trip: the "window" is a fixed receive buffer, which the
kernel sizes only roughly, plus about one read that asyncio reads ahead), packet loss and
retransmission (the queue never drops, it holds the sender back instead), reordering, the
head-of-line blocking that loss causes, and fairness between connections beyond a FIFO queue's
(whoever reads first is served first; with several connections waiting on their sockets at once,
the queue may exceed one BDP by up to one read for each beyond the first). Towards the client only
the relay's queue on the uplink is bounded to a BDP, not the client's receive window. Without
`mbit` there is no line at all, only delay. Either way each direction of each connection holds at
most `max_buffer` bytes before it stops reading, which bounds what it holds when its receiver stalls.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections import deque

READ_SIZE = 64 * 1024
PACE_SLICE = 4096              # with a bandwidth cap, bytes enter the link in slices of at most this
MIN_BDP = 16 * 1024            # floor of the line's queue and of the receive buffer towards the server
MAX_BUFFER = 8 * 1024 * 1024   # bytes queued per direction of a connection before it stops reading
# The event loop's timers wake up to a millisecond late (epoll's timeout is in whole milliseconds,
# rounded up), which would add about 1 ms to every round trip. So the relay sleeps until this long
# before a chunk is due, then polls the loop (reads still served) until the due time itself.
SPIN = 0.002


async def _until(loop: asyncio.AbstractEventLoop, when: float) -> None:
    """Sleep until the loop's clock reaches `when`, to well under a millisecond."""
    wait = when - loop.time()
    if wait > SPIN:
        await asyncio.sleep(wait - SPIN)
    while loop.time() < when:
        await asyncio.sleep(0)  # one pass of the loop: reads are still taken in


class Link:
    """One direction of the access line, shared by every connection through the relay: a FIFO queue
    of slices serialised at `bytes_per_s`, holding about `limit` bytes (one bandwidth-delay product).

    `free` is when the link will have serialised all it took; the bytes still queued are
    `(free - now) * bytes_per_s`. `peak` records the most that were ever queued."""

    def __init__(self, bytes_per_s: float, limit: int) -> None:
        self.bytes_per_s = bytes_per_s
        self.limit = limit
        self.read_size = min(READ_SIZE, max(PACE_SLICE, limit // 4))
        self.free = 0.0
        self.peak = 0

    def queued(self, now: float) -> float:
        return max(0.0, self.free - now) * self.bytes_per_s

    async def room(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait until the queue has room for one more read."""
        while True:
            excess = self.queued(loop.time()) + self.read_size - self.limit
            if excess <= 0:
                return
            await asyncio.sleep(excess / self.bytes_per_s)

    def take(self, now: float, size: int) -> float:
        """Queue `size` bytes behind what the link holds; return when their last bit leaves it."""
        self.free = max(now, self.free) + size / self.bytes_per_s
        self.peak = max(self.peak, round(self.queued(now)))
        return self.free


class _Pipe:
    """One direction of one connection: read, stamp, queue, and write on when due."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                 link: Link | None, not_before: float, max_buffer: int) -> None:
        self.reader = reader
        self.writer = writer
        self.delay = delay
        self.link = link
        self.not_before = not_before      # nothing enters the link before this (the TCP handshake)
        self.last_due = 0.0
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued = 0
        self.max_buffer = max_buffer
        self.wake = asyncio.Event()       # the drain task: something was queued
        self.room = asyncio.Event()       # the read task: the queue went below max_buffer
        self.room.set()
        self.loop = asyncio.get_running_loop()

    def _put(self, due: float, data: bytes | None) -> None:
        self.last_due = due = max(due, self.last_due)
        self.queue.append((due, data))
        if data is not None:
            self.queued += len(data)
            if self.queued >= self.max_buffer:
                self.room.clear()
        self.wake.set()

    async def read(self) -> None:
        link = self.link
        try:
            if link is not None and self.not_before > self.loop.time():
                await _until(self.loop, self.not_before)  # the handshake: the link is not held
            while True:
                await self.room.wait()
                if link is None:
                    data = await self.reader.read(READ_SIZE)
                    if not data:
                        break
                    self._put(max(self.loop.time(), self.not_before) + self.delay, data)
                    continue
                await link.room(self.loop)
                data = await self.reader.read(link.read_size)
                if not data:
                    break
                now = self.loop.time()
                for i in range(0, len(data), PACE_SLICE):
                    piece = data[i:i + PACE_SLICE]
                    self._put(link.take(now, len(piece)) + self.delay, piece)
        except (ConnectionError, OSError):
            pass
        self._put(max(self.loop.time(), self.not_before) + self.delay, None)  # after what came before

    async def drain(self) -> None:
        """Write each chunk at its due time; chunks already due go out together in one write."""
        queue, writer = self.queue, self.writer
        try:
            while True:
                while not queue:
                    self.wake.clear()
                    await self.wake.wait()
                due = queue[0][0]
                await _until(self.loop, due)
                now = self.loop.time()
                out: list[bytes] = []
                eof = False
                while queue and queue[0][0] <= now:
                    _, data = queue.popleft()
                    if data is None:
                        eof = True
                        break
                    out.append(data)
                if out:
                    payload = b"".join(out)
                    self.queued -= len(payload)
                    writer.write(payload)
                    if self.queued < self.max_buffer:
                        self.room.set()
                    await writer.drain()
                if eof:
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
        except (ConnectionError, OSError):
            return


class Relay:
    """Listens on `host:port` (0: any free port, see `.port`) and relays each connection to
    `target_host:target_port` with `rtt_ms / 2` of delay each way and, given `mbit`, one access line
    of that many megabits per second in each direction, shared by all connections (`.up`, towards
    the server, and `.down`, towards the client: `Link`s, None without `mbit`)."""

    def __init__(self, target_port: int, rtt_ms: float, mbit: float | None = None, *,
                 target_host: str = "127.0.0.1", host: str = "127.0.0.1", port: int = 0,
                 handshake: bool = True, max_buffer: int = MAX_BUFFER) -> None:
        self.target = (target_host, target_port)
        self.rtt = rtt_ms / 1000.0
        self.bytes_per_s = mbit * 1e6 / 8 if mbit else None
        self.handshake = handshake
        self.max_buffer = max_buffer
        self.listen = (host, port)
        self.port = 0
        self.connections = 0
        self.bdp = 0
        self.up: Link | None = None
        self.down: Link | None = None
        if self.bytes_per_s is not None:
            self.bdp = max(MIN_BDP, round(self.bytes_per_s * self.rtt))
            self.up = Link(self.bytes_per_s, self.bdp)
            self.down = Link(self.bytes_per_s, self.bdp)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _stream_limit(self) -> int:
        # asyncio's StreamReader reads ahead of us until it holds twice its limit; with a line, keep
        # that to about one read, so that what the sender has in flight is decided by the kernel's
        # receive buffer and the line's queue.
        return self.up.read_size if self.up is not None else 64 * 1024

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._accepted, *self.listen, backlog=1024,
                                                  limit=self._stream_limit())
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def __aenter__(self) -> Relay:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _accepted(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # The relaying runs in a task of its own: cancelling asyncio's own handler task on close()
        # would make asyncio log the cancellation as an error.
        task = asyncio.ensure_future(self._relay(reader, writer))
        self._tasks.add(task)
        try:
            await task
        except asyncio.CancelledError:
            if not task.cancelled():
                raise
        finally:
            self._tasks.discard(task)

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self.up is None:
            return await asyncio.open_connection(*self.target)
        # With a line, the receive buffer towards the server is set before connecting (the window
        # scale is fixed by then), to about one BDP: the server's TCP can have about that in flight.
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(*self.target, type=socket.SOCK_STREAM)
        family, type_, proto, _, address = infos[0]
        sock = socket.socket(family, type_, proto)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.bdp)
            await loop.sock_connect(sock, address)
        except BaseException:
            sock.close()
            raise
        return await asyncio.open_connection(sock=sock, limit=self._stream_limit())

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        self.connections += 1
        try:
            up_reader, up_writer = await self._connect()
        except OSError:
            writer.close()
            return
        for w in (writer, up_writer):  # asyncio sets TCP_NODELAY already; be explicit
            sock = w.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        delay = self.rtt / 2
        hold = arrived + self.rtt if self.handshake else 0.0
        up = _Pipe(reader, up_writer, delay, self.up, hold, self.max_buffer)
        down = _Pipe(up_reader, writer, delay, self.down, 0.0, self.max_buffer)
        try:
            await asyncio.gather(up.read(), up.drain(), down.read(), down.drain())
        finally:
            for w in (writer, up_writer):
                w.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def _serve(args: argparse.Namespace) -> None:
    target_host, target_port = _address(args.target)
    host, port = _address(args.listen)
    relay = Relay(target_port, args.rtt, args.mbit, target_host=target_host, host=host, port=port,
                  handshake=not args.no_handshake)
    async with relay:
        cap = f", one line of {args.mbit:g} Mbit/s each way" if args.mbit else ""
        print(f"relay listening on {host}:{relay.port} -> {target_host}:{target_port}, "
              f"RTT {args.rtt:g} ms{cap}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.relay",
        description="TCP relay adding RTT/2 of delay each way (and optionally a shared bandwidth cap).")
    parser.add_argument("--target", required=True, metavar="HOST:PORT", help="where to relay to")
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="where to listen (default: 127.0.0.1:0, a free port, printed)")
    parser.add_argument("--rtt", type=float, default=50.0, metavar="MS", help="round-trip time (ms)")
    parser.add_argument("--mbit", type=float, default=None, metavar="MBIT",
                        help="bandwidth of the line each way, shared by all connections, megabits per "
                             "second (default: none)")
    parser.add_argument("--no-handshake", action="store_true",
                        help="do not hold the client's first bytes for one RTT (the TCP handshake)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
