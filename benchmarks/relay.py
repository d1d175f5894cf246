"""A latency relay: a TCP proxy on loopback that delays each direction by RTT/2.

Loopback has no delay, and a machine without netem cannot add one in the kernel, so the page-load
benchmark puts this relay between the client and the server:

    async with Relay(target_port=8443, rtt_ms=50) as relay:
        ...connect to 127.0.0.1:relay.port...

    python -m benchmarks.relay --target 127.0.0.1:8443 --rtt 50 [--mbit 10]

What it models, per direction and per connection:

* **Propagation delay.** Every chunk read is stamped on arrival and written on at arrival + RTT/2, by
  one task per direction draining a FIFO queue, so byte order is kept and a burst stays a burst.
* **The TCP handshake.** The client's kernel completes its handshake with the relay at once, so the
  relay holds the client's first bytes until one RTT after the connection arrived: a ClientHello sent
  at once reaches the server at 1.5 RTT, as it would after a real SYN/SYN-ACK (turn off with
  `handshake=False`).
* **An optional bandwidth cap** (`mbit`): bytes are serialised onto the link at that rate, each
  direction on its own, and delivered RTT/2 after their last bit left.

It is plain TCP: TLS passes through untouched, so ALPN is negotiated end to end. What it does not
model: TCP slow start and congestion windows (the server's whole burst leaves at once), packet loss,
retransmission, reordering, and the head-of-line blocking that loss causes. Its own buffering per
direction is bounded (`max_buffer`), beyond which it stops reading and the sender's TCP backs off.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import sys
from collections import deque

READ_SIZE = 64 * 1024
PACE_SLICE = 4096              # with a bandwidth cap, chunks are paced in slices of at most this
MAX_BUFFER = 8 * 1024 * 1024   # bytes queued per direction before the relay stops reading
# The event loop's timers wake up to a millisecond late (epoll's timeout is in whole milliseconds,
# rounded up), which would add about 1 ms to every round trip. So the relay sleeps until this long
# before a chunk is due, then polls the loop (reads still served) until the due time itself.
SPIN = 0.002


class _Pipe:
    """One direction of one connection: read, stamp, queue, and write on when due."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float,
                 bytes_per_s: float | None, not_before: float, max_buffer: int) -> None:
        self.reader = reader
        self.writer = writer
        self.delay = delay
        self.bytes_per_s = bytes_per_s
        self.not_before = not_before      # nothing enters the link before this (the TCP handshake)
        self.link_free = 0.0              # when the link has finished serialising what it took
        self.queue: deque[tuple[float, bytes | None]] = deque()
        self.queued = 0
        self.max_buffer = max_buffer
        self.wake = asyncio.Event()       # the drain task: something was queued
        self.room = asyncio.Event()       # the read task: the queue went below max_buffer
        self.room.set()
        self.loop = asyncio.get_running_loop()

    def _due(self, now: float, size: int) -> float:
        start = max(now, self.not_before, self.link_free)
        if self.bytes_per_s is not None:
            start += size / self.bytes_per_s
            self.link_free = start
        return start + self.delay

    def _put(self, due: float, data: bytes | None) -> None:
        self.queue.append((due, data))
        if data is not None:
            self.queued += len(data)
            if self.queued >= self.max_buffer:
                self.room.clear()
        self.wake.set()

    async def read(self) -> None:
        try:
            while True:
                await self.room.wait()
                data = await self.reader.read(READ_SIZE)
                now = self.loop.time()
                if not data:
                    break
                if self.bytes_per_s is None:
                    self._put(self._due(now, len(data)), data)
                else:
                    for i in range(0, len(data), PACE_SLICE):
                        piece = data[i:i + PACE_SLICE]
                        self._put(self._due(now, len(piece)), piece)
        except (ConnectionError, OSError):
            pass
        self._put(self._due(self.loop.time(), 0), None)  # end of stream, after what came before

    async def drain(self) -> None:
        """Write each chunk at its due time; chunks already due go out together in one write."""
        queue, writer = self.queue, self.writer
        try:
            while True:
                while not queue:
                    self.wake.clear()
                    await self.wake.wait()
                due = queue[0][0]
                wait = due - self.loop.time()
                if wait > SPIN:
                    await asyncio.sleep(wait - SPIN)
                while self.loop.time() < due:
                    await asyncio.sleep(0)  # one pass of the loop: reads are still taken in
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
    `target_host:target_port` with `rtt_ms / 2` of delay each way and, given `mbit`, a bandwidth cap
    of that many megabits per second in each direction."""

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
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Relay:
        self._server = await asyncio.start_server(self._accepted, *self.listen, backlog=1024)
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

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
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
        up = _Pipe(reader, up_writer, delay, self.bytes_per_s, hold, self.max_buffer)
        down = _Pipe(up_reader, writer, delay, self.bytes_per_s, 0.0, self.max_buffer)
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
        cap = f", {args.mbit:g} Mbit/s each way" if args.mbit else ""
        print(f"relay listening on {host}:{relay.port} -> {target_host}:{target_port}, "
              f"RTT {args.rtt:g} ms{cap}", flush=True)
        await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.relay",
        description="TCP relay adding RTT/2 of delay each way (and optionally a bandwidth cap).")
    parser.add_argument("--target", required=True, metavar="HOST:PORT", help="where to relay to")
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="HOST:PORT",
                        help="where to listen (default: 127.0.0.1:0, a free port, printed)")
    parser.add_argument("--rtt", type=float, default=50.0, metavar="MS", help="round-trip time (ms)")
    parser.add_argument("--mbit", type=float, default=None, metavar="MBIT",
                        help="bandwidth cap per direction, megabits per second (default: none)")
    parser.add_argument("--no-handshake", action="store_true",
                        help="do not hold the client's first bytes for one RTT (the TCP handshake)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
