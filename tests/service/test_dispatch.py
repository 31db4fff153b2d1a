"""service.dispatch: the inference routes have one entrance, parse once, and never reach Flask.

Every other request reaches the Flask app with its body intact, and every request, whichever part
answers it, gets one log line and its metrics from the outer layer.
"""

from __future__ import annotations

import gzip
import io
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from werkzeug.test import Client

from service import api
from service.app import PREDICTOR_KEY, create_app
from service.config import ServiceConfig
from service.dispatch import InferenceDispatcher, InferenceEndpoint
from service.observability import request_log
from service.observability.wsgi import RequestObservability
from service.v2 import views as v2
from service.v2.binary import HEADER_LENGTH
from tests.service.conftest import DIGITS, EXPECTED, json_of, png_bytes, publish_copy

REQUEST_ID = "one-entrance-1"
PASSED_ON = "599 PASSED ON"
GOOD = json.dumps({"images": [DIGITS[0].tolist()]}).encode()
JSON_HEADERS = {"Content-Type": "application/json"}


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
def config(tmp_path_factory: pytest.TempPathFactory) -> ServiceConfig:
    root = tmp_path_factory.mktemp("repo")
    publish_copy(root)
    return ServiceConfig(model_dir=root, max_body_bytes=200_000, max_batch=8)


@pytest.fixture(scope="module")
def app(config: ServiceConfig) -> Flask:
    return create_app(config)


@pytest.mark.parametrize("binary_output", [True, False])
@pytest.mark.parametrize("path", ["/v2/models/mnist/infer", "/v2/models/mnist/versions/1/infer"])
def test_binary_v2_infer_is_answered_right(app: Flask, path: str, binary_output: bool) -> None:
    body, header_length = binary_infer_body(DIGITS[:4], binary_output=binary_output)
    answer = Client(app).post(path, data=body, headers={HEADER_LENGTH: header_length})
    assert answer.status_code == 200
    payload = answer.get_data()
    length = int(answer.headers.get(HEADER_LENGTH, len(payload)))
    assert answer.headers["Content-Length"] == str(len(payload))
    header = json.loads(payload[:length])
    outputs = {output["name"]: output for output in header["outputs"]}
    if binary_output:
        labels = np.frombuffer(payload[length : length + 32], dtype=np.int64)
    else:
        labels = np.asarray(outputs["label"]["data"])
    assert labels.tolist() == EXPECTED[:4]


def test_the_inference_rules_are_in_flask_s_url_map(app: Flask) -> None:
    rules = {rule.rule: rule for rule in app.url_map.iter_rules()}
    for rule in (api.PREDICT_ROUTE, v2.V2_INFER_ROUTE, v2.V2_INFER_VERSION_ROUTE):
        methods = rules[rule].methods
        assert methods is not None and "POST" in methods
        assert rules[rule].endpoint not in app.view_functions  # no second entrance in Flask


# -- what reaches Flask ---------------------------------------------------------------------------


def recording_stack(
    app: Flask, config: ServiceConfig
) -> tuple[Client, list[tuple[dict[str, Any], bytes]]]:
    """The service's dispatcher and outer layer around a stand-in for Flask that records."""
    reached: list[tuple[dict[str, Any], bytes]] = []

    def stand_in(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        length = int(environ.get("CONTENT_LENGTH") or 0)
        body = environ["wsgi.input"].read(length) if length else environ["wsgi.input"].read()
        reached.append((environ, body))
        start_response(PASSED_ON, [("Content-Type", "text/plain")])
        return [b"passed on"]

    predictor = app.extensions[PREDICTOR_KEY]
    endpoints: list[InferenceEndpoint] = [
        api.PredictEndpoint(predictor, config),
        v2.InferEndpoint(predictor, config),
    ]
    return Client(RequestObservability(InferenceDispatcher(stand_in, endpoints))), reached


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/predict", b""),
        ("PUT", "/predict", GOOD),
        ("POST", "/predict/extra", GOOD),
        ("POST", "/other", GOOD),
        ("GET", "/v2/models/mnist/infer", b""),
        ("POST", "/v2/models/mnist/ready", b"{}"),
        ("POST", "/v2/models/mnist/versions/1/extra/infer", b"{}"),
    ],
)
def test_other_routes_and_methods_reach_flask_with_their_body(
    app: Flask, config: ServiceConfig, method: str, path: str, body: bytes
) -> None:
    client, reached = recording_stack(app, config)
    response = client.open(path, method=method, data=body, headers=JSON_HEADERS)
    assert response.status == PASSED_ON
    assert len(reached) == 1
    environ, seen = reached[0]
    assert seen == body
    assert environ["REQUEST_METHOD"] == method


