"""The command line (h2serve/cli.py): `python -m h2serve` in a subprocess, as a user runs it."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import REPO, STATIC, TEMPLATES, ServerProcess, start_process

from h2serve.net.certs import DevCerts, ensure_dev_certs

SITE_ARGS = ["--templates", str(TEMPLATES), "--static", str(STATIC)]
ABOUT = (TEMPLATES / "about.html").read_bytes()


# The package is run from the checkout, not installed: let it import from any working directory.
ENV = {**os.environ, "PYTHONUNBUFFERED": "1",
       "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(autouse=True)
def importable_anywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """conftest's start_process copies os.environ: give it the same PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", ENV["PYTHONPATH"])


def run_cli(*args: str, cwd: Path | str = REPO, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run `python -m h2serve ARGS` to completion (it must exit by itself)."""
    return subprocess.run([sys.executable, "-m", "h2serve", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, env=ENV)


def assert_usage_error(result: subprocess.CompletedProcess[str], *fragments: str) -> str:
    """Exit status 2 and exactly one line on stderr (no traceback) containing `fragments`."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def processes() -> Iterator[list[ServerProcess]]:
    """Servers started here, killed at the end of the test."""
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.stop()


def curl(url: str, ca: Path | str, *extra: str) -> tuple[bytes, str]:
    """Body and HTTP version of a verified curl GET."""
    out = subprocess.run(["curl", "-sS", "--cacert", str(ca), *extra, "-o", "-", "-w", "\n%{http_version}",
                          url], capture_output=True, timeout=10, check=True).stdout
    body, _, version = out.rpartition(b"\n")
    return body, version.decode()


# -- help ------------------------------------------------------------------------------------------------

def test_help_lists_every_option() -> None:
    """--help exits 0 and names every option, with the commands and an example."""
    result = run_cli("--help")
    assert result.returncode == 0
    flat = " ".join(result.stdout.split())
    for flag in ("--cert", "--key", "--certs-dir", "--bind", "--h2c-bind", "--root", "--static",
                 "--templates", "--log-level", "--access-log", "--alpn", "--graceful-timeout",
                 "--handshake-timeout", "--max-concurrent-streams", "--initial-window-size",
                 "--max-header-list-size", "--server-name", "--config", "--version"):
        assert re.search(rf"^\s+{re.escape(flag)}\b", result.stdout, re.M), flag
    assert "cert " in result.stdout and "serve " in result.stdout
    assert "(default: h2,http/1.1)" in flat
    assert "(default: localhost:8443)" in flat


def test_help_is_grouped() -> None:
    """--help shows the options in sections (TLS, site, caching, push, HTTP/2, limits, processes,
    logging), in that order, each option once and in the section of its Config field."""
    from h2serve.config import Config
    from h2serve.options import GROUPS

    result = run_cli("--help")
    assert result.returncode == 0
    headings = re.findall(r"^(\S[^:\n]*):$", result.stdout, re.M)
    assert headings == ["options", *GROUPS, "commands", "examples"]
    section = "usage"
    found: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        heading = re.fullmatch(r"(\S[^:]*):", line)
        if heading:
            section = heading.group(1)
        for flag in re.findall(r"^\s+(--[a-z0-9-]+)", line) + re.findall(r", (--[a-z0-9-]+)", line):
            found.setdefault(flag, []).append(section)
    for f in dataclasses.fields(Config):
        if f.metadata["table"]:
            continue  # [[redirect]], [[headers]], [[auth]]: TOML tables, no option
        flag = f.metadata["flag"] or "--" + f.name.replace("_", "-")
        assert found.pop(flag) == [f.metadata["group"]], flag
        if f.type == "bool":
            assert found.pop("--no-" + flag[2:]) == [f.metadata["group"]], flag
        if f.metadata["off_flag"]:
            assert found.pop("--no-" + flag[2:]) == [f.metadata["group"]], flag
    assert found == {"--help": ["options"], "--version": ["options"], "--config": ["options"]}


def option_help(help_text: str, flag: str) -> str:
    """What `--help` says of `flag` (metavar, help, default), whitespace collapsed."""
    lines = help_text.splitlines()
    start = next(i for i, line in enumerate(lines) if re.match(rf"\s+{re.escape(flag)}\b", line))
    said = [lines[start]]
    for line in lines[start + 1:]:
        if not line.startswith(" " * 6) or line.lstrip().startswith("-"):
            break
        said.append(line)
    return " ".join(" ".join(said).split())


@pytest.mark.parametrize(("command", "flags"), [("cert", ["--certs-dir"]),
                                                ("manifest", ["--templates", "--static"])])
def test_subcommand_options_are_configs(command: str, flags: list[str]) -> None:
    """`h2serve cert` and `h2serve manifest` take their options from Config: the same help and
    default as `h2serve --help` (and so as Config) says."""
    from h2serve.config import Config

    main_help = run_cli("--help").stdout
    sub = run_cli(command, "--help")
    assert sub.returncode == 0
    for flag in flags:
        said = option_help(sub.stdout, flag)
        assert said == option_help(main_help, flag)
        assert said.endswith(f"(default: {getattr(Config(), flag[2:].replace('-', '_'))})"), said


def test_version() -> None:
    from h2serve import __version__

    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"h2serve {__version__}"


# -- errors: exit status 2, one line ----------------------------------------------------------------------

def test_missing_cert_files() -> None:
    assert_usage_error(run_cli("--bind", "127.0.0.1:0", "--cert", "/nonexistent.pem",
                               "--key", "/nonexistent.pem", *SITE_ARGS), "/nonexistent.pem", "no such file")


def test_missing_key_file_named(certs: DevCerts) -> None:
    """With the certificate present, the message names the key that is missing, not the certificate."""
    line = assert_usage_error(run_cli("--bind", "127.0.0.1:0", "--cert", str(certs.cert),
                                      "--key", "/nonexistent-key.pem", *SITE_ARGS))
    assert "--key /nonexistent-key.pem: no such file" in line
    assert str(certs.cert) not in line


def test_key_not_pem(certs: DevCerts, tmp_path: Path) -> None:
    bad = tmp_path / "bad-key.pem"
    bad.write_text("this is not a PEM private key\n")
    assert_usage_error(run_cli("--bind", "127.0.0.1:0", "--cert", str(certs.cert), "--key", str(bad),
                               *SITE_ARGS), "cannot load certificate", str(bad))


def test_cert_is_a_key(certs: DevCerts) -> None:
    assert_usage_error(run_cli("--bind", "127.0.0.1:0", "--cert", str(certs.key), "--key", str(certs.key),
                               *SITE_ARGS), "cannot load certificate")


def test_cert_and_key_do_not_match(certs: DevCerts, tmp_path: Path) -> None:
    """A key from another pair (here: the CA's own key) is refused, saying they must match."""
    other, _ = ensure_dev_certs(tmp_path / "other")
    for key in (other.key, certs.ca_key):
        assert_usage_error(run_cli("--bind", "127.0.0.1:0", "--cert", str(certs.cert), "--key", str(key),
                                   *SITE_ARGS), "cannot load certificate", "match")


def test_port_in_use(certs: DevCerts) -> None:
    """A port another socket listens on is reported with the address, in one line."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--bind", f"127.0.0.1:{port}", "--cert", str(certs.cert), "--key", str(certs.key),
                         *SITE_ARGS)
    assert_usage_error(result, f"cannot listen on 127.0.0.1:{port}", "in use")


def test_h2c_port_in_use(certs: DevCerts) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("--bind", "127.0.0.1:0", "--h2c-bind", f"127.0.0.1:{port}",
                         "--cert", str(certs.cert), "--key", str(certs.key), *SITE_ARGS)
    assert_usage_error(result, f"cannot listen on 127.0.0.1:{port}")


@pytest.mark.parametrize(("args", "fragments"), [
    (["--root", "/nonexistent-root"], ["--root /nonexistent-root", "no such folder"]),
    (["--templates", "/nonexistent-tpl"], ["--templates /nonexistent-tpl"]),
    (["--static", "/nonexistent-static"], ["--static /nonexistent-static"]),
    (["--alpn", "h3"], ["--alpn", "'h3'"]),
    (["--alpn", "h2,spdy"], ["--alpn", "'spdy'"]),
    (["--alpn", ","], ["--alpn"]),
    (["--bind", "nonsense"], ["bad address 'nonsense'"]),
    (["--bind", "127.0.0.1:99999"], ["bad address"]),
    (["--bind", "::1"], ["bad address", "brackets"]),
    (["--bind", "256.1.1.1:0"], ["cannot listen on 256.1.1.1:0"]),
    (["--h2c-bind", "nonsense"], ["bad address 'nonsense'"]),
    (["--log-level", "loud"], ["--log-level"]),
    (["--max-concurrent-streams", "0"], ["--max-concurrent-streams"]),
    (["--max-header-list-size", "10"], ["--max-header-list-size"]),
    (["--access-log", "/nonexistent-dir/access.log"], ["--access-log /nonexistent-dir/access.log"]),
    (["--config", "/nonexistent.toml"], ["--config /nonexistent.toml"]),
])
def test_bad_options(certs: DevCerts, args: list[str], fragments: list[str]) -> None:
    """Each bad setting: exit 2 and one line naming what to fix, no traceback."""
    result = run_cli("--bind", "127.0.0.1:0", "--cert", str(certs.cert), "--key", str(certs.key),
                     *SITE_ARGS, *args)
    assert_usage_error(result, *fragments)


@pytest.mark.parametrize("args", [["--cert", "__CERT__"], ["--key", "__KEY__"]])
def test_cert_without_key(certs: DevCerts, args: list[str]) -> None:
    args = [str(certs.cert) if a == "__CERT__" else str(certs.key) if a == "__KEY__" else a for a in args]
    assert_usage_error(run_cli("--bind", "127.0.0.1:0", *args, *SITE_ARGS), "--cert and --key go together")


def test_unwritable_certs_dir(tmp_path: Path) -> None:
    """No --cert/--key and a --certs-dir that cannot be created (a file is in the way): exit 2."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_usage_error(run_cli("--bind", "127.0.0.1:0", "--certs-dir", str(blocker / "certs"), *SITE_ARGS,
                               cwd=tmp_path), "--certs-dir", "cannot write certificates")
    assert_usage_error(run_cli("cert", "--certs-dir", str(blocker / "certs"), cwd=tmp_path),
                       "cannot write certificates")


