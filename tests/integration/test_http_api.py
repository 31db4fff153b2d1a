"""POST /predict over HTTP against a real gunicorn on the committed model."""

from __future__ import annotations

import base64
import io
import json
import socket
import time
from typing import Any

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import COMMITTED_MODELS
from tests.integration.conftest import RunningServer

SELFTEST = json.loads((COMMITTED_MODELS / "mnist" / "1" / "selftest.json").read_text())
DIGITS = np.asarray(SELFTEST["images"], dtype=np.uint8)  # one test digit per class, raw 0..255
LABELS = SELFTEST["labels"]  # the truth
EXPECTED = SELFTEST["expected_labels"]  # what this model answered at training time (may differ)


def post_json(server: RunningServer, payload: Any, **params: str) -> requests.Response:
    return requests.post(server.url + "/predict", json=payload, params=params, timeout=30)


def png_of(pixels: np.ndarray, *, scale: int = 3, dark_on_light: bool = True) -> bytes:
    """A PNG of one MNIST digit, enlarged and drawn dark on light like a scan."""
    image = pixels.reshape(28, 28)
    if dark_on_light:
        image = 255 - image
    big = Image.fromarray(image).resize((28 * scale, 28 * scale), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    big.convert("RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def assert_error(response: requests.Response, status: int, code: str, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"].startswith("application/json")
    error = response.json()["error"]
    assert error["code"] == code
    assert words.lower() in error["message"].lower(), error["message"]


def test_committed_model_predicts_test_digits_flat_and_as_rows(
    committed_server: RunningServer,
) -> None:
    flat = post_json(committed_server, {"images": DIGITS.tolist()})
    rows = post_json(committed_server, {"images": DIGITS.reshape(-1, 28, 28).tolist()})
    for response in (flat, rows):
        assert response.status_code == 200, response.text
        body = response.json()
        assert [p["digit"] for p in body["predictions"]] == EXPECTED
        assert body["model"]["name"] == "mnist"
        assert body["model"]["version"] >= 1
        assert body["request_id"] == response.headers["X-Request-ID"]
        for prediction in body["predictions"]:
            assert len(prediction["probabilities"]) == 10
            assert sum(prediction["probabilities"]) == pytest.approx(1.0, abs=1e-4)
            assert prediction["confidence"] == max(prediction["probabilities"])


def test_top_k_return_input_and_request_id(committed_server: RunningServer) -> None:
    response = requests.post(
        committed_server.url + "/predict",
        json={"images": [DIGITS[3].tolist()]},
        params={"top_k": "3", "return_input": "true"},
        headers={"X-Request-ID": "trace-42"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    assert response.headers["X-Request-ID"] == "trace-42"
    body = response.json()
    assert body["request_id"] == "trace-42"
    (prediction,) = body["predictions"]
    ranked = [entry["digit"] for entry in prediction["top_k"]]
    assert ranked[0] == EXPECTED[3] == prediction["digit"]
    assert len(ranked) == 3 and len(set(ranked)) == 3
    values = [entry["probability"] for entry in prediction["top_k"]]
    assert values == sorted(values, reverse=True)
    seen = Image.open(io.BytesIO(base64.b64decode(prediction["input_png"])))
    assert seen.size == (28, 28)
    # JSON pixels reach the model unchanged: the echoed image is the digit that was sent
    assert np.array_equal(np.asarray(seen), DIGITS[3].reshape(28, 28))


def test_png_raw_multipart_and_base64_images(committed_server: RunningServer) -> None:
    pngs = [png_of(DIGITS[i]) for i in range(10)]
    raw = requests.post(
        committed_server.url + "/predict",
        data=pngs[7],
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert raw.status_code == 200, raw.text
    assert raw.json()["predictions"][0]["digit"] == EXPECTED[7]
    multipart = requests.post(
        committed_server.url + "/predict",
        files=[("image", (f"{i}.png", png, "image/png")) for i, png in enumerate(pngs)],
        timeout=30,
    )
    assert multipart.status_code == 200, multipart.text
    digits = [p["digit"] for p in multipart.json()["predictions"]]
    # the PNG path recentres the digit, so an ambiguous one may flip; most must not
    assert sum(d == label for d, label in zip(digits, EXPECTED, strict=True)) >= 8
    encoded = base64.b64encode(pngs[4]).decode()
    as_json = post_json(committed_server, {"images": [encoded, "data:image/png;base64," + encoded]})
    assert as_json.status_code == 200, as_json.text
    assert [p["digit"] for p in as_json.json()["predictions"]] == [EXPECTED[4]] * 2


GOOD = DIGITS[0].tolist()


def _with(value: Any, at: int = 5) -> list[Any]:
    image: list[Any] = list(GOOD)
    image[at] = value
    return image


# (body bytes or JSON, content type, query, status, code, words in the message)
BAD_REQUESTS = {
    "malformed json": (b'{"images": [[1, 2', "application/json", {}, 400, "bad_request", "JSON"),
    "empty body": (b"", "application/json", {}, 400, "bad_request", "empty"),
    "not an object": ([1, 2, 3], None, {}, 422, "invalid_input", "object"),
    "missing images": ({"pixels": [GOOD]}, None, {}, 422, "invalid_input", '"images"'),
    "images not a list": ({"images": 5}, None, {}, 422, "invalid_input", "list"),
    "unknown field": ({"images": [GOOD], "x": 1}, None, {}, 422, "invalid_input", "unknown"),
    "wrong content type": (b"1,2,3", "text/csv", {}, 415, "unsupported_media_type", "text/csv"),
    "no content type": (b"{}", "", {}, 415, "unsupported_media_type", "accepted"),
    "empty batch": ({"images": []}, None, {}, 422, "invalid_input", "empty"),
    "short image": ({"images": [GOOD[:783]]}, None, {}, 422, "invalid_input", "783 values"),
    "ragged rows": (
        {"images": [[[0] * 28] * 27 + [[0] * 27]]},
        None,
        {},
        422,
        "invalid_input",
        "row 27",
    ),
    "flat numbers as batch": ({"images": GOOD}, None, {}, 422, "invalid_input", "image 0"),
    "string pixel": ({"images": [_with("7")]}, None, {}, 422, "invalid_input", "string"),
    "boolean pixel": ({"images": [_with(True)]}, None, {}, 422, "invalid_input", "boolean"),
    "null pixel": ({"images": [_with(None)]}, None, {}, 422, "invalid_input", "null"),
    "nan pixel": (
        b'{"images": [[' + b"0," * 783 + b"NaN]]}",
        "application/json",
        {},
        422,
        "invalid_input",
        "NaN",
    ),
    "infinity pixel": (
        b'{"images": [[' + b"0," * 783 + b"Infinity]]}",
        "application/json",
        {},
        422,
        "invalid_input",
        "Infinity",
    ),
    "overflowing float": (
        b'{"images": [[' + b"0," * 783 + b"1e999]]}",
        "application/json",
        {},
        422,
        "invalid_input",
        "outside 0..255",
    ),
    "huge integer": ({"images": [_with(10**30)]}, None, {}, 422, "invalid_input", "outside"),
    "negative pixel": ({"images": [_with(-1)]}, None, {}, 422, "invalid_input", "pixel 5"),
    "pixel over 255": ({"images": [_with(256)]}, None, {}, 422, "invalid_input", "outside"),
    "batch over limit": ({"images": [GOOD] * 1025}, None, {}, 413, "payload_too_large", "1025"),
    "top_k zero": ({"images": [GOOD]}, None, {"top_k": "0"}, 400, "bad_request", "top_k"),
    "top_k word": ({"images": [GOOD]}, None, {"top_k": "many"}, 400, "bad_request", "top_k"),
    "return_input maybe": (
        {"images": [GOOD]},
        None,
        {"return_input": "maybe"},
        400,
        "bad_request",
        "return_input",
    ),
    "unknown parameter": ({"images": [GOOD]}, None, {"topk": "3"}, 400, "bad_request", "topk"),
    "string not an image": ({"images": ["hello"]}, None, {}, 422, "invalid_image", "base64"),
    "base64 not an image": (
        {"images": [base64.b64encode(b"not a png at all").decode()]},
        None,
        {},
        422,
        "invalid_image",
        "image 0",
    ),
    "empty png body": (b"", "image/png", {}, 422, "invalid_image", "empty"),
    "garbage png body": (b"\x89PNG\r\n\x1a\nbroken", "image/png", {}, 422, "invalid_image", ""),
    "object as image": ({"images": [{"a": 1}]}, None, {}, 422, "invalid_input", "object"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_4xx_json_and_the_next_request_succeeds(
    committed_server: RunningServer, case: str
) -> None:
    body, content_type, params, status, code, words = BAD_REQUESTS[case]
    if isinstance(body, bytes):
        headers = {"Content-Type": content_type} if content_type else {"Content-Type": ""}
        response = requests.post(
            committed_server.url + "/predict", data=body, headers=headers, params=params, timeout=30
        )
    else:
        response = post_json(committed_server, body, **params)
    assert_error(response, status, code, words)
    host, port = committed_server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == "bad_request"
    after = post_json(committed_server, {"images": [GOOD]})
    assert after.status_code == 200
    assert after.json()["predictions"][0]["digit"] == EXPECTED[0]


def test_multipart_without_image_parts(committed_server: RunningServer) -> None:
    response = requests.post(
        committed_server.url + "/predict",
        files=[("picture", ("a.png", png_of(DIGITS[1]), "image/png"))],
        timeout=30,
    )
    assert_error(response, 422, "invalid_input", '"image"')


def test_unknown_route_and_wrong_method_answer_json(committed_server: RunningServer) -> None:
    assert_error(requests.get(committed_server.url + "/nope", timeout=30), 404, "not_found", "")
    wrong = requests.get(committed_server.url + "/predict", timeout=30)
    assert_error(wrong, 405, "method_not_allowed", "")
    assert "POST" in wrong.headers["Allow"]


def test_body_over_the_limit_is_413(gunicorn_server: Any) -> None:
    server = gunicorn_server({"MAX_BODY_BYTES": "20000"}, workers=1)
    big = {"images": [GOOD] * 10}  # about 30 kB of JSON
    assert_error(post_json(server, big), 413, "payload_too_large", "")
    assert post_json(server, {"images": [GOOD]}).status_code == 200


def test_http_level_errors_from_gunicorn_are_json_too(committed_server: RunningServer) -> None:
    long_url = requests.get(committed_server.url + "/" + "a" * 5000, timeout=30)
    assert_error(long_url, 414, "uri_too_long", "request line")
    big_header = requests.get(
        committed_server.url + "/metrics", headers={"X-Big": "a" * 9000}, timeout=30
    )
    assert_error(big_header, 431, "request_header_fields_too_large", "")
    many = {f"X-H{i}": "a" for i in range(100)}
    assert_error(
        requests.get(committed_server.url + "/metrics", headers=many, timeout=30),
        431,
        "request_header_fields_too_large",
        "",
    )
    # under /v2 the answer has the Open Inference Protocol's shape, as the routes' errors do
    v2 = requests.get(committed_server.url + "/v2/health/ready", headers=many, timeout=30)
    assert v2.status_code == 431
    assert "limit request headers fields" in v2.json()["error"]
    after = post_json(committed_server, {"images": [GOOD]})
    assert after.status_code == 200


def test_every_line_the_server_writes_is_one_json_object(gunicorn_server: Any) -> None:
    server = gunicorn_server(workers=1)
    requests.get(server.url + "/" + "a" * 5000, timeout=30)  # gunicorn's own 414
    requests.get(server.url + "/nope", timeout=30)  # a Flask route's 404
    post_json(server, {"images": [GOOD]})  # the dispatcher's 200
    assert server.stop() == 0
    lines = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    for line in lines:
        assert list(line)[:4] == ["ts", "level", "logger", "event"], line
    loggers = {line["logger"] for line in lines}
    assert {"gunicorn.error", "service.model.watcher", "mnist.requests"} <= loggers
    # the request line is the access log: gunicorn writes none of its own
    assert "gunicorn.access" not in loggers
    requests_logged = [line for line in lines if line["logger"] == "mnist.requests"]
    assert [(line["path"], line["status"]) for line in requests_logged][-2:] == [
        ("/nope", 404),
        ("/predict", 200),
    ]
    assert any("Booting worker" in line["event"] for line in lines)


def raw_exchange(server: RunningServer, request: bytes) -> tuple[bytes, bytes]:
    """Send ``request`` as written, read the answer until the server closes: (head, body)."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as raw:
        raw.sendall(request)
        answer = b""
        while chunk := raw.recv(4096):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


def chunked_post(path: str, body: bytes, content_type: str = "application/json") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    ).encode() + body


MALFORMED_CHUNKS = {
    "size not hex": b"ZZ\r\nabc\r\n0\r\n\r\n",
    "negative size": b"-5\r\nabc\r\n0\r\n\r\n",
    "missing terminator": b"5\r\nabc\r\n0\r\n\r\n",
}
CHUNKED_ROUTES = {
    "/predict": "application/json",
    "/v2/models/mnist/infer": "application/json",
    "/v2/models/mnist/explain": "application/json",
    "/feedback": "application/json",
}


@pytest.mark.parametrize("path", sorted(CHUNKED_ROUTES))
@pytest.mark.parametrize("case", sorted(MALFORMED_CHUNKS))
def test_malformed_chunked_body_is_400_in_the_route_shape(
    committed_server: RunningServer, path: str, case: str
) -> None:
    head, body = raw_exchange(
        committed_server, chunked_post(path, MALFORMED_CHUNKS[case], CHUNKED_ROUTES[path])
    )
    assert head.startswith(b"HTTP/1.1 400"), head + body
    error = json.loads(body)["error"]
    message = error if path.startswith("/v2") else error["message"]
    assert "malformed chunked encoding" in message, message
    assert post_json(committed_server, {"images": [GOOD]}).status_code == 200


def test_malformed_chunked_multipart_is_400(committed_server: RunningServer) -> None:
    content_type = "multipart/form-data; boundary=xyz"
    head, body = raw_exchange(
        committed_server, chunked_post("/predict", MALFORMED_CHUNKS["size not hex"], content_type)
    )
    assert head.startswith(b"HTTP/1.1 400"), head + body
    assert "malformed chunked encoding" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("path", ["/predict", "/v2/models/mnist/infer"])
def test_chunk_larger_than_the_body_limit_is_413_at_once(
    committed_server: RunningServer, path: str
) -> None:
    started = time.monotonic()
    head, body = raw_exchange(
        committed_server, chunked_post(path, b"FFFFFFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n")
    )
    # refused on reading the chunk size, not after the 60 s body deadline (slack for a loaded
    # CI machine: the socket's 30 s timeout fails the exchange before that anyway)
    assert time.monotonic() - started < 20
    assert head.startswith(b"HTTP/1.1 413"), head + body
    error = json.loads(body)["error"]
    message = error if path.startswith("/v2") else error["message"]
    assert "over the limit of 16777216 bytes" in message, message
    assert post_json(committed_server, {"images": [GOOD]}).status_code == 200
