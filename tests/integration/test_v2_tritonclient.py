"""The standard tritonclient HTTP client against a real gunicorn serving the committed model."""

from __future__ import annotations

import gzip
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput
from tritonclient.utils import InferenceServerException

from tests.conftest import COMMITTED_MODELS
from tests.integration.conftest import StartServer

BATCH = 16


def read_test_digits(data_dir: Path, count: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` MNIST test images (uint8 [count, 784]) and their labels."""
    with gzip.open(data_dir / "t10k-images-idx3-ubyte.gz") as handle:
        images = np.frombuffer(handle.read(16 + count * 784), np.uint8, offset=16)
    with gzip.open(data_dir / "t10k-labels-idx1-ubyte.gz") as handle:
        labels = np.frombuffer(handle.read(8 + count), np.uint8, offset=8)
    return images.reshape(count, 784), labels.astype(np.int64)


@pytest.fixture(scope="module")
def digits(mnist_data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    return read_test_digits(mnist_data_dir, BATCH)


@pytest.fixture(scope="module")
def client(committed_server: Any) -> Iterator[InferenceServerClient]:
    address = committed_server.url.split("://", 1)[-1].rstrip("/")
    triton = InferenceServerClient(url=address, connection_timeout=10.0, network_timeout=30.0)
    yield triton
    triton.close()


@pytest.fixture(scope="module")
def served_version(client: InferenceServerClient) -> str:
    versions = client.get_model_metadata("mnist")["versions"]
    assert len(versions) == 1
    return str(versions[0])


@pytest.fixture(scope="module")
def reference(
    served_version: str, digits: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """What onnxruntime in this process says about the test digits, on the same model file."""
    model = COMMITTED_MODELS / "mnist" / served_version / "model.onnx"
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    images = digits[0].astype(np.float32) / np.float32(255.0)
    labels, probabilities = session.run(["label", "probabilities"], {"input": images})
    return labels, probabilities


def fp32_input(images: np.ndarray, binary: bool = True) -> InferInput:
    tensor = InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images.astype(np.float32) / np.float32(255.0), binary_data=binary)
    return tensor


def test_server_and_model_are_ready(client: InferenceServerClient, served_version: str) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mnist")
    assert client.is_model_ready("mnist", model_version=served_version)
    assert not client.is_model_ready("mnist", model_version="999999")
    assert not client.is_model_ready("fashion")


def test_server_metadata(client: InferenceServerClient) -> None:
    metadata = client.get_server_metadata()
    assert metadata["name"] == "mnist-service"
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])


def test_model_metadata(client: InferenceServerClient, served_version: str) -> None:
    metadata = client.get_model_metadata("mnist", model_version=served_version)
    assert metadata["name"] == "mnist"
    assert metadata["platform"] == "onnxruntime_onnx"
    assert metadata["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 784]}]
    assert {o["name"]: (o["datatype"], o["shape"]) for o in metadata["outputs"]} == {
        "label": ("INT64", [-1]),
        "probabilities": ("FP32", [-1, 10]),
    }


def test_model_config(client: InferenceServerClient) -> None:
    config = client.get_model_config("mnist")
    assert config["name"] == "mnist"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["max_batch_size"] >= BATCH
    assert [(t["name"], t["data_type"], t["dims"]) for t in config["input"]] == [
        ("input", "TYPE_FP32", [784])
    ]


def test_binary_fp32_batch_returns_the_right_digits(
    client: InferenceServerClient,
    digits: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    served_version: str,
) -> None:
    images, truth = digits
    # no outputs named: tritonclient sends binary input and asks for every output in binary
    result = client.infer("mnist", [fp32_input(images)], request_id="batch-16")
    labels = result.as_numpy("label")
    probabilities = result.as_numpy("probabilities")
    assert labels.shape == (BATCH,) and probabilities.shape == (BATCH, 10)
    np.testing.assert_array_equal(labels, reference[0])
    np.testing.assert_allclose(probabilities, reference[1], atol=1e-6)
    assert (labels == truth).sum() >= BATCH - 1  # a real model, not a constant answer
    response = result.get_response()
    assert response["id"] == "batch-16"
    assert response["model_name"] == "mnist"
    assert response["model_version"] == served_version


def test_binary_and_json_outputs_decode_alike(
    client: InferenceServerClient, digits: tuple[np.ndarray, np.ndarray]
) -> None:
    images = digits[0]
    answers = {}
    for binary in (True, False):
        outputs = [
            InferRequestedOutput("label", binary_data=binary),
            InferRequestedOutput("probabilities", binary_data=binary),
        ]
        result = client.infer("mnist", [fp32_input(images, binary)], outputs=outputs)
        answers[binary] = (result.as_numpy("label"), result.as_numpy("probabilities"))
    np.testing.assert_array_equal(answers[True][0], answers[False][0])
    # JSON carries the float32 values as decimal text; they round-trip to the same float32
    np.testing.assert_array_equal(answers[True][1], answers[False][1])


@pytest.mark.parametrize("shape", [(BATCH, 784), (BATCH, 28, 28)])
def test_uint8_input_gives_the_same_answer(
    client: InferenceServerClient,
    digits: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    shape: tuple[int, ...],
) -> None:
    tensor = InferInput("input", list(shape), "UINT8")
    tensor.set_data_from_numpy(digits[0].reshape(shape))
    result = client.infer("mnist", [tensor])
    np.testing.assert_array_equal(result.as_numpy("label"), reference[0])
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference[1], atol=1e-6)


def test_classification_top3(
    client: InferenceServerClient,
    digits: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
) -> None:
    outputs = [InferRequestedOutput("probabilities", class_count=3)]
    top = client.infer("mnist", [fp32_input(digits[0])], outputs=outputs).as_numpy("probabilities")
    assert top.shape == (BATCH, 3)
    for row, probabilities in zip(top, reference[1], strict=True):
        entries = [item.decode().split(":") for item in row]
        assert [int(index) for _, index in entries] == np.argsort(-probabilities)[:3].tolist()
        np.testing.assert_allclose(
            [float(value) for value, _ in entries], np.sort(probabilities)[::-1][:3], atol=1e-6
        )


def assert_client_error(call: Any, status: str, message: str) -> None:
    with pytest.raises(InferenceServerException) as caught:
        call()
    assert caught.value.status() == status
    assert message in caught.value.message()


def test_client_errors_are_4xx_and_serving_goes_on(
    client: InferenceServerClient, digits: tuple[np.ndarray, np.ndarray], served_version: str
) -> None:
    images = digits[0]
    wrong_name = InferInput("pixels", [BATCH, 784], "FP32")
    wrong_name.set_data_from_numpy(images.astype(np.float32) / 255)
    assert_client_error(lambda: client.infer("mnist", [wrong_name]), "400", "unknown input")
    wrong_type = InferInput("input", [BATCH, 784], "INT32")
    wrong_type.set_data_from_numpy(images.astype(np.int32))
    assert_client_error(lambda: client.infer("mnist", [wrong_type]), "400", "datatype 'INT32'")
    wrong_shape = InferInput("input", [BATCH, 392], "FP32")
    wrong_shape.set_data_from_numpy(images.reshape(-1, 392).astype(np.float32)[:BATCH] / 255)
    assert_client_error(lambda: client.infer("mnist", [wrong_shape]), "400", "is not")
    unknown = [InferRequestedOutput("logits")]
    assert_client_error(
        lambda: client.infer("mnist", [fp32_input(images)], outputs=unknown),
        "400",
        "unknown output",
    )
    assert_client_error(
        lambda: client.infer("fashion", [fp32_input(images)]), "404", "unknown model"
    )
    assert_client_error(
        lambda: client.infer("mnist", [fp32_input(images)], model_version="999999"),
        "404",
        "no version",
    )
    assert_client_error(lambda: client.get_model_metadata("fashion"), "404", "unknown model")
    result = client.infer("mnist", [fp32_input(images)], model_version=served_version)
    assert result.as_numpy("label").shape == (BATCH,)


ONE_BINARY_IMAGE = (
    b'{"inputs": [{"name": "input", "shape": [1, 784], "datatype": "FP32",'
    b' "parameters": {"binary_data_size": 3136}}]}'
)


@pytest.mark.parametrize(
    "body, headers, message",
    [
        (b"\x00" * 64, {"Inference-Header-Content-Length": "10"}, "not a valid JSON"),
        (b"{}", {"Inference-Header-Content-Length": "999"}, "only 2"),
        (b"{}", {"Inference-Header-Content-Length": "-2"}, "non-negative"),
        (
            ONE_BINARY_IMAGE + b"\x00" * 100,
            {"Inference-Header-Content-Length": str(len(ONE_BINARY_IMAGE))},
            "truncated",
        ),
        (
            b'{"inputs": [{"name": "input", "shape": [2000, 784], "datatype": "UINT8",'
            b' "data": [0]}]}',
            {},
            "over the limit",
        ),
    ],
)
def test_hostile_bodies_get_v2_errors(
    committed_server: Any, body: bytes, headers: dict[str, str], message: str
) -> None:
    url = committed_server.url.rstrip("/") + "/v2/models/mnist/infer"
    response = requests.post(url, data=body, headers=headers, timeout=30)
    assert response.status_code == 400
    error = response.json()
    assert set(error) == {"error"} and message in error["error"]
    assert requests.get(committed_server.url.rstrip("/") + "/v2/health/ready", timeout=30).ok


def test_wrong_method_and_unknown_route_keep_the_v2_error_shape(committed_server: Any) -> None:
    base = committed_server.url.rstrip("/")
    wrong_method = requests.get(base + "/v2/models/mnist/infer", timeout=30)
    assert wrong_method.status_code == 405
    assert wrong_method.headers["Allow"] == "OPTIONS, POST"
    assert isinstance(wrong_method.json()["error"], str)
    unknown = requests.get(base + "/v2/models/mnist/trace/setting", timeout=30)  # not served
    assert unknown.status_code == 404
    assert "no Open Inference Protocol endpoint" in unknown.json()["error"]


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests_are_understood(
    client: InferenceServerClient,
    digits: tuple[np.ndarray, np.ndarray],
    reference: tuple[np.ndarray, np.ndarray],
    algorithm: str,
) -> None:
    result = client.infer(
        "mnist",
        [fp32_input(digits[0])],
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,  # the answer may come back uncompressed
    )
    np.testing.assert_array_equal(result.as_numpy("label"), reference[0])


def test_unload_and_load_through_tritonclient_with_the_admin_token(
    gunicorn_server: StartServer, tmp_path: Path
) -> None:
    """unload_model() always sends {"parameters": {"unload_dependents": false}}; load_model()
    sends {} (or a config, which this service cannot honour and says so)."""
    shutil.copytree(COMMITTED_MODELS, tmp_path / "models")
    token = "tritonclient-admin"
    admin = {"Authorization": f"Bearer {token}"}
    server = gunicorn_server(
        env={"MODEL_DIR": str(tmp_path / "models"), "ADMIN_TOKEN": token}, workers=1
    )
    triton = InferenceServerClient(url=server.url.split("://", 1)[-1], network_timeout=30.0)
    try:
        assert_client_error(lambda: triton.unload_model("mnist"), "401", "Bearer")
        assert triton.is_model_ready("mnist")
        config = json.dumps(triton.get_model_config("mnist"))  # its own config, sent back
        triton.unload_model("mnist", headers=admin)
        assert not triton.is_model_ready("mnist")
        assert not triton.is_server_ready()
        assert_client_error(
            lambda: triton.load_model("mnist", headers=admin, config=config),
            "422",
            "load parameter 'config' cannot be honoured",
        )
        assert not triton.is_model_ready("mnist")  # the refused load changed nothing
        triton.load_model("mnist", headers=admin)
        assert triton.is_model_ready("mnist")
        triton.unload_model("mnist", headers=admin, unload_dependents=True)  # none to unload
        assert not triton.is_model_ready("mnist")
        triton.load_model("mnist", headers=admin)
        assert triton.is_server_ready() and triton.is_model_ready("mnist")
    finally:
        triton.close()
