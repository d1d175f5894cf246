"""Site rules, applied around the file handler: redirects, basic auth, CORS, SPA fallback, headers.

`SiteRules.respond` is what the protocol-neutral request layer (proto/exchange.py) asks instead of
`Site.respond`, for every request and every pushed response, over HTTP/2 and HTTP/1.1 alike. In
the order nginx's phases and Caddy's directive order give them:

1. a CORS preflight from an allowed origin is answered 204 (browsers send preflights without
   credentials, so it must not need auth);
2. `[[redirect]]`: the first rule whose `from` matches answers with its status and `Location`
   (the query string kept), before anything is looked up or asked for a password;
3. `[[auth]]`: a path a rule covers needs credentials (401 otherwise), checked before the file is
   looked up, so a client without them learns nothing of what exists;
4. the file handler; a 404 to a GET or HEAD navigation is answered with the `fallback` page. Auth
   is checked once more against the URL of the file actually served (`/admin` serves
   `admin.html`, `/docs/` serves `docs/index.html`), so a rule on the file's own name holds
   whichever name reached it;
5. on the answer, whatever it is: `Cache-Control: private` if it needed credentials, HSTS (the
   other security headers come with the handler's answers), CORS headers, then every matching
   `[[headers]]` rule in order (later ones win).

With --upstream, `gate` is steps 1-3 for a request going to the application, and `proxied` step 5
for the application's answer, as nginx's `add_header` and Caddy's `header` treat a proxied answer:
the rules' headers go on, but a security header, HSTS or Access-Control-Allow-Origin the
application sent itself stands (it knows its pages: a frame it means to allow, its own CORS
policy), and is not sent twice.

Paths are matched decoded and normalised exactly as the handler looks them up (`split_target`), so
`/%61dmin/` or `//admin/` is `/admin/` to a rule as to the file system. A path that redirects or
needs auth is never pushed nor hinted: the push plan asks `pushable` (push/plan.py).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote, quote_from_bytes

from .auth import Guard
from .body import Headers, Response
from .coding import accepted
from .cors import Cors
from .paths import BadTarget, split_target

if TYPE_CHECKING:
    from ..config import Config
    from .handler import Site
    from .rulespec import SiteSpec

log = logging.getLogger("h2serve")

HSTS = (b"strict-transport-security", b"max-age=31536000")
ALLOW_ORIGIN = b"access-control-allow-origin"  # sent by the application: its CORS answer stands
# Request headers the rules read.
CONSULTED = frozenset({b"origin", b"access-control-request-method", b"access-control-request-headers",
                       b"authorization", b"sec-fetch-dest", b"accept"})
# Sec-Fetch-Dest values of a navigation: a top-level page or one in a frame.
NAVIGATIONS = frozenset({b"document", b"iframe", b"frame"})
PCHAR = "/!$&'()*+,;=:@~"  # kept as they are when a matched path is put into a Location
QUERY_SAFE = b"/?&=+:;,@!$'()*~%"


def compile_glob(pattern: str) -> re.Pattern[str]:
    """A path glob as a regular expression: `*` is any run of characters within one segment, and a
    `**` segment any number of segments, none included (`/static/**` matches `/static`,
    `/static/` and `/static/a/b.css`; `/a/**/b` matches `/a/b`)."""
    regex = ""
    for part in pattern.split("/")[1:]:
        if part == "**":
            regex += "(?:/.*)?"
        else:
            regex += "/" + "[^/]*".join(re.escape(p) for p in part.split("*"))
    return re.compile((regex or "/") + r"\Z", re.DOTALL)


def request_host(authority: bytes) -> str:
    """The host name of `:authority` or Host, lower case, without the port."""
    text = authority.decode("latin-1").strip().lower()
    if text.startswith("["):
        return text.split("]", 1)[0] + "]"
    return text.rpartition(":")[0] if ":" in text else text


@dataclass(slots=True)
class Request:
    """What the rules need to know of a request; `secure`: it came over TLS."""

    method: str
    target: bytes
    headers: Headers
    authority: bytes = b""
    client: str = "-"
    secure: bool = False


@dataclass(frozen=True, slots=True)
class _Redirect:
    exact: str | None   # the whole path, or
    prefix: str | None  # what it starts with (the `*` matches the rest)
    to: str
    status: int
    host: str | None


class SiteRules:
    """The rules of one site, compiled from its Config.

    With virtual hosts (`[[site]]`) each site has its own, made with its `spec`: the rules whose
    `host` is one of its names, or that have none; its fallback page; HSTS if its certificate (or
    the default one that serves it) was given, not made for development."""

    def __init__(self, config: Config, site: Site, spec: SiteSpec | None = None) -> None:
        self.site = site

        def mine(host: str | None) -> bool:
            return spec is None or host is None or host in spec.host

        def keep(host: str | None) -> str | None:
            return host if spec is None else None  # the site was chosen by its host already

        self.redirects = [
            _Redirect(None if r.source.endswith("*") else r.source,
                      r.source[:-1] if r.source.endswith("*") else None, r.to, r.status, keep(r.host))
            for r in config.redirect if mine(r.host)]
        self.header_rules = [(compile_glob(h.path), keep(h.host),
                              [(n.encode(), v.encode()) for n, v in h.set])
                             for h in config.headers if mine(h.host)]
        self.guards = [(compile_glob(a.path), keep(a.host), Guard(a)) for a in config.auth if mine(a.host)]
        self.cors = Cors(config.cors_origins) if config.cors_origins else None
        fallback = config.fallback if spec is None else spec.fallback
        self.fallback = (b"/" + quote(fallback).encode()) if fallback else None
        cert = config.cert if spec is None else spec.cert or config.cert
        self.hsts = config.security_headers and cert is not None
        self._pushable: dict[tuple[str, str], bool] = {}
        # Whether anything beyond the security headers applies: most sites have no rules, and
        # their requests should not pay for reading headers and paths no rule looks at.
        self.active = bool(self.redirects or self.header_rules or self.guards or self.cors
                           or self.fallback)

    @property
    def blocks_push(self) -> bool:
        """Whether any path could be kept from the push plan (a redirect or an auth rule)."""
        return bool(self.redirects or self.guards)

    # -- the answer --------------------------------------------------------------------------

    def respond(self, req: Request, *, block: bool = True) -> Response:
        """The answer to `req`, rules applied. `block=False`: as `Site.respond`, WouldBlock when a
        file is not in memory or a password needs a bcrypt check."""
        if not self.active:  # the security headers come with the handler's answer itself
            answer = self.site.respond(req.method, req.target, req.headers, block=block)
            if self.hsts and req.secure:
                answer.headers.append(HSTS)
            return answer
        request = _consulted(req.headers)
        path = _path(req.target)
        host = request_host(req.authority)
        response, guard, preflight = self._ahead(req, request, path, host, block)
        protected = guard is not None and response is None
        if response is None:
            response = self.site.respond(req.method, req.target, req.headers, block=block)
            if (self.fallback is not None and response.status == 404 and response.file is None
                    and req.method in ("GET", "HEAD") and _navigation(request)):
                _release(response)
                response = self.site.respond(req.method, self.fallback, req.headers, block=block)
            if self.guards and response.file is not None:
                second = self.guard_for(self.site.url_path(response.file), host)
                if second is not None and second is not guard:
                    try:
                        refused = self._check(second, req, request, path or "", block)
                    except BaseException:
                        _release(response)
                        raise
                    if refused is not None:
                        _release(response)
                        response = refused
                    protected = refused is None
        self._decorate(response.headers, req, request, path, host, protected, preflight)
        return response

    def gate(self, req: Request, *, block: bool = True) -> Response | None:
        """What the rules answer before a request goes to the application (--upstream): a CORS
        preflight, a redirect, or 401 for a path an `[[auth]]` rule covers without valid
        credentials, in `respond`'s order; None: forward it. `block=False`: WouldBlock while a
        password needs a bcrypt check."""
        if not self.active:
            return None
        request = _consulted(req.headers)
        path = _path(req.target)
        host = request_host(req.authority)
        response, _, preflight = self._ahead(req, request, path, host, block)
        if response is not None:
            self._decorate(response.headers, req, request, path, host, False, preflight)
        return response

    def _ahead(self, req: Request, request: dict[bytes, bytes], path: str | None, host: str,
               block: bool) -> tuple[Response | None, Guard | None, bool]:
        """What answers a request before its file or the application, in this order: a CORS
        preflight, a redirect, a 401 from the `[[auth]]` rule covering the path; with that rule
        (None: none covers it) and whether the answer is a preflight. Shared by `respond` and
        `gate` so the two keep one order."""
        if self.cors is not None:
            response = self.cors.preflight(req.method, request, self.site.server)
            if response is not None:
                return response, None, True
        if path is None:
            return None, None, False
        response = self._redirect(req, path, host)
        if response is not None or not self.guards:
            return response, None, False
        guard = self.guard_for(path, host)
        if guard is None:
            return None, None, False
        return self._check(guard, req, request, path, block), guard, False

    def proxied(self, req: Request, headers: Headers) -> None:
        """Step 5 on the application's answer to `req` (or the 502/504 given in its place):
        `headers` in place. What the application sent of the security headers, HSTS and CORS
        stands; the rest as for a file. Credentials were needed if an `[[auth]]` rule covers the
        path: the request got here past `gate` or `respond` checking them."""
        sent = frozenset(n for n, _ in headers)
        if not self.active:
            self._decorate(headers, req, {}, None, "", False, False, sent)
            return
        path = _path(req.target)
        host = request_host(req.authority)
        protected = self.guard_for(path, host) is not None
        self._decorate(headers, req, _consulted(req.headers), path, host, protected, False, sent)

    def _redirect(self, req: Request, path: str, host: str) -> Response | None:
        for rule in self.redirects:
            if rule.host is not None and rule.host != host:
                continue
            if rule.exact is not None:
                if path != rule.exact:
                    continue
                location = rule.to
            elif path.startswith(rule.prefix or ""):
                location = rule.to.replace("*", quote(path[len(rule.prefix or ""):], safe=PCHAR))
            else:
                continue
            _, sep, query = req.target.partition(b"?")
            if sep:
                location += ("&" if "?" in location else "?") + quote_from_bytes(query, safe=QUERY_SAFE)
            return self.site.error(rule.status, req.method, extra=[(b"location", location.encode())])
        return None

    def guard_for(self, path: str | None, host: str) -> Guard | None:
        """The `[[auth]]` rule covering `path` (the last that matches), or None."""
        if path is None:
            return None
        found = None
        for pattern, rule_host, guard in self.guards:
            if (rule_host is None or rule_host == host) and pattern.match(path):
                found = guard
        return found

    def _check(self, guard: Guard, req: Request, request: dict[bytes, bytes], path: str,
               block: bool) -> Response | None:
        """None if the request's credentials pass `guard`, else the 401 answer."""
        authorization = request.get(b"authorization")
        ok, user = guard.check(authorization, block=block)
        if ok:
            return None
        if authorization is not None:
            # The user name as given (repr: no control characters reach the log); never the password.
            log.warning("basic auth failed: user %r from %s for %s %s", user, req.client, req.method,
                        path)
        return self.site.error(401, req.method, extra=[(b"www-authenticate", guard.challenge)])

    def _decorate(self, headers: Headers, req: Request, request: dict[bytes, bytes],
                  path: str | None, host: str, protected: bool, preflight: bool,
                  sent: frozenset[bytes] | None = None) -> None:
        """Step 5 on an answer's `headers`. `sent`: the names of the headers the application
        sent, for a proxied answer (None: the site's own answer)."""
        if protected:
            _make_private(headers)
        if sent is not None:
            headers += [h for h in self.site.always if h[0] not in sent]
        elif preflight:
            headers += self.site.always  # the handler's answers have them, the preflight's not yet
        if self.hsts and req.secure and (sent is None or HSTS[0] not in sent):
            headers.append(HSTS)
        if self.cors is not None and not preflight and (sent is None or ALLOW_ORIGIN not in sent):
            self.cors.decorate(headers, request.get(b"origin"))
        if path is not None:
            for pattern, rule_host, ops in self.header_rules:
                if (rule_host is None or rule_host == host) and pattern.match(path):
                    for name, value in ops:
                        headers[:] = [(n, v) for n, v in headers if n != name]
                        if value:
                            headers.append((name, value))

    # -- push --------------------------------------------------------------------------------

    def pushable(self, path: str, authority: bytes) -> bool:
        """Whether a push map entry may be pushed and hinted: not if a request for it would be
        redirected or need credentials (a push carries none). Remembered per path and host."""
        host = request_host(authority)
        known = self._pushable.get((path, host))
        if known is None:
            decoded = _path(path.encode())
            known = decoded is not None and self.guard_for(decoded, host) is None and not any(
                (r.host is None or r.host == host)
                and (decoded == r.exact if r.exact is not None else decoded.startswith(r.prefix or ""))
                for r in self.redirects)
            if len(self._pushable) < 4096:
                self._pushable[(path, host)] = known
        return known


