"""`Config` (h2serve/config.py): validation, addresses, and TOML files with command-line overrides.

In-process checks of what the configuration accepts and refuses; the real server is started to show
that options read from TOML take effect on the wire.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import STATIC, TEMPLATES, RunningServer

from h2serve.cli import parse_config
from h2serve.config import Config, ConfigError, parse_address
from h2serve.net.certs import DevCerts


@pytest.fixture
def base(certs: DevCerts) -> dict[str, Any]:
    """Options every in-process Config here needs (real files, loopback, port 0)."""
    return {"bind": ["127.0.0.1:0"], "cert": str(certs.cert), "key": str(certs.key),
            "templates": str(TEMPLATES), "static": str(STATIC)}


def test_defaults() -> None:
    """The documented defaults: both protocols by ALPN, h2 first, dev certs under certs/."""
    config = Config()
    assert config.alpn == ("h2", "http/1.1")
    assert config.bind == ("localhost:8443",)
    assert config.h2c_bind == ()
    assert (config.cert, config.key, config.certs_dir) == (None, None, "certs")
    assert config.max_concurrent_streams == 100
    assert config.initial_window_size == 65535
    assert config.server_name == "h2serve"
    assert config.access_log == "-"


def test_config_is_immutable(base: dict[str, Any]) -> None:
    """A Config cannot change once made (it was checked then): no field can be assigned, list options
    are tuples (lists given are turned into tuples), and a variant is made with dataclasses.replace,
    which checks it anew."""
    config = Config(**base, h2c_bind=["127.0.0.1:0"], workers="2")
    for name, value in [("workers", 3), ("bind", ["0.0.0.0:1"]), ("push", False), ("new", 1)]:
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(config, name, value)
    assert (config.bind, config.h2c_bind, config.alpn) == (("127.0.0.1:0",), ("127.0.0.1:0",),
                                                           ("h2", "http/1.1"))
    assert config.workers == 2
    assert not hasattr(config.alpn, "append")
    assert hash(config) == hash(Config(**base, h2c_bind=("127.0.0.1:0",), workers=2))
    variant = dataclasses.replace(config, bind=["127.0.0.1:1"], workers="auto")
    assert (variant.bind, variant.workers, config.bind) == (("127.0.0.1:1",), "auto", ("127.0.0.1:0",))
    with pytest.raises(ConfigError, match="--max-connections"):
        dataclasses.replace(config, max_connections=0)


def test_list_option_given_a_string() -> None:
    """A string where a list belongs is an error, not a tuple of its characters."""
    with pytest.raises(ConfigError, match=r"--bind: expected a list, not '127\.0\.0\.1:0'"):
        Config(bind="127.0.0.1:0")


@pytest.mark.parametrize(("options", "message"), [
    ({"alpn": ["h3"]}, "--alpn: unknown protocol 'h3'"),
    ({"alpn": ["h2", "spdy/3"]}, "unknown protocol 'spdy/3'"),
    ({"alpn": []}, "--alpn: name at least one"),
    ({"log_level": "loud"}, "--log-level"),
    ({"cert": "__CERT__", "key": None}, "--cert and --key go together"),
    ({"cert": None, "key": "__KEY__"}, "--cert and --key go together"),
    ({"cert": "/nonexistent/cert.pem"}, "--cert /nonexistent/cert.pem: no such file"),
    ({"key": "/nonexistent/key.pem"}, "--key /nonexistent/key.pem: no such file"),
    ({"bind": [], "h2c_bind": []}, "nothing to serve on"),
    ({"bind": ["localhost"]}, "bad address 'localhost'"),
    ({"bind": ["127.0.0.1:65536"]}, "bad address"),
    ({"h2c_bind": ["127.0.0.1:http"]}, "bad address"),
    ({"bind": ["::1:8443"]}, "in brackets"),
    ({"max_concurrent_streams": 0}, "--max-concurrent-streams"),
    ({"max_concurrent_streams": -5}, "--max-concurrent-streams"),
    ({"max_concurrent_streams": 2**31}, "--max-concurrent-streams"),
    ({"initial_window_size": 0}, "--initial-window-size"),
    ({"initial_window_size": 2**31}, "--initial-window-size"),
    ({"max_header_list_size": 100}, "--max-header-list-size"),
    ({"graceful_timeout": -1.0}, "timeouts"),
    ({"handshake_timeout": 0.0}, "timeouts"),
])
def test_invalid_settings_raise_config_error(base: dict[str, Any], options: dict[str, Any],
                                             message: str) -> None:
    """Settings that cannot work raise ConfigError at construction, naming the option."""
    values = {**base, **options}
    for name in ("cert", "key"):
        if values.get(name) in ("__CERT__", "__KEY__"):
            values[name] = base[name]
    with pytest.raises(ConfigError) as raised:
        Config(**values)
    assert message in str(raised.value)


def test_valid_edges_accepted(base: dict[str, Any]) -> None:
    """The limits themselves are allowed."""
    config = Config(**{**base, "max_concurrent_streams": 1, "initial_window_size": 2**31 - 1,
                       "max_header_list_size": 1024, "graceful_timeout": 0.0, "alpn": ["http/1.1"],
                       "bind": [], "h2c_bind": ["127.0.0.1:0"]})
    assert config.alpn == ("http/1.1",)


@pytest.mark.parametrize(("addr", "expected"), [
    ("localhost:8443", ("localhost", 8443)),
    ("127.0.0.1:0", ("127.0.0.1", 0)),
    ("[::1]:8443", ("::1", 8443)),
    ("[::]:443", ("::", 443)),
    (":8080", ("0.0.0.0", 8080)),
    ("example.org:65535", ("example.org", 65535)),
])
def test_parse_address(addr: str, expected: tuple[str, int]) -> None:
    assert parse_address(addr) == expected


@pytest.mark.parametrize("addr", ["localhost", "localhost:", "host:-1", "host:99999", "::1", "[::1]",
                                  "[::1:80", "host:8o"])
def test_parse_address_rejects(addr: str) -> None:
    with pytest.raises(ConfigError, match="bad address"):
        parse_address(addr)


# -- TOML --------------------------------------------------------------------------------------------

def write_toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "h2serve.toml"
    path.write_text(text)
    return path


def test_toml_sets_options_with_dashes_or_underscores(tmp_path: Path, base: dict[str, Any]) -> None:
    """Keys may be written with dashes or underscores; values land in the right fields."""
    path = write_toml(tmp_path, 'server-name = "tomltest"\naccess_log = "off"\nalpn = ["h2"]\n'
                                'max-concurrent-streams = 7\ngraceful-timeout = 3\n'
                                'h2c-bind = ["127.0.0.1:0"]\n')
    config = Config.from_toml(path, **base)
    assert config.server_name == "tomltest"
    assert config.access_log == "off"
    assert config.alpn == ("h2",)
    assert config.max_concurrent_streams == 7
    assert config.graceful_timeout == 3
    assert config.h2c_bind == ("127.0.0.1:0",)


def test_command_line_overrides_toml(tmp_path: Path, certs: DevCerts) -> None:
    """Precedence: defaults < TOML < command line."""
    path = write_toml(tmp_path, 'server-name = "tomltest"\naccess-log = "off"\nalpn = ["h2"]\n'
                                f'cert = "{certs.cert}"\nkey = "{certs.key}"\n')
    config = parse_config(["--config", str(path), "--server-name", "cli", "--bind", "127.0.0.1:0"])
    assert config.server_name == "cli"
    assert config.access_log == "off"            # from TOML, not overridden
    assert config.alpn == ("h2",)
    assert config.bind == ("127.0.0.1:0",)
    assert config.log_level == "info"            # default, in neither
    config = parse_config(["--config", str(path), "--alpn", "http/1.1,h2", "--access-log", "-"])
    assert config.alpn == ("http/1.1", "h2")
    assert config.access_log == "-"
    assert config.server_name == "tomltest"


@pytest.mark.parametrize(("text", "message"), [
    ('colour = "blue"\n', "unknown option 'colour'"),
    ('server-name = "x"\nbogus-option = 1\n', "unknown option 'bogus-option'"),
    ('server-name = \n', "not valid TOML"),
    ('bind = "127.0.0.1:0"\n', "bind must be a list of strings"),
    ('alpn = "h2"\n', "alpn must be a list of strings"),
    ('max-concurrent-streams = "10"\n', "max-concurrent-streams must be an integer"),
    ('max-concurrent-streams = true\n', "must be an integer"),
    ('graceful-timeout = "5"\n', "graceful-timeout must be a number"),
    ('server-name = 5\n', "server-name must be a string"),
    ('alpn = ["h3"]\n', "unknown protocol 'h3'"),
])
def test_bad_toml_raises_config_error(tmp_path: Path, text: str, message: str) -> None:
    """Unknown keys, bad syntax, wrong value types and bad values are ConfigErrors naming the key."""
    path = write_toml(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        Config.from_toml(path)
    assert message in str(raised.value)
    if "unknown protocol" not in message:
        assert str(path) in str(raised.value)


def test_missing_toml_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"--config .*nope\.toml: No such file"):
        Config.from_toml(tmp_path / "nope.toml")


def test_toml_options_take_effect(make_server: Callable[..., RunningServer], tmp_path: Path,
                                  base: dict[str, Any], verify) -> None:
    """A server built from TOML answers with the TOML's Server header and writes no access log."""
    path = write_toml(tmp_path, 'server-name = "tomltest"\naccess-log = "off"\n')
    config = Config.from_toml(path, **base)
    log = tmp_path / "access.log"  # where make_server would otherwise log
    server = make_server(**{name: getattr(config, name) for name in
                            ("server_name", "access_log", "bind", "cert", "key", "templates", "static")})
    with httpx.Client(http2=True, verify=verify) as client:
        r = client.get(server.url + "/about")
    assert r.status_code == 200
    assert r.headers["server"] == "tomltest"
    assert not log.exists()


