"""The simple API for people: POST /predict with JSON pixels, base64 images or PNG/JPEG uploads."""

from __future__ import annotations

import base64
import binascii
import functools
import io
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import orjson
from flask import Blueprint, Response
from flask import request as flask_request
from werkzeug.datastructures import MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.wrappers import Request

from service import json_arrays
from service.access import require_api_token
from service.config import DEFAULT_MAX_REQUEST_PIXELS, ServiceConfig
from service.dispatch import Answer, InferenceRequest, read_decoded_body
from service.errors import (
    BadRequest,
    InvalidImage,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    body_over_limit,
)
from service.images import (
    ImageLimits,
    check_size,
    encode_png_base64,
    header_size,
    preprocess_image,
)
from service.json_body import (
    WrittenNumber,
    check_depth,
    parse_json_slowly,
    shorten,
    unaccepted_type,
)
from service.model import contract
from service.model.explain import Explainer, Explanation, ServedMlp
from service.model.predictor import Predictor
from service.model.reject import Decision, RejectOption
from service.observability import metrics, tracing
from service.observability.wsgi import RequestFacts

if TYPE_CHECKING:
    from service.store.recorder import PredictionRecorder

PREDICT_ROUTE = "/predict"
#: a model without a calibrated reject option accepts every digit (MIN_CONFIDENCE aside)
NO_REJECTION = RejectOption()
EXPLAIN_ROUTE = "/v2/models/<model>/explain"
WEIGHTS_ROUTE = "/v2/models/<model>/explain/weights"
JSON_TYPE = "application/json"
IMAGE_TYPES = (
    "image/png",
    "image/jpeg",
    "image/jpg",  # not registered, but common
    "image/webp",
    "image/bmp",
    "image/gif",
    "image/tiff",
)
#: a raw body of this type is read when its bytes are one of the accepted image formats
OCTET_STREAM = "application/octet-stream"
MULTIPART_TYPE = "multipart/form-data"
MULTIPART_FIELD = "image"
ACCEPTED_TYPES = (JSON_TYPE, *IMAGE_TYPES, OCTET_STREAM, MULTIPART_TYPE)
SIDE = contract.IMAGE_SIDE
PIXELS = contract.N_PIXELS
#: probabilities are float32; more digits than this would only print float32 noise
DECIMALS = 6
_SCALE = 10.0**DECIMALS
#: up to this many images, answers are built from Python floats rather than numpy arrays
FEW_IMAGES = 8
TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})
SHAPE_HINT = f"expected {PIXELS} numbers, {SIDE} rows of {SIDE} numbers, or a base64 PNG/JPEG"


@dataclass(frozen=True)
class PredictOptions:
    """What the query string asks for beyond the digit: top_k, the model's input image, and
    keeping that input in the prediction store."""

    top_k: int | None = None
    return_input: bool = False
    store_input: bool = False


def parse_options(args: MultiDict[str, str]) -> PredictOptions:
    """The options of ?top_k=N (1..10), ?return_input=true and ?store_input=true; BadRequest
    names a bad one."""
    unknown = sorted(set(args) - {"top_k", "return_input", "store_input"})
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s) {unknown}; accepted: top_k, return_input, store_input"
        )
    top_k = None
    if "top_k" in args:
        text = _single(args, "top_k")
        # a few digits at most: int() refuses more than 4300 of them with advice for Python users
        small = text.isascii() and text.isdigit() and len(text.lstrip("0")) <= 2
        if not (small and 1 <= int(text) <= contract.N_CLASSES):
            raise BadRequest(f"top_k must be an integer 1..{contract.N_CLASSES}, not {text!r}")
        top_k = int(text)
    return PredictOptions(
        top_k=top_k,
        return_input=_switch(args, "return_input"),
        store_input=_switch(args, "store_input"),
    )


def _switch(args: MultiDict[str, str], name: str) -> bool:
    if name not in args:
        return False
    text = _single(args, name).lower()
    if text not in TRUE_WORDS | FALSE_WORDS:
        raise BadRequest(f"{name} must be true or false, not {text!r}")
    return text in TRUE_WORDS


def _single(args: MultiDict[str, str], name: str) -> str:
    values = args.getlist(name)
    if len(values) != 1:
        raise BadRequest(f"query parameter {name} is given {len(values)} times")
    return values[0]


