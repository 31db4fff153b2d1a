"""Input statistics and the population stability index: the drift contract of training and serving.

Training computes the *reference* of every statistic on its training inputs (and, for the
predicted digit and the confidence, on the test set) and stores it in the card; the service
computes the same statistics on a sliding window of live inputs and compares the two with the
population stability index (PSI). Both sides call the functions of this module, so a statistic
means the same thing at both ends. numpy only: the serving image imports it.

Statistics of one model input (a float32 row of 784 pixels in [0, 1], ink high, as in MNIST):

- ``ink_share``: share of the 784 pixels that are ink (value >= 0.5);
- ``bbox_height`` / ``bbox_width``: rows / columns spanned by ink pixels (0 for a blank image);
- ``centre_row`` / ``centre_col``: intensity-weighted centre of mass (13.5 for a blank image);
- ``stroke_thickness``: 2 x ink area / ink perimeter, in pixels (a stroke of width w and length
  L >> w has area w L and perimeter about 2 L);
- ``intensity``: histogram of all pixel values (a distribution over pixels, not over images);
- ``predicted_digit``: the digits the model answers; ``confidence``: its top probability.

PSI = sum over bins of (a - e) ln(a / e), with e the reference share and a the live share of each
bin (Siddiqi, *Credit Risk Scorecards*, 2006; Yurdakul, *Statistical properties of the population
stability index*, 2018). The usual reading: < 0.1 no shift, 0.1 to 0.25 some, > 0.25 a real shift.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from service.model.contract import (
    IMAGE_SIDE,
    N_CLASSES,
    N_PIXELS,
    DriftReferenceInfo,
    ModelCard,
    load_section,
)

#: the per-image statistics, in the column order of ``image_statistics``
SCALAR_STATISTICS: tuple[str, ...] = (
    "ink_share",
    "bbox_height",
    "bbox_width",
    "centre_row",
    "centre_col",
    "stroke_thickness",
)
INTENSITY = "intensity"
PREDICTED_DIGIT = "predicted_digit"
CONFIDENCE = "confidence"
#: every statistic with a PSI, in the order the service exports them
STATISTICS: tuple[str, ...] = (*SCALAR_STATISTICS, INTENSITY, PREDICTED_DIGIT, CONFIDENCE)

#: a pixel at or above this value is ink
INK_THRESHOLD = 0.5
#: fixed bin edges (a value v falls in bin i when edges[i-1] <= v < edges[i])
INTENSITY_EDGES: tuple[float, ...] = (0.001, 0.25, 0.5, 0.75, 0.999)
CONFIDENCE_EDGES: tuple[float, ...] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999)
#: scalar statistics are binned at these quantiles of the reference (deciles)
QUANTILES: tuple[float, ...] = tuple(q / 10 for q in range(1, 10))
#: reference shares are floored here so that a bin the reference never saw has a finite PSI
MIN_SHARE = 1e-4
#: PSI above this is a real shift (the conventional reading); the alert rules use it too
DRIFT_THRESHOLD = 0.25
_CHUNK = 8192
_BLANK_CENTRE = (IMAGE_SIDE - 1) / 2
_POSITIONS = np.arange(IMAGE_SIDE, dtype=np.float64)
_WORD = np.dtype("<u4")
_WORD_BITS = 32


def image_statistics(images: np.ndarray) -> np.ndarray:
    """float64 [N, 6] of ``SCALAR_STATISTICS`` for float [N, 784] images in [0, 1] (ink high).

    The ink pixels of each image row are packed into the low 28 bits of one uint32 (pixel j is
    bit j), so areas, bounding boxes and perimeters are popcounts and bit operations on [N, 28]
    words instead of passes over [N, 784] booleans; the integer counts are the same, and the
    centres are summed exactly as before (numpy's float32 sums in the same order), so every
    value is bit for bit what the per-pixel formulation gives (tests/service/test_drift.py keeps
    that formulation and compares)."""
    flat = np.asarray(images, dtype=np.float32).reshape(-1, N_PIXELS)
    if len(flat) > _CHUNK:
        return np.concatenate(
            [
                image_statistics(flat[start : start + _CHUNK])
                for start in range(0, len(flat), _CHUNK)
            ]
        )
    count = len(flat)
    square = flat.reshape(count, IMAGE_SIDE, IMAGE_SIDE)
    words = _ink_words(square)
    area = np.bitwise_count(words).sum(axis=1, dtype=np.int64)
    has_ink = area > 0
    rows = words != 0
    height = np.where(has_ink, IMAGE_SIDE - rows[:, ::-1].argmax(1) - rows.argmax(1), 0)
    columns = np.bitwise_or.reduce(words, axis=1)  # bit j: column j has ink
    lowest = np.bitwise_count((columns & -columns) - np.uint32(1))  # trailing zero bits
    highest = np.frexp(columns.astype(np.float64))[1]  # index of the top bit + 1
    width = np.where(has_ink, highest - lowest, 0)
    mass = square.sum(axis=(1, 2), dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre_row = np.where(mass > 0, square.sum(axis=2) @ _POSITIONS / mass, _BLANK_CENTRE)
        centre_col = np.where(mass > 0, _column_sums(square) @ _POSITIONS / mass, _BLANK_CENTRE)
    # the ink's perimeter: edges between an ink pixel and a non-ink one (or the border), i.e.
    # changes between neighbours plus ink on the four borders (integer counts, exact): across a
    # row, w ^ (w >> 1) has a bit per change and bit 27 for ink on the right border
    across = np.bitwise_count(words ^ (words >> 1)).sum(axis=1, dtype=np.int64)
    left = (words & np.uint32(1)).sum(axis=1, dtype=np.int64)
    down = np.bitwise_count(words[:, 1:] ^ words[:, :-1]).sum(axis=1, dtype=np.int64)
    top_bottom = np.bitwise_count(words[:, 0]) + np.bitwise_count(words[:, -1])
    perimeter = across + left + down + top_bottom
    thickness = np.where(has_ink, 2.0 * area / np.maximum(perimeter, 1), 0.0)
    out = np.empty((count, len(SCALAR_STATISTICS)), dtype=np.float64)
    out[:, 0] = area / N_PIXELS
    out[:, 1] = height
    out[:, 2] = width
    out[:, 3] = centre_row
    out[:, 4] = centre_col
    out[:, 5] = thickness
    return out


def _ink_words(square: np.ndarray) -> np.ndarray:
    """uint32 [N, 28]: bit j of word [n, i] is set when pixel (i, j) of image n is ink."""
    padded = np.zeros((len(square), IMAGE_SIDE, _WORD_BITS), dtype=bool)
    np.greater_equal(square, INK_THRESHOLD, out=padded[:, :, :IMAGE_SIDE])
    packed = np.packbits(padded.reshape(-1), bitorder="little")
    return packed.view(_WORD).reshape(len(square), IMAGE_SIDE)


def _column_sums(square: np.ndarray) -> np.ndarray:
    """float32 [N, 28]: ``square.sum(axis=1)``, the same float32 additions in the same order
    (row after row, as numpy reduces a non-inner axis) without its strided reduction loop."""
    sums = square[:, 0, :].copy()
    for row in range(1, IMAGE_SIDE):
        sums += square[:, row, :]
    return sums


def intensity_counts(images: np.ndarray) -> np.ndarray:
    """int64 [N, 6]: how many of each image's pixels fall in each ``INTENSITY_EDGES`` bin."""
    flat = np.asarray(images, dtype=np.float32).reshape(-1, N_PIXELS)
    # pixels at or above each edge, then differences: five comparisons beat a searchsorted
    at_least = [np.count_nonzero(flat >= np.float32(edge), axis=1) for edge in INTENSITY_EDGES]
    cumulative = np.column_stack([np.full(len(flat), N_PIXELS), *at_least, np.zeros(len(flat))])
    counts: np.ndarray = (cumulative[:, :-1] - cumulative[:, 1:]).astype(np.int64)
    return counts


def bin_index(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """int64 bin of each value: i when edges[i-1] <= v < edges[i] (0 below the first edge)."""
    return np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")


def population_stability_index(expected: Sequence[float], counts: Sequence[float]) -> float:
    """PSI of live ``counts`` per bin against the reference shares ``expected`` (same bins).

    Live shares get half a count per bin (so an empty bin has a finite logarithm); reference
    shares are floored at ``MIN_SHARE``. ValueError when the lengths differ or nothing is counted.
    """
    reference = np.maximum(np.asarray(expected, dtype=np.float64), MIN_SHARE)
    reference /= reference.sum()
    live = np.asarray(counts, dtype=np.float64)
    if live.shape != reference.shape:
        raise ValueError(f"{live.shape[0]} live bins against {reference.shape[0]} reference bins")
    if live.sum() <= 0:
        raise ValueError("no live values to compare")
    live = (live + 0.5) / (live.sum() + 0.5 * len(live))
    return float(np.sum((live - reference) * np.log(live / reference)))


@dataclass(frozen=True)
class Histogram:
    """Bin edges and the reference share of each bin (len(shares) == len(edges) + 1)."""

    edges: tuple[float, ...]
    shares: tuple[float, ...]

    def to_dict(self) -> dict[str, list[float]]:
        return {"edges": list(self.edges), "shares": list(self.shares)}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Histogram:
        """A histogram from its card form; ValueError when it is inconsistent."""
        edges = tuple(float(x) for x in value["edges"])
        shares = tuple(float(x) for x in value["shares"])
        if len(shares) != len(edges) + 1 or list(edges) != sorted(edges):
            raise ValueError("a reference histogram needs sorted edges and one share more")
        return cls(edges, shares)


def _shares(bins: np.ndarray, count: int) -> tuple[float, ...]:
    totals = np.bincount(bins, minlength=count).astype(np.float64)
    return tuple(round(float(x), 6) for x in totals / max(totals.sum(), 1.0))


@dataclass(frozen=True)
class DriftReference:
    """The reference distribution of every statistic in ``STATISTICS`` (stored in the card)."""

    histograms: Mapping[str, Histogram]
    sample_size: int
    prediction_sample_size: int

    def to_dict(self) -> dict[str, Any]:
        """The card's ``drift_reference`` section (JSON-ready)."""
        return {
            "sample_size": self.sample_size,
            "prediction_sample_size": self.prediction_sample_size,
            "ink_threshold": INK_THRESHOLD,
            "statistics": {name: self.histograms[name].to_dict() for name in STATISTICS},
        }

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> DriftReference:
        """The reference from a card section; ValueError (or KeyError) when it is malformed."""
        statistics = value["statistics"]
        histograms = {name: Histogram.from_dict(statistics[name]) for name in STATISTICS}
        return cls(histograms, int(value["sample_size"]), int(value["prediction_sample_size"]))

    @classmethod
    def from_card(cls, card: Mapping[str, Any] | ModelCard) -> DriftReference | None:
        """The card's reference (a parsed card.json or a ModelCard), or None when the card has
        none (or a malformed one)."""
        if isinstance(card, ModelCard):
            if card.drift_reference is None:
                return None
            section: object = dataclasses.asdict(card.drift_reference)
        else:
            section = card.get("drift_reference")
        if not isinstance(section, Mapping):
            return None
        try:
            return cls.from_dict(section)
        except (KeyError, TypeError, ValueError):
            return None

    def to_card(self) -> DriftReferenceInfo:
        """The card's typed ``drift_reference`` section."""
        return load_section(DriftReferenceInfo, self.to_dict(), "drift_reference")


def build_reference(
    inputs: np.ndarray, predicted: np.ndarray, probabilities: np.ndarray
) -> DriftReference:
    """The reference of training ``inputs`` (float [N, 784] in [0, 1]) and of the model's answers
    on the test set (``predicted`` int [M], ``probabilities`` float [M, 10])."""
    values = image_statistics(inputs)
    histograms: dict[str, Histogram] = {}
    for column, name in enumerate(SCALAR_STATISTICS):
        edges = tuple(float(x) for x in np.unique(np.quantile(values[:, column], QUANTILES)))
        bins = bin_index(values[:, column], edges)
        histograms[name] = Histogram(edges, _shares(bins, len(edges) + 1))
    pixels = np.zeros(len(INTENSITY_EDGES) + 1, dtype=np.int64)
    for start in range(0, len(inputs), _CHUNK):
        pixels += intensity_counts(inputs[start : start + _CHUNK]).sum(axis=0)
    histograms[INTENSITY] = Histogram(
        INTENSITY_EDGES, tuple(round(float(x), 6) for x in pixels / pixels.sum())
    )
    labels = np.asarray(predicted, dtype=np.int64)
    histograms[PREDICTED_DIGIT] = Histogram(
        tuple(float(d) + 0.5 for d in range(N_CLASSES - 1)), _shares(labels, N_CLASSES)
    )
    confidence = np.asarray(probabilities, dtype=np.float64).max(axis=1)
    histograms[CONFIDENCE] = Histogram(
        CONFIDENCE_EDGES,
        _shares(bin_index(confidence, CONFIDENCE_EDGES), len(CONFIDENCE_EDGES) + 1),
    )
    return DriftReference(histograms, len(inputs), len(labels))


def live_bins(
    reference: DriftReference,
    images: np.ndarray,
    labels: np.ndarray,
    confidences: np.ndarray,
    statistics: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Per statistic, the bin counts of these images: int64 [N, bins] (one row per image).

    ``statistics``: ``image_statistics(images)`` when the caller has it already."""
    values = image_statistics(images) if statistics is None else statistics
    counts: dict[str, np.ndarray] = {}
    for column, name in enumerate(SCALAR_STATISTICS):
        histogram = reference.histograms[name]
        counts[name] = _one_hot(bin_index(values[:, column], histogram.edges), histogram)
    counts[INTENSITY] = intensity_counts(images)
    counts[PREDICTED_DIGIT] = _one_hot(np.asarray(labels, dtype=np.int64), None, N_CLASSES)
    confidence_histogram = reference.histograms[CONFIDENCE]
    counts[CONFIDENCE] = _one_hot(
        bin_index(np.asarray(confidences, dtype=np.float64), confidence_histogram.edges),
        confidence_histogram,
    )
    return counts


def _one_hot(bins: np.ndarray, histogram: Histogram | None, width: int = 0) -> np.ndarray:
    width = width or len(histogram.shares)  # type: ignore[union-attr]
    out = np.zeros((len(bins), width), dtype=np.int64)
    out[np.arange(len(bins)), np.clip(bins, 0, width - 1)] = 1
    return out