# -- workers and event loop (appended) ------------------------------------------------------------------

@pytest.mark.parametrize(("argv", "workers", "count"), [
    ([], 1, 1),
    (["--workers", "3"], 3, 3),
    (["--workers", "1024"], 1024, 1024),
    (["--workers", "auto"], "auto", None),
    (["--workers", "AUTO"], "auto", None),
])
def test_workers_parsed(base: dict[str, Any], argv: list[str], workers: int | str, count: int | None) -> None:
    """--workers N or auto; auto counts the CPUs this process may run on (its affinity)."""
    import os

    config = parse_config(["--bind", "127.0.0.1:0", *argv])
    assert config.workers == workers
    assert config.worker_count() == (count or len(os.sched_getaffinity(0)))


@pytest.mark.parametrize("value", ["0", "-1", "-5", "two", "2.5", "", "1025", "auto2"])
def test_workers_rejected(value: str) -> None:
    with pytest.raises(ConfigError) as raised:
        parse_config(["--bind", "127.0.0.1:0", "--workers", value])
    assert str(raised.value) == ("--workers: expected a number of processes from 1 to 1024, or auto; "
                                 f"not {value!r}")


@pytest.mark.parametrize("value", [0, -1, True, 2.0])
def test_workers_rejected_in_process(base: dict[str, Any], value: Any) -> None:
    with pytest.raises(ConfigError, match="--workers"):
        Config(**base, workers=value)


