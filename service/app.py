"""The application factory: one Predictor and one ServiceConfig, handed to every part.

The WSGI stack of a request, outermost first::

    RequestObservability    id, timing, log line, metrics      (service.observability.wsgi)
    InferenceDispatcher     POST /predict, /v2/.../infer and /v2/.../explain (service.dispatch)
    Flask                   every other route, by blueprint    (api, v2, page, openapi, metrics)

Every error, in any layer, is rendered by service.error_render.render_error. Only the entry
points (gunicorn.conf.py, serve.py) import this module.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
from collections.abc import Callable, Sequence
from typing import IO, Any

from flask import Flask, Request, Response, request
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.exceptions import MethodNotAllowed as NoSuchMethod
from werkzeug.exceptions import NotFound as NoSuchRoute
from werkzeug.utils import cached_property

from service import api, feedback, images, openapi, page
from service.config import ServiceConfig
from service.dispatch import InferenceDispatcher, InferenceEndpoint, read_decoded_body
from service.error_render import render_error
from service.errors import (
    ModelUnavailable,
    NotFound,
    body_over_limit,
    method_not_allowed,
    no_route,
)
from service.model.explain import Explainer
from service.model.predictor import Predictor
from service.model.repository import ModelRepository
from service.observability import metrics, metrics_route, tracing
from service.observability.drift import DriftMonitor
from service.observability.live import LiveFigures, card_references, live_metrics
from service.observability.request_log import configure_logging
from service.observability.wsgi import RequestObservability, facts_of
from service.store.database import PredictionStore
from service.store.recorder import PredictionRecorder
from service.v2 import model_repository
from service.v2 import views as v2

log = logging.getLogger(__name__)

#: where the app keeps its Predictor, for the gunicorn hook that starts hot reload
PREDICTOR_KEY = "mnist.predictor"
#: where the app keeps its PredictionRecorder (the prediction store's queue and writer)
RECORDER_KEY = "mnist.recorder"


class BoundedRequest(Request):
    """Flask's request, whose body is read as the inference routes read theirs
    (service.dispatch.read_decoded_body): a body over MAX_CONTENT_LENGTH, chunked ones included,
    is the service's 413 naming the limit, never a body silently cut at it; gzip and deflate are
    inflated, any other Content-Encoding is a 415."""

    @cached_property
    def stream(self) -> IO[bytes]:
        """The whole body, read once (at most MAX_CONTENT_LENGTH bytes are ever held)."""
        limit = self.max_content_length
        if limit is None:
            return super().stream
        return io.BytesIO(read_decoded_body(self.environ, limit))


def create_app(
    config: ServiceConfig | None = None,
    predictor: Predictor | None = None,
    request_tracing: tracing.RequestTracing | None = None,
    store: PredictionStore | None = None,
) -> Flask:
    """The service app. With no valid model yet it still starts: live, not ready, and its watcher
    keeps converging on the repository (logging why nothing serves).

    ``config`` defaults to the environment's (ServiceConfig.from_env); ``predictor`` to a
    Predictor of ``config`` with its model loaded; ``request_tracing`` to what the standard
    OTEL_* variables ask for (none unless they do; service.observability.tracing); ``store`` to
    the prediction store ``config.store`` names (none when it is off). Nothing connects to the
    store here: its writer thread starts with the first answer, in the worker.
    """
    config = config or ServiceConfig.from_env(os.environ)
    if request_tracing is None:
        request_tracing = tracing.configure(tracing.TracingConfig.from_env(os.environ))
    images.use_one_thread()
    use_blas_threads(config.intra_op_threads)
    if predictor is None:
        predictor = Predictor(config)
        with contextlib.suppress(ModelUnavailable):
            predictor.load()  # on failure the watcher logged why and keeps converging
    if store is None and config.store.enabled:
        store = PredictionStore.open(config.store.url(config.model_dir))
    repository = ModelRepository(config.model_dir)
    references = card_references(lambda version: repository.get(version).read_card())
    drift = DriftMonitor(references, config.store.drift_window)
    recorder = PredictionRecorder(config.store, store, live_metrics(drift))
    figures = LiveFigures(store, references, config.store.feedback_window)
    app = Flask(__name__, static_folder=None)  # the page blueprint serves its own files
    app.extensions[PREDICTOR_KEY] = predictor
    app.extensions[RECORDER_KEY] = recorder
    explainer = Explainer(lambda: predictor.loaded)  # the served MLP's weights, once per version
    app.register_blueprint(api.create_blueprint(predictor, config, explainer))
    app.register_blueprint(v2.create_blueprint(predictor, config, figures.version_json))
    app.register_blueprint(model_repository.create_blueprint(predictor, config))
    app.register_blueprint(page.create_blueprint())
    app.register_blueprint(openapi.create_blueprint(config))
    app.register_blueprint(metrics_route.create_blueprint(figures))
    app.register_blueprint(
        feedback.create_blueprint(
            store if config.store.enabled else None, config.store, config.admin_token
        )
    )
    endpoints: list[InferenceEndpoint] = [
        api.PredictEndpoint(predictor, config, recorder),
        api.ExplainEndpoint(explainer, config),
        v2.InferEndpoint(predictor, config, recorder),
    ]
    # a thread per worker, started after the fork: gunicorn loads the app in each worker
    serve_with_layers(
        app,
        config,
        endpoints,
        lambda: predictor.start_watching(handle_sighup=False),
        request_tracing,
    )
    return app


def use_blas_threads(threads: int) -> None:
    """numpy's BLAS (OpenBLAS) on ``threads`` threads in this process, as many as each
    onnxruntime session uses (ORT_INTRA_OP_THREADS, default 1; call at startup).

    By default OpenBLAS starts a thread per core, and between matrix products (the reject
    option's not-a-digit score, the drift statistics, explanations) those threads spin waiting
    for work: with two workers on two cores, about a third of a busy worker's CPU went to that
    spinning, taken from the other worker's requests. threadpoolctl sets the limit through the
    library's own call, whichever BLAS numpy was built with.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads, user_api="blas")


def serve_with_layers(
    app: Flask,
    config: ServiceConfig,
    endpoints: Sequence[InferenceEndpoint],
    on_request: Callable[[], None] | None = None,
    request_tracing: tracing.RequestTracing | None = None,
) -> None:
    """Put the service's layers around ``app``: the error renderer, the route note for the
    log line, the inference dispatcher for ``endpoints`` and the observability layer."""
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    # a multipart form holds at most max_batch images; a few parts more are harmless fields
    app.config["MAX_FORM_PARTS"] = config.max_batch + 16
    app.config["MAX_FORM_MEMORY_SIZE"] = config.max_body_bytes
    configure_logging()
    metrics.service_metrics()
    for endpoint in endpoints:
        for rule in endpoint.rules:
            # in the url map without a view: the dispatcher answers every POST to it, and a
            # GET is Flask's 405 naming POST
            app.add_url_rule(rule, endpoint=endpoint.endpoint, methods=["POST"])

    @app.before_request
    def _note_route() -> None:
        rule = request.url_rule
        if rule is not None:
            facts_of(request.environ).route = rule.rule

    @app.before_request
    def _answer_options() -> Response | None:
        # OPTIONS on a route: 204, its methods in Allow, no body (RFC 9110, section 9.3.7);
        # "OPTIONS *" asks about the server: every method some route takes
        if request.method != "OPTIONS":
            return None
        if request.environ.get("RAW_URI") == "*":
            allowed = server_methods(app)
        elif request.routing_exception is not None:
            return None  # no such route: the routing error (404) is rendered
        else:
            allowed = allowed_methods(app, request.path)
        if not allowed:  # only a catch-all matched (the /v2 one): no such route
            raise NotFound(f"no route {request.path}; OPTIONS lists the methods of a route")
        answer = Response(status=204, headers={"Allow": ", ".join(allowed)})
        answer.headers.remove("Content-Type")
        return answer

    @app.before_request
    def _refuse_viewless_rules() -> None:
        # the inference rules have no view here (the dispatcher answers them): a request it
        # passed on that Flask still routes to one is a 404, never a KeyError's 500 (after
        # _answer_options, so OPTIONS on them is still answered)
        rule = request.url_rule
        if rule is not None and rule.endpoint not in app.view_functions:
            raise no_route(request.method, request.path)

    app.request_class = BoundedRequest

    @app.errorhandler(Exception)
    def _render(error: Exception) -> Any:
        if isinstance(error, RequestEntityTooLarge):  # werkzeug's form limits, or the body's
            limit, length = config.max_body_bytes, request.content_length
            over = length is not None and length > limit
            error = body_over_limit(limit) if over else api.form_over_limits(request)
        elif error is request.routing_exception:  # werkzeug's routing, said in our words
            error = routing_error(error, request.method, request.path)
        answer = render_error(error, request.path, facts_of(request.environ).request_id)
        return Response(answer.body, status=answer.status, headers=answer.headers)

    # werkzeug matches a path as sent too: it neither merges repeated slashes nor redirects
    # (an HTML 308) to the merged path, for the paths the dispatcher passes on as they are
    app.url_map.merge_slashes = False
    dispatcher = InferenceDispatcher(
        app.wsgi_app,
        endpoints,
        on_request,
        routed=lambda path: bool(allowed_methods(app, path)),
        taken_as_sent=taken_as_sent(rest_of_path_prefixes(app)),
    )
    app.wsgi_app = RequestObservability(dispatcher, request_tracing)  # type: ignore[method-assign]


def routing_error(error: Exception, method: str, path: str) -> Exception:
    """werkzeug's routing error for ``method path`` as the service words it everywhere
    (service.errors): its NotFound is no_route's 404 ("no route /foo"), its MethodNotAllowed
    method_not_allowed's 405 ("GET /predict is not allowed; use POST", with Allow); any
    other error (a WebSocket request's) is returned as it is."""
    if isinstance(error, NoSuchMethod):
        return method_not_allowed(method, path, error.valid_methods or ())
    if isinstance(error, NoSuchRoute):
        return no_route(method, path)
    return error


#: the endpoints of catch-all rules: they answer every path below them with 404 or 405
CATCH_ALL_ENDPOINTS = frozenset({"v2.unknown_route"})
#: a variable of a url rule: <name>, <converter:name> or <converter(arguments):name>
_RULE_VARIABLE = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?\w+>")


def taken_as_sent(prefixes: Sequence[str]) -> Callable[[str], bool]:
    """Whether a path goes on after one of ``prefixes``, the fixed beginnings of the routes
    whose variable takes the rest of the path as it is (:func:`rest_of_path_prefixes`, read once
    when the app is made): ``/feedback/a//b`` is the id ``a//b``, not a path to refuse for its
    form (service.dispatch)."""

    def taken(path: str) -> bool:
        return any(path.startswith(prefix) and len(path) > len(prefix) for prefix in prefixes)

    return taken


def rest_of_path_prefixes(app: Flask) -> tuple[str, ...]:
    """The fixed beginnings (``/feedback/``) of the routes of ``app`` with a variable that takes
    the rest of the path, slashes and dots included (a converter that is not part-isolating:
    DELETE /feedback/<request_id>); the catch-all routes left out."""
    converters = app.url_map.converters
    prefixes = []
    for rule in app.url_map.iter_rules():
        variables = list(_RULE_VARIABLE.finditer(rule.rule))
        if not variables or rule.endpoint in CATCH_ALL_ENDPOINTS:
            continue
        names = [variable.group(1) or "default" for variable in variables]
        if any(not converters[name].part_isolating for name in names):
            prefixes.append(rule.rule[: variables[0].start()])
    return tuple(prefixes)


def allowed_methods(app: Flask, path: str) -> list[str]:
    """The methods the routes of ``app`` answer on ``path`` (HEAD with GET, and OPTIONS), sorted;
    empty when no route but a catch-all matches it."""
    adapter = app.url_map.bind("localhost")
    methods = set()
    for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
        try:
            endpoint, _ = adapter.match(path, method=method)
        except HTTPException:  # NotFound, MethodNotAllowed or a redirect: not routed there
            continue
        if endpoint not in CATCH_ALL_ENDPOINTS:
            methods.add(method)
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods | {"OPTIONS"}) if methods else []


