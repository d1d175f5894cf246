"""Site rules as the TOML file (or embedding code) gives them, checked once at start-up.

`[[redirect]]`, `[[headers]]` and `[[auth]]` are arrays of tables, so they are not command-line
options: `Config` holds them as tuples of the frozen specs below, made from the tables by
`parse_rules`. Everything that can be wrong with a rule is found here, before a socket is bound,
and reported as one line naming the table, its number and the key (`[[redirect]] #2 status: ...`),
so that a typo never becomes a rule that silently matches nothing, or a header value that splits a
response. The matchers built from these specs are in `rules.py`; this module imports nothing of
h2serve, so `config.py` can hold the specs without an import cycle.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit


class RuleError(ValueError):
    """A rule that cannot work; config.py reports it as a ConfigError."""


REDIRECT_STATUSES = (301, 302, 303, 307, 308)
# Headers that describe the connection or the framing, not the resource (RFC 9110 section 7.6.1,
# RFC 9113 section 8.2.2): HTTP/2 forbids them outright, and setting them over HTTP/1.1 would lie
# about the message. The content-* ones are the server's own account of the bytes it sends.
FORBIDDEN_HEADERS = frozenset({
    "connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer",
    "content-length", "content-range", "content-encoding", "host"})
TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
# A field value we send: visible ASCII, spaces and tabs inside (RFC 9110 section 5.5, without
# obs-text: a value is text in the TOML file, and its bytes must not depend on an encoding guess).
FIELD_VALUE = re.compile(r"(?:[\x21-\x7e](?:[\x20\x21-\x7e\t]*[\x21-\x7e])?)?\Z")
ORIGIN = re.compile(r"https?://(?:[a-z0-9.-]+|\[[0-9a-f:.]+\])(?::[0-9]{1,5})?\Z")
REALM = re.compile(r"[\x20\x21\x23-\x5b\x5d-\x7e]+\Z")  # printable ASCII, no `"` or `\`
BCRYPT = re.compile(r"\$2[aby]\$[0-9]{2}\$[./A-Za-z0-9]{53}\Z")


@dataclass(frozen=True, slots=True)
class RedirectRule:
    """`[[redirect]]`: `source` is the TOML `from` (a path, or a prefix ending in `*`)."""

    source: str
    to: str
    status: int = 301
    host: str | None = None


@dataclass(frozen=True, slots=True)
class DictionaryRule:
    """`[[dictionary]]` (RFC 9842): answers for paths matching `match` carry `Use-As-Dictionary`,
    and later versions of them may be sent as deltas against earlier ones (site/dictionary.py).
    `match_dest`: the Sec-Fetch-Dest values it is for (none: any); `id`: the Dictionary-ID the
    client echoes (optional)."""

    match: str
    match_dest: tuple[str, ...] = ()
    id: str | None = None


@dataclass(frozen=True, slots=True)
class HeaderRule:
    """`[[headers]]`: header names (lower case) and values set on answers for `path` (a glob);
    an empty value removes the header."""

    path: str
    set: tuple[tuple[str, str], ...]
    host: str | None = None


@dataclass(frozen=True, slots=True)
class AuthRule:
    """`[[auth]]`: the users of `htpasswd` (name, bcrypt hash), read at start-up."""

    path: str
    htpasswd: str
    realm: str = "Restricted"
    host: str | None = None
    users: tuple[tuple[str, bytes], ...] = ()


@dataclass(frozen=True, slots=True)
class SiteSpec:
    """`[[site]]`: a virtual host, served for the names in `host` from `root`, with its own
    certificate (picked by SNI), push map and fallback page if given."""

    host: tuple[str, ...]
    root: str
    cert: str | None = None
    key: str | None = None
    push_manifest: str | None = None
    fallback: str | None = None


def parse_rules(kind: str, value: Any) -> tuple[Any, ...]:
    """The specs of `kind` ("redirect", "headers", "auth", "site") from a list of tables or of
    specs."""
    if isinstance(value, Mapping | str | bytes) or not isinstance(value, Iterable):
        raise RuleError(f"[[{kind}]]: expected an array of tables, not {value!r}")
    spec_type, parse = _PARSERS[kind]
    out = []
    for number, item in enumerate(value, 1):
        where = f"[[{kind}]] #{number}"
        if isinstance(item, spec_type):
            item = _as_table(item)
        if not isinstance(item, Mapping):
            raise RuleError(f"{where}: expected a table, not {item!r}")
        item = {str(k).replace("_", "-"): v for k, v in item.items()}  # as top-level options allow
        unknown = [k for k in item if k not in KEYS[kind]]
        if unknown:  # first: a misspelt key is the fault, not the key it leaves missing
            raise RuleError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(KEYS[kind])})")
        out.append(parse(where, dict(item)))
    return tuple(out)


def _as_table(spec: Any) -> dict[str, Any]:
    """A spec back as its table, so that specs given by embedding code are checked too."""
    if isinstance(spec, RedirectRule):
        return {"from": spec.source, "to": spec.to, "status": spec.status, "host": spec.host}
    if isinstance(spec, HeaderRule):
        return {"path": spec.path, "set": dict(spec.set), "host": spec.host}
    if isinstance(spec, SiteSpec):
        return {"host": list(spec.host), "root": spec.root, "cert": spec.cert, "key": spec.key,
                "push-manifest": spec.push_manifest, "fallback": spec.fallback}
    if isinstance(spec, AuthRule):
        return {"path": spec.path, "htpasswd": spec.htpasswd, "realm": spec.realm, "host": spec.host}
    if isinstance(spec, DictionaryRule):
        return {"match": spec.match, "match-dest": list(spec.match_dest), "id": spec.id}
    raise RuleError(f"not a rule: {spec!r}")


def _take(where: str, table: dict[str, Any], key: str, kind: type, required: bool = True) -> Any:
    value = table.pop(key, None)
    if value is None:
        if required:
            raise RuleError(f"{where}: {key} is missing")
        return None
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise RuleError(f"{where} {key}: expected a {kind.__name__}, not {value!r}")
    return value


def _done(where: str, table: dict[str, Any]) -> None:
    if table:
        raise RuleError(f"{where}: unknown key {next(iter(table))!r}")


def _host(where: str, table: dict[str, Any]) -> str | None:
    host = _take(where, table, "host", str, required=False)
    if host is not None and not re.fullmatch(r"[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]", host):
        raise RuleError(f"{where} host: {host!r} is not a host name")
    return host.lower() if host is not None else None


def check_glob(where: str, pattern: str) -> str:
    """A path glob: starts with `/`, no query, fragment or control characters."""
    if not pattern.startswith("/"):
        raise RuleError(f"{where} path: {pattern!r} must start with /")
    if any(c in pattern for c in "?#") or any(ord(c) < 0x20 or ord(c) == 0x7F for c in pattern):
        raise RuleError(f"{where} path: {pattern!r} may hold only a path (no ?, #, control characters)")
    return pattern


def _redirect(where: str, table: dict[str, Any]) -> RedirectRule:
    source = _take(where, table, "from", str)
    to = _take(where, table, "to", str)
    status = _take(where, table, "status", int, required=False) or 301
    host = _host(where, table)
    _done(where, table)
    if not source.startswith("/") or "*" in source[:-1] or "?" in source or "#" in source:
        raise RuleError(f"{where} from: {source!r} must be a path, or a prefix ending in * "
                        f"(e.g. \"/blog/*\")")
    if to.count("*") > 1 or not FIELD_VALUE.match(to) or " " in to or "\t" in to:
        raise RuleError(f"{where} to: {to!r} must be a path or URL without spaces or control "
                        f"characters, with at most one *")
    if "*" in to and not source.endswith("*"):
        raise RuleError(f"{where} to: {to!r} has a * but from {source!r} has none to fill it")
    if not to.startswith("/") or to.startswith("//"):
        parts = urlsplit(to)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise RuleError(f"{where} to: {to!r} must start with / or be an absolute http(s) URL")
    if status not in REDIRECT_STATUSES:
        raise RuleError(f"{where} status: {status} is not one of "
                        f"{', '.join(map(str, REDIRECT_STATUSES))}")
    if to.startswith("/") and not to.startswith("//"):
        target = to.split("?", 1)[0]
        prefix = source[:-1] if source.endswith("*") else None
        if target == source or (prefix is not None and target.replace("*", "x").startswith(prefix)):
            raise RuleError(f"{where} to: {to!r} matches its own from {source!r} again (a redirect loop)")
    return RedirectRule(source, to, status, host)


def check_header(where: str, name: str, value: str) -> tuple[str, str]:
    """A header a rule sets: a token name, not connection-specific or framing, not a pseudo-header;
    a value without CR, LF, NUL or other control characters."""
    if name.startswith(":"):
        raise RuleError(f"{where} set: {name!r} is a pseudo-header; rules set only header fields")
    if not TOKEN.match(name):
        raise RuleError(f"{where} set: {name!r} is not a valid header name")
    if name.lower() in FORBIDDEN_HEADERS:
        raise RuleError(f"{where} set: {name!r} is connection-specific or framing, set by the "
                        f"server only")
    if not isinstance(value, str):
        raise RuleError(f"{where} set: the value of {name!r} must be a string, not {value!r}")
    if not FIELD_VALUE.match(value):
        raise RuleError(f"{where} set: the value of {name!r} holds CR, LF or another control or "
                        f"non-ASCII character, or leading or trailing spaces: {value!r}")
    return name.lower(), value


def _headers(where: str, table: dict[str, Any]) -> HeaderRule:
    path = check_glob(where, _take(where, table, "path", str))
    values = _take(where, table, "set", dict)
    host = _host(where, table)
    _done(where, table)
    if not values:
        raise RuleError(f"{where} set: name at least one header")
    pairs = [check_header(where, name, value) for name, value in values.items()]
    names = [n for n, _ in pairs]
    if len(set(names)) != len(names):
        raise RuleError(f"{where} set: a header is named twice (names are case-insensitive)")
    return HeaderRule(path, tuple(pairs), host)


def _auth(where: str, table: dict[str, Any]) -> AuthRule:
    path = check_glob(where, _take(where, table, "path", str))
    htpasswd = _take(where, table, "htpasswd", str)
    realm = _take(where, table, "realm", str, required=False) or "Restricted"
    host = _host(where, table)
    _done(where, table)
    if not REALM.match(realm):
        raise RuleError(f"{where} realm: {realm!r} must be printable ASCII without \" or \\")
    return AuthRule(path, htpasswd, realm, host, read_htpasswd(where, htpasswd))


def read_htpasswd(where: str, path: str) -> tuple[tuple[str, bytes], ...]:
    """The users of an Apache htpasswd file; only bcrypt entries (`htpasswd -B`) are accepted:
    MD5-crypt ($apr1$), SHA-1 ({SHA}), crypt(3) and plain text are refused, naming the line."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise RuleError(f"{where} htpasswd: {path}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise RuleError(f"{where} htpasswd: {path} is not UTF-8 text") from None
    users: dict[str, bytes] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        user, sep, hashed = line.partition(":")
        hashed = hashed.strip()
        if not sep or not user:
            raise RuleError(f"{where} htpasswd: {path} line {number}: expected user:hash")
        if not BCRYPT.match(hashed):
            kind = ("MD5 ($apr1$)" if hashed.startswith("$apr1$") else
                    "SHA-1 ({SHA})" if hashed.startswith("{SHA}") else "a non-bcrypt")
            raise RuleError(f"{where} htpasswd: {path} line {number}: user {user!r} has {kind} hash; "
                            f"only bcrypt is accepted (htpasswd -B)")
        if user in users:
            raise RuleError(f"{where} htpasswd: {path} line {number}: user {user!r} appears twice")
        users[user] = hashed.encode()
    if not users:
        raise RuleError(f"{where} htpasswd: {path} has no users")
    try:
        import bcrypt  # noqa: F401  (the extra that checks these hashes)
    except ImportError:
        raise RuleError(f"{where}: bcrypt is not installed (pip install 'h2serve[auth]')") from None
    return tuple(users.items())


