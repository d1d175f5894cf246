"""Every option of the server, declared once.

`Config` is the single source of truth: the command line (`cli.py`) is generated from its fields, a
TOML file (`--config`) is read into it, and embedding code builds one directly. Each field carries its
help text and its `--help` section in `metadata`, so adding an option is one edit here and nothing
else. The subcommands (`h2serve cert`, `h2serve manifest`) and the components built from a Config
(`Policy`, `Pusher`) take their defaults from these fields too (`default_of`), never a copy.

A `Config` is immutable: it is checked once, when it is made, and every part of the server may keep
it without a copy. List options are tuples (lists given by embedding code, TOML or the command line
are turned into tuples); a variant is `dataclasses.replace(config, name=value)`, checked anew.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .options import option
from .site.rulespec import (
    AuthRule,
    DictionaryRule,
    HeaderRule,
    RedirectRule,
    RuleError,
    SiteSpec,
    check_fallback,
    check_origin,
    parse_rules,
)


class ConfigError(Exception):
    """A setting that cannot work; the message says which and what to fix."""


ALPN_PROTOCOLS = ("h2", "http/1.1")
LOG_LEVELS = ("debug", "info", "warning", "error")
EARLY_HINTS = ("off", "h2", "all")
EVENT_LOOPS = ("auto", "asyncio", "uvloop")
ACCESS_LOG_FORMATS = ("combined", "json")
ON_OFF = ("on", "off")
FD_PREFIX = "fd://"  # --bind fd://N: a listening socket inherited (systemd socket activation)
MAX_WORKERS = 1024  # a typo must not fork thousands of processes


@dataclass(frozen=True)
class Config:
    """Settings of one server; see `--help` for what each does."""

    bind: tuple[str, ...] = option(
        ("localhost:8443",), "address to serve TLS on (repeatable); fd://N serves a listening socket passed "
        "by systemd socket activation", metavar="HOST:PORT", group="TLS")
    h2c_bind: tuple[str, ...] = option(
        (), "address to serve cleartext HTTP/2 (prior knowledge) and HTTP/1.1 on, for use "
        "behind a proxy (repeatable)", metavar="HOST:PORT", group="HTTP/2")
    cert: str | None = option(
        None, "TLS certificate chain (PEM); without --cert/--key a development certificate "
        "is made under --certs-dir", metavar="PEM", group="TLS")
    key: str | None = option(None, "private key of --cert (PEM)", metavar="PEM", group="TLS")
    certs_dir: str = option(
        "certs", "where development certificates are kept", metavar="DIR", group="TLS")
    alpn: tuple[str, ...] = option(
        ALPN_PROTOCOLS, "protocols offered by ALPN, in order of preference",
        metavar="LIST", list_sep=",", group="TLS")
    root: str | None = option(
        None, "serve this one folder as the whole site (/ is DIR/index.html); "
        "replaces --templates and --static", metavar="DIR", group="site")
    templates: str = option("templates", "folder of pages: / and /NAME", metavar="DIR", group="site")
    static: str = option("static", "folder of assets served under /static/", metavar="DIR", group="site")
    log_level: str = option(
        "info", "server log level: " + ", ".join(LOG_LEVELS), metavar="LEVEL", group="logging")
    access_log: str = option(
        "-", "access log (see --access-log-format): a file, '-' for standard output, 'off' for none",
        metavar="PATH", group="logging")
    graceful_timeout: float = option(
        10.0, "seconds in-flight responses get to finish on SIGINT/SIGTERM", metavar="SECONDS",
        group="processes")
    handshake_timeout: float = option(
        10.0, "seconds a client gets to complete the TLS handshake", metavar="SECONDS", group="limits")
    idle_timeout: float = option(
        60.0, "seconds a connection may stay idle between requests (HTTP/2: then GOAWAY)",
        metavar="SECONDS", group="limits")
    header_timeout: float = option(
        10.0, "seconds an HTTP/1.1 client gets to send a whole request head (against slowloris)",
        metavar="SECONDS", group="limits")
    send_timeout: float = option(
        30.0, "seconds a response may make no progress (a client not reading, a zero window) "
        "before it is cut off", metavar="SECONDS", group="limits")
    max_connections: int = option(
        10000, "connections at once; beyond it new clients wait until one closes", metavar="N",
        group="limits")
    max_concurrent_streams: int = option(
        100, "HTTP/2 streams a client may open at once (SETTINGS_MAX_CONCURRENT_STREAMS)",
        metavar="N", group="HTTP/2")
    initial_window_size: int = option(
        65535, "HTTP/2 receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE)", metavar="BYTES",
        group="HTTP/2")
    priorities: str = option(
        "on", "send responses in the order the client's RFC 9218 priorities ask for (urgency, "
        "incremental), or off: round-robin", metavar="on|off", group="HTTP/2")
    max_header_list_size: int = option(
        32768, "largest request header block accepted (SETTINGS_MAX_HEADER_LIST_SIZE, and "
        "the HTTP/1.1 header limit)", metavar="BYTES", group="limits")
    server_name: str = option(
        "h2serve", "value of the Server response header", metavar="TEXT", group="site")
    list_dirs: bool = option(False, "list the files of a folder that has no index.html", group="site")
    serve_dotfiles: bool = option(
        False, "serve files and folders whose names start with a dot (/.well-known/ always is)",
        group="site")
    html_cache_control: str = option(
        "no-cache", "Cache-Control of HTML pages", metavar="VALUE", group="caching")
    static_cache_control: str = option(
        "public, max-age=3600", "Cache-Control of other files", metavar="VALUE", group="caching")
    immutable_cache_control: str = option(
        "public, max-age=31536000, immutable",
        "Cache-Control of files with a content hash in their name (app.3f9a1c2e.js)", metavar="VALUE",
        group="caching")
    push: bool = option(
        True, "push the push map's resources to HTTP/2 clients that allow push", group="push")
    push_manifest: str | None = option(
        None, "the push map (default: push_manifest.json in --root, else beside --templates, "
        "if it exists)", metavar="JSON", group="push")
    push_all_pages: bool = option(
        False, "push a flat push map with every HTML page, not only the index page", group="push")
    auto_push: bool = option(
        False, "derive the push map from the pages' HTML (stylesheets, scripts, preloads, fonts, "
        "images) instead of reading a manifest", group="push")
    push_cookie: str = option(
        "h2push", "cookie remembering what a client was pushed, so it is not pushed again",
        metavar="NAME", off_flag=True, group="push")
    preload_links: bool = option(
        True, "send Link: rel=preload headers for the push map's resources with each page",
        group="push")
    early_hints: str = option(
        "h2", "send a 103 Early Hints with the preload links before the page: off, h2, or all "
        "(all adds HTTP/1.1, where old clients may choke)", metavar="WHEN", group="push")
    reload: bool = option(
        False, "re-read the push map when it changes (SIGHUP always re-reads it)", group="push")
    fallback: str | None = option(
        None, "single-page apps: answer a GET or HEAD navigation (Sec-Fetch-Dest: document, or an "
        "Accept naming text/html) for a path with no file with this page of the site, status 200; "
        "other requests for missing paths still get 404", metavar="PAGE", group="rules")
    cors_origins: tuple[str, ...] = option(
        (), "origin allowed to read answers cross-origin (CORS), e.g. https://app.example.com, or * "
        "(repeatable); preflights from it are answered 204", metavar="ORIGIN", flag="--cors-origin",
        group="rules")
    security_headers: bool = option(
        True, "send X-Content-Type-Options, Referrer-Policy and X-Frame-Options with every answer, "
        "and Strict-Transport-Security over TLS with a --cert certificate", group="rules")
    site: tuple[SiteSpec, ...] = option(
        (), "[[site]] tables (virtual hosts): host, root, cert, key, push-manifest, fallback",
        group="site", table=True)
    redirect: tuple[RedirectRule, ...] = option(
        (), "[[redirect]] tables: from, to, status", group="rules", table=True)
    headers: tuple[HeaderRule, ...] = option(
        (), "[[headers]] tables: path, set", group="rules", table=True)
    auth: tuple[AuthRule, ...] = option(
        (), "[[auth]] tables: path, htpasswd, realm", group="rules", table=True)
    precompress_dir: str | None = option(
        None, "keep brotli quality 11 and zstd level 19 encodings of compressible files here, made "
        "once per file version in the background, and the compression dictionaries served; off "
        "when not given", metavar="DIR", group="compression")
    precompress_size: int = option(
        256, "MiB of disk --precompress-dir may fill; the least recently used go first",
        metavar="MIB", group="compression")
    dictionary: tuple[DictionaryRule, ...] = option(
        (), "[[dictionary]] tables (RFC 9842): match, match-dest, id", group="compression", table=True)
    workers: int | str = option(
        1, "worker processes serving the same sockets: a number, or auto for one per usable CPU; "
        "above 1 a supervisor binds the sockets, starts the workers and restarts any that dies",
        metavar="N|auto", group="processes")
    loop: str = option(
        "auto", "event loop: auto (uvloop when installed), asyncio, or uvloop", metavar="LOOP",
        group="processes")
    upstream: str | None = option(
        None, "forward every request the site's files do not answer (and every method but GET and "
        "HEAD) to this application over HTTP/1.1: http://HOST:PORT or unix:/path/to.sock",
        metavar="URL", group="upstream")
    upstream_connect_timeout: float = option(
        5.0, "seconds to connect to --upstream before answering 504", metavar="SECONDS",
        group="upstream")
    upstream_timeout: float = option(
        60.0, "seconds --upstream may take to begin its answer (and between reads of its body) "
        "before the client gets 504", metavar="SECONDS", group="upstream")
    upstream_idle_timeout: float = option(
        30.0, "seconds an idle keep-alive connection to --upstream is kept", metavar="SECONDS",
        group="upstream")
    upstream_connections: int = option(
        32, "connections to --upstream per worker at most; further requests wait for one",
        metavar="N", group="upstream")
    learn_hints: str = option(
        "on", "remember the preload Links of each path's last 200 from --upstream and send them "
        "(103 Early Hints, pushes) at once on the next request for it: on or off",
        metavar="on|off", group="upstream")
    max_body_size: int = option(
        64 * 1024 * 1024, "largest request body forwarded to --upstream; larger ones get 413",
        metavar="BYTES", group="limits")
    access_log_format: str = option(
        "combined", "access log lines: combined (Apache/nginx), or json (one object per line)",
        metavar="combined|json", group="logging")
    metrics_bind: str | None = option(
        None, "plain-HTTP address for GET /metrics (Prometheus text format) and GET /healthz "
        "(200 while serving, 503 once stopping); keep it private (off by default)",
        metavar="HOST:PORT", group="operations")

    def __post_init__(self) -> None:
        """Normalise (lists to tuples, "4" workers to 4), then check; after this nothing changes."""
        for name, value in _normalised(self):
            object.__setattr__(self, name, value)
        self.validate()

    def validate(self) -> None:
        """Reject settings that cannot work, naming the option and the fix."""
        for proto in self.alpn:
            if proto not in ALPN_PROTOCOLS:
                raise ConfigError(f"--alpn: unknown protocol {proto!r} (use h2 and/or http/1.1)")
        if not self.alpn:
            raise ConfigError("--alpn: name at least one of h2, http/1.1")
        if self.log_level not in LOG_LEVELS:
            raise ConfigError(f"--log-level: {self.log_level!r} is not one of {', '.join(LOG_LEVELS)}")
        if self.early_hints not in EARLY_HINTS:
            raise ConfigError(f"--early-hints: {self.early_hints!r} is not one of {', '.join(EARLY_HINTS)}")
        if self.loop not in EVENT_LOOPS:
            raise ConfigError(f"--loop: {self.loop!r} is not one of {', '.join(EVENT_LOOPS)}")
        if self.priorities not in ON_OFF:
            raise ConfigError(f"--priorities: {self.priorities!r} is not on or off")
        parse_workers(self.workers)
        if self.precompress_dir is not None and not _importable("brotli", "zstandard"):
            raise ConfigError("--precompress-dir: neither brotli nor zstandard is installed, so there is "
                              "nothing to precompress (pip install 'h2serve[brotli,zstd]')")
        if self.precompress_size < 1:
            raise ConfigError("--precompress-size must be at least 1 (MiB)")
        if self.precompress_dir is not None and os.path.exists(self.precompress_dir) \
                and not os.path.isdir(self.precompress_dir):
            raise ConfigError(f"--precompress-dir {self.precompress_dir}: not a folder")
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--cert and --key go together: give both, or neither for a dev certificate")
        for flag, path in (("--cert", self.cert), ("--key", self.key)):
            if path is not None and not os.path.exists(path):
                raise ConfigError(f"{flag} {path}: no such file")
        if not self.bind and not self.h2c_bind:
            raise ConfigError("nothing to serve on: give --bind or --h2c-bind")
        for addr in [*self.bind, *self.h2c_bind]:
            if not addr.startswith(FD_PREFIX):  # fd://N (socket activation): net/activation.py
                parse_address(addr)
            elif not addr[len(FD_PREFIX):].isdigit():
                raise ConfigError(f"bad address {addr!r}: fd:// takes a file descriptor number, "
                                  "e.g. fd://3 (the first socket systemd passes)")
        if self.access_log_format not in ACCESS_LOG_FORMATS:
            raise ConfigError(f"--access-log-format: {self.access_log_format!r} is not combined or json")
        if self.metrics_bind is not None:
            parse_address(self.metrics_bind)
        if not 1 <= self.max_concurrent_streams <= 2**31 - 1:
            raise ConfigError("--max-concurrent-streams must be between 1 and 2147483647")
        if not 1 <= self.initial_window_size <= 2**31 - 1:
            raise ConfigError("--initial-window-size must be between 1 and 2147483647")
        if self.max_header_list_size < 1024:
            raise ConfigError("--max-header-list-size must be at least 1024")
        if self.max_connections < 1:
            raise ConfigError("--max-connections must be at least 1")
        if min(self.idle_timeout, self.header_timeout, self.send_timeout) <= 0:
            raise ConfigError("timeouts must be positive numbers of seconds")
        if self.graceful_timeout < 0 or self.handshake_timeout <= 0:
            raise ConfigError("timeouts must be positive numbers of seconds")
        self._validate_upstream()
        self._validate_rules()

    def _validate_upstream(self) -> None:
        """--upstream and its limits (the URL's form is checked by upstream/pool.py's parser)."""
        if self.upstream is not None:
            from .upstream.target import UpstreamError, parse_upstream
            try:
                parse_upstream(self.upstream)
            except UpstreamError as e:
                raise ConfigError(f"--upstream {self.upstream}: {e}") from None
        if min(self.upstream_connect_timeout, self.upstream_timeout, self.upstream_idle_timeout) <= 0:
            raise ConfigError("--upstream-*-timeout: timeouts must be positive numbers of seconds")
        if self.upstream_connections < 1:
            raise ConfigError("--upstream-connections must be at least 1")
        if self.learn_hints not in ON_OFF:
            raise ConfigError(f"--learn-hints: {self.learn_hints!r} is not on or off")
        if self.max_body_size < 0:
            raise ConfigError("--max-body-size must be 0 or more bytes")

    def _validate_rules(self) -> None:
        """The site rules' checks that need more than one field: the fallback page must exist."""
        if self.fallback is not None:
            base = Path(self.root if self.root is not None else self.templates)
            page = base / self.fallback
            if base.is_dir() and not page.is_file():
                raise ConfigError(f"--fallback {self.fallback}: no such file in {base}")
        self._validate_sites()

    def _validate_sites(self) -> None:
        """`[[site]]`: each root a folder, none inside another (their files share one cache, keyed
        by path), each name served by one site, each file there; a rule's `host` names a site's."""
        owner: dict[str, int] = {}
        roots: list[tuple[Path, int]] = []
        for number, spec in enumerate(self.site, 1):
            where = f"[[site]] #{number}"
            for name in spec.host:
                if name in owner:
                    raise ConfigError(f"{where} host: {name!r} is already a host of [[site]] #{owner[name]}")
                owner[name] = number
            root = Path(spec.root)
            if not root.is_dir():
                raise ConfigError(f"{where} root: {spec.root}: no such folder")
            resolved = root.resolve()
            for other, n in roots:
                if resolved == other or resolved.is_relative_to(other) or other.is_relative_to(resolved):
                    raise ConfigError(f"{where} root: {spec.root} is inside or holds the root of "
                                      f"[[site]] #{n}; give each site a folder of its own")
            roots.append((resolved, number))
            for key, path in (("cert", spec.cert), ("key", spec.key), ("push-manifest", spec.push_manifest)):
                if path is not None and not os.path.isfile(path):
                    raise ConfigError(f"{where} {key}: {path}: no such file")
            if spec.fallback is not None and not (root / spec.fallback).is_file():
                raise ConfigError(f"{where} fallback: {spec.fallback}: no such file in {spec.root}")
        if owner:
            tables: tuple[tuple[str, tuple[RedirectRule | HeaderRule | AuthRule, ...]], ...] = (
                ("redirect", self.redirect), ("headers", self.headers), ("auth", self.auth))
            for kind, rules in tables:
                for number, rule in enumerate(rules, 1):
                    if rule.host is not None and rule.host not in owner:
                        raise ConfigError(f"[[{kind}]] #{number} host: {rule.host!r} is no [[site]]'s host")

    def worker_count(self) -> int:
        """How many worker processes `workers` means: `auto` is one per CPU this process may use."""
        if self.workers == "auto":
            return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        return int(self.workers)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> Config:
        """Read a TOML file of option names (dashes or underscores) and apply `overrides` on top."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except OSError as e:
            raise ConfigError(f"--config {path}: {e.strerror}") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(f"--config {path}: not valid TOML ({e})") from None
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(f"--config {path}: unknown option {key!r}")
            expected = ("an array of tables ([[" + key + "]])"
                        if _FIELDS[name].metadata["table"] and not isinstance(value, list)
                        else None if _FIELDS[name].metadata["table"]
                        else _type_problem(hints[name], value))
            if expected is not None:
                raise ConfigError(f"--config {path}: {key} must be {expected}, not {value!r}")
            values[name] = value
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"--config {path}: {e}") from None


def _importable(*modules: str) -> bool:
    """Whether any of `modules` imports (the optional extras a setting needs)."""
    for name in modules:
        try:
            __import__(name)
        except ImportError:
            continue
        return True
    return False


def default_of(name: str) -> Any:
    """The default of `Config` field `name`, for a component that can also be built without a Config
    (`Policy()`, `Pusher(site)`): its default is then Config's, not a copy that could drift."""
    return _FIELDS[name].default


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}


