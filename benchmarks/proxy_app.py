"""The application of the reverse-proxy benchmark (benchmarks/proxy.py): a Flask app whose page
takes 200 ms to render and names 20 assets, each announced in a `Link: rel=preload` header as
flask-http2-push would write it from a manifest. Its static folder is `PROXY_STATIC` (the same
files h2serve and nginx serve from disk in front of it; gunicorn alone serves them through Flask).
"""

import os
import time

from flask import Flask, Response

STATIC = os.environ.get("PROXY_STATIC", "static")
RENDER_S = float(os.environ.get("PROXY_RENDER_MS", "200")) / 1000
app = Flask(__name__, static_folder=STATIC, static_url_path="/static")
app.config["SEND_FILE_MAX_AGE_DEFAULT"] = 3600  # cacheable, as an early-hinted preload must be

ASSETS = sorted(os.listdir(STATIC))
KINDS = {".css": "style", ".js": "script", ".png": "image"}


def _page() -> str:
    head, body = [], []
    for name in ASSETS:
        if name.endswith(".css"):
            head.append(f'<link rel="stylesheet" href="/static/{name}">')
        elif name.endswith(".js"):
            head.append(f'<script src="/static/{name}"></script>')
        else:
            body.append(f'<img src="/static/{name}" width="64" height="64" alt="">')
    return ("<!doctype html><html><head><meta charset=utf-8><title>proxy bench</title>"
            + "".join(head) + "</head><body><h1>Rendered by the application</h1><p>"
            + "lorem ipsum " * 200 + "</p>" + "".join(body) + "</body></html>")


PAGE = _page()
LINKS = ",".join(f"</static/{n}>; rel=preload; as={KINDS[os.path.splitext(n)[1]]}" for n in ASSETS)


@app.route("/")
def index() -> Response:
    time.sleep(RENDER_S)  # the application thinks: templates, queries
    response = Response(PAGE, mimetype="text/html")
    response.headers["Link"] = LINKS
    response.headers["Cache-Control"] = "no-cache"
    return response
