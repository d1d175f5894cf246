"""Every option of the server, declared once.

`Config` is the single source of truth: the command line (`cli.py`) is generated from its fields, a
TOML file (`--config`) is read into it, and embedding code builds one directly. Each field carries its
help text in `metadata`, so adding an option is one edit here and nothing else.
"""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(Exception):
    """A setting that cannot work; the message says which and what to fix."""


def option(default: Any, help: str, *, metavar: str | None = None, list_sep: str | None = None) -> Any:
    """A dataclass field with the help text the CLI shows for it.

    `list_sep` marks list options given once with separators (`--alpn h2,http/1.1`); other list
    options repeat (`--bind A --bind B`).
    """
    meta = {"help": help, "metavar": metavar, "list_sep": list_sep}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


ALPN_PROTOCOLS = ("h2", "http/1.1")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass
class Config:
    """Settings of one server; see `--help` for what each does."""

    bind: list[str] = option(
        ["localhost:8443"], "address to serve TLS on (repeatable)", metavar="HOST:PORT")
    h2c_bind: list[str] = option(
        [], "address to serve cleartext HTTP/2 (prior knowledge) and HTTP/1.1 on, for use "
        "behind a proxy (repeatable)", metavar="HOST:PORT")
    cert: str | None = option(
        None, "TLS certificate chain (PEM); without --cert/--key a development certificate "
        "is made under --certs-dir", metavar="PEM")
    key: str | None = option(None, "private key of --cert (PEM)", metavar="PEM")
    certs_dir: str = option("certs", "where development certificates are kept", metavar="DIR")
    alpn: list[str] = option(
        list(ALPN_PROTOCOLS), "protocols offered by ALPN, in order of preference",
        metavar="LIST", list_sep=",")
    root: str | None = option(
        None, "serve this one folder as the whole site (/ is DIR/index.html); "
        "replaces --templates and --static", metavar="DIR")
    templates: str = option("templates", "folder of pages: / and /NAME", metavar="DIR")
    static: str = option("static", "folder of assets served under /static/", metavar="DIR")
    log_level: str = option("info", "server log level: " + ", ".join(LOG_LEVELS), metavar="LEVEL")
    access_log: str = option(
        "-", "access log in combined format: a file, '-' for standard output, 'off' for none",
        metavar="PATH")
    graceful_timeout: float = option(
        10.0, "seconds in-flight responses get to finish on SIGINT/SIGTERM", metavar="SECONDS")
    handshake_timeout: float = option(
        10.0, "seconds a client gets to complete the TLS handshake", metavar="SECONDS")
    max_concurrent_streams: int = option(
        100, "HTTP/2 streams a client may open at once (SETTINGS_MAX_CONCURRENT_STREAMS)",
        metavar="N")
    initial_window_size: int = option(
        65535, "HTTP/2 receive window per stream (SETTINGS_INITIAL_WINDOW_SIZE)", metavar="BYTES")
    max_header_list_size: int = option(
        32768, "largest request header block accepted (SETTINGS_MAX_HEADER_LIST_SIZE, and "
        "the HTTP/1.1 header limit)", metavar="BYTES")
    server_name: str = option("h2serve", "value of the Server response header", metavar="TEXT")

    def __post_init__(self) -> None:
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
        if (self.cert is None) != (self.key is None):
            raise ConfigError("--cert and --key go together: give both, or neither for a dev certificate")
        if not self.bind and not self.h2c_bind:
            raise ConfigError("nothing to serve on: give --bind or --h2c-bind")
        for addr in [*self.bind, *self.h2c_bind]:
            parse_address(addr)
        if not 1 <= self.max_concurrent_streams <= 2**31 - 1:
            raise ConfigError("--max-concurrent-streams must be at least 1")
        if not 1 <= self.initial_window_size <= 2**31 - 1:
            raise ConfigError("--initial-window-size must be between 1 and 2147483647")
        if self.max_header_list_size < 1024:
            raise ConfigError("--max-header-list-size must be at least 1024")
        if self.graceful_timeout < 0 or self.handshake_timeout <= 0:
            raise ConfigError("timeouts must be positive numbers of seconds")

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
        names = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in data.items():
            name = key.replace("-", "_")
            if name not in names:
                raise ConfigError(f"--config {path}: unknown option {key!r}")
            values[name] = value
        values.update(overrides)
        try:
            return cls(**values)
        except TypeError as e:
            raise ConfigError(f"--config {path}: {e}") from None


def parse_address(addr: str) -> tuple[str, int]:
    """Split `HOST:PORT` (IPv6 as `[::1]:PORT`); port 0 asks the OS for a free one."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"bad address {addr!r}: expected HOST:PORT, e.g. localhost:8443")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)
