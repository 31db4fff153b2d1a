"""Faults found by trying ``mnist-train`` and ``mnist-train sweep`` the way users do: a solver
that diverges, numpy's overflow warnings, damaged gzip data, a broken labels.json, stray names
in the model folder, the first version of an empty repository, and settings given twice or
empty. Each ends with one line and a documented exit code, and nothing is published unless the
run succeeds."""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
import time
import zlib
from pathlib import Path

import pytest

from service.model.repository import ModelRepository
from tests.training.test_cli_endings import (
    assert_nothing_published,
    assert_one_line_no_traceback,
    run_train,
)
from training import sweep
from training.cli import main
from training.data import MNIST_FILES
from training.pipeline import EXIT_DATA, EXIT_OK, EXIT_USAGE, EXIT_WRITE

#: the smallest run that trains: about two seconds, most of it export, report and calibration
TINY = ["--hidden-layers", "8", "--epochs", "1", "--train-limit", "2000", "--progress", "none"]
#: sgd with this step drives the weights to infinity in the first epoch
DIVERGING = ["--solver", "sgd", "--learning-rate-init", "1e10", "--activation", "identity"]


def damaged_gzip_data(path: Path) -> None:
    """Flip one byte of the compressed data (the gzip header stays intact): zlib.error."""
    data = bytearray(path.read_bytes())
    data[30] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(zlib.error):  # the damage is the kind this test is about
        gzip.decompress(bytes(data))


@pytest.fixture
def damaged_data_dir(tmp_path: Path, mnist_data_dir: Path) -> Path:
    """The four MNIST files, the training labels' compressed data damaged."""
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in MNIST_FILES:
        (folder / name).write_bytes((mnist_data_dir / name).read_bytes())
    damaged_gzip_data(folder / "train-labels-idx1-ubyte.gz")
    return folder


def rows(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text(encoding="utf-8"))))


# -- a solver that diverges -----------------------------------------------------------------------


def test_a_diverging_solver_is_exit_2_in_one_line_naming_the_remedy(
    mnist_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*TINY, *DIVERGING, "--epochs", "2"]
    argv += ["--data-dir", str(mnist_data_dir), "--models-dir", str(tmp_path)]
    assert main(argv) == EXIT_USAGE
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert line.startswith("mnist-train: training diverged in epoch 1 (sgd, identity): ")
    assert "try a smaller --learning-rate-init (now 1e+10)" in line
    assert line.endswith("nothing was published")
    assert main([*argv, "--progress", "json"]) == EXIT_USAGE
    end = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert end["exit_code"] == EXIT_USAGE and end["published"] is False
    assert end["error"] == line.removeprefix("mnist-train: ")
    assert_nothing_published(tmp_path)


@pytest.mark.parametrize(
    "settings", [["--solver", "lbfgs", "--alpha", "1e300"], ["--solver", "adam", "--alpha", "1e30"]]
)
def test_numpy_overflow_warnings_never_reach_stderr_and_are_recorded_in_the_card(
    settings: list[str], mnist_data_dir: Path, tmp_path: Path
) -> None:
    code, out, err = run_train(
        *TINY, *settings, "--data-dir", str(mnist_data_dir), "--models-dir", str(tmp_path)
    )
    assert code == EXIT_OK, err
    assert "RuntimeWarning" not in err
    line = assert_one_line_no_traceback(err)
    assert line.startswith("mnist-train: warning: numpy floating-point errors while training (")
    assert "a smaller --alpha" in line
    version = ModelRepository(tmp_path).latest()
    assert version is not None and str(version.path) in out
    card = version.read_card()
    assert card["training"]["floating_point_errors"]["overflow"] > 0
    summary = (version.path / "report" / "summary.md").read_text()
    assert "numpy floating-point errors while training: overflow x" in summary


