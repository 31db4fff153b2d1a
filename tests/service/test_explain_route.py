"""POST /v2/models/mnist/explain and GET .../explain/weights on the real app: the same inputs as
/predict, the exact numbers of service.model.explain, the documented schemas, and 4xx/501 errors."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from PIL import Image

from service.app import create_app
from service.config import ServiceConfig
from service.model.explain import explain, read_mlp
from tests.conftest import COMMITTED_MODELS
from tests.service.conftest import committed_parts, publish_copy, schema_validator, set_state

ROUTE = "/v2/models/mnist/explain"
ONNX_BYTES, CARD, SELFTEST = committed_parts()
#: the committed model's hidden layer sizes, as its card records them
HIDDEN: list[int] = CARD["config"]["hidden_layers"]
DIGITS = np.asarray(SELFTEST["images"], dtype=np.uint8)


@pytest.fixture(scope="module")
def app() -> Any:
    return create_app(ServiceConfig(model_dir=COMMITTED_MODELS))


@pytest.fixture
def client(app: Any) -> Any:
    return app.test_client()


@pytest.fixture(scope="module")
def document(app: Any) -> dict[str, Any]:
    document: dict[str, Any] = app.test_client().get("/openapi.json").get_json()
    return document


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(255 - pixels.reshape(28, 28)).resize((84, 84)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_json_pixels_are_explained_exactly(client: Any, document: Any) -> None:
    response = client.post(ROUTE, json={"images": DIGITS.tolist()})
    assert response.status_code == 200, response.get_data(as_text=True)
    body = response.get_json()
    schema_validator(document, "ExplainResponse").validate(body)
    expected = explain(read_mlp(ONNX_BYTES), DIGITS.astype(np.float32) / np.float32(255))
    answers = body["explanations"]
    assert [a["digit"] for a in answers] == SELFTEST["expected_labels"]
    assert [a["runner_up"] for a in answers] == expected.runners_up.tolist()
    # JSON carries float64 exactly: the numbers are the module's, to the last bit
    np.testing.assert_array_equal([a["saliency"] for a in answers], expected.saliency)
    np.testing.assert_array_equal([a["hidden"][0] for a in answers], expected.hidden[0])
    np.testing.assert_allclose(
        [a["probabilities"] for a in answers], SELFTEST["expected_probabilities"], atol=1e-4
    )
    assert body["model"] == {
        "name": "mnist",
        "version": 1,
        "activation": "relu",
        "hidden_layers": HIDDEN,
    }
    assert response.headers["X-Request-ID"] == body["request_id"]


def test_the_same_inputs_and_options_as_predict(client: Any, document: Any) -> None:
    png = _png(DIGITS[0])
    raw = client.post(f"{ROUTE}?top_k=2&return_input=true", data=png, content_type="image/png")
    assert raw.status_code == 200
    answer = raw.get_json()["explanations"][0]
    predicted = client.post("/predict", data=png, content_type="image/png").get_json()
    assert answer["digit"] == predicted["predictions"][0]["digit"]
    assert [entry["digit"] for entry in answer["top_k"]] == [answer["digit"], answer["runner_up"]]
    assert answer["input_png"]
    multipart = client.post(
        ROUTE,
        data={"image": [(io.BytesIO(png), "a.png"), (io.BytesIO(_png(DIGITS[1])), "b.png")]},
        content_type="multipart/form-data",
    )
    assert multipart.status_code == 200 and len(multipart.get_json()["explanations"]) == 2
    encoded = base64.b64encode(png).decode()
    inline = client.post(ROUTE, json={"images": [encoded]})
    assert inline.get_json()["explanations"][0]["saliency"] == answer["saliency"]


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "words"),
    [
        (ROUTE, {"data": b"{", "content_type": "application/json"}, 400, "malformed JSON"),
        (ROUTE, {"json": {"images": [[1, 2, 3]]}}, 422, "has 3 values"),
        (ROUTE, {"json": {"images": []}}, 422, "empty"),
        (ROUTE, {"data": b"x", "content_type": "text/plain"}, 415, "text/plain"),
        (f"{ROUTE}?top_k=11", {"json": {"images": [[0] * 784]}}, 400, "top_k"),
        ("/v2/models/other/explain", {"json": {"images": [[0] * 784]}}, 404, "other"),
    ],
)
def test_bad_requests_get_a_4xx_that_says_why(
    client: Any, document: Any, path: Any, kwargs: Any, status: Any, words: Any
) -> None:
    response = client.post(path, **kwargs)
    assert response.status_code == status
    body = response.get_json()
    # under /v2 errors have the Open Inference Protocol's shape
    assert words in body["error"], body
    schema_validator(document, "V2Error").validate(body)


def test_a_batch_over_the_limit_is_refused(tmp_path: Path) -> None:
    app = create_app(ServiceConfig(model_dir=COMMITTED_MODELS, max_batch=2))
    response = app.test_client().post(ROUTE, json={"images": DIGITS[:3].tolist()})
    assert response.status_code == 413


def test_the_first_layer_weights_as_images(client: Any, document: Any) -> None:
    response = client.get(f"{ROUTE}/weights")
    assert response.status_code == 200
    body = response.get_json()
    schema_validator(document, "FirstLayer").validate(body)
    weights = read_mlp(ONNX_BYTES).layers[0].weights.T  # [units, 784]
    assert (body["units"], body["pixels"]) == weights.shape == (HIDDEN[0], 784)
    quantized = np.frombuffer(base64.b64decode(body["weights"]), dtype=np.int8)
    quantized = quantized.reshape(HIDDEN[0], 784)
    scales = np.asarray(body["scales"])
    # each weight within half a step of its unit's scale; the largest one exactly +-127, but in
    # a unit whose weights are all zero (L2 decay leaves a few dead units): zeros at scale 1
    assert np.all(np.abs(quantized * scales[:, None] - weights) <= scales[:, None] / 2 + 1e-12)
    dead = np.abs(weights).max(axis=1) == 0
    assert np.all(np.abs(quantized[~dead]).max(axis=1) == 127)
    assert np.all(quantized[dead] == 0) and np.all(scales[dead] == 1.0)
    assert client.get("/v2/models/other/explain/weights").status_code == 404


def test_a_model_that_is_not_an_mlp_answers_501_and_still_predicts(tmp_path: Path) -> None:
    # LeakyRelu with alpha 0 computes exactly Relu (the self-test passes), but it is not an
    # operator an MLPClassifier export contains
    model = onnx.load_from_string(ONNX_BYTES)
    for node in model.graph.node:
        if node.op_type == "Relu":
            node.op_type = "LeakyRelu"
            node.attribute.append(onnx.helper.make_attribute("alpha", 0.0))
    publish_copy(tmp_path, onnx_bytes=model.SerializeToString())
    client = create_app(ServiceConfig(model_dir=tmp_path)).test_client()
    response = client.post(ROUTE, json={"images": DIGITS[:1].tolist()})
    assert response.status_code == 501
    assert "LeakyRelu" in response.get_json()["error"]
    assert client.get(f"{ROUTE}/weights").status_code == 501
    predicted = client.post("/predict", json={"images": DIGITS[:1].tolist()})
    assert predicted.status_code == 200
    assert json.loads(predicted.data)["predictions"][0]["digit"] == SELFTEST["expected_labels"][0]


def test_explanations_follow_a_hot_reload(tmp_path: Path) -> None:
    from service.app import PREDICTOR_KEY

    publish_copy(tmp_path)
    app = create_app(ServiceConfig(model_dir=tmp_path))
    client = app.test_client()
    body = {"images": DIGITS[:1].tolist()}
    assert client.post(ROUTE, json=body).get_json()["model"]["version"] == 1
    publish_copy(tmp_path)
    set_state(tmp_path, stable=2, history=(1,))  # promoted: a published version is a candidate
    swapped = app.extensions[PREDICTOR_KEY].check_for_update()
    assert swapped is not None and swapped.version == 2
    answer = client.post(ROUTE, json=body).get_json()
    assert answer["model"]["version"] == 2
    assert client.get(f"{ROUTE}/weights").get_json()["model"]["version"] == 2
