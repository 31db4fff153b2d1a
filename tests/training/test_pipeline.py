"""The whole pipeline: CLI end to end, the card, the self-test, the gate, reproducibility."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.model.contract import INPUT_NAME, OUTPUT_LABEL, OUTPUT_PROBABILITIES, ModelCard
from service.model.repository import ModelRepository
from training.cli import main
from training.config import TrainConfig
from training.data import scale_pixels
from training.pipeline import (
    EXIT_BELOW_GATE,
    QualityGateError,
    publish_run,
    train_run,
)
from training.verify import ParityError, run_onnx, verify_onnx

from ..conftest import TINY_CONFIG_VALUES

CARD_KEYS = {
    "name",
    "version",
    "sha256",
    "size",
    "input",
    "outputs",
    "class_labels",
    "params",
    "config",
    "data",
    "metrics",
    "training",
    "converged",
    "loss_curve",
    "validation_curve",
    "history",
    "baselines",
    "parity",
    "libraries",
    "command",
    "created",
    "selftest",
    "report",
}


def quick_run_argv(data_dir: Any, models_dir: Any, *extra: str) -> list[str]:
    """mnist-train flags for a run of a few seconds on 1,000 images; ``extra`` flags appended."""
    return [
        "--hidden-layers",
        "8",
        "--epochs",
        "2",
        "--train-limit",
        "1000",
        "--data-dir",
        str(data_dir),
        "--models-dir",
        str(models_dir),
        *extra,
    ]


def test_cli_trains_and_publishes_versions_one_then_two(
    mnist_data_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(quick_run_argv(mnist_data_dir, tmp_path, "--activation", "tanh")) == 0
    first = capsys.readouterr()
    assert "val_acc=" in first.err and "2/2" in first.err  # the live bar, on stderr
    assert first.out.startswith(f"published {tmp_path / 'mnist' / '1'}")

    assert main(quick_run_argv(mnist_data_dir, tmp_path, "--progress", "none")) == 0
    second = capsys.readouterr()
    assert second.err == ""  # --progress none: silent but for the result
    repository = ModelRepository(tmp_path)
    assert [v.version for v in repository.versions()] == [1, 2]
    assert (tmp_path / "mnist" / "config.pbtxt").is_file()

    version = repository.get(1)
    onnx_bytes, card = version.read_verified()
    assert set(card) >= CARD_KEYS
    assert card["params"]["activation"] == "tanh" and card["params"]["solver"] == "adam"
    assert card["invocation"].startswith("mnist-train --hidden-layers 8")
    for relative in card["report"].values():
        assert (version.path / relative).is_file()
    assert (version.path / "report" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels, _ = run_onnx(onnx_bytes, np.zeros((1, 784), np.float32))
    assert labels.dtype == np.int64


def test_the_quality_gate_refuses_with_its_own_exit_code(
    mnist_data_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(
        quick_run_argv(mnist_data_dir, tmp_path, "--min-accuracy", "0.99", "--progress", "none")
    )
    assert code == EXIT_BELOW_GATE
    assert "under the minimum 0.9900" in capsys.readouterr().err
    assert ModelRepository(tmp_path).versions() == []


def test_publish_run_gate_and_parity_flag(tiny_trained_run: Any, tmp_path: Path) -> None:
    with pytest.raises(QualityGateError, match="under the minimum"):
        publish_run(tiny_trained_run, tmp_path, min_accuracy=0.999)
    card = tiny_trained_run.card
    broken = dataclasses.replace(
        tiny_trained_run,
        card=dataclasses.replace(card, parity=dataclasses.replace(card.parity, passed=False)),
    )
    with pytest.raises(ParityError):
        publish_run(broken, tmp_path, min_accuracy=0.0)
    assert ModelRepository(tmp_path).versions() == []


def test_verify_onnx_catches_a_graph_that_disagrees(tiny_trained_run: Any, mnist_data: Any) -> None:
    images = scale_pixels(mnist_data.test.images[:200])
    labels, probabilities = run_onnx(tiny_trained_run.onnx_bytes, images)
    verify_onnx(tiny_trained_run.onnx_bytes, labels, probabilities, images)  # agrees with itself
    wrong = labels.copy()
    wrong[7] = (wrong[7] + 1) % 10
    with pytest.raises(ParityError, match="1 labels differ"):
        verify_onnx(tiny_trained_run.onnx_bytes, wrong, probabilities, images)
    with pytest.raises(ParityError, match="max \\|probability difference\\|"):
        verify_onnx(tiny_trained_run.onnx_bytes, labels, probabilities + 0.01, images)


def test_the_card_describes_the_run(tiny_trained_run: Any, mnist_data: Any) -> None:
    card = tiny_trained_run.card.to_json()
    # what training writes, serving reads back as the same typed card
    assert ModelCard.from_json(json.loads(json.dumps(card))) == tiny_trained_run.card
    assert card["training"]["threads"]["limit"] == 1
    assert card["config"]["epochs"] == 5 and card["params"]["max_iter"] == 5
    assert card["input"]["name"] == INPUT_NAME and card["input"]["shape"] == [-1, 784]
    assert [o["name"] for o in card["outputs"]] == [OUTPUT_LABEL, OUTPUT_PROBABILITIES]
    assert card["params"]["hidden_layer_sizes"] == [32]
    assert card["data"]["md5"] == mnist_data.checksums
    assert card["data"]["train_used"] == 3000
    assert card["data"]["train_size"] + card["data"]["validation_size"] == 3000
    metrics = card["metrics"]
    assert 0.5 < metrics["test_accuracy"] <= 1.0
    assert np.trace(np.array(metrics["confusion_matrix"])) == round(
        metrics["test_accuracy"] * 10000
    )
    assert len(metrics["per_class_precision"]) == len(metrics["per_class_recall"]) == 10
    assert metrics["log_loss"] > 0 and metrics["epochs"] == 5
    assert len(card["loss_curve"]) == 5 and len(card["validation_curve"]["val_accuracy"]) == 5
    assert card["parity"]["images"] == 10000 and card["parity"]["label_agreement"] == 1.0
    assert card["parity"]["max_abs_probability_diff"] < 1e-4
    assert card["baselines"]["most_frequent"]["test_accuracy"] < 0.2
    assert card["baselines"]["linear"]["test_accuracy"] > 0.7
    assert set(card["libraries"]) >= {
        "scikit-learn",
        "skl2onnx",
        "onnx",
        "onnxruntime",
        "numpy",
        "python",
    }
    assert card["command"].startswith("mnist-train --hidden-layers 32 --activation relu")
    assert "--epochs 5" in card["command"] and "--seed 0" in card["command"]
    assert card["converged"] is False  # 5 epochs stop short; recorded, not raised


def test_the_reproducing_command_rebuilds_the_same_config() -> None:
    from training.card import reproducing_command
    from training.cli import build_parser, config_from_args

    config = TrainConfig(
        hidden_layers=(64, 32),
        solver="sgd",
        early_stopping=True,
        shuffle=False,
        train_limit=500,
        seed=7,
        batch_size=50,
    )
    words = reproducing_command(config).split()[1:]
    assert config_from_args(build_parser().parse_args(words)) == config


def test_the_selftest_matches_the_card_and_the_graph(
    tiny_trained_run: Any, mnist_data: Any
) -> None:
    run = tiny_trained_run
    entry = run.card.selftest
    assert entry.sha256 == hashlib.sha256(run.selftest_bytes).hexdigest()
    selftest = json.loads(run.selftest_bytes)
    assert selftest["labels"] == list(range(10)) and entry.count == 10
    images = np.array(selftest["images"], dtype=np.uint8)
    assert images.shape == (10, 784)
    labels, probabilities = run_onnx(run.onnx_bytes, scale_pixels(images))
    assert labels.tolist() == selftest["expected_labels"]
    np.testing.assert_allclose(probabilities, selftest["expected_probabilities"], atol=1e-6)


def test_same_config_seed_and_data_give_the_same_model(
    tiny_trained_run: Any, mnist_data: Any
) -> None:
    again = train_run(TrainConfig(**TINY_CONFIG_VALUES), mnist_data)
    # same metrics, and on this platform the very same ONNX bytes
    timing = {"train_seconds"}
    assert {k: v for k, v in again.metrics.items() if k not in timing} == {
        k: v for k, v in tiny_trained_run.metrics.items() if k not in timing
    }
    assert (
        hashlib.sha256(again.onnx_bytes).hexdigest()
        == hashlib.sha256(tiny_trained_run.onnx_bytes).hexdigest()
    )
    other_seed = train_run(TrainConfig(**{**TINY_CONFIG_VALUES, "seed": 1}), mnist_data)
    assert other_seed.onnx_bytes != again.onnx_bytes
