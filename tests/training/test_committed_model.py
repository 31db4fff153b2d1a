"""The committed model holds up against its own card: sha256, signature, accuracy, self-test."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pytest

from service.model.contract import INPUT_NAME, OUTPUT_LABEL, OUTPUT_PROBABILITIES, SELFTEST_FILE
from service.model.repository import ModelRepository, ModelVersion
from training.data import scale_pixels
from training.verify import run_onnx

from ..conftest import COMMITTED_MODELS

VERSIONS = ModelRepository(COMMITTED_MODELS).versions()


def test_the_repository_has_a_committed_model() -> None:
    assert VERSIONS, f"no complete version under {COMMITTED_MODELS}"


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.version}")
def test_card_matches_the_onnx_file(version: Any, mnist_data: Any) -> None:
    import onnxruntime as ort

    onnx_bytes, card = version.read_verified()  # sha256, size and version against the card
    assert card["sha256"] == hashlib.sha256(onnx_bytes).hexdigest()

    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == [card["input"]["name"]] == [INPUT_NAME]
    assert (
        [o.name for o in session.get_outputs()]
        == [o["name"] for o in card["outputs"]]
        == [
            OUTPUT_LABEL,
            OUTPUT_PROBABILITIES,
        ]
    )

    labels, probabilities = run_onnx(onnx_bytes, scale_pixels(mnist_data.test.images))
    accuracy = float(np.mean(labels == mnist_data.test.labels))
    # cards written by the pipeline carry the exact figure; older ones rounded to 4 places
    assert accuracy == pytest.approx(card["metrics"]["test_accuracy"], abs=5e-5)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    if "confusion_matrix" in card["metrics"]:
        confusion = np.zeros((10, 10), dtype=int)
        np.add.at(confusion, (mnist_data.test.labels, labels), 1)
        assert confusion.tolist() == card["metrics"]["confusion_matrix"]


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.version}")
def test_selftest_matches_its_card_entry_and_the_model(version: Any) -> None:
    onnx_bytes, card = version.read_verified()
    entry = card["selftest"]
    assert entry["file"] == SELFTEST_FILE
    data = (version.path / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"]
    selftest = json.loads(data)
    images = np.array(selftest["images"], dtype=np.uint8)
    assert images.shape == (entry["count"], 784)
    labels, probabilities = run_onnx(onnx_bytes, scale_pixels(images))
    assert labels.tolist() == selftest["expected_labels"]
    np.testing.assert_allclose(probabilities, selftest["expected_probabilities"], atol=1e-5)


@pytest.mark.parametrize("version", VERSIONS, ids=lambda v: f"v{v.version}")
def test_the_card_reads_as_the_typed_card_serving_uses(version: ModelVersion) -> None:
    from service.model.contract import ModelCard

    card = ModelCard.from_json(version.read_card())
    assert card.version == version.version and card.metrics.test_count == 10_000


def test_the_readme_quotes_the_committed_models_accuracy() -> None:
    from ..conftest import REPO_ROOT

    latest = VERSIONS[-1]
    accuracy = latest.read_card()["metrics"]["test_accuracy"]
    intro = (REPO_ROOT / "README.md").read_text().split("## The two commands")[0]
    assert f"models/mnist/{latest.version}" in intro
    assert f"**{accuracy * 100:.2f} %**" in intro


def test_the_committed_model_was_trained_with_the_default_recipe() -> None:
    """The README's reproduce command (training/recipes/default.toml) is what trained it."""
    import tomllib

    from ..conftest import REPO_ROOT

    recipe = tomllib.loads((REPO_ROOT / "training" / "recipes" / "default.toml").read_text())
    trained_with = VERSIONS[-1].read_card()["config"]
    differing = {
        key: (value, trained_with.get(key))
        for key, value in recipe.items()
        if trained_with.get(key) != value
    }
    assert not differing, f"recipe value vs the committed card's config: {differing}"
