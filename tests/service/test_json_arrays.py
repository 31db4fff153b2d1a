"""service.json_arrays: numbers read straight into numpy agree with the ordinary JSON parsers.

Every body is read both ways; the direct path must give exactly the ordinary path's array (same
values, same dtype), or decline (None) so that the ordinary path answers, with its message.
"""

from __future__ import annotations

import json
import random
from typing import Any

import numpy as np
import orjson
import pytest

from service import json_arrays
from service.api import images_from_json, images_from_json_objects
from service.errors import ServiceError
from service.images import ImageLimits
from service.v2.codec import parse_infer_request
from tests.service.conftest import DIGITS

LIMITS = ImageLimits()
MAX_BATCH = 8


def outcome_of(call: Any, *args: Any) -> tuple[str, Any]:
    """("ok", array) or (error class name, message): what a client would see either way."""
    try:
        return "ok", call(*args)
    except ServiceError as exc:
        return type(exc).__name__, exc.message


def assert_same_outcome(body: bytes) -> None:
    direct = outcome_of(images_from_json, body, MAX_BATCH, LIMITS)
    ordinary = outcome_of(images_from_json_objects, body, MAX_BATCH, LIMITS)
    assert direct[0] == ordinary[0], body[:200]
    if direct[0] == "ok":
        assert direct[1].dtype == ordinary[1].dtype == np.float32
        np.testing.assert_array_equal(direct[1], ordinary[1])
    else:
        assert direct[1] == ordinary[1]


def v2_body(
    data: Any, datatype: str = "FP32", shape: list[int] | None = None, **extra: Any
) -> bytes:
    tensor = {"name": "input", "shape": shape or [1, 784], "datatype": datatype, "data": data}
    return json.dumps({"inputs": [tensor], **extra}).encode()


# -- the simple API's {"images": [...]} ------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"images": DIGITS[:1].tolist()},
        {"images": DIGITS[:5].tolist()},
        {"images": DIGITS[:3].reshape(3, 28, 28).tolist()},
        {"images": [[0.5] * 783 + [2.55e2]]},
        {"images": [[0] * 783 + [-0.0]]},
        {"images": [[1e-3] * 784, [254.99999999] * 784]},
    ],
)
def test_well_formed_images_are_read_directly_and_agree(payload: dict[str, Any]) -> None:
    for body in (json.dumps(payload).encode(), json.dumps(payload, indent=2).encode()):
        assert json_arrays.pixel_rows(body, MAX_BATCH) is not None
        assert_same_outcome(body)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{}",
        b"[]",
        b'{"images": []}',
        b'{"images": [[]]}',
        json.dumps({"images": [[0] * 783]}).encode(),
        json.dumps({"images": [[0] * 785, [0] * 783]}).encode(),  # ragged, same total
        json.dumps({"images": [[[0]] + [0] * 783]}).encode(),  # a pixel that is a list
        json.dumps({"images": [["["] + [0] * 783, [[0]] + [0] * 783]}).encode(),
        json.dumps({"images": [[0] * 783 + [{"a": 1}]]}).encode(),
        json.dumps({"images": [[[0] * 28] * 27 + [[0] * 27 + [[0]]]]}).encode(),
        json.dumps({"images": [[[0] * 28] * 26 + [[0] * 27, [0] * 29]]}).encode(),
        json.dumps({"images": [[0] * 783 + [True]]}).encode(),
        json.dumps({"images": [[0] * 783 + [None]]}).encode(),
        json.dumps({"images": [[0] * 783 + ["5"]]}).encode(),
        json.dumps({"images": [[0] * 783 + [256]]}).encode(),
        json.dumps({"images": [[0] * 783 + [-1]]}).encode(),
        json.dumps({"images": [[0] * 783 + [2**70]]}).encode(),
        json.dumps({"images": [[0] * 783 + [10**400]]}).encode(),
        (b'{"images": [[' + b"0," * 783 + b"1" + b"0" * 5000 + b"]]}"),  # int() refuses it
        (b'{"images": [[' + b"0," * 300 + b"-1" + b"0" * 5000 + b",0" * 483 + b"]]}"),
        json.dumps({"images": [[0] * 784] * (MAX_BATCH + 1)}).encode(),
        json.dumps({"images": [[0] * 784], "model": 1}).encode(),
        json.dumps({"imgaes": [[0] * 784]}).encode(),
        json.dumps({"ima ges": [[0] * 784]}).encode(),
        (b'{"images": [[' + b",".join([b"01"] * 784) + b"]]}"),  # leading zeros: not JSON
        (b'{"images": [[' + b",".join([b"+1"] * 784) + b"]]}"),
        (b'{"images": [[' + b",".join([b"1."] * 784) + b"]]}"),
        (b'{"images": [[' + b",".join([b"1 2"] * 784) + b"]]}"),
        (b'{"images": [[' + b",".join([b"1e999"] * 784) + b"]]}"),
        (b'{"images": [[' + b",".join([b"NaN"] * 784) + b"]]}"),
        json.dumps({"images": [[0] * 784]}).encode() + b"x",
        b"\xef\xbb\xbf" + json.dumps({"images": [[0] * 784]}).encode(),
        json.dumps({"images": [[0] * 784]}).encode()[:-1],
        b'{"images": [[0] * 784], "images": [[1] * 784]}',
    ],
)
def test_other_bodies_are_declined_and_answered_as_before(body: bytes) -> None:
    assert_same_outcome(body)