@pytest.mark.parametrize(("text", "workers"), [("workers = 4\n", 4), ('workers = "auto"\n', "auto"),
                                               ('workers = "2"\n', 2)])
def test_workers_from_toml(tmp_path: Path, base: dict[str, Any], text: str, workers: int | str) -> None:
    assert Config.from_toml(write_toml(tmp_path, text), **base).workers == workers


@pytest.mark.parametrize(("text", "message"), [
    ("workers = true\n", "workers must be an integer or a string, not True"),
    ("workers = 0\n", "--workers: expected a number of processes"),
    ("workers = 1.5\n", "workers must be an integer or a string"),
    ('loop = "trio"\n', "--loop: 'trio' is not one of auto, asyncio, uvloop"),
])
def test_workers_and_loop_bad_toml(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        Config.from_toml(write_toml(tmp_path, text))
    assert message in str(raised.value)


@pytest.mark.parametrize("loop", ["auto", "asyncio", "uvloop"])
def test_loop_choices(base: dict[str, Any], loop: str) -> None:
    assert parse_config(["--bind", "127.0.0.1:0", "--loop", loop]).loop == loop
    assert Config(**base).loop == "auto"


def test_loop_rejected() -> None:
    with pytest.raises(ConfigError, match=r"--loop: 'tokio' is not one of auto, asyncio, uvloop"):
        parse_config(["--bind", "127.0.0.1:0", "--loop", "tokio"])


def test_event_loop_factories() -> None:
    """`--loop` to a factory: asyncio always; auto is uvloop exactly when it can be imported."""
    import asyncio

    from h2serve.net.tls import SmallTLSBufferLoop
    from h2serve.server import event_loop

    assert event_loop("asyncio") == ("asyncio", SmallTLSBufferLoop)
    assert issubclass(SmallTLSBufferLoop, asyncio.SelectorEventLoop)
    try:
        import uvloop
    except ImportError:
        assert event_loop("auto") == ("asyncio", SmallTLSBufferLoop)
        with pytest.raises(ConfigError, match="uvloop is not installed"):
            event_loop("uvloop")
    else:
        assert event_loop("auto") == event_loop("uvloop") == ("uvloop", uvloop.new_event_loop)
