"""Progress output: the tqdm bar on stderr, JSON lines on stdout, silence, and the CLI's streams."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from tests.training.test_pipeline import quick_run_argv
from training.cli import main
from training.config import TrainConfig
from training.fit import EpochRecord, fit
from training.progress import (
    BarReporter,
    JsonLinesReporter,
    SilentReporter,
    epoch_json,
    make_reporter,
)


@pytest.fixture(scope="module")
def small_train(mnist_data: Any) -> Any:
    return mnist_data.train.head(1000)


def test_json_reporter_writes_one_parseable_line_per_epoch(small_train: Any) -> None:
    out, err = io.StringIO(), io.StringIO()
    result = fit(
        small_train, TrainConfig(hidden_layers=(8,), epochs=3), JsonLinesReporter(out, err)
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in records] == [1, 2, 3]
    for record, kept in zip(records, result.history, strict=True):
        assert record["event"] == "epoch"
        assert record["train_loss"] == kept.train_loss
        assert record["val_accuracy"] == kept.val_accuracy
        assert record["val_loss"] == kept.val_loss
        assert record["seconds"] > 0
    assert "3 epochs" in err.getvalue()


def test_bar_reporter_shows_losses_accuracy_and_seconds_per_epoch(small_train: Any) -> None:
    err = io.StringIO()
    fit(small_train, TrainConfig(hidden_layers=(8,), epochs=2), BarReporter(err))
    shown = err.getvalue()
    for field in ("loss=", "val_loss=", "val_acc=", "s/epoch=", "2/2"):
        assert field in shown


def test_non_finite_numbers_become_null_so_the_line_stays_json() -> None:
    record = EpochRecord(
        epoch=1, train_loss=float("nan"), val_loss=float("inf"), val_accuracy=None, seconds=0.1
    )
    line = json.dumps(epoch_json(record), allow_nan=False)
    assert json.loads(line)["train_loss"] is None


def test_make_reporter_picks_by_name() -> None:
    assert isinstance(make_reporter("json"), JsonLinesReporter)
    assert isinstance(make_reporter("bar"), BarReporter)
    assert isinstance(make_reporter("none"), SilentReporter)


def test_cli_json_mode_prints_only_epoch_lines_on_stdout(
    mnist_data_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(quick_run_argv(mnist_data_dir, tmp_path, "--progress", "json")) == 0
    captured = capsys.readouterr()
    records = [json.loads(line) for line in captured.out.splitlines()]
    assert [record["event"] for record in records] == ["epoch", "epoch", "end"]
    assert [record["epoch"] for record in records[:2]] == [1, 2]
    # the long steps say what they are doing, on stderr
    for step in ("loading MNIST", "exporting to ONNX", "verifying ONNX", "published"):
        assert step in captured.err