def test_random_damage_to_a_good_body_never_changes_an_answer() -> None:
    # a seeded fuzz: bytes changed, dropped or added where the structure check looks
    flat = json.dumps({"images": DIGITS[:2].tolist()}).encode()
    square = json.dumps({"images": DIGITS[:2].reshape(2, 28, 28).tolist()}).encode()
    generator = random.Random(15)
    alphabet = b'0123456789.-+eE,[] {}":nultrasfi\\'
    for attempt in range(600):
        body = bytearray(flat if attempt % 2 else square)
        for _ in range(generator.randint(1, 3)):
            spot = generator.randrange(len(body))
            action = generator.choice(("replace", "drop", "add"))
            if action == "replace":
                body[spot] = generator.choice(alphabet)
            elif action == "drop":
                del body[spot]
            else:
                body.insert(spot, generator.choice(alphabet))
        assert_same_outcome(bytes(body))


# -- Open Inference Protocol JSON tensors ----------------------------------------------------------


def ordinary_v2(body: bytes) -> dict[str, Any]:
    """What orjson and np.array make of the body: the ordinary path's objects."""
    request: dict[str, Any] = orjson.loads(body)
    request["inputs"][0]["data"] = np.array(request["inputs"][0]["data"])
    return request


@pytest.mark.parametrize(
    "body",
    [
        v2_body(DIGITS[0].tolist(), "UINT8"),
        v2_body((DIGITS[0] / 255).tolist()),
        v2_body([0] * 783 + [0.5]),
        v2_body([1e-7] * 784, shape=[1, 28, 28]),
        v2_body([3] * 784, outputs=[{"name": "label"}], id="a [data] id", parameters={"x": [1]}),
        v2_body([300] * 784, "UINT8"),  # read directly; the range check refuses it as before
    ],
)
def test_flat_v2_data_is_read_directly_as_np_array_would(body: bytes) -> None:
    direct = json_arrays.infer_request_with_data(body)
    assert direct is not None
    expected = ordinary_v2(body)
    direct_data = direct["inputs"][0].pop("data")
    expected_data = expected["inputs"][0].pop("data")
    assert direct == expected
    assert direct_data.dtype == expected_data.dtype
    np.testing.assert_array_equal(direct_data, expected_data)


