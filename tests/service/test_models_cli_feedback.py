"""mnist-models diff and promote score the versions on the store's held-out feedback examples
(a real SQLite file and a real PostgreSQL server, the committed model and the tiny one)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.config import ServiceConfig
from service.model import lifecycle
from service.model.cli import EXIT_STORE
from service.model.repository import ModelRepository
from service.model.testset import MnistTestSet, load_test_set
from service.store.config import sqlalchemy_url
from service.store.database import STATISTIC_COLUMNS, FeedbackItem, PredictionStore
from service.store.examples import DEFAULT_HOLDOUT, held_out
from service.store.schema import KEPT_REQUESTED
from tests.conftest import COMMITTED_MODELS, REPO_ROOT

NOW = datetime(2026, 11, 30, 9, 0, tzinfo=UTC)
STORE_VARIABLES = ("DATABASE_URL", "STORE_PATH", "STORE")


@pytest.fixture(scope="module")
def test_set(mnist_data_dir: Path) -> MnistTestSet:
    return load_test_set(mnist_data_dir)


@pytest.fixture
def with_tiny(tmp_path: Path, tiny_trained_run: Any) -> Path:
    """The committed repository (version 1 stable) plus the tiny model as candidate 2."""
    from training.pipeline import publish_run

    root = tmp_path / "models"
    shutil.copytree(COMMITTED_MODELS, root)
    publish_run(tiny_trained_run, root, min_accuracy=0.0)
    return root


def fill_store(url: str, test_set: MnistTestSet) -> tuple[np.ndarray, np.ndarray]:
    """Feedback with kept inputs on 300 test digits (every fifth label disagrees with the truth,
    as people sometimes do); the held-out share's images and labels."""
    store = PredictionStore.open(sqlalchemy_url(url))
    rows = []
    labels = []
    for index in range(300):
        row: dict[str, object] = {
            "request_id": f"fb{index}",
            "item": 0,
            "created_at": NOW,
            "model_version": 1,
            "route": "/predict",
            "digit": int(test_set.labels[index]),
            "confidence": 0.9,
            "accepted": True,
            "reject_reason": None,
            "input": test_set.images[index].tobytes(),
            "input_kept": KEPT_REQUESTED,
        }
        row.update(dict.fromkeys(STATISTIC_COLUMNS, 1.0))
        rows.append(row)
        true = int(test_set.labels[index])
        labels.append(true if index % 5 else (true + 1) % 10)
    try:
        store.write_predictions(rows)
        store.add_feedback([FeedbackItem(f"fb{i}", labels[i]) for i in range(300)], NOW)
    finally:
        store.close()
    chosen = [i for i in range(300) if held_out(f"fb{i}", 0, DEFAULT_HOLDOUT)]
    return test_set.images[chosen], np.array(labels)[chosen]


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in STORE_VARIABLES}
    return subprocess.run(
        [sys.executable, "-m", "service.model.cli", *args],
        capture_output=True,
        text=True,
        env={**base, "PYTHONPATH": str(REPO_ROOT), **env},
        timeout=120,
    )


def expected_accuracy(root: Path, version: int, images: np.ndarray, labels: np.ndarray) -> str:
    model = lifecycle.validated(ModelRepository(root), version, ServiceConfig())
    return f"{np.mean(lifecycle.predict_labels(model, images) == labels):.2%}"


def test_diff_and_promote_report_held_out_feedback_accuracy(
    with_tiny: Path, database_url: str, mnist_data_dir: Path, test_set: MnistTestSet
) -> None:
    images, labels = fill_store(database_url, test_set)
    assert 30 < len(labels) < 90  # about a fifth of 300
    one, two = (expected_accuracy(with_tiny, v, images, labels) for v in (1, 2))
    assert one != two
    common = ["--models-dir", str(with_tiny), "--data-dir", str(mnist_data_dir)]

    diffed = run_cli(*common, "diff", "1", "2", DATABASE_URL=database_url)
    assert diffed.returncode == 0, diffed.stderr
    line = diffed.stdout.strip().splitlines()[-1]
    assert line == (
        f"held-out feedback ({len(labels)} examples, share {DEFAULT_HOLDOUT:g}): A {one}, B {two}"
    )

    # the tiny model fails the MNIST gate; forced, the report says how it does on feedback too
    promoted = run_cli(*common, "promote", "2", "--force", DATABASE_URL=database_url)
    assert promoted.returncode == 0, promoted.stderr
    assert f"version 2 {two}, previous stable 1 {one}" in promoted.stdout
    # it is worse on feedback too: one warning line (promoted all the same)
    (warning,) = promoted.stderr.strip().splitlines()
    assert re.match(r"mnist-models: warning: version 2 is [0-9.]+ points less accurate", warning)
    assert f"the {len(labels)} held-out feedback examples" in warning


def test_without_a_store_diff_says_so_and_an_unreachable_one_is_exit_6(
    with_tiny: Path, mnist_data_dir: Path, tmp_path: Path
) -> None:
    common = ["--models-dir", str(with_tiny), "--data-dir", str(mnist_data_dir)]
    diffed = run_cli(*common, "diff", "1", "2")  # no SQLite file beside the repository yet
    assert diffed.returncode == 0, diffed.stderr
    assert diffed.stdout.strip().splitlines()[-1].startswith("held-out feedback: no prediction")
    assert not (with_tiny.parent / "mnist-store.sqlite3").exists()  # reading made none
    off = run_cli(
        *common, "diff", "1", "2", STORE="off", DATABASE_URL="postgresql://x@127.0.0.1:1/db"
    )
    assert off.returncode == 0 and "no prediction store" in off.stdout

    nowhere = "postgresql://nobody@127.0.0.1:1/nothing"  # nothing listens on port 1
    failed = run_cli(*common, "diff", "1", "2", DATABASE_URL=nowhere)
    assert failed.returncode == EXIT_STORE == 6
    (line,) = failed.stderr.strip().splitlines()
    assert line.startswith("mnist-models: the feedback store cannot be read: ")
    # promote's gate is the MNIST test set: an unreachable store is a warning after the change
    promoted = run_cli(*common, "promote", "2", "--force", DATABASE_URL=nowhere)
    assert promoted.returncode == 0 and "promoted version 2 to stable" in promoted.stdout
    (warning,) = promoted.stderr.strip().splitlines()
    assert warning.startswith("mnist-models: warning: no held-out feedback figures: ")
