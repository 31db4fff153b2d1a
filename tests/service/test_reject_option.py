"""The reject option and the request checks of /predict: accepted / reject_reason in every answer,
the same decision as V2 outputs, the subspace distance as training computed it, blank and 0..1
JSON images refused, gzip and deflate bodies inflated, images sniffed from octet-stream."""

from __future__ import annotations

import gzip
import io
import json
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask.testing import FlaskClient
from PIL import Image

from service.app import create_app
from service.config import ServiceConfig
from service.model.contract import parse_card
from service.model.predictor import Predictor
from service.model.reject import LOW_CONFIDENCE, NOT_A_DIGIT, RejectOption, RejectSectionError
from service.model.reject import ink_aspect as serving_aspect
from service.model.validation import HiddenLayerOutput
from training.calibrate import Subspaces, discriminator_features, ink_aspect, with_temperature
from training.outliers import non_digit_fields

MODELS = Path(__file__).resolve().parents[2] / "models"
VERSION = MODELS / "mnist" / "1"


def _seven() -> np.ndarray:
    rows = np.zeros((28, 28), dtype=np.uint8)
    rows[6:8, 7:21] = 255
    for r in range(8, 23):
        c = 20 - (r - 8) // 2
        rows[r, c - 1 : c + 1] = 255
    return rows


@pytest.fixture(scope="module")
def client() -> FlaskClient:
    app = create_app(ServiceConfig(model_dir=MODELS))
    return app.test_client()


@pytest.fixture(scope="module")
def option() -> RejectOption:
    card = parse_card((VERSION / "card.json").read_text())
    return RejectOption.from_card(card, VERSION)


def test_serving_computes_the_distance_training_calibrated(option: RejectOption) -> None:
    with np.load(VERSION / "novelty.npz") as archive:
        subspaces = Subspaces(archive["means"], archive["components"])
    images = np.random.default_rng(0).random((20, 784), dtype=np.float32)
    images[:10] *= images[:10] > 0.8  # sparse, digit-like ink
    predicted = np.arange(20) % 10
    served = option.novelty(images, predicted)
    assert served is not None
    np.testing.assert_allclose(served, subspaces.scores(images, predicted), rtol=1e-3)
    np.testing.assert_allclose(ink_aspect(images), serving_aspect(images))


def test_serving_computes_the_discriminator_training_fitted(option: RejectOption) -> None:
    assert option.discriminator_threshold is not None
    with np.load(VERSION / "novelty.npz") as archive:
        hidden = (archive["hidden_weights"], archive["hidden_biases"])
        weights, bias = archive["discriminator_weights"], float(archive["discriminator_bias"])
    images = np.random.default_rng(4).random((12, 784), dtype=np.float32)
    images[:6] *= images[:6] > 0.8
    probabilities = np.random.default_rng(5).dirichlet(np.ones(10) * 0.1, 12).astype(np.float32)
    distances = option.novelty(images, probabilities.argmax(axis=1))
    assert distances is not None
    served = option.discriminator_scores(images, probabilities, distances)
    assert served is not None
    features = discriminator_features(images, probabilities, distances.astype(np.float64), hidden)
    np.testing.assert_allclose(served, features @ weights + bias, rtol=1e-4, atol=1e-3)


def test_printed_letters_are_not_a_digit_and_digits_are(client: FlaskClient) -> None:
    letters = np.round(non_digit_fields(10, seed=7) * 255).tolist()
    answer = client.post("/predict", json={"images": letters}).get_json()
    reasons = [p["reject_reason"] for p in answer["predictions"]]
    assert reasons.count(NOT_A_DIGIT) >= 6, reasons


def _card_with_subspace(subspace: str | None) -> Any:
    document = json.loads((VERSION / "card.json").read_text())
    if subspace is None:
        del document["reject"]["novelty"]["subspace"]  # a card written before the field
    else:
        document["reject"]["novelty"]["subspace"] = subspace
    return parse_card(json.dumps(document))


def test_an_older_card_measures_to_the_nearest_subspace() -> None:
    older = RejectOption.from_card(_card_with_subspace(None), VERSION)
    with np.load(VERSION / "novelty.npz") as archive:
        subspaces = Subspaces(archive["means"], archive["components"])
    images = np.random.default_rng(3).random((8, 784), dtype=np.float32)
    served = older.novelty(images, np.zeros(8, dtype=np.int64))
    assert served is not None
    np.testing.assert_allclose(served, subspaces.scores(images), rtol=1e-3)
    to_zero = subspaces.scores(images, np.zeros(8, dtype=np.int64))
    assert (served <= to_zero + 1e-3).all() and (served < to_zero - 1e-3).any()


