"""The /v2 blueprint over HTTP (Flask's test client), with a small fake predictor passed in."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import flask
import numpy as np
import pytest
from flask.testing import FlaskClient
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput, InferResult

from service.app import serve_with_layers
from service.config import ServiceConfig
from service.errors import ModelUnavailable, NotFound
from service.model.contract import MAX_BATCH_SIZE, triton_config
from service.v2.views import InferEndpoint, create_blueprint

VERSION = 3


@dataclass(frozen=True)
class FakeCard:
    version: int

    def to_json(self) -> dict[str, Any]:
        return {"version": self.version}


@dataclass(frozen=True)
class FakeLoadedModel:
    name: str
    version: int
    card: FakeCard


@dataclass(frozen=True)
class FakePrediction:
    labels: np.ndarray
    probabilities: np.ndarray
    model_name: str
    model_version: int


@dataclass(frozen=True)
class FakeLimits:
    max_batch: int = 8


@dataclass
class FakePredictor:
    """Calls each image the digit of its brightest pixel among the first ten; records its input."""

    version: int = VERSION
    available: bool = True
    config: FakeLimits = field(default_factory=FakeLimits)
    answering_version: int | None = None
    seen: list[np.ndarray] = field(default_factory=list)

    name: str = "mnist"

    @property
    def loaded(self) -> FakeLoadedModel:
        if not self.available:
            raise ModelUnavailable("no valid model version is loaded")
        return FakeLoadedModel("mnist", self.version, FakeCard(self.version))

    def model(self, version: int | None = None) -> FakeLoadedModel:
        if version is not None and version != self.version:
            raise NotFound(
                f"model 'mnist' has no version {str(version)!r} loaded; version "
                f"{self.version} is serving"
            )
        return self.loaded

    def loaded_versions(self) -> list[int]:
        return [self.version] if self.available else []

    def predict(self, images: np.ndarray, version: int | None = None) -> FakePrediction:
        self.model(version)
        assert images.dtype == np.float32 and images.shape[1:] == (784,)
        self.seen.append(images.copy())
        scores = images[:, :10] + np.float32(1e-3)
        probabilities = (scores / scores.sum(axis=1, keepdims=True)).astype(np.float32)
        return FakePrediction(
            labels=probabilities.argmax(axis=1).astype(np.int64),
            probabilities=probabilities,
            model_name="mnist",
            model_version=self.answering_version or self.version,
        )


@pytest.fixture
def predictor() -> FakePredictor:
    return FakePredictor()


def v2_app(predictor: FakePredictor, config: ServiceConfig) -> flask.Flask:
    """The V2 routes alone, in the service's layers (dispatcher, renderer, observability)."""
    app = flask.Flask(__name__)
    app.register_blueprint(create_blueprint(predictor, config))
    serve_with_layers(app, config, [InferEndpoint(predictor, config)])
    return app


@pytest.fixture
def client(predictor: FakePredictor) -> Iterator[FlaskClient]:
    config = ServiceConfig(max_batch=8, max_body_bytes=4 * 1024 * 1024)
    with v2_app(predictor, config).test_client() as test_client:
        yield test_client


def digits_images(digits: list[int]) -> np.ndarray:
    """uint8 [N, 784] where image i lights pixel ``digits[i]`` brightest, so the fake says it."""
    images = np.zeros((len(digits), 784), dtype=np.uint8)
    images[:, 10:] = 7  # some other ink the fake ignores
    for row, digit in enumerate(digits):
        images[row, digit] = 255
    return images


