"""Bad requests whose answers once named the wrong fault: each now says what was wrong.

A huge WebP names its size, integers beyond 64 bits are echoed as sent, a bad version in a URL
says what a version is and which are loaded, a V2 input names its missing field, an empty V2
body is called empty, a broken multipart form says how it is broken, and a rejected version's
reason names the version once. On the real app over the committed model, or the real codec.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from PIL import Image

from service.app import create_app
from service.config import ServiceConfig
from service.errors import BadRequest, ModelUnavailable
from service.images import ImageLimits, header_size
from service.json_body import parse_json
from service.model.predictor import Predictor
from service.v2.binary import HEADER_LENGTH
from service.v2.codec import parse_infer_request
from tests.service.conftest import DIGITS, MakePredictor, png_bytes, publish_copy

ADMIN_TOKEN = "s3cret-admin"
HUGE = 99999999999999999999999  # beyond 64 bits: orjson reads it as the float 1e+23
SIDE = 16000  # 256,000,000 pixels: over twice Pillow's MAX_IMAGE_PIXELS, as over our limit
TOO_LARGE = f"the image is {SIDE}x{SIDE} = {SIDE * SIDE} pixels; the limit is 25000000 pixels"


@pytest.fixture
def client(model_repo: Path) -> FlaskClient:
    config = ServiceConfig(model_dir=model_repo, admin_token=ADMIN_TOKEN)
    predictor = Predictor(config)
    predictor.load()
    return create_app(config, predictor=predictor).test_client()


def message(response: Any) -> str:
    error = response.get_json()["error"]
    return str(error["message"] if isinstance(error, dict) else error)


# -- 1. a WebP beyond Pillow's own limit names its size ------------------------------------------


def huge_webp(kind: str) -> bytes:
    """A one-colour 16x16 WebP made by Pillow, its header rewritten to say 16000x16000 (making
    one that large costs seconds and gigabytes; the header is all a size check reads)."""
    buffer = io.BytesIO()
    options: dict[str, Any] = {"lossless": kind != "VP8 "}
    if kind == "VP8X":
        options["exif"] = Image.Exif().tobytes()  # metadata: the extended format's header
    Image.new("L", (16, 16), 255).save(buffer, format="WEBP", **options)
    data = bytearray(buffer.getvalue())
    assert data[12:16] == kind.encode()
    if kind == "VP8L":  # 14 bits each of width - 1 and height - 1
        (bits,) = struct.unpack_from("<I", data, 21)
        bits = bits & ~(2**28 - 1) | (SIDE - 1) | (SIDE - 1) << 14
        struct.pack_into("<I", data, 21, bits)
    elif kind == "VP8X":  # the canvas: 24 bits each of width - 1 and height - 1
        data[24:30] = (SIDE - 1).to_bytes(3, "little") * 2
    else:  # lossy: 14 bits each of width and height
        struct.pack_into("<HH", data, 26, SIDE, SIDE)
    return bytes(data)


@pytest.mark.parametrize("kind", ["VP8L", "VP8X", "VP8 "])
def test_a_webp_beyond_pillows_limit_has_its_size_read_from_its_header(kind: str) -> None:
    webp = huge_webp(kind)
    with pytest.raises(Image.DecompressionBombError):  # what header_size once swallowed
        Image.open(io.BytesIO(webp))
    assert header_size(webp, ImageLimits().formats) == (SIDE, SIDE)


@pytest.mark.parametrize("content_type", ["application/octet-stream", "image/webp"])
def test_a_huge_webp_is_422_naming_its_size(client: FlaskClient, content_type: str) -> None:
    response = client.post("/predict", data=huge_webp("VP8L"), content_type=content_type)
    assert response.status_code == 422, response.get_json()
    assert message(response) == f"image 0: {TOO_LARGE}"


# -- 2. integers beyond 64 bits are echoed as sent -----------------------------------------------


def test_the_json_parser_keeps_integers_beyond_64_bits_as_written() -> None:
    body = (
        b'{"v": 99999999999999999999999, "w": -18446744073709551616, "f": 0.00012345678901234567}'
    )
    assert parse_json(body) == {"v": HUGE, "w": -(2**64), "f": 0.00012345678901234567}
    assert type(parse_json(body)["v"]) is int


def test_a_promote_to_a_version_beyond_64_bits_echoes_it(client: FlaskClient) -> None:
    response = client.post(
        "/v2/repository/models/mnist/promote",
        data=json.dumps({"version": HUGE}),
        content_type="application/json",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    )
    assert response.status_code == 422
    assert message(response).endswith(f"an integer 1..{2**63 - 1}, not {HUGE}"), message(response)


def binary_request(parameters: dict[str, Any], shape: list[int] | None = None) -> bytes:
    header = {
        "inputs": [
            {
                "name": "input",
                "shape": shape or [1, 784],
                "datatype": "UINT8",
                "parameters": parameters,
            }
        ]
    }
    return json.dumps(header).encode()


@pytest.mark.parametrize("size", [10**20, HUGE])
def test_a_binary_data_size_beyond_64_bits_is_named_as_sent(size: int) -> None:
    body = binary_request({"binary_data_size": size}) + bytes(784)
    header_length = str(len(body) - 784)
    with pytest.raises(BadRequest) as refused:
        parse_infer_request(body, header_length, 64)
    assert refused.value.message == (
        f"input 'input': binary_data_size is {size} bytes but shape [1, 784] of UINT8 needs 784"
    )


def test_a_negative_binary_data_size_beyond_64_bits_is_named_as_sent() -> None:
    body = binary_request({"binary_data_size": -(10**20)})
    with pytest.raises(BadRequest) as refused:
        parse_infer_request(body, str(len(body)), 64)
    assert refused.value.message == (
        "tensor 'input': binary_data_size must be a non-negative integer, "
        "got -100000000000000000000"
    )


def test_a_batch_beyond_64_bits_in_a_binary_request_is_named_as_sent() -> None:
    body = binary_request({"binary_data_size": 784}, shape=[HUGE, 784]) + bytes(784)
    with pytest.raises(BadRequest) as refused:
        parse_infer_request(body, str(len(body) - 784), 64)
    assert refused.value.message == f"input 'input': batch of {HUGE} images is over the limit of 64"


# -- 3. a version in a URL that is no version ----------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v2/models/mnist/versions/{}/infer"),
        ("GET", "/v2/models/mnist/versions/{}"),
        ("GET", "/v2/models/mnist/versions/{}/stats"),
    ],
)
@pytest.mark.parametrize(
    ("version", "problem"),
    [
        ("abc", "'abc' (a version is a positive integer)"),
        ("0", "'0' (a version is a positive integer)"),
        ("12345678901", "'12345678901' loaded"),
    ],
)
def test_a_bad_version_says_what_a_version_is_and_which_is_serving(
    client: FlaskClient, method: str, path: str, version: str, problem: str
) -> None:
    response = client.open(path.format(version), method=method, json={})
    assert response.status_code == 404
    assert message(response) == f"model 'mnist' has no version {problem}; version 1 is serving"


# -- 4. an input without a name or datatype ------------------------------------------------------


def v2_infer(inputs: list[Any]) -> str:
    with pytest.raises(BadRequest) as refused:
        parse_infer_request(json.dumps({"inputs": inputs}).encode(), None, 64)
    return refused.value.message


def test_an_input_without_a_name_is_named_by_its_place() -> None:
    assert v2_infer([{}]) == "inputs[0] has no 'name': the mnist model has one input, 'input'"
    good = {"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}
    assert v2_infer([good, {"shape": [1]}]).startswith("inputs[1] has no 'name'")


def test_an_input_without_a_datatype_says_it_is_missing() -> None:
    tensor = {"name": "input", "shape": [1, 784], "data": [0] * 784}
    assert v2_infer([tensor]) == (
        "input 'input' (inputs[0]) has no 'datatype'; "
        "send FP32 (pixels in 0..1) or UINT8 (raw pixels 0..255)"
    )
    # a datatype that is there but wrong is still named as it was
    assert v2_infer([{**tensor, "datatype": "INT32"}]).startswith(
        "input 'input': datatype 'INT32' is not supported"
    )


# -- 5. an empty V2 body, and the binary hint only where it applies ------------------------------


def test_an_empty_v2_body_is_called_empty(client: FlaskClient) -> None:
    response = client.post("/v2/models/mnist/infer", data=b"")
    assert response.status_code == 400
    assert message(response) == 'the body is empty; send a JSON inference request {"inputs": [...]}'


def test_the_header_hint_is_given_only_for_json_followed_by_more() -> None:
    hint = f"binary tensors after the JSON need the {HEADER_LENGTH} header"
    with pytest.raises(BadRequest) as broken:
        parse_infer_request(b"{not json", None, 64)
    assert "not a valid JSON inference request" in broken.value.message
    assert hint not in broken.value.message
    binary = binary_request({"binary_data_size": 784}) + bytes(range(128, 256)) * 7
    with pytest.raises(BadRequest) as unannounced:
        parse_infer_request(binary, None, 64)
    assert hint in unannounced.value.message


# -- 6. multipart forms broken in different ways ------------------------------------------------


def form(*parts: bytes, boundary: str = "b0undary", close: bool = True) -> bytes:
    body = b"".join(f"--{boundary}\r\n".encode() + part + b"\r\n" for part in parts)
    return body + (f"--{boundary}--\r\n".encode() if close else b"")


PNG_PART = (
    b'Content-Disposition: form-data; name="image"; filename="7.png"\r\n'
    b"Content-Type: image/png\r\n\r\n" + png_bytes(DIGITS[7])
)


@pytest.mark.parametrize(
    ("content_type", "body", "status", "words"),
    [
        (
            "multipart/form-data",
            form(PNG_PART),
            400,
            "the multipart/form-data Content-Type has no boundary parameter",
        ),
        (
            "multipart/form-data; boundary=b0undary",
            form(PNG_PART, close=False),
            400,
            'malformed multipart body: the form ends before its closing boundary "--b0undary--"',
        ),
        (
            "multipart/form-data; boundary=other",
            form(PNG_PART),
            400,
            'malformed multipart body: no part starts with "--other"',
        ),
        (
            "multipart/form-data; boundary=b0undary",
            form(b'Content-Disposition: form-data; name="image"\r\n\r\ntext'),
            422,
            '"image" was sent as a text field, not a file',
        ),
    ],
)
def test_a_broken_multipart_form_says_how(
    client: FlaskClient, content_type: str, body: bytes, status: int, words: str
) -> None:
    response = client.post("/predict", data=body, headers={"Content-Type": content_type})
    assert response.status_code == status, response.get_json()
    assert message(response).startswith(words), message(response)
    # the same form, whole and with its boundary, is answered
    whole = client.post(
        "/predict", data=form(PNG_PART), content_type="multipart/form-data; boundary=b0undary"
    )
    assert whole.status_code == 200, whole.get_json()


# -- 7. a rejected version's reason names the version once ---------------------------------------


def test_the_reason_a_repository_serves_nothing_names_the_version_once(
    tmp_path: Path, make_predictor: MakePredictor
) -> None:
    broken = publish_copy(tmp_path)
    broken.model_path.write_bytes(b"not onnx")
    with pytest.raises(ModelUnavailable) as refused:
        make_predictor().load()
    reason = str(refused.value)
    assert "version 1: model.onnx sha256 " in reason, reason
    assert "version 1: version 1" not in reason
    assert reason.count("version 1") == 1, reason