# -- TOML --------------------------------------------------------------------------------------------

def start_capturing(args: list[str], tmp_path: Path, name: str) -> tuple[ServerProcess, Path]:
    """conftest's start_process, with standard output (the access log's "-") kept in a file."""
    out = tmp_path / f"{name}.stdout"
    return start_process(args, stdout=out), out


def test_config_file_and_override(certs: DevCerts, tmp_path: Path, processes: list[ServerProcess],
                                  verify) -> None:
    """--config sets options (Server header, access log off); a command-line option wins over it."""
    toml = tmp_path / "site.toml"
    toml.write_text(f'server-name = "tomltest"\naccess-log = "off"\nbind = ["127.0.0.1:0"]\n'
                    f'cert = "{certs.cert}"\nkey = "{certs.key}"\n'
                    f'templates = "{TEMPLATES}"\nstatic = "{STATIC}"\n')
    from_toml, toml_out = start_capturing(["--config", str(toml)], tmp_path, "toml")
    processes.append(from_toml)
    overridden, cli_out = start_capturing(["--config", str(toml), "--server-name", "cli",
                                           "--access-log", "-"], tmp_path, "cli")
    processes.append(overridden)
    with httpx.Client(verify=verify, headers={"user-agent": "cli-test"}) as client:
        r = client.get(f"https://localhost:{from_toml.port}/about")
        assert (r.status_code, r.headers["server"]) == (200, "tomltest")
        r = client.get(f"https://localhost:{overridden.port}/about")
        assert (r.status_code, r.headers["server"]) == (200, "cli")
    deadline = time.monotonic() + 2
    while "GET /about" not in cli_out.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert re.search(r'"GET /about HTTP/1\.1" 200 \d+ "-" "cli-test"', cli_out.read_text())
    assert toml_out.read_text() == ""  # access-log = "off"