def test_a_sweep_records_a_diverging_run_as_failed_and_finishes_the_others(
    mnist_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = [*TINY[:6], "--activations", "identity", "--solvers", "sgd,adam", "--alpha", "1e30"]
    argv += ["--learning-rate-init", "1e10", "--data-dir", str(mnist_data_dir), "--out", str(out)]
    code = sweep.main(argv)
    err = capsys.readouterr().err
    assert code == sweep.EXIT_OK
    assert "Traceback" not in err and "RuntimeWarning" not in err
    runs = {r["solver"]: r for r in rows(out / sweep.RUNS_CSV)}
    assert runs["sgd"]["failure"].startswith("training diverged in epoch 1 (sgd, identity)")
    assert runs["sgd"]["test_accuracy"] == "" and runs["sgd"]["stop_reason"] == "failed"
    assert runs["adam"]["failure"] == "" and float(runs["adam"]["test_accuracy"]) > 0
    assert runs["adam"]["floating_point_errors"].startswith("overflow x")
    table = {r["solver"]: r for r in rows(out / sweep.RESULTS_CSV)}
    assert (table["sgd"]["runs"], table["sgd"]["failed"]) == ("0", "1")
    assert table["sgd"]["accuracy_mean"] == "" and table["adam"]["runs"] == "1"
    markdown = (out / sweep.RESULTS_MD).read_text()
    assert "| identity | sgd | 0 (1 failed) | n/a |" in markdown
    assert "| identity | sgd | 0 | failed |" in markdown
    assert "mnist-train sweep: note: 1 of 2 runs failed" in err


def test_a_sweep_whose_every_run_fails_still_writes_its_tables_and_exits_2(
    mnist_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, models = tmp_path / "out", tmp_path / "models"
    argv = [*TINY[:6], "--activations", "identity", "--solvers", "sgd", *DIVERGING[2:4]]
    argv += ["--data-dir", str(mnist_data_dir), "--out", str(out)]
    code = sweep.main([*argv, "--publish-best", "--models-dir", str(models)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == sweep.EXIT_USAGE
    assert err[-1].startswith("mnist-train sweep: every run failed (first: identity/sgd seed 0: ")
    assert err[-1].endswith("nothing to compare; nothing was published")
    assert [r["failure"] != "" for r in rows(out / sweep.RUNS_CSV)] == [True]
    assert_nothing_published(models)


# -- damaged gzip data ----------------------------------------------------------------------------


def test_damaged_gzip_data_is_exit_3_naming_the_file(
    damaged_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    models = tmp_path / "models"
    code = main([*TINY, "--data-dir", str(damaged_data_dir), "--models-dir", str(models)])
    assert code == EXIT_DATA
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert line.startswith(
        f"mnist-train: data error: MNIST file {damaged_data_dir}/train-labels-idx1-ubyte.gz is "
        "not a valid gzip file (Error -3 while decompressing data"
    )
    assert_nothing_published(models)


def test_damaged_gzip_data_ends_a_sweep_with_exit_3(
    damaged_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--activations", "relu", "--solvers", "adam", *TINY[:6]]
    code = sweep.main([*argv, "--data-dir", str(damaged_data_dir), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == sweep.EXIT_DATA and "Traceback" not in err
    damaged = damaged_data_dir / "train-labels-idx1-ubyte.gz"
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"mnist-train sweep: data error: MNIST file {damaged} is not a valid")


# -- the model repository: checked before training ----------------------------------------------


@pytest.mark.parametrize(
    ("labels", "why"),
    [
        ("{broken\n", "labels.json is not JSON"),
        ('{"stable": "x"}\n', "labels.json: stable must be a positive integer: 'x'"),
    ],
)
def test_a_broken_labels_json_is_exit_6_before_training(
    labels: str,
    why: str,
    mnist_data_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "labels.json").write_text(labels)
    started = time.perf_counter()
    code = main([*TINY, "--data-dir", str(mnist_data_dir), "--models-dir", str(tmp_path)])
    assert code == EXIT_WRITE
    assert time.perf_counter() - started < 5  # refused before loading MNIST or training
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert line.startswith(f"mnist-train: cannot publish into the model repository {tmp_path}: ")
    assert why in line and f"repair the file in {tmp_path / 'mnist'}" in line
    assert_nothing_published(tmp_path)


def test_a_sweep_that_publishes_checks_the_repository_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mnist").mkdir()
    (tmp_path / "mnist" / "labels.json").write_text("{broken\n")
    argv = ["--activations", "relu", "--solvers", "adam", "--out", str(tmp_path / "out")]
    code = sweep.main([*argv, "--publish-best", "--models-dir", str(tmp_path)])
    assert code == sweep.EXIT_WRITE
    line = assert_one_line_no_traceback(capsys.readouterr().err)  # no "sweep: 1 runs" line
    assert "labels.json is not JSON" in line and line.endswith("nothing ran")


def test_the_first_version_is_said_to_be_stable_and_stray_names_are_skipped(
    mnist_data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*TINY, "--data-dir", str(mnist_data_dir), "--models-dir", str(tmp_path)]
    assert main(argv) == EXIT_OK
    first = capsys.readouterr().out
    assert "(version 1, stable: the repository had no stable version, so it serves now)" in first
    assert "not served until promoted" not in first
    assert ModelRepository(tmp_path).read_state().stable == 1

    (tmp_path / "mnist" / "2").write_text("notes\n")  # a stray file named like the next version
    os.symlink("3", tmp_path / "mnist" / "3")  # and a symlink loop named like the one after
    assert main(argv) == EXIT_OK
    second = capsys.readouterr()
    assert f"published {tmp_path / 'mnist' / '4'} (version 4, a candidate)" in second.out
    assert f"mnist-models --models-dir {tmp_path} promote 4" in second.out
    assert second.err == ""
    assert [v.version for v in ModelRepository(tmp_path).versions()] == [1, 4]
    assert (tmp_path / "mnist" / "2").read_text() == "notes\n"


# -- settings given twice, or empty -----------------------------------------------------------


def test_two_spellings_of_one_key_in_a_config_file_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_text("batch-size = 50\nbatch_size = 60\n")
    assert main(["--config", str(path), "--models-dir", str(tmp_path / "m")]) == EXIT_USAGE
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert line == (
        "mnist-train: configuration error: configuration keys 'batch-size' and 'batch_size' both "
        "set --batch-size (50 and 60); keep one of them"
    )
    assert not (tmp_path / "m").exists()


@pytest.mark.parametrize("flag", ["--models-dir", "--data-dir"])
@pytest.mark.parametrize("value", ["", " "])
def test_an_empty_folder_is_refused_rather_than_read_as_the_current_one(
    flag: str, value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main([flag, value])
    assert ended.value.code == EXIT_USAGE
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert f"argument {flag}: {flag}: expected a folder, got an empty value" in line
    path = tmp_path / "run.toml"
    path.write_text(f'{flag[2:].replace("-", "_")} = "{value}"\n')
    assert main(["--config", str(path)]) == EXIT_USAGE
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert f"configuration error: {flag}: expected a folder, got an empty value" in line


def test_an_empty_sweep_out_folder_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as ended:
        sweep.main(["--out", ""])
    assert ended.value.code == sweep.EXIT_USAGE
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert "argument --out: expected a folder, got an empty value" in line


def test_the_sweep_documents_its_exit_codes_for_failed_runs() -> None:
    help_text = " ".join(sweep.build_parser().format_help().split())
    assert "recorded as failed in the tables" in help_text
    assert "or every run failed" in help_text and "1 unexpected error" in help_text


def test_failed_runs_are_counted_apart_and_never_chosen_to_publish() -> None:
    from tests.training.test_sweep import _result
    from training.config import ConfigError, TrainConfig

    diverged = sweep.RunResult.failed(
        TrainConfig(activation="relu", solver="sgd", seed=1), "training diverged", 0.5
    )
    finished = _result("relu", "sgd", 0, 0.90, 0.91)
    rows = sweep.summarise([diverged, finished])
    assert [(r["runs"], r["failed"], r["accuracy_mean"]) for r in rows] == [(1, 1, 0.90)]
    assert sweep.choose_best([diverged, finished])[0] is finished
    with pytest.raises(ConfigError, match="every run failed"):
        sweep.choose_best([diverged])
    assert sweep._run_rows([diverged])[0]["test_accuracy"] == ""