def _consulted(headers: Headers) -> dict[bytes, bytes]:
    out: dict[bytes, bytes] = {}
    for name, value in headers:
        if name in CONSULTED:
            out[name] = out[name] + b", " + value if name in out else value
    return out


def _path(target: bytes) -> str | None:
    """The decoded, normalised path of a target (`/a/b/` for `//a/%62/?q`), or None if the
    handler would refuse it (400)."""
    try:
        return "/" + "/".join(split_target(target))
    except BadTarget:
        return None


def _navigation(request: dict[bytes, bytes]) -> bool:
    """A browser navigation: Sec-Fetch-Dest says so, or, without it, Accept names text/html (not
    merely */*, which every fetch and curl sends)."""
    dest = request.get(b"sec-fetch-dest")
    if dest is not None:
        return dest.strip().lower() in NAVIGATIONS
    return accepted(request.get(b"accept")).get("text/html", 0.0) > 0


_PUBLIC = re.compile(r"(?:^|,)\s*public\s*(?=,|$)", re.IGNORECASE)


def _make_private(headers: Headers) -> None:
    """Cache-Control of an answer that needed credentials: `private` first, `public` dropped, the
    rest kept (`no-cache`, a max-age), so no shared cache stores it and browsers still revalidate.
    An application may send several Cache-Control fields: `public` goes from each."""
    out: Headers = []
    first = True
    for name, value in headers:
        if name == b"cache-control":
            rest = _PUBLIC.sub("", value.decode("latin-1")).strip(" ,")
            if first:
                rest = "private, " + rest if rest else "private"
                first = False
            if not rest:
                continue  # a further field that said only `public`
            value = rest.encode()
        out.append((name, value))
    if first:
        out.append((b"cache-control", b"private"))
    headers[:] = out


def _release(response: Response) -> None:
    if response.body is not None:
        response.body.close()
