"""What to push, hint and preload with a page: the one place both protocols ask.

`Pusher.plan()` looks at a page answer and the facts of the connection and returns a `PushPlan`:
which resources to promise (HTTP/2 only), the `Link: rel=preload` headers for the final response,
whether to send them first in a `103 Early Hints`, and the updated push cookie. The protocol
adapters only carry the plan out; nothing here touches a socket or a protocol state machine.

Cache-aware push: a client that was pushed a resource gets a cookie holding a 24-bit hash of
(path, validator) per pushed resource, the newest 200 at most (800 base64 characters). A returning
client is not pushed what its cookie says it has; when a file changes its validator changes, the hash
no longer matches, and it is pushed again.
"""

from __future__ import annotations

import base64
import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Protocol

from ..config import Config, default_of
from ..site.filecache import FileEntry
from ..site.handler import Site
from ..site.paths import BadTarget, split_target
from .manifest import EMPTY, PushEntry, PushMap

log = logging.getLogger("h2serve")

# Request headers that shape a response, copied from the page's request into each promised one.
COPIED_HEADERS = (b"accept", b"accept-encoding", b"accept-language", b"user-agent", b"cache-control")
DIGEST_HASH_BYTES = 3
DIGEST_MAX_ENTRIES = 200
COOKIE_MAX_AGE = 30 * 24 * 3600
WARMED_PAGES = 256  # (page version, Accept-Encoding) whose map entries were made ready, newest kept


class HintLike(Protocol):
    """An application's preload (upstream/hints.py `Hint`): its Link value, and its path when it
    is same-origin and may be pushed."""

    @property
    def link(self) -> bytes: ...
    @property
    def path(self) -> str | None: ...
    @property
    def push(self) -> bool: ...


class PushDigest:
    """The set of (path, validator) a client was pushed, as stored in its cookie."""

    def __init__(self, hashes: Iterable[bytes] = ()) -> None:
        self._hashes: dict[bytes, None] = dict.fromkeys(hashes)  # ordered: oldest first

    @classmethod
    def from_cookies(cls, cookie_headers: Iterable[bytes], name: str) -> PushDigest:
        """Read the digest from the request's Cookie header(s); anything malformed counts as empty."""
        prefix = name.encode() + b"="
        for header in cookie_headers:
            for part in header.split(b";"):
                part = part.strip()
                if part.startswith(prefix):
                    return cls._decode(part[len(prefix):])
        return cls()

    @classmethod
    def _decode(cls, value: bytes) -> PushDigest:
        try:
            raw = base64.urlsafe_b64decode(value + b"=" * (-len(value) % 4))
        except ValueError:
            return cls()
        n = DIGEST_HASH_BYTES
        return cls(raw[i:i + n] for i in range(0, len(raw) - len(raw) % n, n))

    @staticmethod
    def key(path: str, validator: str) -> bytes:
        return hashlib.blake2b(f"{path}\0{validator}".encode(), digest_size=DIGEST_HASH_BYTES).digest()

    def __contains__(self, key: bytes) -> bool:
        return key in self._hashes

    def add(self, key: bytes) -> None:
        self._hashes.pop(key, None)
        self._hashes[key] = None
        while len(self._hashes) > DIGEST_MAX_ENTRIES:
            del self._hashes[next(iter(self._hashes))]

    def encode(self) -> bytes:
        return base64.urlsafe_b64encode(b"".join(self._hashes)).rstrip(b"=")


@dataclass(slots=True)
class Promise:
    """One push to make: the resource and the request headers of its PUSH_PROMISE."""

    entry: PushEntry
    file: FileEntry
    headers: list[tuple[bytes, bytes]]


@dataclass(slots=True)
class PushPlan:
    """What to do around one page answer."""

    promises: list[Promise] = field(default_factory=list)
    links: list[tuple[bytes, bytes]] = field(default_factory=list)  # Link headers: final answer and 103
    early_hints: bool = False
    set_cookie: bytes | None = None