def test_an_unknown_subspace_rule_is_refused() -> None:
    with pytest.raises(RejectSectionError, match=r"novelty\.subspace"):
        RejectOption.from_card(_card_with_subspace("farthest"), VERSION)


def test_temperature_is_the_same_in_training_and_serving(option: RejectOption) -> None:
    probabilities = np.random.default_rng(1).dirichlet(np.ones(10), 5).astype(np.float32)
    expected = with_temperature(probabilities, option.temperature)
    np.testing.assert_allclose(option.calibrated(probabilities), expected, rtol=1e-9)


def test_a_clear_digit_is_accepted_and_noise_is_not(client: FlaskClient) -> None:
    noise = (np.random.default_rng(2).random(784) * 255).round().tolist()
    answer = client.post("/predict", json={"images": [_seven().ravel().tolist(), noise]})
    assert answer.status_code == 200
    seven, static = answer.get_json()["predictions"]
    assert seven["digit"] == 7 and seven["accepted"] is True and seven["reject_reason"] is None
    assert static["accepted"] is False and static["reject_reason"] in (NOT_A_DIGIT, LOW_CONFIDENCE)


def test_min_confidence_overrides_the_card() -> None:
    strict = create_app(ServiceConfig(model_dir=MODELS, min_confidence=1.0)).test_client()
    answer = strict.post("/predict", json={"images": [_seven().ravel().tolist()]}).get_json()
    assert answer["predictions"][0]["reject_reason"] == LOW_CONFIDENCE


def test_v2_answers_the_decision_as_extra_outputs(client: FlaskClient) -> None:
    data = np.concatenate([_seven().ravel(), np.zeros(783, np.uint8), [255]]).tolist()
    body = {
        "inputs": [{"name": "input", "shape": [2, 784], "datatype": "UINT8", "data": data}],
        "outputs": [{"name": "label"}, {"name": "accepted"}, {"name": "reject_reason"}],
    }
    outputs = client.post("/v2/models/mnist/infer", json=body).get_json()["outputs"]
    by_name = {output["name"]: output for output in outputs}
    assert by_name["accepted"] == {"name": "accepted", "datatype": "BOOL", "shape": [2],
                                   "data": [True, False]}  # fmt: skip
    assert by_name["reject_reason"]["data"][0] == ""
    default = client.post("/v2/models/mnist/infer", json={"inputs": body["inputs"]}).get_json()
    assert [output["name"] for output in default["outputs"]] == ["label", "probabilities"]


@pytest.mark.parametrize("value", [0, 255, 128])
def test_blank_json_images_show_no_digit(client: FlaskClient, value: int) -> None:
    answer = client.post("/predict", json={"images": [[value] * 784]})
    assert answer.status_code == 422
    error = answer.get_json()["error"]
    assert error["code"] == "invalid_input" and "shows no digit" in error["message"]


def test_json_pixels_on_the_0_1_scale_are_refused_with_the_fix(client: FlaskClient) -> None:
    scaled = (_seven().ravel() / 255.0).round(4).tolist()
    answer = client.post("/predict", json={"images": [[0] * 783 + [255], scaled]})
    assert answer.status_code == 422
    message = answer.get_json()["error"]["message"]
    assert message.startswith("image 1 has every pixel between 0 and 1")
    assert "0..255" in message and "multiply by 255" in message


@pytest.mark.parametrize(
    "coding, pack",
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("GZIP", gzip.compress)],
)
def test_compressed_bodies_are_inflated(client: FlaskClient, coding: str, pack: Any) -> None:
    body = json.dumps({"images": [_seven().ravel().tolist()]}).encode()
    answer = client.post(
        "/predict",
        data=pack(body),
        headers={"Content-Type": "application/json", "Content-Encoding": coding},
    )
    assert answer.status_code == 200 and answer.get_json()["predictions"][0]["digit"] == 7


def test_other_codings_are_named_in_a_415(client: FlaskClient) -> None:
    headers = {"Content-Type": "application/json", "Content-Encoding": "br"}
    answer = client.post("/predict", data=b"xx", headers=headers)
    assert answer.status_code == 415 and "'br'" in answer.get_json()["error"]["message"]