def infer(
    client: FlaskClient,
    inputs: list[InferInput],
    outputs: list[InferRequestedOutput] | None = None,
    path: str = "/v2/models/mnist/infer",
    request_id: str = "",
) -> InferResult:
    """Send what tritonclient would send and read the answer the way tritonclient does."""
    body, json_size = InferenceServerClient.generate_request_body(
        inputs, outputs=outputs, request_id=request_id
    )
    headers = {} if json_size is None else {"Inference-Header-Content-Length": str(json_size)}
    response = client.post(path, data=body, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    header_length = response.headers.get("Inference-Header-Content-Length")
    if header_length is None:
        assert response.content_type == "application/json"
    return InferResult.from_response_body(
        response.get_data(), header_length=None if header_length is None else int(header_length)
    )


def uint8_input(images: np.ndarray, binary: bool = True) -> InferInput:
    tensor = InferInput("input", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


def test_server_metadata_lists_the_extensions(client: FlaskClient) -> None:
    response = client.get("/v2")
    assert response.status_code == 200
    body = response.get_json()
    assert body["name"] == "mnist-service"
    assert isinstance(body["version"], str) and body["version"]
    assert {"binary_tensor_data", "classification", "model_configuration"} <= set(
        body["extensions"]
    )


@pytest.mark.parametrize(
    "path",
    [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/mnist/ready",
        f"/v2/models/mnist/versions/{VERSION}/ready",
    ],
)
def test_health_is_200_when_serving(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    # KServe's server answers these JSON bodies, and KServe's client reads them
    expected: dict[str, object] = {"live": True} if path.endswith("live") else {"ready": True}
    if "/models/" in path:
        expected = {"name": "mnist", "ready": True}
    assert response.get_json() == expected


@pytest.mark.parametrize("path", ["/v2/health/ready", "/v2/models/mnist/ready"])
def test_not_ready_without_a_model_but_still_live(
    client: FlaskClient, predictor: FakePredictor, path: str
) -> None:
    predictor.available = False
    response = client.get(path)
    assert response.status_code == 503
    assert response.get_json()["ready"] is False
    assert client.get("/v2/health/live").get_json() == {"live": True}


def test_not_ready_while_draining_but_still_live(
    client: FlaskClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import draining

    monkeypatch.setattr(draining, "_draining", type(draining._draining)())
    assert client.get("/v2/health/ready").status_code == 200
    draining.begin()
    response = client.get("/v2/health/ready")
    assert (response.status_code, response.get_json()) == (503, {"ready": False})
    assert client.get("/v2/health/live").status_code == 200
    assert client.get("/v2/models/mnist/ready").status_code == 200  # the model itself is fine


def test_inference_without_a_model_is_503_in_v2_shape(
    client: FlaskClient, predictor: FakePredictor
) -> None:
    predictor.available = False
    response = client.post("/v2/models/mnist/infer", json={"inputs": []})
    assert response.status_code == 503
    assert response.get_json() == {"error": "no valid model version is loaded"}


@pytest.mark.parametrize("suffix", ["", f"/versions/{VERSION}"])
def test_model_metadata(client: FlaskClient, suffix: str) -> None:
    response = client.get(f"/v2/models/mnist{suffix}")
    assert response.status_code == 200
    assert response.get_json() == {
        "name": "mnist",
        "versions": [str(VERSION)],
        "platform": "onnxruntime_onnx",
        "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}],
        "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        ],
    }


@pytest.mark.parametrize(
    "method, path, message",
    [
        ("get", "/v2/models/fashion", "unknown model 'fashion'"),
        ("get", "/v2/models/fashion/ready", "unknown model"),
        ("get", "/v2/models/mnist/versions/2", "no version '2'"),
        ("get", "/v2/models/mnist/versions/latest/ready", "no version 'latest'"),
        ("get", "/v2/models/mnist/versions/2/config", "no version '2'"),
        ("post", "/v2/models/fashion/infer", "unknown model"),
        ("post", "/v2/models/mnist/versions/9/infer", "no version '9'"),
        ("get", "/v2/repository/index", "no Open Inference Protocol endpoint"),
    ],
)
def test_unknown_models_versions_and_routes_are_404(
    client: FlaskClient, method: str, path: str, message: str
) -> None:
    response = getattr(client, method)(path, json={})
    assert response.status_code == 404
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str)
    assert message in body["error"]


@pytest.mark.parametrize(
    "method, path, allowed",
    [
        ("get", "/v2/models/mnist/infer", "POST"),
        ("put", f"/v2/models/mnist/versions/{VERSION}/infer", "POST"),
        ("post", "/v2/models/mnist", "GET"),
        ("delete", "/v2/health/ready", "GET"),
    ],
)
def test_wrong_method_is_405_in_v2_shape(
    client: FlaskClient, method: str, path: str, allowed: str
) -> None:
    response = getattr(client, method)(path)
    assert response.status_code == 405
    # Allow lists what OPTIONS lists: HEAD with GET, and OPTIONS itself
    header = {"GET": "GET, HEAD, OPTIONS", "POST": "OPTIONS, POST"}[allowed]
    assert response.headers["Allow"] == header
    assert f"use {allowed}" in response.get_json()["error"]
    assert client.options(path).headers["Allow"] == header


def test_model_config_agrees_with_the_triton_config_file(client: FlaskClient) -> None:
    config = client.get("/v2/models/mnist/config").get_json()
    text = triton_config()
    assert f'name: "{config["name"]}"' in text
    assert f'platform: "{config["platform"]}"' in text
    assert f"max_batch_size: {MAX_BATCH_SIZE}" in text
    assert config["max_batch_size"] == 8  # the limit this server enforces
    blocks = re.findall(r'name: "(\w+)"\s+data_type: (\w+)\s+dims: \[ ([\d ]*)\]', text)
    assert blocks == [
        (tensor["name"], tensor["data_type"], " ".join(map(str, tensor["dims"])) + " ")
        if tensor["dims"]
        else (tensor["name"], tensor["data_type"], "")
        for tensor in config["input"] + config["output"]
    ]
    assert client.get(f"/v2/models/mnist/versions/{VERSION}/config").get_json() == config


@pytest.mark.parametrize("binary_in", [True, False], ids=["binary-in", "json-in"])
@pytest.mark.parametrize("binary_out", [True, False], ids=["binary-out", "json-out"])
def test_infer_round_trip(
    client: FlaskClient, predictor: FakePredictor, binary_in: bool, binary_out: bool
) -> None:
    digits = [7, 2, 1, 0, 4]
    images = digits_images(digits)
    outputs = [
        InferRequestedOutput("label", binary_data=binary_out),
        InferRequestedOutput("probabilities", binary_data=binary_out),
    ]
    result = infer(client, [uint8_input(images, binary_in)], outputs, request_id="r-1")
    assert result.as_numpy("label").tolist() == digits
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (5, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    response = result.get_response()
    assert response["id"] == "r-1"
    assert response["model_name"] == "mnist"
    assert response["model_version"] == str(VERSION)
    np.testing.assert_array_equal(predictor.seen[-1], images.astype(np.float32) / 255)


def test_infer_on_versioned_path_with_28x28_fp32(client: FlaskClient) -> None:
    images = (digits_images([3, 9]).astype(np.float32) / 255).reshape(2, 28, 28)
    tensor = InferInput("input", [2, 28, 28], "FP32")
    tensor.set_data_from_numpy(images)
    result = infer(client, [tensor], path=f"/v2/models/mnist/versions/{VERSION}/infer")
    assert result.as_numpy("label").tolist() == [3, 9]


def test_classification_top3(client: FlaskClient) -> None:
    images = digits_images([5, 8])
    images[0, 6] = 200  # second best for the first image
    output = InferRequestedOutput("probabilities", class_count=3)
    top = infer(client, [uint8_input(images)], [output]).as_numpy("probabilities")
    assert top.shape == (2, 3)
    first = [item.decode().split(":") for item in top[0]]
    assert [int(index) for _, index in first][:2] == [5, 6]
    assert float(first[0][0]) > float(first[1][0]) > float(first[2][0])
    assert int(top[1][0].decode().split(":")[1]) == 8


def test_a_version_swapped_mid_request_is_not_passed_off(
    client: FlaskClient, predictor: FakePredictor
) -> None:
    predictor.answering_version = VERSION + 1
    body = InferenceServerClient.generate_request_body([uint8_input(digits_images([1]), False)])[0]
    response = client.post(f"/v2/models/mnist/versions/{VERSION}/infer", data=body)
    assert response.status_code == 404
    assert "replaced" in response.get_json()["error"]


def post_raw(client: FlaskClient, body: bytes, header_length: int | None = None) -> Any:
    headers = {} if header_length is None else {"Inference-Header-Content-Length": header_length}
    return client.post("/v2/models/mnist/infer", data=body, headers=headers)


@pytest.mark.parametrize(
    "body, header_length, message",
    [
        (b"{not json", None, "not a valid JSON"),
        (b'{"inputs": []}', 400, "only 14"),
        (b'{"inputs": []}', -1, "non-negative"),
        (b'{"inputs": [{"name": "x"}]}', None, "unknown input"),
        (
            b'{"inputs": [{"name": "input", "shape": [9, 784], "datatype": "UINT8", "data": [0]}]}',
            None,
            "over the limit of 8",
        ),
    ],
)
def test_bad_requests_are_400_and_the_next_request_works(
    client: FlaskClient, body: bytes, header_length: int | None, message: str
) -> None:
    response = post_raw(client, body, header_length)
    assert response.status_code == 400
    error = response.get_json()
    assert set(error) == {"error"} and message in error["error"]
    assert infer(client, [uint8_input(digits_images([6]))]).as_numpy("label").tolist() == [6]


def test_truncated_binary_body_is_400(client: FlaskClient) -> None:
    body, json_size = InferenceServerClient.generate_request_body(
        [uint8_input(digits_images([1, 2]))]
    )
    response = post_raw(client, body[:-100], json_size)
    assert response.status_code == 400
    assert "truncated" in response.get_json()["error"]


def test_oversized_body_is_413_in_v2_shape(client: FlaskClient) -> None:
    response = post_raw(client, b"{" + b" " * (5 * 1024 * 1024) + b"}")
    assert response.status_code == 413
    assert response.get_json() == {
        "error": f"the request body is over the limit of {4 * 1024 * 1024} bytes"
    }


def test_the_configured_batch_limit_is_the_one_v2_states_and_enforces(
    predictor: FakePredictor,
) -> None:
    with v2_app(predictor, ServiceConfig(max_batch=2)).test_client() as small:
        assert small.get("/v2/models/mnist/config").get_json()["max_batch_size"] == 2
        body = InferenceServerClient.generate_request_body([uint8_input(digits_images([1] * 3))])
        response = post_raw(small, *body)
        assert response.status_code == 400
        assert "over the limit of 2" in response.get_json()["error"]


def test_gzip_body_and_gzip_bomb(client: FlaskClient) -> None:
    body, json_size = InferenceServerClient.generate_request_body([uint8_input(digits_images([4]))])
    headers = {"Content-Encoding": "gzip", "Inference-Header-Content-Length": str(json_size)}
    response = client.post("/v2/models/mnist/infer", data=gzip.compress(body), headers=headers)
    assert response.status_code == 200
    bomb = gzip.compress(bytes(8 * 1024 * 1024))  # inflates past the 4 MiB body limit
    response = client.post("/v2/models/mnist/infer", data=bomb, headers=headers)
    assert response.status_code == 413
    assert "inflates to more than" in response.get_json()["error"]
