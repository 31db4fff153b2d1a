"""The outer WSGI layer: request id, timing, the JSON log line and the metrics of EVERY request.

It wraps the whole service (the inference dispatcher and the Flask app behind it), so each
request gets the same observability whichever part answers it. Per-request facts travel in the
WSGI environ under :data:`FACTS_KEY`, the way werkzeug's middleware passes things on: the layer
puts a :class:`RequestFacts` there before calling the app, the parts below fill in what they
learn (the route template, the model version, the batch size), and the layer reads it back when
the app has answered.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterable
from typing import Any

from service.observability import metrics
from service.observability.request_log import (
    REQUEST_ID_HEADER,
    UNMATCHED_ROUTE,
    line_fields,
    log_request,
    request_id_from,
)
from service.observability.tracing import RequestTracing

#: the environ key of the request's RequestFacts
FACTS_KEY = "mnist.request"
_REQUEST_ID_KEY = "HTTP_" + REQUEST_ID_HEADER.upper().replace("-", "_")

Environ = dict[str, Any]
StartResponse = Callable[..., Any]
WsgiApp = Callable[[Environ, StartResponse], Iterable[bytes]]


class RequestFacts:
    """What is known about one request: its id, and what the routes note for the log line.

    ``route`` is the url rule that matched (e.g. ``/v2/models/<model>/infer``), never the raw
    path, so metrics have few label values; it stays ``<unmatched>`` for a 404 or 405.
    """

    __slots__ = ("batch_size", "model_version", "request_id", "route")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.route = UNMATCHED_ROUTE
        self.model_version: int | None = None
        self.batch_size: int | None = None


def facts_of(environ: Environ) -> RequestFacts:
    """The RequestFacts of the request ``environ`` belongs to (made by RequestObservability)."""
    facts: RequestFacts = environ[FACTS_KEY]
    return facts


class RequestObservability:
    """WSGI middleware: id, timing, one log line and the request metrics, for every request.

    The client's X-Request-ID is kept when it is a sane token (else a fresh id is made) and
    echoed on every response, errors included. Latency runs from entering this layer until the
    app returns its body.
    """

    def __init__(self, app: WsgiApp, tracing: RequestTracing | None = None) -> None:
        self.app = app
        self.tracing = tracing  # None: no spans (service.observability.tracing)

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        started = time.perf_counter()
        facts = RequestFacts(request_id_from(environ.get(_REQUEST_ID_KEY)))
        environ[FACTS_KEY] = facts
        tracing = self.tracing
        if tracing is not None:
            span = tracing.start(environ)
        statuses: list[str] = []

        def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            headers.append((REQUEST_ID_HEADER, facts.request_id))
            statuses.append(status)
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        metrics.request_started()
        try:
            body = self.app(environ, respond)
        except BaseException:
            metrics.request_finished()  # in flight no more; the samples noted so far written
            if tracing is not None:  # an error span; the context restored
                tracing.finish(
                    span, environ.get("REQUEST_METHOD", ""), facts.route, 500, facts.request_id
                )
            raise
        seconds = time.perf_counter() - started
        status = int(statuses[-1][:3]) if statuses else 500
        # every metric of the request written at once (service.observability.metrics)
        metrics.request_finished(facts.route, status, facts.model_version, seconds)
        method = environ.get("REQUEST_METHOD", "")
        fields = line_fields(
            request_id=facts.request_id,
            method=method,
            route=facts.route,
            path=environ.get("PATH_INFO", ""),
            status=status,
            latency_ms=seconds * 1000.0,
            model_version=facts.model_version,
            batch_size=facts.batch_size,
            request_bytes=_content_length(environ),
        )
        if tracing is not None:
            fields["trace_id"] = span.trace_id
            tracing.finish(span, method, facts.route, status, facts.request_id)
        log_request(fields)
        return body


def observe_server_answer(
    *, request_id: str, method: str, path: str, status: int, request_bytes: int | None
) -> None:
    """The log line and the request count of an answer the server gave outside the app (a
    malformed request, a request too slow or too large to read): route ``<unmatched>``, no
    latency (the request never arrived whole)."""
    metrics.observe_request(UNMATCHED_ROUTE, status, None, None)
    log_request(
        line_fields(
            request_id=request_id,
            method=method,
            route=UNMATCHED_ROUTE,
            path=path,
            status=status,
            latency_ms=None,
            model_version=None,
            batch_size=None,
            request_bytes=request_bytes,
        )
    )


def _content_length(environ: Environ) -> int | None:
    # an integer beyond 64 bits is logged as its digits (request_log.writable); one of more
    # digits than int() converts (4,300) as None, never an error after the answer
    text = environ.get("CONTENT_LENGTH", "")
    if not (text and text.isascii() and text.isdigit()):
        return None
    digits = text.lstrip("0") or "0"
    limit = sys.get_int_max_str_digits()  # 0: no limit
    return None if limit and len(digits) > limit else int(digits)
