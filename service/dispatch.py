"""The inference dispatcher: the one entrance of the inference routes, in front of Flask.

``POST /predict`` and ``POST /v2/models/<model>[/versions/<version>]/infer`` are what a busy
service answers over and over, and for them Flask's per-request machinery (request and app
contexts, hooks, the Response object) costs more than the model. So this WSGI layer chooses
them by method and path before any other work, and an :class:`InferenceEndpoint` answers them
completely: it parses the request once (query string, compression and body limits included)
and answers it, or fails, and :func:`service.error_render.render_error` renders the failure.
Nothing of such a request ever reaches Flask.

Every other request goes to the Flask app unchanged. The endpoints' url rules are also in
Flask's url map (without a view), so a GET on an inference route is Flask's 405 with an Allow
header, and the OpenAPI tests see every route in one table.

A path is matched as sent: one that differs from its :func:`canonical_path` (repeated slashes
anywhere, '.' or '..' segments, a trailing slash, whether sent so or percent-encoded) is a 404
here, naming the canonical path when a route takes it, and reaches neither an endpoint nor
Flask. Flask would otherwise route it by a form of its own (werkzeug drops leading slashes and
merges or redirects repeated ones) that this matcher does not share: ``POST //predict`` reached
the view-less ``api.predict`` rule, a 500. The one exception: a path under a route whose
variable is the rest of the path, slashes and dots included (DELETE /feedback/<request_id>: an
id may hold '//' or '..'), goes to Flask as sent, which matches it exactly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import parse_qsl

import werkzeug.urls  # noqa: F401  (registers the "werkzeug.url_quote" codec error handler)
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import ClientDisconnected
from werkzeug.wsgi import get_content_length

from service.error_render import render_error, status_line
from service.errors import body_over_limit, no_route
from service.observability.wsgi import (
    Environ,
    RequestFacts,
    StartResponse,
    WsgiApp,
    facts_of,
)
from service.v2.binary import decompress_body

#: werkzeug's default converter: one path segment
_SEGMENT = "[^/]+"
_VARIABLE = re.compile(r"<(\w+)>")


@dataclass(frozen=True)
class Answer:
    """A successful answer: status, headers (Content-Type included) and the whole body."""

    body: bytes
    headers: list[tuple[str, str]]
    status: int = 200


class InferenceRequest:
    """One request to an inference route: what the endpoint reads of it, read lazily, once.

    ``args`` are the url rule's variables; ``facts`` the RequestFacts the routes note the
    model version and batch size in.
    """

    __slots__ = ("args", "environ", "facts", "rule")

    def __init__(
        self, environ: Environ, rule: str, args: dict[str, str], facts: RequestFacts
    ) -> None:
        self.environ = environ
        self.rule = rule
        self.args = args
        self.facts = facts

    @property
    def path(self) -> str:
        path: str = self.environ.get("PATH_INFO", "")
        return path

    @property
    def content_type(self) -> str:
        """The Content-Type header as sent ('' when absent)."""
        value: str = self.environ.get("CONTENT_TYPE", "")
        return value

    @property
    def mimetype(self) -> str:
        """The media type of the body, lower case and without parameters."""
        return self.content_type.partition(";")[0].strip().lower()

    @property
    def query_string(self) -> str:
        value: str = self.environ.get("QUERY_STRING", "")
        return value

    def query(self) -> MultiDict[str, str]:
        """The query string's parameters, as werkzeug parses them for Flask."""
        text = self.query_string.encode("latin-1").decode(errors="replace")
        return MultiDict(parse_qsl(text, keep_blank_values=True, errors="werkzeug.url_quote"))

    def header(self, name: str) -> str | None:
        """A request header by its HTTP name (e.g. ``Content-Encoding``), or None."""
        value: str | None = self.environ.get("HTTP_" + name.upper().replace("-", "_"))
        return value

    @property
    def content_length(self) -> int | None:
        """The Content-Length header; None when absent, invalid, or the body is chunked."""
        return get_content_length(self.environ)

    def body(self, max_bytes: int) -> bytes:
        """The whole body as sent (still compressed, if it is); see :func:`read_body`."""
        return read_body(self.environ, max_bytes)


def read_body(environ: Environ, max_bytes: int) -> bytes:
    """The whole body of the request ``environ`` describes, as sent.

    Raises PayloadTooLarge (413, naming ``max_bytes``) when the body is longer than
    ``max_bytes``: at once when Content-Length says so, and for a chunked body once byte
    ``max_bytes + 1`` arrives (never a body silently cut at the limit). A body without
    Content-Length from a server that does not end the stream itself (no
    ``wsgi.input_terminated``) is read as empty, as werkzeug does.
    """
    length = get_content_length(environ)
    if length is not None and length > max_bytes:
        raise body_over_limit(max_bytes)
    stream = environ["wsgi.input"]
    if length is not None:
        data: bytes = stream.read(length) if length > 0 else b""
        return data
    if "wsgi.input_terminated" not in environ:
        return b""
    data = stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise body_over_limit(max_bytes)
    return data


def read_decoded_body(environ: Environ, max_bytes: int) -> bytes:
    """The whole body of the request ``environ`` describes, with its Content-Encoding undone.

    Every route with a body reads it here (the inference endpoints, and Flask's routes through
    service.app.BoundedRequest): :func:`read_body`'s 413; ClientDisconnected when the client
    went away mid-body (a cut body is never parsed); gzip and deflate inflated to at most
    ``max_bytes`` (a bomb costs nothing, a larger body is a 413); any other encoding a 415.
    """
    body = read_body(environ, max_bytes)
    length = get_content_length(environ)
    if length is not None and len(body) < length:
        raise ClientDisconnected()
    return decompress_body(body, environ.get("HTTP_CONTENT_ENCODING"), max_bytes)


