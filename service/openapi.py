"""The OpenAPI 3.1 document of every route (GET /openapi.json) and a docs page for it (GET /docs).

The document is one static file, ``service/openapi.yaml``. Its ``${name}`` placeholders are the
limits of the ServiceConfig the server runs with (:class:`ApiLimits`), filled in once when the
app is created, so the document says what this server accepts. The page is Swagger UI, served
from the swagger-ui-py wheel by this app: nothing is loaded from the internet.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.resources
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from flask import Blueprint, Response, jsonify, send_from_directory

from service.config import ServiceConfig
from service.errors import NotFound
from service.images import ImageLimits

DOCUMENT_FILE = Path(__file__).with_name("openapi.yaml")
#: Swagger UI files the page needs, served from the swagger-ui-py wheel under /docs/assets/
SWAGGER_ASSETS = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
}
_PLACEHOLDER = re.compile(r"\$\{(\w+)\}")


@dataclass(frozen=True)
class ApiLimits:
    """The request limits the document states, as the app enforces them."""

    max_batch: int
    max_body_bytes: int
    image: ImageLimits = field(default_factory=ImageLimits)

    @classmethod
    def from_config(cls, config: ServiceConfig) -> ApiLimits:
        """The limits of a service running with ``config``."""
        return cls(
            max_batch=config.max_batch,
            max_body_bytes=config.max_body_bytes,
            image=ImageLimits(
                max_bytes=config.max_image_bytes,
                max_pixels=config.max_image_pixels,
                formats=ImageLimits().formats,
            ),
        )

    def placeholders(self, version: str) -> dict[str, int | str]:
        """The value of each ``${name}`` of openapi.yaml."""
        return {
            "max_batch": self.max_batch,
            "max_body_bytes": self.max_body_bytes,
            "max_image_bytes": self.image.max_bytes,
            "max_image_pixels": self.image.max_pixels,
            # the base64 text of the largest image a JSON body may carry, with room for a data URL
            "max_encoded_chars": (self.image.max_bytes + 2) // 3 * 4 + 64,
            "version": version,
        }


@functools.cache
def document_template() -> dict[str, Any]:
    """openapi.yaml as written, placeholders and all (read once per process)."""
    with DOCUMENT_FILE.open("rb") as file:
        template: dict[str, Any] = yaml.load(file, Loader=yaml.CSafeLoader)
    return template


def build_document(limits: ApiLimits, version: str | None = None) -> dict[str, Any]:
    """The OpenAPI 3.1 document of the service running with ``limits``.

    ``version`` defaults to the installed package's. ValueError names a placeholder that
    openapi.yaml uses but ApiLimits.placeholders does not fill.
    """
    values = limits.placeholders(version or _package_version())

    def fill(node: Any) -> Any:
        if isinstance(node, dict):
            return {key: fill(value) for key, value in node.items()}
        if isinstance(node, list):
            return [fill(value) for value in node]
        if isinstance(node, str) and "${" in node:
            whole = _PLACEHOLDER.fullmatch(node)
            if whole is not None:  # the whole value: a number stays a number
                return _value(values, whole[1])
            return _PLACEHOLDER.sub(lambda found: str(_value(values, found[1])), node)
        return node

    filled: dict[str, Any] = fill(document_template())
    return filled


def _value(values: dict[str, int | str], name: str) -> int | str:
    if name not in values:
        raise ValueError(f"openapi.yaml uses ${{{name}}}, which ApiLimits does not fill")
    return values[name]


def _package_version() -> str:
    try:
        return importlib.metadata.version("mnist-service")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


DOCS_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>mnist-service API</title>
<link rel="stylesheet" href="docs/assets/swagger-ui.css">
<link rel="icon" type="image/png" href="docs/assets/favicon-32x32.png">
</head>
<body>
<noscript>This page needs JavaScript; the document itself is at
<a href="openapi.json">openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="docs/assets/swagger-ui-bundle.js"></script>
<script src="docs/assets/docs.js"></script>
</body>
</html>
"""

# validatorUrl null: Swagger UI would otherwise send the document to an online validator.
DOCS_SCRIPT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""


def swagger_ui_dir() -> os.PathLike[str]:
    """The folder of Swagger UI's files inside the swagger-ui-py wheel."""
    return importlib.resources.files("swagger_ui").joinpath("static")  # type: ignore[return-value]


def create_blueprint(config: ServiceConfig) -> Blueprint:
    """GET /openapi.json, GET /docs and the page's assets; the limits are ``config``'s."""
    blueprint = Blueprint("openapi", __name__)
    assets = swagger_ui_dir()
    document = build_document(ApiLimits.from_config(config))

    @blueprint.get("/openapi.json")
    def openapi_document() -> Response:
        return jsonify(document)

    @blueprint.get("/docs")
    def docs_page() -> Response:
        response = Response(DOCS_PAGE, content_type="text/html; charset=utf-8")
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response

    @blueprint.get("/docs/assets/<name>")
    def docs_asset(name: str) -> Response:
        if name == "docs.js":
            return Response(DOCS_SCRIPT, content_type="text/javascript; charset=utf-8")
        if name not in SWAGGER_ASSETS:
            raise NotFound(f"no docs asset {name!r}")
        # only the names listed above reach the file system
        return send_from_directory(assets, name, mimetype=SWAGGER_ASSETS[name], max_age=3600)

    return blueprint
