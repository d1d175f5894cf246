"""TLS record sizes (net/records.py): the sizer on a fake clock, then the records on the wire, read
from the raw TLS stream of a real connection on asyncio (in-process) and on uvloop (`python -m
h2serve`); and the buffer limits that follow the same page/bulk distinction (net/adapter.py)."""

from __future__ import annotations

import os
import re
import socket
import ssl
import struct
from pathlib import Path

import pytest
from conftest import FakeClock, open_tls, tls_client_context

from h2serve.net.adapter import (
    BULK_NOTSENT_LOWAT,
    BULK_WRITE_BUFFER_HIGH,
    NOTSENT_LOWAT,
    TCP_NOTSENT_LOWAT,
    WRITE_BUFFER_HIGH,
)
from h2serve.net.records import FULL_AFTER, IDLE_RESET, SMALL_RECORD, RecordSizer

# What a TLS 1.3 record of SMALL_RECORD bytes of payload measures in its length field: the payload,
# its inner content type (1) and the AEAD tag (16).
SMALL_CIPHERTEXT = SMALL_RECORD + 1 + 16
FULL_CIPHERTEXT = 16 * 1024 + 1 + 16


def test_young_connection_writes_one_segment_records() -> None:
    sizer, clock = RecordSizer(), FakeClock()
    pieces = sizer.pieces(b"x" * 5000, clock())
    assert pieces is not None
    assert [len(p) for p in pieces] == [SMALL_RECORD] * 3 + [5000 - 3 * SMALL_RECORD]
    assert b"".join(pieces) == b"x" * 5000
    assert sizer.pieces(b"y" * SMALL_RECORD, clock()) is None  # one record already


