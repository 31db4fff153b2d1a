"""What the training images can support, checked before any fitting.

scikit-learn finds these problems late and says them in its own terms (a stratified split that
cannot hold every digit, an lbfgs model whose probabilities miss the digits it never saw); here
each one is a ConfigError that names the flag and a value that works.
"""

from __future__ import annotations

import math

import numpy as np

from service.model.contract import N_CLASSES
from training.config import ConfigError, TrainConfig
from training.data import Split


def _split_sizes(count: int, fraction: float) -> tuple[int, int]:
    """(train, validation) sizes of scikit-learn's train_test_split with ``test_size=fraction``."""
    validation = math.ceil(fraction * count)
    return count - validation, validation


def _split_works(labels: np.ndarray, fraction: float) -> bool:
    """True when a stratified split of ``labels`` with ``fraction`` held out can be made."""
    counts = np.bincount(labels, minlength=N_CLASSES)
    present = int(np.count_nonzero(counts))
    train, validation = _split_sizes(len(labels), fraction)
    return (
        present >= 2
        and validation >= present
        and train >= present
        and int(counts[counts > 0].min()) >= 2
    )


def _lbfgs_missing(labels: np.ndarray, fraction: float) -> list[int]:
    """Digits lbfgs would not see: absent, or (with a stratified split) with one image only."""
    counts = np.bincount(labels, minlength=N_CLASSES)
    least = 2 if fraction > 0 else 1
    return [digit for digit in range(N_CLASSES) if counts[digit] < least]


def _works(labels: np.ndarray, config: TrainConfig) -> bool:
    counts = np.bincount(labels, minlength=N_CLASSES)
    if np.count_nonzero(counts) < 2:
        return False
    if config.validation_fraction > 0 and not _split_works(labels, config.validation_fraction):
        return False
    return not (config.solver == "lbfgs" and _lbfgs_missing(labels, config.validation_fraction))


def smallest_train_limit(config: TrainConfig, labels: np.ndarray) -> int | None:
    """The smallest --train-limit whose first images support ``config``; None if none does."""
    for count in range(2, len(labels) + 1):
        if _works(labels[:count], config):
            return count
    return None


def check_trainable(config: TrainConfig, train: Split) -> None:
    """ConfigError unless the training images (``train`` cut to --train-limit) support ``config``.

    Checks: at least two digits to learn from; a stratified validation split that holds every
    digit present on both sides (scikit-learn's own rule); and, for lbfgs, which can only predict
    the digits it was fitted on, all ten digits among the images it fits. The message names the
    flag and the smallest --train-limit that works.
    """
    labels = train.head(config.train_limit).labels
    if _works(labels, config):
        return
    limit = f"--train-limit {config.train_limit}" if config.train_limit else "the training set"
    need = smallest_train_limit(config, train.labels)
    fix = f"use --train-limit {need} or more" if need else "use more training images"
    present = int(np.count_nonzero(np.bincount(labels, minlength=N_CLASSES)))
    if present < 2:
        raise ConfigError(
            f"{limit}: the images hold {present} digit; training needs at least two: {fix}"
        )
    fraction = config.validation_fraction
    if fraction > 0 and not _split_works(labels, fraction):
        train_part, validation = _split_sizes(len(labels), fraction)
        raise ConfigError(
            f"{limit} with --validation-fraction {fraction}: a stratified split into "
            f"{train_part} training and {validation} validation images cannot hold each of "
            f"the {present} digits present on both sides: {fix}, or set "
            f"--validation-fraction 0 for no validation split"
        )
    missing = ", ".join(map(str, _lbfgs_missing(labels, fraction)))
    raise ConfigError(
        f"--solver lbfgs: {limit} leaves digit(s) {missing} out of the images it fits, and "
        f"lbfgs can only predict the digits it has seen: {fix}, or use --solver adam"
    )
