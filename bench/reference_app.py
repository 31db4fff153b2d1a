"""The reference for serve_bench.py: a Flask app that parses the same JSON body, answers a constant.

It runs under the same gunicorn.conf.py as the service, so the ratio between the two is the cost
of our own work per request (validation, onnxruntime, metrics, logging), not of Flask or gunicorn.
"""

from __future__ import annotations

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