# The URL patterns `[[dictionary]] match` may use: a path, `*` matching any run of characters (as
# in URLPattern, slashes included). URLPattern's other syntax (`:name`, groups, `?`, `+`, escapes)
# and absolute URLs are refused rather than half understood.
DICTIONARY_MATCH = re.compile(r"/[A-Za-z0-9._~!$&'*,;=@%/-]*\Z")
# Fetch destinations (the Sec-Fetch-Dest values) a `match-dest` may name.
DESTINATIONS = frozenset({
    "audio", "audioworklet", "document", "embed", "font", "frame", "iframe", "image", "json",
    "manifest", "object", "paintworklet", "report", "script", "serviceworker", "sharedworker",
    "style", "track", "video", "webidentity", "worker", "xslt"})
DICTIONARY_ID = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,1024}\Z")  # sf-string, no " or \


def _dictionary(where: str, table: dict[str, Any]) -> DictionaryRule:
    match = _take(where, table, "match", str)
    dest = _take(where, table, "match-dest", list, required=False) or []
    ident = _take(where, table, "id", str, required=False)
    _done(where, table)
    if not DICTIONARY_MATCH.match(match) or "**" in match:
        raise RuleError(f"{where} match: {match!r} must be a path pattern starting with /, with * "
                        f"as the only wildcard (e.g. \"/static/app.*.js\"); URLPattern's :name, "
                        f"groups, ? and + are not supported")
    for value in dest:
        if not isinstance(value, str) or value not in DESTINATIONS:
            raise RuleError(f"{where} match-dest: {value!r} is not a fetch destination "
                            f"(script, style, document, ...)")
    if ident is not None and not DICTIONARY_ID.match(ident):
        raise RuleError(f"{where} id: {ident!r} must be 1 to 1024 printable ASCII characters "
                        f"without \" or \\")
    try:
        import zstandard  # noqa: F401  (the extra that makes dcz deltas)
    except ImportError:
        raise RuleError(f"{where}: zstandard is not installed (pip install 'h2serve[zstd]')") from None
    return DictionaryRule(match, tuple(dest), ident)


