"""Every bad request answers byte-for-byte what it always has: status, Content-Type, Allow, body.

``error_answers.json`` holds the answers the service gave to the table below before its errors
were rendered by one function (recorded from the earlier code, never rewritten by this test).
A change to an error answer is a change to the API: update the file deliberately.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from service.app import create_app
from service.config import ServiceConfig
from tests.conftest import COMMITTED_MODELS

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "error_answers.json"
JSON_TYPE = {"Content-Type": "application/json"}
ONE = [0] * 783 + [255]


def _json(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def _image(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (28, 28), 0).save(buffer, format=fmt)
    return buffer.getvalue()


def _multipart(parts: list[tuple[str, bytes]]) -> tuple[dict[str, str], bytes]:
    boundary = "golden-boundary-1"
    chunks = []
    for number, (name, data) in enumerate(parts):
        chunks.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; '
            f'filename="f{number}.png"\r\nContent-Type: image/png\r\n\r\n'.encode()
            + data
            + b"\r\n"
        )
    body = b"".join(chunks) + f"--{boundary}--\r\n".encode()
    return {"Content-Type": f"multipart/form-data; boundary={boundary}"}, body


def _v2(inputs: Any, outputs: Any = None) -> bytes:
    payload: dict[str, Any] = {"inputs": inputs}
    if outputs is not None:
        payload["outputs"] = outputs
    return _json(payload)


UINT8_ONE = {"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": ONE}
#: more digits than int() converts: written into a body in place of its one string "@"
HUGE = "1" + "0" * 5000
ONE_AT = [0] * 300 + ["@"] + ONE[301:]
UINT8_AT = {**UINT8_ONE, "data": ONE_AT}
UINT8_BOOLEAN = {**UINT8_ONE, "data": [0] * 5 + [True] + ONE[6:]}
UINT8_WIDE = {**UINT8_ONE, "data": [0] * 3 + [10**400] + ONE[4:]}


def _huge(body: bytes) -> bytes:
    return body.replace(b'"@"', HUGE.encode())


#: (name, method, path, headers, body)
REQUESTS: list[tuple[str, str, str, dict[str, str], bytes]] = [
    ("empty body", "POST", "/predict", JSON_TYPE, b""),
    ("malformed json", "POST", "/predict", JSON_TYPE, b'{"images": [1 2]}'),
    ("not an object", "POST", "/predict", JSON_TYPE, b"[1]"),
    ("no images", "POST", "/predict", JSON_TYPE, _json({"x": 1})),
    ("unknown field", "POST", "/predict", JSON_TYPE, _json({"images": [ONE], "x": 1})),
    ("images not a list", "POST", "/predict", JSON_TYPE, _json({"images": 3})),
    ("empty images", "POST", "/predict", JSON_TYPE, _json({"images": []})),
    ("batch over the limit", "POST", "/predict", JSON_TYPE, _json({"images": [ONE] * 5})),
    ("short image", "POST", "/predict", JSON_TYPE, _json({"images": [ONE[:-1]]})),
    ("short row", "POST", "/predict", JSON_TYPE, _json({"images": [[[0] * 28] * 27 + [[0] * 27]]})),
    ("NaN", "POST", "/predict", JSON_TYPE, b'{"images": [[NaN]]}'),
    ("Infinity", "POST", "/predict", JSON_TYPE, b'{"images": [[Infinity]]}'),
    ("1e999", "POST", "/predict", JSON_TYPE, b'{"images": [[' + b"0," * 783 + b"1e999]]}"),
    ("negative", "POST", "/predict", JSON_TYPE, _json({"images": [[-1, *ONE[1:]]]})),
    ("256", "POST", "/predict", JSON_TYPE, _json({"images": [[*ONE[:-1], 256]]})),
    ("boolean", "POST", "/predict", JSON_TYPE, _json({"images": [[True, *ONE[1:]]]})),
    ("null", "POST", "/predict", JSON_TYPE, _json({"images": [[None, *ONE[1:]]]})),
    ("string pixel", "POST", "/predict", JSON_TYPE, _json({"images": [["1", *ONE[1:]]]})),
    ("number image", "POST", "/predict", JSON_TYPE, _json({"images": [5]})),
    ("object image", "POST", "/predict", JSON_TYPE, _json({"images": [{}]})),
    ("not base64", "POST", "/predict", JSON_TYPE, _json({"images": ["*not base64*"]})),
    ("non-ascii", "POST", "/predict", JSON_TYPE, _json({"images": ["é"], "ü": 1})),
    ("bad data url", "POST", "/predict", JSON_TYPE, _json({"images": ["data:image/png,xx"]})),
    (
        "base64 gif",
        "POST",
        "/predict",
        JSON_TYPE,
        _json({"images": [base64.b64encode(_image("GIF")).decode()]}),
    ),
    ("top_k 0", "POST", "/predict?top_k=0", JSON_TYPE, _json({"images": [ONE]})),
    ("top_k many", "POST", "/predict?top_k=many", JSON_TYPE, _json({"images": [ONE]})),
    ("top_k twice", "POST", "/predict?top_k=1&top_k=2", JSON_TYPE, _json({"images": [ONE]})),
    ("return_input", "POST", "/predict?return_input=maybe", JSON_TYPE, _json({"images": [ONE]})),
    ("unknown query", "POST", "/predict?topk=3", JSON_TYPE, _json({"images": [ONE]})),
    ("bad query, bad body", "POST", "/predict?top_k=11", JSON_TYPE, b"{"),
    ("text/csv", "POST", "/predict", {"Content-Type": "text/csv"}, b"1,2"),
    ("no content type", "POST", "/predict", {}, b"1,2"),
    ("png garbage", "POST", "/predict", {"Content-Type": "image/png"}, b"not a png"),
    ("gif as png", "POST", "/predict", {"Content-Type": "image/png"}, _image("GIF")),
    ("empty png", "POST", "/predict", {"Content-Type": "image/png"}, b""),
    ("multipart no image", "POST", "/predict", *_multipart([("picture", _image("PNG"))])),
    ("multipart gif", "POST", "/predict", *_multipart([("image", _image("GIF"))])),
    ("multipart batch", "POST", "/predict", *_multipart([("image", _image("PNG"))] * 5)),
    ("multipart broken", "POST", "/predict", {"Content-Type": "multipart/form-data"}, b"--x"),
    ("body over the limit", "POST", "/predict", JSON_TYPE, b" " * 70_000),
    ("gzip predict", "POST", "/predict", {**JSON_TYPE, "Content-Encoding": "gzip"}, b"\x1f"),
    ("GET predict", "GET", "/predict", {}, b""),
    ("DELETE predict", "DELETE", "/predict", {}, b""),
    ("no such route", "GET", "/nowhere", {}, b""),
    ("no static route", "GET", "/static/app.js", {}, b""),
    ("no page asset", "GET", "/page/secret.txt", {}, b""),
    ("no docs asset", "GET", "/docs/assets/index.html", {}, b""),
    ("POST metrics", "POST", "/metrics", {}, b""),
    ("v2 unknown model", "GET", "/v2/models/fashion", {}, b""),
    ("v2 unknown model ready", "GET", "/v2/models/fashion/ready", {}, b""),
    ("v2 no version", "GET", "/v2/models/mnist/versions/2", {}, b""),
    ("v2 no version config", "GET", "/v2/models/mnist/versions/2/config", {}, b""),
    ("v2 infer unknown model", "POST", "/v2/models/fashion/infer", {}, _v2([UINT8_ONE])),
    ("v2 infer no version", "POST", "/v2/models/mnist/versions/9/infer", {}, _v2([UINT8_ONE])),
    ("v2 GET infer", "GET", "/v2/models/mnist/infer", {}, b""),
    ("v2 PUT infer", "PUT", "/v2/models/mnist/versions/1/infer", {}, b""),
    ("v2 POST metadata", "POST", "/v2/models/mnist", {}, b""),
    ("v2 DELETE health", "DELETE", "/v2/health/ready", {}, b""),
    ("v2 unknown endpoint", "GET", "/v2/logging", {}, b""),
    ("v2 malformed", "POST", "/v2/models/mnist/infer", {}, b"{not json"),
    ("v2 empty", "POST", "/v2/models/mnist/infer", {}, b""),
    (
        "v2 header too long",
        "POST",
        "/v2/models/mnist/infer",
        {"Inference-Header-Content-Length": "400"},
        b'{"inputs": []}',
    ),
    (
        "v2 header negative",
        "POST",
        "/v2/models/mnist/infer",
        {"Inference-Header-Content-Length": "-1"},
        b'{"inputs": []}',
    ),
    ("v2 unknown input", "POST", "/v2/models/mnist/infer", {}, _v2([{"name": "x"}])),
    (
        "v2 over batch",
        "POST",
        "/v2/models/mnist/infer",
        {},
        _v2([{"name": "input", "shape": [5, 784], "datatype": "UINT8", "data": ONE * 5}]),
    ),
    (
        "v2 datatype",
        "POST",
        "/v2/models/mnist/infer",
        {},
        _v2([{"name": "input", "shape": [1, 784], "datatype": "INT32", "data": ONE}]),
    ),
    (
        "v2 shape",
        "POST",
        "/v2/models/mnist/infer",
        {},
        _v2([{"name": "input", "shape": [2, 392], "datatype": "UINT8", "data": ONE}]),
    ),
    ("v2 unknown output", "POST", "/v2/models/mnist/infer", {}, _v2([UINT8_ONE], [{"name": "x"}])),
    ("v2 inputs not a list", "POST", "/v2/models/mnist/infer", {}, _v2("no")),
    ("v2 brotli", "POST", "/v2/models/mnist/infer", {"Content-Encoding": "br"}, b"xx"),
    ("v2 bad gzip", "POST", "/v2/models/mnist/infer", {"Content-Encoding": "gzip"}, b"xx"),
    (
        "v2 gzip bomb",
        "POST",
        "/v2/models/mnist/infer",
        {"Content-Encoding": "gzip"},
        gzip.compress(bytes(200_000), mtime=0),
    ),
    ("v2 body over the limit", "POST", "/v2/models/mnist/infer", {}, b" " * 70_000),
    # numbers that are no numbers of the range: a boolean among numbers, more digits than int()
    # converts (4300), an integer beyond 64 bits; and a Content-Type that names no media type
    ("v2 boolean in data", "POST", "/v2/models/mnist/infer", {}, _v2([UINT8_BOOLEAN])),
    ("v2 integer of 401 digits", "POST", "/v2/models/mnist/infer", {}, _v2([UINT8_WIDE])),
    ("v2 integer of 5001 digits", "POST", "/v2/models/mnist/infer", {}, _huge(_v2([UINT8_AT]))),
    ("pixel of 5001 digits", "POST", "/predict", JSON_TYPE, _huge(_json({"images": [ONE_AT]}))),
    ("top_k of 5001 digits", "POST", "/predict?top_k=" + HUGE, JSON_TYPE, _json({"images": [ONE]})),
    (
        "label of 5001 digits",
        "POST",
        "/feedback",
        JSON_TYPE,
        _huge(_json({"request_id": "r", "label": "@"})),
    ),
    ("content type of no media type", "POST", "/predict", {"Content-Type": ";;;==="}, b"{}"),
]


def answers() -> dict[str, dict[str, Any]]:
    """What the service answers to each request of the table (the 4xx/5xx ones)."""
    app = create_app(ServiceConfig(model_dir=COMMITTED_MODELS, max_body_bytes=60_000, max_batch=4))
    client = app.test_client()
    found = {}
    for name, method, path, headers, body in REQUESTS:
        response = client.open(path, method=method, headers=headers, data=body)
        found[name] = {
            "status": response.status,
            "content_type": response.headers.get("Content-Type"),
            "allow": ", ".join(sorted((response.headers.get("Allow") or "").split(", "))),
            "body": response.get_data().decode("latin-1"),
        }
    return found


@pytest.fixture(scope="module")
def current() -> dict[str, dict[str, Any]]:
    return answers()


@pytest.mark.parametrize("name", [request[0] for request in REQUESTS])
def test_the_error_answer_is_unchanged(current: dict[str, dict[str, Any]], name: str) -> None:
    recorded = json.loads(GOLDEN.read_text())
    assert current[name]["status"][:1] in "45"
    assert current[name] == recorded[name]


if __name__ == "__main__":  # record the answers of the code on the path (see the docstring)
    GOLDEN.write_text(json.dumps(answers(), indent=1, sort_keys=True, ensure_ascii=False) + "\n")
