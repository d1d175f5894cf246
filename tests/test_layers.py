"""The layers hold: the engines load no asyncio, and private parts of h2, hpack, hyperframe and h11
are used in h2serve/proto/compat.py only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "h2serve"
LIBRARIES = ("h2", "hpack", "hyperframe", "h11")
# Modules of those libraries that are internals, not their documented API.
PRIVATE_MODULES = {"h2.frame_buffer", "h2.stream", "h2.utilities", "h2.windows", "hpack.hpack",
                   "hpack.table", "hpack.huffman", "hpack.huffman_table", "hpack.struct"}


def test_the_engines_import_no_asyncio() -> None:
    """A fresh interpreter that imports both engines and the per-request layer has no asyncio."""
    code = ("import sys; import h2serve.proto.h2engine, h2serve.proto.h1engine, h2serve.proto.exchange; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'asyncio'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_package_still_offers_config_and_server() -> None:
    """`from h2serve import Config, Server` works, loaded on first use."""
    code = ("import sys, h2serve; assert 'asyncio' not in sys.modules; "
            "from h2serve import Config, Server, ConfigError; print(Server.__module__, Config.__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["h2serve.server", "Config"]


# Private attributes of h2, hpack and h11 objects the server needs (compat.py says why for each).
PRIVATE_ATTRIBUTES = {"_data_to_send", "_frame_dispatch_table", "_transitions", "_receive_buffer",
                      "_encode_indexed", "_encode_literal", "_encode_indexed_literal",
                      "_encode_table_size_change", "_stream_is_closed_by_end",
                      "_handle_data_on_closed_stream"}


def _private_uses(path: Path) -> list[str]:
    """Imports of a private module or name of the four libraries, and uses of their private
    attributes the server is known to need."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in LIBRARIES:
            if node.module in PRIVATE_MODULES or any(p.startswith("_") for p in node.module.split(".")):
                found.append(f"from {node.module} import ...")
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names
                      if a.name in PRIVATE_MODULES or (a.name.split(".")[0] in LIBRARIES and "._" in a.name)]
        elif isinstance(node, ast.Attribute) and node.attr in PRIVATE_ATTRIBUTES:
            found.append(node.attr)
        elif isinstance(node, ast.FunctionDef) and node.name in PRIVATE_ATTRIBUTES:
            found.append(node.name)  # an override
        elif isinstance(node, ast.Constant) and node.value in PRIVATE_ATTRIBUTES:
            found.append(node.value)  # getattr(obj, "_name")
    return found


def test_private_parts_of_the_protocol_libraries_are_used_in_compat_only() -> None:
    outside = {str(path.relative_to(PACKAGE)): uses for path in sorted(PACKAGE.rglob("*.py"))
               if path.name != "compat.py" and (uses := _private_uses(path))}
    assert outside == {}


def test_compat_is_where_they_are_used() -> None:
    """The check above is not vacuous: it finds what compat.py does use."""
    uses = _private_uses(PACKAGE / "proto" / "compat.py")
    assert {"from h2.frame_buffer import ...", "from hpack.hpack import ...", "_data_to_send",
            "_transitions", "_receive_buffer", "_encode_literal"} <= set(uses)