HOST_NAME = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)*[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\Z")


def _site(where: str, table: dict[str, Any]) -> SiteSpec:
    hosts = _take(where, table, "host", list)
    root = _take(where, table, "root", str)
    cert = _take(where, table, "cert", str, required=False)
    key = _take(where, table, "key", str, required=False)
    manifest = _take(where, table, "push-manifest", str, required=False)
    fallback = _take(where, table, "fallback", str, required=False)
    _done(where, table)
    if not hosts:
        raise RuleError(f"{where} host: name at least one host")
    names = []
    for host in hosts:
        if not isinstance(host, str) or not HOST_NAME.match(host.lower()):
            raise RuleError(f"{where} host: {host!r} is not a host name (no port, no scheme)")
        names.append(host.lower())
    if (cert is None) != (key is None):
        raise RuleError(f"{where}: cert and key go together")
    if fallback is not None:
        try:
            fallback = check_fallback(fallback)
        except RuleError as e:
            raise RuleError(f"{where} fallback: {e}") from None
    return SiteSpec(tuple(names), root, cert, key, manifest, fallback)


def check_origin(origin: str) -> str:
    """A `cors-origins` entry: `*`, or an origin as browsers send it (scheme://host[:port], lower
    case, no path: `https://app.example.com/` is a common slip that would match nothing)."""
    if origin == "*":
        return origin
    if origin != origin.lower() or not ORIGIN.match(origin):
        raise RuleError(f"--cors-origin: {origin!r} is not an origin (e.g. https://app.example.com: "
                        f"scheme://host[:port] in lower case, no path or trailing slash)")
    return origin


def check_fallback(page: str) -> str:
    """`fallback`: a file name relative to the site root (`index.html`, `app/shell.html`)."""
    name = page.lstrip("/")
    parts = name.split("/")
    if not name or any(p in ("", ".", "..") for p in parts) or any(ord(c) < 0x20 for c in name):
        raise RuleError(f"--fallback: {page!r} must name a file in the site, e.g. index.html")
    return name


KEYS = {
    "redirect": ("from", "to", "status", "host"),
    "headers": ("path", "set", "host"),
    "auth": ("path", "htpasswd", "realm", "host"),
    "site": ("host", "root", "cert", "key", "push-manifest", "fallback"),
    "dictionary": ("match", "match-dest", "id"),
}
_PARSERS: dict[str, tuple[type, Callable[[str, dict[str, Any]], Any]]] = {
    "redirect": (RedirectRule, _redirect),
    "headers": (HeaderRule, _headers),
    "auth": (AuthRule, _auth),
    "site": (SiteSpec, _site),
    "dictionary": (DictionaryRule, _dictionary),
}
