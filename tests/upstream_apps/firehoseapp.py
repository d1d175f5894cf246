"""A Flask app behind h2serve in the reverse-proxy tests, using Flask-Firehose as released:
`push()` in its Jinja template writes the Link header (relative URLs, a trailing ", ")."""

import os

from flask import Flask, render_template
from flask_firehose import Firehose

app = Flask(__name__, template_folder=os.path.join(os.path.dirname(__file__), "templates"))
app.secret_key = "tests only"  # Firehose keeps what it pushed in the session
Firehose(app)


@app.route("/")
def index():
    return render_template("firehose.html")
