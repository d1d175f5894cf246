"""RFC 9218 priority signals (proto/priority.py): the `priority` field value parsed by http-sf as a
Dictionary, with section 4's rules on top (u an Integer 0..7, i a Boolean, anything else ignored),
defaults for whatever fails to parse, header lines combined, the cache bounded, and the
PRIORITY_UPDATE payload split into its stream id and field value."""

from __future__ import annotations

import random

import pytest

from h2serve.proto import priority as mod
from h2serve.proto.priority import (
    DEFAULT,
    Priority,
    parse_priority,
    parse_priority_update,
    priority_from_headers,
)


def test_defaults() -> None:
    assert Priority(3, False) == DEFAULT
    for value in (None, b"", ""):
        assert parse_priority(value) == DEFAULT
    assert priority_from_headers([]) == DEFAULT
    assert priority_from_headers([(b":method", b"GET"), (b"accept", b"*/*")]) == DEFAULT


@pytest.mark.parametrize("urgency", range(8))
def test_urgencies(urgency: int) -> None:
    assert parse_priority(f"u={urgency}".encode()) == Priority(urgency, False)
    assert parse_priority(f"u={urgency}") == Priority(urgency, False)
    assert parse_priority(f"u={urgency}, i".encode()) == Priority(urgency, True)


@pytest.mark.parametrize("bad", [b"u=8", b"u=-1", b"u=1.5", b'u="x"', b"u=x", b"u=?1", b"u=?0", b"u",
                                 b"u=(1 2)", b"u=:AQ==:", b"u=100"])
def test_urgency_not_an_integer_0_to_7_is_ignored(bad: bytes) -> None:
    assert parse_priority(bad) == DEFAULT
    # The rest of the value still applies: a valid i beside it.
    assert parse_priority(bad + b", i") == Priority(3, True)
    assert parse_priority(b"i, " + bad) == Priority(3, True)


@pytest.mark.parametrize(("value", "incremental"), [
    (b"i", True), (b"i=?1", True), (b"i=?0", False), (b"i=?1;x=2", True), (b"u=3, i=?0", False),
])
def test_incremental(value: bytes, incremental: bool) -> None:
    assert parse_priority(value) == Priority(3, incremental)


@pytest.mark.parametrize("bad", [b"i=1", b"i=0", b'i="1"', b"i=true", b"i=(?1)", b"i=1.0"])
def test_incremental_not_a_boolean_is_ignored(bad: bytes) -> None:
    assert parse_priority(bad) == DEFAULT
    assert parse_priority(b"u=1, " + bad) == Priority(1, False)
    assert parse_priority(bad, Priority(5, True)) == Priority(5, True)


@pytest.mark.parametrize("bad", [
    b"u=", b",,", b"u=1;", b"u=1,", b",u=1", b"u=1 i", b"U=1", b"u=1, i=?2", b"u=1;;",
    "u=1, i=\u00e9".encode(), b"u=1, x=\xff", b"\xff\xfe", b"u=1\x00", b"u=1\r\n", b"(u=1)",
    b"u=9999999999999999",
    # Each made an older http-sf raise something other than StructuredFieldError (pyproject.toml's
    # floor): an IndexError (1.3), a ValueError (1.2), a UnicodeDecodeError (1.1).
    b"u=1, x=1234567890123.", b"u=1, x=12345678901234.5", b'u=1, x=(1 "a" \x80)',
    b"u=1, x=1.", b"u=1, x=1.1234", b'u=1, x=%"%c3"', b"u=1, x=:!!:",
])
def test_unparsable_value_gives_base(bad: bytes) -> None:
    assert parse_priority(bad) == DEFAULT
    assert parse_priority(bad, Priority(6, True)) == Priority(6, True)


def test_non_ascii_str_gives_base() -> None:
    assert parse_priority("u=1, i=\u00e9") == DEFAULT
    assert parse_priority("u=\u0661") == DEFAULT  # an Arabic-Indic digit one: not an sf-integer


def test_garbage_never_raises() -> None:
    rng = random.Random(9218)
    assert parse_priority(bytes(rng.randrange(256) for _ in range(10_000))) == DEFAULT
    assert parse_priority(b"u=1, " * 2_000 + b"u=2") == Priority(2, False)  # 10 KB, valid
    assert parse_priority(b"u=1, " * 2_000) == DEFAULT                        # trailing comma
    # A Date beyond what Python's datetime holds: whether http-sf accepts it is its own affair.
    assert parse_priority(b"u=1, x=@999999999999999").urgency in (1, 3)
    alphabet = b'ui=?0123456789-.,; \t()"*:%@abcxyz\xff\x00'
    for _ in range(3_000):
        value = bytes(rng.choice(alphabet) for _ in range(rng.randrange(1, 16)))
        got = parse_priority(value)
        assert 0 <= got.urgency <= 7, value
        assert isinstance(got.incremental, bool), value