INFERENCE_REQUESTS = [
    ("/predict", JSON_HEADERS, GOOD),
    ("/predict?top_k=3&return_input=true", JSON_HEADERS, GOOD),
    ("/predict", {"Content-Type": "Application/JSON; charset=utf-8"}, GOOD),
    ("/predict", {"Content-Type": "image/png"}, png_bytes(DIGITS[0])),
    ("/predict?top_k=many", JSON_HEADERS, GOOD),
    ("/predict", JSON_HEADERS, b'{"images": [[NaN]]}'),
    ("/predict", JSON_HEADERS, b"{"),
    ("/predict", JSON_HEADERS, b" " * 200_001),
    ("/predict", {"Content-Type": "text/plain"}, GOOD),
    ("/predict", {**JSON_HEADERS, "Content-Encoding": "gzip"}, gzip.compress(GOOD)),
    ("/v2/models/other/infer", {}, binary_infer_body(DIGITS[:1], binary_output=True)[0]),
    ("/v2/models/mnist/versions/2/infer", {}, b'{"inputs": []}'),
    ("/v2/models/mnist/infer", {}, b'{"inputs": "no"}'),
    ("/v2/models/mnist/infer", {"Content-Encoding": "gzip"}, gzip.compress(b'{"inputs": 1}')),
    ("/v2/models/mnist/infer", {"Content-Encoding": "br"}, b"xx"),
]


@pytest.mark.parametrize(("path", "headers", "body"), INFERENCE_REQUESTS)
def test_inference_requests_never_reach_flask_whatever_their_fate(
    app: Flask, config: ServiceConfig, path: str, headers: dict[str, str], body: bytes
) -> None:
    client, reached = recording_stack(app, config)
    response = client.post(path, data=body, headers=headers)
    assert response.status != PASSED_ON
    assert reached == []
    assert response.headers["Content-Type"].startswith(("application/json", "application/oct"))


def test_a_chunked_inference_request_is_answered_by_the_dispatcher(
    app: Flask, config: ServiceConfig
) -> None:
    client, reached = recording_stack(app, config)
    response = client.post(
        "/predict",
        input_stream=io.BytesIO(GOOD),
        headers={**JSON_HEADERS, "Transfer-Encoding": "chunked"},
        environ_base={"wsgi.input_terminated": True},  # as gunicorn sets it for chunked bodies
    )
    assert response.status_code == 200 and reached == []
    assert json_of(response)["predictions"][0]["digit"] == EXPECTED[0]


# -- parsed once ----------------------------------------------------------------------------------


def counting(monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> list[int]:
    """Count the calls of ``module.name`` (the real function still runs)."""
    calls: list[int] = []
    real = getattr(module, name)

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [
        ("/predict", b'{"images": [[1, 2]]}', 422),
        ("/predict", b'{"images": [[NaN]]}', 422),
        ("/predict", b"{", 400),
        ("/predict?top_k=3", b'{"images": [[1, 2]]}', 422),
        ("/predict?return_input=yes", b'{"images": "x"}', 422),
        ("/predict", GOOD, 200),
    ],
)
def test_a_predict_request_is_parsed_exactly_once(
    app: Flask, monkeypatch: pytest.MonkeyPatch, path: str, body: bytes, status: int
) -> None:
    calls = counting(monkeypatch, api, "images_from_json")
    response = app.test_client().post(path, data=body, headers=JSON_HEADERS)
    assert response.status_code == status
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("headers", "body", "status"),
    [
        ({}, b'{"inputs": "no"}', 400),
        ({HEADER_LENGTH: "400"}, b'{"inputs": []}', 400),
        ({"Content-Encoding": "gzip"}, gzip.compress(b'{"inputs": [{"name": "x"}]}'), 400),
        ({}, binary_infer_body(DIGITS[:9], binary_output=True)[0], 400),  # header length unset
    ],
)
def test_a_v2_infer_request_is_parsed_exactly_once(
    app: Flask, monkeypatch: pytest.MonkeyPatch, headers: dict[str, str], body: bytes, status: int
) -> None:
    calls = counting(monkeypatch, v2, "parse_infer_request")
    response = app.test_client().post("/v2/models/mnist/infer", data=body, headers=headers)
    assert response.status_code == status
    assert len(calls) == 1
    assert set(json_of(response)) == {"error"} and isinstance(json_of(response)["error"], str)


