"""Inference requests and responses, built and read by the real tritonclient codec."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput, InferResult

from service.errors import BadRequest
from service.v2.codec import (
    InferRequest,
    RequestedOutput,
    encode_infer_response,
    parse_infer_request,
    top_classes,
)

MAX_BATCH = 64


def raw_images(count: int, seed: int = 0) -> np.ndarray:
    """Random raw pixels, uint8 [count, 784]."""
    return np.random.default_rng(seed).integers(0, 256, size=(count, 784), dtype=np.uint8)


def client_request(
    array: np.ndarray,
    datatype: str,
    binary: bool,
    outputs: list[InferRequestedOutput] | None = None,
    request_id: str = "",
) -> tuple[bytes, str | None]:
    """The body and Inference-Header-Content-Length exactly as tritonclient would send them."""
    tensor = InferInput("input", list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    body, json_size = InferenceServerClient.generate_request_body(
        [tensor], outputs=outputs, request_id=request_id
    )
    return body, None if json_size is None else str(json_size)


def json_request(**fields: Any) -> bytes:
    """A JSON-only body; a valid single UINT8 input unless ``inputs`` is given."""
    body: dict[str, Any] = {
        "inputs": [{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [0] * 784}]
    }
    body.update(fields)
    return json.dumps(body).encode()


@pytest.mark.parametrize("shape", [(16, 784), (3, 28, 28)])
@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_fp32_input_arrives_unchanged(shape: tuple[int, ...], binary: bool) -> None:
    images = raw_images(shape[0]).astype(np.float32) / np.float32(255.0)
    body, header_length = client_request(images.reshape(shape), "FP32", binary)
    request = parse_infer_request(body, header_length, MAX_BATCH)
    assert request.images.dtype == np.float32
    np.testing.assert_array_equal(request.images, images)


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_uint8_input_is_scaled_like_training(binary: bool) -> None:
    raw = raw_images(5)
    body, header_length = client_request(raw.reshape(5, 28, 28), "UINT8", binary)
    request = parse_infer_request(body, header_length, MAX_BATCH)
    np.testing.assert_array_equal(request.images, raw.astype(np.float32) / np.float32(255.0))
    assert request.images.min() >= 0.0 and request.images.max() <= 1.0


def test_nested_json_data_is_accepted() -> None:
    raw = raw_images(2)
    nested = raw.reshape(2, 28, 28).tolist()
    body = json_request(
        inputs=[{"name": "input", "shape": [2, 28, 28], "datatype": "UINT8", "data": nested}]
    )
    request = parse_infer_request(body, None, MAX_BATCH)
    np.testing.assert_array_equal(request.images * 255, raw.astype(np.float32))


def test_default_outputs_follow_binary_data_output() -> None:
    body, header_length = client_request(raw_images(1), "UINT8", True)
    request = parse_infer_request(body, header_length, MAX_BATCH)
    # tritonclient asks for every output in binary when it names none
    assert request.outputs == (
        RequestedOutput("label", binary=True),
        RequestedOutput("probabilities", binary=True),
    )
    assert parse_infer_request(json_request(), None, MAX_BATCH).outputs == (
        RequestedOutput("label", binary=False),
        RequestedOutput("probabilities", binary=False),
    )


def test_requested_outputs_subset_binary_override_and_classification() -> None:
    outputs = [InferRequestedOutput("probabilities", binary_data=False, class_count=3)]
    body, header_length = client_request(raw_images(1), "UINT8", True, outputs, "req-9")
    request = parse_infer_request(body, header_length, MAX_BATCH)
    assert request.outputs == (RequestedOutput("probabilities", binary=False, classification=3),)
    assert request.id == "req-9"
    body = json_request(
        parameters={"binary_data_output": True},
        outputs=[
            {"name": "label"},
            {"name": "probabilities", "parameters": {"binary_data": False}},
        ],
    )
    assert parse_infer_request(body, None, MAX_BATCH).outputs == (
        RequestedOutput("label", binary=True),
        RequestedOutput("probabilities", binary=False),
    )


def binary_body(header: dict[str, Any], payload: bytes) -> tuple[bytes, str]:
    text = json.dumps(header).encode()
    return text + payload, str(len(text))


def fp32_input(shape: list[int], size: int | None = None, **extra: Any) -> dict[str, Any]:
    count = shape[0] * 784 if shape and isinstance(shape[0], int) else 0
    tensor: dict[str, Any] = {"name": "input", "shape": shape, "datatype": "FP32"}
    tensor["parameters"] = {"binary_data_size": count * 4 if size is None else size}
    tensor.update(extra)
    return {"inputs": [tensor]}


ONE_FP32 = bytes(784 * 4)

BAD_BINARY_REQUESTS = {
    "truncated body": (binary_body(fp32_input([2, 784]), ONE_FP32), "only 3136 bytes"),
    "size does not match shape": (
        binary_body(fp32_input([1, 784], size=3000), ONE_FP32),
        "needs 3136",
    ),
    "negative size": (binary_body(fp32_input([1, 784], size=-3136), ONE_FP32), "non-negative"),
    "extra bytes": (binary_body(fp32_input([1, 784]), ONE_FP32 + b"\0\0"), "do not add up"),
    "data and binary": (
        binary_body(fp32_input([1, 784], data=[0] * 784), ONE_FP32),
        "not both",
    ),
    "wrong shape": (binary_body(fp32_input([1, 785]), bytes(785 * 4)), "is not"),
    "3-d wrong": (binary_body(fp32_input([1, 27, 29]), bytes(783 * 4)), "is not"),
    "flat shape": (binary_body(fp32_input([784]), ONE_FP32), "is not"),
    "empty batch": (binary_body(fp32_input([0, 784]), b""), "empty"),
    "negative batch": (binary_body(fp32_input([-1, 784]), b""), "is not"),
    "batch over limit": (
        binary_body(fp32_input([MAX_BATCH + 1, 784]), bytes((MAX_BATCH + 1) * 3136)),
        "over the limit",
    ),
    "NaN pixels": (
        binary_body(fp32_input([1, 784]), np.full(784, np.nan, "<f4").tobytes()),
        "finite",
    ),
    "infinite pixels": (
        binary_body(fp32_input([1, 784]), np.full(784, np.inf, "<f4").tobytes()),
        "finite",
    ),
    "raw 0..255 sent as FP32": (
        binary_body(fp32_input([1, 784]), np.full(784, 255, "<f4").tobytes()),
        r"in \[0, 1\]",
    ),
    "negative pixels": (
        binary_body(fp32_input([1, 784]), np.full(784, -0.5, "<f4").tobytes()),
        r"in \[0, 1\]",
    ),
}


@pytest.mark.parametrize("case", BAD_BINARY_REQUESTS, ids=list(BAD_BINARY_REQUESTS))
def test_bad_binary_requests_are_rejected(case: str) -> None:
    (body, header_length), message = BAD_BINARY_REQUESTS[case]
    with pytest.raises(BadRequest, match=message):
        parse_infer_request(body, header_length, MAX_BATCH)


def test_binary_input_without_header_length_is_rejected() -> None:
    body, _ = binary_body(fp32_input([1, 784]), ONE_FP32)
    with pytest.raises(BadRequest, match="need the Inference-Header-Content-Length header"):
        parse_infer_request(body, None, MAX_BATCH)
    # the JSON alone parses, but it still announces binary data that cannot be located
    body, _ = binary_body(fp32_input([1, 784]), b"")
    with pytest.raises(BadRequest, match="no Inference-Header-Content-Length"):
        parse_infer_request(body, None, MAX_BATCH)


def uint8_input(**fields: Any) -> list[dict[str, Any]]:
    tensor: dict[str, Any] = {"name": "input", "shape": [1, 784], "datatype": "UINT8"}
    tensor.update(fields)
    return [tensor]


BAD_JSON_REQUESTS: dict[str, tuple[dict[str, Any], str]] = {
    "no inputs": ({"inputs": []}, "'inputs' must be a list"),
    "inputs not a list": ({"inputs": {"name": "input"}}, "'inputs' must be a list"),
    "unknown input": ({"inputs": uint8_input(name="pixels", data=[0] * 784)}, "unknown input"),
    "input twice": ({"inputs": uint8_input(data=[0] * 784) * 2}, "2 times"),
    "unsupported datatype": (
        {"inputs": uint8_input(datatype="FP64", data=[0] * 784)},
        "datatype 'FP64'",
    ),
    "no data": ({"inputs": uint8_input()}, "needs 'data'"),
    "data not a list": ({"inputs": uint8_input(data="0" * 784)}, "JSON array"),
    "too few values": ({"inputs": uint8_input(data=[0] * 783)}, "783 values"),
    "strings": ({"inputs": uint8_input(data=["0"] * 784)}, "numbers only"),
    "booleans": ({"inputs": uint8_input(data=[True] * 784)}, "numbers only"),
    "nulls": ({"inputs": uint8_input(data=[None] * 784)}, "numbers only"),
    "ragged": ({"inputs": uint8_input(data=[[0] * 28] * 27 + [[0] * 29])}, "regular array"),
    "nested shape mismatch": (
        {"inputs": uint8_input(shape=[1, 28, 28], data=[[0] * 784])},
        "nested 'data' has shape",
    ),
    "uint8 over 255": ({"inputs": uint8_input(data=[256] * 784)}, "0..255"),
    "uint8 negative": ({"inputs": uint8_input(data=[-1] * 784)}, "0..255"),
    "uint8 fraction": ({"inputs": uint8_input(data=[0.5] * 784)}, "whole numbers"),
    "shape not a list": ({"inputs": uint8_input(shape="1,784", data=[0] * 784)}, "'shape'"),
    "shape of floats": ({"inputs": uint8_input(shape=[1.0, 784], data=[0] * 784)}, "'shape'"),
    "unknown output": (
        {"inputs": uint8_input(data=[0] * 784), "outputs": [{"name": "logits"}]},
        "unknown output",
    ),
    "output twice": (
        {"inputs": uint8_input(data=[0] * 784), "outputs": [{"name": "label"}] * 2},
        "twice",
    ),
    "classification on label": (
        {
            "inputs": uint8_input(data=[0] * 784),
            "outputs": [{"name": "label", "parameters": {"classification": 1}}],
        },
        "applies to the 'probabilities'",
    ),
    "classification of 11": (
        {
            "inputs": uint8_input(data=[0] * 784),
            "outputs": [{"name": "probabilities", "parameters": {"classification": 11}}],
        },
        "from 1 to 10",
    ),
    "binary_data not a bool": (
        {
            "inputs": uint8_input(data=[0] * 784),
            "outputs": [{"name": "label", "parameters": {"binary_data": "yes"}}],
        },
        "true or false",
    ),
    "id not a string": ({"inputs": uint8_input(data=[0] * 784), "id": 42}, "'id' must be"),
    "parameters not an object": (
        {"inputs": uint8_input(data=[0] * 784), "parameters": [1]},
        "JSON object",
    ),
    "shared memory": (
        {"inputs": uint8_input(parameters={"shared_memory_region": "r"}, data=[0] * 784)},
        "shared-memory",
    ),
    "sequence": (
        {"inputs": uint8_input(data=[0] * 784), "parameters": {"sequence_id": 3}},
        "sequence",
    ),
}


@pytest.mark.parametrize("case", BAD_JSON_REQUESTS, ids=list(BAD_JSON_REQUESTS))
def test_bad_json_requests_are_rejected(case: str) -> None:
    body, message = BAD_JSON_REQUESTS[case]
    with pytest.raises(BadRequest, match=message):
        parse_infer_request(json.dumps(body).encode(), None, MAX_BATCH)


def test_nan_in_json_fp32_is_rejected() -> None:
    # Python's json module reads the NaN token, so the range check must catch it
    body = b'{"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32", "data": ['
    body += b", ".join([b"NaN"] + [b"0"] * 783) + b"]}]}"
    with pytest.raises(BadRequest, match="finite"):
        parse_infer_request(body, None, MAX_BATCH)


def prediction(count: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.random.default_rng(1).random((count, 10)).astype(np.float32)
    probabilities = scores / scores.sum(axis=1, keepdims=True)
    return probabilities.argmax(axis=1).astype(np.int64), probabilities


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_response_decodes_in_the_triton_client(binary: bool) -> None:
    labels, probabilities = prediction(4)
    request = InferRequest(
        images=np.zeros((4, 784), np.float32),
        outputs=(
            RequestedOutput("label", binary=binary),
            RequestedOutput("probabilities", binary=binary),
        ),
        id="abc",
    )
    body, header_length = encode_infer_response(request, labels, probabilities, "mnist", 7)
    assert (header_length is not None) == binary
    result = InferResult.from_response_body(body, header_length=header_length)
    response = result.get_response()
    assert response["model_name"] == "mnist"
    assert response["model_version"] == "7"
    assert response["id"] == "abc"
    np.testing.assert_array_equal(result.as_numpy("label"), labels)
    np.testing.assert_array_equal(result.as_numpy("probabilities"), probabilities)
    assert result.as_numpy("probabilities").dtype == np.float32
    assert result.as_numpy("label").dtype == np.int64


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_output_decodes_in_the_triton_client(binary: bool) -> None:
    labels, probabilities = prediction(3)
    request = InferRequest(
        images=np.zeros((3, 784), np.float32),
        outputs=(RequestedOutput("probabilities", binary=binary, classification=3),),
    )
    body, header_length = encode_infer_response(request, labels, probabilities, "mnist", 1)
    result = InferResult.from_response_body(body, header_length=header_length)
    assert "id" not in result.get_response()
    assert result.as_numpy("label") is None  # not requested
    top = result.as_numpy("probabilities")
    assert top.shape == (3, 3)
    for row, expected_label, probs in zip(top, labels, probabilities, strict=True):
        parsed = [item.decode() if isinstance(item, bytes) else item for item in row]
        values = [float(item.split(":")[0]) for item in parsed]
        indices = [int(item.split(":")[1]) for item in parsed]
        assert indices[0] == expected_label
        assert indices == np.argsort(-probs)[:3].tolist()
        np.testing.assert_allclose(values, probs[indices], atol=1e-6)


def test_top_classes_format_and_ties() -> None:
    probabilities = np.array([[0.25, 0.5, 0.25, 0, 0, 0, 0, 0, 0, 0]], dtype=np.float32)
    # Triton prints the value with six decimals; equal scores keep the lower index first
    assert top_classes(probabilities, 3) == [["0.500000:1", "0.250000:0", "0.250000:2"]]


RAGGED = [[0] * 784, [0, [1, 2]]]
DEEP = b"[" * 5000 + b"]" * 5000


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (json.dumps({"inputs": [5]}).encode(), "each input must be an object"),
        (
            json_request(
                inputs=[{"name": "input", "shape": [2, 784], "datatype": "FP32", "data": RAGGED}]
            ),
            "nested lists must all have the same length",
        ),
        (b'{"inputs": ' + DEEP + b"}", "nested too deeply"),
    ],
)
def test_malformed_inputs_are_told_what_is_wrong_in_plain_words(body: bytes, words: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_infer_request(body, None, MAX_BATCH)
    assert words in raised.value.message
    assert "None" not in raised.value.message and "sequence" not in raised.value.message
    assert "recursion" not in raised.value.message


# -- numbers of JSON data that are not numbers of the datatype's range -----------------------------

#: an integer of more digits than Python converts (4300), and one of fewer but beyond 64 bits
HUGE = "1" + "0" * 5000
BEYOND_64_BITS = "1" + "0" * 400


def with_token(body: bytes, token: str) -> bytes:
    """``body`` with its one string "@" replaced by ``token``, as JSON text (no encoder writes a
    5000-digit integer)."""
    assert body.count(b'"@"') == 1
    return body.replace(b'"@"', token.encode())


def data_with(position: int, datatype: str = "UINT8", **fields: Any) -> bytes:
    """A valid one-image request whose ``data[position]`` is the string "@"."""
    data: list[Any] = [0] * 784 if datatype == "UINT8" else [0.0] * 784
    data[position] = "@"
    return json_request(inputs=uint8_input(datatype=datatype, data=data), **fields)


def refusal(body: bytes, header_length: str | None = None) -> str:
    with pytest.raises(BadRequest) as raised:
        parse_infer_request(body, header_length, MAX_BATCH)
    return raised.value.message


@pytest.mark.parametrize("datatype", ["UINT8", "FP32"])
@pytest.mark.parametrize("token", ["true", "false"])
@pytest.mark.parametrize("position", [0, 5, 400])
def test_a_boolean_among_numbers_is_refused_by_its_position(
    position: int, token: str, datatype: str
) -> None:
    # numpy reads true as 1 next to numbers: the ordinary path must look for it
    message = refusal(with_token(data_with(position, datatype), token))
    assert message == (
        "input 'input': 'data' must hold numbers only (no strings, booleans or null): "
        f"data[{position}] is {token}"
    )


def test_a_boolean_in_nested_data_is_named_by_its_place() -> None:
    rows: list[list[Any]] = [[0] * 28 for _ in range(28)]
    rows[14][8] = "@"
    body = json_request(inputs=uint8_input(shape=[1, 28, 28], data=[rows]))
    assert refusal(with_token(body, "false")).endswith(": data[0][14][8] is false")


def test_a_boolean_is_found_however_else_the_body_leaves_the_fast_path() -> None:
    # an escaped id (the fast path declines it) and true elsewhere (the search's cue)
    body = with_token(data_with(9, id="\\u0061", parameters={"binary_data_output": True}), "true")
    assert refusal(body.replace(b'"\\\\u0061"', b'"\\u0061"')).endswith("data[9] is true")
    # a boolean beside an integer beyond 64 bits: the boolean is named
    body = json_request(inputs=uint8_input(data=[0] * 782 + [10**400, "@"]))
    assert refusal(with_token(body, "true")).endswith("data[783] is true")


@pytest.mark.parametrize("datatype", ["FP64", "INT8", "INT32", "INT64", "UINT16", "BOOL"])
def test_a_boolean_in_an_unsupported_datatype_is_refused(datatype: str) -> None:
    assert "is not supported" in refusal(with_token(data_with(5, datatype), "true"))


def test_data_of_booleans_only_keeps_its_message() -> None:
    body = json_request(inputs=uint8_input(data=[False] * 784))
    assert refusal(body) == (
        "input 'input': 'data' must hold numbers only (no strings, booleans or null)"
    )


@pytest.mark.parametrize("sign", ["", "-"])
@pytest.mark.parametrize("digits", [BEYOND_64_BITS, HUGE], ids=["401 digits", "5001 digits"])
@pytest.mark.parametrize(
    ("datatype", "rule"),
    [
        ("UINT8", "UINT8 values must be in 0..255"),
        ("FP32", "FP32 pixels must be in [0, 1] (raw 0..255 divided by 255)"),
    ],
)
def test_an_integer_too_large_for_numpy_is_out_of_the_datatypes_range(
    datatype: str, rule: str, digits: str, sign: str
) -> None:
    message = refusal(with_token(data_with(3, datatype), sign + digits))
    written = (sign + digits)[:60] + "…"
    assert message == f"input 'input': {rule}, got {written} at data[3]"


@pytest.mark.parametrize("token", ["1e400", "-1e400", "1E+999", "1e39", "-3.5e38"])
@pytest.mark.parametrize(
    ("datatype", "rule"),
    [
        ("UINT8", "UINT8 values must be in 0..255"),
        ("FP32", "FP32 pixels must be in [0, 1] (raw 0..255 divided by 255)"),
    ],
)
def test_a_float_beyond_the_datatypes_range_is_named_not_called_nan(
    datatype: str, rule: str, token: str
) -> None:
    """A number too large for a float (1e400) or for float32 (1e39) is a number the client wrote:
    its range message names it where it stands, never "NaN or Infinity"."""
    message = refusal(with_token(data_with(7, datatype), token))
    assert "NaN" not in message
    assert message.startswith(f"input 'input': {rule}, got "), message
    if datatype == "FP32" or "e4" in token or "E+" in token:  # UINT8 1e39: the low..high range
        assert message.endswith(" at data[7]"), message
        assert float(message.split(", got ")[1].split(" at ")[0]) == float(token)


def test_a_float32_nan_in_binary_data_is_still_called_nan() -> None:
    pixels = np.zeros(784, dtype=np.float32)
    pixels[9] = np.nan
    header = json_request(
        inputs=uint8_input(datatype="FP32", parameters={"binary_data_size": pixels.nbytes})
    )
    message = refusal(header + pixels.tobytes(), str(len(header)))
    assert message.endswith("FP32 values must be finite numbers (got NaN or Infinity)")


def test_a_huge_integer_beside_a_nan_or_a_null_keeps_their_messages() -> None:
    body = with_token(data_with(3, "FP32"), HUGE).replace(b"0.0", b"NaN", 1)
    assert "finite numbers (got NaN or Infinity)" in refusal(body)
    body = json_request(inputs=uint8_input(data=[None] + [0] * 782 + ["@"]))
    assert refusal(with_token(body, HUGE)).endswith("(no strings, booleans or null)")


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"inputs": uint8_input(shape=["@", 784], data=[0] * 784)}, "batch of 1000"),
        ({"inputs": uint8_input(shape=[1, "@"], data=[0] * 784)}, "is not [N, 784]"),
        (
            {
                "inputs": uint8_input(data=[0] * 784),
                "outputs": [{"name": "probabilities", "parameters": {"classification": "@"}}],
            },
            "classification must be a whole number from 1 to 10, got 1000",
        ),
        ({"inputs": uint8_input(data=[0] * 784), "id": "@"}, "'id' must be a string, got 1000"),
        (
            {"inputs": uint8_input(data=[0] * 784), "parameters": {"binary_data_output": "@"}},
            "binary_data_output must be true or false, got 1000",
        ),
    ],
)
def test_an_integer_of_more_digits_than_python_converts_is_named_as_written(
    fields: dict[str, Any], words: str
) -> None:
    message = refusal(with_token(json.dumps(fields).encode(), HUGE))
    assert words in message
    assert "4300" not in message and "sys." not in message


@pytest.mark.parametrize("digits", [BEYOND_64_BITS, HUGE], ids=["401 digits", "5001 digits"])
def test_a_huge_binary_data_size_or_header_length_is_named(digits: str) -> None:
    header = {"inputs": uint8_input(parameters={"binary_data_size": "@"})}
    text = with_token(json.dumps(header).encode(), digits)
    message = refusal(text + bytes(784), str(len(text)))
    assert message.startswith(f"input 'input': binary_data_size is {digits}")
    assert message.endswith("bytes but shape [1, 784] of UINT8 needs 784")
    body, _ = binary_body(fp32_input([1, 784], 3136), bytes(3136))
    assert refusal(body, "00" + digits) == (
        f"Inference-Header-Content-Length says {digits} bytes but the whole body has only "
        f"{len(body)}"
    )
