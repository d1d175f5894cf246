"""The access log: the combined log format with the protocol in the request line (the default),

    127.0.0.1 - - [22/Nov/2026:18:30:01 +0000] "GET /static/app.css HTTP/2.0" 200 5120 "-" "curl/7.88"

or, with `--access-log-format json`, one JSON object per line for log shippers (`pushed`: a
response the server pushed; `duration_ms`: from the request to the end of its response):

    {"time": "2026-11-22T18:30:01.042+00:00", "remote": "127.0.0.1", "host": "example.com",
     "method": "GET", "path": "/static/app.css", "protocol": "HTTP/2.0", "status": 200,
     "bytes": 5120, "duration_ms": 0.41, "referer": null, "user_agent": "curl/7.88", "pushed": false}

(one line in the file). `json.dumps` escapes quotes, backslashes, control characters and all that
is not ASCII, so no header a client sends can end a line or forge another.

Lines are gathered while the event loop handles one batch of input and written with one call when it
is done, so logging costs no system call per request.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import sys
import time
from typing import TextIO

FORMATS = ("combined", "json")


class AccessLog:
    """Formats and writes access-log lines; `None` stream means logging is off."""

    def __init__(self, stream: TextIO | None, format: str = "combined") -> None:
        self._stream = stream
        self._json = format == "json"
        self._pending: list[str] = []
        self._second = -1
        self._stamp = ""

    @classmethod
    def open(cls, target: str, format: str = "combined") -> AccessLog:
        """`-` is standard output, `off` disables the log, anything else is a file appended to;
        `format` combined or json."""
        if target == "off":
            return cls(None)
        if target == "-":
            return cls(sys.stdout, format)
        return cls(open(target, "a", encoding="utf-8"), format)

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    def log(self, client: str, method: str, target: str, protocol: str, status: int, size: int,
            referer: str | None, user_agent: str | None,
            upstream: tuple[int, float | None] | None = None, *, host: bytes = b"",
            seconds: float = 0.0, pushed: bool = False) -> None:
        """One line; `upstream` (a proxied request: the application's status, 0 if it gave
        none, and the seconds it took) is appended as `upstream=STATUS TIME` (in JSON, the keys
        `upstream_status` and `upstream_ms`)."""
        if self._stream is None:
            return
        if self._json:
            record: dict[str, object] = {
                "time": _rfc3339(), "remote": client, "host": host.decode("latin-1") or None,
                "method": method, "path": target, "protocol": protocol, "status": status,
                "bytes": size, "duration_ms": round(seconds * 1000, 3), "referer": referer,
                "user_agent": user_agent, "pushed": pushed}
            if upstream is not None:
                status_, took = upstream
                record["upstream_status"] = status_ or None
                record["upstream_ms"] = None if took is None else round(took * 1000, 3)
            line = json.dumps(record) + "\n"
        else:
            line = (f'{client} - - [{self._now()}] "{_clean(method)} {_clean(target)} {protocol}" '
                    f'{status} {size} "{_clean(referer or "-")}" "{_clean(user_agent or "-")}"')
            if upstream is not None:
                status_, took = upstream
                line += f" upstream={status_ or '-'} {'-' if took is None else f'{took:.3f}'}"
            line += "\n"
        if not self._pending:
            try:
                asyncio.get_running_loop().call_soon(self.flush)
            except RuntimeError:  # no loop: write at once
                self._pending.append(line)
                self.flush()
                return
        self._pending.append(line)

    def flush(self) -> None:
        if self._stream is None or not self._pending:
            return
        lines, self._pending = self._pending, []
        try:
            self._stream.write("".join(lines))
            self._stream.flush()
        except (OSError, ValueError):
            pass  # a closed or full log must never take the server down

    def close(self) -> None:
        self.flush()
        if self._stream not in (None, sys.stdout, sys.stderr):
            self._stream.close()

    def _now(self) -> str:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._stamp = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(now))
        return self._stamp


def _rfc3339() -> str:
    """Now, in UTC, to the millisecond: 2026-11-22T18:30:01.042+00:00 (RFC 3339)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="milliseconds")


def client_host(transport: asyncio.BaseTransport) -> str:
    """The client's address as the log shows it."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "-"


def _clean(text: str) -> str:
    """Escape what could forge or break a log line: quotes, backslashes, control characters."""
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    out = []
    for ch in text:
        if ch in '"\\' or not ch.isprintable():
            out.append(f"\\x{ord(ch):02x}" if ord(ch) < 256 else ch.encode("unicode_escape").decode())
        else:
            out.append(ch)
    return "".join(out)
