"""upstream/hints.py in memory: the seed extensions' Link fields as they really are, and the
learned-hints memory."""

from __future__ import annotations

from h2serve.upstream.hints import Hint, LearnedHints, preloads

AUTH = b"localhost:8443"


def test_flask_http2_push_absolute_http_urls_in_one_field_are_same_origin_paths() -> None:
    field = (b"<http://localhost:8443/static/app.css>; rel=preload; as=style,"
             b"<http://localhost:8443/static/app.js>; rel=preload; as=script")
    hints = preloads([field], AUTH, b"/")
    assert [h.path for h in hints] == ["/static/app.css", "/static/app.js"]
    assert hints[0].link == b'</static/app.css>; rel="preload"; as="style"'
    assert all(h.push for h in hints)
    assert [h.kind for h in hints] == ["style", "script"]


def test_firehose_relative_urls_with_a_trailing_comma() -> None:
    field = b"</static/app.css>; as=style; rel=preload, </static/app.js>; as=script; rel=preload, "
    assert [h.path for h in preloads([field], AUTH, b"/page")] == ["/static/app.css", "/static/app.js"]


def test_several_fields_relative_targets_and_quoted_commas() -> None:
    fields = [b'<a.css>; rel="preload"; as=style; title="x, y"', b"<../b.js>; rel=preload; as=script"]
    hints = preloads(fields, AUTH, b"/dir/page?q=1")
    assert [h.path for h in hints] == ["/dir/a.css", "/b.js"]


def test_cross_origin_preload_is_passed_on_never_pushed() -> None:
    hints = preloads([b"<https://cdn.example/x.js>; rel=preload; as=script"], AUTH, b"/")
    assert hints == (Hint(b'<https://cdn.example/x.js>; rel="preload"; as="script"', None, False, "script"),)


def test_same_host_other_port_is_cross_origin() -> None:
    hints = preloads([b"<http://localhost:9000/a.css>; rel=preload; as=style"], AUTH, b"/")
    assert hints[0].path is None and not hints[0].push


def test_nopush_is_hinted_not_pushed_and_other_rels_are_ignored() -> None:
    field = b"</a.css>; rel=preload; as=style; nopush, </next>; rel=next, </c.js>; rel=\"preload prefetch\""
    hints = preloads([field], AUTH, b"/")
    assert [(h.path, h.push) for h in hints] == [("/a.css", False), ("/c.js", True)]


def test_garbage_and_duplicates() -> None:
    assert preloads([b"not a link, also not"], AUTH, b"/") == ()
    assert preloads([], AUTH, b"/") == ()
    twice = preloads([b"</a.css>; rel=preload; as=style", b"</a.css>; rel=preload; as=style"], AUTH, b"/")
    assert len(twice) == 1


def test_learned_hints_follow_forget_and_stay_bounded() -> None:
    learned = LearnedHints(size=2)
    a = preloads([b"</a.css>; rel=preload; as=style"], AUTH, b"/")
    b = preloads([b"</b.css>; rel=preload; as=style"], AUTH, b"/")
    learned.learn(AUTH, b"/", a)
    assert learned.get(b"LOCALHOST:8443", b"/") == a  # host case does not matter
    learned.learn(AUTH, b"/", b)
    assert learned.get(AUTH, b"/") == b  # the memory follows the app
    learned.learn(AUTH, b"/x", a)
    learned.get(AUTH, b"/")  # used: the newest
    learned.learn(AUTH, b"/y", a)
    assert len(learned) == 2 and learned.get(AUTH, b"/x") == () and learned.get(AUTH, b"/") == b
    learned.learn(AUTH, b"/", ())
    assert learned.get(AUTH, b"/") == ()  # an answer without preloads forgets
    assert learned.get(b"other:1", b"/y") == ()  # per site
