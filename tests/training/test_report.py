"""build_report: the five files, valid PNGs of the documented size, honest metrics and links."""

from __future__ import annotations

import io
import json
import re
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pytest
from PIL import Image

from training import report

N = 200


@pytest.fixture(scope="module")
def inputs() -> dict[str, Any]:
    """A fake run's results: random digits, a classifier right 90% of the time."""
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 10, size=N).astype(np.int64)
    predicted = labels.copy()
    wrong = rng.choice(N, size=20, replace=False)
    predicted[wrong] = (labels[wrong] + rng.integers(1, 10, size=20)) % 10
    probabilities = rng.dirichlet(np.ones(10), size=N).astype(np.float32)
    probabilities[np.arange(N), predicted] += 2.0  # the prediction is the argmax
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_loss": 1.2 / e,
            "val_accuracy": 0.8 + e / 100,
            "seconds": 0.5,
        }
        for e in range(1, 6)
    ]
    card = {
        "name": "mnist",
        "params": {"hidden_layer_sizes": [32], "activation": "relu", "solver": "adam"},
        "metrics": {"test_accuracy": 0.9, "log_loss": 0.31, "epochs": 5, "train_seconds": 2.5},
        "command": "mnist-train --hidden-layers 32",
        "config": {"augment": True, "augment_copies": 2},
        "baselines": {
            "most_frequent": {"test_accuracy": 0.1135},
            "linear": {"test_accuracy": 0.915},
        },
    }
    return {
        "card": card,
        "history": history,
        "confusion": confusion,
        "test_images": rng.integers(0, 256, size=(N, 784)).astype(np.uint8),
        "test_labels": labels,
        "predicted_labels": predicted,
        "probabilities": probabilities,
    }


@pytest.fixture(scope="module")
def files(inputs: dict[str, Any]) -> dict[str, bytes]:
    return report.build_report(**inputs)


def test_returns_exactly_the_five_report_files(files: dict[str, bytes]) -> None:
    assert set(files) == set(report.report_paths().values())
    assert all(path.startswith("report/") for path in files)
    assert all(isinstance(data, bytes) and data for data in files.values())


@pytest.mark.parametrize("path", sorted(report.PNG_SIZES))
def test_plots_are_valid_pngs_of_the_documented_size(files: dict[str, bytes], path: str) -> None:
    image = Image.open(io.BytesIO(files[path]))
    image.verify()
    image = Image.open(io.BytesIO(files[path]))
    assert image.format == "PNG"
    assert image.size == report.PNG_SIZES[path]
    assert image.mode == "RGBA"
    # not a blank canvas: a real plot has many distinct colours
    assert len(image.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 20


def test_metrics_json_matches_the_inputs(files: dict[str, bytes], inputs: dict[str, Any]) -> None:
    metrics = json.loads(files[report.METRICS_FILE])
    labels, predicted = inputs["test_labels"], inputs["predicted_labels"]
    assert metrics["test_accuracy"] == pytest.approx(float(np.mean(labels == predicted)))
    assert metrics["errors"] == int(np.sum(labels != predicted)) == 20
    assert metrics["confusion_matrix"] == inputs["confusion"].tolist()
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4, 5]
    recall_3 = np.mean(predicted[labels == 3] == 3)
    assert metrics["per_class"][3]["recall"] == pytest.approx(recall_3)
    assert metrics["per_class"][3]["support"] == int(np.sum(labels == 3))
    worst = metrics["worst_misclassified"]
    assert len(worst) == 20
    assert all(row["label"] != row["predicted"] for row in worst)
    confidences = [row["confidence"] for row in worst]
    assert confidences == sorted(confidences, reverse=True)


def test_summary_links_every_file_relatively(files: dict[str, bytes]) -> None:
    summary = files[report.SUMMARY_FILE].decode()
    links = re.findall(r"\]\(([^)]+)\)", summary)
    expected = {PurePosixPath(p).name for p in files if p != report.SUMMARY_FILE}
    assert set(links) == expected
    assert "90.00%" in summary
    assert "`mnist-train --hidden-layers 32`" in summary
    assert "most frequent class 11.35%, linear model 91.50%" in summary
    assert "augment=True, augment_copies=2" in summary
    assert "distorted copies" in summary  # why the training loss sits above validation


def test_report_is_reproducible(inputs: dict[str, Any], files: dict[str, bytes]) -> None:
    assert report.build_report(**inputs) == files


def test_without_validation_or_history_still_renders(inputs: dict[str, Any]) -> None:
    lbfgs = dict(inputs, history=[], card={"name": "mnist"})
    files = report.build_report(**lbfgs)
    assert (
        Image.open(io.BytesIO(files[report.LOSS_FILE])).size == report.PNG_SIZES[report.LOSS_FILE]
    )
    assert json.loads(files[report.METRICS_FILE])["history"] == []


def test_no_misclassified_digits(inputs: dict[str, Any]) -> None:
    labels = inputs["test_labels"]
    confusion = np.zeros((10, 10), dtype=np.int64)
    np.add.at(confusion, (labels, labels), 1)
    perfect = dict(inputs, predicted_labels=labels, confusion=confusion)
    files = report.build_report(**perfect)
    metrics = json.loads(files[report.METRICS_FILE])
    assert metrics["errors"] == 0 and metrics["worst_misclassified"] == []
    assert metrics["test_accuracy"] == 1.0


def test_nan_in_history_becomes_null(inputs: dict[str, Any]) -> None:
    history = [{"epoch": 1, "train_loss": float("nan"), "val_loss": None, "val_accuracy": None}]
    files = report.build_report(**dict(inputs, history=history))
    assert json.loads(files[report.METRICS_FILE])["history"][0]["train_loss"] is None


def test_rejects_mismatched_shapes(inputs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="probabilities"):
        report.build_report(**dict(inputs, probabilities=inputs["probabilities"][:10]))
    with pytest.raises(ValueError, match="confusion"):
        report.build_report(**dict(inputs, confusion=np.zeros((9, 9))))


def test_worst_misclassified_orders_by_confidence_then_index() -> None:
    labels = np.array([0, 1, 2, 3])
    predicted = np.array([1, 1, 0, 0])
    probabilities = np.full((4, 10), 0.05)
    probabilities[0, 1] = 0.6
    probabilities[2, 0] = 0.9
    probabilities[3, 0] = 0.6
    assert report.worst_misclassified(labels, predicted, probabilities).tolist() == [2, 0, 3]