def test_config_unknown_key(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text('server-name = "x"\nlisten = "127.0.0.1:0"\n')
    assert_usage_error(run_cli("--config", str(toml)), str(toml), "unknown option 'listen'")


def test_config_bad_value_type(tmp_path: Path) -> None:
    toml = tmp_path / "bad.toml"
    toml.write_text('bind = "127.0.0.1:0"\n')
    assert_usage_error(run_cli("--config", str(toml)), "bind must be a list of strings")


# -- startup line, dev certificates ----------------------------------------------------------------

def test_startup_line_names_urls_and_protocols(spawn_server: Callable[..., ServerProcess]) -> None:
    """The startup line says what is served, where, and over which protocols."""
    proc = spawn_server("--h2c-bind", "127.0.0.1:0")
    line = next(x for x in proc.stderr_lines if " serving " in x)
    assert f"https://127.0.0.1:{proc.port}/ (h2, http/1.1)" in line
    h2c = re.search(r"http://127\.0\.0\.1:(\d+)/ \(h2c, http/1\.1\)", line)
    assert h2c, line
    assert f"{TEMPLATES}/ and {STATIC}/" in line
    r = httpx.get(f"http://127.0.0.1:{h2c.group(1)}/about")
    assert r.content == ABOUT


def test_startup_line_alpn_h2_only(spawn_server: Callable[..., ServerProcess], ca_file: str) -> None:
    """--alpn h2 is reflected in the startup line and in what curl negotiates."""
    proc = spawn_server("--alpn", "h2")
    assert any(f"https://127.0.0.1:{proc.port}/ (h2)" in x for x in proc.stderr_lines), proc.stderr_lines
    body, version = curl(f"https://localhost:{proc.port}/about", ca_file)
    assert (body, version) == (ABOUT, "2")


def test_serve_subcommand_and_root(spawn_server: Callable[..., ServerProcess], tmp_path: Path,
                                   ca_file: str) -> None:
    """`--root DIR` serves that folder and the startup line names it."""
    (tmp_path / "index.html").write_text("<p>root mode</p>\n")
    proc = spawn_server("--root", str(tmp_path))
    assert any(f"serving {tmp_path} on " in x for x in proc.stderr_lines)
    body, _ = curl(f"https://localhost:{proc.port}/", ca_file)
    assert body == b"<p>root mode</p>\n"


def test_dev_certificates_made_reused_and_remade(tmp_path: Path, processes: list[ServerProcess]) -> None:
    """Without --cert/--key the server makes a CA and leaf under --certs-dir, says so, and curl verifies
    it with the CA; a second start reuses the same files; `h2serve cert` makes them anew."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    certs_dir = tmp_path / "devcerts"
    args = ["--bind", "127.0.0.1:0", "--certs-dir", str(certs_dir), *SITE_ARGS]
    names = ("ca.pem", "cert.pem", "key.pem")

    first = start_process(args, cwd=cwd)
    processes.append(first)
    assert all((certs_dir / n).is_file() for n in names)
    said = "".join(first.stderr_lines)
    assert "made a development CA" in said
    assert f"curl --cacert {certs_dir}/ca.pem" in said
    body, version = curl(f"https://localhost:{first.port}/about", certs_dir / "ca.pem")
    assert (body, version) == (ABOUT, "2")
    made = {n: (certs_dir / n).read_bytes() for n in names}
    first.stop()
    assert not (cwd / "certs").exists()  # nothing written to the default place

    second = start_process(args, cwd=cwd)
    processes.append(second)
    assert "made a development CA" not in "".join(second.stderr_lines)
    assert {n: (certs_dir / n).read_bytes() for n in names} == made
    body, _ = curl(f"https://localhost:{second.port}/about", certs_dir / "ca.pem")
    assert body == ABOUT
    second.stop()

    result = run_cli("cert", "--certs-dir", str(certs_dir), cwd=cwd)
    assert result.returncode == 0, result.stderr
    assert str(certs_dir / "ca.pem") in result.stdout
    for n in names:
        assert (certs_dir / n).read_bytes() != made[n], n
    third = start_process(args, cwd=cwd)
    processes.append(third)
    body, _ = curl(f"https://localhost:{third.port}/about", certs_dir / "ca.pem")
    assert body == ABOUT
    old_ca = tmp_path / "old-ca.pem"
    old_ca.write_bytes(made["ca.pem"])
    stale = subprocess.run(["curl", "-sS", "--cacert", str(old_ca), f"https://localhost:{third.port}/"],
                           capture_output=True, timeout=10)
    assert stale.returncode == 60  # the old CA no longer verifies the new leaf


def test_a_server_given_its_certificate_never_loads_cryptography(spawn_server, verify, tmp_path):
    """`cryptography` (some 14 MiB of every process that imports it) is for making development
    certificates only: with --cert/--key it is never mapped; without, it is."""
    given = spawn_server()
    assert httpx.get(f"https://localhost:{given.port}/", verify=verify).status_code == 200
    assert not _maps_cryptography(given.proc.pid)
    dev = start_process(["--bind", "127.0.0.1:0", "--certs-dir", str(tmp_path / "dev"),
                         "--templates", str(TEMPLATES), "--static", str(STATIC)])
    try:
        ca = ssl.create_default_context(cafile=str(tmp_path / "dev" / "ca.pem"))
        assert httpx.get(f"https://localhost:{dev.port}/", verify=ca).status_code == 200
        assert _maps_cryptography(dev.proc.pid)
    finally:
        dev.stop()


def _maps_cryptography(pid: int) -> bool:
    return "/cryptography/" in Path(f"/proc/{pid}/maps").read_text()
