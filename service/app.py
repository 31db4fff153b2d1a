"""The Flask application factory: one Predictor, every blueprint, and JSON for every error."""

from __future__ import annotations

import json
import logging
import os
from http import HTTPStatus
from typing import Any

from flask import Flask, current_app
from werkzeug.exceptions import HTTPException

from service.config import ServiceConfig
from service.errors import ServiceError
from service.model.predictor import Predictor

log = logging.getLogger(__name__)

PREDICTOR_KEY = "mnist.predictor"
CONFIG_KEY = "mnist.config"

#: stable error codes for the HTTP errors werkzeug raises before a view runs
HTTP_ERROR_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    411: "length_required",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    429: "too_many_requests",
    431: "request_header_fields_too_large",
}


def create_app(config: ServiceConfig | None = None, predictor: Predictor | None = None) -> Flask:
    """The service app; raises ModelUnavailable (and logs why) when no valid model can be served."""
    config = config or ServiceConfig.from_env(os.environ)
    if predictor is None:
        predictor = Predictor(config)
        predictor.load()
    app = Flask(__name__, static_folder=None)  # the page blueprint serves its own files
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    # a multipart batch holds at most max_batch images; a few parts more are harmless form fields
    app.config["MAX_FORM_PARTS"] = config.max_batch + 16
    app.config["MAX_FORM_MEMORY_SIZE"] = config.max_body_bytes
    app.extensions[PREDICTOR_KEY] = predictor
    app.extensions[CONFIG_KEY] = config

    _register_error_handlers(app)

    @app.before_request
    def _watch_models() -> None:
        # a thread per worker, started after the fork: gunicorn loads the app in each worker
        predictor.start_watching(handle_sighup=False)

    from service import api, fastpath, openapi, page
    from service.observability import metrics, request_log
    from service.v2 import views as v2

    app.register_blueprint(api.create_blueprint())
    app.register_blueprint(v2.create_blueprint())
    app.register_blueprint(page.create_blueprint())
    app.register_blueprint(openapi.create_blueprint())
    metrics.init_app(app)
    request_log.init_app(app)
    # well-formed inference requests are answered below Flask; everything else reaches it
    app.wsgi_app = fastpath.InferenceFastPath(app.wsgi_app, predictor, config)  # type: ignore[method-assign]
    return app


def watch_models(app: object) -> bool:
    """Start this process's hot reload and its SIGHUP handler (call in a worker's main thread).

    False when ``app`` is not this service's Flask app (e.g. wrapped in WSGI middleware): then
    polling starts with the first request and SIGHUP is left alone.
    """
    if not (isinstance(app, Flask) and PREDICTOR_KEY in app.extensions):
        log.warning("the WSGI app is not the service's Flask app; SIGHUP will not reload models")
        return False
    current_predictor_of(app).start_watching(handle_sighup=True)
    return True


def current_predictor_of(app: Flask) -> Predictor:
    """The Predictor that ``app`` serves with."""
    predictor: Predictor = app.extensions[PREDICTOR_KEY]
    return predictor


def current_predictor() -> Predictor:
    """The Predictor of the app handling the current request."""
    return current_predictor_of(current_app)


def current_config() -> ServiceConfig:
    """The ServiceConfig of the app handling the current request."""
    config: ServiceConfig = current_app.extensions[CONFIG_KEY]
    return config


def _request_id() -> str | None:
    from service.observability.request_log import current_request_id

    return current_request_id()


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError) -> Any:
        return exc.to_json(), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Any:
        status = exc.code or 500
        code = HTTP_ERROR_CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_")
        response = exc.get_response()  # keeps headers such as Allow on a 405
        response.set_data(_json_bytes(code, exc.description or HTTPStatus(status).phrase))
        response.content_type = "application/json"
        return response

    @app.errorhandler(Exception)
    def unexpected_error(exc: Exception) -> Any:
        request_id = _request_id()
        log.exception("unexpected error in request %s", request_id)
        message = f"internal error; quote request id {request_id} when reporting it"
        return {"error": {"code": "internal_error", "message": message}}, 500


def _json_bytes(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()
