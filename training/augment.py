"""Data augmentation: random affine moves plus Simard et al. (2003) elastic distortion.

``distort(images, rng)`` returns freshly distorted copies of a batch of MNIST digits; the fit loop
calls it once per copy per epoch when ``config.augment`` is set. Seeded and reproducible: the output
depends only on the input and the generator's state.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.model.contract import IMAGE_SIDE, N_PIXELS

#: images distorted per vectorised step: bounds the memory of the coordinate arrays (~60 MB)
CHUNK = 4096


@dataclass(frozen=True)
class Distortion:
    """How far ``distort`` moves a digit.

    The defaults (the flags' defaults) come from an earlier study that looked at MNIST test
    accuracy; the default recipe (training/recipes/default.toml) uses the elastic distortion alone,
    chosen on the validation split (docs/training-study.md).
    """

    max_shift: float = 2.0  # pixels, uniform in [-max_shift, max_shift] on each axis
    max_rotation: float = 12.0  # degrees, uniform in [-max_rotation, max_rotation]
    max_scale: float = 0.12  # relative, uniform in [1 - max_scale, 1 + max_scale]
    max_shear: float = 0.15  # horizontal shear factor, uniform in [-max_shear, max_shear]
    elastic_alpha: float = 34.0  # Simard's alpha: scale of the smoothed displacement field
    elastic_sigma: float = 4.0  # Simard's sigma: Gaussian smoothing of the field, in pixels

    def __post_init__(self) -> None:
        for name in ("max_shift", "max_rotation", "max_scale", "max_shear"):
            if getattr(self, name) < 0:
                raise ValueError(f"Distortion.{name} must be >= 0")
        if self.elastic_alpha < 0 or self.elastic_sigma <= 0:
            raise ValueError("Distortion needs elastic_alpha >= 0 and elastic_sigma > 0")
        if self.max_scale >= 1:
            raise ValueError("Distortion.max_scale must be < 1")


def distort(
    images: np.ndarray, rng: np.random.Generator, distortion: Distortion = Distortion()
) -> np.ndarray:
    """Randomly shifted, rotated, scaled, sheared and elastically distorted copies [N, 784]."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 2 or images.shape[1] != N_PIXELS:
        raise ValueError(f"images must be [N, {N_PIXELS}], got {images.shape}")
    out = np.empty_like(images)
    for start in range(0, images.shape[0], CHUNK):
        stop = min(start + CHUNK, images.shape[0])
        out[start:stop] = _distort_chunk(images[start:stop], rng, distortion)
    return out


def _distort_chunk(
    images: np.ndarray, rng: np.random.Generator, distortion: Distortion
) -> np.ndarray:
    from scipy import ndimage

    n = images.shape[0]
    side = IMAGE_SIDE
    # Each image sits in a zero-padded tile of a tall 2-D strip, so one 2-D bilinear
    # map_coordinates call moves the whole chunk; clipping a source coordinate into the tile's
    # zero border makes everything outside the digit read as background, never a neighbour.
    pad = 1
    tile = side + 2 * pad
    strip = np.zeros((n, tile, tile), dtype=np.float32)
    strip[:, pad:-pad, pad:-pad] = images.reshape(n, side, side)

    angle = np.deg2rad(rng.uniform(-distortion.max_rotation, distortion.max_rotation, size=n))
    scale = rng.uniform(1 - distortion.max_scale, 1 + distortion.max_scale, size=n)
    shear = np.asarray(rng.uniform(-distortion.max_shear, distortion.max_shear, size=n))
    shift = rng.uniform(-distortion.max_shift, distortion.max_shift, size=(2, n))
    # float32 draws are several times cheaper than float64 ones and precise enough for a field
    field = rng.random((2, n, side, side), dtype=np.float32)
    field *= 2
    field -= 1
    if distortion.elastic_alpha:
        # Gaussian smoothing within each image, as in Simard et al., done as two large matrix
        # products with the (side x side) blur matrix: BLAS makes that ~10x faster than
        # ndimage.gaussian_filter over the stack, with the same result.
        blur = _blur_matrix(side, distortion.elastic_sigma)
        flat = field.reshape(-1, side)
        field = (flat @ blur.T).reshape(2, n, side, side)  # along columns
        field = blur @ field  # along rows (broadcast over the stack)
        field *= np.float32(distortion.elastic_alpha)
    else:
        field[:] = 0

    centre = (side - 1) / 2
    rows, cols = np.mgrid[0:side, 0:side] - centre
    # inverse map: output pixel (r, c) reads the source at A^-1 (r, c) + shift + field
    cos = (np.cos(angle) / scale)[:, None, None]
    sin = (np.sin(angle) / scale)[:, None, None]
    coords = np.empty((2, n, side, side), dtype=np.float64)
    src_r, src_c = coords[0], coords[1]
    np.multiply(cos, rows, out=src_r)
    src_r -= sin * cols
    src_r += field[0]
    src_r += (centre + pad) + shift[0, :, None, None]
    np.multiply(sin, rows, out=src_c)
    src_c += cos * cols
    src_c += shear[:, None, None] * rows
    src_c += field[1]
    src_c += (centre + pad) + shift[1, :, None, None]
    np.clip(coords, 0, tile - 1, out=coords)
    # the tile's place in the strip; float64 keeps sub-pixel precision far down a tall strip
    src_r += (np.arange(n, dtype=np.float64) * tile)[:, None, None]

    moved = ndimage.map_coordinates(
        strip.reshape(n * tile, tile),
        coords,
        order=1,
        mode="nearest",
        output=np.float32,
    )
    np.clip(moved, 0.0, 1.0, out=moved)
    return np.asarray(moved.reshape(n, N_PIXELS))


def _blur_matrix(side: int, sigma: float) -> np.ndarray:
    """The matrix B with B @ x == gaussian_filter1d(x, sigma, mode="constant", truncate=3)."""
    from scipy import ndimage

    identity = np.eye(side, dtype=np.float64)
    blur = ndimage.gaussian_filter1d(identity, sigma, axis=0, mode="constant", truncate=3.0)
    return np.asarray(blur, dtype=np.float32)
