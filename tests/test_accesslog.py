"""The access log (h2serve/accesslog.py): `--access-log-format json`, one object per line that no
header can break, over both protocols and for pushed responses; combined stays the default.
"""

from __future__ import annotations

import datetime
import io
import json
import re
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from attack import hostile
from conftest import RunningServer, wait_for

from h2serve.accesslog import AccessLog
from h2serve.config import Config, ConfigError

KEYS = ["time", "remote", "host", "method", "path", "protocol", "status", "bytes", "duration_ms",
        "referer", "user_agent", "pushed"]


def records(path: Path) -> list[dict]:
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines]


def test_json_lines_over_both_protocols(make_server: Callable[..., RunningServer], tmp_path: Path,
                                        verify: ssl.SSLContext) -> None:
    log = tmp_path / "json.log"
    running = make_server(access_log=str(log), access_log_format="json")
    agent = 'evil "agent" \\ with\ttab and \xe9'  # sent as latin-1, logged as its characters
    for http2 in (True, False):
        with httpx.Client(http2=http2, verify=verify) as client:
            r = client.get(f"{running.url}/about?x=1",
                           headers={"user-agent": agent.encode("latin-1"), "referer": "https://r/"})
            assert r.status_code == 200
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) == 2)
    got = records(log)
    for record, protocol in zip(got, ["HTTP/2.0", "HTTP/1.1"], strict=True):
        assert list(record) == KEYS
        when = datetime.datetime.fromisoformat(record["time"])
        age = datetime.datetime.now(datetime.UTC) - when
        assert when.tzinfo is not None and abs(age.total_seconds()) < 60
        assert record["remote"] == "127.0.0.1"
        assert record["host"] == f"localhost:{running.port}"
        assert (record["method"], record["path"], record["protocol"], record["status"]) == (
            "GET", "/about?x=1", protocol, 200)
        assert record["bytes"] > 0 and isinstance(record["duration_ms"], float)
        assert (record["referer"], record["user_agent"], record["pushed"]) == ("https://r/", agent, False)


def test_pushed_responses_are_marked(make_server: Callable[..., RunningServer], tmp_path: Path) -> None:
    log = tmp_path / "json.log"
    running = make_server(access_log=str(log), access_log_format="json")
    page = subprocess.run(["nghttp", "-n", f"{running.url}/"], capture_output=True, text=True, timeout=20)
    assert page.returncode == 0
    wait_for(lambda: log.exists() and len(log.read_text().splitlines()) > 1)
    got = records(log)
    pushed = [r for r in got if r["pushed"]]
    assert pushed and all(r["referer"] == "/" and r["status"] == 200 for r in pushed)
    assert [r["path"] for r in got if not r["pushed"]] == ["/"]


def test_a_header_cannot_inject_a_line(make_server: Callable[..., RunningServer], tmp_path: Path,
                                       ca_file: str) -> None:
    """Over the wire h2 refuses CR and LF in a field value (RFC 9113 section 8.2.1), so the line
    breaks come with the formatter test below; here every other control character and a quote."""
    log = tmp_path / "json.log"
    running = make_server(access_log=str(log), access_log_format="json")
    agent = b'"}\x01\x7f{"status": 999, "x": "'
    with hostile(running.port, ca_file) as client:
        sid = client.request("/about", headers=[(b"user-agent", agent)])
        client.receive_until(lambda: client.responses[sid].done)
    wait_for(lambda: log.exists() and log.read_text().endswith("\n"))
    [record] = [r for r in records(log) if not r["pushed"]]  # pushed ones carry the agent too
    assert record["user_agent"] == agent.decode("latin-1") and record["status"] == 200


def test_formatter_escapes_newlines_and_quotes() -> None:
    out = io.StringIO()
    log = AccessLog(out, "json")
    agent = 'a "quoted"\nfake line\r\n{"status": 200}\u2028'
    log.log("::1", "GET", '/p"\n', "HTTP/1.1", 404, 0, "ref\nerer", agent, host=b"h\n", seconds=0.0012,
            pushed=False)
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    record = json.loads(text)
    assert (record["user_agent"], record["path"], record["referer"], record["host"]) == (
        agent, '/p"\n', "ref\nerer", "h\n")
    assert record["duration_ms"] == 1.2 and record["referer"] is not None


def test_combined_stays_the_default(make_server: Callable[..., RunningServer], tmp_path: Path,
                                    verify: ssl.SSLContext) -> None:
    log = tmp_path / "combined.log"
    running = make_server(access_log=str(log))
    with httpx.Client(verify=verify) as client:
        client.get(f"{running.url}/about", headers={"user-agent": "ua"})
    wait_for(lambda: log.exists() and log.read_text().endswith("\n"))
    assert re.match(r'^127\.0\.0\.1 - - \[[^\]]+\] "GET /about HTTP/1\.1" 200 \d+ "-" "ua"\n$',
                    log.read_text())


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ConfigError, match="--access-log-format: 'xml' is not combined or json"):
        Config(access_log_format="xml")
