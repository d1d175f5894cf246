"""One source of defaults: the components built from a `Config` (the site's `Policy`, the
`Pusher`) take Config's defaults when built without one, and every Config setting when built with one.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from conftest import STATIC, TEMPLATES

from h2serve.config import Config, default_of
from h2serve.push.plan import Pusher
from h2serve.server import Server
from h2serve.site.handler import Policy, Site

POLICY_FIELDS = {"html_cache": "html_cache_control", "static_cache": "static_cache_control",
                 "immutable_cache": "immutable_cache_control", "list_dirs": "list_dirs",
                 "dotfiles": "serve_dotfiles"}
PUSHER_SETTINGS = {"push": "push", "preload_links": "preload_links", "early_hints": "early_hints",
                   "cookie_name": "push_cookie"}


def test_default_of_is_configs_default() -> None:
    config = Config()
    for f in dataclasses.fields(Config):
        assert default_of(f.name) == getattr(config, f.name), f.name


def test_policy_defaults_are_configs() -> None:
    """`Policy()` (a Site built without one) serves as a default Config would."""
    assert Policy() == Policy.from_config(Config())
    for ours, option in POLICY_FIELDS.items():
        assert getattr(Policy(), ours) == default_of(option), ours


def test_policy_from_config() -> None:
    """Every policy option reaches the Policy, and the server builds its site's policy from its Config."""
    config = Config(html_cache_control="private", static_cache_control="max-age=1",
                    immutable_cache_control="max-age=2", list_dirs=True, serve_dotfiles=True,
                    templates=str(TEMPLATES), static=str(STATIC))
    policy = Policy.from_config(config)
    for ours, option in POLICY_FIELDS.items():
        assert getattr(policy, ours) == getattr(config, option), ours
        assert getattr(policy, ours) != default_of(option), ours
    assert Server(config)._site().policy == policy


def test_pusher_defaults_are_configs(tmp_path: Path) -> None:
    site = Site.from_folders(root=str(tmp_path), templates="", static="")
    default, built = Pusher(site), Pusher.from_config(Config(), site)
    for ours, option in PUSHER_SETTINGS.items():
        assert getattr(default, ours) == getattr(built, ours) == default_of(option), ours


def test_pusher_from_config(tmp_path: Path) -> None:
    """Every push option reaches the Pusher; --no-push-cookie ("") is no cookie at all."""
    site = Site.from_folders(root=str(tmp_path), templates="", static="")
    config = Config(push=False, preload_links=False, early_hints="all", push_cookie="seen")
    pusher = Pusher.from_config(config, site)
    assert (pusher.push, pusher.preload_links, pusher.early_hints, pusher.cookie_name) == (
        False, False, "all", "seen")
    assert Pusher.from_config(dataclasses.replace(config, push_cookie=""), site).cookie_name is None