# -- JSON -----------------------------------------------------------------------------------------


#: a pixel image whose darkest and lightest pixel differ by less than this (of 255) is blank
MIN_PIXEL_CONTRAST = 32.0


def check_shows_digits(raw: np.ndarray, first: int = 0) -> None:
    """InvalidInput unless every raw 0..255 image of float32 [N, 784] can show a digit.

    A blank or nearly constant image shows none (an empty canvas, a solid square); an image
    whose values all lie in 0..1 was most likely divided by 255 already, or is a 0/1 mask.
    ``first`` is the index of the first image, for the message.
    """
    _shows_digits(raw.min(axis=1), raw.max(axis=1), first)


def _shows_digits(low: np.ndarray, high: np.ndarray, first: int = 0) -> None:
    """check_shows_digits given each image's lowest and highest value (float32 [N] each)."""
    flat = high - low < MIN_PIXEL_CONTRAST
    if not flat.any():
        return  # the usual case: one vectorised test per image
    index = int(np.argmax(flat))
    if high[index] <= 1.0 and high[index] > low[index]:
        raise InvalidInput(
            f"image {first + index} has every pixel between 0 and 1: the scale is 0..255 with "
            "ink high (as in MNIST), so multiply by 255 (a 0/1 mask too) before sending"
        )
    raise InvalidInput(
        f"image {first + index} shows no digit: its pixels are all between {low[index]:g} and "
        f"{high[index]:g} (blank or nearly constant); draw the digit 0..255, ink high"
    )


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN and Infinity although JSON has neither; a pixel must be finite
    raise InvalidInput(f"{name} is not a pixel value (and not JSON): use numbers 0..255")


def _parse_slowly(body: bytes) -> Any:
    # a number too large for a float (1e400) is echoed as written: "1e400 is outside 0..255"
    return parse_json_slowly(body, on_constant=_reject_constant)


def images_from_json(
    body: bytes,
    max_batch: int,
    limits: ImageLimits,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
) -> np.ndarray:
    """float32 [N, 784] in [0, 1] from a JSON body {"images": [...]}; a 4xx error otherwise."""
    pixels = json_arrays.pixel_rows(body, max_batch)
    if pixels is not None:
        # each image's extremes, once: the range check of the batch and the blank check
        low, high = pixels.min(axis=1), pixels.max(axis=1)
        if low.min() >= 0 and high.max() <= contract.PIXEL_MAX:
            _shows_digits(low, high)
            pixels /= np.float32(contract.PIXEL_MAX)
            return pixels
    # anything else, a pixel out of range included, is parsed as Python objects: slower, but it
    # finds the first bad value and names it
    return images_from_json_objects(body, max_batch, limits, max_request_pixels)


def images_from_json_objects(
    body: bytes,
    max_batch: int,
    limits: ImageLimits,
    max_request_pixels: int = DEFAULT_MAX_REQUEST_PIXELS,
) -> np.ndarray:
    """images_from_json by way of Python objects: base64 images, and every malformed body.

    float32 [N, 784] in [0, 1]; the same result as images_from_json for every body, and the 4xx
    error that names the first thing wrong with a bad one.
    """
    if not body.strip():
        raise BadRequest('the body is empty; expected JSON {"images": [...]}')
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        # orjson is strict and fast; the standard parser, on this rare path, says what was wrong
        # (NaN, Infinity) or reads what orjson refuses but is still only out of range (1e999)
        payload = _parse_slowly(body)
    check_depth(payload, body)  # the one answer to a hostile depth, whichever parser read it
    if not isinstance(payload, dict):
        raise InvalidInput('the body must be a JSON object {"images": [...]}')
    if "images" not in payload:
        raise InvalidInput('the JSON object has no "images" list')
    unknown = sorted(set(payload) - {"images"})
    if unknown:
        raise InvalidInput(f'unknown field(s) {unknown}; the body holds only "images"')
    images = payload["images"]
    if not isinstance(images, list):
        raise InvalidInput(f'"images" must be a list of images, not {_json_type(images)}')
    if not images:
        raise InvalidInput('"images" is empty: send at least one image')
    if len(images) > max_batch:
        raise PayloadTooLarge(f"a batch of {len(images)} images is over the limit of {max_batch}")
    if all(type(item) is list for item in images):
        batch = _pixel_batch(images, body)
        if batch is not None:
            check_shows_digits(batch * np.float32(contract.PIXEL_MAX))
            return batch
    rows: dict[int, np.ndarray] = {}
    encoded: dict[int, bytes] = {}
    for index, item in enumerate(images):
        if type(item) is list:
            rows[index] = _pixel_image(index, item)
        elif isinstance(item, str):
            encoded[index] = _base64_bytes(index, item)
        else:
            raise InvalidInput(f"image {index} is {_json_type(item)}: {SHAPE_HINT}")
    for index, row in rows.items():  # every image's shape first, then what they show
        check_shows_digits(row[np.newaxis] * np.float32(contract.PIXEL_MAX), index)
    rows.update(decode_images(encoded, limits, max_request_pixels))
    return np.stack([rows[index] for index in range(len(images))])


