"""MNIST from the four canonical IDX files: a local folder, or a cache filled from mirrors.

Where the files come from, in order: ``data_dir`` (the ``--data-dir`` flag), ``MNIST_DATA_DIR``,
else the cache folder (``MNIST_CACHE_DIR`` or ``~/.cache/mnist-service``), which is filled on first
use from the mirrors (``MNIST_MIRRORS``, comma-separated base URLs). Every file is checked against
the MD5 of its decompressed bytes, the sums every MNIST loader checks.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from service.model.contract import IMAGE_SIDE, N_PIXELS, PIXEL_MAX
from service.model.repository import write_atomically

#: file name -> MD5 of the decompressed bytes (the original distribution)
MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
}
TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS = MNIST_FILES

#: tried in order; each serves the four files under these exact names
DEFAULT_MIRRORS: tuple[str, ...] = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
DOWNLOAD_TIMEOUT_SECONDS = 30.0

Fetch = Callable[[str], bytes]


class DataError(Exception):
    """An MNIST file is missing, corrupt or cannot be downloaded; the message says how to fix it."""


@dataclass(frozen=True)
class Split:
    """Images as raw uint8 rows of 784 (0 background .. 255 ink) and their int64 labels."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.ndim != 2 or self.images.shape[1] != N_PIXELS:
            raise ValueError(f"images must be [N, {N_PIXELS}], got {self.images.shape}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"{self.images.shape[0]} images but labels {self.labels.shape}")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, count: int | None) -> Split:
        """The first ``count`` examples (all of them when ``count`` is None)."""
        if count is None or count >= len(self):
            return self
        return Split(self.images[:count], self.labels[:count])


@dataclass(frozen=True)
class MnistData:
    """The 60,000 training and 10,000 test digits, and the MD5 of each decompressed file."""

    train: Split
    test: Split
    checksums: dict[str, str]


def scale_pixels(images: np.ndarray) -> np.ndarray:
    """Raw uint8 pixels -> the model's float32 input in [0, 1] (raw / 255, the contract)."""
    return images.astype(np.float32) / np.float32(PIXEL_MAX)


def _http_fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_SECONDS) as response:
        return bytes(response.read())


