"""Triton's model-repository extension and our lifecycle calls, behind the admin bearer token.

- ``POST /v2/repository/index`` (body ``{"ready": true}`` optional): every version in the
  repository with its state (``READY`` on this worker, or ``UNAVAILABLE`` and why);
- ``POST /v2/repository/models/<model>/load`` / ``unload``: the whole model on or off, on
  every worker (written to labels.json, as every change here is). Both take Triton's optional
  ``{"parameters": {...}}`` (tritonclient sends it on every unload, and on a load with
  ``config=``/``files=``): see :func:`unload_dependents` and :func:`check_load_parameters`;
- ``POST /v2/repository/models/<model>/promote`` ``{"version": N, "force": false}``,
  ``rollback``, ``canary`` ``{"version": N, "percent": P}``, ``shadow`` ``{"version": N,
  "sample": R}``, ``end-trial``: what ``mnist-models`` does, with the same gate.

Without ADMIN_TOKEN every route here answers 403 saying how to enable it; with it, a request
without ``Authorization: Bearer <ADMIN_TOKEN>`` gets a 401. A change is one atomic write of
labels.json; this worker converges on it before answering, the others within their poll
interval (MODEL_POLL_SECONDS).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Collection
from typing import Any

import flask

from service.access import require_admin
from service.config import ServiceConfig
from service.errors import InvalidInput, NotFound, UnsupportedMediaType
from service.json_body import echo, json_object, shorten, unaccepted_type
from service.model import lifecycle
from service.model.predictor import Predictor
from service.model.repository import ModelRepository
from service.model.testset import MnistTestSet, MnistUnavailable, load_test_set

JSON_TYPE = "application/json"
#: the largest version number a call names (Triton's versions are int64)
MAX_VERSION = 2**63 - 1


class _TestSetCache:
    """The MNIST test set for the gate, read once per worker (None when it is not there)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._loaded = False
        self._value: MnistTestSet | None = None

    def get(self) -> MnistTestSet | None:
        with self._lock:
            if not self._loaded:
                try:
                    self._value = load_test_set(self.config.mnist_data_dir)
                except MnistUnavailable:
                    self._value = None  # the gate then compares the cards' figures, and says so
                self._loaded = True
            return self._value


def _body(fields: Collection[str] = ()) -> dict[str, Any]:
    """The request's JSON object (``{}`` when the body is empty) holding only ``fields``."""
    request = flask.request
    body = request.get_data(cache=True)
    sent = request.headers.get("Content-Type", "")
    # no Content-Type is taken as JSON; one that names no media type (";;;===") is not
    if body.strip() and (
        request.mimetype not in ("", JSON_TYPE) or (not request.mimetype and sent.strip())
    ):
        raise UnsupportedMediaType(
            unaccepted_type(request.mimetype, sent, f"{JSON_TYPE} (or no Content-Type)")
        )
    return json_object(body, fields, request.path)


def _integer(body: dict[str, Any], key: str) -> int:
    value = body.get(key)
    if not (isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_VERSION):
        shown = "missing" if key not in body else echo(value)
        raise InvalidInput(
            f"{key!r} must be a version number, an integer 1..{MAX_VERSION}, not {shown}"
        )
    return value


def _number(body: dict[str, Any], key: str, low: float, high: float, meaning: str) -> float:
    """``body[key]``, a number in (low, high]; InvalidInput names the key, range and value."""
    value: Any = body.get(key)
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (is_number and low < value <= high):  # NaN and 1e999 fail the range test
        shown = "missing" if key not in body else echo(value)
        raise InvalidInput(
            f"{key!r} must be a number in ({low:g}, {high:g}] ({meaning}), not {shown}"
        )
    return float(value)


#: Triton's load parameters: a model config (JSON text) and files (``file:<path>``, base64)
LOAD_CONFIG = "config"
LOAD_FILE_PREFIX = "file:"
UNLOAD_DEPENDENTS = "unload_dependents"
#: why a load override cannot be honoured
ONLY_PUBLISHED = (
    "this service loads a model only from the versions published to its repository "
    "(mnist-models publish)"
)


