"""The two inference routes answered below Flask, for well-formed requests.

``POST /predict`` with a JSON body and ``POST /v2/models/<model>[/versions/<v>]/infer`` are what a
busy service answers over and over. For them, Flask's per-request machinery (request and app
contexts, URL matching, hooks, the Response object) costs more than the model itself. This WSGI
layer sits in front of the Flask app (``app.wsgi_app``) and answers those two routes directly when
the request is well-formed, with the same functions the Flask views use (``api.answer_images``,
``v2.answer_infer``), the same request id, metrics and JSON log line.

Anything else goes to Flask unchanged: other routes and methods, a query string on /predict, a
compressed, chunked, empty or oversized body, and every request that fails (bad input, unknown
model, no model loaded). Flask then answers it, errors included, from its one set of handlers, so
there is one place that decides what an error looks like. A failing request is parsed twice; a
good one skips Flask entirely.
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

from service import api
from service.config import ServiceConfig
from service.errors import ServiceError
from service.model.predictor import Predictor
from service.observability import metrics
from service.observability.request_log import (
    REQUEST_ID_HEADER,
    line_fields,
    log_request,
    request_id_from,
)
from service.v2 import views as v2
from service.v2.binary import HEADER_LENGTH

log = logging.getLogger(__name__)

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

#: the url rules of the Flask views this layer stands in for (metrics and logs name them so)
V2_INFER_ROUTE = "/v2/models/<model>/infer"
V2_INFER_VERSION_ROUTE = "/v2/models/<model>/versions/<version>/infer"
#: werkzeug's default converter: one path segment
_V2_INFER_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")


_REQUEST_ID_KEY = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")
_HEADER_LENGTH_KEY = "HTTP_" + HEADER_LENGTH.upper().replace("-", "_")

Answer = tuple[str, bytes, list[tuple[str, str]]]  # route template, body, headers


class _Notes:
    """What the routes note for the log line (flask.g plays this part in the views)."""

    __slots__ = ("batch_size", "model_version")

    def __init__(self) -> None:
        self.batch_size = 0
        self.model_version = 0


class InferenceFastPath:
    """WSGI middleware: answers well-formed inference requests itself, passes the rest on."""

    def __init__(self, app: WsgiApp, predictor: Predictor, config: ServiceConfig) -> None:
        self.app = app
        self.predictor = predictor
        self.config = config
        self.limits = api.image_limits(config)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("REQUEST_METHOD") != "POST":
            return self.app(environ, start_response)
        path = environ.get("PATH_INFO", "")
        model_version: tuple[str, str | None] | None = None
        if path == api.PREDICT_ROUTE:
            if environ.get("QUERY_STRING") or not _is_json(environ.get("CONTENT_TYPE", "")):
                return self.app(environ, start_response)
        else:
            match = _V2_INFER_PATH.fullmatch(path) if path.startswith("/v2/") else None
            if match is None:
                return self.app(environ, start_response)
            model_version = match[1], match[2]
        started = time.perf_counter()
        body = self._read_body(environ)
        if body is None:
            return self.app(environ, start_response)
        self.predictor.start_watching(handle_sighup=False)  # as the Flask app's first hook does
        request_id = request_id_from(environ.get(_REQUEST_ID_KEY))
        notes = _Notes()
        try:
            if model_version is None:
                route, payload, headers = self._predict(body, request_id, notes, started)
            else:
                route, payload, headers = self._v2_infer(environ, body, *model_version, notes)
        except ServiceError:
            return self._to_flask(environ, body, start_response)
        except Exception:  # a bug: Flask's handler answers it as a JSON 500 with a request id
            log.exception("inference fast path failed; handing the request to Flask")
            return self._to_flask(environ, body, start_response)
        headers.append(("Content-Length", str(len(payload))))
        headers.append((REQUEST_ID_HEADER, request_id))
        start_response("200 OK", headers)
        seconds = time.perf_counter() - started
        metrics.observe_request(route, 200, notes.model_version, seconds)
        log_request(
            line_fields(
                request_id=request_id,
                method="POST",
                route=route,
                path=path,
                status=200,
                latency_ms=seconds * 1000.0,
                model_version=notes.model_version,
                batch_size=notes.batch_size,
                request_bytes=len(body),
            )
        )
        return [payload]

    def _read_body(self, environ: dict[str, Any]) -> bytes | None:
        """The whole body when it has a sane Content-Length and no encoding; None otherwise."""
        if "HTTP_TRANSFER_ENCODING" in environ or "HTTP_CONTENT_ENCODING" in environ:
            return None
        text = environ.get("CONTENT_LENGTH", "")
        if not (text.isascii() and text.isdigit()):
            return None
        length = int(text)
        if not 0 < length <= self.config.max_body_bytes:
            return None  # empty or over the limit: Flask says so
        body: bytes = environ["wsgi.input"].read(length)
        if len(body) != length:  # the client went away mid-body: Flask deals with it
            environ["wsgi.input"] = io.BytesIO(body)
            return None
        return body

    def _to_flask(
        self, environ: dict[str, Any], body: bytes, start_response: Callable[..., Any]
    ) -> Any:
        environ["wsgi.input"] = io.BytesIO(body)  # the body, as if never read
        return self.app(environ, start_response)

    def _predict(self, body: bytes, request_id: str, notes: _Notes, started: float) -> Answer:
        config = self.config
        images = api.images_from_json(
            body, config.max_batch, self.limits, config.max_request_pixels
        )
        preprocessing = time.perf_counter() - started
        options = api.PredictOptions()
        payload = api.answer_images(self.predictor, images, options, request_id, notes)
        metrics.observe_preprocessing(preprocessing)  # after the answer: a failure is Flask's
        return api.PREDICT_ROUTE, payload, [("Content-Type", api.JSON_TYPE)]

    def _v2_infer(
        self, environ: dict[str, Any], body: bytes, model: str, version: str | None, notes: _Notes
    ) -> Answer:
        serving = self.predictor
        header_length = environ.get(_HEADER_LENGTH_KEY)
        max_batch = serving.config.max_batch
        result = v2.answer_infer(serving, model, version, body, header_length, max_batch, notes)
        headers = [("Content-Type", result.content_type)]
        if result.header_length is not None:
            headers.append((HEADER_LENGTH, str(result.header_length)))
        route = V2_INFER_ROUTE if version is None else V2_INFER_VERSION_ROUTE
        return route, result.payload, headers


def _is_json(content_type: str) -> bool:
    if content_type == api.JSON_TYPE:
        return True
    return content_type.partition(";")[0].strip().lower() == api.JSON_TYPE
