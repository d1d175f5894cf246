"""The vocabulary of an option declaration: the `--help` sections (`GROUPS`) and `option()`, the
dataclass field that carries an option's help text, section and command-line form.

Kept apart from config.py, which declares the options with it, because two sides read it: config.py
writes each field's metadata here, cli.py (`--help` in sections) reads it back; and config.py stays
under the project's ~500 lines with every option in it.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

# The sections of `--help`, in order; every option belongs to one.
GROUPS = {
    "TLS": "the HTTPS listeners and their certificate",
    "site": "what is served, and how files are looked up",
    "caching": "Cache-Control headers",
    "rules": "site rules: SPA fallback, CORS, security headers (redirects, per-path headers and "
             "basic auth are [[redirect]], [[headers]] and [[auth]] tables of the --config file)",
    "compression": "content codings: best-ratio precompression and compression dictionaries "
                   "(RFC 9842; [[dictionary]] tables of the --config file)",
    "push": "HTTP/2 server push, preload links and 103 Early Hints",
    "HTTP/2": "HTTP/2 settings, and cleartext HTTP/2 (h2c) behind a proxy",
    "limits": "timeouts and caps that protect the server from slow or greedy clients",
    "processes": "worker processes, the event loop, and shutdown",
    "logging": "the server log and the access log",
    "upstream": "reverse proxy: an application behind the site's files (--upstream)",
    "operations": "metrics and health checks for monitoring (see README, Running in production)",
}


def option(default: Any, help: str, *, group: str, metavar: str | None = None,
           list_sep: str | None = None, off_flag: bool = False, flag: str | None = None,
           table: bool = False) -> Any:
    """A dataclass field with the help text the CLI shows for it, in `--help` section `group`.

    `list_sep` marks list options given once with separators (`--alpn h2,http/1.1`); other list
    options repeat (`--bind A --bind B`). `off_flag` gives a text option a `--no-NAME` that sets it
    to "" (off), as in `--push-cookie NAME` / `--no-push-cookie`. `flag` names the command-line
    option when it is not the field's name (`--cors-origin`, repeated, for `cors_origins`). `table`
    marks an array of TOML tables (`[[redirect]]`): TOML only, no command-line option.
    """
    if group not in GROUPS:
        raise ValueError(f"option group {group!r} is not one of {', '.join(GROUPS)}")
    meta = {"help": help, "group": group, "metavar": metavar, "list_sep": list_sep,
            "off_flag": off_flag, "flag": flag, "table": table}
    return field(default=default, metadata=meta)