def test_records_go_full_size_after_a_megabyte_and_small_again_after_a_pause() -> None:
    sizer, clock = RecordSizer(), FakeClock()
    chunk = b"z" * 65536
    for _ in range(FULL_AFTER // len(chunk)):
        assert sizer.pieces(chunk, clock.advance(0.01)) is not None
    assert sizer.pieces(chunk, clock.advance(0.01)) is None  # streaming: OpenSSL's full records
    assert sizer.pieces(chunk, clock.advance(IDLE_RESET / 2)) is None  # a short gap keeps it
    assert sizer.pieces(chunk, clock.advance(IDLE_RESET + 0.01)) is not None  # woke up: small again


def test_without_tls_writes_are_counted_but_never_cut() -> None:
    sizer, clock = RecordSizer(), FakeClock()
    assert sizer.pieces(b"x" * 5000, clock(), split=False) is None  # no records to size
    for _ in range(FULL_AFTER // 65536):
        assert sizer.pieces(b"z" * 65536, clock.advance(0.01), split=False) is None
    assert sizer.streaming  # the buffer limits still widen for a bulk transfer


def fetch_records(port: int, ca_file: str, path: str) -> tuple[list[int], bytes]:
    """GET `path` over TLS HTTP/1.1 through memory BIOs, so that the raw bytes the server sent can
    be split into records: the length field of every record the server sent after the request
    went out, and the decrypted response (read up to its Content-Length)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = tls_client_context(ca_file, ["http/1.1"]).wrap_bio(incoming, outgoing,
                                                             server_hostname="localhost")
    stream = bytearray()  # everything the server sent, to be split into records

    def receive() -> None:
        if outgoing.pending:
            raw.sendall(outgoing.read())
        data = raw.recv(1 << 20)
        assert data, "the server closed the connection early"
        stream.extend(data)
        incoming.write(data)

    while True:
        try:
            tls.do_handshake()
            break
        except ssl.SSLWantReadError:
            receive()
    tls.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    raw.sendall(outgoing.read())
    sent_at = len(stream)
    plain, expected = bytearray(), None
    while expected is None or len(plain) < expected:
        try:
            plain.extend(tls.read(1 << 20))
        except ssl.SSLWantReadError:
            receive()
        if expected is None and b"\r\n\r\n" in plain:
            head = bytes(plain[:plain.index(b"\r\n\r\n") + 4])
            length = re.search(rb"(?i)\r\ncontent-length: *(\d+)", head)
            assert length is not None, head
            expected = len(head) + int(length.group(1))
    raw.close()
    lengths, offset = [], 0
    while offset + 5 <= len(stream):
        kind, _, length = struct.unpack(">BHH", stream[offset:offset + 5])
        if offset >= sent_at and kind == 23:  # application data (TLS 1.3 hides the rest in it too)
            lengths.append(length)
        offset += 5 + length
    return lengths, bytes(plain)


def body_of(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:80]
    return body


def check_records(lengths: list[int], body: bytes, data: bytes) -> None:
    assert body == data
    # The first megabyte travels in records of one segment; none is bigger.
    small = [n for n in lengths[: FULL_AFTER // SMALL_RECORD]]
    assert max(small) <= SMALL_CIPHERTEXT, max(small)
    assert sum(1 for n in small if n == SMALL_CIPHERTEXT) > len(small) * 0.9
    # Past it the transfer goes through whole, in OpenSSL's full records.
    assert max(lengths) == FULL_CIPHERTEXT
    assert sum(lengths) > len(data)


SIZE = 3 * FULL_AFTER  # past the first megabyte, so that both record sizes are seen


@pytest.fixture
def streamed(site: Path) -> bytes:
    """A file of SIZE random bytes in the writable demo site, at /static/streamed.bin."""
    data = os.urandom(SIZE)
    (site / "static" / "streamed.bin").write_bytes(data)
    return data


def test_records_on_the_wire_asyncio(make_server, site: Path, streamed: bytes, ca_file: str) -> None:
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    lengths, response = fetch_records(server.port, ca_file, "/static/streamed.bin")
    check_records(lengths, body_of(response), streamed)


def test_records_on_the_wire_uvloop(spawn_server, site: Path, streamed: bytes, ca_file: str) -> None:
    proc = spawn_server("--templates", str(site / "templates"), "--static", str(site / "static"),
                        "--loop", "uvloop")
    lengths, response = fetch_records(proc.port, ca_file, "/static/streamed.bin")
    check_records(lengths, body_of(response), streamed)


def test_small_page_is_in_small_records(make_server, ca_file: str, tmp_path: Path) -> None:
    server = make_server()
    lengths, response = fetch_records(server.port, ca_file, "/")
    assert b"<html" in body_of(response).lower()
    assert lengths and max(lengths) <= SMALL_CIPHERTEXT


def server_side_limits(server) -> tuple[int, int]:
    """(TCP_NOTSENT_LOWAT, transport high-water mark) of the server's one connection, read in its
    loop's thread."""
    async def read() -> tuple[int, int]:
        (conn,) = server.server.registry.connections
        sock = conn.transport.get_extra_info("socket")
        lowat = sock.getsockopt(socket.IPPROTO_TCP, TCP_NOTSENT_LOWAT)
        return lowat, conn.transport.get_write_buffer_limits()[1]
    return server.call(read())


def test_buffers_are_narrow_for_a_page_and_wide_for_a_bulk_transfer(make_server, site: Path,
                                                                   streamed: bytes,
                                                                   ca_file: str) -> None:
    """What waits in the kernel and the transport stays small while a connection carries a page,
    so the HTTP/2 scheduler decides late; a bulk transfer gets the kernel's and wider limits."""
    server = make_server(templates=str(site / "templates"), static=str(site / "static"))
    with open_tls(server.port, ca_file, ["http/1.1"]) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        assert server_side_limits(server) == (NOTSENT_LOWAT, WRITE_BUFFER_HIGH)
        sock.sendall(b"GET /static/streamed.bin HTTP/1.1\r\nHost: localhost\r\n\r\n")
        received = 0
        while received < len(streamed):
            received += len(sock.recv(1 << 20))
        assert server_side_limits(server) == (BULK_NOTSENT_LOWAT, BULK_WRITE_BUFFER_HIGH)