# -- bugs -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "module", "name"),
    [("/predict", api, "answer_images"), ("/v2/models/mnist/infer", v2, "answer_infer")],
)
def test_a_bug_in_an_endpoint_is_a_logged_500_in_the_route_s_shape(
    app: Flask,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    path: str,
    module: Any,
    name: str,
) -> None:
    def broken(*args: Any, **kwargs: Any) -> bytes:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(module, name, broken)
    body = GOOD if path == "/predict" else binary_infer_body(DIGITS[:1], binary_output=False)[0]
    headers = {**JSON_HEADERS, "X-Request-ID": REQUEST_ID}
    if path != "/predict":
        headers[HEADER_LENGTH] = binary_infer_body(DIGITS[:1], binary_output=False)[1]
    response = app.test_client().post(path, data=body, headers=headers)
    assert response.status_code == 500
    assert b"secret" not in response.get_data()
    message = f"internal error; quote request id {REQUEST_ID} when reporting it"
    if path == "/predict":
        assert response.json == {"error": {"code": "internal_error", "message": message}}
    else:
        assert response.json == {"error": message}
    assert any(record.exc_info and REQUEST_ID in record.getMessage() for record in caplog.records)


# -- one outer layer ------------------------------------------------------------------------------


def request_lines(captured: str) -> list[dict[str, Any]]:
    lines = [json.loads(line) for line in captured.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("logger") == request_log.LOGGER_NAME]


def test_every_route_gets_one_log_line_with_its_route_template(
    app: Flask, capsys: pytest.CaptureFixture[str]
) -> None:
    client = app.test_client()
    capsys.readouterr()
    body, header_length = binary_infer_body(DIGITS[:3], binary_output=True)
    answers = [
        client.post(
            "/v2/models/mnist/versions/1/infer",
            data=body,
            headers={HEADER_LENGTH: header_length, "X-Request-ID": REQUEST_ID},
        ),
        client.post("/predict", data=b"{", headers=JSON_HEADERS),
        client.get("/v2/models/mnist", headers={"X-Request-ID": "flask-1"}),
        client.get("/v2/models/mnist/infer"),
        client.get("/no/such/page"),
    ]
    lines = request_lines(capsys.readouterr().err)
    assert [line["status"] for line in lines] == [answer.status_code for answer in answers]
    assert [line["status"] for line in lines] == [200, 400, 200, 405, 404]
    assert [line["route"] for line in lines] == [
        v2.V2_INFER_VERSION_ROUTE,
        api.PREDICT_ROUTE,
        "/v2/models/<model>",
        "/v2/<path:rest>",
        "<unmatched>",
    ]
    assert lines[0]["request_id"] == REQUEST_ID == answers[0].headers["X-Request-ID"]
    assert lines[0]["batch_size"] == 3 and lines[0]["model_version"] == 1
    assert lines[0]["request_bytes"] == len(body)
    assert lines[2]["request_id"] == "flask-1" == answers[2].headers["X-Request-ID"]
    assert all(line["latency_ms"] > 0 for line in lines)
    assert all(
        answer.headers["X-Request-ID"] == line["request_id"]
        for answer, line in zip(answers, lines, strict=True)
    )


def metric_value(app: Flask, name: str, **labels: str) -> float:
    text = Client(app).get("/metrics").get_data(as_text=True)
    for line in text.splitlines():
        if line.split("{")[0].split(" ")[0] != name:
            continue
        if all(f'{key}="{value}"' in line for key, value in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(
    ("method", "path", "body", "route", "status", "version"),
    [
        ("POST", "/predict", GOOD, "/predict", "200", "1"),
        ("POST", "/predict", b"{", "/predict", "400", ""),
        ("GET", "/v2/health/live", b"", "/v2/health/live", "200", ""),
        ("GET", "/openapi.json", b"", "/openapi.json", "200", ""),
    ],
)
def test_every_route_is_counted_and_timed_once(
    app: Flask, method: str, path: str, body: bytes, route: str, status: str, version: str
) -> None:
    names = [
        ("mnist_http_requests_total", {"route": route, "status": status, "version": version}),
        ("mnist_http_request_duration_seconds_count", {"route": route, "status": status}),
    ]
    before = [metric_value(app, name, **labels) for name, labels in names]
    Client(app).open(path, method=method, data=body, headers=JSON_HEADERS)
    after = [metric_value(app, name, **labels) for name, labels in names]
    assert [b - a for a, b in zip(before, after, strict=True)] == [1.0, 1.0]


def test_a_body_over_the_limit_is_413_before_parsing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    publish_copy(tmp_path)
    small = create_app(ServiceConfig(model_dir=tmp_path, max_body_bytes=1_000))
    calls = counting(monkeypatch, api, "images_from_json")
    response = small.test_client().post("/predict", data=GOOD, headers=JSON_HEADERS)
    assert response.status_code == 413
    assert json_of(response)["error"]["code"] == "payload_too_large"
    assert calls == []