@pytest.mark.parametrize(
    "body",
    [
        v2_body(DIGITS[:1].reshape(1, 784).tolist()),  # nested: the ordinary path checks it
        v2_body([[0]] + [0] * 783),
        v2_body([0] * 783 + [True]),
        v2_body([0] * 783 + [None]),
        v2_body([0] * 783 + ["1"]),
        v2_body([0] * 783 + [2**64]),
        v2_body([0] * 783 + [10**400]),
        v2_body([0] * 783 + [False], "UINT8"),
        v2_body([0] * 783 + [0]).replace(b"0]", b"1" + b"0" * 5000 + b"]"),
        v2_body([0] * 784, parameters={"data": 1}),
        v2_body([[0]] + [0] * 783, parameters={"da1ta": [0]}),
        v2_body([0] * 784, id="with \\ escape"),
        json.dumps({"inputs": [{"name": "input", "d\\u0061ta": [0]}]}).encode(),
        json.dumps({"inputs": [{"data": [1]}, {"data": [2]}]}).encode(),
        b'{"inputs": [{"data": [1]}], "inputs": [{"data": [[2]]}]}',
        b'{"inputs": [{"data": [1], "data": [[2]]}]}',
        b'{"inputs": [{"data": [01]}]}',
        b'[{"data": [1]}]',
        b'{"inputs": {"data": [1]}}',
    ],
)
def test_other_v2_bodies_are_declined(body: bytes) -> None:
    assert json_arrays.infer_request_with_data(body) is None


@pytest.mark.parametrize(
    ("data", "datatype", "words"),
    [
        ([300] * 784, "UINT8", "got 300..300"),  # integers print as integers, as before
        ([-1.0] * 784, "UINT8", "got -1.0..-1.0"),
        ([0.5] * 784, "UINT8", "whole numbers"),
        ([2.0] * 784, "FP32", "got 2..2"),
        ([0] * 783, "FP32", "holds 783 values"),
        ([0] * 784, "INT8", "not supported"),
    ],
)
def test_v2_errors_read_as_before(data: list[Any], datatype: str, words: str) -> None:
    # the same request twice: the id written plainly (read directly) and with an escape, which
    # the direct path declines, so the ordinary path reads it
    direct_body = v2_body(data, datatype, id="a")
    ordinary_body = direct_body.replace(b'"id": "a"', b'"id": "\\u0061"')
    assert json_arrays.infer_request_with_data(ordinary_body) is None
    messages = []
    for body in (direct_body, ordinary_body):
        with pytest.raises(ServiceError) as raised:
            parse_infer_request(body, None, MAX_BATCH)
        messages.append(raised.value.message)
    assert messages[0] == messages[1]
    assert words in messages[0]


def test_v2_direct_and_ordinary_requests_agree() -> None:
    direct_body = v2_body((DIGITS[:2] / 255).ravel().tolist(), shape=[2, 784], id="a")
    ordinary_body = direct_body.replace(b'"id": "a"', b'"id": "\\u0061"')
    direct = parse_infer_request(direct_body, None, MAX_BATCH)
    ordinary = parse_infer_request(ordinary_body, None, MAX_BATCH)
    assert direct.id == ordinary.id == "a" and direct.outputs == ordinary.outputs
    assert direct.images.dtype == ordinary.images.dtype == np.float32
    np.testing.assert_array_equal(direct.images, ordinary.images)


def test_numbers_no_parser_holds_are_named_as_written_either_way() -> None:
    # more digits than int() converts: the direct path declines, the ordinary path names it
    body = b'{"images": [[' + b"0," * 783 + b"1" + b"0" * 5000 + b"]]}"
    assert json_arrays.pixel_rows(body, MAX_BATCH) is None
    kind, message = outcome_of(images_from_json, body, MAX_BATCH, LIMITS)
    assert kind == "InvalidInput"
    assert message == f"image 0, pixel 783: 1{'0' * 5000} is outside 0..255"
