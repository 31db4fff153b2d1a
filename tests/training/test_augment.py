"""distort: reproducible, shape- and range-keeping, ink-keeping, label-keeping distortions."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest

from training.augment import Distortion, distort

NO_MOVE = Distortion(
    max_shift=0, max_rotation=0, max_scale=0, max_shear=0, elastic_alpha=0, elastic_sigma=4
)


@pytest.fixture(scope="module")
def digits(mnist_data: Any) -> np.ndarray:
    """500 real training digits, float32 in [0, 1]."""
    return np.asarray(mnist_data.train.images[:500], dtype=np.float32) / np.float32(255)


def test_same_seed_same_output(digits: np.ndarray) -> None:
    first = distort(digits, np.random.default_rng(3))
    second = distort(digits, np.random.default_rng(3))
    np.testing.assert_array_equal(first, second)


def test_other_seed_other_output(digits: np.ndarray) -> None:
    first = distort(digits, np.random.default_rng(3))
    other = distort(digits, np.random.default_rng(4))
    assert np.mean(np.abs(first - other)) > 0.02


def test_successive_calls_give_fresh_copies(digits: np.ndarray) -> None:
    rng = np.random.default_rng(0)
    assert not np.array_equal(distort(digits, rng), distort(digits, rng))


def test_keeps_shape_dtype_and_range(digits: np.ndarray) -> None:
    out = distort(digits, np.random.default_rng(0))
    assert out.shape == digits.shape
    assert out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.array_equal(out, digits)


def test_input_is_not_modified(digits: np.ndarray) -> None:
    before = digits.copy()
    distort(digits, np.random.default_rng(0))
    np.testing.assert_array_equal(digits, before)


def test_every_image_is_distorted_by_its_own_draw(digits: np.ndarray) -> None:
    # the same digit twice in a batch gets two different distortions
    pair = np.repeat(digits[:1], 2, axis=0)
    out = distort(pair, np.random.default_rng(0))
    assert np.mean(np.abs(out[0] - out[1])) > 0.02


def test_chunking_does_not_change_shapes(digits: np.ndarray) -> None:
    from training import augment

    big = np.tile(digits, (9, 1))  # more than one chunk
    assert big.shape[0] > augment.CHUNK
    out = distort(big, np.random.default_rng(0))
    assert out.shape == big.shape and np.all(out.reshape(-1, 784).sum(axis=1) > 0)


def test_no_movement_is_the_identity(digits: np.ndarray) -> None:
    out = distort(digits, np.random.default_rng(0), NO_MOVE)
    np.testing.assert_allclose(out, digits, atol=1e-6)


def test_ink_is_mostly_preserved(digits: np.ndarray) -> None:
    out = distort(digits, np.random.default_rng(1))
    ratio = out.sum(axis=1) / digits.sum(axis=1)
    # scaling by up to 12% changes the ink area by up to ~25% and the elastic field thins or
    # thickens strokes locally; typical digits keep their ink, none vanishes or explodes
    low, median, high = np.percentile(ratio, [5, 50, 95])
    assert 0.9 < median < 1.1
    assert low > 0.6 and high < 1.5
    assert ratio.min() > 0.3 and ratio.max() < 3.0


def test_shift_only_moves_the_centre_of_mass_within_bounds(digits: np.ndarray) -> None:
    shift_only = Distortion(
        max_shift=2.0, max_rotation=0, max_scale=0, max_shear=0, elastic_alpha=0, elastic_sigma=4
    )
    out = distort(digits, np.random.default_rng(5), shift_only)
    grid = np.arange(28, dtype=np.float64)

    def centre(images: np.ndarray) -> np.ndarray:
        pictures = images.reshape(-1, 28, 28).astype(np.float64)
        mass = pictures.sum(axis=(1, 2))
        rows = (pictures.sum(axis=2) * grid).sum(axis=1) / mass
        cols = (pictures.sum(axis=1) * grid).sum(axis=1) / mass
        return np.stack([rows, cols], axis=1)

    moved = np.abs(centre(out) - centre(digits))
    assert moved.max() < 2.2  # never more than the shift (plus edge effects)
    assert moved.mean() > 0.5  # uniform in [-2, 2]: mean |shift| is 1


def test_the_elastic_field_moves_the_ink_more_the_larger_alpha(digits: np.ndarray) -> None:
    def change(alpha: float) -> float:
        only_elastic = dataclasses.replace(NO_MOVE, elastic_alpha=alpha)
        out = distort(digits, np.random.default_rng(5), only_elastic)
        return float(np.mean(np.abs(out - digits)))

    still, gentle, strong = change(0), change(17), change(68)
    assert still < 1e-6  # no field, no affine move: the digits come back as they were
    assert 0.005 < gentle < strong


def test_distorted_digits_keep_their_labels(mnist_data: Any) -> None:
    """A small MLP that only ever saw distorted digits recognises clean test digits."""
    from sklearn.neural_network import MLPClassifier

    train_x = mnist_data.train.images[:3000].astype(np.float32) / 255
    train_y = mnist_data.train.labels[:3000]
    test_x = mnist_data.test.images[:1000].astype(np.float32) / 255
    test_y = mnist_data.test.labels[:1000]
    rng = np.random.default_rng(0)
    clean = MLPClassifier((64,), random_state=0)
    distorted = MLPClassifier((64,), random_state=0)
    for _ in range(10):
        clean.partial_fit(train_x, train_y, classes=np.arange(10))
        distorted.partial_fit(distort(train_x, rng), train_y, classes=np.arange(10))
    clean_accuracy = float(np.mean(clean.predict(test_x) == test_y))
    distorted_accuracy = float(np.mean(distorted.predict(test_x) == test_y))
    # chance is 10%; distortions that broke digits or changed their meaning would fall far
    assert distorted_accuracy > 0.8
    assert distorted_accuracy > clean_accuracy - 0.06


@pytest.mark.parametrize(
    "bad",
    [
        {"max_shift": -1.0},
        {"max_scale": 1.0},
        {"elastic_sigma": 0.0},
        {"elastic_alpha": -1.0},
    ],
)
def test_rejects_impossible_distortions(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Distortion(**bad)


def test_rejects_wrong_shape() -> None:
    with pytest.raises(ValueError, match="784"):
        distort(np.zeros((3, 28, 28), dtype=np.float32), np.random.default_rng(0))
