"""Conditional requests and byte ranges (RFC 9110 sections 13 and 14), as pure functions.

The static handler asks two questions of a request about one representation (status, ETag,
Last-Modified, length): do its preconditions pass (`evaluate`: 304, 412 or go on), and which bytes
does it want (`byte_range`: all, one range, or unsatisfiable)? Several ranges are answered with the
whole representation (a plain 200, which RFC 9110 section 14.2 allows): it keeps responses simple
and denies clients the overlapping-range amplification that multipart answers invite.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

NOT_MODIFIED = 304
PRECONDITION_FAILED = 412


@dataclass(frozen=True, slots=True)
class Validators:
    """What a representation is compared by: its strong ETag and modification time (seconds)."""

    etag: str
    mtime: int


def parse_http_date(value: bytes) -> int | None:
    """Seconds since the epoch, or None for anything that is not an HTTP date."""
    try:
        parsed = parsedate_to_datetime(value.decode("latin-1"))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        return None
    return int(parsed.timestamp())


def _etags(value: bytes) -> list[str]:
    """The entity tags of an If-Match / If-None-Match list (`*` stays `*`)."""
    return [t.strip() for t in value.decode("latin-1").split(",") if t.strip()]


def _weak_match(tags: list[str], etag: str) -> bool:
    """Weak comparison (RFC 9110 section 8.8.3.2): `W/` prefixes are ignored."""
    bare = etag.removeprefix("W/")
    return any(t == "*" or t.removeprefix("W/") == bare for t in tags)


def _strong_match(tags: list[str], etag: str) -> bool:
    """Strong comparison: both tags strong and equal."""
    return any(t == "*" or (t == etag and not t.startswith("W/")) for t in tags)


def evaluate(method: str, headers: dict[bytes, bytes], v: Validators) -> int | None:
    """The preconditions of RFC 9110 section 13.2.2, in its order; 304, 412, or None to go on."""
    if_match = headers.get(b"if-match")
    if if_match is not None:
        if not _strong_match(_etags(if_match), v.etag):
            return PRECONDITION_FAILED
    else:
        since = headers.get(b"if-unmodified-since")
        date = parse_http_date(since) if since is not None else None
        if date is not None and v.mtime > date:
            return PRECONDITION_FAILED
    if_none_match = headers.get(b"if-none-match")
    if if_none_match is not None:
        if _weak_match(_etags(if_none_match), v.etag):
            return NOT_MODIFIED if method in ("GET", "HEAD") else PRECONDITION_FAILED
    elif method in ("GET", "HEAD"):
        since = headers.get(b"if-modified-since")
        date = parse_http_date(since) if since is not None else None
        if date is not None and v.mtime <= date:
            return NOT_MODIFIED
    return None


UNSATISFIABLE = (-1, -1)


def byte_range(headers: dict[bytes, bytes], length: int, v: Validators) -> tuple[int, int] | None:
    """The one range to send as (start, end inclusive); UNSATISFIABLE for a 416; None for all.

    None also when there is no Range, when If-Range does not match (RFC 9110 section 13.1.5), when
    the Range cannot be parsed (section 14.2: ignore it), and when it asks for several ranges.
    """
    value = headers.get(b"range")
    if value is None or not _if_range_holds(headers.get(b"if-range"), v):
        return None
    unit, _, spec = value.decode("latin-1").partition("=")
    if unit.strip().lower() != "bytes":
        return None
    match = RANGE_SPEC.fullmatch(spec.strip())  # one range; several (a comma) do not match
    if match is None or not (match["first"] or match["last"]):
        return None
    first, last = match["first"], match["last"]
    if not first:  # suffix: the last N bytes
        n = _number(last)
        return (max(0, length - n), length - 1) if n > 0 and length > 0 else UNSATISFIABLE
    start = _number(first)
    if last and _number(last) < start:
        return None  # invalid range-spec: ignored
    if start >= length:
        return UNSATISFIABLE
    end = min(_number(last), length - 1) if last else length - 1
    return start, end


# ASCII digits only: str.isdigit() also takes "²" and the like, which int() then refuses.
RANGE_SPEC = re.compile(r"(?P<first>[0-9]*)-(?P<last>[0-9]*)", re.ASCII)
BIG = 1 << 63  # beyond any file; stands for numbers too long to convert


def _number(digits: str) -> int:
    """A range bound; absurdly long ones (int() refuses over 4300 digits) count as BIG."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else BIG


def _if_range_holds(value: bytes | None, v: Validators) -> bool:
    if value is None:
        return True
    text = value.decode("latin-1").strip()
    if text.startswith(('"', "W/")):
        return _strong_match([text], v.etag)
    date = parse_http_date(value)
    return date is not None and date == v.mtime
