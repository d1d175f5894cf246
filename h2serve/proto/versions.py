"""The releases of h2 and its kin that h2serve is tested with, checked before it serves.

The HTTP/2 engine extends private parts of h2 that change between minor releases, so an h2 outside
the tested range does not fail at import but on every connection, with a traceback that names no
cause. pip keeps the ranges only when it installs h2serve, not when something else later installs
another h2 beside it; so `python -m h2serve` checks them at start-up and says, in one line, which
package is off and the command that fixes it. The ranges are pyproject.toml's own
(tests/test_versions.py keeps the two equal); the installed versions are read from the packages'
metadata, without importing them.
"""

from __future__ import annotations

import re
from importlib import metadata

from ..config import ConfigError

# Each package's lowest supported release and the first one not supported (pyproject.toml's ranges).
SUPPORTED: dict[str, tuple[str, str]] = {
    "h2": ("4.3", "4.5"),
    "hpack": ("4.1", "4.3"),
    "hyperframe": ("6.1", "6.2"),
    "h11": ("0.16", "0.17"),
}


def spec(name: str) -> str:
    """The supported range of `name` as a requirement specifier: '>=4.3,<4.5'."""
    low, high = SUPPORTED[name]
    return f">={low},<{high}"


def release(version: str) -> tuple[int, ...]:
    """The leading numbers of a version: '4.3.0' -> (4, 3, 0), '4.5.0rc1' -> (4, 5, 0)."""
    numbers = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(n) for n in numbers.group().split(".")) if numbers else ()


def check_versions() -> None:
    """Raise ConfigError naming the first package installed outside its range (or missing)."""
    for name, (low, high) in SUPPORTED.items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            installed = None
        if installed is None or not release(low) <= release(installed) < release(high):
            found = f"{name} {installed} is installed" if installed else f"{name} is not installed"
            raise ConfigError(f"{found}; h2serve needs {name} {spec(name)}: "
                              f"pip install '{name}{spec(name)}'")
