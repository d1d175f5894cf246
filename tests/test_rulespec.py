"""Site rules checked at start-up (h2serve/site/rulespec.py, config.py): every bad rule is one line
naming the table, its number and the key, and `python -m h2serve` exits 2 before serving."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from conftest import STATIC, TEMPLATES
from rulesite import htpasswd_file, make_site
from test_cli import assert_usage_error, run_cli

from h2serve.config import Config, ConfigError
from h2serve.site.rulespec import AuthRule, HeaderRule, RedirectRule


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_site(tmp_path / "site")


def check_toml(tmp_path: Path, root: Path, text: str, *fragments: str) -> str:
    """Start the server on a TOML file holding `text`: exit 2, one line with `fragments`."""
    config = tmp_path / "h2serve.toml"
    config.write_text(f'root = "{root}"\nbind = ["127.0.0.1:0"]\n' + text)
    return assert_usage_error(run_cli("--config", str(config)), *fragments)


BAD_TOML = [
    # redirects
    ('[[redirect]]\nfrom = "/a"\nto = "/b"\nstatus = 300\n', "[[redirect]] #1 status", "300"),
    ('[[redirect]]\nfrom = "/a"\nto = "/b"\n[[redirect]]\nfrom = "a"\nto = "/b"\n', "[[redirect]] #2 from"),
    ('[[redirect]]\nfrom = "/a/*/b"\nto = "/b"\n', "[[redirect]] #1 from"),
    ('[[redirect]]\nfrom = "/a"\nto = "/b\\r\\nSet-Cookie: x=1"\n', "[[redirect]] #1 to"),
    ('[[redirect]]\nfrom = "/a"\nto = "posts"\n', "[[redirect]] #1 to", "absolute"),
    ('[[redirect]]\nfrom = "/a"\nto = "javascript:alert(1)"\n', "[[redirect]] #1 to"),
    ('[[redirect]]\nfrom = "/a"\nto = "/b/*"\n', "[[redirect]] #1 to", "has a *"),
    ('[[redirect]]\nfrom = "/docs/*"\nto = "/docs/v2/*"\n', "[[redirect]] #1 to", "loop"),
    ('[[redirect]]\nfrom = "/a"\n', "[[redirect]] #1", "to is missing"),
    ('[[redirect]]\nfrom = "/a"\nto = "/b"\ncode = 302\n', "[[redirect]] #1", "unknown key 'code'"),
    ('[[redirect]]\nfrom = "/a"\nto = "/b"\nstatus = "301"\n', "[[redirect]] #1 status", "int"),
    ('redirect = "/a -> /b"\n', "redirect", "array of tables"),
    # headers
    ('[[headers]]\npath = "/**"\nset = { X-Test = "a\\r\\nb" }\n', "[[headers]] #1 set", "CR, LF"),
    ('[[headers]]\npath = "/**"\nset = { X-Test = "a\\nb" }\n', "[[headers]] #1 set", "CR, LF"),
    ('[[headers]]\npath = "/**"\nset = { X-Test = "a\\u0000b" }\n', "[[headers]] #1 set"),
    ('[[headers]]\npath = "/**"\nset = { Connection = "close" }\n', "[[headers]] #1 set", "connection"),
    ('[[headers]]\npath = "/**"\nset = { Transfer-Encoding = "chunked" }\n', "[[headers]] #1 set"),
    ('[[headers]]\npath = "/**"\nset = { Content-Length = "1" }\n', "[[headers]] #1 set"),
    ('[[headers]]\npath = "/**"\nset = { ":status" = "200" }\n', "[[headers]] #1 set", "pseudo-header"),
    ('[[headers]]\npath = "/**"\nset = { "X Bad" = "1" }\n', "[[headers]] #1 set", "not a valid header name"),
    ('[[headers]]\npath = "/**"\nset = { X-A = "1", x-a = "2" }\n', "[[headers]] #1 set", "twice"),
    ('[[headers]]\npath = "static/**"\nset = { X-A = "1" }\n', "[[headers]] #1 path"),
    ('[[headers]]\npath = "/**"\nset = {}\n', "[[headers]] #1 set"),
    ('[[headers]]\npath = "/**"\n', "[[headers]] #1", "set is missing"),
    # fallback and CORS
    ('fallback = "app.html"\n', "--fallback app.html", "no such file"),
    ('fallback = "../etc/passwd"\n', "--fallback"),
    ('cors-origins = ["https://app.example.com/"]\n', "--cors-origin", "https://app.example.com/"),
    ('cors-origins = ["app.example.com"]\n', "--cors-origin"),
    ('cors-origins = "https://app.example.com"\n', "cors-origins", "list"),
    ('security-headers = "no"\n', "security-headers", "true or false"),
]


@pytest.mark.parametrize("case", BAD_TOML, ids=lambda case: case[1])
def test_bad_rules_stop_startup_with_one_line(tmp_path: Path, root: Path, case: tuple[str, ...]) -> None:
    text, *fragments = case
    check_toml(tmp_path, root, text, *fragments)


def test_bad_auth_rules(tmp_path: Path, root: Path) -> None:
    md5 = tmp_path / "md5.htpasswd"
    md5.write_text("ann:$apr1$abc$0123456789abcdefghijkl\n")
    check_toml(tmp_path, root, f'[[auth]]\npath = "/p/**"\nhtpasswd = "{md5}"\n',
               "[[auth]] #1 htpasswd", "line 1", "'ann'", "MD5", "htpasswd -B")
    sha = tmp_path / "sha.htpasswd"
    sha.write_text("# users\n\nann:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n")
    check_toml(tmp_path, root, f'[[auth]]\npath = "/p/**"\nhtpasswd = "{sha}"\n', "line 3", "SHA-1")
    plain = tmp_path / "plain.htpasswd"
    plain.write_text("ann:secret\n")
    check_toml(tmp_path, root, f'[[auth]]\npath = "/p/**"\nhtpasswd = "{plain}"\n', "line 1", "bcrypt")
    check_toml(tmp_path, root, f'[[auth]]\npath = "/p/**"\nhtpasswd = "{tmp_path}/none"\n',
               "[[auth]] #1 htpasswd", "No such file")
    good = htpasswd_file(tmp_path, {"ann": "pw"})
    check_toml(tmp_path, root, f'[[auth]]\npath = "/p/**"\nhtpasswd = "{good}"\nrealm = "a\\"b"\n',
               "[[auth]] #1 realm")
    check_toml(tmp_path, root, '[[auth]]\npath = "/p/**"\n', "[[auth]] #1", "htpasswd is missing")


def test_cli_forms(tmp_path: Path, root: Path) -> None:
    assert_usage_error(run_cli("--root", str(root), "--fallback", "shell.html"), "--fallback", "no such file")
    assert_usage_error(run_cli("--root", str(root), "--cors-origin", "https://a.example/x"), "--cors-origin")


def test_embedding_code_may_give_specs_or_tables(tmp_path: Path) -> None:
    """Config takes the specs themselves (checked the same) or tables, and keeps them as tuples."""
    users = htpasswd_file(tmp_path, {"ann": "pw"})
    config = Config(templates=str(TEMPLATES), static=str(STATIC),
                    redirect=[RedirectRule("/a", "/b", 302), {"from": "/c/*", "to": "/d/*"}],
                    headers=[HeaderRule("/**", (("X-A", "1"),))],
                    auth=[AuthRule("/p/**", str(users))])
    assert config.redirect == (RedirectRule("/a", "/b", 302), RedirectRule("/c/*", "/d/*", 301))
    assert config.headers == (HeaderRule("/**", (("x-a", "1"),)),)
    assert config.auth[0].users[0][0] == "ann" and config.auth[0].realm == "Restricted"
    with pytest.raises(ConfigError, match=r"\[\[headers\]\] #1 set"):
        Config(headers=[HeaderRule("/**", (("X-A", "a\r\nb"),))])
    with pytest.raises(ConfigError, match=r"\[\[redirect\]\] #1 status"):
        Config(redirect=[RedirectRule("/a", "/b", 200)])


def test_auth_without_bcrypt_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    users = htpasswd_file(tmp_path, {"ann": "pw"})
    monkeypatch.setitem(sys.modules, "bcrypt", None)  # as if the `auth` extra were not installed
    with pytest.raises(ConfigError, match=re.escape("[[auth]] #1: bcrypt is not installed (pip install "
                                                    "'h2serve[auth]')")):
        Config(templates=str(TEMPLATES), static=str(STATIC), auth=[{"path": "/**", "htpasswd": str(users)}])


def test_the_readme_example_is_a_valid_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's complete example under "Site rules" loads as it is written (beside its site folder
    and htpasswd file), so the documentation cannot drift from the interface."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("\n## Site rules\n", 1)[1]
    example = section.split("```toml\n", 1)[1].split("```", 1)[0]
    make_site(tmp_path / "public")
    htpasswd_file(tmp_path, {"ann": "pw"}).rename(tmp_path / "users.htpasswd")
    (tmp_path / "h2serve.toml").write_text(example)
    monkeypatch.chdir(tmp_path)
    config = Config.from_toml("h2serve.toml")
    assert [r.source for r in config.redirect] == ["/blog/*", "/old-docs"]
    assert config.redirect[0].status == 308 and len(config.headers) == 3
    assert config.auth[0].realm == "Staff only" and config.fallback == "index.html"