def _normalised(config: Config) -> list[tuple[str, Any]]:
    """The fields of a new `config` that need another form: a list (or other sequence) given for a
    tuple option becomes a tuple; `workers` is checked and "4" becomes 4."""
    changes: list[tuple[str, Any]] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if f.metadata["table"]:
            try:
                changes.append((f.name, parse_rules(f.name, value)))
            except RuleError as e:
                raise ConfigError(str(e)) from None
            continue
        if isinstance(f.default, tuple) and not isinstance(value, tuple):
            if isinstance(value, str | bytes):  # tuple("h2") would be ("h", "2")
                raise ConfigError(f"--{f.name.replace('_', '-')}: expected a list, not {value!r}")
            changes.append((f.name, tuple(value)))
    changes.append(("workers", parse_workers(config.workers)))
    try:
        origins = tuple(check_origin(o) for o in dict(changes).get("cors_origins", config.cors_origins))
        fallback = None if config.fallback is None else check_fallback(config.fallback)
    except RuleError as e:
        raise ConfigError(str(e)) from None
    changes += [("cors_origins", origins), ("fallback", fallback)]
    sites = dict(changes).get("site", ())
    if sites:
        # The first [[site]] is the default one: the top-level settings it has are its own, so the
        # parts of the server that know one site (listeners, TLS, push map reloads) serve it as is.
        first, top = sites[0], {**vars_of(config), "fallback": fallback}
        for name in ("root", "cert", "key", "push_manifest", "fallback"):
            value = getattr(first, name)
            if value is None and name in ("cert", "key"):
                continue  # a top-level --cert serves every site without one of its own
            if top[name] is not None and top[name] != value:
                raise ConfigError(f"--{name.replace('_', '-')}: with [[site]], give it in the "
                                  f"[[site]] it belongs to (the first is the default site)")
            changes.append((name, value))
    return changes


