"""A small fixed slice of the picture benchmark (bench/picture_bench.py): MNIST test digits drawn
under every condition of bench/pictures.py at its hardest strength, read in process by the
committed model; and printed letters and symbols, scribbles, noise and textures, rejected."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from service.errors import InvalidImage
from service.images import preprocess_image
from service.model.contract import INPUT_NAME, OUTPUT_PROBABILITIES, parse_card
from service.model.reject import RejectOption

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
import pictures  # noqa: E402

VERSION = ROOT / "models" / "mnist" / "1"
DIGITS = 20


@pytest.fixture(scope="module")
def model() -> tuple[ort.InferenceSession, RejectOption]:
    session = ort.InferenceSession(
        (VERSION / "model.onnx").read_bytes(), providers=["CPUExecutionProvider"]
    )
    card = parse_card((VERSION / "card.json").read_text())
    return session, RejectOption.from_card(card, VERSION)


@pytest.fixture(scope="module")
def digits(mnist_data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    from training.data import load_mnist

    test = load_mnist(mnist_data_dir).test
    return test.images[:DIGITS], test.labels[:DIGITS]


@pytest.mark.parametrize("condition", list(pictures.CONDITIONS))
def test_pictures_of_digits_are_read(
    model: tuple[ort.InferenceSession, RejectOption],
    digits: tuple[np.ndarray, np.ndarray],
    condition: str,
) -> None:
    session, _ = model
    images, labels = digits
    rng = np.random.default_rng(7)
    fields = np.stack(
        [
            preprocess_image(pictures.encode(pictures.render(d, condition, 2, rng), "JPEG"))
            if condition not in pictures.ALPHA_CONDITIONS
            else preprocess_image(pictures.encode(pictures.render(d, condition, 2, rng), "PNG"))
            for d in images
        ]
    )
    [probabilities] = session.run([OUTPUT_PROBABILITIES], {INPUT_NAME: fields})
    right = int((probabilities.argmax(axis=1) == labels).sum())
    assert right >= DIGITS - 2, f"{condition}: {right} of {DIGITS} read right"


def test_dark_squared_paper_keeps_the_strokes_whole(
    model: tuple[ort.InferenceSession, RejectOption], digits: tuple[np.ndarray, np.ndarray]
) -> None:
    # strength 3: dark 2 px rules every 22-36 px; the digit's strokes cross several of them, and
    # the ink under a removed rule is given back where they do (15 of 20 before it was)
    session, _ = model
    images, labels = digits
    rng = np.random.default_rng(7)
    fields = np.stack(
        [
            preprocess_image(pictures.encode(pictures.render(d, "grid_paper", 3, rng), "JPEG"))
            for d in images
        ]
    )
    [probabilities] = session.run([OUTPUT_PROBABILITIES], {INPUT_NAME: fields})
    right = int((probabilities.argmax(axis=1) == labels).sum())
    assert right >= DIGITS - 2, f"squared paper, strength 3: {right} of {DIGITS} read right"


def test_most_non_digits_are_rejected(model: tuple[ort.InferenceSession, RejectOption]) -> None:
    session, reject = model
    rejected = 0
    made = pictures.non_digits(70, seed=3)
    for _, image in made:
        try:
            field = preprocess_image(pictures.encode(image, "PNG"))[np.newaxis]
        except InvalidImage:
            rejected += 1
            continue
        [probabilities] = session.run([OUTPUT_PROBABILITIES], {INPUT_NAME: field})
        rejected += not reject.decide(field, probabilities).accepted[0]
    # the committed model's figure on this slice; bench/picture_bench.py measures 560 and more
    assert rejected >= 0.6 * len(made), json.dumps({"rejected": rejected, "of": len(made)})
