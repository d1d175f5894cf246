"""The server's TLS context, per RFC 9113 section 9.2.

HTTP/2 over TLS requires TLS 1.2 or later, no TLS compression, no renegotiation, and for TLS 1.2
only ephemeral key exchange with AEAD ciphers (the section 9.2.2 block list forbids everything else).
TLS 1.3 suites all qualify. ALPN chooses the protocol; a client that offers no ALPN gets HTTP/1.1.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Sequence

from ..config import ConfigError

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
