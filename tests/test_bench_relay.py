"""The latency relay of benchmarks/: its delay, the TCP handshake it models, byte order both ways,
its bandwidth cap (one line shared by all connections, with a queue of one BDP), and TLS with ALPN
passing through it to a real h2serve untouched."""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections.abc import Callable

from conftest import RunningServer

from benchmarks.relay import Relay

MARGIN = 0.030  # seconds a round trip may take beyond the RTT on a busy test machine


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_round_trip_takes_the_rtt_and_not_much_more() -> None:
    rtt = 0.040

    async def go() -> list[float]:
        server, port = await _echo_server()
        async with server, Relay(port, rtt * 1000, handshake=False) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            times = []
            for i in range(5):
                message = f"ping {i}\n".encode()
                started = time.perf_counter()
                writer.write(message)
                assert await reader.readexactly(len(message)) == message
                times.append(time.perf_counter() - started)
            writer.close()
            return times

    times = asyncio.run(go())
    assert min(times) >= rtt, times
    assert sorted(times)[len(times) // 2] < rtt + MARGIN, times


def test_first_bytes_wait_for_the_modelled_tcp_handshake() -> None:
    """A client's first bytes reach the server 1.5 RTT after connecting, as after SYN/SYN-ACK."""
    rtt = 0.040

    async def go() -> tuple[float, float]:
        server, port = await _echo_server()
        async with server, Relay(port, rtt * 1000) as relay:
            started = time.perf_counter()
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            writer.write(b"hello")
            await reader.readexactly(5)
            first = time.perf_counter() - started
            started = time.perf_counter()
            writer.write(b"again")
            await reader.readexactly(5)
            second = time.perf_counter() - started
            writer.close()
            return first, second

    first, second = asyncio.run(go())
    assert 2 * rtt <= first < 2 * rtt + MARGIN  # handshake (1 RTT) + the exchange (1 RTT)
    assert rtt <= second < rtt + MARGIN


def _numbered(count: int, tag: str) -> bytes:
    return b"".join(f"{tag}{i:08d}\n".encode() for i in range(count))


async def _write_in_pieces(writer: asyncio.StreamWriter, data: bytes, rng: random.Random) -> None:
    i = 0
    while i < len(data):
        n = rng.randint(1, 3000)
        writer.write(data[i:i + n])
        i += n
        if rng.random() < 0.3:
            await writer.drain()
            await asyncio.sleep(0)


def _exchange_both_ways(mbit: float | None) -> None:
    """Each side sends a long numbered stream in many small writes while reading the other's."""
    up = _numbered(60_000, "c")     # about 600 KB each way
    down = _numbered(60_000, "s")
    got: dict[str, bytes] = {}

    async def go() -> None:
        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            send = asyncio.ensure_future(_write_in_pieces(writer, down, random.Random(2)))
            got["server"] = await reader.readexactly(len(up))
            await send
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        async with server, Relay(port, 10, mbit, handshake=False) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            send = asyncio.ensure_future(_write_in_pieces(writer, up, random.Random(1)))
            got["client"] = await reader.readexactly(len(down))
            await send
            writer.close()

    asyncio.run(asyncio.wait_for(go(), 20))
    assert got["server"] == up
    assert got["client"] == down


def test_byte_order_is_kept_both_ways() -> None:
    _exchange_both_ways(None)


def test_byte_order_is_kept_with_a_bandwidth_cap() -> None:
    _exchange_both_ways(200.0)


def test_bandwidth_cap_paces_the_bytes() -> None:
    size = 250_000  # at 8 Mbit/s (1 MB/s) it takes 0.25 s to go through

    async def go() -> float:
        server, port = await _echo_server()
        async with server, Relay(port, 0, 8, handshake=False) as relay:
            reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
            started = time.perf_counter()
            writer.write(b"x" * size)
            await reader.readexactly(size)
            writer.close()
            return time.perf_counter() - started

    elapsed = asyncio.run(go())
    assert 0.25 <= elapsed < 0.25 * 2 + 0.5, elapsed  # paced each way: well above free loopback speed


async def _echo_through(relay: Relay, size: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.port)
    writer.write(b"y" * size)
    assert await reader.readexactly(size) == b"y" * size
    writer.close()


def _shared_line(sizes: list[int]) -> tuple[float, Relay]:
    """Echo `sizes` bytes on as many connections at once through one relay with an 8 Mbit/s line."""
    async def go() -> tuple[float, Relay]:
        server, port = await _echo_server()
        async with server, Relay(port, 20, 8, handshake=False) as relay:
            started = time.perf_counter()
            await asyncio.gather(*(_echo_through(relay, size) for size in sizes))
            return time.perf_counter() - started, relay

    return asyncio.run(asyncio.wait_for(go(), 20))


def test_connections_share_one_line_with_a_queue_of_one_bdp() -> None:
    """Two connections sending 200 KB each at once take as long as one sending 400 KB: at 8 Mbit/s
    (1 MB/s) each way, about 0.4 s, not the 0.2 s that a line per connection would give. And the
    relay queues about one bandwidth-delay product per direction, not megabytes."""
    alone, one = _shared_line([400_000])
    together, two = _shared_line([200_000, 200_000])
    assert one.up is not None and one.down is not None and two.up is not None and two.down is not None
    assert 0.36 <= alone < 0.6, alone
    assert 0.36 <= together < 0.6, together
    assert abs(together - alone) < 0.3 * alone, (alone, together)
    assert one.bdp == 20_000  # 1 MB/s * 20 ms
    # The uplink's queue fills (the clients send all at once); the downlink's barely does, as the
    # echoes come back at the rate the uplink lets the bytes through.
    assert one.up.peak >= one.bdp // 2 and two.up.peak >= two.bdp // 2, (one.up.peak, two.up.peak)
    # One sender reads only when the queue has room for the whole read: never above one BDP.
    for link in (one.up, one.down):
        assert link.peak <= one.bdp, (link.peak, one.bdp)
    # Two senders waiting on their sockets at once may each bring in one read: one read more at most.
    for link in (two.up, two.down):
        assert link.peak <= two.bdp + link.read_size, (link.peak, two.bdp)


def test_tls_and_alpn_h2_pass_through_to_h2serve(make_server: Callable[..., RunningServer],
                                                  ca_file: str) -> None:
    running = make_server()

    async def go() -> tuple[str | None, bytes, int]:
        async with Relay(running.port, 10) as relay:
            ctx = ssl.create_default_context(cafile=ca_file)
            ctx.set_alpn_protocols(["h2", "http/1.1"])
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", relay.port, ssl=ctx, server_hostname="localhost")
            alpn = writer.get_extra_info("ssl_object").selected_alpn_protocol()
            writer.write(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
            first = await reader.readexactly(9)  # the server's SETTINGS frame header
            writer.close()
            return alpn, first, relay.connections

    alpn, first, connections = asyncio.run(go())
    assert alpn == "h2"  # negotiated with h2serve itself: the relay only moved the bytes
    assert first[3] == 0x04  # frame type SETTINGS
    assert connections == 1