#: the bytes of JSON numbers, lists and spaces; and what {"images": [...]} leaves without them
_NUMBER_BYTES = b"0123456789.-+eE,[] \t\r\n"
_OBJECT_BYTES = b'{"imags":}'


def _pixel_batch(images: list[Any], body: bytes) -> np.ndarray | None:
    """The whole batch converted by numpy at once; None when it needs the per-image path."""
    # The body parsed as {"images": [...]} (other keys were refused). With every byte a number,
    # bracket, comma or space taken out, what is left is that key's and the object's own
    # characters; any string, true, false or null would leave more. Then every pixel is a JSON
    # number and numpy may convert the whole batch without looking at each value.
    if body.translate(None, _NUMBER_BYTES) != _OBJECT_BYTES:
        return None
    try:
        with np.errstate(over="ignore"):  # 1e39 becomes inf: the range check names it
            array = np.array(images, dtype=np.float32)
    except (ValueError, TypeError, OverflowError):
        return None  # ragged, or an integer too large for float32: the per-image path says which
    count = array.shape[0]
    if array.shape[1:] == (SIDE, SIDE):
        array = array.reshape(count, PIXELS)
    elif array.shape[1:] != (PIXELS,):
        return None
    # NaN fails both comparisons and infinity the second: no separate isfinite pass
    if not (array.min() >= 0 and array.max() <= contract.PIXEL_MAX):
        return None  # the per-image path finds the first bad pixel and names it
    array /= np.float32(contract.PIXEL_MAX)
    return array


def _pixel_image(index: int, item: list[Any]) -> np.ndarray:
    """One image of JSON numbers, checked value by value (the slow path, with exact messages)."""
    if len(item) == SIDE and all(type(row) is list for row in item):
        for number, row in enumerate(item):
            if len(row) != SIDE:
                raise InvalidInput(
                    f"image {index}, row {number} has {len(row)} values: {SHAPE_HINT}"
                )
        flat = [value for row in item for value in row]
    elif len(item) == PIXELS:
        flat = item
    else:
        raise InvalidInput(f"image {index} has {len(item)} values: {SHAPE_HINT}")
    for pixel, value in enumerate(flat):
        kind = type(value)
        if kind is not int and kind is not float and kind is not WrittenNumber:
            raise InvalidInput(
                f"image {index}, pixel {pixel}: {_json_type(value)} is not a number 0..255"
            )
        # ints are compared as ints: math.isfinite(10**400) would raise OverflowError
        if (kind is float and not math.isfinite(value)) or not 0 <= value <= contract.PIXEL_MAX:
            raise InvalidInput(f"image {index}, pixel {pixel}: {value!r} is outside 0..255")
    return np.asarray(flat, dtype=np.float32) / np.float32(contract.PIXEL_MAX)


#: the URL-safe alphabet's two letters as the standard alphabet's (RFC 4648, section 5)
_URL_SAFE = str.maketrans("-_", "+/")


def _base64_bytes(index: int, text: str) -> bytes:
    """The bytes of an image sent as base64 text (RFC 4648): the standard or the URL-safe
    alphabet (not mixed), padding optional, whitespace ignored, bare or in a data URL
    (RFC 2397; its scheme and parameters in any case). InvalidImage names what is wrong."""
    data = text.strip()
    if data[:5].lower() == "data:":
        header, comma, data = data.partition(",")
        if not comma or not header.lower().endswith(";base64"):
            raise InvalidImage(f"image {index}: a data URL must be data:image/png;base64,...")
    compact = "".join(data.split())
    if ("-" in compact or "_" in compact) and not ("+" in compact or "/" in compact):
        compact = compact.translate(_URL_SAFE)
    compact += "=" * (-len(compact) % 4)
    try:
        raw = base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"image {index} is a string but not base64: {SHAPE_HINT}") from None
    return raw


