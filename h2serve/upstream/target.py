"""The --upstream URL: `http://HOST:PORT` or `unix:/path/to.sock`.

Kept apart from the pool so that Config can check the URL without importing the proxy (nor the
Link parser it needs, an optional extra)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit


class UpstreamError(ValueError):
    """An --upstream URL that cannot be used; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Target:
    """Where the application listens: a TCP host and port, or a Unix socket path."""

    host: str = ""
    port: int = 0
    unix: str | None = None

    def __str__(self) -> str:
        return f"unix:{self.unix}" if self.unix is not None else f"http://{self.host}:{self.port}"


def parse_upstream(url: str) -> Target:
    """Read `http://HOST:PORT` (port 80 if left out) or `unix:/path`; UpstreamError otherwise."""
    if url.startswith("unix:"):
        path = url[len("unix:"):]
        if path.startswith("//"):
            path = path[2:]  # unix:///run/app.sock
        if not path.startswith("/"):
            raise UpstreamError("a Unix socket path must be absolute: unix:/path/to.sock")
        return Target(unix=path)
    parts = urlsplit(url)
    if parts.scheme != "http":
        raise UpstreamError("use http://HOST:PORT or unix:/path/to.sock (the application is "
                            "spoken to over cleartext HTTP/1.1)")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise UpstreamError("give only http://HOST:PORT, without a path, query or credentials")
    try:
        port = parts.port or 80
    except ValueError:
        raise UpstreamError("the port is not a number from 1 to 65535") from None
    if not parts.hostname:
        raise UpstreamError("no host: use http://HOST:PORT")
    return Target(parts.hostname, port)
