"""service.api: turning every accepted form of input into the model's float32 [N, 784]."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from PIL import Image
from werkzeug.datastructures import MultiDict

from service import api as api_module
from service.api import claimed_pixels, images_from_json, parse_options, predictions_json
from service.app import create_app
from service.config import ServiceConfig
from service.errors import BadRequest, InvalidImage, InvalidInput, PayloadTooLarge
from service.images import ImageLimits
from tests.service.conftest import DIGITS, EXPECTED, json_of, png_bytes

LIMITS = ImageLimits()


def as_body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def test_flat_and_row_images_give_the_same_scaled_batch() -> None:
    flat = images_from_json(as_body({"images": DIGITS[:3].tolist()}), 8, LIMITS)
    rows = images_from_json(as_body({"images": DIGITS[:3].reshape(3, 28, 28).tolist()}), 8, LIMITS)
    assert flat.dtype == np.float32 and flat.shape == (3, 784)
    np.testing.assert_array_equal(flat, rows)
    np.testing.assert_array_equal(flat, DIGITS[:3].astype(np.float32) / np.float32(255))


def test_float_pixels_and_the_range_ends_are_accepted() -> None:
    image = [0.0] * 782 + [127.5, 255]
    (scaled,) = images_from_json(as_body({"images": [image]}), 8, LIMITS)
    assert scaled[0] == 0.0 and scaled[-1] == 1.0
    assert scaled[-2] == pytest.approx(0.5)


def test_a_mixed_batch_of_flat_rows_and_base64_is_converted_per_image() -> None:
    encoded = base64.b64encode(png_bytes(DIGITS[4])).decode()
    body = as_body({"images": [DIGITS[0].tolist(), DIGITS[1].reshape(28, 28).tolist(), encoded]})
    batch = images_from_json(body, 8, LIMITS)
    assert batch.shape == (3, 784) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], DIGITS[1] / np.float32(255))
    assert batch[2].min() >= 0.0 and batch[2].max() <= 1.0 and batch[2].sum() > 10


@pytest.mark.parametrize(
    ("body", "error", "words"),
    [
        (b"{", BadRequest, "malformed JSON"),
        (b"   ", BadRequest, "empty"),
        (b"[" * 100_000, BadRequest, "malformed JSON"),  # deeper than the parser's recursion
        (b'{"images": [[NaN]]}', InvalidInput, "NaN"),
        (b'{"images": [[-Infinity]]}', InvalidInput, "-Infinity"),
        (as_body({"images": [[0] * 783 + [True]]}), InvalidInput, "pixel 783: a boolean"),
        (as_body({"images": [[1] * 784, [1] * 783 + [False]]}), InvalidInput, "image 1"),
        (as_body({"images": [[0] * 784] * 9}), PayloadTooLarge, "limit of 8"),
        (as_body({"images": [[0] * 783 + [2**70]]}), InvalidInput, "outside 0..255"),
        (as_body({"images": [[0] * 783 + [-0.5]]}), InvalidInput, "pixel 783: -0.5"),
        (as_body({"images": [[0] * 784, [0] * 700]}), InvalidInput, "image 1 has 700 values"),
        (as_body({"images": ["data:image/png,abc"]}), InvalidImage, "data URL"),
        (as_body({"images": ["!!!"]}), InvalidImage, "not base64"),
        (as_body({"images": [""]}), InvalidImage, "empty"),
        (as_body({"images": [None]}), InvalidInput, "null"),
    ],
)
def test_invalid_json_input_is_refused_with_a_precise_message(
    body: bytes, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=words.replace("(", r"\(").replace(".", r"\.")):
        images_from_json(body, 8, LIMITS)


def test_an_image_of_only_booleans_is_refused() -> None:
    # numpy would read it as a bool array, or as 0/1 next to numbers: both must be refused
    with pytest.raises(InvalidInput, match="pixel 0: a boolean"):
        images_from_json(as_body({"images": [[True] * 784]}), 8, LIMITS)


@pytest.mark.parametrize(
    ("query", "top_k", "return_input"),
    [
        ({}, None, False),
        ({"top_k": "1"}, 1, False),
        ({"top_k": "10", "return_input": "true"}, 10, True),
        ({"return_input": "0"}, None, False),
        ({"return_input": "YES"}, None, True),
    ],
)
def test_query_options(query: dict[str, str], top_k: int | None, return_input: bool) -> None:
    options = parse_options(MultiDict(query))
    assert (options.top_k, options.return_input) == (top_k, return_input)


@pytest.mark.parametrize(
    "query",
    [
        {"top_k": "11"},
        {"top_k": "-1"},
        {"top_k": "\uff12"},  # a fullwidth two: isdigit() but not ASCII
        {"top_k": ""},
        {"return_input": "perhaps"},
        {"colour": "red"},
        [("top_k", "2"), ("top_k", "3")],
    ],
)
def test_bad_query_options(query: Any) -> None:
    with pytest.raises(BadRequest):
        parse_options(MultiDict(query))


def test_predictions_json_ranks_and_reports_confidence() -> None:
    probabilities = np.array([[0.1, 0.6, 0.3] + [0.0] * 7], dtype=np.float32)
    images = np.zeros((1, 784), np.float32)
    options = parse_options(MultiDict({"top_k": "2", "return_input": "1"}))
    (answer,) = predictions_json(np.array([1]), probabilities, images, options)
    assert answer["digit"] == 1
    assert answer["confidence"] == pytest.approx(0.6)
    assert [entry["digit"] for entry in answer["top_k"]] == [1, 2]
    assert len(answer["probabilities"]) == 10
    assert Image.open(io.BytesIO(base64.b64decode(answer["input_png"]))).size == (28, 28)


@pytest.fixture
def client(model_repo: Path) -> Any:
    app: Flask = create_app(ServiceConfig(model_dir=model_repo, max_batch=4))
    return app.test_client()


def test_raw_png_and_jpeg_bodies(client: Any) -> None:
    png = png_bytes(DIGITS[7])
    response = client.post("/predict", data=png, content_type="image/png")
    assert response.status_code == 200 and response.json["predictions"][0]["digit"] == EXPECTED[7]
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).convert("RGB").save(buffer, format="JPEG", quality=95)
    response = client.post("/predict", data=buffer.getvalue(), content_type="image/jpeg")
    assert response.status_code == 200 and response.json["predictions"][0]["digit"] == EXPECTED[7]


def test_multipart_batches_obey_the_batch_limit(client: Any) -> None:
    parts = [(io.BytesIO(png_bytes(DIGITS[i])), f"{i}.png") for i in range(5)]
    response = client.post("/predict", data={"image": parts}, content_type="multipart/form-data")
    assert response.status_code == 413
    assert "limit of 4" in response.json["error"]["message"]
    chosen = [0, 1, 2, 4]
    parts = [(io.BytesIO(png_bytes(DIGITS[i])), f"{i}.png") for i in chosen]
    response = client.post("/predict", data={"image": parts}, content_type="multipart/form-data")
    assert response.status_code == 200
    assert [p["digit"] for p in response.json["predictions"]] == [EXPECTED[i] for i in chosen]


def test_an_undecodable_upload_names_the_image(client: Any) -> None:
    parts = [(io.BytesIO(png_bytes(DIGITS[0])), "a.png"), (io.BytesIO(b"GIF89a..."), "b.gif")]
    response = client.post("/predict", data={"image": parts}, content_type="multipart/form-data")
    assert response.status_code == 422
    assert response.json["error"]["code"] == "invalid_image"
    assert response.json["error"]["message"].startswith("image 1")


def test_json_content_type_with_charset_is_accepted(client: Any) -> None:
    response = client.post(
        "/predict",
        data=as_body({"images": [DIGITS[9].tolist()]}),
        content_type="application/json; charset=utf-8",
    )
    assert response.status_code == 200
    assert response.json["predictions"][0]["digit"] == EXPECTED[9]


def big_png(side: int) -> bytes:
    """A large, highly compressible PNG: tiny on the wire, side x side pixels to decode."""
    image = Image.new("L", (side, side), 255)
    image.paste(0, (side // 3, side // 4, side // 2, 3 * side // 4))  # a block of ink
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_pixels_of_all_images_of_a_request_are_budgeted_before_decoding(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoded: list[int] = []
    real = api_module.preprocess_image  # type: ignore[attr-defined]

    def counting(data: bytes, limits: ImageLimits = LIMITS) -> np.ndarray:
        decoded.append(len(data))
        return real(data, limits)

    monkeypatch.setattr(api_module, "preprocess_image", counting)
    png = base64.b64encode(big_png(1000)).decode()  # 1 Mpx each, a few kB
    body = as_body({"images": [png] * 5})
    with pytest.raises(PayloadTooLarge, match="5000000 pixels; the limit per request is 4000000"):
        images_from_json(body, 8, LIMITS, max_request_pixels=4_000_000)
    assert decoded == []  # refused from the headers alone
    batch = images_from_json(body, 8, LIMITS, max_request_pixels=5_000_000)
    assert batch.shape == (5, 784) and len(decoded) == 5


def test_claimed_pixels_reads_only_the_header() -> None:
    assert claimed_pixels(big_png(300), ("PNG", "JPEG")) == 90_000
    assert claimed_pixels(b"not an image", ("PNG", "JPEG")) == 0
    jpeg = io.BytesIO()
    Image.new("L", (200, 100), 255).save(jpeg, format="JPEG")
    assert claimed_pixels(jpeg.getvalue(), ("PNG", "JPEG")) == 20_000
    assert claimed_pixels(jpeg.getvalue(), ("PNG",)) == 0  # a format the service does not take


def test_uploads_share_the_request_budget(model_repo: Path) -> None:
    app = create_app(ServiceConfig(model_dir=model_repo, max_request_pixels=2_500_000))
    parts = [(io.BytesIO(big_png(1000)), f"{i}.png") for i in range(3)]
    response = app.test_client().post(
        "/predict", data={"image": parts}, content_type="multipart/form-data"
    )
    assert response.status_code == 413
    assert json_of(response)["error"]["code"] == "payload_too_large"
    raw = app.test_client().post("/predict", data=big_png(1000), content_type="image/png")
    assert raw.status_code == 200  # one 1 Mpx image is within the budget


def test_a_chunked_body_over_the_limit_is_413_not_a_cut_body(model_repo: Path) -> None:
    app = create_app(ServiceConfig(model_dir=model_repo, max_body_bytes=10_000))
    body = as_body({"images": [DIGITS[0].tolist()] * 10})  # about 30 kB
    response = app.test_client().post(
        "/predict",
        input_stream=io.BytesIO(body),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_base={"wsgi.input_terminated": True},  # as gunicorn sets it for chunked bodies
    )
    assert response.status_code == 413
    assert json_of(response)["error"]["code"] == "payload_too_large"
    small = as_body({"images": [DIGITS[0].tolist()]})
    response = app.test_client().post(
        "/predict",
        input_stream=io.BytesIO(small),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
        environ_base={"wsgi.input_terminated": True},
    )
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("pixels", "vectorised"),
    [
        ([0] * 783 + [255], True),
        ([0.5e2] * 783 + [1e-3], True),
        ([0] * 783 + ["5"], False),  # numpy would read the string as 5.0
        ([0] * 783 + [True], False),  # and True as 1.0
        ([0] * 783 + [None], False),
        ([0] * 783 + [{"a": 1}], False),
    ],
)
def test_only_bodies_of_plain_numbers_take_the_vectorised_path(
    pixels: list[Any], vectorised: bool
) -> None:
    body = json.dumps({"images": [pixels]}, indent=1).encode()
    images = json.loads(body)["images"]
    batch = api_module._pixel_batch(images, body)
    assert (batch is not None) is vectorised
    if batch is not None:
        np.testing.assert_allclose(batch[0], np.asarray(pixels, dtype=np.float32) / 255)


@pytest.mark.parametrize("count", [1, 3, 8, 9, 40])
def test_answers_for_a_few_images_and_for_many_are_the_same_numbers(count: int) -> None:
    # a few images take a Python-float path, more take numpy's: both must print the same JSON
    generator = np.random.default_rng(count)
    probabilities = generator.random((count, 10)).astype(np.float32)
    probabilities[0, :4] = np.array([0.5e-6, 1.5e-6, 0.1234565, 0.9999995], dtype=np.float32)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = probabilities.argmax(axis=1)
    images = np.zeros((count, 784), dtype=np.float32)
    answers = predictions_json(labels, probabilities, images, api_module.PredictOptions())
    rounded = np.round(probabilities.astype(np.float64), api_module.DECIMALS)
    assert [a["probabilities"] for a in answers] == rounded.tolist()
    assert [a["digit"] for a in answers] == labels.tolist()
    assert [a["confidence"] for a in answers] == rounded[np.arange(count), labels].tolist()
    ranked = predictions_json(labels, probabilities, images, api_module.PredictOptions(top_k=2))
    assert [a["probabilities"] for a in ranked] == rounded.tolist()


def test_json_nested_too_deeply_is_a_clean_400(client: Any) -> None:
    deep = b'{"images": ' + b"[" * 5000 + b"]" * 5000 + b"}"
    response = client.post("/predict", data=deep, content_type="application/json")
    assert response.status_code == 400
    message = response.get_json()["error"]["message"]
    assert "nested too deeply" in message and "recursion" not in message


# -- numbers beyond what int() converts, and a Content-Type that names no media type -------------

HUGE = "1" + "0" * 5000  # more digits than int() converts (4300)


def test_a_pixel_of_more_digits_than_int_converts_is_outside_the_range() -> None:
    body = b'{"images": [[' + b"0," * 300 + HUGE.encode() + b",0" * 483 + b"]]}"
    with pytest.raises(InvalidInput) as raised:
        images_from_json(body, 8, LIMITS)
    assert raised.value.message == f"image 0, pixel 300: {HUGE} is outside 0..255"


def test_a_top_k_of_more_digits_than_int_converts_is_named() -> None:
    with pytest.raises(BadRequest) as raised:
        parse_options(MultiDict({"top_k": HUGE}))
    assert raised.value.message == f"top_k must be an integer 1..10, not {HUGE!r}"
    assert parse_options(MultiDict({"top_k": "0007"})).top_k == 7  # leading zeros, as before


@pytest.mark.parametrize(
    ("path", "accepted"),
    [
        ("/predict", "send one of application/json, image/png, image/jpeg"),
        ("/v2/models/mnist/explain", "send one of application/json, image/png, image/jpeg"),
        ("/feedback", "send application/json"),
    ],
)
def test_a_content_type_that_names_no_media_type_is_quoted(
    client: Any, path: str, accepted: str
) -> None:
    response = client.post(path, data=b"{}", headers={"Content-Type": ";;;==="})
    assert response.status_code == 415
    error = response.json["error"]
    message = error if isinstance(error, str) else error["message"]
    assert message.startswith(
        f"Content-Type ';;;===' is not accepted: it names no media type; {accepted}"
    )
    response = client.post(path, data=b"{}")  # none at all: said as before
    error = response.json["error"]
    message = error if isinstance(error, str) else error["message"]
    assert message.startswith(f"no Content-Type is not accepted; {accepted}")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            '{"request_id": "r", "label": @}',
            f'"label" must be an integer 0..9 (the right digit), not {HUGE[:60]}…',
        ),
        (
            '{"request_id": "r", "label": -@}',
            f'"label" must be an integer 0..9 (the right digit), not -{HUGE[:59]}…',
        ),
        (
            '{"request_id": "r", "label": 1, "index": @}',
            '"index" must be the image\'s place in its request, 0..1023',
        ),
    ],
)
def test_feedback_numbers_of_more_digits_than_int_converts(
    client: Any, text: str, words: str
) -> None:
    body = text.replace("@", HUGE).encode()
    response = client.post("/feedback", data=body, content_type="application/json")
    assert response.status_code == 422
    assert response.json["error"]["message"] == words
