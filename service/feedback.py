"""POST /feedback: a person's label for an answer, tied to the model version that gave it.

Body: ``{"request_id": "...", "label": 7}`` (``"index": i`` names an image of a batch, default
0), or a list of such objects (at most ``MAX_FEEDBACK_ITEMS``). All are recorded or none: 202
with what was recorded; 404 for a request id the store has no prediction for; 409 for feedback
already given (``duplicate_feedback``) or a request id more than one request used, answered
otherwise (``ambiguous_request_id``: which answer the label judges cannot be told); 422 for a
bad label, index or field; 503 when the store is off or unreachable.

DELETE /feedback/<request_id> (behind ADMIN_TOKEN, like the other admin routes: 403 without it
set, 401 without the right bearer token) deletes every prediction and feedback record of one
request in one transaction: 200 with the counts, 404 when the store holds nothing of it (after
waiting up to FEEDBACK_WAIT_SECONDS for an answer still on its way to the database). The id is
the rest of the path, percent-decoded, slashes included (:class:`RequestIdConverter`): every id
X-Request-ID accepts (1..128 visible ASCII characters: ``/``, ``%``, ``?``, ``#``, ``..`` too)
can be deleted, sent percent-encoded (``user%2F42``) or with its slashes as they are.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import orjson
from flask import Blueprint, Response, request
from flask.blueprints import BlueprintSetupState
from werkzeug.routing import PathConverter

from service.access import require_admin
from service.errors import (
    BadRequest,
    InvalidInput,
    StoreUnavailable,
    UnknownPrediction,
    UnsupportedMediaType,
)
from service.json_body import check_depth, echo, parse_json, shorten, unaccepted_type
from service.model.contract import MAX_BATCH_SIZE, N_CLASSES
from service.store.config import StoreConfig
from service.store.database import (
    FeedbackItem,
    PredictionStore,
    retry_while_unknown,
    wait_for_feedback,
)

FEEDBACK_ROUTE = "/feedback"
MAX_FEEDBACK_ITEMS = 1024
MAX_REQUEST_ID = 128
_FIELDS = frozenset({"request_id", "label", "index"})
STORE_OFF = "the prediction store is off (STORE=off): feedback is not recorded"
#: the url converter of a request id in a path (:class:`RequestIdConverter`)
REQUEST_ID_CONVERTER = "request_id"


class RequestIdConverter(PathConverter):
    """A request id in a url path: all the rest of the path, percent-decoded, slashes included.

    X-Request-ID takes any 1..128 visible ASCII characters, so an id may hold ``/`` anywhere
    (first, last, doubled), ``%``, ``?``, ``#`` or be ``..``. werkzeug's ``path`` converter
    refuses a leading slash and the url map merges doubled slashes; this one takes them all (its
    rule sets ``merge_slashes=False``). ``?`` and ``#`` must be sent percent-encoded, as in any
    url; ``/`` may be sent either way (the server decodes ``%2F`` before routing).
    """

    regex = ".+"
    part_isolating = False


def _register_converter(state: BlueprintSetupState) -> None:
    state.app.url_map.converters.setdefault(REQUEST_ID_CONVERTER, RequestIdConverter)


def parse_feedback(body: bytes) -> list[FeedbackItem]:
    """The feedback items of a JSON body; BadRequest or InvalidInput says what is wrong."""
    if not body.strip():
        raise BadRequest('the body is empty; expected JSON {"request_id": "...", "label": 0-9}')
    payload = parse_json(body)
    check_depth(payload, body)
    entries = payload if isinstance(payload, list) else [payload]
    if not entries:
        raise InvalidInput("the list is empty: send at least one feedback object")
    if len(entries) > MAX_FEEDBACK_ITEMS:
        raise InvalidInput(f"{len(entries)} feedback objects; the limit is {MAX_FEEDBACK_ITEMS}")
    return [_item(entry, number, len(entries) > 1) for number, entry in enumerate(entries)]


def _item(entry: Any, number: int, many: bool) -> FeedbackItem:
    where = f"feedback {number}: " if many else ""
    if not isinstance(entry, dict):
        raise InvalidInput(f'{where}expected an object {{"request_id": "...", "label": 0-9}}')
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise InvalidInput(
            f"{where}unknown field(s) {shorten(str(unknown))}; accepted: index, label, request_id"
        )
    request_id = entry.get("request_id")
    if not isinstance(request_id, str):
        raise InvalidInput(f'{where}"request_id" must be the request id of an answer (a string)')
    if not request_id.strip():
        raise InvalidInput(f'{where}"request_id" is empty: send the X-Request-ID of an answer')
    if len(request_id) > MAX_REQUEST_ID:
        raise InvalidInput(f'{where}"request_id" is longer than {MAX_REQUEST_ID} characters')
    label = entry.get("label")
    if type(label) is not int or not 0 <= label < N_CLASSES:
        shown = "missing" if "label" not in entry else echo(label)
        raise InvalidInput(f'{where}"label" must be an integer 0..9 (the right digit), not {shown}')
    index = entry.get("index", 0)
    if type(index) is not int or not 0 <= index < MAX_BATCH_SIZE:
        raise InvalidInput(
            f'{where}"index" must be the image\'s place in its request, 0..{MAX_BATCH_SIZE - 1}'
        )
    return FeedbackItem(request_id=request_id, label=label, item=index)


def create_blueprint(
    store: PredictionStore | None, config: StoreConfig, admin_token: str | None = None
) -> Blueprint:
    """POST /feedback and DELETE /feedback/<request_id> on ``store`` (None: the store is off, and
    the routes say so with 503); ``admin_token`` (ADMIN_TOKEN) guards the deletion."""
    blueprint = Blueprint("feedback", __name__)
    blueprint.record_once(_register_converter)  # before the rule that uses it is added

    @blueprint.post(FEEDBACK_ROUTE)
    def post_feedback() -> Response:
        if request.mimetype != "application/json":
            sent = request.headers.get("Content-Type", "")
            raise UnsupportedMediaType(unaccepted_type(request.mimetype, sent, "application/json"))
        items = parse_feedback(request.get_data(cache=False))
        if store is None:
            raise StoreUnavailable(STORE_OFF)
        outcomes = wait_for_feedback(store, items, config.feedback_wait_seconds)
        body = orjson.dumps({"accepted": [outcome.to_json() for outcome in outcomes]})
        return Response(body, status=HTTPStatus.ACCEPTED, mimetype="application/json")

    @blueprint.delete(f"{FEEDBACK_ROUTE}/<{REQUEST_ID_CONVERTER}:request_id>", merge_slashes=False)
    def delete_request(request_id: str) -> Response:
        require_admin(request.headers.get("Authorization"), admin_token)
        if len(request_id) > MAX_REQUEST_ID:
            raise InvalidInput(f"the request id is longer than {MAX_REQUEST_ID} characters")
        if store is None:
            raise StoreUnavailable("the prediction store is off (STORE=off): it holds nothing")

        def delete() -> tuple[int, int]:
            gone = store.delete_request(request_id)
            if not any(gone):
                raise UnknownPrediction(
                    f"the store holds no record of request id {request_id!r} (unknown, already "
                    "deleted, or not recorded)"
                )
            return gone

        # an answer sent a moment ago may still be queued in a worker: deleting before it lands
        # would let it land afterwards
        gone_predictions, gone_feedback = retry_while_unknown(delete, config.feedback_wait_seconds)
        body = orjson.dumps(
            {
                "request_id": request_id,
                "deleted": {"predictions": gone_predictions, "feedback": gone_feedback},
            }
        )
        return Response(body, status=HTTPStatus.OK, mimetype="application/json")

    return blueprint
