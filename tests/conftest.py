"""Fixtures shared by every test: where the repository and the MNIST files are."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
COMMITTED_MODELS = REPO_ROOT / "models"


def _mnist_data_dir() -> Path:
    # One setting: MNIST_DATA_DIR (the Makefile and .ci/run point it at ../shared/data/mnist).
    configured = os.environ.get("MNIST_DATA_DIR")
    path = Path(configured) if configured else REPO_ROOT.parent / "shared" / "data" / "mnist"
    return path.resolve()


@pytest.fixture(scope="session")
def mnist_data_dir() -> Path:
    """The folder holding the four canonical MNIST IDX files; the suite fails loudly without it."""
    path = _mnist_data_dir()
    missing = [
        name
        for name in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
        if not (path / name).is_file()
    ]
    if missing:
        pytest.fail(f"MNIST files {missing} not found in {path}; set MNIST_DATA_DIR to their folder")
    return path
