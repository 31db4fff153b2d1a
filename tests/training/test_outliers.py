"""The generated non-digits the not-a-digit discriminator learns from: drawn as MNIST was made,
reproducible, and in none of the fonts the picture benchmark measures with."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from training import outliers

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_fields_are_mnist_like_and_reproducible() -> None:
    fields = outliers.non_digit_fields(15, seed=3)
    assert fields.shape == (15, 784) and fields.dtype == np.float32
    assert fields.min() >= 0.0 and fields.max() <= 1.0
    images = fields.reshape(-1, 28, 28)
    for image in images:
        rows, cols = np.nonzero(image > 0)
        assert rows.max() - rows.min() < 20 + 1 and cols.max() - cols.min() < 20 + 1
        mass = image.sum()
        centre = (np.indices(image.shape) * image).sum(axis=(1, 2)) / mass
        assert np.all(np.abs(centre - 14) <= 3), centre
    np.testing.assert_array_equal(fields, outliers.non_digit_fields(15, seed=3))
    assert not np.array_equal(fields, outliers.non_digit_fields(15, seed=4))


def test_the_benchmark_fonts_are_held_out() -> None:
    sys.path.insert(0, str(BENCH))
    try:
        import pictures
    finally:
        sys.path.remove(str(BENCH))
    assert not set(pictures.FONTS) & set(outliers.FONTS)
    assert outliers.fonts_available()
