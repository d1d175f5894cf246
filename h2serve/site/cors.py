"""CORS for a static site (Fetch standard, "CORS protocol"): who may read the answers cross-origin.

Only reads are served, so the policy is small: an allowed `Origin` gets
`Access-Control-Allow-Origin` (its own origin, or `*` when any is allowed), and a preflight from it
gets 204 with `GET, HEAD`, the request headers it asked for, and a max age. Every answer, allowed
or not, says `Vary: Origin` once CORS is on: the same URL answers differently by Origin, and a
shared cache that stored the answer to a request without Origin (no CORS header) must not hand it to
a cross-origin one.
"""

from __future__ import annotations

import re

from .body import Headers, Response, http_date

ALLOW_METHODS = b"GET, HEAD"
MAX_AGE = b"86400"  # a day: Firefox's cap; Chromium caps it at two hours itself
_TOKEN_LIST = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+(?:[ \t]*,[ \t]*[!#$%&'*+.^_`|~0-9A-Za-z-]+)*\Z")


class Cors:
    """The allowed origins (`cors-origins`); `*` allows any."""

    def __init__(self, origins: tuple[str, ...]) -> None:
        self.any = "*" in origins
        self.origins = frozenset(o.encode() for o in origins if o != "*")

    def allow(self, origin: bytes | None) -> bytes | None:
        """The Access-Control-Allow-Origin value for a request from `origin`, or None."""
        if origin is None:
            return None
        if self.any:
            return b"*"
        return origin if origin in self.origins else None

    def preflight(self, method: str, request: dict[bytes, bytes], server: bytes) -> Response | None:
        """The 204 answer to a preflight (OPTIONS with Access-Control-Request-Method) from an allowed
        origin, or None: anything else goes on as any request (OPTIONS: 405)."""
        if method != "OPTIONS" or b"access-control-request-method" not in request:
            return None
        allowed = self.allow(request.get(b"origin"))
        if allowed is None:
            return None
        headers: Headers = [(b"access-control-allow-origin", allowed),
                            (b"access-control-allow-methods", ALLOW_METHODS)]
        asked = request.get(b"access-control-request-headers", b"").strip()
        if asked and _TOKEN_LIST.match(asked):
            # Whatever it asks to send: a static server reads only the headers it knows, so any
            # other is harmless, and Range or If-None-Match from a script must not fail here.
            headers.append((b"access-control-allow-headers", asked))
        headers += [(b"access-control-max-age", MAX_AGE), (b"vary", b"Origin"),
                    (b"date", http_date()), (b"server", server)]
        return Response(204, headers, None)

    def decorate(self, headers: Headers, origin: bytes | None) -> None:
        """Add Access-Control-Allow-Origin for an allowed origin, and Origin to Vary always."""
        allowed = self.allow(origin)
        if allowed is not None:
            headers.append((b"access-control-allow-origin", allowed))
        for i, (name, value) in enumerate(headers):
            if name == b"vary":
                if b"origin" not in value.lower():
                    headers[i] = (name, value + b", Origin")
                return
        headers.append((b"vary", b"Origin"))
