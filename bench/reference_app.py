"""The floors for serve_bench.py, both under the same gunicorn settings as the service.

- ``create_app()``: a Flask app that parses the same JSON body and answers a constant. The ratio
  of the service to it is the cost of our own work per request (validation, onnxruntime,
  metrics, logging), not of Flask or gunicorn.
- ``raw_wsgi_app``: a WSGI callable that reads the body and answers the same constant bytes, no
  Flask, no JSON: what gunicorn, HTTP and loopback cost alone.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, jsonify, request

CONSTANT_ANSWER: dict[str, Any] = {
    "predictions": [{"digit": 0, "confidence": 1.0, "probabilities": [1.0] + [0.0] * 9}],
    "model": {"name": "reference", "version": 0},
}


def create_app() -> Flask:
    """The reference app: POST /predict parses the JSON body and answers CONSTANT_ANSWER."""
    app = Flask(__name__)

    @app.post("/predict")
    def predict() -> Any:
        body = request.get_json(force=False, silent=False)
        if not isinstance(body, dict) or not body.get("images"):
            return jsonify(error={"code": "invalid_input", "message": "no images"}), 422
        return jsonify(CONSTANT_ANSWER)

    @app.get("/ready")
    def ready() -> Any:
        return jsonify(ready=True)

    return app


_RAW_ANSWER = json.dumps(CONSTANT_ANSWER).encode()
_RAW_HEADERS = [("Content-Type", "application/json"), ("Content-Length", str(len(_RAW_ANSWER)))]


def raw_wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Reads the whole body, answers CONSTANT_ANSWER (and 200 to GET /ready)."""
    length = environ.get("CONTENT_LENGTH") or "0"
    environ["wsgi.input"].read(int(length))
    start_response("200 OK", _RAW_HEADERS)
    return [_RAW_ANSWER]
