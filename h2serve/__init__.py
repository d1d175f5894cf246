"""h2serve: a standalone HTTP/2 static web server on the sans-IO libraries h2 and h11."""

__version__ = "0.1.0"

from .config import Config, ConfigError
from .server import Server

__all__ = ["Config", "ConfigError", "Server", "__version__"]