def vars_of(config: Config) -> dict[str, Any]:
    return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}


def _type_problem(hint: Any, value: Any) -> str | None:
    """What a TOML value should have been for a field of type `hint`, or None if it fits."""
    if typing.get_origin(hint) in (types.UnionType, typing.Union):
        problems = [_type_problem(member, value) for member in typing.get_args(hint)
                    if member is not type(None)]
        wanted = [p for p in problems if p is not None]
        return None if len(wanted) < len(problems) else " or ".join(wanted)
    if typing.get_origin(hint) is tuple:  # a TOML array
        ok = isinstance(value, list) and all(isinstance(x, str) for x in value)
        return None if ok else "a list of strings"
    if hint is bool:
        return None if isinstance(value, bool) else "true or false"
    if hint is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "an integer"
    if hint is float:
        return None if isinstance(value, int | float) and not isinstance(value, bool) else "a number"
    return None if isinstance(value, str) else "a string"


def parse_address(addr: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 as `[::1]:PORT`); port 0 asks the OS for a free one."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"bad address {addr!r}: expected HOST:PORT, e.g. localhost:8443")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host or "[" in host or "]" in host:
        raise ConfigError(f"bad address {addr!r}: write an IPv6 host in brackets, e.g. [::1]:8443")
    return host or "0.0.0.0", int(port)


def parse_workers(value: int | str) -> int | str:
    """`--workers` checked: a number of processes (1 to MAX_WORKERS) or "auto"; "4" becomes 4."""
    text = str(value).strip().lower() if not isinstance(value, bool) else ""
    if text == "auto":
        return "auto"
    if text.isdigit() and 1 <= int(text) <= MAX_WORKERS:
        return int(text)
    raise ConfigError(f"--workers: expected a number of processes from 1 to {MAX_WORKERS}, or auto; "
                      f"not {value!r}")