def claimed_pixels(data: bytes, formats: tuple[str, ...]) -> int:
    """Width x height from the image's header, decoding nothing; 0 when it is no such image."""
    size = header_size(data, formats)
    return 0 if size is None else size[0] * size[1]


def decode_images(
    encoded: Mapping[int, bytes], limits: ImageLimits, max_request_pixels: int
) -> dict[int, np.ndarray]:
    """Each encoded image made MNIST-like, after checking the pixels each claims (the image's
    own limit, 422 naming its size) and they claim in total (the request's, 413)."""
    # every image may be within its own limit while many of them together cost seconds of CPU
    claimed = 0
    for index, raw in encoded.items():
        size = header_size(raw, limits.formats)
        if size is None:
            continue  # not an image: preprocess_image refuses it with the precise reason
        try:
            check_size(*size, limits)
        except InvalidImage as exc:
            raise InvalidImage(f"image {index}: {exc.message}") from exc
        claimed += size[0] * size[1]
    if claimed > max_request_pixels:
        raise PayloadTooLarge(
            f"the {len(encoded)} image(s) of this request hold {claimed} pixels; the limit per "
            f"request is {max_request_pixels}"
        )
    return {index: _decoded(index, raw, limits) for index, raw in encoded.items()}


def _decoded(index: int, raw: bytes, limits: ImageLimits) -> np.ndarray:
    if not raw:
        raise InvalidImage(f"image {index} is empty")
    try:
        return preprocess_image(raw, limits)
    except InvalidImage as exc:
        raise InvalidImage(f"image {index}: {exc.message}") from exc


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return "a number"


# -- uploads --------------------------------------------------------------------------------------


class _UploadRequest(Request):
    """werkzeug's Request, but a malformed form raises ValueError saying why: werkzeug's own
    parser drops such a form silently, whole, leaving nothing to say what was wrong. ``close``
    closes every file part's stream, those of a form refused halfway included."""

    def __init__(self, environ: dict[str, Any]) -> None:
        super().__init__(environ)
        self._streams: list[IO[bytes]] = []

    def make_form_data_parser(self) -> FormDataParser:
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        stream = super()._get_file_stream(
            total_content_length, content_type, filename, content_length
        )
        self._streams.append(stream)
        return stream

    def close(self) -> None:
        super().close()
        for stream in self._streams:
            stream.close()


def upload_request(req: InferenceRequest, config: ServiceConfig) -> Request:
    """werkzeug's view of a multipart request, with the service's body and form limits."""
    upload = _UploadRequest(req.environ)
    upload.max_content_length = config.max_body_bytes
    # a multipart batch holds at most max_batch images; a few parts more are harmless form fields
    upload.max_form_parts = config.max_batch + 16
    upload.max_form_memory_size = config.max_body_bytes
    return upload


def images_from_upload(
    req: Request, max_batch: int, limits: ImageLimits, max_request_pixels: int
) -> np.ndarray:
    """float32 [N, 784] from multipart parts named "image"; a 4xx error otherwise."""
    boundary = req.mimetype_params.get("boundary", "")
    if not boundary:
        raise BadRequest(
            f"the {MULTIPART_TYPE} Content-Type has no boundary parameter: send "
            f'"{MULTIPART_TYPE}; boundary=..." with the line that separates the parts'
        )
    try:
        parts = req.files.getlist(MULTIPART_FIELD)
        others = [name for name in req.files if name != MULTIPART_FIELD]
    except ValueError as exc:
        raise BadRequest(_malformed_form(exc, boundary)) from None
    except RequestEntityTooLarge:
        raise form_over_limits(req) from None
    if not parts:
        if MULTIPART_FIELD in req.form:
            raise InvalidInput(
                f'"{MULTIPART_FIELD}" was sent as a text field, not a file: send each picture as '
                f"a file part (with a filename, as curl -F {MULTIPART_FIELD}=@digit.png does)"
            )
        named = f" (found {sorted(set(others))})" if others else ""
        raise InvalidInput(f'send one or more multipart file parts named "image"{named}')
    if len(parts) > max_batch:
        raise PayloadTooLarge(f"a batch of {len(parts)} images is over the limit of {max_batch}")
    encoded = {index: part.read() for index, part in enumerate(parts)}
    decoded = decode_images(encoded, limits, max_request_pixels)
    return np.stack([decoded[index] for index in range(len(parts))])


