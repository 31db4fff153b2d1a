"""The reject option's fast paths decide exactly as the straightforward computation: the same
accepted / reason for every image and the same float64 confidence bit for bit, one image at a
time and in batches, on MNIST test digits, blends of two digits, generated non-digits, noise,
dashes and blanks, through the committed model's own session (its hidden layer included)."""

from __future__ import annotations

import dataclasses
import gzip
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.config import ServiceConfig
from service.model.contract import parse_card
from service.model.predictor import Predictor
from service.model.reject import LOW_CONFIDENCE, NOT_A_DIGIT, RejectOption, ink_aspect
from training.outliers import non_digit_fields

MODELS = Path(__file__).resolve().parents[2] / "models"
VERSION = MODELS / "mnist" / "1"
DIGITS = 400


# -- the reference: the reject option as plainly vectorised numpy, read from the files -------


@dataclasses.dataclass(frozen=True)
class Reference:
    """The card's reject section and novelty.npz, applied to a whole batch at once."""

    temperature: float
    min_confidence: float
    novelty_threshold: float
    max_aspect: float
    discriminator_threshold: float
    #: float32 [10, k + 1, 784]: per class its components, then its mean
    rows: np.ndarray
    offsets: np.ndarray  # float32 [10, k]
    mean_norms: np.ndarray  # float32 [10]
    weights: np.ndarray  # float32 [784, H]
    biases: np.ndarray  # float32 [H]
    coefficients: np.ndarray  # float32 [H + 2]
    bias: float

    @classmethod
    def committed(cls) -> Reference:
        section = parse_card((VERSION / "card.json").read_text()).reject
        assert section is not None and section.novelty.subspace == "predicted"
        novelty = section.novelty
        assert novelty.max_aspect is not None and novelty.discriminator_threshold is not None
        with np.load(VERSION / novelty.file) as archive:
            means = archive["means"].astype(np.float32)
            components = archive["components"].astype(np.float32)
            weights = np.ascontiguousarray(archive["hidden_weights"], dtype=np.float32)
            biases = archive["hidden_biases"].astype(np.float32)
            coefficients = archive["discriminator_weights"].astype(np.float32)
            bias = float(archive["discriminator_bias"])
        return cls(
            temperature=section.temperature,
            min_confidence=section.min_confidence,
            novelty_threshold=novelty.threshold,
            max_aspect=novelty.max_aspect,
            discriminator_threshold=novelty.discriminator_threshold,
            rows=np.ascontiguousarray(
                np.concatenate([components, means[:, None, :]], axis=1), dtype=np.float32
            ),
            offsets=np.einsum("ckp,cp->ck", components, means).astype(np.float32),
            mean_norms=np.einsum("cp,cp->c", means, means).astype(np.float32),
            weights=weights,
            biases=biases,
            coefficients=coefficients,
            bias=bias,
        )

    def confidence(self, probabilities: np.ndarray) -> np.ndarray:
        """float64 [N]: the top of the temperature-scaled probabilities."""
        logs = np.log(np.clip(probabilities.astype(np.float64), 1e-30, 1.0)) / self.temperature
        logs -= logs.max(axis=1, keepdims=True)
        scaled = np.exp(logs)
        return np.asarray((scaled / scaled.sum(axis=1, keepdims=True)).max(axis=1))

    def distances(self, images: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """float32 [N]: to the predicted digit's subspace, the images of one digit together."""
        count = self.offsets.shape[1]
        if len(images) == 1:
            groups: list[tuple[int, Any]] = [(int(predicted[0]), slice(None))]
        else:
            groups = [(int(d), np.flatnonzero(predicted == d)) for d in np.unique(predicted)]
        distances = np.empty(len(images), dtype=np.float32)
        for digit, rows in groups:
            block = images[rows]
            products = block @ self.rows[digit].T
            projected = products[:, :count] - self.offsets[digit]
            distances[rows] = (
                np.einsum("ij,ij->i", block, block)
                - 2.0 * products[:, count]
                + self.mean_norms[digit]
                - (projected**2).sum(axis=1)
            )
        return np.maximum(distances, np.float32(0.0))

    def aspect(self, images: np.ndarray) -> np.ndarray:
        """float64 [N]: width / height of the ink's box (pixels over 0.1), 0 when blank."""
        ink = np.greater(images.reshape(-1, 28, 28), 0.1)
        rows, cols = np.any(ink, axis=2), np.any(ink, axis=1)
        top, left = rows.argmax(axis=1), cols.argmax(axis=1)
        height = 28 - rows[:, ::-1].argmax(axis=1) - top
        width = 28 - cols[:, ::-1].argmax(axis=1) - left
        return np.where(rows.any(axis=1), width / height, 0.0)

    def scores(
        self,
        images: np.ndarray,
        probabilities: np.ndarray,
        distances: np.ndarray,
        hidden: np.ndarray | None,
    ) -> np.ndarray:
        """float32 [N]: the discriminator's logistic score."""
        if hidden is None:
            hidden = np.maximum(images @ self.weights + self.biases, 0.0)
        logs = np.log(np.clip(np.sort(probabilities, axis=1)[:, -2:], 1e-30, 1.0))
        size = len(self.biases)
        return np.asarray(
            hidden @ self.coefficients[:size]
            + self.coefficients[size] * np.log(distances + 1e-3)
            + self.coefficients[size + 1] * (logs[:, 1] - logs[:, 0])
            + self.bias
        )

    def decide(
        self, images: np.ndarray, probabilities: np.ndarray, hidden: np.ndarray | None
    ) -> tuple[list[str | None], np.ndarray]:
        """The reasons (None: accepted) and the confidences."""
        confidence = self.confidence(probabilities)
        distances = self.distances(images, probabilities.argmax(axis=1))
        strange = (
            (distances > self.novelty_threshold)
            | (self.aspect(images) > self.max_aspect)
            | (self.scores(images, probabilities, distances, hidden) > self.discriminator_threshold)
        )
        low = confidence < self.min_confidence
        reasons = [
            NOT_A_DIGIT if s else (LOW_CONFIDENCE if lo else None)
            for s, lo in zip(strange.tolist(), low.tolist(), strict=True)
        ]
        return reasons, confidence


# -- the inputs -------------------------------------------------------------------------------


def _mnist_test_images(folder: Path, count: int) -> np.ndarray:
    with gzip.open(folder / "t10k-images-idx3-ubyte.gz", "rb") as handle:
        handle.read(16)
        pixels = np.frombuffer(handle.read(count * 784), dtype=np.uint8).reshape(count, 784)
    return pixels.astype(np.float32) / np.float32(255)


@pytest.fixture(scope="module")
def images(mnist_data_dir: Path) -> np.ndarray:
    """float32 [N, 784]: digits, blends of two (unsure), non-digits, noise, dashes, blanks."""
    digits = _mnist_test_images(mnist_data_dir, DIGITS)
    blends = (digits[:40] + digits[40:80]) / np.float32(2)
    rng = np.random.default_rng(15)
    noise = rng.random((10, 784), dtype=np.float32)
    noise[5:] *= noise[5:] > 0.9
    dashes = np.zeros((6, 28, 28), dtype=np.float32)
    for index in range(6):  # boxes from 3 x 14 wide to 3 tall x 1 (around max_aspect)
        dashes[index, 12 : 12 + 1 + index % 3, 7 : 7 + 14 // (index + 1)] = 1.0
    edge = np.zeros((2, 784), dtype=np.float32)
    edge[0, 0] = edge[0, 783] = 0.5  # two corners: the whole field is its box
    edge[1, 100] = np.float32(0.1)  # not over the ink threshold: blank
    return np.concatenate(
        [
            digits,
            blends,
            non_digit_fields(60, seed=15),
            noise,
            dashes.reshape(6, 784),
            edge,
            np.zeros((1, 784), dtype=np.float32),
        ]
    ).astype(np.float32)


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    served = Predictor(ServiceConfig(model_dir=MODELS))
    served.load()
    assert served.serving.stable is not None and served.serving.stable.hidden_output is not None
    return served


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference.committed()


# -- the checks -------------------------------------------------------------------------------


def test_a_batch_decides_as_the_reference(
    predictor: Predictor, reference: Reference, images: np.ndarray
) -> None:
    prediction = predictor.predict(images)
    probabilities, hidden = prediction.probabilities, prediction.hidden
    decision = prediction.reject.decide(images, probabilities, hidden)
    reasons, confidence = reference.decide(images, probabilities, hidden)
    assert decision.reasons == reasons
    assert decision.accepted == [reason is None for reason in reasons]
    assert decision.confidence.dtype == np.float64
    np.testing.assert_array_equal(decision.confidence, confidence)  # to the last bit
    # every outcome occurs: digits accepted, blends unsure, non-digits refused
    assert {None, LOW_CONFIDENCE, NOT_A_DIGIT} <= set(reasons)
    assert reasons[:DIGITS].count(None) > 0.95 * DIGITS
    # the pieces too, bit for bit
    option = prediction.reject
    predicted = probabilities.argmax(axis=1)
    distances = option.novelty(images, predicted)
    assert distances is not None
    np.testing.assert_array_equal(distances, reference.distances(images, predicted))
    np.testing.assert_array_equal(ink_aspect(images), reference.aspect(images))
    np.testing.assert_array_equal(
        option.discriminator_scores(images, probabilities, distances, hidden),
        reference.scores(images, probabilities, distances, hidden),
    )


def test_each_image_alone_decides_as_the_reference(
    predictor: Predictor, reference: Reference, images: np.ndarray
) -> None:
    """One image per request (the common case) takes its own path: the same numbers."""
    seen = set()
    for index in range(len(images)):
        one = images[index : index + 1]
        prediction = predictor.predict(one)
        decision = prediction.reject.decide(one, prediction.probabilities, prediction.hidden)
        reasons, confidence = reference.decide(one, prediction.probabilities, prediction.hidden)
        assert decision.reasons == reasons, index
        assert decision.accepted == [reasons[0] is None]
        assert decision.confidence.dtype == np.float64
        assert decision.confidence.tobytes() == confidence.tobytes(), index
        distance = prediction.reject.novelty(one, prediction.probabilities.argmax(axis=1))
        assert distance is not None
        expected = reference.distances(one, prediction.probabilities.argmax(axis=1))
        assert distance.tobytes() == expected.tobytes(), index
        assert ink_aspect(one).tobytes() == reference.aspect(one).tobytes(), index
        seen.add(reasons[0])
    assert seen == {None, LOW_CONFIDENCE, NOT_A_DIGIT}


@pytest.mark.parametrize("size", [2, 3, 7, 33])
def test_small_batches_and_without_the_hidden_layer(
    predictor: Predictor, reference: Reference, images: np.ndarray, size: int
) -> None:
    """Batches where a digit is predicted once (a one-row block), and the hidden layer
    computed from the subspaces file's copy of the first layer when the session gave none."""
    rng = np.random.default_rng(size)
    for _ in range(5):
        batch = images[rng.choice(len(images), size, replace=False)]
        prediction = predictor.predict(batch)
        for hidden in (prediction.hidden, None):
            decision = prediction.reject.decide(batch, prediction.probabilities, hidden)
            reasons, confidence = reference.decide(batch, prediction.probabilities, hidden)
            assert decision.reasons == reasons
            np.testing.assert_array_equal(decision.confidence, confidence)
    alone = images[7:8]
    prediction = predictor.predict(alone)
    decision = prediction.reject.decide(alone, prediction.probabilities)  # no hidden layer
    reasons, confidence = reference.decide(alone, prediction.probabilities, None)
    assert decision.reasons == reasons
    assert decision.confidence.tobytes() == confidence.tobytes()


def test_the_confidence_is_the_top_calibrated_probability_bit_for_bit(
    predictor: Predictor, images: np.ndarray
) -> None:
    option = predictor.predict(images[:1]).reject
    probabilities = predictor.predict(images).probabilities
    for temperature in (option.temperature, 1.0, 0.31, 4.0):
        scaled = dataclasses.replace(option, temperature=temperature)
        np.testing.assert_array_equal(
            scaled.confidence(probabilities), scaled.calibrated(probabilities).max(axis=1)
        )


def test_the_option_holds_only_the_subspace_rows_its_rule_reads() -> None:
    """The predicted digit's rule reads [10, k + 1, 784] per-class rows; the nearest-subspace
    rule, of older cards, the same rows as one [10 (k + 1), 784] matrix: never both."""
    card = parse_card((VERSION / "card.json").read_text())
    predicted = RejectOption.from_card(card, VERSION)
    assert predicted._class_weights is not None and predicted._weights is None
    assert card.reject is not None
    nearest_section = dataclasses.replace(
        card.reject, novelty=dataclasses.replace(card.reject.novelty, subspace="nearest")
    )
    nearest = RejectOption.from_card(dataclasses.replace(card, reject=nearest_section), VERSION)
    assert nearest._weights is not None and nearest._class_weights is None
    images = np.random.default_rng(5).random((6, 784), dtype=np.float32)
    distances = nearest.novelty(images)
    assert distances is not None and distances.shape == (6,)


def test_float64_inputs_decide_as_the_reference(
    predictor: Predictor, reference: Reference, images: np.ndarray
) -> None:
    """float64 images, probabilities or hidden layer (no session gives them, a caller might)
    are read as they are, one image or many: float64 probabilities are not rounded to float32."""
    for rows in (slice(7, 8), slice(400, 401), slice(480, 481), slice(0, 50)):
        batch = images[rows]
        prediction = predictor.predict(batch)
        assert prediction.hidden is not None
        probabilities = prediction.probabilities.astype(np.float64)
        hidden = prediction.hidden.astype(np.float64)
        decision = prediction.reject.decide(batch.astype(np.float64), probabilities, hidden)
        reasons, confidence = reference.decide(batch, probabilities, hidden)
        assert decision.reasons == reasons
        assert decision.confidence.tobytes() == confidence.tobytes()