def _parameters(body: dict[str, Any], action: str) -> dict[str, Any]:
    """The request's ``parameters`` object (``{}`` when it is not sent)."""
    value = body.get("parameters", {})
    if not isinstance(value, dict):
        raise InvalidInput(
            f"'parameters' of {action} must be an object of named parameters, not {echo(value)}"
        )
    return value


def unload_dependents(body: dict[str, Any]) -> bool:
    """The ``unload_dependents`` parameter of an unload (false when not sent).

    Triton's: also unload the models loaded along with this one (an ensemble's parts). This
    model has no dependents (it is one ONNX file, no ensemble), so true and false unload the
    same: the one model. Must be true or false (tritonclient always sends it, false by default).
    Any other parameter is refused by name, as an unknown field is on every route here: Triton
    ignores unknown unload parameters, but then a misspelt ``unload_dependent`` would pass
    unnoticed (tritonclient sends no other).
    """
    parameters = _parameters(body, "unload")
    unknown = sorted(set(parameters) - {UNLOAD_DEPENDENTS})
    if unknown:
        raise InvalidInput(
            f"unknown unload parameter(s) {shorten(str(unknown))}; accepted: {UNLOAD_DEPENDENTS}"
        )
    value = parameters.get(UNLOAD_DEPENDENTS, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{UNLOAD_DEPENDENTS!r} must be true or false, not {echo(value)}")
    return value


def check_load_parameters(body: dict[str, Any]) -> None:
    """Refuse, saying why, every load parameter: this service can honour none of them.

    Triton's load takes ``config`` (a model config as JSON text, used instead of the
    repository's) and ``file:<path>`` (a file's contents, base64, making up a model directory
    that replaces the repository's). Here a model is only ever loaded from the versions published
    to the repository (``mnist-models publish``, which checks and self-tests them), with the
    config their files imply, so either override gets a 422 saying so: never ignored, which
    would answer 200 for a model that is not the one asked for. Both must be strings, as in
    Triton (a wrong type is named first). Any other parameter is refused by name, as Triton's
    HTTP load refuses it too. An empty ``parameters`` object is a plain load.
    """
    parameters = _parameters(body, "load")
    unknown = sorted(
        key for key in parameters if key != LOAD_CONFIG and not key.startswith(LOAD_FILE_PREFIX)
    )
    if unknown:
        raise InvalidInput(
            f"unknown load parameter(s) {shorten(str(unknown))}; Triton's load takes "
            f"{LOAD_CONFIG!r} and '{LOAD_FILE_PREFIX}<path>' (which this service cannot honour)"
        )
    for key in sorted(parameters):
        value = parameters[key]
        if not isinstance(value, str):
            meaning = (
                "a model config as JSON text"
                if key == LOAD_CONFIG
                else "the file's contents in base64"
            )
            raise InvalidInput(
                f"load parameter {shorten(key)!r} must be a string ({meaning}), not {echo(value)}"
            )
    if LOAD_CONFIG in parameters:
        raise InvalidInput(
            f"load parameter {LOAD_CONFIG!r} cannot be honoured: {ONLY_PUBLISHED}, with their "
            "own config, never an override; load without it"
        )
    files = sorted(parameters)
    if files:
        raise InvalidInput(
            f"load parameter(s) {shorten(str(files))} cannot be honoured: {ONLY_PUBLISHED}, "
            "never from files sent with the load; publish the model, then load without them"
        )


def _flag(body: dict[str, Any], key: str) -> bool:
    value = body.get(key, False)
    if not isinstance(value, bool):
        raise InvalidInput(f"{key!r} must be true or false, not {echo(value)}")
    return value


def create_blueprint(predictor: Predictor, config: ServiceConfig) -> flask.Blueprint:
    """The /v2/repository routes for ``predictor``'s repository."""
    blueprint = flask.Blueprint("v2_repository", __name__, url_prefix="/v2/repository")
    test_sets = _TestSetCache(config)

    @blueprint.before_request
    def _admin_only() -> None:
        require_admin(flask.request.headers.get("Authorization"), config.admin_token)

    def repository() -> ModelRepository:
        return predictor.repository  # read when asked: the app is built before any request

    def check_model(model: str) -> None:
        if model != predictor.name:
            raise NotFound(f"unknown model {model!r}: this server serves {predictor.name!r}")

    def applied(outcome: lifecycle.Outcome) -> Any:
        predictor.watcher.converge()  # this worker now; the others at their next poll
        answer: dict[str, Any] = {"message": outcome.message, "state": outcome.state.to_json()}
        if outcome.gate is not None:
            gate = outcome.gate
            answer["gate"] = {
                "passed": gate.passed,
                "problems": list(gate.problems),
                "figures": gate.describe(),
                "test_images": gate.test_images,
            }
        answer.update(outcome.details)
        return answer

    @blueprint.post("/index")
    def index() -> Any:
        body = _body(("ready",))
        ready_only = _flag(body, "ready")
        state = repository().read_state()
        loaded = set(predictor.loaded_versions())
        rejected = predictor.watcher.rejections()
        rows = []
        for version in repository().versions():
            number = version.version
            row: dict[str, Any] = {"name": predictor.name, "version": str(number)}
            if number in loaded:
                row["state"] = "READY"
                if number in rejected:  # its files changed on disk and failed validation
                    row["reason"] = (
                        f"serving the copy validated before; the files on disk are rejected: "
                        f"{rejected[number]}"
                    )
            else:
                row["state"] = "UNAVAILABLE"
                label = state.label_of(number)
                if number in rejected:
                    row["reason"] = f"rejected: {rejected[number]}"
                elif not state.loaded:
                    row["reason"] = "unloaded"
                elif label is None:
                    row["reason"] = "a candidate: not promoted, not in a trial"
                else:
                    row["reason"] = f"{label}, not loaded on this worker yet"
            if not ready_only or row["state"] == "READY":
                rows.append(row)
        return flask.jsonify(rows)

    def route(
        name: str,
        action: Callable[[str, dict[str, Any]], lifecycle.Outcome],
        fields: Collection[str] = (),
    ) -> None:
        def view(model: str) -> Any:
            check_model(model)
            return applied(action(model, _body(fields)))

        blueprint.add_url_rule(f"/models/<model>/{name}", f"{name}", view, methods=["POST"])

    def load(model: str, body: dict[str, Any]) -> lifecycle.Outcome:
        check_load_parameters(body)
        return lifecycle.set_loaded(repository(), True)

    def unload(model: str, body: dict[str, Any]) -> lifecycle.Outcome:
        unload_dependents(body)  # checked; the same either way: this model has no dependents
        return lifecycle.set_loaded(repository(), False)

    route("load", load, ("parameters",))
    route("unload", unload, ("parameters",))
    route(
        "promote",
        lambda model, body: lifecycle.promote(
            repository(),
            _integer(body, "version"),
            config,
            test_sets.get(),
            force=_flag(body, "force"),
        ),
        ("version", "force"),
    )
    route("rollback", lambda model, body: lifecycle.rollback(repository(), config))
    route(
        "canary",
        lambda model, body: lifecycle.start_trial(
            repository(),
            "canary",
            _integer(body, "version"),
            _number(body, "percent", 0, 100, "the share of requests, in percent") / 100.0,
            config,
            test_sets.get(),
            force=_flag(body, "force"),
        ),
        ("version", "percent", "force"),
    )
    route(
        "shadow",
        lambda model, body: lifecycle.start_trial(
            repository(),
            "shadow",
            _integer(body, "version"),
            _number(body, "sample", 0, 1, "the share of requests the shadow also runs"),
            config,
            None,
            force=_flag(body, "force"),
        ),
        ("version", "sample", "force"),
    )
    route("end-trial", lambda model, body: lifecycle.end_trial(repository()))
    return blueprint
