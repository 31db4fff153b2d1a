"""The reject option at serving time: accept a prediction, or say why not (no Flask, numpy only).

A version's card may carry a ``reject`` section (written by training/calibrate.py): a
temperature for the probabilities, ``min_confidence`` (Chow's rule on the temperature-scaled top
probability) and the not-a-digit detector, the squared distance of the 28x28 input to a
per-class PCA subspace stored in ``novelty.npz`` beside the model: the subspace of the digit the
model predicts (card ``novelty.subspace`` "predicted") or, in older cards, the nearest of the ten
("nearest"); newer cards add a discriminator (a logistic regression on the model's hidden
layer, the log of that distance and the log margin of the two likeliest digits, fitted against
generated non-digits; its arrays are in the same file). A card
without it still gets ``min_confidence`` from ``MIN_CONFIDENCE`` when set (else every digit is
accepted) and no not-a-digit check.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.model import contract
from service.model.repository import sha256_bytes

LOW_CONFIDENCE = "low_confidence"
NOT_A_DIGIT = "not_a_digit"


class RejectSectionError(ValueError):
    """The card's reject section or its subspaces file is malformed or does not match."""


@dataclass(frozen=True)
class Decision:
    """Per image: accepted, the reason when not (None, "low_confidence", "not_a_digit"), and the
    calibrated top probability the rule compared with ``min_confidence``."""

    accepted: list[bool]
    reasons: list[str | None]
    confidence: np.ndarray


