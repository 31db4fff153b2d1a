"""Drift statistics, the PSI, the live windows and their merge across workers."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from service.model import drift
from service.model.drift import (
    STATISTICS,
    DriftReference,
    image_statistics,
    intensity_counts,
    population_stability_index,
)
from service.observability.drift import DriftMonitor, drift_figures
from service.observability.live import LiveMetrics, drift_from_families
from tests.conftest import COMMITTED_MODELS

CARD = COMMITTED_MODELS / "mnist" / "1" / "card.json"


def bar(top: int, left: int, height: int, width: int) -> np.ndarray:
    image = np.zeros((28, 28), dtype=np.float32)
    image[top : top + height, left : left + width] = 1.0
    return image.reshape(784)


def test_statistics_of_simple_shapes() -> None:
    values = image_statistics(np.stack([bar(4, 10, 20, 3), np.zeros(784, np.float32)]))
    ink_share, height, width, row, col, thickness = values[0]
    assert ink_share == pytest.approx(60 / 784)
    assert (height, width) == (20, 3)
    assert (row, col) == pytest.approx((13.5, 11.0))
    assert thickness == pytest.approx(2 * 60 / (2 * 20 + 2 * 3))  # 2 area / perimeter
    assert values[1].tolist() == [0.0, 0.0, 0.0, 13.5, 13.5, 0.0]  # a blank image


def test_stroke_thickness_counts_holes_and_the_image_border() -> None:
    image = np.zeros((28, 28), dtype=np.float32)
    image[:5, :5] = 1.0  # a 5x5 square in the corner, touching two borders ...
    image[2, 2] = 0.0  # ... with a one-pixel hole: perimeter 20 outside + 4 inside
    values = image_statistics(image.reshape(1, 784))
    assert values[0, 0] == pytest.approx(24 / 784)
    assert values[0, 5] == pytest.approx(2 * 24 / 24)


def test_statistics_are_the_same_in_chunks_and_at_once() -> None:
    images = np.random.default_rng(0).random((9000, 784), dtype=np.float32)
    whole = image_statistics(images)
    assert np.array_equal(whole[8500:], image_statistics(images[8500:]))


def per_pixel_statistics(images: np.ndarray) -> np.ndarray:
    """``image_statistics`` as first written, pass by pass over [N, 28, 28] booleans: the
    packed-bit version must give exactly these values."""
    flat = np.asarray(images, dtype=np.float32).reshape(-1, 784)
    count = len(flat)
    square = flat.reshape(count, 28, 28)
    ink: np.ndarray = square >= 0.5
    area = np.count_nonzero(ink.reshape(count, 784), axis=1).astype(np.float64)
    rows = np.asarray(ink.any(axis=2))
    cols = np.asarray(ink.any(axis=1))
    has_ink = area > 0
    height = np.where(has_ink, 28 - rows[:, ::-1].argmax(1) - rows.argmax(1), 0)
    width = np.where(has_ink, 28 - cols[:, ::-1].argmax(1) - cols.argmax(1), 0)
    mass = square.sum(axis=(1, 2), dtype=np.float64)
    positions = np.arange(28, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre_row = np.where(mass > 0, square.sum(axis=2) @ positions / mass, 13.5)
        centre_col = np.where(mass > 0, square.sum(axis=1) @ positions / mass, 13.5)
    perimeter = (
        np.count_nonzero((ink[:, 1:, :] != ink[:, :-1, :]).reshape(count, -1), axis=1)
        + np.count_nonzero((ink[:, :, 1:] != ink[:, :, :-1]).reshape(count, -1), axis=1)
        + np.count_nonzero(ink[:, (0, -1), :].reshape(count, -1), axis=1)
        + np.count_nonzero(ink[:, :, (0, -1)].reshape(count, -1), axis=1)
    )
    thickness = np.where(has_ink, 2.0 * area / np.maximum(perimeter, 1), 0.0)
    return np.column_stack([area / 784, height, width, centre_row, centre_col, thickness])


def odd_images() -> np.ndarray:
    """Blank, full, every single pixel alone, values at and just under the ink threshold, ink
    on each border only, and noise of every grey."""
    singles = np.eye(784, dtype=np.float32)
    at_threshold = np.full((2, 784), 0.5, np.float32)
    at_threshold[1] = np.nextafter(np.float32(0.5), np.float32(0))
    borders = np.zeros((4, 28, 28), np.float32)
    borders[0, 0, :] = borders[1, -1, :] = borders[2, :, 0] = borders[3, :, -1] = 1.0
    rng = np.random.default_rng(7)
    noise = rng.random((300, 784), dtype=np.float32)
    sparse = np.where(rng.random((300, 784)) < 0.05, noise, 0).astype(np.float32)
    return np.concatenate(
        [
            np.zeros((1, 784), np.float32),
            np.ones((1, 784), np.float32),
            singles,
            0.5 * singles + 0.25,
            at_threshold,
            borders.reshape(4, 784),
            noise,
            sparse,
        ]
    )


def test_statistics_equal_the_per_pixel_formulation_bit_for_bit(mnist_data: Any) -> None:
    digits = mnist_data.test.images.astype(np.float32) / 255
    for images in (digits, odd_images(), digits[:500].astype(np.float64)):
        assert np.array_equal(image_statistics(images), per_pixel_statistics(images))
    # a strided view (a column slice of a wider array) and a batch over the chunk size
    wide = np.concatenate([digits[:300], digits[300:600]], axis=1)[:, 784:]
    assert not wide.flags.c_contiguous
    assert np.array_equal(image_statistics(wide), per_pixel_statistics(wide))
    many = np.concatenate([digits, digits[:100]])
    assert np.array_equal(image_statistics(many), per_pixel_statistics(many))


def test_intensity_counts_split_every_pixel_into_one_bin() -> None:
    image = np.array([0.0] * 700 + [0.1] * 20 + [0.3] * 20 + [0.6] * 20 + [0.8] * 14 + [1.0] * 10)
    counts = intensity_counts(image[np.newaxis].astype(np.float32))
    assert counts.tolist() == [[700, 20, 20, 20, 14, 10]]


def test_population_stability_index() -> None:
    shares = [0.25, 0.25, 0.25, 0.25]
    assert population_stability_index(shares, [250, 250, 250, 250]) == pytest.approx(0, abs=1e-9)
    moved = population_stability_index(shares, [700, 100, 100, 100])
    assert moved > drift.DRIFT_THRESHOLD
    with pytest.raises(ValueError):
        population_stability_index(shares, [1, 2, 3])
    with pytest.raises(ValueError):
        population_stability_index(shares, [0, 0, 0, 0])


def test_the_committed_card_carries_a_reference_that_round_trips() -> None:
    card = json.loads(CARD.read_text())
    reference = DriftReference.from_card(card)
    assert reference is not None and reference.sample_size == 60000
    assert DriftReference.from_dict(reference.to_dict()) == reference
    for name in STATISTICS:
        assert sum(reference.histograms[name].shares) == pytest.approx(1.0, abs=1e-4)
    assert DriftReference.from_card({}) is None
    assert DriftReference.from_card({"drift_reference": {"statistics": {}}}) is None


@pytest.fixture(scope="module")
def reference() -> DriftReference:
    found = DriftReference.from_card(json.loads(CARD.read_text()))
    assert found is not None
    return found


def answers(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stand-in answers (all digits, high confidence): these tests are about the inputs."""
    labels = np.arange(len(images)) % 10
    return labels, np.full(len(images), 0.999)


