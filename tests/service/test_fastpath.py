"""service.fastpath: well-formed inference requests answered below Flask, the rest passed on.

The fast path must answer exactly what the Flask views answer (body, headers, metrics, log line),
and hand every other request to Flask with its body intact.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from werkzeug.test import Client

from service import api, fastpath
from service.app import create_app, current_predictor_of
from service.config import ServiceConfig
from service.fastpath import InferenceFastPath
from service.observability import request_log
from service.v2.binary import HEADER_LENGTH
from tests.service.test_api import DIGITS, EXPECTED, png_bytes
from tests.service.test_predictor import publish_copy

REQUEST_ID = "fast-or-not-1"
PASSED_ON = "599 PASSED ON"


def binary_infer_body(images: np.ndarray, *, binary_output: bool) -> tuple[bytes, str]:
    """A V2 request with binary FP32 input, as tritonclient sends it, and its header length."""
    data = (images.astype(np.float32) / np.float32(255)).tobytes()
    header = {
        "id": "r1",
        "inputs": [
            {
                "name": "input",
                "shape": list(images.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(data)},
            }
        ],
        "outputs": [
            {"name": "label", "parameters": {"binary_data": binary_output}},
            {"name": "probabilities", "parameters": {"binary_data": binary_output}},
        ],
    }
    text = json.dumps(header).encode()
    return text + data, str(len(text))


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Flask:
    root = tmp_path_factory.mktemp("repo")
    publish_copy(root)
    return create_app(ServiceConfig(model_dir=root, max_body_bytes=200_000, max_batch=8))


def both_paths(app: Flask) -> tuple[Client, Client]:
    """A client through the fast path and one straight to Flask (the app without it)."""
    layer = app.wsgi_app
    assert isinstance(layer, InferenceFastPath)
    return Client(app), Client(layer.app)


REQUESTS: list[tuple[str, str, dict[str, str], Callable[[], bytes]]] = [
    ("predict one", "/predict", {}, lambda: json.dumps({"images": [DIGITS[0].tolist()]}).encode()),
    (
        "predict rows and base64",
        "/predict",
        {},
        lambda: json.dumps(
            {
                "images": [
                    DIGITS[1].reshape(28, 28).tolist(),
                    base64.b64encode(png_bytes(DIGITS[2])).decode(),
                ]
            }
        ).encode(),
    ),
    (
        "v2 json tensors",
        "/v2/models/mnist/infer",
        {"Content-Type": "application/json"},
        lambda: json.dumps(
            {
                "id": "j1",
                "inputs": [
                    {
                        "name": "input",
                        "shape": [2, 784],
                        "datatype": "UINT8",
                        "data": DIGITS[:2].ravel().tolist(),
                    }
                ],
            }
        ).encode(),
    ),
]


@pytest.mark.parametrize(
    ("name", "path", "headers", "body"), REQUESTS, ids=[r[0] for r in REQUESTS]
)
def test_the_fast_path_answers_what_flask_answers(
    app: Flask, name: str, path: str, headers: dict[str, str], body: Callable[[], bytes]
) -> None:
    fast, flask_only = both_paths(app)
    sent = {"Content-Type": "application/json", "X-Request-ID": REQUEST_ID, **headers}
    answers = [client.post(path, data=body(), headers=sent) for client in (fast, flask_only)]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].get_data() == answers[1].get_data()
    for header in ("Content-Type", "Content-Length", "X-Request-ID"):
        assert answers[0].headers[header] == answers[1].headers[header], header
    assert answers[0].headers["X-Request-ID"] == REQUEST_ID


@pytest.mark.parametrize("binary_output", [True, False])
@pytest.mark.parametrize("path", ["/v2/models/mnist/infer", "/v2/models/mnist/versions/1/infer"])
def test_binary_v2_infer_is_answered_alike_and_right(
    app: Flask, path: str, binary_output: bool
) -> None:
    fast, flask_only = both_paths(app)
    body, header_length = binary_infer_body(DIGITS[:4], binary_output=binary_output)
    headers = {HEADER_LENGTH: header_length, "X-Request-ID": REQUEST_ID}
    answers = [client.post(path, data=body, headers=headers) for client in (fast, flask_only)]
    assert [answer.status_code for answer in answers] == [200, 200]
    assert answers[0].get_data() == answers[1].get_data()
    assert answers[0].headers.get(HEADER_LENGTH) == answers[1].headers.get(HEADER_LENGTH)
    assert answers[0].headers["Content-Type"] == answers[1].headers["Content-Type"]
    payload = answers[0].get_data()
    length = int(answers[0].headers.get(HEADER_LENGTH, len(payload)))
    header = json.loads(payload[:length])
    outputs = {output["name"]: output for output in header["outputs"]}
    if binary_output:
        labels = np.frombuffer(payload[length : length + 32], dtype=np.int64)
    else:
        labels = np.asarray(outputs["label"]["data"])
    assert labels.tolist() == EXPECTED[:4]


def test_the_route_templates_are_the_flask_rules(app: Flask) -> None:
    rules = {rule.rule for rule in app.url_map.iter_rules()}
    assert {api.PREDICT_ROUTE, fastpath.V2_INFER_ROUTE, fastpath.V2_INFER_VERSION_ROUTE} <= rules


# -- what goes to Flask ---------------------------------------------------------------------------


def recording_layer(app: Flask) -> tuple[Client, list[tuple[dict[str, Any], bytes]]]:
    """The fast path in front of a stand-in for Flask that records what reaches it."""
    reached: list[tuple[dict[str, Any], bytes]] = []

    def stand_in(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
        reached.append((environ, body))
        start_response(PASSED_ON, [("Content-Type", "text/plain")])
        return [b"passed on"]

    layer = InferenceFastPath(stand_in, current_predictor_of(app), app.extensions["mnist.config"])
    return Client(layer), reached


GOOD = json.dumps({"images": [DIGITS[0].tolist()]}).encode()


@pytest.mark.parametrize(
    ("method", "path", "headers", "body"),
    [
        ("GET", "/predict", {}, b""),
        ("POST", "/predict?top_k=3", {"Content-Type": "application/json"}, GOOD),
        ("POST", "/predict", {"Content-Type": "text/plain"}, GOOD),
        ("POST", "/predict", {"Content-Type": "image/png"}, png_bytes(DIGITS[0])),
        ("POST", "/predict", {"Content-Type": "application/json"}, b'{"images": [[1, 2]]}'),
        ("POST", "/predict", {"Content-Type": "application/json"}, b'{"images": [[NaN]]}'),
        ("POST", "/predict", {"Content-Type": "application/json"}, b"{"),
        ("POST", "/predict", {"Content-Type": "application/json"}, b" " * 200_001),
        ("POST", "/predict/", {"Content-Type": "application/json"}, GOOD),
        ("POST", "/other", {"Content-Type": "application/json"}, GOOD),
        (
            "POST",
            "/predict",
            {"Content-Type": "application/json", "Content-Encoding": "gzip"},
            gzip.compress(GOOD),
        ),
        (
            "POST",
            "/v2/models/other/infer",
            {},
            binary_infer_body(DIGITS[:1], binary_output=True)[0],
        ),
        ("POST", "/v2/models/mnist/versions/2/infer", {}, b'{"inputs": []}'),
        ("POST", "/v2/models/mnist/infer", {}, b'{"inputs": "no"}'),
        ("POST", "/v2/models/mnist/ready", {}, b"{}"),
    ],
)
def test_everything_else_reaches_flask_with_its_body(
    app: Flask, method: str, path: str, headers: dict[str, str], body: bytes
) -> None:
    client, reached = recording_layer(app)
    response = client.open(path, method=method, data=body, headers=headers)
    assert response.status == PASSED_ON
    assert len(reached) == 1
    environ, seen = reached[0]
    assert seen == body
    assert environ["REQUEST_METHOD"] == method


def test_a_chunked_body_reaches_flask(app: Flask) -> None:
    client, reached = recording_layer(app)
    response = client.post(
        "/predict",
        input_stream=io.BytesIO(GOOD),
        headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"},
    )
    assert response.status == PASSED_ON and len(reached) == 1


def test_well_formed_requests_never_reach_flask(app: Flask) -> None:
    client, reached = recording_layer(app)
    body, header_length = binary_infer_body(DIGITS[:2], binary_output=True)
    answers = [
        client.post("/predict", data=GOOD, headers={"Content-Type": "application/json"}),
        client.post(
            "/predict", data=GOOD, headers={"Content-Type": "Application/JSON; charset=utf-8"}
        ),
        client.post("/v2/models/mnist/infer", data=body, headers={HEADER_LENGTH: header_length}),
    ]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert reached == []
    assert json.loads(answers[0].get_data())["predictions"][0]["digit"] == EXPECTED[0]


def test_a_bug_in_the_fast_path_is_logged_and_flask_answers(
    app: Flask, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("a bug")

    monkeypatch.setattr(api, "answer_images", broken)
    client, reached = recording_layer(app)
    response = client.post("/predict", data=GOOD, headers={"Content-Type": "application/json"})
    assert response.status == PASSED_ON and reached[0][1] == GOOD
    assert any(record.exc_info and "fast path" in record.getMessage() for record in caplog.records)


# -- the same log line and metrics ----------------------------------------------------------------


def request_lines(captured: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in captured.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == request_log.LOGGER_NAME]


def test_both_paths_write_the_same_log_line(app: Flask, capsys: pytest.CaptureFixture[str]) -> None:
    fast, flask_only = both_paths(app)
    capsys.readouterr()
    for client in (fast, flask_only):
        client.post(
            "/v2/models/mnist/versions/1/infer",
            data=binary_infer_body(DIGITS[:3], binary_output=True)[0],
            headers={
                HEADER_LENGTH: binary_infer_body(DIGITS[:3], binary_output=True)[1],
                "X-Request-ID": REQUEST_ID,
            },
        )
    lines = request_lines(capsys.readouterr().err)
    assert len(lines) == 2
    for line in lines:
        assert line.pop("latency_ms") > 0
        assert line.pop("ts")
    assert lines[0] == lines[1]
    assert lines[0]["route"] == fastpath.V2_INFER_VERSION_ROUTE
    assert lines[0]["batch_size"] == 3 and lines[0]["model_version"] == 1


def test_the_log_line_goes_through_logging_when_it_is_configured_otherwise(app: Flask) -> None:
    class Collecting(logging.Handler):
        def __init__(self) -> None:
            super().__init__()
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    fast, _ = both_paths(app)
    collecting = Collecting()
    logger = logging.getLogger(request_log.LOGGER_NAME)
    logger.addHandler(collecting)  # a second handler: the shipped shortcut no longer applies
    try:
        fast.post("/predict", data=GOOD, headers={"Content-Type": "application/json"})
    finally:
        logger.removeHandler(collecting)
    assert len(collecting.records) == 1
    assert collecting.records[0].fields["route"] == "/predict"  # type: ignore[attr-defined]


def metric_value(app: Flask, name: str, **labels: str) -> float:
    text = Client(app).get("/metrics").get_data(as_text=True)
    for line in text.splitlines():
        if line.split("{")[0].split(" ")[0] != name:
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_both_paths_count_the_same_metrics(app: Flask) -> None:
    fast, flask_only = both_paths(app)
    names = [
        ("mnist_http_requests_total", {"route": "/predict", "status": "200", "version": "1"}),
        ("mnist_http_request_duration_seconds_count", {"route": "/predict", "status": "200"}),
        ("mnist_preprocessing_duration_seconds_count", {}),
        ("mnist_inference_duration_seconds_count", {"version": "1"}),
        ("mnist_predictions_total", {"digit": str(EXPECTED[0]), "version": "1"}),
    ]
    for client in (fast, flask_only):
        before = [metric_value(app, name, **labels) for name, labels in names]
        client.post("/predict", data=GOOD, headers={"Content-Type": "application/json"})
        after = [metric_value(app, name, **labels) for name, labels in names]
        assert [b - a for a, b in zip(before, after, strict=True)] == [1.0] * len(names)


def test_a_body_over_the_limit_gets_flasks_413(tmp_path: Path) -> None:
    publish_copy(tmp_path)
    small = create_app(ServiceConfig(model_dir=tmp_path, max_body_bytes=1_000))
    response = small.test_client().post("/predict", data=GOOD, content_type="application/json")
    assert response.status_code == 413
    assert response.json["error"]["code"] == "payload_too_large"
