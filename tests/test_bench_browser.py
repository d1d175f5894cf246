"""The pure parts of the browser benchmark (benchmarks/browser.py): the nginx and h2o configs, the
medians, the table and the targets, and the hero site; no browser, no server."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

from benchmarks import browser, sites


def test_nginx_config_serves_the_site_over_tls_and_h2(tmp_path: Path) -> None:
    conf = browser.nginx_config(tmp_path, 8443, Path("/s/pages"), Path("/s/static"),
                                Path("/c/cert.pem"), Path("/c/key.pem"), root_user=True)
    assert "listen 127.0.0.1:8443 ssl http2;" in conf
    assert "ssl_certificate /c/cert.pem;" in conf and "ssl_certificate_key /c/key.pem;" in conf
    assert "root /s/pages;" in conf and "alias /s/static/;" in conf
    assert "http2_push" not in conf and "user root root;" in conf
    assert "gzip on;" in conf and "text/css application/javascript" in conf  # compresses as we do
    assert f"pid {tmp_path / 'nginx.pid'};" in conf
    assert conf.count("{") == conf.count("}")
    assert "user root" not in browser.nginx_config(tmp_path, 1, Path("/p"), Path("/s"),
                                                   Path("/c"), Path("/k"))


def test_h2o_config_serves_the_site_over_tls(tmp_path: Path) -> None:
    conf = browser.h2o_config(tmp_path, 9443, Path("/s/pages"), Path("/s/static"),
                              Path("/c/cert.pem"), Path("/c/key.pem"))
    lines = conf.splitlines()
    assert "  port: 9443" in lines and "    certificate-file: /c/cert.pem" in lines
    assert '  "localhost:9443":' in lines
    assert lines.index('      "/static":') < lines.index('      "/":')  # the longer path first
    assert "        file.dir: /s/static" in lines and "        file.dir: /s/pages" in lines
    assert not conf.startswith("user:") and "compress: ON" in lines
    assert browser.h2o_config(tmp_path, 1, Path("/p"), Path("/s"), Path("/c"), Path("/k"),
                              root_user=True).startswith("user: root\n")


def _cells() -> list[browser.Cell]:
    def cell(server: str, fcp: list[float], lcp: float = 900, load: float = 1000) -> browser.Cell:
        return browser.Cell("hero", 2.0, server, [
            {"fcp": f, "lcp": lcp, "dcl": f - 5, "load": load} for f in fcp])
    return [cell("h2serve", [300, 100, 200], lcp=800, load=1040), cell("h2serve-h1", [250, 260, 270]),
            cell("nginx", [400, 400, 500]), cell("h2serve-prio-off", [300, 300, 300])]


def test_medians_table_and_targets() -> None:
    cells = _cells()
    assert cells[0].median("fcp") == 200
    assert browser.Cell("x", None, "s", [{"fcp": None}]).median("fcp") is None
    text = browser.table(cells)
    assert text.splitlines()[0].startswith("| site | bandwidth | server | loads | FCP | LCP |")
    assert "| hero | 2 Mbit/s | h2serve | 3 | 200 | 800 | 195 | 1040 |" in text
    cells[1].failures.append("timeout")
    assert "| 3 (1 failed) |" in browser.table(cells)
    lines = browser.target_lines(cells, 2.0)
    assert "- hero, FCP over h2 no later than h2serve's own HTTP/1.1: x0.77 (met)" in lines
    assert "- hero, FCP at most 0.7x nginx's: x0.50 (met)" in lines
    assert "- hero, FCP at most 0.7x h2o's: not measured" in lines
    assert "- hero, FCP with priorities at most 0.6x --priorities off: x0.67 (missed)" in lines
    assert "- hero, hero LCP no later than nginx's: x0.89 (met)" in lines
    assert "- hero, load event no later than 1.05x --priorities off: x1.04 (met)" in lines
    assert browser.bandwidth_label(None) == "no cap"
    assert browser.parse_mbits("none,10,2") == [None, 10.0, 2.0]


def test_hero_site_has_a_decodable_hero_below_blocking_css_and_js(tmp_path: Path) -> None:
    site = sites.make_site("hero", tmp_path)
    html = (site.pages / "index.html").read_text()
    head, body = html.split("</head>")
    assert '<link rel="stylesheet" href="/static/css/main.css">' in head
    assert '<script src="/static/js/app.js"></script>' in head  # neither async nor defer
    assert body.count("<img ") == 25 and body.index("hero.png") < body.index("thumb0.png")
    size = lambda p: (site.static / p).stat().st_size  # noqa: E731
    assert size("css/main.css") == 40 * 1024 and size("js/app.js") == 60 * 1024
    assert 120 * 1024 <= size("img/hero.png") < 125 * 1024
    hero = (site.static / "img/hero.png").read_bytes()
    assert hero[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", hero[16:24])
    idat_len = struct.unpack(">I", hero[33:37])[0]
    assert hero[37:41] == b"IDAT"
    assert len(zlib.decompress(hero[41:41 + idat_len])) == (width + 1) * height
    assert [p for p, _ in site.index_pushes()][:2] == ["/static/css/main.css", "/static/js/app.js"]