@dataclass(frozen=True)
class RejectOption:
    """What decides acceptance for one model version."""

    temperature: float = 1.0
    min_confidence: float = 0.0
    novelty_threshold: float | None = None
    #: a wider ink box (width / height) is no digit (a word, a dash)
    max_aspect: float | None = None
    #: float32 [10 * (k + 1), 784]: each class's components, then the ten class means
    _weights: np.ndarray | None = field(default=None, repr=False)
    #: float32 [10 * k]: each class's components applied to its own mean
    _offsets: np.ndarray | None = field(default=None, repr=False)
    #: float32 [10, k + 1, 784]: per class, its components then its mean (one class's rows are
    #: contiguous, so an image is projected onto its predicted digit's subspace alone)
    _class_weights: np.ndarray | None = field(default=None, repr=False)
    _mean_norms: np.ndarray | None = field(default=None, repr=False)
    _components: int = 0
    #: the distance to the predicted digit's subspace (else to the nearest of the ten)
    _to_predicted: bool = False
    discriminator_threshold: float | None = None
    #: float32 [784, H], [H]: the model's first layer; [H + 2] and a float: the discriminator
    _hidden: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    _discriminator: tuple[np.ndarray, float] | None = field(default=None, repr=False)

    @classmethod
    def from_card(
        cls, card: contract.ModelCard, folder: Path, min_confidence: float | None = None
    ) -> RejectOption:
        """The option for a version (its folder holds the subspaces file); ``min_confidence``
        (MIN_CONFIDENCE) overrides the card's threshold. RejectSectionError when malformed."""
        section = card.reject
        if section is None:
            return cls(min_confidence=min_confidence or 0.0)
        temperature, threshold = section.temperature, section.min_confidence
        novelty = section.novelty
        name, novelty_threshold, expected = novelty.file, novelty.threshold, novelty.sha256
        max_aspect = novelty.max_aspect
        if not (0.01 <= temperature <= 100.0 and 0.0 <= threshold <= 1.0):
            raise RejectSectionError("the card's temperature or min_confidence is out of range")
        if novelty.subspace not in ("nearest", "predicted"):
            raise RejectSectionError(f"the card's novelty.subspace {novelty.subspace!r} is unknown")
        if "/" in name or "\\" in name or name.startswith("."):
            raise RejectSectionError(f"the subspaces file {name!r} is not a plain file name")
        try:
            data = (folder / name).read_bytes()
        except OSError as exc:
            raise RejectSectionError(f"cannot read the subspaces file {name}: {exc}") from exc
        if sha256_bytes(data) != expected:
            raise RejectSectionError(f"{name} does not match its sha256 in the card")
        means, components, learned = _read_subspaces(
            data, name, with_discriminator=novelty.discriminator_threshold is not None
        )
        classes, count, pixels = components.shape
        weights = np.concatenate([components.reshape(classes * count, pixels), means])
        class_weights = np.concatenate([components, means[:, None, :]], axis=1)
        offsets = np.einsum("ckp,cp->ck", components, means).reshape(classes * count)
        return cls(
            temperature=temperature,
            min_confidence=threshold if min_confidence is None else min_confidence,
            novelty_threshold=novelty_threshold,
            max_aspect=max_aspect,
            _weights=np.ascontiguousarray(weights, dtype=np.float32),
            _offsets=offsets.astype(np.float32),
            _class_weights=np.ascontiguousarray(class_weights, dtype=np.float32),
            _mean_norms=np.einsum("cp,cp->c", means, means).astype(np.float32),
            _components=count,
            _to_predicted=novelty.subspace == "predicted",
            discriminator_threshold=novelty.discriminator_threshold,
            _hidden=None if learned is None else (learned[0], learned[1]),
            _discriminator=None if learned is None else (learned[2], learned[3]),
        )

    def novelty(self, images: np.ndarray, predicted: np.ndarray | None = None) -> np.ndarray | None:
        """float32 [N]: squared distance of float32 [N, 784] images (0..1) to a class subspace, or
        None without subspaces: to the subspace of ``predicted`` (int [N], the model's digits)
        when the card says so, else to the nearest. The nearest takes one matrix product for all
        ten classes; the predicted digit's, one per digit predicted (an image is projected onto
        its own digit's k + 1 rows only: a tenth of the reads)."""
        if self._weights is None or self._offsets is None or self._mean_norms is None:
            return None
        if self._to_predicted:
            if predicted is None:
                raise ValueError("this card's distance is to the predicted digit's subspace")
            return self._to_predicted_subspace(images, predicted)
        classes = len(self._mean_norms)
        products = images @ self._weights.T  # [N, 10 * k + 10]
        split = classes * self._components
        projected = (products[:, :split] - self._offsets).reshape(-1, classes, self._components)
        norms = np.einsum("ij,ij->i", images, images)[:, None]
        distances = (
            norms - 2.0 * products[:, split:] + self._mean_norms - (projected**2).sum(axis=2)
        )
        return np.asarray(np.maximum(distances.min(axis=1), 0.0))

    def _to_predicted_subspace(self, images: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """float32 [N]: the distances of ``novelty`` to each image's predicted digit's subspace,
        the same sums in the same order as the ten-class product, per digit."""
        assert self._class_weights is not None and self._offsets is not None
        assert self._mean_norms is not None
        count = self._components
        offsets = self._offsets.reshape(-1, count)
        if len(images) == 1:  # a single image: no grouping
            digit = int(predicted[0])
            groups: list[tuple[int, np.ndarray | slice]] = [(digit, slice(None))]
        else:
            predicted = np.asarray(predicted)
            groups = [(int(d), np.flatnonzero(predicted == d)) for d in np.unique(predicted)]
        distances = np.empty(len(images), dtype=np.float32)
        for digit, rows in groups:
            block = images[rows]
            products = block @ self._class_weights[digit].T  # [n, k + 1]
            projected = products[:, :count] - offsets[digit]
            norms = np.einsum("ij,ij->i", block, block)
            distances[rows] = (
                norms
                - 2.0 * products[:, count]
                + self._mean_norms[digit]
                - (projected**2).sum(axis=1)
            )
        return np.maximum(distances, np.float32(0.0))

    def discriminator_scores(
        self,
        images: np.ndarray,
        probabilities: np.ndarray,
        distances: np.ndarray,
        hidden: np.ndarray | None = None,
    ) -> np.ndarray | None:
        """float32 [N]: the discriminator's score (over its threshold: no digit) of float32
        [N, 784] images given the model's probabilities [N, 10] and ``novelty``'s distances;
        None without a discriminator. The features are training/calibrate.py's. ``hidden``:
        float32 [N, H], the model's hidden layer relu(x W + b) as the session computed it
        (``hidden_activations`` says which session output it is); None: computed here from the
        subspaces file's copy of W and b."""
        if self._hidden is None or self._discriminator is None:
            return None
        weights, biases = self._hidden
        coefficients, bias = self._discriminator
        if hidden is not None and hidden.shape == (len(images), len(biases)):
            activations = hidden
        else:
            activations = np.maximum(images @ weights + biases, 0.0)
        logs = np.log(np.clip(np.sort(probabilities, axis=1)[:, -2:], 1e-30, 1.0))
        size = len(biases)
        score = (
            activations @ coefficients[:size]
            + coefficients[size] * np.log(distances + 1e-3)
            + coefficients[size + 1] * (logs[:, 1] - logs[:, 0])
            + bias
        )
        return np.asarray(score)

    def has_hidden_layer(self, weights: np.ndarray, biases: np.ndarray) -> bool:
        """Whether the discriminator's hidden layer is exactly float32 W [784, H] and b [H]
        (a model's first layer): then the model's own activations may stand in for it."""
        if self._hidden is None:
            return False
        own_weights, own_biases = self._hidden
        return bool(np.array_equal(own_weights, weights) and np.array_equal(own_biases, biases))

    def calibrated(self, probabilities: np.ndarray) -> np.ndarray:
        """The temperature-scaled probabilities, float64 [N, 10] (unchanged when T = 1)."""
        if self.temperature == 1.0:
            return probabilities.astype(np.float64)
        logs = np.log(np.clip(probabilities.astype(np.float64), 1e-30, 1.0)) / self.temperature
        logs -= logs.max(axis=1, keepdims=True)
        scaled = np.exp(logs)
        return np.asarray(scaled / scaled.sum(axis=1, keepdims=True))

    def decide(
        self, images: np.ndarray, probabilities: np.ndarray, hidden: np.ndarray | None = None
    ) -> Decision:
        """Accept or reject each of float32 images [N, 784] given the model's probabilities
        float32 [N, 10] and, when the session gave it, its hidden layer float32 [N, H]
        (``discriminator_scores``)."""
        # float64 images would upcast the stored float32 matrices on every call (most of the cost)
        images = np.asarray(images, dtype=np.float32)
        confidence = self.calibrated(probabilities).max(axis=1)
        low = confidence < self.min_confidence
        scores = self.novelty(images, probabilities.argmax(axis=1))
        strange = (
            scores > self.novelty_threshold
            if scores is not None and self.novelty_threshold is not None
            else np.zeros(len(confidence), dtype=bool)
        )
        if self.max_aspect is not None:
            strange |= ink_aspect(images) > self.max_aspect
        if scores is not None and self.discriminator_threshold is not None:
            learned = self.discriminator_scores(images, probabilities, scores, hidden)
            if learned is not None:
                strange |= learned > self.discriminator_threshold
        reasons: list[str | None] = [
            NOT_A_DIGIT if s else (LOW_CONFIDENCE if lo else None)
            for s, lo in zip(strange.tolist(), low.tolist(), strict=True)
        ]
        return Decision(
            accepted=[reason is None for reason in reasons], reasons=reasons, confidence=confidence
        )


#: a pixel (0..1) brighter than this is ink, for the ink's box (as training/calibrate.py)
ASPECT_INK = 0.1


def ink_aspect(images: np.ndarray) -> np.ndarray:
    """float64 [N]: width / height of the box around the ink of float32 [N, 784] images (0 for
    a blank one). The same measure as training/calibrate.py's, which chose the threshold."""
    side = contract.IMAGE_SIDE
    ink = np.greater(images.reshape(-1, side, side), ASPECT_INK)
    rows, cols = np.any(ink, axis=2), np.any(ink, axis=1)
    # the first and the last row (column) with ink, found by argmax from either end
    top, left = rows.argmax(axis=1), cols.argmax(axis=1)
    height = side - rows[:, ::-1].argmax(axis=1) - top
    width = side - cols[:, ::-1].argmax(axis=1) - left
    return np.where(rows.any(axis=1), width / height, 0.0)


def _read_subspaces(
    data: bytes, name: str, *, with_discriminator: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, float] | None]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            means = np.asarray(archive["means"], dtype=np.float32)
            components = np.asarray(archive["components"], dtype=np.float32)
            learned = None
            if with_discriminator:
                learned = (
                    np.ascontiguousarray(archive["hidden_weights"], dtype=np.float32),
                    np.asarray(archive["hidden_biases"], dtype=np.float32),
                    np.asarray(archive["discriminator_weights"], dtype=np.float32),
                    float(archive["discriminator_bias"]),
                )
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise RejectSectionError(f"{name} is not a subspaces file: {exc}") from exc
    classes, pixels = contract.N_CLASSES, contract.N_PIXELS
    if (
        means.shape != (classes, pixels)
        or components.ndim != 3
        or components.shape[0] != classes
        or components.shape[2] != pixels
        or not (np.isfinite(means).all() and np.isfinite(components).all())
    ):
        raise RejectSectionError(f"{name} has the wrong shapes {means.shape} {components.shape}")
    if learned is not None:
        weights, biases, coefficients, bias = learned
        size = len(biases)
        if (
            weights.shape != (pixels, size)
            or biases.ndim != 1
            or coefficients.shape != (size + 2,)
            or not all(np.isfinite(a).all() for a in (weights, biases, coefficients))
            or not np.isfinite(bias)
        ):
            raise RejectSectionError(f"{name} has a discriminator of the wrong shapes")
    return means, components, learned