def test_a_gzip_bomb_costs_nothing() -> None:
    small = create_app(ServiceConfig(model_dir=MODELS, max_body_bytes=60_000)).test_client()
    bomb = gzip.compress(b" " * 50_000_000)
    answer = small.post(
        "/predict",
        data=bomb,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert answer.status_code == 413


def _png_seven() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(255 - _seven()).resize((140, 140)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["image/jpg", "application/octet-stream", "image/png"])
def test_image_types_and_sniffed_octet_stream(client: FlaskClient, kind: str) -> None:
    answer = client.post("/predict", data=_png_seven(), headers={"Content-Type": kind})
    assert answer.status_code == 200 and answer.get_json()["predictions"][0]["digit"] == 7


def test_octet_stream_that_is_no_image_is_a_415(client: FlaskClient) -> None:
    answer = client.post(
        "/predict", data=b'{"images": []}', headers={"Content-Type": "application/octet-stream"}
    )
    assert answer.status_code == 415
    assert "only when the bytes are an image" in answer.get_json()["error"]["message"]


def test_the_session_gives_the_hidden_layer_and_the_same_decisions(option: RejectOption) -> None:
    """The discriminator reads the hidden layer from the model's own run (an extra output of the
    in-memory session; model.onnx is unchanged): the same decisions as computing it again, one
    image at a time (the predicted digit's subspace alone) and as one batch."""
    predictor = Predictor(ServiceConfig(model_dir=MODELS))
    predictor.load()
    assert predictor.serving.stable is not None
    assert predictor.serving.stable.hidden_output is not None
    digits = np.stack([_seven()] * 2).reshape(2, 784).astype(np.float32) / 255
    images = np.concatenate(
        [
            digits,
            non_digit_fields(10, seed=11).reshape(-1, 784),
            np.random.default_rng(6).random((4, 784), dtype=np.float32),
            np.zeros((1, 784), dtype=np.float32),
        ]
    ).astype(np.float32)
    prediction = predictor.predict(images)
    with np.load(VERSION / "novelty.npz") as archive:
        weights, biases = archive["hidden_weights"], archive["hidden_biases"]
    assert prediction.hidden is not None and prediction.hidden.shape == (len(images), len(biases))
    np.testing.assert_allclose(
        prediction.hidden, np.maximum(images @ weights + biases, 0.0), atol=1e-4
    )
    served = prediction.reject.decide(images, prediction.probabilities, prediction.hidden)
    recomputed = prediction.reject.decide(images, prediction.probabilities)
    assert served.reasons == recomputed.reasons
    assert NOT_A_DIGIT in served.reasons and None in served.reasons
    for index in range(len(images)):
        one = predictor.predict(images[index : index + 1])
        alone = one.reject.decide(images[index : index + 1], one.probabilities, one.hidden)
        assert alone.reasons == [served.reasons[index]]


def test_one_image_is_measured_to_its_digit_as_in_a_batch(option: RejectOption) -> None:
    images = np.random.default_rng(8).random((30, 784), dtype=np.float32)
    images[:20] *= images[:20] > 0.7
    predicted = np.random.default_rng(9).integers(0, 10, 30)
    batch = option.novelty(images, predicted)
    assert batch is not None
    alone = [option.novelty(images[i : i + 1], predicted[i : i + 1]) for i in range(30)]
    assert all(one is not None for one in alone)
    np.testing.assert_allclose(
        np.concatenate([one for one in alone if one is not None]), batch, rtol=1e-5, atol=1e-4
    )


def test_a_model_whose_first_layer_differs_is_not_read_for_the_discriminator(
    option: RejectOption,
) -> None:
    found = HiddenLayerOutput.of((VERSION / "model.onnx").read_bytes())
    assert found is not None and found.name in {o.name for o in _graph_outputs(found)}
    assert option.has_hidden_layer(found.weights, found.biases)
    assert not option.has_hidden_layer(found.weights * np.float32(1.5), found.biases)
    assert HiddenLayerOutput.of(b"not a model") is None


def _graph_outputs(found: HiddenLayerOutput) -> list[Any]:
    import onnx

    return list(onnx.load_from_string(found.onnx_bytes).graph.output)


def test_the_ink_box_of_blank_thin_and_edge_images() -> None:
    images = np.zeros((4, 28, 28), dtype=np.float32)
    images[1, 5, 3:20] = 1.0  # a dash: 17 wide, 1 high
    images[2, :, 27] = 0.5  # the last column, full height
    images[3, 0, 0] = images[3, 27, 27] = 0.2  # two corners
    flat = images.reshape(4, 784)
    np.testing.assert_array_equal(serving_aspect(flat), [0.0, 17.0, 1 / 28, 1.0])
    np.testing.assert_array_equal(serving_aspect(flat), ink_aspect(flat))
