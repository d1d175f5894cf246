"""TLS record sizes: small while a connection starts or wakes up, full size once it streams.

A TLS record is decrypted only when all of it has arrived, so its first byte waits for its last.
OpenSSL fills records to 16 KiB, which on a 2 Mbit/s line is 64 ms before a browser can read a
stylesheet that begins at the start of a record shared with image bytes; measured with Chromium
through the page-load relay (RTT 50 ms, 2 Mbit/s, `hero`), first contentful paint came 50 ms
sooner with records of one TCP segment. Small records cost a little more CPU and about 1.5% more
bytes, which only matters to a connection moving a lot of data: after `FULL_AFTER` bytes written
without a pause of `IDLE_RESET`, writes go through whole and OpenSSL makes full records. This is
the "dynamic record sizing" of Cloudflare's nginx patch and of h2o, with its usual numbers.

asyncio's (and uvloop's) TLS transports hand each buffer to OpenSSL as a `SSL_write` of its own,
so a buffer of at most `SMALL_RECORD` bytes is one record of its own; that is the lever. The adapter
passes the pieces in one `writelines()`, which both transports keep apart as separate SSL_writes but
send to the socket in one go: a `write()` per piece cost 8% of the small-file HTTP/2 rate in syscalls.
"""

from __future__ import annotations

# The payload of a record that fits one TCP segment: an MSS of 1,448 bytes (1,500-byte MTU, IPv4,
# TCP timestamps) less TLS 1.3's 22 bytes of record header, content type and AEAD tag.
SMALL_RECORD = 1400
FULL_AFTER = 1024 * 1024   # bytes written since the last pause before records go to full size
IDLE_RESET = 1.0           # seconds without a write after which records start small again


class RecordSizer:
    """Splits what a TLS connection writes into records of one segment while it is young or has
    just woken up (the bytes a page waits for); leaves it whole once it has streamed a megabyte."""

    __slots__ = ("last", "written")

    def __init__(self) -> None:
        self.written = 0
        self.last = float("-inf")

    @property
    def streaming(self) -> bool:
        """Past the first megabyte without a pause: a bulk transfer, which wants throughput more
        than late decisions (the adapter widens its buffers then, net/adapter.py)."""
        return self.written >= FULL_AFTER

    def pieces(self, data: bytes, now: float, split: bool = True) -> list[bytes] | None:
        """The writes to make for `data` at `now`: None when `data` goes whole. `split=False` (a
        connection without TLS, whose buffer limits still follow `streaming`) only counts it."""
        if now - self.last > IDLE_RESET:
            self.written = 0
        self.last = now
        small = self.written < FULL_AFTER
        self.written += len(data)
        if not (split and small) or len(data) <= SMALL_RECORD:
            return None
        return [data[i:i + SMALL_RECORD] for i in range(0, len(data), SMALL_RECORD)]
