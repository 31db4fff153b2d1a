"""The Open Inference Protocol (KServe V2) for the one served model, as a Flask blueprint.

Health, server and model metadata, Triton's model configuration, and inference with JSON tensors,
the binary tensor data extension and the classification extension. Inference itself is
:class:`InferEndpoint`, answered by the inference dispatcher below Flask; the rest is the Flask
blueprint. Errors are rendered by service.error_render in the protocol's shape,
``{"error": "..."}``, chosen by the /v2 prefix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import TYPE_CHECKING, Any, Protocol

import flask
import numpy as np
from werkzeug.exceptions import HTTPException

from service import draining
from service.access import require_api_token
from service.dispatch import Answer, InferenceRequest
from service.errors import ModelUnavailable, NotFound, method_not_allowed, no_route
from service.json_body import shorten
from service.model.contract import (
    INPUT_NAME,
    N_CLASSES,
    N_PIXELS,
    OUTPUT_LABEL,
    OUTPUT_PROBABILITIES,
)
from service.model.predictor import loaded_phrase
from service.model.reject import RejectOption
from service.observability import metrics, tracing
from service.observability.request_log import REQUEST_ID_HEADER, valid_request_id
from service.observability.wsgi import RequestFacts
from service.v2.binary import HEADER_LENGTH, decompress_body
from service.v2.codec import DECISION_OUTPUTS, encode_infer_response, parse_infer_request
from service.v2.statistics import model_statistics

if TYPE_CHECKING:
    from service.store.recorder import PredictionRecorder

SERVER_NAME = "mnist-service"
PLATFORM = "onnxruntime_onnx"
V2_INFER_ROUTE = "/v2/models/<model>/infer"
V2_INFER_VERSION_ROUTE = "/v2/models/<model>/versions/<version>/infer"
EXTENSIONS = (
    "binary_tensor_data",
    "classification",
    "model_configuration",
    "model_repository",
    "statistics",
)


class CardLike(Protocol):
    """What V2 reads of a model card (service.model.contract.ModelCard)."""

    def to_json(self) -> dict[str, Any]: ...


class LoadedModelLike(Protocol):
    """What V2 reads of the predictor's loaded model (service.model.predictor.LoadedModel)."""

    @property
    def name(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def card(self) -> CardLike: ...


class PredictionLike(Protocol):
    """What V2 reads of a prediction (service.model.predictor.Prediction)."""

    @property
    def labels(self) -> np.ndarray: ...
    @property
    def probabilities(self) -> np.ndarray: ...
    @property
    def model_name(self) -> str: ...
    @property
    def model_version(self) -> int: ...


class LimitsLike(Protocol):
    """What V2 reads of the configuration (service.config.ServiceConfig)."""

    @property
    def max_batch(self) -> int: ...
    @property
    def max_body_bytes(self) -> int: ...
    @property
    def api_tokens(self) -> frozenset[str]: ...


class PredictorLike(Protocol):
    """The slice of service.model.predictor.Predictor that V2 uses."""

    @property
    def name(self) -> str: ...
    @property
    def loaded(self) -> LoadedModelLike: ...
    def model(self, version: int | None = None) -> LoadedModelLike: ...
    def loaded_versions(self) -> list[int]: ...
    def predict(self, images: np.ndarray, version: int | None = None) -> PredictionLike: ...


class InferEndpoint:
    """POST /v2/models/<model>[/versions/<version>]/infer, answered below Flask.

    ``config.max_batch`` is the largest batch accepted (a 400 above it, as the protocol says);
    ``config.max_body_bytes`` bounds the body, before and after decompression. The request's
    ``id`` names the request (``answer_infer``) unless X-Request-ID gave a valid one.
    """

    endpoint = "v2.infer"
    rules = (V2_INFER_ROUTE, V2_INFER_VERSION_ROUTE)

    def __init__(
        self,
        predictor: PredictorLike,
        config: LimitsLike,
        recorder: PredictionRecorder | None = None,
    ) -> None:
        self.predictor = predictor
        self.config = config
        self.recorder = recorder

    def answer(self, request: InferenceRequest) -> Answer:
        """The inference response; a ServiceError says what was wrong with the request."""
        require_api_token(request.header("Authorization"), self.config.api_tokens)
        model, version = request.args["model"], request.args.get("version")
        resolve_model(self.predictor, model, version)
        limit = self.config.max_body_bytes
        with tracing.step("decode"):
            raw = request.body(limit)
            body = decompress_body(raw, request.header("Content-Encoding"), limit)
        answer = answer_infer(
            self.predictor, model, version, body, request.header(HEADER_LENGTH),
            self.config.max_batch, request.facts, self.recorder,
            id_names_request=not valid_request_id(request.header(REQUEST_ID_HEADER)),
        )  # fmt: skip
        headers = [("Content-Type", answer.content_type)]
        if answer.header_length is not None:
            headers.append((HEADER_LENGTH, str(answer.header_length)))
        return Answer(answer.payload, headers)


def create_blueprint(
    predictor: PredictorLike,
    config: LimitsLike,
    live_stats: Callable[[int], dict[str, Any]] | None = None,
) -> flask.Blueprint:
    """The /v2 routes other than inference (InferEndpoint); ``config.max_batch`` is reported
    as Triton's max_batch_size, so V2 says exactly what the predictor would refuse.
    ``live_stats(version)`` gives the live figures of ``.../versions/<version>/stats``."""
    server = {"name": SERVER_NAME, "version": _server_version(), "extensions": list(EXTENSIONS)}
    blueprint = flask.Blueprint("v2", __name__, url_prefix="/v2")

    def resolve(model: str, version: str | None) -> LoadedModelLike:
        return resolve_model(predictor, model, version)

    @blueprint.get("")
    def server_metadata() -> Any:
        return server

    # JSON bodies as KServe's own server answers them; tritonclient reads only the status
    @blueprint.get("/health/live")
    def live() -> Any:
        return {"live": True}, 200

    @blueprint.get("/health/ready")
    def ready() -> Any:
        if draining.active():  # SIGTERM: finish what is held, take nothing new
            return {"ready": False}, 503
        try:
            _ = predictor.loaded  # raises ModelUnavailable until a version is serving
        except ModelUnavailable:
            return {"ready": False}, 503
        return {"ready": True}, 200

    @blueprint.get("/models/<model>")
    @blueprint.get("/models/<model>/versions/<version>")
    def model_metadata(model: str, version: str | None = None) -> Any:
        loaded = resolve(model, version)
        versions = [loaded.version] if version is not None else predictor.loaded_versions()
        return {
            "name": loaded.name,
            "versions": [str(v) for v in versions],
            "platform": PLATFORM,
            "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, N_PIXELS]}],
            "outputs": [
                {"name": OUTPUT_LABEL, "datatype": "INT64", "shape": [-1]},
                {"name": OUTPUT_PROBABILITIES, "datatype": "FP32", "shape": [-1, N_CLASSES]},
            ],
        }

    @blueprint.get("/models/<model>/ready")
    @blueprint.get("/models/<model>/versions/<version>/ready")
    def model_ready(model: str, version: str | None = None) -> Any:
        try:
            resolve(model, version)
        except ModelUnavailable:
            return {"name": model, "ready": False}, 503
        return {"name": model, "ready": True}, 200

    @blueprint.get("/models/<model>/config")
    @blueprint.get("/models/<model>/versions/<version>/config")
    def model_config(model: str, version: str | None = None) -> Any:
        loaded = resolve(model, version)
        return triton_model_config(loaded.name, config.max_batch, predictor.loaded_versions())

    @blueprint.get("/models/<model>/stats")
    @blueprint.get("/models/<model>/versions/<version>/stats")
    def model_stats(model: str, version: str | None = None) -> Any:
        if model != predictor.name:
            raise NotFound(f"unknown model {model!r}: this server serves {predictor.name!r}")
        samples = metrics.collect_samples()
        number = version_number(model, version, predictor.loaded_versions)
        seen = {
            int(labels["version"])
            for labels, _ in samples.get("mnist_inferences_total", [])
            if labels.get("version", "").isdigit()
        }
        if number is None:
            versions = sorted(seen | set(predictor.loaded_versions()))
        elif number in seen or number in predictor.loaded_versions():
            versions = [number]
        else:
            raise NotFound(f"model {model!r} version {number} is not loaded and has no figures")
        statistics = model_statistics(model, versions, samples)
        if live_stats is not None:  # feedback, answers and drift (service.observability.live)
            for entry in statistics["model_stats"]:
                entry.update(live_stats(int(entry["version"])))
        return statistics

    @blueprint.get("/models/<model>/versions/<version>/card")
    def model_card(model: str, version: str) -> Any:
        return flask.jsonify(resolve(model, version).card.to_json())

    @blueprint.route("/<path:rest>", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    def unknown_route(rest: str) -> Any:
        method, path = flask.request.method, flask.request.path
        allowed = _methods_routed_elsewhere(path)
        if allowed:
            raise method_not_allowed(method, path, allowed)
        raise no_route(method, path)

    return blueprint


def version_number(
    model: str, version: str | None, loaded: Callable[[], Sequence[int]] = tuple
) -> int | None:
    """The version of a URL as a number (None: unversioned); NotFound when it is not one,
    naming the versions ``loaded()`` returns (asked only then)."""
    if version is None:
        return None
    digits = version.isascii() and version.isdigit()
    if digits and len(version) < 10 and int(version) > 0:
        return int(version)
    # a positive integer too long for any version a repository holds: not loaded, as others
    positive = digits and version.strip("0")
    problem = "loaded" if positive else "(a version is a positive integer)"
    raise NotFound(
        f"model {model!r} has no version {shorten(version)!r} {problem}; {loaded_phrase(loaded())}"
    )


def resolve_model(serving: PredictorLike, model: str, version: str | None) -> LoadedModelLike:
    """The stable model, or the loaded version named in the URL; NotFound otherwise."""
    if model != serving.name:
        raise NotFound(f"unknown model {model!r}: this server serves {serving.name!r}")
    return serving.model(version_number(model, version, serving.loaded_versions))


@dataclass(frozen=True)
class InferAnswer:
    """The body of a successful infer response and what its headers need."""

    payload: bytes
    #: the Inference-Header-Content-Length of a binary answer; None for plain JSON
    header_length: int | None

    @property
    def content_type(self) -> str:
        return "application/json" if self.header_length is None else "application/octet-stream"


def answer_infer(
    serving: PredictorLike,
    model: str,
    version: str | None,
    body: bytes,
    header_length: str | None,
    max_batch: int,
    facts: RequestFacts,
    recorder: PredictionRecorder | None = None,
    *,
    id_names_request: bool = False,
) -> InferAnswer:
    """Answer an infer request whose body is already decompressed; a ServiceError otherwise.

    The answer goes to ``recorder`` (the prediction store's queue) as well, under
    ``facts.request_id``. ``id_names_request`` (the X-Request-ID header gave no valid id): the
    request's own ``id``, when X-Request-ID would accept it (1..128 visible ASCII characters),
    becomes ``facts.request_id``: the id the answer is stored under (POST /feedback takes it),
    echoed in X-Request-ID and logged. Any other ``id`` (the protocol allows any string) is
    still echoed in the body, and the request keeps the id it was given."""
    resolve_model(serving, model, version)

    def name_request(request_id: str) -> None:
        if id_names_request and valid_request_id(request_id):
            facts.request_id = request_id

    with tracing.step("preprocess"):
        request = parse_infer_request(body, header_length, max_batch, name_request)
    facts.batch_size = len(request.images)
    number = version_number(model, version)
    with tracing.step("inference"):
        prediction = serving.predict(request.images, number)
    facts.model_version = prediction.model_version
    if number is not None and prediction.model_version != number:
        raise NotFound(f"model {model!r} version {version} was replaced while answering")
    reject: RejectOption = getattr(prediction, "reject", None) or RejectOption()
    hidden: np.ndarray | None = getattr(prediction, "hidden", None)
    decision = None
    if any(output.name in DECISION_OUTPUTS for output in request.outputs):
        decision = reject.decide(request.images, prediction.probabilities, hidden)
    if recorder is not None:
        route = V2_INFER_ROUTE if version is None else V2_INFER_VERSION_ROUTE
        # the decision goes with the record: the answer's, or made off the request path
        recorder.record(
            facts.request_id,
            route,
            prediction.model_version,
            request.images,
            prediction.labels,
            prediction.probabilities,
            accepted=None if decision is None else decision.accepted,
            reject_reasons=None if decision is None else decision.reasons,
            reject=reject,
            hidden=hidden,
        )
    payload, binary_header_length = encode_infer_response(
        request,
        prediction.labels,
        prediction.probabilities,
        prediction.model_name,
        prediction.model_version,
        decision,
    )
    return InferAnswer(payload, binary_header_length)


def _methods_routed_elsewhere(path: str) -> list[str]:
    """The methods that a real V2 route (not the catch-all) answers on ``path``."""
    adapter = flask.current_app.url_map.bind("localhost")
    allowed = []
    for method in ("GET", "POST"):
        try:
            endpoint, _ = adapter.match(path, method=method)
        except HTTPException:  # NotFound, MethodNotAllowed or a redirect: not routed there
            continue
        if endpoint != "v2.unknown_route":  # the inference routes are in the map too
            allowed.append(method)
    return allowed


def triton_model_config(name: str, max_batch: int, versions: Sequence[int] = ()) -> dict[str, Any]:
    """Triton's model configuration as JSON, the same model that contract.triton_config() writes;
    ``versions`` (the loaded ones) are its specific version policy (latest 1 without them)."""
    policy: dict[str, Any] = (
        {"specific": {"versions": list(versions)}} if versions else {"latest": {"num_versions": 1}}
    )
    return {
        "name": name,
        "platform": PLATFORM,
        "backend": "onnxruntime",
        "max_batch_size": max_batch,
        "input": [
            {
                "name": INPUT_NAME,
                "data_type": "TYPE_FP32",
                "format": "FORMAT_NONE",
                "dims": [N_PIXELS],
            }
        ],
        "output": [
            {
                "name": OUTPUT_LABEL,
                "data_type": "TYPE_INT64",
                "dims": [1],  # Triton refuses an output without dims; [1] reshaped to a scalar
                "reshape": {"shape": []},
                "label_filename": "",
            },
            {
                "name": OUTPUT_PROBABILITIES,
                "data_type": "TYPE_FP32",
                "dims": [N_CLASSES],
                "label_filename": "",
            },
        ],
        "version_policy": policy,
    }


def _server_version() -> str:
    try:
        return metadata.version(SERVER_NAME)
    except metadata.PackageNotFoundError:  # running from a source tree that is not installed
        return "0+unknown"
