"""RFC 9218 priority signals: the `priority` header field and the PRIORITY_UPDATE frame's payload.

Browsers say how urgent each response is (`u`, 0 the most urgent .. 7, default 3) and whether it
is useful in pieces (`i`, incremental, default false). This module only reads those signals; what
to send first is decided late, by the send scheduler (h2sched.py) as it picks what goes next, so
a signal that arrives after the request (a PRIORITY_UPDATE) still counts.

A signal is a hint, never a reason to fail a request: anything malformed falls back to the
defaults and nothing here raises on what a client sent (parse_priority_update's ValueError is a
frame too short to carry a stream id, which the engine answers as a connection error). Field
values are parsed as RFC 9651 Dictionaries by http-sf, the ecosystem's structured-field parser,
behind a small cache: a browser sends the same few values (`u=0`, `u=1`, `u=2, i`, `i`) with
every request, and each then costs one dict lookup.
"""

from __future__ import annotations

from dataclasses import dataclass

import http_sf
from http_sf import StructuredFieldError


@dataclass(frozen=True, slots=True)
class Priority:
    """A response's priority, compared by value; parse_priority returns one of 16 shared instances."""

    urgency: int = 3            # 0 (most urgent) .. 7; RFC 9218 section 4.1, default 3
    incremental: bool = False   # RFC 9218 section 4.2


# Every valid Priority, so that a parse builds none: _PRIORITIES[urgency * 2 + incremental].
_PRIORITIES = tuple(Priority(u, i) for u in range(8) for i in (False, True))
DEFAULT = _PRIORITIES[3 * 2]

# Field value -> (urgency, incremental) as the value states them, None for a parameter it omits
# (or gives a value RFC 9218 says to ignore). Cleared when full: a client cycling through new
# values costs a parse each, never memory. Long values are parsed every time and not kept.
_CACHE_SIZE = 256
_CACHE_VALUE_LEN = 64
_cache: dict[bytes, tuple[int | None, bool | None]] = {}
_NOTHING: tuple[int | None, bool | None] = (None, None)


def _signals(value: bytes) -> tuple[int | None, bool | None]:
    """The parameters `value` states (uncached): RFC 9218 section 4's rules over http-sf's parse."""
    try:
        members = http_sf.parse(value, tltype="dictionary")
    except StructuredFieldError:
        # RFC 9651 section 4.2: a value that fails to parse is ignored as a whole.
        return _NOTHING
    if not isinstance(members, dict):  # what tltype="dictionary" returns; checked for mypy
        return _NOTHING
    # Each member is (bare item or inner list, parameters). Unknown keys, and u or i with a value
    # of the wrong type or out of range, are ignored (RFC 9218 section 4). bool is an int in
    # Python, so `u=?1` would pass isinstance(int): hence the exact type checks.
    urgency: int | None = None
    incremental: bool | None = None
    member = members.get("u")
    if isinstance(member, tuple):
        u = member[0]
        if type(u) is int and 0 <= u <= 7:
            urgency = u
    member = members.get("i")
    if isinstance(member, tuple):
        i = member[0]
        if type(i) is bool:
            incremental = i
    return urgency, incremental


def parse_priority(value: bytes | str | None, base: Priority = DEFAULT) -> Priority:
    """The priority a `priority` field value (RFC 9218 section 5) states over `base`.

    Each parameter the value states replaces base's; one it omits, or gives a value to ignore,
    keeps base's; a value that is not a valid Dictionary (and None, and empty) yields `base`.

    `base` is DEFAULT for a request's header field, and for a PRIORITY_UPDATE frame too: RFC
    9218 section 7 makes an update a complete set of parameters, where one it omits means that
    parameter's default, not the stream's previous value (a request sent with `u=5, i` and then
    updated with `u=1` is `u=1` and not incremental). Pass the stream's current priority as
    base only to merge a signal that does add to it, such as a response's own `priority` field
    over its request's (section 8). A malformed update's value gives the defaults here; section 7
    allows, but does not require, treating it as a connection error (PROTOCOL_ERROR in HTTP/2).
    """
    if not value:
        return base
    if isinstance(value, str):
        try:
            value = value.encode("ascii")
        except UnicodeEncodeError:
            return base  # a structured field is ASCII
    stated = _cache.get(value)
    if stated is None:
        stated = _signals(value)
        if len(value) <= _CACHE_VALUE_LEN:
            if len(_cache) >= _CACHE_SIZE:
                _cache.clear()
            _cache[value] = stated
    urgency, incremental = stated
    if urgency is None:
        if incremental is None:
            return base
        urgency = base.urgency
    elif incremental is None:
        incremental = base.incremental
    return _PRIORITIES[urgency * 2 + incremental]


def priority_from_headers(headers: list[tuple[bytes, bytes]]) -> Priority:
    """A request's priority from its header fields (names in lower case, as h2 and h11 give them).

    Several `priority` field lines are one field value joined with ", " (RFC 9110 section 5.3,
    which RFC 9651 section 4.2 requires before parsing): `u=1` and `i` on two lines are `u=1, i`.
    """
    found: bytes | None = None
    more: list[bytes] | None = None
    for name, value in headers:
        if name == b"priority":
            if found is None:
                found = value
            elif more is None:
                more = [found, value]
            else:
                more.append(value)
    if more is not None:
        found = b", ".join(more)
    return parse_priority(found)


def parse_priority_update(payload: bytes) -> tuple[int, bytes]:
    """An HTTP/2 PRIORITY_UPDATE frame's payload (type 0x10, RFC 9218 section 7.1): the stream id
    it prioritizes and its Priority Field Value, for parse_priority (with base DEFAULT).

    The payload is a reserved bit, ignored on receipt, then a 31-bit Prioritized Stream ID, then the
    field value in ASCII (possibly empty: the defaults). A payload shorter than the 4 octets of
    the stream id raises ValueError. RFC 9218 names no error for that case, so RFC 9113 section
    4.2's rule applies: a frame too small for its mandatory fields is a FRAME_SIZE_ERROR, and a
    connection error since this frame is sent on stream 0. The errors RFC 9218 section 7.1 does
    name, each a connection error of type PROTOCOL_ERROR (the frame on a stream other than 0, a
    Prioritized Stream ID of 0), are the caller's to check: this returns what the payload says.
    """
    if len(payload) < 4:
        raise ValueError(f"PRIORITY_UPDATE payload of {len(payload)} octets, shorter than a stream id")
    return int.from_bytes(payload[:4], "big") & 0x7FFF_FFFF, bytes(payload[4:])
