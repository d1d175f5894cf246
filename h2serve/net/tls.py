"""The server's TLS context, per RFC 9113 section 9.2.

HTTP/2 over TLS requires TLS 1.2 or later, no TLS compression, no renegotiation, and for TLS 1.2
only ephemeral key exchange with AEAD ciphers (the section 9.2.2 block list forbids everything else).
TLS 1.3 suites all qualify. ALPN chooses the protocol; a client that offers no ALPN gets HTTP/1.1.

Also here: the asyncio event loop h2serve runs on, whose TLS connections hold a smaller read buffer
than asyncio's (`SmallTLSBufferLoop`).
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import sys
from asyncio import constants, selector_events, sslproto
from collections.abc import Callable, Sequence
from typing import Any

from ..config import ConfigError

TLS_READ_BUFFER = 32 * 1024  # per-connection TLS read buffer (asyncio's default: 256 KiB)
CHECKED_PYTHONS = ((3, 11), (3, 12), (3, 13))  # where SmallTLSBufferLoop was checked (its docstring)

# TLS 1.2 suites allowed by RFC 9113 section 9.2.2: ECDHE key exchange and AEAD ciphers only.
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# Every suite allowed (these, and TLS 1.3's) is strong, so the client's order decides, as Mozilla's
# server-side TLS guidelines advise and nginx does by default: a client without AES instructions
# (many phones) asks for ChaCha20 first, one with them for AES-128-GCM, cheaper than the AES-256 that
# OpenSSL's own order would put first (about a quarter of the CPU of a large file is encryption).


def make_ssl_context(cert: str, key: str, alpn: Sequence[str]) -> ssl.SSLContext:
    """A server context for `cert`/`key` offering `alpn`; raises ConfigError naming a bad file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE  # Python's server contexts set it
    ctx.set_ciphers(TLS12_CIPHERS)
    ctx.set_alpn_protocols(list(alpn))
    for option, path in (("--cert", cert), ("--key", key)):
        if not os.path.isfile(path):
            raise ConfigError(f"{option} {path}: no such file")
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as e:
        raise ConfigError(f"cannot read {e.filename or cert}: no such file") from None
    except PermissionError as e:
        raise ConfigError(f"cannot read {e.filename or cert}: permission denied") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(
            f"cannot load certificate {cert} with key {key}: {getattr(e, 'reason', None) or e} "
            "(is it PEM, and does the key match the certificate?)") from None
    return ctx


def negotiated_protocol(ssl_object: ssl.SSLObject | None) -> str:
    """The protocol ALPN chose; HTTP/1.1 when the client offered none (RFC 7301 section 3.2)."""
    if ssl_object is None:
        return "http/1.1"
    return ssl_object.selected_alpn_protocol() or "http/1.1"


class SmallTLSBufferSSLProtocol(sslproto.SSLProtocol):
    """asyncio's SSL protocol with a read buffer of `TLS_READ_BUFFER` instead of 256 KiB: it reads
    the class attribute `max_size` when it allocates the buffer, and as the most it reads at once."""

    max_size = TLS_READ_BUFFER


class SmallTLSBufferLoop(asyncio.SelectorEventLoop):
    """The asyncio event loop `h2serve` runs on (`--loop asyncio`, or `auto` without uvloop), whose TLS
    connections read through `SmallTLSBufferSSLProtocol`: 32 KiB of buffer each, not 256 KiB, which
    asyncio allocates and touches for every connection accepted and keeps for its life (500 MiB for
    2,000 idle clients; a static server's clients send requests, not bodies).

    Why a loop of its own: the buffer size is a class attribute of `asyncio.sslproto.SSLProtocol`, and
    setting it there (as h2serve once did at import) would change every TLS connection of the whole
    process, the embedding application's included. Only the loop `server.run()` creates is this one;
    an application that runs `Server` on its own loop keeps asyncio's default buffers, and nothing in
    asyncio is changed for anyone else.

    It relies on two private parts of asyncio: `BaseSelectorEventLoop._make_ssl_transport`, which the
    loop calls for every TLS connection (accepted or opened) and which is repeated here with the
    subclass in place of `sslproto.SSLProtocol`, and `selector_events._SelectorSocketTransport`.
    Checked on CPython 3.11 (3.11.7: tests/test_tls_loop.py serves a TLS request on it and finds the
    32 KiB buffer), and on 3.12.1 and 3.13.0, whose `_make_ssl_transport` also calls
    `_ensure_fd_no_transport` first, as this one does there (a 100 kB TLS round trip on the loop,
    32 KiB buffers both ends). On other versions `event_loop_factory()` returns asyncio's own loop.
    """

    def _make_ssl_transport(
            self, rawsock: socket.socket, protocol: asyncio.BaseProtocol, sslcontext: ssl.SSLContext,
            waiter: asyncio.Future[Any] | None = None, *, server_side: bool = False,
            server_hostname: str | None = None, extra: dict[str, Any] | None = None,
            server: asyncio.AbstractServer | None = None,
            ssl_handshake_timeout: float = constants.SSL_HANDSHAKE_TIMEOUT,
            ssl_shutdown_timeout: float = constants.SSL_SHUTDOWN_TIMEOUT) -> asyncio.Transport:
        ensure_fd_free = getattr(self, "_ensure_fd_no_transport", None)  # 3.12 and later
        if ensure_fd_free is not None:
            ensure_fd_free(rawsock)
        ssl_protocol = SmallTLSBufferSSLProtocol(
            self, protocol, sslcontext, waiter,  # type: ignore[arg-type]  # typeshed: never None
            server_side, server_hostname, ssl_handshake_timeout=ssl_handshake_timeout,  # type: ignore[arg-type]
            ssl_shutdown_timeout=ssl_shutdown_timeout)
        selector_events._SelectorSocketTransport(  # type: ignore[attr-defined]  # private, not in typeshed
            self, rawsock, ssl_protocol, extra=extra, server=server)
        return ssl_protocol._app_transport


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes h2serve's asyncio loop: `SmallTLSBufferLoop` on the Pythons it was checked on,
    asyncio's own loop (with its 256 KiB buffers) on any other."""
    if sys.version_info[:2] in CHECKED_PYTHONS and sys.platform != "win32":
        return SmallTLSBufferLoop
    return asyncio.new_event_loop
