"""The one place an error becomes an HTTP answer: status, headers and a JSON body.

Every error is rendered by :func:`render_error`, wherever it was raised: a ServiceError from a
view, the inference dispatcher or the model, an HTTPException from werkzeug's routing or body
limits, an unexpected exception (a bug: a 500 naming the request id), and gunicorn's own answers
to malformed HTTP (:func:`render_server_error`, called from the gunicorn hook).

The shape is chosen by the URL: under ``/v2`` the Open Inference Protocol's ``{"error": "..."}``,
elsewhere the simple API's ``{"error": {"code": "...", "message": "..."}}``. The bytes are the ones
the service has always sent: the service's own errors as compact JSON with a final newline (what
Flask's JSON provider writes), the errors of the HTTP machinery (werkzeug, gunicorn) in the
simple API as ``json.dumps`` writes them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from http import HTTPStatus

from gunicorn.http.errors import (
    ChunkMissingTerminator,
    InvalidChunkExtension,
    InvalidChunkSize,
    InvalidResponseHeader,
    InvalidResponseHeaderName,
    NoMoreData,
    ParseException,
)
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.http import HTTP_STATUS_CODES
from werkzeug.routing import WebsocketMismatch

from service.errors import ServiceError, is_v2_path
from service.json_body import cut_long_runs
from service.observability.request_log import REQUEST_ID_HEADER

log = logging.getLogger(__name__)

JSON_TYPE = "application/json"

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

#: gunicorn's errors while the app reads a body that breaks its framing (a chunk size that is
#: not hex, a chunk without its CRLF, a body cut short): the client's fault, a 400
MALFORMED_BODY_ERRORS = (
    InvalidChunkSize,
    ChunkMissingTerminator,
    InvalidChunkExtension,
    NoMoreData,
    ParseException,  # any other met while the body is read: trailer fields too large or malformed
)
#: gunicorn's parse errors that are the app's fault (a response header it cannot send)
APP_HEADER_ERRORS = (InvalidResponseHeader, InvalidResponseHeaderName)
#: werkzeug's answer when a request asks for a WebSocket: it says so, in our words
NO_WEBSOCKETS = "this service has no WebSocket endpoints: send plain HTTP, without Upgrade"


@dataclass(frozen=True)
class ErrorAnswer:
    """An error as HTTP: status code, headers (Content-Type included) and the JSON body."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes

    @property
    def status_line(self) -> str:
        """The WSGI status string, e.g. ``"404 NOT FOUND"`` (as werkzeug writes it)."""
        return status_line(self.status)


def status_line(status: int) -> str:
    """The WSGI status string of ``status``, e.g. ``"413 REQUEST ENTITY TOO LARGE"``."""
    return f"{status} {HTTP_STATUS_CODES.get(status, 'UNKNOWN').upper()}"


def render_error(error: BaseException, path: str, request_id: str) -> ErrorAnswer:
    """The answer to ``error`` raised while handling a request for ``path``.

    Unexpected exceptions (neither ServiceError nor HTTPException) are logged with their
    traceback and answered as a 500 that names ``request_id``, never with the traceback.
    """
    v2 = is_v2_path(path)
    if isinstance(error, MALFORMED_BODY_ERRORS) and not isinstance(error, APP_HEADER_ERRORS):
        error = BadRequest(f"malformed chunked encoding in the request body: {error}")
    elif isinstance(error, WebsocketMismatch):
        error = BadRequest(NO_WEBSOCKETS)
    if isinstance(error, ServiceError):
        return _answer(int(error.status), error.code, error.message, v2, list(error.headers))
    if isinstance(error, HTTPException):
        status = error.code or 500
        code = HTTP_ERROR_CODES.get(status) or _code_of(HTTPStatus(status).phrase)
        message = error.description or HTTPStatus(status).phrase
        headers = [
            (name, ", ".join(sorted(value.split(", "))) if name == "Allow" else value)
            for name, value in error.get_headers()
            if name.lower() not in ("content-type", "content-length")
        ]
        return _answer(status, code, message, v2, headers, machinery=not v2)
    log.error("unexpected error in request %s", request_id, exc_info=error)
    message = f"internal error; quote request id {request_id} when reporting it"
    return _answer(500, "internal_error", message, v2, [])


def render_server_error(
    status: int, reason: str, message: str, *, request_id: str, path: str = ""
) -> bytes:
    """The whole HTTP/1.1 answer (head and body) the server gives itself, outside the app: a
    malformed request line or headers too large (gunicorn), a request too slow to arrive or too
    large to read (the buffering worker). It carries ``request_id`` in X-Request-ID, as every
    answer of the app does; the connection is closed after it. ``path``, when known, chooses
    the shape (``/v2``: the Open Inference Protocol's)."""
    message = cut_long_runs(message)
    payload: dict[str, object] = (
        {"error": message}
        if is_v2_path(path)
        else {
            "error": {"code": HTTP_ERROR_CODES.get(status) or _code_of(reason), "message": message}
        }
    )
    body = _encode(payload, machinery=not is_v2_path(path))
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
        f"Content-Type: {JSON_TYPE}\r\nContent-Length: {len(body)}\r\n"
        f"{REQUEST_ID_HEADER}: {request_id}\r\n\r\n"
    )
    return head.encode("latin-1") + body


def _code_of(reason: str) -> str:
    return reason.lower().replace(" ", "_")


def _answer(
    status: int,
    code: str,
    message: str,
    v2: bool,
    headers: list[tuple[str, str]],
    *,
    machinery: bool = False,
) -> ErrorAnswer:
    message = cut_long_runs(message)  # a client's long input echoed anywhere in it
    payload: dict[str, object] = (
        {"error": message} if v2 else {"error": {"code": code, "message": message}}
    )
    body = _encode(payload, machinery=machinery)
    return ErrorAnswer(status, [("Content-Type", JSON_TYPE), *headers], body)


def _encode(payload: dict[str, object], *, machinery: bool) -> bytes:
    if machinery:
        return json.dumps(payload).encode()
    return (json.dumps(payload, separators=(",", ":"), sort_keys=True) + "\n").encode()