def test_unknown_members_and_parameters_ignored() -> None:
    assert parse_priority(b"x=1") == DEFAULT
    assert parse_priority(b"u=2, foo=bar, i, *z=(1 2);q") == Priority(2, True)
    assert parse_priority(b"u=2;i=?0, i;u=7") == Priority(2, True)  # member parameters are not members


def test_whitespace_and_duplicates() -> None:
    assert parse_priority(b"  u=1,\ti  ") == Priority(1, True)
    assert parse_priority(b"u=1, u=5") == Priority(5, False)        # the last wins (RFC 9651)
    assert parse_priority(b"i, i=?0") == Priority(3, False)


def test_base_keeps_what_a_value_omits() -> None:
    # RFC 9218 section 8's merge: a response's `u=1` over a request's `u=5, i` is `u=1, i`.
    request = parse_priority(b"u=5, i")
    assert parse_priority(b"u=1", request) == Priority(1, True)
    assert parse_priority(b"i=?0", request) == Priority(5, False)
    assert parse_priority(b"x=1", request) is request
    # A PRIORITY_UPDATE is a complete set (section 7): parsed over DEFAULT, `u=1` drops the `i`.
    assert parse_priority(b"u=1") == Priority(1, False)


def test_header_lines_combined() -> None:
    headers = [(b":method", b"GET"), (b"priority", b"u=1"), (b"accept", b"*/*"), (b"priority", b"i")]
    assert priority_from_headers(headers) == Priority(1, True)
    assert priority_from_headers([(b"priority", b"u=0, i")]) == Priority(0, True)
    assert priority_from_headers([(b"priority", b"u=1"), (b"priority", b"u=6"),
                                  (b"priority", b"i")]) == Priority(6, True)
    # One bad line spoils the combined value, as for any structured field.
    assert priority_from_headers([(b"priority", b"u=1"), (b"priority", b"u=")]) == DEFAULT
    assert priority_from_headers([(b"priority", b"u=1"), (b"priority", b"")]) == DEFAULT
    assert priority_from_headers([(b"x-priority", b"u=1")]) == DEFAULT


def test_results_are_shared() -> None:
    # The common values cost a lookup and build nothing.
    assert parse_priority(b"u=2, i") is parse_priority(b"u=2, i") is parse_priority("u=2, i")
    assert parse_priority(b"u=3") is parse_priority(b"i=?0") is DEFAULT


def test_cache_bounded() -> None:
    mod._cache.clear()
    for n in range(mod._CACHE_SIZE * 3):
        value = f"u={n % 8}, x{n}".encode()
        assert parse_priority(value) == Priority(n % 8, False)
        assert len(mod._cache) <= mod._CACHE_SIZE
    assert len(mod._cache) > 0
    # Long values are parsed, not kept.
    mod._cache.clear()
    long_value = b"u=4, x=" + b"a" * 200
    assert parse_priority(long_value) == Priority(4, False)
    assert long_value not in mod._cache
    # A cached answer is the same answer.
    assert parse_priority(b"u=4, i") == Priority(4, True)
    assert b"u=4, i" in mod._cache
    assert parse_priority(b"u=4, i") == Priority(4, True)
    assert parse_priority(b"u=4, i", Priority(0, False)) == Priority(4, True)


def payload(stream_id: int, value: bytes = b"") -> bytes:
    return stream_id.to_bytes(4, "big") + value


def test_priority_update_payload() -> None:
    assert parse_priority_update(payload(1, b"u=0")) == (1, b"u=0")
    assert parse_priority_update(payload(2**31 - 1, b"u=7, i")) == (2**31 - 1, b"u=7, i")
    # The reserved bit is ignored on receipt.
    assert parse_priority_update(payload(0x8000_0005, b"i")) == (5, b"i")
    assert parse_priority_update(payload(0x8000_0000)) == (0, b"")
    # An empty field value: the defaults.
    stream_id, value = parse_priority_update(payload(3))
    assert (stream_id, value) == (3, b"")
    assert parse_priority(value) == DEFAULT
    # Garbage after the id is the field value's problem: the defaults, not an error.
    stream_id, value = parse_priority_update(payload(7, b"\xff\x00u=1"))
    assert stream_id == 7 and parse_priority(value) == DEFAULT


@pytest.mark.parametrize("short", [b"", b"\x00", b"\x00\x00", b"\x80\x00\x01"])
def test_priority_update_too_short(short: bytes) -> None:
    with pytest.raises(ValueError):
        parse_priority_update(short)
