"""Errors that know their HTTP meaning; service.error_render renders them all as JSON.

No web framework here: service.model raises these too.
"""

from __future__ import annotations

from collections.abc import Sequence
from http import HTTPStatus


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


class StoreUnavailable(ServiceError):
    """The prediction store is turned off, or its database does not answer."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "store_unavailable"


#: what a JSON body nested deeper than the parsers go (a hostile body) is told
TOO_DEEP = (
    "the JSON is nested too deeply (arrays or objects inside each other, 1,000 levels or more)"
)