class InferenceEndpoint(Protocol):
    """An inference route answered below Flask: its url rules and how it answers a request."""

    @property
    def endpoint(self) -> str:
        """The endpoint's name in Flask's url map (e.g. ``"api.predict"``)."""
        ...

    @property
    def rules(self) -> Sequence[str]:
        """werkzeug-style url rules, e.g. ``"/v2/models/<model>/infer"``."""
        ...

    def answer(self, request: InferenceRequest) -> Answer:
        """The answer to a well-formed request; raises ServiceError/HTTPException otherwise."""
        ...


def canonical_path(path: str) -> str:
    """``path`` (starting with '/') without empty, '.' and '..' segments ('..' removes the
    segment before it, as a browser resolves it) and without a trailing slash: ``///a/./b/../c/``
    is ``/a/c``. No route of the service ends in a slash but ``/``."""
    segments: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in ("", "."):
            segments.append(segment)
    return "/" + "/".join(segments)


def is_canonical(path: str) -> bool:
    """True unless ``path`` starts with '/' and differs from its :func:`canonical_path` (a
    request target such as ``*`` or an empty path is left to the app)."""
    if not path.startswith("/"):
        return True
    if "//" not in path and "/." not in path and not (path.endswith("/") and path != "/"):
        return True  # the common case, decided without splitting the path
    return canonical_path(path) == path


@dataclass(frozen=True)
class _Route:
    rule: str
    pattern: re.Pattern[str] | None  # None: a rule without variables, matched by equality
    endpoint: InferenceEndpoint


def _compile(rule: str) -> re.Pattern[str] | None:
    if "<" not in rule:
        return None
    parts = _VARIABLE.split(rule)
    regex = "".join(
        re.escape(part) if index % 2 == 0 else f"(?P<{part}>{_SEGMENT})"
        for index, part in enumerate(parts)
    )
    return re.compile(regex)


class InferenceDispatcher:
    """WSGI: answers the inference endpoints' POST requests itself, passes the rest to ``app``.

    ``on_request`` runs first for every request (the model watcher's start after a fork).
    A path that is not canonical (:func:`is_canonical`) is answered here with a 404 (see the
    module's docstring) unless ``taken_as_sent(path)``: a route of the app takes it with its
    slashes and dots as they are. ``routed(path)`` says whether some route of the app takes a
    path, for the 404 to name the canonical path only when it is one (unset: always named).
    """

    def __init__(
        self,
        app: WsgiApp,
        endpoints: Sequence[InferenceEndpoint],
        on_request: Callable[[], None] | None = None,
        routed: Callable[[str], bool] | None = None,
        taken_as_sent: Callable[[str], bool] | None = None,
    ) -> None:
        self.app = app
        self.on_request = on_request
        self.routed = routed
        self.taken_as_sent = taken_as_sent
        self._exact: dict[str, _Route] = {}
        self._patterns: list[_Route] = []
        for endpoint in endpoints:
            for rule in endpoint.rules:
                pattern = _compile(rule)
                route = _Route(rule, pattern, endpoint)
                if pattern is None:
                    self._exact[rule] = route
                else:
                    self._patterns.append(route)

    def match(self, method: str, path: str) -> tuple[_Route, dict[str, str]] | None:
        """The inference route and its variables for ``method path``; None for any other.

        The method is compared in upper case, as werkzeug routes it: a ``post`` that Flask
        would route to a view-less inference rule is answered here, as POST."""
        if method.upper() != "POST":
            return None
        route = self._exact.get(path)
        if route is not None:
            return route, {}
        for route in self._patterns:
            assert route.pattern is not None
            found = route.pattern.fullmatch(path)
            if found is not None:
                return route, found.groupdict()
        return None

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        if self.on_request is not None:
            self.on_request()
        path: str = environ.get("PATH_INFO", "")
        method: str = environ.get("REQUEST_METHOD", "")
        # a route that takes the rest of the path as it is (DELETE /feedback/<request_id>: an id
        # may hold '//', '..' or a trailing '/') is routed by Flask exactly as sent, not refused
        if not is_canonical(path) and not (self.taken_as_sent and self.taken_as_sent(path)):
            return self._not_canonical(environ, start_response, method, path)
        matched = self.match(method, path)
        if matched is None:
            return self.app(environ, start_response)
        route, args = matched
        facts = facts_of(environ)
        facts.route = route.rule
        request = InferenceRequest(environ, route.rule, args, facts)
        try:
            answer = route.endpoint.answer(request)
            status, headers, body = answer.status, answer.headers, answer.body
        except Exception as exc:  # every failure, expected or a bug, is rendered the one way
            error = render_error(exc, path, facts.request_id)
            status, headers, body = error.status, error.headers, error.body
        return _respond(start_response, status, headers, body)

    def _not_canonical(
        self, environ: Environ, start_response: StartResponse, method: str, path: str
    ) -> Iterable[bytes]:
        """The 404 of a path that is not canonical (service.errors.no_route)."""
        canonical = canonical_path(path)
        named = self.routed is None or self.routed(canonical)
        error = no_route(method, path, canonical if named else None)
        answer = render_error(error, path, facts_of(environ).request_id)
        return _respond(start_response, answer.status, answer.headers, answer.body)


def _respond(
    start_response: StartResponse, status: int, headers: list[tuple[str, str]], body: bytes
) -> Iterable[bytes]:
    headers.append(("Content-Length", str(len(body))))
    start_response(status_line(status), headers)
    return [body]