def test_two_workers_windows_add_up_to_one(reference: DriftReference, mnist_data: Any) -> None:
    images = mnist_data.test.images[:600].astype(np.float32) / 255
    labels, confidences = answers(images)
    registries = [CollectorRegistry(), CollectorRegistry()]
    for worker, registry in enumerate(registries):
        monitor = DriftMonitor(lambda version: reference, window=500)
        metrics = LiveMetrics.create(registry, monitor)
        part = slice(worker * 300, worker * 300 + 300)
        metrics.observe_drift(np.full(300, 4), images[part], labels[part], confidences[part])
    families = [family for registry in registries for family in registry.collect()]
    merged = drift_from_families(families, lambda version: reference)
    bins = drift.live_bins(reference, images, labels, confidences)
    expected = drift_figures(4, 600, {k: v.sum(0) for k, v in bins.items()}, reference)
    assert expected is not None and merged[4].window == 600
    assert merged[4].psi == pytest.approx(expected.psi)


def test_the_window_keeps_only_the_newest_inputs(
    reference: DriftReference, mnist_data: Any
) -> None:
    normal = mnist_data.test.images[:300].astype(np.float32) / 255
    monitor = DriftMonitor(lambda version: reference, window=200)
    labels, confidences = answers(normal)
    monitor.add(np.full(300, 1), 1.0 - normal, labels, confidences)  # inverted, then ...
    monitor.add(np.full(300, 1), normal, labels, confidences)  # ... 300 ordinary ones
    snapshot = monitor.snapshot(1)
    assert snapshot is not None and snapshot[0] == 200
    figures = drift_figures(1, snapshot[0], snapshot[1], reference)
    assert figures is not None and figures.score < drift.DRIFT_THRESHOLD
    assert monitor.snapshot(2) is None
    assert drift_figures(1, 50, snapshot[1], reference) is None  # too few to say anything


def test_a_batch_larger_than_the_window_counts_as_its_newest_inputs(
    reference: DriftReference, mnist_data: Any
) -> None:
    # the writer bins only each version's newest `window` inputs of a flush: the same counts
    images = mnist_data.test.images[:700].astype(np.float32) / 255
    labels, confidences = answers(images)
    versions = np.where(np.arange(700) % 3 == 0, 2, 1)
    monitor = DriftMonitor(lambda version: reference, window=150)
    assert monitor.add(versions, images, labels, confidences) == [1, 2]
    for version in (1, 2):
        newest = np.flatnonzero(versions == version)[-150:]
        bins = drift.live_bins(reference, images[newest], labels[newest], confidences[newest])
        snapshot = monitor.snapshot(version)
        assert snapshot is not None and snapshot[0] == 150
        assert snapshot[1] == {name: counts.sum(0).tolist() for name, counts in bins.items()}


@pytest.mark.parametrize(
    ("change", "drifts"),
    [
        ("none", False),
        ("inverted", True),
        ("thick", True),
        ("shifted", True),
    ],
)
def test_the_drift_score_separates_changed_inputs(
    reference: Any, mnist_data: Any, change: Any, drifts: Any
) -> None:
    from scipy import ndimage

    images = mnist_data.test.images[1000:1500].astype(np.float32) / 255
    square = images.reshape(-1, 28, 28)
    if change == "inverted":
        images = 1.0 - images
    elif change == "thick":
        images = ndimage.grey_dilation(square, size=(1, 3, 3)).reshape(-1, 784)
    elif change == "shifted":
        moved = np.zeros_like(square)
        moved[:, 5:, 5:] = square[:, :-5, :-5]
        images = moved.reshape(-1, 784)
    labels, confidences = answers(images)
    bins = drift.live_bins(reference, images, labels, confidences)
    figures = drift_figures(1, 500, {k: v.sum(0) for k, v in bins.items()}, reference)
    assert figures is not None
    assert (figures.score > drift.DRIFT_THRESHOLD) is drifts, figures.to_json()