def _malformed_form(error: ValueError, boundary: str) -> str:
    """What is wrong with a multipart body werkzeug's parser refused (``error``)."""
    delimiter = f"--{shorten(boundary)}"
    if str(error).startswith("Invalid form-data cannot parse beyond"):  # the body ended early
        if str(error).endswith("PREAMBLE"):
            return (
                f'malformed multipart body: no part starts with "{delimiter}", the boundary its '
                "Content-Type names"
            )
        return (
            f'malformed multipart body: the form ends before its closing boundary "{delimiter}--"'
        )
    return f"malformed multipart body: {error}"


def form_over_limits(req: Request) -> PayloadTooLarge:
    """The 413 of a multipart form werkzeug refused: too many parts, or a field too large."""
    return PayloadTooLarge(
        f"the multipart form is over its limits: at most {req.max_form_parts} parts, and "
        f"{req.max_form_memory_size} bytes in a field that is not a file"
    )


def request_body(req: InferenceRequest, config: ServiceConfig) -> bytes:
    """The whole body; PayloadTooLarge when it is over the limit, chunked bodies included."""
    return read_decoded_body(req.environ, config.max_body_bytes)


def inflated(req: InferenceRequest, config: ServiceConfig) -> InferenceRequest:
    """The request with its compressed body replaced by the inflated one (for multipart)."""
    body = request_body(req, config)
    environ = dict(req.environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    environ.pop("HTTP_CONTENT_ENCODING", None)
    environ.pop("HTTP_TRANSFER_ENCODING", None)
    return InferenceRequest(environ, req.rule, req.args, req.facts)


def images_from_request(
    req: InferenceRequest, config: ServiceConfig, limits: ImageLimits, body: bytes | None = None
) -> np.ndarray:
    """The request's images as float32 [N, 784] in [0, 1], whatever form they came in.

    ``body``: the body already read (request_body), for JSON and single-image requests.
    """
    kind = req.mimetype
    budget = config.max_request_pixels
    if kind == JSON_TYPE:
        body = request_body(req, config) if body is None else body
        return images_from_json(body, config.max_batch, limits, budget)
    if kind in IMAGE_TYPES:
        body = request_body(req, config) if body is None else body
        return decode_images({0: body}, limits, budget)[0][np.newaxis]
    if kind == OCTET_STREAM:
        data = request_body(req, config)
        if not claimed_pixels(data, limits.formats):
            raise UnsupportedMediaType(
                f"{OCTET_STREAM} is accepted only when the bytes are an image "
                f"({', '.join(limits.formats)}); these are not. Send JSON with the right "
                "Content-Type, or an image"
            )
        return decode_images({0: data}, limits, budget)[0][np.newaxis]
    if kind == MULTIPART_TYPE:
        length = req.content_length
        if length is not None and length > config.max_body_bytes:
            raise body_over_limit(config.max_body_bytes)
        compressed = (req.header("Content-Encoding") or "identity").strip().lower() != "identity"
        if compressed or length is None:  # chunked: read whole first, so its limit is exact
            req = inflated(req, config)
        upload = upload_request(req, config)
        try:
            return images_from_upload(upload, config.max_batch, limits, budget)
        finally:
            upload.close()  # the parts' temporary files
    raise UnsupportedMediaType(
        unaccepted_type(kind, req.content_type, f"one of {', '.join(ACCEPTED_TYPES)}")
    )


# -- answer ---------------------------------------------------------------------------------------


def predictions_json(
    labels: np.ndarray,
    probabilities: np.ndarray,
    images: np.ndarray,
    options: PredictOptions,
    reject: RejectOption | None = None,
    decision: Decision | None = None,
) -> list[dict[str, Any]]:
    """One answer per image: digit, confidence, the ten probabilities, whether the digit is
    accepted (and why not: low_confidence, not_a_digit), and what the query asked for.
    ``decision`` is ``reject``'s decision when already made."""
    digits = labels.tolist()
    if decision is None:
        decision = (reject or NO_REJECTION).decide(images, probabilities)
    if len(digits) <= FEW_IMAGES and options.top_k is None and not options.return_input:
        # numpy's per-call overhead is most of the cost for a few images: the same rounding
        # (np.round: scale, round half to even, unscale) on Python floats, the same numbers
        rows = [[round(value * _SCALE) / _SCALE for value in row] for row in probabilities.tolist()]
        return [
            {
                "digit": digit,
                "confidence": row[digit],
                "probabilities": row,
                "accepted": accepted,
                "reject_reason": reason,
            }
            for digit, row, accepted, reason in zip(
                digits, rows, decision.accepted, decision.reasons, strict=True
            )
        ]
    rounded = np.round(probabilities.astype(np.float64), DECIMALS)
    count = len(labels)
    confidences = rounded[np.arange(count), labels].tolist()
    answers = [
        {
            "digit": digit,
            "confidence": confidence,
            "probabilities": row,
            "accepted": accepted,
            "reject_reason": reason,
        }
        for digit, confidence, row, accepted, reason in zip(
            digits, confidences, rounded.tolist(), decision.accepted, decision.reasons, strict=True
        )
    ]
    if options.top_k is not None:
        order = np.argsort(-probabilities, axis=1, kind="stable")[:, : options.top_k]
        ranked = np.take_along_axis(rounded, order, axis=1)
        for answer, classes, values in zip(answers, order.tolist(), ranked.tolist(), strict=True):
            answer["top_k"] = [
                {"digit": digit, "probability": value}
                for digit, value in zip(classes, values, strict=True)
            ]
    if options.return_input:
        for answer, pixels in zip(answers, images, strict=True):
            answer["input_png"] = encode_png_base64(pixels)
    return answers


def answer_images(
    predictor: Predictor,
    images: np.ndarray,
    options: PredictOptions,
    facts: RequestFacts,
    recorder: PredictionRecorder | None = None,
) -> bytes:
    """The JSON answer of /predict for ``images``; notes the batch size and model version, and
    hands the answer to ``recorder`` (the prediction store's queue)."""
    facts.batch_size = len(images)
    with tracing.step("inference"):
        prediction = predictor.predict(images)
    facts.model_version = prediction.model_version
    decision = (prediction.reject or NO_REJECTION).decide(
        images, prediction.probabilities, prediction.hidden
    )
    if recorder is not None:
        recorder.record(
            facts.request_id,
            PREDICT_ROUTE,
            prediction.model_version,
            images,
            prediction.labels,
            prediction.probabilities,
            store_input=options.store_input,
            accepted=decision.accepted,
            reject_reasons=decision.reasons,
        )
    answer = {
        "predictions": predictions_json(
            prediction.labels,
            prediction.probabilities,
            images,
            options,
            prediction.reject,
            decision,
        ),
        "model": {"name": prediction.model_name, "version": prediction.model_version},
        "request_id": facts.request_id,
    }
    # orjson directly: Flask's provider (stdlib json, sorted keys) costs more on every call
    return orjson.dumps(answer)


def explanations_json(
    explanation: Explanation, images: np.ndarray, options: PredictOptions
) -> list[dict[str, Any]]:
    """One answer per image: digit, runner-up, probabilities, hidden activations, saliency."""
    answers = predictions_json(explanation.digits, explanation.probabilities, images, options)
    hidden = [layer.tolist() for layer in explanation.hidden]
    for index, (answer, runner_up, saliency) in enumerate(
        zip(answers, explanation.runners_up.tolist(), explanation.saliency.tolist(), strict=True)
    ):
        answer["runner_up"] = runner_up
        answer["hidden"] = [layer[index] for layer in hidden]
        answer["saliency"] = saliency
    return answers


def served_json(served: ServedMlp) -> dict[str, Any]:
    """The served version and its shape: name, version, activation, hidden layer sizes."""
    return {
        "name": served.name,
        "version": served.version,
        "activation": served.mlp.activation,
        "hidden_layers": list(served.mlp.hidden_sizes),
    }


def first_layer_json(served: ServedMlp) -> dict[str, Any]:
    """The first layer's weights, one 28x28 image per hidden unit, as int8 with a scale per unit.

    ``weights`` is base64 of int8 [units, 784] (unit-major, row-major 28x28 pixels); a weight is
    ``q * scales[unit]``, within half a scale step of the model's float32 weight.
    """
    weights = served.mlp.layers[0].weights.T  # [units, 784]
    largest = np.abs(weights).max(axis=1)
    scales = np.where(largest > 0, largest / 127.0, 1.0)
    quantized = np.rint(weights / scales[:, None]).astype(np.int8)
    return {
        "model": served_json(served),
        "units": int(weights.shape[0]),
        "pixels": int(weights.shape[1]),
        "scales": scales.tolist(),
        "biases": served.mlp.layers[0].biases.tolist(),
        "weights": base64.b64encode(quantized.tobytes()).decode("ascii"),
    }


@functools.cache
def image_limits(config: ServiceConfig) -> ImageLimits:
    """The decoding limits of ``config`` (one object per configuration)."""
    return ImageLimits(max_bytes=config.max_image_bytes, max_pixels=config.max_image_pixels)


class PredictEndpoint:
    """POST /predict, answered by the inference dispatcher (service.dispatch), below Flask."""

    endpoint = "api.predict"
    rules = (PREDICT_ROUTE,)

    def __init__(
        self,
        predictor: Predictor,
        config: ServiceConfig,
        recorder: PredictionRecorder | None = None,
    ) -> None:
        self.predictor = predictor
        self.config = config
        self.limits = image_limits(config)
        self.recorder = recorder

    def answer(self, request: InferenceRequest) -> Answer:
        """The predictions for the request's images; a ServiceError says what was wrong."""
        require_api_token(request.header("Authorization"), self.config.api_tokens)
        query = request.query_string
        options = parse_options(request.query()) if query else PredictOptions()
        started = time.perf_counter()
        body = None
        if request.mimetype == JSON_TYPE or request.mimetype in IMAGE_TYPES:
            with tracing.step("decode"):  # multipart bodies are read while they are parsed
                body = request_body(request, self.config)
        with tracing.step("preprocess"):
            images = images_from_request(request, self.config, self.limits, body)
        metrics.observe_preprocessing(time.perf_counter() - started)
        answer = answer_images(self.predictor, images, options, request.facts, self.recorder)
        return Answer(answer, [("Content-Type", JSON_TYPE)])


class ExplainEndpoint:
    """POST /v2/models/<model>/explain: /predict's inputs and options, explained (dispatcher)."""

    endpoint = "api.explain"
    rules = (EXPLAIN_ROUTE,)

    def __init__(self, explainer: Explainer, config: ServiceConfig) -> None:
        self.explainer = explainer
        self.config = config
        self.limits = image_limits(config)

    def answer(self, request: InferenceRequest) -> Answer:
        """The explanations of the request's images; a ServiceError says what was wrong."""
        # it runs the model (and shows its activations): the inference token, as /predict
        require_api_token(request.header("Authorization"), self.config.api_tokens)
        check_model(request.args["model"])
        query = request.query_string
        options = parse_options(request.query()) if query else PredictOptions()
        images = images_from_request(request, self.config, self.limits)
        request.facts.batch_size = len(images)
        served, explanation = self.explainer.explain(images)
        request.facts.model_version = served.version
        answer = {
            "explanations": explanations_json(explanation, images, options),
            "model": served_json(served),
            "request_id": request.facts.request_id,
        }
        return Answer(orjson.dumps(answer), [("Content-Type", JSON_TYPE)])


def check_model(model: str) -> None:
    """NotFound unless ``model`` is the name this service serves."""
    if model != contract.MODEL_NAME:
        raise NotFound(f"no model named {model!r}; this service serves {contract.MODEL_NAME!r}")


def create_blueprint(
    predictor: Predictor, config: ServiceConfig, explainer: Explainer | None = None
) -> Blueprint:
    """The simple API's Flask routes: GET /v2/models/<model>/explain/weights (POST /predict and
    POST .../explain are PredictEndpoint's and ExplainEndpoint's)."""
    blueprint = Blueprint("api", __name__)
    weights_of = explainer or Explainer(lambda: predictor.loaded)

    @blueprint.get(WEIGHTS_ROUTE)
    def first_layer(model: str) -> Response:
        # the model's weights are worth as much as its answers: the inference token guards them
        require_api_token(flask_request.headers.get("Authorization"), config.api_tokens)
        check_model(model)
        body = orjson.dumps(first_layer_json(weights_of.current()))
        return Response(body, mimetype=JSON_TYPE)

    return blueprint
