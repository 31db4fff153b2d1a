"""Errors that know their HTTP meaning; one handler in the app renders them all as JSON."""

from __future__ import annotations

from http import HTTPStatus


class ServiceError(Exception):
    """Base of every error the service answers with; ``code`` is a stable machine-readable name."""

    status: HTTPStatus = HTTPStatus.INTERNAL_SERVER_ERROR
    code: str = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, object]:
        return {"error": {"code": self.code, "message": self.message}}


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


class NotFound(ServiceError):
    """No such route, model or version."""

    status = HTTPStatus.NOT_FOUND
    code = "not_found"


class ModelUnavailable(ServiceError):
    """No valid model is loaded (yet)."""

    status = HTTPStatus.SERVICE_UNAVAILABLE
    code = "model_unavailable"
