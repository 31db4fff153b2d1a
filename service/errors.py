"""Errors that know their HTTP meaning; service.error_render renders them all as JSON.

No web framework here: service.model raises these too.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from http import HTTPStatus

#: the Open Inference Protocol's routes are /v2 and below; their errors are worded and shaped so
V2_PREFIX = "/v2"


def is_v2_path(path: str) -> bool:
    """True for the Open Inference Protocol's routes (``/v2`` and below)."""
    return path == V2_PREFIX or path.startswith(V2_PREFIX + "/")


class ServiceError(Exception):
    """Base of every error the service answers with; ``code`` is a stable machine-readable name."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    code: str = "internal_error"

    def __init__(self, message: str, headers: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.message = message
        #: response headers the error needs (e.g. Allow on a 405)
        self.headers = tuple(headers)


class BadRequest(ServiceError):
    """The request cannot be parsed at all (malformed JSON, broken multipart)."""

    status = HTTPStatus.BAD_REQUEST
    code = "bad_request"


class InvalidInput(ServiceError):
    """The request parsed but its content breaks the contract (shape, range, type)."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY
    code = "invalid_input"


class InvalidImage(InvalidInput):
    """An image that cannot be decoded, is too large, or shows no digit."""

    code = "invalid_image"


class UnsupportedMediaType(ServiceError):
    """The Content-Type is not one the route accepts."""

    status = HTTPStatus.UNSUPPORTED_MEDIA_TYPE
    code = "unsupported_media_type"


class PayloadTooLarge(ServiceError):
    """The body or the batch is over the documented limit."""

    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE
    code = "payload_too_large"


def body_over_limit(limit: int) -> PayloadTooLarge:
    """The one answer to a request body longer than ``limit`` bytes (MAX_BODY_BYTES), whichever
    part of the service notices it: the buffering worker, the inference routes or Flask's."""
    return PayloadTooLarge(f"the request body is over the limit of {limit} bytes")


class NotFound(ServiceError):
    """No such route, model or version."""

    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class MethodNotAllowed(ServiceError):
    """The route exists but not for this method; ``allowed`` goes in the Allow header."""

    status = HTTPStatus.METHOD_NOT_ALLOWED
    code = "method_not_allowed"

    def __init__(self, message: str, allowed: Sequence[str]) -> None:
        super().__init__(message, headers=[("Allow", ", ".join(allowed))])


def no_route(method: str, path: str, canonical: str | None = None) -> NotFound:
    """The one answer to a path no route takes, whichever layer finds it: ``no route /foo``
    (under /v2: ``no Open Inference Protocol endpoint GET /v2/foo``). ``canonical``: the path
    a route does take that ``path`` differs from only by its form (repeated slashes, '.' or
    '..' segments, a trailing slash), named so the client sees what to send instead."""
    if is_v2_path(path):
        message = f"no Open Inference Protocol endpoint {method} {path}"
    else:
        message = f"no route {path}"
    if canonical is not None:
        message += (
            f"; did you mean {canonical}? Paths are matched as sent: repeated slashes, '.' and "
            "'..' segments and a trailing slash are not removed"
        )
    return NotFound(message)


def method_not_allowed(method: str, path: str, allowed: Iterable[str]) -> MethodNotAllowed:
    """The one answer to a route asked with a method it does not take, whichever layer finds
    it: ``GET /predict is not allowed; use POST``. ``allowed``: the methods the route takes
    (HEAD and OPTIONS are left out of the message; Allow lists OPTIONS, and HEAD with GET)."""
    methods = sorted(set(allowed) - {"HEAD", "OPTIONS"})
    header = sorted({*methods, "OPTIONS", *(["HEAD"] if "GET" in methods else [])})
    return MethodNotAllowed(f"{method} {path} is not allowed; use {', '.join(methods)}", header)


class ModelUnavailable(ServiceError):
    """No valid model is loaded (yet)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "model_unavailable"


class Unauthorized(ServiceError):
    """A route that needs a bearer token got none, or a wrong one."""

    status = HTTPStatus.UNAUTHORIZED
    code = "unauthorized"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers=[("WWW-Authenticate", 'Bearer realm="mnist-service"')])


class Forbidden(ServiceError):
    """A route that is switched off by configuration (the message says how to switch it on)."""

    status = HTTPStatus.FORBIDDEN
    code = "forbidden"


class UnknownPrediction(NotFound):
    """Feedback names a request id (and image) the store has no prediction for."""

    code = "unknown_request_id"


class DuplicateFeedback(ServiceError):
    """Feedback for a prediction that already has feedback."""

    status = HTTPStatus.CONFLICT
    code = "duplicate_feedback"


class AmbiguousRequestId(ServiceError):
    """Feedback names a request id more than one answered request used: which answer the label
    judges cannot be told."""

    status = HTTPStatus.CONFLICT
    code = "ambiguous_request_id"


class StoreUnavailable(ServiceError):
    """The prediction store is turned off, or its database does not answer."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "store_unavailable"


#: what a JSON body nested deeper than the parsers go (a hostile body) is told
TOO_DEEP = (
    "the JSON is nested too deeply (arrays or objects inside each other, 1,000 levels or more)"
)
