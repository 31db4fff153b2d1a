"""MNIST test digits re-drawn as ordinary pictures (dark on light, bigger, off-centre, PNG and JPEG)
are classified within 1.5 points of the raw MNIST accuracy of the same committed model."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
import requests
from PIL import Image

from service.images import preprocess_image
from service.model.contract import INPUT_NAME, OUTPUT_LABEL, PIXEL_SCALE
from service.model.repository import ModelRepository
from tests.conftest import COMMITTED_MODELS
from training.data import load_mnist

N_DIGITS = 1500
ALLOWED_DROP = 0.015


@dataclass(frozen=True)
class Picture:
    """One MNIST test digit as a file a person might upload."""

    data: bytes
    content_type: str
    label: int


def _picture(digit: np.ndarray, label: int, index: int, rng: np.random.Generator) -> Picture:
    """The digit dark on a tinted paper, scaled 3-8x, placed anywhere on a larger canvas."""
    scale = int(rng.integers(3, 9))
    side = 28 * scale
    ink = Image.fromarray(digit.reshape(28, 28)).resize((side, side), Image.Resampling.BICUBIC)
    width = side + int(rng.integers(8, 240))
    height = side + int(rng.integers(8, 240))
    paper = tuple(int(value) for value in rng.integers(200, 256, 3))
    pen = tuple(int(value) for value in rng.integers(0, 60, 3))
    canvas = Image.new("RGB", (width, height), paper)
    position = (int(rng.integers(0, width - side + 1)), int(rng.integers(0, height - side + 1)))
    canvas.paste(pen, (*position, position[0] + side, position[1] + side), mask=ink)
    buffer = io.BytesIO()
    if index % 3 == 0:
        canvas.save(buffer, format="JPEG", quality=int(rng.integers(70, 96)))
        return Picture(buffer.getvalue(), "image/jpeg", label)
    canvas.save(buffer, format="PNG")
    return Picture(buffer.getvalue(), "image/png", label)


@pytest.fixture(scope="module")
def test_digits(mnist_data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first N_DIGITS MNIST test images (uint8 [N, 784]) and labels."""
    test = load_mnist(mnist_data_dir).test
    return test.images[:N_DIGITS], test.labels[:N_DIGITS]


@pytest.fixture(scope="module")
def pictures(test_digits: tuple[np.ndarray, np.ndarray]) -> list[Picture]:
    images, labels = test_digits
    rng = np.random.default_rng(20240601)
    return [
        _picture(image, int(label), i, rng)
        for i, (image, label) in enumerate(zip(images, labels, strict=True))
    ]


@pytest.fixture(scope="module")
def session() -> ort.InferenceSession:
    """The committed model (the version the service would serve) in onnxruntime."""
    latest = ModelRepository(COMMITTED_MODELS).latest()
    assert latest is not None, "no committed model under models/"
    model_bytes, _card = latest.read_verified()
    return ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])


def _labels(session: ort.InferenceSession, inputs: np.ndarray) -> np.ndarray:
    return np.asarray(session.run([OUTPUT_LABEL], {INPUT_NAME: inputs.astype(np.float32)})[0])


def test_pictures_are_classified_nearly_as_well_as_raw_mnist(
    session: ort.InferenceSession,
    test_digits: tuple[np.ndarray, np.ndarray],
    pictures: list[Picture],
    record_property: Any,
) -> None:
    images, labels = test_digits
    raw_accuracy = float((_labels(session, images * PIXEL_SCALE) == labels).mean())
    fields = np.stack([preprocess_image(picture.data) for picture in pictures])
    picture_accuracy = float((_labels(session, fields) == labels).mean())
    jpeg = np.array([picture.content_type == "image/jpeg" for picture in pictures])
    jpeg_accuracy = float((_labels(session, fields[jpeg]) == labels[jpeg]).mean())
    record_property("raw_accuracy", raw_accuracy)
    record_property("picture_accuracy", picture_accuracy)
    print(
        f"\n{len(pictures)} MNIST test digits: raw {raw_accuracy:.4f}, as pictures "
        f"{picture_accuracy:.4f} (JPEG only {jpeg_accuracy:.4f}, n={int(jpeg.sum())})"
    )
    assert picture_accuracy >= raw_accuracy - ALLOWED_DROP
    assert jpeg_accuracy >= raw_accuracy - 2 * ALLOWED_DROP  # a smaller sample, a wider margin


def test_pictures_uploaded_over_http_get_the_in_process_answer(
    committed_server: Any, session: ort.InferenceSession, pictures: list[Picture]
) -> None:
    sample = pictures[:24]
    expected = _labels(session, np.stack([preprocess_image(p.data) for p in sample]))
    for picture, digit in zip(sample[:12], expected[:12], strict=True):
        response = requests.post(
            f"{committed_server.url}/predict",
            data=picture.data,
            headers={"Content-Type": picture.content_type},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        assert response.json()["predictions"][0]["digit"] == int(digit)
    # the rest as one multipart batch, answered in order
    files = [
        ("image", (f"digit{i}.png", p.data, p.content_type)) for i, p in enumerate(sample[12:])
    ]
    response = requests.post(f"{committed_server.url}/predict", files=files, timeout=30)
    assert response.status_code == 200, response.text
    digits = [prediction["digit"] for prediction in response.json()["predictions"]]
    assert digits == [int(digit) for digit in expected[12:]]
