"""The command line, generated from `Config`.

    h2serve [serve] [OPTIONS]     serve the site (the default command)
    h2serve cert [--certs-dir D]  make the development CA and certificate anew
    h2serve manifest [SITE]       write a push manifest from the site's HTML

Options given on the command line override those of `--config FILE.toml`, which override defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, ConfigError
from .options import GROUPS
from .proto.versions import check_versions
from .push.manifest import default_manifest_path
from .push.scan import scan_site
from .site.handler import Site

DESCRIPTION = """\
A static-site web server for HTTP/2 (with server push and 103 Early Hints) and HTTP/1.1.
Pages come from --templates (/ is index.html, /about is about.html), assets from --static
(under /static/), or the whole site from one --root folder."""

EPILOG = """\
commands:
  serve          serve the site (the default)
  cert           make the development CA and certificate under --certs-dir anew
  manifest       write push_manifest.json from the site's HTML (h2serve manifest --help)

examples:
  h2serve                                   demo site on https://localhost:8443/ (dev certificate)
  h2serve --root ./public --bind 0.0.0.0:443 --cert fullchain.pem --key privkey.pem
  curl --http2 --cacert certs/ca.pem https://localhost:8443/"""

_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)


def build_parser() -> argparse.ArgumentParser:
    """One option per `Config` field: flag, type, help and default all come from the field, and
    `--help` shows them in sections (options.GROUPS), in that order."""
    parser = argparse.ArgumentParser(
        prog="h2serve", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"h2serve {__version__}")
    parser.add_argument("--config", metavar="TOML", help="read options from this TOML file first")
    sections = {name: parser.add_argument_group(name, about) for name, about in GROUPS.items()}
    for f in dataclasses.fields(Config):
        if not f.metadata["table"]:  # [[redirect]] and the like: TOML tables only
            add_config_option(sections[f.metadata["group"]], f.name)
    return parser


def add_config_option(parser: argparse._ActionsContainer, name: str) -> None:
    """Config field `name`'s option, on `parser` or one of its argument groups: flag, type, help and
    default as `h2serve --help` shows them, for the subcommands too. An option not given is absent
    from the parsed namespace (`default=SUPPRESS`), so that Config's own default applies."""
    _add_option(parser, _FIELDS[name], _HINTS[name])


def _add_option(parser: argparse._ActionsContainer, f: dataclasses.Field[Any], hint: Any) -> None:
    meta = f.metadata
    flag = meta["flag"] or "--" + f.name.replace("_", "-")
    default: Any = f.default
    kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "metavar": meta["metavar"]}
    help_text = meta["help"]
    if hint is bool:
        kwargs["action"] = argparse.BooleanOptionalAction
        del kwargs["metavar"]
        help_text += f" (default: {'on' if default else 'off'})"
    elif typing.get_origin(hint) is tuple and meta["list_sep"]:
        sep = meta["list_sep"]
        kwargs["type"] = lambda text, sep=sep: [x.strip() for x in text.split(sep) if x.strip()]
        help_text += f" (default: {sep.join(default)})"
    elif typing.get_origin(hint) is tuple:
        kwargs["action"] = "append"
        if default:
            help_text += f" (default: {', '.join(default)})"
    else:
        kwargs["type"] = hint if hint in (int, float) else str
        if default is not None:
            help_text += f" (default: {default})"
    parser.add_argument(flag, help=help_text, **kwargs)
    if meta["off_flag"]:
        parser.add_argument("--no-" + flag[2:], dest=f.name, action="store_const", const="",
                            default=argparse.SUPPRESS, help=f"turn {flag} off")


def parse_config(argv: Sequence[str]) -> Config:
    """Defaults, then the TOML file, then the command line; raises ConfigError."""
    args = vars(build_parser().parse_args(argv))
    toml_path = args.pop("config", None)
    if toml_path is not None:
        return Config.from_toml(toml_path, **args)
    return Config(**args)


def cert_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="h2serve cert", description="Make the development CA and localhost certificate anew.")
    add_config_option(parser, "certs_dir")
    config = Config(**vars(parser.parse_args(argv)))
    from .net.certs import ensure_dev_certs, trust_hint  # cryptography only when needed: see server.py

    try:
        certs, _ = ensure_dev_certs(config.certs_dir, force=True)
    except OSError as e:
        print(f"h2serve: cannot write certificates in {config.certs_dir}: {e.strerror}", file=sys.stderr)
        return 2
    print(trust_hint(certs))
    return 0


def manifest_command(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="h2serve manifest",
        description="Write a push manifest from the site's HTML pages: their stylesheets, scripts, "
                    "<link rel=preload|modulepreload>, images, and the fonts of their local CSS.")
    parser.add_argument("site", nargs="?", metavar="SITE",
                        help="a folder served as the whole site (like --root); without it, "
                             "--templates and --static")
    add_config_option(parser, "templates")
    add_config_option(parser, "static")
    parser.add_argument("-o", "--output", metavar="FILE",
                        help="where to write it, '-' for standard output (default: "
                             "push_manifest.json at the site root)")
    options = vars(parser.parse_args(argv))
    output = options.pop("output")
    try:
        config = Config(root=options.pop("site"), **options)
        site = Site.from_folders(root=config.root, templates=config.templates, static=config.static)
    except ConfigError as e:
        print(f"h2serve manifest: error: {e}", file=sys.stderr)
        return 2
    text = json.dumps(scan_site(site), indent=2) + "\n"
    if output == "-":
        sys.stdout.write(text)
        return 0
    out = Path(output) if output else default_manifest_path(config)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as e:
        print(f"h2serve manifest: error: cannot write {out}: {e.strerror}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "cert":
        return cert_command(argv[1:])
    if argv and argv[0] == "manifest":
        return manifest_command(argv[1:])
    if argv and argv[0] == "serve":
        argv = argv[1:]
    try:
        config = parse_config(argv)
        check_versions()  # an h2 outside the tested range: one line here, not a failure per connection
    except ConfigError as e:
        print(f"h2serve: error: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log_level)

    def reread() -> Config:  # SIGHUP: the TOML file again, the command line on top (reload.py)
        return parse_config(argv)

    if config.worker_count() > 1:
        from .workers import supervise

        return supervise(config, reread)
    from .server import run

    return run(config, reread=reread)


def setup_logging(level: str, *, worker: bool = False) -> None:
    """Server log lines on standard error; a worker's name its process (`h2serve[4242]:`), so the
    operator can tell the workers apart."""
    name = "%(name)s[%(process)d]" if worker else "%(name)s"
    logging.basicConfig(
        level=level.upper(), stream=sys.stderr, force=True,
        format=f"%(asctime)s %(levelname)s {name}: %(message)s", datefmt="%Y-%m-%d %H:%M:%S")


if __name__ == "__main__":
    sys.exit(main())
