"""The proxy's header rules, RFC 9110 section 7.6: what crosses from client to application and
back, and what the proxy adds.

Hop-by-hop fields (Connection and every field it names, Keep-Alive, TE, Transfer-Encoding,
Upgrade, Proxy-*) belong to one connection and are dropped both ways; h11 frames the upstream
message itself. The client's own `Forwarded` and `X-Forwarded-*` are dropped and written anew
from what the server saw, since a client can put anything there. HTTP/2 pseudo-headers become the
request line and Host (`:authority`).
"""

from __future__ import annotations

from collections.abc import Iterable

Headers = list[tuple[bytes, bytes]]

HOP_BY_HOP = frozenset({b"connection", b"keep-alive", b"te", b"transfer-encoding", b"upgrade",
                        b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
                        b"proxy-authentication-info", b"http2-settings"})
FORWARDING = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto",
                        b"x-forwarded-host", b"x-real-ip"})
# Answered by the proxy itself (100 Continue to the client), not passed on.
REQUEST_ONLY_HERE = frozenset({b"expect", b"host"})


def _named_by_connection(headers: Iterable[tuple[bytes, bytes]]) -> set[bytes]:
    named: set[bytes] = set()
    for name, value in headers:
        if name == b"connection":
            named.update(t.strip().lower() for t in value.split(b",") if t.strip())
    return named


def _drop(name: bytes, named: set[bytes]) -> bool:
    return name in HOP_BY_HOP or name in named or name.startswith(b"proxy-")


def request_headers(headers: Headers, *, authority: bytes, client: str, scheme: str,
                    has_body: bool) -> Headers:
    """The headers to send the application: the client's end-to-end fields (HTTP/2 cookie
    crumbs joined back into one field, RFC 9113 section 8.2.3), then Host and the forwarding
    fields. h11 adds the framing (Content-Length is kept if the client sent it)."""
    named = _named_by_connection(headers)
    out: Headers = [(b"host", authority)]
    cookies: list[bytes] = []
    for name, value in headers:
        if name[:1] == b":" or _drop(name, named) or name in FORWARDING or name in REQUEST_ONLY_HERE:
            continue
        if name == b"cookie":
            cookies.append(value)
            continue
        if name == b"content-length" and not has_body:
            continue
        out.append((name, value))
    if cookies:
        out.append((b"cookie", b"; ".join(cookies)))
    # A quoted-string (RFC 9110 section 5.6.4): a `"` or `\` of the client's own in its Host must
    # not end the value early, or it could write a `for=` of its choosing into the field.
    host = authority.decode("latin-1").replace("\\", "\\\\").replace('"', '\\"')
    node = f'"[{client}]"' if ":" in client else client
    out += [(b"x-forwarded-for", client.encode()), (b"x-forwarded-proto", scheme.encode()),
            (b"x-forwarded-host", authority),
            (b"forwarded", f'for={node};proto={scheme};host="{host}"'.encode())]
    return out


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The application's answer's fields as the client gets them, hop-by-hop ones removed.
    Content-Length stays (the body is passed on byte for byte); over HTTP/2 field names must be
    lower case, which h11 already gives."""
    pairs = list(headers)
    named = _named_by_connection(pairs)
    return [(n, v) for n, v in pairs if not _drop(n, named)]