@dataclass(frozen=True, slots=True)
class Client:
    """The facts of the request and connection that decide a plan."""

    protocol: str                              # "h2" or "http/1.1"
    scheme: str                                # "https" or "http"
    authority: bytes
    headers: list[tuple[bytes, bytes]]         # the page request's headers (names lower-case)
    push_slots: int = 0                        # pushes allowed now (0: client refuses, or no room)
    already_pushed: frozenset[str] | set[str] = frozenset()
    method: str = "GET"                        # HEAD gets GET's Link headers, nothing else


class Pusher:
    """Push settings and the current push map; `plan()` is called for every page answer.

    `from_config` builds it from a Config; the keyword defaults, for one built without a Config,
    are Config's own (`default_of`), so they cannot drift from what `--help` says."""

    def __init__(self, site: Site, push_map: PushMap = EMPTY, *, push: bool = default_of("push"),
                 preload_links: bool = default_of("preload_links"),
                 early_hints: str = default_of("early_hints"),
                 cookie_name: str | None = default_of("push_cookie") or None) -> None:
        self.site = site
        self.map = push_map
        self.push = push
        self.preload_links = preload_links
        self.early_hints = early_hints
        self.cookie_name = cookie_name  # None: no push cookie
        # Which map entries may be pushed and hinted for a request to a host (path, :authority):
        # the site rules keep out a path that redirects or needs credentials (proto/exchange.py).
        self.allow: Callable[[str, bytes], bool] | None = None
        self._warmed: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()

    @classmethod
    def from_config(cls, config: Config, site: Site, push_map: PushMap = EMPTY) -> Pusher:
        """The push settings `config` asks for (--push, --preload-links, --early-hints, --push-cookie,
        whose "" is no cookie), over `push_map`."""
        return cls(site, push_map, push=config.push, preload_links=config.preload_links,
                   early_hints=config.early_hints, cookie_name=config.push_cookie or None)

    def wants(self, page: FileEntry) -> bool:
        """Whether the map has anything for `page`: adapters ask before gathering what `plan`
        needs of the client, which costs more than most answers."""
        return bool(self.map.entries_for(page))

    def plan(self, page: FileEntry, client: Client, *, block: bool = True) -> PushPlan | None:
        """The plan for a 200 answer to a GET (or HEAD) of `page`, or None when the map has nothing
        for it. A HEAD answer carries the Link headers a GET would (RFC 9110 section 9.3.2) but
        gets no 103 and no pushes: nothing of the page is going to be used.

        With `block=False` the resources to promise are looked up from memory only: WouldBlock("io")
        if one is not loaded (nothing is changed by a plan that raises; ask again with block=True,
        in a worker thread)."""
        entries = self.map.entries_for(page)
        if entries and self.allow is not None:
            allow, authority = self.allow, client.authority
            entries = tuple(e for e in entries if allow(e.path, authority))
        if not entries:
            return None
        plan = PushPlan()
        full = client.method == "GET"
        if self.preload_links:
            plan.links = [(b"link", e.link) for e in entries if e.preload]
            plan.early_hints = full and bool(plan.links) and (self.early_hints == "all" or (
                self.early_hints == "h2" and client.protocol == "h2"))
        if (full and self.push and client.protocol == "h2" and client.push_slots > 0
                and self._promise(plan, entries, client, block) == 0):
            # Everything hinted is promised now or was pushed before: a 103 would tell the client
            # nothing, and cost it a header block to decode before the page's.
            plan.early_hints = False
        return plan

    def plan_hints(self, hints: Sequence[HintLike], client: Client, *,
                   block: bool = True) -> PushPlan | None:
        """The plan for an application's preloads (upstream/hints.py), as `plan` makes one for a
        page of the push map: the same-origin ones that the site's files answer are promised to
        an HTTP/2 client that takes pushes (push cookie and `nopush` honoured, the site rules'
        `allow` asked), and the 103 carries them all unless every one was promised. The final
        answer's Link headers are the application's own: `links` here are for the 103 only."""
        if not hints or client.method != "GET":
            return None
        plan = PushPlan(links=[(b"link", h.link) for h in hints])
        plan.early_hints = self.early_hints == "all" or (
            self.early_hints == "h2" and client.protocol == "h2")
        allow, authority = self.allow, client.authority
        entries = tuple(PushEntry(h.path, "", 0) for h in hints
                        if h.push and h.path is not None and self._is_file(h.path, block)
                        and (allow is None or allow(h.path, authority)))
        if (self.push and entries and client.protocol == "h2" and client.push_slots > 0
                and self._promise(plan, entries, client, block) == 0 and len(entries) == len(hints)):
            plan.early_hints = False
        return plan

    def warm(self, page: FileEntry, headers: Sequence[tuple[bytes, bytes]],
             submit: Callable[[str, Callable[[], None]], object]) -> None:
        """Have the page's map entries loaded and compressed before the client asks for them.

        A fresh server's first visitor asks for the page, then (a round trip later, from the 103
        or the HTML) for its stylesheet, which must first be read and compressed in a worker
        thread, and for its images, which are ready at once: the images' bytes then fill the
        transport, the kernel and the network's buffers before the stylesheet's answer exists,
        and the stylesheet waits behind them (Chromium through the relay at 2 Mbit/s: the hero
        page's first paint at 880-910 ms against 360-450 ms once warm). So on the page's answer,
        every entry is answered once in a worker thread (`submit("io", ...)`) with the page
        request's Accept-Encoding, which the browser's later requests share, filling the caches
        they will hit. Once per page version and Accept-Encoding (the newest WARMED_PAGES)."""
        accept = next((v for n, v in headers if n == b"accept-encoding"), b"")
        key = (page.path, page.etag, accept)
        if key in self._warmed:
            return
        self._warmed[key] = None
        if len(self._warmed) > WARMED_PAGES:
            self._warmed.popitem(last=False)
        request = [(b"accept-encoding", accept)] if accept else []
        for entry in self.map.entries_for(page):
            submit("io", partial(self._warm_one, entry.path, request))

    def _warm_one(self, path: str, request: list[tuple[bytes, bytes]]) -> None:
        try:
            response = self.site.respond("GET", path.encode(), request, block=True)
        except Exception:  # the request itself will meet (and log) whatever this met
            log.debug("warming %s failed", path, exc_info=True)
            return
        if response.body is not None:
            response.body.close()

    def _is_file(self, path: str, block: bool) -> bool:
        try:
            return self.site.lookup(split_target(path.encode()), block=block) is not None
        except BadTarget:
            return False

    def _promise(self, plan: PushPlan, entries: tuple[PushEntry, ...], client: Client,
                 block: bool = True) -> int:
        """Add the promises for `entries` within the client's push slots; how many entries the
        client still lacks (neither promised now, nor pushed before, nor in its push cookie)."""
        digest = self._digest(client)
        copied = [(n, v) for n, v in client.headers if n in COPIED_HEADERS]
        base = [(b":method", b"GET"), (b":scheme", client.scheme.encode()),
                (b":authority", client.authority)]
        pushed_now: list[bytes] = []
        lacking = 0
        for entry in entries:  # highest weight first
            if entry.path in client.already_pushed:
                continue
            file = self.site.lookup(split_target(entry.path.encode()), block=block)
            if file is None:
                continue  # removed since the map was loaded
            key = PushDigest.key(entry.path, file.etag)
            if digest is not None and key in digest:
                continue
            if len(plan.promises) >= client.push_slots:
                lacking += 1
                continue
            plan.promises.append(
                Promise(entry, file, [*base, (b":path", entry.path.encode()), *copied]))
            pushed_now.append(key)
        if digest is not None and pushed_now:
            for key in pushed_now:
                digest.add(key)
            plan.set_cookie = self._cookie(digest, secure=client.scheme == "https")
        return lacking

    def _digest(self, client: Client) -> PushDigest | None:
        if self.cookie_name is None:
            return None
        return PushDigest.from_cookies((v for n, v in client.headers if n == b"cookie"),
                                       self.cookie_name)

    def _cookie(self, digest: PushDigest, *, secure: bool) -> bytes:
        assert self.cookie_name is not None
        attrs = f"; Path=/; Max-Age={COOKIE_MAX_AGE}; HttpOnly; SameSite=Lax"
        return self.cookie_name.encode() + b"=" + digest.encode() + (
            attrs + ("; Secure" if secure else "")).encode()
