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
from service.model.subnormals import without_subnormals

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
    #: float32 [10 * (k + 1), 784]: each class's components, then the ten class means (held for
    #: the distance to the nearest subspace only)
    _weights: np.ndarray | None = field(default=None, repr=False)
    #: float32 [10 * k]: each class's components applied to its own mean
    _offsets: np.ndarray | None = field(default=None, repr=False)
    #: float32 [10, k + 1, 784]: per class, its components then its mean (one class's rows are
    #: contiguous, so an image is projected onto its predicted digit's subspace alone; held for
    #: the distance to the predicted digit's subspace only)
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
        to_predicted = novelty.subspace == "predicted"
        weights = class_weights = None  # only the rows the card's rule reads (1.3 MB each)
        if to_predicted:
            class_weights = np.ascontiguousarray(
                np.concatenate([components, means[:, None, :]], axis=1), dtype=np.float32
            )
        else:
            weights = np.ascontiguousarray(
                np.concatenate([components.reshape(classes * count, pixels), means]),
                dtype=np.float32,
            )
        offsets = np.einsum("ckp,cp->ck", components, means).reshape(classes * count)
        return cls(
            temperature=temperature,
            min_confidence=threshold if min_confidence is None else min_confidence,
            novelty_threshold=novelty_threshold,
            max_aspect=max_aspect,
            _weights=weights,
            _offsets=offsets.astype(np.float32),
            _class_weights=class_weights,
            _mean_norms=np.einsum("cp,cp->c", means, means).astype(np.float32),
            _components=count,
            _to_predicted=to_predicted,
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
        if self._offsets is None or self._mean_norms is None:
            return None
        if self._to_predicted:
            if predicted is None:
                raise ValueError("this card's distance is to the predicted digit's subspace")
            return self._to_predicted_subspace(images, np.asarray(predicted))
        assert self._weights is not None
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
        """float32 [N]: the distances of ``novelty`` to each image's predicted digit's subspace.

        The images are ranked by predicted digit (a stable sort: within a digit, in their order),
        so each digit's images are one contiguous block, multiplied by that digit's k + 1 rows in
        one product; the rest is elementwise over the whole batch. Each image's sums are those of
        a product of its digit's block alone, in the same order: the same float32 values."""
        assert self._class_weights is not None and self._offsets is not None
        assert self._mean_norms is not None
        count = self._components
        offsets = self._offsets.reshape(-1, count)
        if len(images) == 1:  # a single image: no ranking
            return np.array([self._one_distance(images, int(predicted[0]))], dtype=np.float32)
        order = np.argsort(predicted, kind="stable")
        digits = predicted[order]
        ranked = images[order]
        products = np.empty((len(images), count + 1), dtype=np.float32)
        ends = np.bincount(digits, minlength=len(offsets)).cumsum().tolist()
        for digit, (start, stop) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
            if stop > start:
                block = slice(start, stop)
                np.matmul(ranked[block], self._class_weights[digit].T, out=products[block])
        projected = products[:, :count] - offsets[digits]
        ranked_distances = (
            np.einsum("ij,ij->i", ranked, ranked)
            - 2.0 * products[:, count]
            + self._mean_norms[digits]
            - (projected**2).sum(axis=1)
        )
        distances = np.empty(len(images), dtype=np.float32)
        distances[order] = np.maximum(ranked_distances, np.float32(0.0))
        return distances

    def _one_distance(self, image: np.ndarray, digit: int) -> np.float32:
        """``_to_predicted_subspace`` of one float32 image [1, 784]: the same products and sums
        (a [1, 784] row times the digit's rows; the 2-D einsum) in float32 scalars."""
        assert self._class_weights is not None and self._offsets is not None
        assert self._mean_norms is not None
        count = self._components
        products = (image @ self._class_weights[digit].T)[0]  # [k + 1]
        projected = products[:count] - self._offsets[digit * count : (digit + 1) * count]
        distance: np.float32 = (
            np.einsum("ij,ij->i", image, image)[0]
            - 2.0 * products[count]
            + self._mean_norms[digit]
            - (projected**2).sum()
        )
        return np.float32(0.0) if distance < 0.0 else distance  # np.maximum's, NaN kept

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
        # the two likeliest digits' probabilities, the larger last (a partition, not a sort)
        likeliest = np.partition(probabilities, -2, axis=1)[:, -2:]
        logs = np.log(np.clip(likeliest, 1e-30, 1.0))
        size = len(biases)
        score = (
            activations @ coefficients[:size]
            + coefficients[size] * np.log(distances + 1e-3)
            + coefficients[size + 1] * (logs[:, 1] - logs[:, 0])
            + bias
        )
        return np.asarray(score)

    def _one_score(
        self, probabilities: np.ndarray, distance: np.float32, hidden: np.ndarray | None
    ) -> np.float32 | None:
        """``discriminator_scores`` of one image (probabilities float32 [1, 10], its distance,
        hidden float32 [1, H] or None: not given) in float32 scalars; None without a
        discriminator or when the session gave no hidden layer (the caller computes it)."""
        if self._hidden is None or self._discriminator is None:
            return None
        coefficients, bias = self._discriminator
        size = len(self._hidden[1])
        if hidden is None or hidden.shape != (1, size) or hidden.dtype != np.float32:
            return None
        # np.clip's bounds as float32 (NEP 50: a Python float beside float32 is float32)
        floor = float(np.float32(1e-30))
        second, top = sorted(probabilities[0].tolist())[-2:]
        logs = np.log(
            np.array(
                [min(max(second, floor), 1.0), min(max(top, floor), 1.0), distance + 1e-3],
                dtype=np.float32,
            )
        )
        score: np.float32 = (
            (hidden @ coefficients[:size])[0]
            + coefficients[size] * logs[2]
            + coefficients[size + 1] * (logs[1] - logs[0])
            + bias
        )
        return score

    def has_hidden_layer(self, weights: np.ndarray, biases: np.ndarray) -> bool:
        """Whether the discriminator's hidden layer is exactly float32 W [784, H] and b [H]
        (a model's first layer) up to subnormal values, which both are served as zero: then the
        model's own activations may stand in for it."""
        if self._hidden is None:
            return False
        own_weights, own_biases = self._hidden
        return bool(
            np.array_equal(own_weights, without_subnormals(weights))
            and np.array_equal(own_biases, without_subnormals(biases))
        )

    def calibrated(self, probabilities: np.ndarray) -> np.ndarray:
        """The temperature-scaled probabilities, float64 [N, 10] (unchanged when T = 1)."""
        if self.temperature == 1.0:
            return probabilities.astype(np.float64)
        scaled = self._scaled(probabilities)
        return np.asarray(scaled / scaled.sum(axis=1, keepdims=True))

    def confidence(self, probabilities: np.ndarray) -> np.ndarray:
        """float64 [N]: the top temperature-scaled probability of float32 probabilities [N, 10],
        ``calibrated(probabilities).max(axis=1)`` to the last bit with fewer steps: the top
        scaled value is exp(0) = 1 exactly and division by the row's sum keeps the order, so
        the top probability is 1 / that sum."""
        if self.temperature == 1.0:
            return np.asarray(probabilities.max(axis=1), dtype=np.float64)
        return np.asarray(1.0 / self._scaled(probabilities).sum(axis=1))

    def _scaled(self, probabilities: np.ndarray) -> np.ndarray:
        """float64 [N, 10]: exp(log(p) / T), each row divided by its largest value (the
        temperature-scaled probabilities before they are normalised)."""
        logs = probabilities.astype(np.float64)
        np.clip(logs, 1e-30, 1.0, out=logs)
        np.log(logs, out=logs)
        logs /= self.temperature
        logs -= logs.max(axis=1, keepdims=True)
        return np.exp(logs, out=logs)

    def decide(
        self, images: np.ndarray, probabilities: np.ndarray, hidden: np.ndarray | None = None
    ) -> Decision:
        """Accept or reject each of float32 images [N, 784] given the model's probabilities
        float32 [N, 10] and, when the session gave it, its hidden layer float32 [N, H]
        (``discriminator_scores``)."""
        # float64 images would upcast the stored float32 matrices on every call (most of the cost)
        images = np.asarray(images, dtype=np.float32)
        if (
            len(images) == 1
            and self._to_predicted
            and self._class_weights is not None
            and probabilities.dtype == np.float32  # the session's; float64 would round here
        ):
            decided = self._decide_one(images, probabilities, hidden)
            if decided is not None:
                return decided
        confidence = self.confidence(probabilities)
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

    def _decide_one(
        self, images: np.ndarray, probabilities: np.ndarray, hidden: np.ndarray | None
    ) -> Decision | None:
        """``decide`` for one image (the common request) with a few numpy calls on its own row
        and float32 scalars (per-call overhead is most of a small batch's cost), the same
        numbers in the same order, each check only while the image is not yet rejected; None
        when the session gave no hidden layer for the discriminator or the probabilities are
        NaN (the batch path handles those)."""
        confidence = self.confidence(probabilities)
        if np.isnan(confidence[0]):  # NaN probabilities: numpy's sort order, in the batch path
            return None
        distance = self._one_distance(images, int(probabilities.argmax()))
        strange = self.novelty_threshold is not None and bool(distance > self.novelty_threshold)
        if not strange and self.max_aspect is not None:
            strange = _one_aspect(images) > self.max_aspect
        if not strange and self.discriminator_threshold is not None:
            score = self._one_score(probabilities, distance, hidden)
            if score is None:  # no hidden layer from the session, or no discriminator
                return None
            strange = bool(score > self.discriminator_threshold)
        reason = (
            NOT_A_DIGIT
            if strange
            else (LOW_CONFIDENCE if confidence[0] < self.min_confidence else None)
        )
        return Decision(accepted=[reason is None], reasons=[reason], confidence=confidence)


#: a pixel (0..1) brighter than this is ink, for the ink's box (as training/calibrate.py)
ASPECT_INK = 0.1
#: float32 [28]: sums a 28x28 image's rows (or columns) of ink in one matrix product
_SIDE_ONES = np.ones(contract.IMAGE_SIDE, dtype=np.float32)


def ink_aspect(images: np.ndarray) -> np.ndarray:
    """float64 [N]: width / height of the box around the ink of float32 [N, 784] images (0 for
    a blank one). The same measure as training/calibrate.py's, which chose the threshold.

    One image: its ink pixels' indices (the first and last are on the top and bottom rows).
    A batch: ink pixels per row and per column as two matrix products with ones (small whole
    numbers, exact in float32), then the first and last row (column) with ink."""
    side = contract.IMAGE_SIDE
    if len(images) == 1:
        return np.array([_one_aspect(images)])
    count = len(images)
    ink = np.greater(images.reshape(-1, side), ASPECT_INK).astype(np.float32)  # [N * 28, 28]
    counts = np.empty((2, count, side), dtype=np.float32)  # ink pixels per row, per column
    np.matmul(ink, _SIDE_ONES, out=counts[0].reshape(-1))  # one product for all the rows
    np.matmul(_SIDE_ONES, ink.reshape(count, side, side), out=counts[1])
    seen = counts > 0
    first = seen.argmax(axis=2)
    extent = side - (counts[:, :, ::-1] > 0).argmax(axis=2) - first  # last - first + 1
    height, width = extent
    return np.where(seen[0].any(axis=1), width / height, 0.0)


def _one_aspect(image: np.ndarray) -> float:
    """``ink_aspect`` of one image [1, 784]: from its ink pixels' indices, in reading order."""
    side = contract.IMAGE_SIDE
    found = np.flatnonzero(np.greater(image, ASPECT_INK))
    if len(found) == 0:
        return 0.0
    columns = found % side
    height = int(found[-1]) // side - int(found[0]) // side + 1
    return (int(columns.max()) - int(columns.min()) + 1) / height


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
        # the model's first layer, as served (service.model.subnormals): has_hidden_layer
        # compares the two, and a product over subnormal weights takes x86's slow path
        learned = (
            without_subnormals(weights),
            without_subnormals(biases),
            without_subnormals(coefficients),
            bias,
        )
    return without_subnormals(means), without_subnormals(components), learned
