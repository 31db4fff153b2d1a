"""The drawing page at ``/`` (a canvas whose PNG goes to POST /predict) and the lesson at
``/learn``; their files are in service/static."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

from service.errors import NotFound

STATIC_DIR = Path(__file__).resolve().parent / "static"
#: the page's own files; nothing else in static/ is served by this blueprint
PAGE_ASSETS = frozenset(
    {"app.js", "token.js", "style.css", "learn.js", "learn-math.js", "learn.css"}
)

# Everything the page needs comes from this server; the CSP makes "nothing from the internet" hold
# even if someone later adds a link to a CDN.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' data: blob:; script-src 'self'; style-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def create_blueprint() -> Blueprint:
    """The blueprint serving the pages at / and /learn and their assets at /page/<file>."""
    blueprint = Blueprint("page", __name__)

    def html(name: str) -> Response:
        response = send_from_directory(STATIC_DIR, name, mimetype="text/html")
        response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @blueprint.get("/")
    def index() -> Response:
        return html("index.html")

    @blueprint.get("/learn")
    def learn() -> Response:
        return html("learn.html")

    @blueprint.get("/page/<name>")
    def asset(name: str) -> Response:
        if name not in PAGE_ASSETS:
            # the app's error handler renders this as a JSON 404 like every other error
            raise NotFound(f"no page asset named {name!r}")
        response = send_from_directory(STATIC_DIR, name)
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    return blueprint
