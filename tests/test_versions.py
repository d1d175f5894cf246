"""The start-up check of h2, hpack, hyperframe and h11 (h2serve/proto/versions.py): its ranges are
pyproject.toml's, and an h2 outside them stops `python -m h2serve` with one line that says the fix."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from h2serve.config import ConfigError
from h2serve.proto import versions

ROOT = Path(__file__).resolve().parent.parent


def pyproject_ranges() -> dict[str, str]:
    """Each of pyproject.toml's dependencies: name -> specifier, spaces removed ('>=4.3,<4.5')."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    ranges = {}
    for dep in deps:
        m = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*([^;]*)", dep.strip())
        assert m, dep
        ranges[m.group(1).lower()] = m.group(2).replace(" ", "")
    return ranges


def test_ranges_are_pyprojects() -> None:
    ranges = pyproject_ranges()
    for name in versions.SUPPORTED:
        assert ranges.get(name) == versions.spec(name), name
    assert set(versions.SUPPORTED) == {"h2", "hpack", "hyperframe", "h11"}


def test_installed_versions_pass() -> None:
    versions.check_versions()


def fake_versions(monkeypatch: pytest.MonkeyPatch, **fake: str | None) -> None:
    """importlib.metadata.version answers `fake`'s version for those packages (None: not installed)."""
    real = importlib.metadata.version

    def version(name: str) -> str:
        if name not in fake:
            return real(name)
        answer = fake[name]
        if answer is None:
            raise importlib.metadata.PackageNotFoundError(name)
        return answer

    monkeypatch.setattr(importlib.metadata, "version", version)


def test_old_h2_named(monkeypatch: pytest.MonkeyPatch) -> None:
    fake_versions(monkeypatch, h2="4.2.0")
    with pytest.raises(ConfigError) as e:
        versions.check_versions()
    message = str(e.value)
    assert "\n" not in message
    assert message == "h2 4.2.0 is installed; h2serve needs h2 >=4.3,<4.5: pip install 'h2>=4.3,<4.5'"


@pytest.mark.parametrize(("name", "installed", "fragment"), [
    ("h2", "4.5.0", "h2 4.5.0 is installed"),  # the first release not tried
    ("h2", "5.0.0", "h2 5.0.0 is installed"),
    ("hpack", "4.0.0", "hpack 4.0.0 is installed"),
    ("h11", "0.14.0", "h11 0.14.0 is installed"),
    ("hyperframe", None, "hyperframe is not installed"),
])
def test_outside_the_range(monkeypatch: pytest.MonkeyPatch, name: str, installed: str | None,
                           fragment: str) -> None:
    fake_versions(monkeypatch, **{name: installed})
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        versions.check_versions()


@pytest.mark.parametrize("installed", ["4.3.0", "4.3.1", "4.4.1", "4.4.2rc1"])
def test_inside_the_range(monkeypatch: pytest.MonkeyPatch, installed: str) -> None:
    fake_versions(monkeypatch, h2=installed)
    versions.check_versions()


def test_cli_says_one_line_and_exits_2(tmp_path: Path) -> None:
    """The check runs right after the options are read, before anything is bound or built."""
    script = (
        "import importlib.metadata, sys\n"
        "real = importlib.metadata.version\n"
        "importlib.metadata.version = lambda name: '4.2.0' if name == 'h2' else real(name)\n"
        "from h2serve.cli import main\n"
        "sys.exit(main(['--bind', '127.0.0.1:0']))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [
        "h2serve: error: h2 4.2.0 is installed; h2serve needs h2 >=4.3,<4.5: pip install 'h2>=4.3,<4.5'"]
    assert done.stdout == ""
