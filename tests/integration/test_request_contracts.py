"""What every route promises about its requests, on a real gunicorn with both kinds of token on:
the inference token guards every route that runs the model or shows its weights; every JSON body
is parsed the one strict way (too deep, malformed, NaN, unknown fields); every body's
Content-Encoding is undone or refused; admin values are refused naming the field and its range.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import re
import shutil
import zlib
from collections.abc import Iterator

import pytest
import requests
from PIL import Image

from tests.conftest import COMMITTED_MODELS
from tests.image_headers import HUGE, huge_png
from tests.integration.conftest import RunningServer, start_gunicorn
from tests.integration.test_hostile_requests import ADMIN, API, JSON, exchange, http

TOO_DEEP = "nested too deeply"
MODEL = "/v2/repository/models/mnist"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    folder = tmp_path_factory.mktemp("contracts")
    shutil.copytree(COMMITTED_MODELS, folder / "models")
    running = start_gunicorn(
        folder,
        {"MODEL_DIR": str(folder / "models"), "ADMIN_TOKEN": ADMIN, "API_TOKENS": API},
        workers=1,
    )
    yield running
    running.stop()


def _png() -> bytes:
    image = Image.new("L", (28, 28), 0)
    image.paste(255, (10, 4, 16, 24))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


PIXELS = json.dumps({"images": [[0] * 300 + [255] * 200 + [0] * 284]}).encode()


@pytest.mark.parametrize(
    ("method", "path", "kind", "body"),
    [
        ("POST", "/predict", JSON, PIXELS),
        ("POST", "/v2/models/mnist/explain", JSON, PIXELS),
        ("POST", "/v2/models/mnist/explain", "image/png", _png()),
        ("GET", "/v2/models/mnist/explain/weights", "", b""),
    ],
)
def test_every_route_that_runs_the_model_or_shows_its_weights_needs_the_token(
    server: RunningServer, method: str, path: str, kind: str, body: bytes
) -> None:
    headers = {"Content-Type": kind} if kind else {}
    for authorization in ("", "Bearer wrong", "Basic edge"):
        sent = http(method, path, {**headers, "Authorization": authorization}, body)
        answer = exchange(server, sent)
        assert answer.status == 401, (authorization, answer)
        assert answer.headers["www-authenticate"].startswith("Bearer")
    assert exchange(server, http(method, path, headers, body)).status == 200


def _nested(key: str, levels: int) -> bytes:
    return (f'{{"{key}":' + "[" * levels + "]" * levels + "}").encode()


#: every route that parses a JSON body, and a key of its own
JSON_ROUTES = {
    "/predict": "images",
    "/v2/models/mnist/infer": "inputs",
    "/v2/models/mnist/explain": "images",
    "/feedback": "label",
    "/v2/repository/index": "ready",
    f"{MODEL}/promote": "version",
    f"{MODEL}/canary": "percent",
    f"{MODEL}/shadow": "sample",
    f"{MODEL}/load": "version",
}


@pytest.mark.parametrize("levels", [1000, 5000])
@pytest.mark.parametrize("path", sorted(JSON_ROUTES))
def test_json_nested_too_deeply_is_a_400_saying_so_on_every_route(
    server: RunningServer, path: str, levels: int
) -> None:
    answer = exchange(
        server, http("POST", path, {"Content-Type": JSON}, _nested(JSON_ROUTES[path], levels))
    )
    assert answer.status == 400, answer
    assert TOO_DEEP in answer.error_message()


def _admin(path: str, body: bytes, headers: dict[str, str] | None = None) -> requests.Response:
    return requests.post(
        path,
        data=body,
        headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": JSON, **(headers or {})},
        timeout=30,
    )


@pytest.mark.parametrize(
    ("route", "body", "status", "words"),
    [
        ("canary", '{"version": 1, "percent": 500}', 422, "'percent' must be a number in (0, 100]"),
        ("canary", '{"version": 1, "percent": 0}', 422, "not 0"),
        ("canary", '{"version": 1, "percent": 1e999}', 422, "(0, 100]"),
        ("canary", '{"version": 1, "percent": NaN}', 400, "malformed JSON: NaN is not JSON"),
        ("canary", '{"version": 1, "percent": Infinity}', 400, "Infinity is not JSON"),
        ("shadow", '{"version": 1, "sample": -1}', 422, "'sample' must be a number in (0, 1]"),
        ("promote", '{"version": 1, "forse": true}', 422, "unknown field(s) ['forse']"),
        ("promote", '{"version": 1,', 400, "malformed JSON"),
        ("promote", "[1]", 422, "must be a JSON object"),
        ("promote", '{"version": "1"}', 422, "'version' must be a version number"),
        ("load", '{"now": true}', 422, "unknown field(s) ['now']"),
    ],
)
def test_admin_values_are_refused_naming_the_field_and_its_range(
    server: RunningServer, route: str, body: str, status: int, words: str
) -> None:
    answer = _admin(f"{server.url}{MODEL}/{route}", body.encode())
    assert answer.status_code == status, answer.text
    assert words in answer.json()["error"], answer.text
    if "1e999" in body:
        assert "1e999" in answer.json()["error"]


def test_a_long_value_is_echoed_cut_with_an_ellipsis(server: RunningServer) -> None:
    answer = _admin(f"{server.url}{MODEL}/promote", b'{"version": ' + b"9" * 400 + b"}")
    assert answer.status_code == 422
    message = answer.json()["error"]
    assert "…" in message and len(message) < 200, message


def test_an_admin_body_with_no_content_type_is_json_and_another_type_a_415(
    server: RunningServer,
) -> None:
    sent = http("POST", f"{MODEL}/promote", {}, b'{"version": 987}')
    missing = exchange(server, sent)
    assert missing.status == 404 and "987" in missing.error_message()  # read: no such version
    form = _admin(
        f"{server.url}{MODEL}/promote",
        b'{"version": 987}',
        {"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 415 and "application/json" in form.json()["error"]


def _deflate(data: bytes) -> bytes:
    return zlib.compress(data)


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/feedback", b'{"request_id": "never-answered", "label": 1}', 404),
        (f"{MODEL}/promote", b'{"version": 987}', 404),
        ("/v2/repository/index", b'{"ready": true}', 200),
        ("/predict", PIXELS, 200),
    ],
)
def test_every_body_is_inflated_and_an_unknown_encoding_is_a_415(
    server: RunningServer, path: str, body: bytes, status: int
) -> None:
    plain = exchange(server, http("POST", path, {"Content-Type": JSON}, body))
    assert plain.status == status, plain
    for encoding, packed in (("gzip", gzip.compress(body)), ("deflate", _deflate(body))):
        headers = {"Content-Type": JSON, "Content-Encoding": encoding}
        answer = exchange(server, http("POST", path, headers, packed))
        assert answer.status == status, answer
        if status != 200:
            assert answer.error_message() == plain.error_message()
    for encoding in ("br", "zstd"):
        headers = {"Content-Type": JSON, "Content-Encoding": encoding}
        answer = exchange(server, http("POST", path, headers, body))
        assert answer.status == 415, answer
        assert encoding in answer.error_message()


@pytest.mark.parametrize("name", sorted(HUGE))
def test_an_image_header_claiming_billions_of_pixels_is_a_422_with_its_true_size(
    server: RunningServer, name: str
) -> None:
    image = HUGE[name]()
    kind = f"image/{name.lower()}"
    for path in ("/predict", "/v2/models/mnist/explain"):
        answer = exchange(server, http("POST", path, {"Content-Type": kind}, image))
        assert answer.status == 422, answer
        message = answer.error_message()
        assert re.search(r"the image is \d+x\d+ = \d+ pixels; the limit is 25000000", message)
        assert "4611686018427387904" not in message
    packed = base64.b64encode(image).decode()
    as_json = json.dumps({"images": [packed]}).encode()
    answer = exchange(server, http("POST", "/predict", {"Content-Type": JSON}, as_json))
    assert answer.status == 422 and "image 0: the image is" in answer.error_message()


def test_a_png_with_a_broken_header_is_undecodable_not_unaccepted(server: RunningServer) -> None:
    answer = exchange(
        server, http("POST", "/predict", {"Content-Type": "image/png"}, huge_png(0, 0))
    )
    assert answer.status == 422
    assert answer.error_message().startswith("image 0: the PNG image cannot be decoded")


def _infer(shape: str = "[1, 784]", name: str = "input", datatype: str = "UINT8") -> bytes:
    return (
        f'{{"inputs": [{{"name": "{name}", "shape": {shape}, "datatype": "{datatype}", '
        f'"data": [0]}}]}}'
    ).encode()


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/predict", b'{"images": [[1e400' + b", 0" * 783 + b"]]}", "pixel 0: 1e400 is outside"),
        ("/v2/models/mnist/infer", _infer("[100000000000000000000, 784]"), "100000000000000000000"),
        ("/v2/models/mnist/infer", _infer("[" + "9" * 400 + ", 784]"), "9" * 50),
        ("/predict", b'{"images": [[' + b"9" * 400 + b", 0" * 783 + b"]]}", "9" * 50),
        ("/v2/models/mnist/infer", _infer(name="x" * 3000), "x" * 50),
        ("/v2/models/mnist/infer", _infer(datatype="x" * 3000), "x" * 50),
    ],
)
def test_client_input_is_echoed_as_written_and_cut_when_long(
    server: RunningServer, path: str, body: bytes, words: str
) -> None:
    answer = exchange(server, http("POST", path, {"Content-Type": JSON}, body))
    assert answer.status in (400, 413, 422), answer
    message = answer.error_message()
    assert words in message, message
    assert "Infinity" not in message and "e+20" not in message
    assert len(message) < 400, message
    if words[-1] in "9x":  # a long echo: cut, with an ellipsis
        assert "…" in message and words[-1] * 81 not in message, message


def test_a_long_method_is_cut_in_the_answer(server: RunningServer) -> None:
    answer = exchange(server, b"X" * 3000 + b" /predict HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer.status == 400
    assert "X" * 70 in answer.error_message() and "X" * 81 not in answer.error_message()
    assert answer.error_message().endswith("…")
    assert len(answer.body) < 500


_DEEP = "[" * 990 + "]" * 990
_PIXELS = ",".join(["0"] * 392 + ["255"] * 392)
_DIGIT = f'{{"name": "input", "shape": [1, 784], "datatype": "UINT8", "data": [{_PIXELS}]}}'


@pytest.mark.parametrize(
    "body",
    [
        '{"inputs": [' + _DEEP + "]}",
        '{"id": ' + _DEEP + ', "inputs": []}',
        '{"inputs": [{"name": ' + _DEEP + "}]}",
        '{"inputs": [{"name": "input", "shape": [1, 784], "datatype": ' + _DEEP + "}]}",
        '{"inputs": [{"name": "input", "shape": [1, 784], "datatype": {"a": 1}}]}',
        '{"inputs": [' + _DIGIT + '], "outputs": [{"name": ' + _DEEP + "}]}",
        '{"inputs": [' + _DIGIT + '], "parameters": {"binary_data_output": ' + _DEEP + "}}",
    ],
)
def test_a_value_just_under_the_depth_limit_anywhere_in_a_v2_request_is_a_400(
    server: RunningServer, body: str
) -> None:
    sent = http("POST", "/v2/models/mnist/infer", {"Content-Type": JSON}, body.encode())
    answer = exchange(server, sent)
    assert answer.status == 400, answer
    assert len(answer.error_message()) < 400