def default_cache_dir(environ: Mapping[str, str]) -> Path:
    """``MNIST_CACHE_DIR``, else ``~/.cache/mnist-service``."""
    configured = environ.get("MNIST_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "mnist-service"


def _mirrors(environ: Mapping[str, str]) -> tuple[str, ...]:
    configured = environ.get("MNIST_MIRRORS")
    if not configured:
        return DEFAULT_MIRRORS
    return tuple(part.strip() for part in configured.split(",") if part.strip())


#: what reading a damaged gzip file raises: a bad header (gzip.BadGzipFile, an OSError), damaged
#: compressed data (zlib.error), a truncated stream (EOFError)
GZIP_ERRORS = (OSError, EOFError, zlib.error)


def _decompressed_md5(name: str, compressed: bytes) -> tuple[bytes, str]:
    try:
        raw = gzip.decompress(compressed)
    except GZIP_ERRORS as exc:
        raise DataError(f"{name} is not a valid gzip file ({exc})") from exc
    return raw, hashlib.md5(raw).hexdigest()


def _how_to_provide(name: str) -> str:
    return (
        f"Provide {name} with --data-dir DIR or MNIST_DATA_DIR=DIR (a folder with the four IDX .gz "
        f"files), or go online and let the loader download it into the cache (MNIST_CACHE_DIR, "
        f"mirrors from MNIST_MIRRORS)."
    )


def _read_local(folder: Path, name: str) -> bytes:
    """The decompressed bytes of one file in a folder the user named; never downloads."""
    path = folder / name
    try:
        compressed = path.read_bytes()
    except OSError as exc:
        raise DataError(
            f"MNIST file {path} cannot be read ({exc.strerror}). {_how_to_provide(name)}"
        ) from exc
    try:
        raw, md5 = _decompressed_md5(str(path), compressed)
    except DataError as exc:
        raise DataError(f"MNIST file {exc}. {_how_to_provide(name)}") from exc
    if md5 != MNIST_FILES[name]:
        raise DataError(
            f"MNIST file {path} is corrupt: decompressed MD5 {md5}, expected {MNIST_FILES[name]}. "
            f"{_how_to_provide(name)}"
        )
    return raw


def _download(name: str, mirrors: Sequence[str], fetch: Fetch, log: TextIO) -> bytes:
    """The compressed bytes of ``name`` from the first mirror serving it with the right MD5."""
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + name
        print(f"downloading {url}", file=log, flush=True)
        try:
            compressed = fetch(url)
            _, md5 = _decompressed_md5(url, compressed)
        except (urllib.error.URLError, OSError, DataError, ValueError) as exc:
            failures.append(f"{url}: {exc}")
            continue
        if md5 != MNIST_FILES[name]:
            failures.append(f"{url}: decompressed MD5 {md5}, expected {MNIST_FILES[name]}")
            continue
        return compressed
    tried = "; ".join(failures) if failures else "no mirrors configured"
    raise DataError(f"cannot download MNIST file {name} ({tried}). {_how_to_provide(name)}")


def _read_cached(
    cache: Path, name: str, mirrors: Sequence[str], fetch: Fetch, log: TextIO
) -> bytes:
    """The decompressed bytes of one file from the cache, downloading it when absent or corrupt."""
    path = cache / name
    if path.is_file():
        try:
            raw, md5 = _decompressed_md5(str(path), path.read_bytes())
        except (DataError, OSError) as exc:  # damaged or unreadable: fetched again below
            print(f"cached {exc}; downloading it again", file=log, flush=True)
        else:
            if md5 == MNIST_FILES[name]:
                return raw
            print(
                f"cached {path} is corrupt (MD5 {md5}); downloading it again", file=log, flush=True
            )
    compressed = _download(name, mirrors, fetch, log)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        write_atomically(path, compressed)  # a crash mid-download never leaves a half file cached
    except OSError as exc:
        raise DataError(
            f"cannot write the MNIST cache file {path} ({exc.strerror or exc}); set "
            f"MNIST_CACHE_DIR to a folder you can write, or use --data-dir"
        ) from exc
    raw, _ = _decompressed_md5(str(path), compressed)
    return raw


def _parse_images(name: str, raw: bytes) -> np.ndarray:
    header = np.frombuffer(raw, dtype=">u4", count=4)
    magic, count, rows, cols = (int(v) for v in header)
    if magic != IMAGES_MAGIC or (rows, cols) != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{name}: not an IDX image file of 28x28 digits")
    pixels = np.frombuffer(raw, dtype=np.uint8, offset=16)
    if pixels.size != count * rows * cols:
        raise DataError(f"{name}: header says {count} images, the file holds {pixels.size} bytes")
    return pixels.reshape(count, rows * cols).copy()


def _parse_labels(name: str, raw: bytes) -> np.ndarray:
    magic, count = (int(v) for v in np.frombuffer(raw, dtype=">u4", count=2))
    if magic != LABELS_MAGIC:
        raise DataError(f"{name}: not an IDX label file")
    labels = np.frombuffer(raw, dtype=np.uint8, offset=8)
    if labels.size != count:
        raise DataError(f"{name}: header says {count} labels, the file holds {labels.size}")
    return labels.astype(np.int64)


def load_mnist(
    data_dir: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    fetch: Fetch = _http_fetch,
    log: TextIO | None = None,
) -> MnistData:
    """Load and verify the four MNIST files (see the module docstring for where they come from)."""
    environ = os.environ if environ is None else environ
    log = sys.stderr if log is None else log
    folder = data_dir if data_dir is not None else environ.get("MNIST_DATA_DIR")
    raw: dict[str, bytes] = {}
    if folder:
        print(f"loading MNIST from {folder}", file=log, flush=True)
        for name in MNIST_FILES:
            raw[name] = _read_local(Path(folder), name)
    else:
        cache = default_cache_dir(environ)
        mirrors = _mirrors(environ)
        print(f"loading MNIST from the cache {cache}", file=log, flush=True)
        for name in MNIST_FILES:
            raw[name] = _read_cached(cache, name, mirrors, fetch, log)
    train = Split(
        _parse_images(TRAIN_IMAGES, raw[TRAIN_IMAGES]),
        _parse_labels(TRAIN_LABELS, raw[TRAIN_LABELS]),
    )
    test = Split(
        _parse_images(TEST_IMAGES, raw[TEST_IMAGES]), _parse_labels(TEST_LABELS, raw[TEST_LABELS])
    )
    return MnistData(train=train, test=test, checksums=dict(MNIST_FILES))
