"""h2serve: a standalone HTTP/2 static web server on the sans-IO libraries h2 and h11.

`Config` and `Server` are loaded when first asked for (PEP 562), so that importing a part of the
package, such as the sans-IO engines in h2serve.proto, does not load the server and asyncio with it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "Server", "__version__"]

if TYPE_CHECKING:
    from .config import Config, ConfigError
    from .server import Server


def __getattr__(name: str) -> Any:
    if name in ("Config", "ConfigError"):
        from . import config

        return getattr(config, name)
    if name == "Server":
        from .server import Server

        return Server
    raise AttributeError(f"module 'h2serve' has no attribute {name!r}")
