"""The application's `Link: rel=preload` headers as hints and pushes, and the memory of them.

The fields are parsed with `weblinking` (RFC 8288, its Appendix B algorithm: several links per
field, several fields, quoted values with commas, a trailing comma as Flask-Firehose writes).
A preload whose target's host is the request's own authority is same-origin whatever its scheme
(flask-http2-push writes `http://` URLs behind a TLS front): the hint names it by its path, and it
may be pushed. Any other preload is passed on in the 103 as the application wrote it, never pushed.

`LearnedHints` remembers, per site and GET path, the preloads of that path's last 200 from the
application, in a bounded LRU: the next request for the path gets them at once, before the
application has answered. A later answer with other Links replaces them; one with none forgets.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import weblinking

LEARNED_PATHS = 1024     # paths remembered per worker
HINTS_PER_PAGE = 64      # preloads taken from one answer


@dataclass(frozen=True, slots=True)
class Hint:
    """One preload: `path` when same-origin (named and maybe pushed by it), the Link value for
    the 103, and whether it may be pushed (`nopush` says not)."""

    link: bytes
    path: str | None = None
    push: bool = True
    kind: str = ""  # the `as` value


def preloads(values: list[bytes], authority: bytes, target: bytes) -> tuple[Hint, ...]:
    """The preloads among Link field `values` of an answer to a request for `target` on
    `authority`, in order, each once."""
    if not values:
        return ()
    try:
        links = weblinking.parse([v.decode("latin-1") for v in values])
    except (weblinking.LinkError, TypeError):
        return ()
    own = authority.decode("latin-1").lower()
    base = "http://" + own + target.decode("latin-1")
    out: dict[str, Hint] = {}
    for link in links:
        if not link.has_rel("preload") or len(out) >= HINTS_PER_PAGE:
            continue
        try:
            absolute = urljoin(base, link.uri)
            parts = urlsplit(absolute)
        except ValueError:
            continue
        kind = link.get("as") or ""
        if parts.netloc.lower() == own and parts.scheme in ("http", "https"):
            path = (parts.path or "/") + ("?" + parts.query if parts.query else "")
            pairs = [(n, v) for n, v in link.pairs if n not in ("anchor",)]
            try:
                value = weblinking.build([weblinking.Link(path, pairs)])
            except weblinking.LinkError:
                continue
            hint = Hint(value.encode("latin-1"), path, link.get("nopush") is None, kind)
        else:
            try:
                value = weblinking.build([link])
            except weblinking.LinkError:
                continue
            hint = Hint(value.encode("latin-1"), None, False, kind)
        out.setdefault(hint.path or absolute, hint)
    return tuple(out.values())


class LearnedHints:
    """The preloads of each path's last 200 to a GET, per site (authority), newest kept."""

    def __init__(self, size: int = LEARNED_PATHS) -> None:
        self.size = size
        self._paths: OrderedDict[tuple[bytes, bytes], tuple[Hint, ...]] = OrderedDict()

    def get(self, authority: bytes, target: bytes) -> tuple[Hint, ...]:
        key = (authority.lower(), target)
        found = self._paths.get(key)
        if found is None:
            return ()
        self._paths.move_to_end(key)
        return found

    def learn(self, authority: bytes, target: bytes, hints: tuple[Hint, ...]) -> None:
        """What the application's 200 said: remembered, replacing what was; none forgets."""
        key = (authority.lower(), target)
        if not hints:
            self._paths.pop(key, None)
            return
        self._paths[key] = hints
        self._paths.move_to_end(key)
        while len(self._paths) > self.size:
            self._paths.popitem(last=False)

    def __len__(self) -> int:
        return len(self._paths)
