"""A Flask app behind h2serve in the reverse-proxy tests, using flask-http2-push as released.

Run by gunicorn (tests/conftest.py `upstream_app`); `PUSH_MANIFEST` names its push_manifest.json.
Besides the index view that the extension decorates, it has the views the proxy tests need: a
slow page with preload Links, uploads hashed as they stream in (quickly or slowly), the request
headers echoed back, an answer that never comes, Links that change on request, and an answer
carrying the response headers the request names (`/answer?h=Name:value`, repeatable).
"""

import hashlib
import json
import os
import time

import flask_http2_push
from flask import Flask, Response, jsonify, request
from flask_http2_push import http2push

MANIFEST = os.environ.get("PUSH_MANIFEST", "push_manifest.json")


class _Py2Dict(dict):
    """flask-http2-push 0.0.3 is Python 2 code: its manifest reader calls `dict.iteritems`."""

    def iteritems(self):
        return iter(self.items())


class _Json:
    @staticmethod
    def loads(text):
        return json.loads(text, object_hook=_Py2Dict)


flask_http2_push.json = _Json  # the one shim: the extension's own code is used as it is

app = Flask(__name__)
state = {"links": "</static/app.css>; rel=preload; as=style"}


@app.route("/")
@http2push(MANIFEST)
def index():
    return "<!doctype html><title>push app</title><link rel=stylesheet href=/static/app.css>" \
           "<script src=/static/app.js></script><p>hello from the app</p>"


@app.route("/slow")
def slow():
    time.sleep(float(request.args.get("s", "0.3")))
    response = Response("<!doctype html><title>slow</title><p>slow page</p>")
    response.headers["Link"] = state["links"]
    return response


@app.route("/links", methods=["PUT"])
def set_links():
    state["links"] = request.get_data(as_text=True)
    return "ok"


@app.route("/upload", methods=["POST", "PUT"])
def upload():
    digest = hashlib.sha256()
    pause = float(request.args.get("pause", "0"))
    size = 0
    while True:
        chunk = request.stream.read(16384 if pause else 65536)
        if not chunk:
            break
        size += len(chunk)
        digest.update(chunk)
        if pause:
            time.sleep(pause)
    return jsonify(sha256=digest.hexdigest(), size=size)


@app.route("/headers", methods=["GET", "POST"])
def headers():
    return jsonify({k.lower(): v for k, v in request.headers.items()})


@app.route("/never")
def never():
    time.sleep(20)
    return "too late"


@app.route("/big")
def big():
    block = b"0123456789abcdef" * 4096  # 64 KiB
    blocks = int(request.args.get("blocks", "64"))

    def stream():
        for _ in range(blocks):
            yield block

    return Response(stream(), mimetype="application/octet-stream")


@app.route("/answer", methods=["GET", "POST"])
def answer():
    response = Response("answered by the app")
    for pair in request.args.getlist("h"):
        name, _, value = pair.partition(":")
        response.headers.add(name, value.strip())
    return response
