"""upstream/headers.py and upstream/target.py in memory: RFC 9110 section 7.6 and the URL."""

from __future__ import annotations

import pytest

from h2serve.config import Config, ConfigError
from h2serve.upstream.headers import request_headers, response_headers
from h2serve.upstream.target import Target, UpstreamError, parse_upstream


def test_request_headers_drop_hop_by_hop_and_replace_forwarding() -> None:
    client = [(b":method", b"GET"), (b":authority", b"example.test"), (b":path", b"/"),
              (b"connection", b"keep-alive, x-private"), (b"x-private", b"1"), (b"keep-alive", b"5"),
              (b"te", b"trailers"), (b"upgrade", b"h2c"), (b"proxy-authorization", b"x"),
              (b"transfer-encoding", b"chunked"), (b"x-forwarded-for", b"6.6.6.6"),
              (b"forwarded", b"for=6.6.6.6"), (b"x-real-ip", b"6.6.6.6"), (b"expect", b"100-continue"),
              (b"host", b"spoof"), (b"cookie", b"a=1"), (b"cookie", b"b=2"), (b"accept", b"*/*")]
    out = request_headers(client, authority=b"example.test", client="10.0.0.7", scheme="https",
                          has_body=True)
    assert out == [(b"host", b"example.test"), (b"accept", b"*/*"), (b"cookie", b"a=1; b=2"),
                   (b"x-forwarded-for", b"10.0.0.7"), (b"x-forwarded-proto", b"https"),
                   (b"x-forwarded-host", b"example.test"),
                   (b"forwarded", b'for=10.0.0.7;proto=https;host="example.test"')]


def test_ipv6_client_is_quoted_in_forwarded() -> None:
    out = dict(request_headers([], authority=b"h", client="::1", scheme="http", has_body=False))
    assert out[b"forwarded"] == b'for="[::1]";proto=http;host="h"'


def test_client_host_cannot_end_the_forwarded_quoted_string() -> None:
    out = dict(request_headers([], authority=b'a", for=1.2.3.4;x="\\', client="10.0.0.7",
                               scheme="http", has_body=False))
    assert out[b"forwarded"] == b'for=10.0.0.7;proto=http;host="a\\", for=1.2.3.4;x=\\"\\\\"'


def test_response_headers_drop_hop_by_hop_keep_the_rest_in_order() -> None:
    app = [(b"content-type", b"text/html"), (b"connection", b"close, x-hop"), (b"x-hop", b"1"),
           (b"keep-alive", b"timeout=5"), (b"transfer-encoding", b"chunked"), (b"link", b"</a>; rel=preload"),
           (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2"), (b"proxy-authenticate", b"Basic")]
    assert response_headers(app) == [(b"content-type", b"text/html"), (b"link", b"</a>; rel=preload"),
                                     (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]


@pytest.mark.parametrize(("url", "target"), [
    ("http://127.0.0.1:8000", Target("127.0.0.1", 8000)),
    ("http://app.internal", Target("app.internal", 80)),
    ("http://[::1]:9000/", Target("::1", 9000)),
    ("unix:/run/app.sock", Target(unix="/run/app.sock")),
    ("unix:///run/app.sock", Target(unix="/run/app.sock")),
])
def test_upstream_urls(url: str, target: Target) -> None:
    assert parse_upstream(url) == target


@pytest.mark.parametrize("url", ["https://app:443", "http://app:8000/prefix", "app:8000",
                                 "unix:run/app.sock", "http://app:99999", "http://user@app:1"])
def test_bad_upstream_urls(url: str) -> None:
    with pytest.raises(UpstreamError):
        parse_upstream(url)


def test_config_names_the_option_and_the_fault() -> None:
    with pytest.raises(ConfigError, match=r"^--upstream https://app: use http://HOST:PORT"):
        Config(upstream="https://app")
    with pytest.raises(ConfigError, match="--learn-hints"):
        Config(learn_hints="maybe")
    with pytest.raises(ConfigError, match="--upstream-connections"):
        Config(upstream_connections=0)
    with pytest.raises(ConfigError, match="timeout"):
        Config(upstream_timeout=0)
