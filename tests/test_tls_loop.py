"""h2serve's own asyncio loop (h2serve/net/tls.py `SmallTLSBufferLoop`): its TLS connections hold a
32 KiB read buffer instead of asyncio's 256 KiB, and importing h2serve changes nothing in asyncio.

The server is started on the very loop factory `h2serve` itself runs (`server.event_loop`), and a
client connects over TLS from a thread with the blocking `ssl` module, so that the only asyncio SSL
protocols made meanwhile are the server's.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import ssl
import subprocess
import sys
from asyncio import sslproto
from collections.abc import Callable

from conftest import REPO, STATIC, TEMPLATES

from h2serve.config import Config
from h2serve.net.certs import DevCerts
from h2serve.net.tls import TLS_READ_BUFFER
from h2serve.server import Server, event_loop

ASYNCIO_DEFAULT = 256 * 1024  # asyncio's own SSLProtocol.max_size (3.11 to 3.13)


def _ssl_protocols() -> dict[int, sslproto.SSLProtocol]:
    return {id(o): o for o in gc.get_objects() if isinstance(o, sslproto.SSLProtocol)}


def _get_about(port: int, ca_file: str) -> tuple[socket.socket, bytes]:
    """A TLS connection (HTTP/1.1), left open, and the head of its answer to GET /about."""
    ctx = ssl.create_default_context(cafile=ca_file)
    ctx.set_alpn_protocols(["http/1.1"])
    sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                           server_hostname="localhost")
    sock.sendall(b"GET /about HTTP/1.1\r\nhost: localhost\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the answer"
        head += chunk
    return sock, head


def _server_tls_buffers(certs: DevCerts, factory: Callable[[], asyncio.AbstractEventLoop]) -> list[int]:
    """The read-buffer sizes of the asyncio SSL protocols made while a server on a loop of `factory`
    answered one TLS request."""
    config = Config(bind=["127.0.0.1:0"], cert=str(certs.cert), key=str(certs.key),
                    templates=str(TEMPLATES), static=str(STATIC), access_log="off", log_level="warning")

    async def main() -> list[int]:
        server = Server(config)
        await server.start()
        try:
            before = _ssl_protocols()
            sock, head = await asyncio.get_running_loop().run_in_executor(
                None, _get_about, server.port, str(certs.ca))
            try:
                assert head.startswith(b"HTTP/1.1 200 "), head
                made = [p for key, p in _ssl_protocols().items() if key not in before]
                # get_buffer(-1): the whole buffer the protocol reads into (BufferedProtocol API)
                return [len(p.get_buffer(-1)) for p in made]
            finally:
                sock.close()
        finally:
            await server.stop(0)

    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main())


def test_h2serves_loop_gives_tls_connections_32_kib(certs: DevCerts) -> None:
    """On the loop `h2serve --loop asyncio` runs, a TLS connection's read buffer is 32 KiB."""
    name, factory = event_loop("asyncio")
    assert name == "asyncio"
    assert TLS_READ_BUFFER == 32 * 1024
    assert _server_tls_buffers(certs, factory) == [TLS_READ_BUFFER]


def test_an_embedding_applications_loop_is_left_alone(certs: DevCerts) -> None:
    """`Server` on a loop of the application's own (asyncio's default) gets asyncio's default buffer:
    h2serve changes nothing in asyncio that other code would see."""
    assert sslproto.SSLProtocol.max_size == ASYNCIO_DEFAULT
    assert _server_tls_buffers(certs, asyncio.new_event_loop) == [ASYNCIO_DEFAULT]


def test_import_changes_nothing_in_asyncio() -> None:
    """Importing h2serve and its modules leaves asyncio's SSL buffer and event loop policy as they were."""
    code = ("import asyncio, asyncio.sslproto as s\n"
            "m, policy = s.SSLProtocol.max_size, type(asyncio.get_event_loop_policy())\n"
            "import h2serve, h2serve.cli, h2serve.server, h2serve.workers, h2serve.net.listener, "
            "h2serve.net.tls\n"
            "assert s.SSLProtocol.max_size == m, (s.SSLProtocol.max_size, m)\n"
            "assert type(asyncio.get_event_loop_policy()) is policy\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO),
                                                                     os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                            env=env, cwd=REPO)
    assert result.returncode == 0, result.stderr
