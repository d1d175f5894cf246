import httpx


def test_h2_and_h1(server, verify):
    with httpx.Client(http2=True, verify=verify) as client:
        r = client.get(server.url + "/")
        assert r.http_version == "HTTP/2"
        assert r.status_code == 200
        assert "<title>h2serve demo</title>" in r.text
    with httpx.Client(http2=False, verify=verify) as client:
        r = client.get(server.url + "/static/css/site.css")
        assert r.http_version == "HTTP/1.1"
        assert r.headers["content-type"] == "text/css; charset=utf-8"