def server_methods(app: Flask) -> list[str]:
    """Every method some route of ``app`` answers (the catch-all ones left out), sorted."""
    methods: set[str] = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint not in CATCH_ALL_ENDPOINTS:
            methods |= rule.methods or set()
    return sorted(methods)


def watch_models(app: object) -> bool:
    """Start this process's hot reload and its SIGHUP handler (call in a worker's main thread).

    False when ``app`` is not this service's Flask app (e.g. wrapped in WSGI middleware): then
    polling starts with the first request and SIGHUP is left alone.
    """
    if not (isinstance(app, Flask) and PREDICTOR_KEY in app.extensions):
        log.warning("the WSGI app is not the service's Flask app; SIGHUP will not reload models")
        return False
    predictor: Predictor = app.extensions[PREDICTOR_KEY]
    predictor.start_watching(handle_sighup=True)
    return True


def stop_recording(app: object, timeout: float = 5.0) -> bool:
    """Write what this process's prediction recorder still holds, then end its writer thread
    (call once the worker answers no more: gunicorn's worker_exit). False when ``app`` is not
    this service's Flask app."""
    if not (isinstance(app, Flask) and RECORDER_KEY in app.extensions):
        return False
    recorder: PredictionRecorder = app.extensions[RECORDER_KEY]
    recorder.stop(timeout)
    return True
