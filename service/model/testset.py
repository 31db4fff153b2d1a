"""The MNIST test set for the promote gate and ``mnist-models diff``: IDX files read with numpy.

The serving image has no scikit-learn and no training code, so the two test files are read here
(gzip + the IDX header, Y. LeCun's format) and checked against the MD5 sums of the original
distribution. Where from: ``data_dir``, else ``MNIST_DATA_DIR``, else the training cache
(``MNIST_CACHE_DIR`` or ``~/.cache/mnist-service``). Nothing is downloaded here.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from service.model.contract import IMAGE_SIDE, N_PIXELS

TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
#: MD5 of the decompressed files, as published with MNIST
TEST_MD5 = {
    TEST_IMAGES: "2646ac647ad5339dbf082846283269ea",
    TEST_LABELS: "27ae3e4e09519cfbb04c329615203637",
}
_IMAGES_MAGIC = 2051
_LABELS_MAGIC = 2049


class MnistUnavailable(Exception):
    """The MNIST test files are missing or corrupt; the message says where they were looked for."""


@dataclass(frozen=True)
class MnistTestSet:
    """MNIST test images (uint8 [N, 784], ink high) and their labels (int64 [N])."""

    images: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    source: Path

    def __len__(self) -> int:
        return len(self.labels)


def mnist_folder(data_dir: Path | None, environ: Mapping[str, str]) -> Path:
    """Where the test files are looked for: ``data_dir``, MNIST_DATA_DIR, else the cache."""
    if data_dir is not None:
        return data_dir
    if environ.get("MNIST_DATA_DIR"):
        return Path(environ["MNIST_DATA_DIR"])
    cache = environ.get("MNIST_CACHE_DIR")
    return Path(cache) if cache else Path.home() / ".cache" / "mnist-service"


def _read(folder: Path, name: str) -> bytes:
    path = folder / name
    try:
        raw = gzip.decompress(path.read_bytes())
    # a missing file or bad header (OSError), damaged data (zlib.error), a truncated stream
    except (OSError, EOFError, zlib.error) as exc:
        raise MnistUnavailable(
            f"cannot read the MNIST test file {path}: {exc}; point --data-dir or MNIST_DATA_DIR "
            "at a folder holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
        ) from exc
    if hashlib.md5(raw).hexdigest() != TEST_MD5[name]:
        raise MnistUnavailable(f"{path} is not the original MNIST file (MD5 differs)")
    return raw


def load_test_set(
    data_dir: Path | None = None, environ: Mapping[str, str] | None = None
) -> MnistTestSet:
    """The 10,000 MNIST test digits; MnistUnavailable when the files are missing or corrupt."""
    folder = mnist_folder(data_dir, os.environ if environ is None else environ)
    images_raw = _read(folder, TEST_IMAGES)
    labels_raw = _read(folder, TEST_LABELS)
    magic, count, rows, cols = np.frombuffer(images_raw, ">u4", 4).tolist()
    if magic != _IMAGES_MAGIC or (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
        raise MnistUnavailable(f"{folder / TEST_IMAGES} has an unexpected IDX header")
    images = np.frombuffer(images_raw, np.uint8, offset=16).reshape(count, N_PIXELS)
    label_magic, label_count = np.frombuffer(labels_raw, ">u4", 2).tolist()
    if label_magic != _LABELS_MAGIC or label_count != count:
        raise MnistUnavailable(f"{folder / TEST_LABELS} does not match the images")
    labels = np.frombuffer(labels_raw, np.uint8, offset=8).astype(np.int64)
    return MnistTestSet(images=images, labels=labels, source=folder)
