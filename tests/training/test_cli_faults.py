"""Faults a newcomer hits first, each refused as a whole kind: a config file that cannot be read
or parsed, settings past their declared upper bounds, unknown flags of ``mnist-train sweep``, and
Ctrl-C while the progress bar is live. Each ends with one line and a documented exit code."""

from __future__ import annotations

import io
import os
import select
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.training.test_cli_endings import (
    assert_nothing_published,
    assert_one_line_no_traceback,
    train_process,
)
from training.cli import main
from training.config import BY_NAME, MAX_LAYER_SIZE, MAX_LAYERS, MAX_WEIGHTS
from training.pipeline import EXIT_INTERRUPTED, EXIT_USAGE
from training.progress import BarReporter


def run_main(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


# -- the config file ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"\xff\xfe", "is not valid UTF-8 TOML"),
        (b"epochs = 3\n\xe9 = 1\n", "is not valid UTF-8 TOML"),
        (b"epochs = [\n", "is not valid TOML"),
        (b"epochs = 'many'\n", "--epochs: expected an integer, got 'many'"),
        (b"alpha = true\n", "--alpha: expected a number, got True"),
        (b"hidden_layers = [64, 'a']\n", "--hidden-layers: expected positive layer sizes"),
        (b"solver = {name = 'adam'}\n", "--solver: expected one of"),
        (b"[model]\nepochs = 3\n", "unknown configuration key 'model'"),
    ],
)
def test_a_config_file_that_cannot_be_used_is_one_line_and_exit_2(
    content: bytes, expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_bytes(content)
    code, err = run_main(["--config", str(path), "--models-dir", str(tmp_path / "m")], capsys)
    line = assert_one_line_no_traceback(err)
    assert code == EXIT_USAGE
    assert line.startswith("mnist-train: configuration error: ")
    assert expected in line
    if "TOML" in expected:
        assert str(path) in line
    assert_nothing_published(tmp_path / "m")


def test_a_config_path_that_is_a_folder_or_missing_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for path, reason in ((tmp_path, "Is a directory"), (tmp_path / "no.toml", "No such file")):
        code, err = run_main(["--config", str(path)], capsys)
        line = assert_one_line_no_traceback(err)
        assert code == EXIT_USAGE
        assert f"cannot read config file {path}: {reason}" in line


# -- declared upper bounds -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--hidden-layers", "99999999999999"], f"out of range [1, {MAX_LAYER_SIZE}]"),
        (["--hidden-layers", "4096,4096,4096"], f"at most {MAX_WEIGHTS:,} are allowed"),
        (["--hidden-layers", ",".join(["8"] * (MAX_LAYERS + 1))], f"at most {MAX_LAYERS}"),
        (["--batch-size", "100000000"], "--batch-size: 100000000 is out of range"),
        (["--epochs", "100000000"], "--epochs: 100000000 is out of range"),
        (["--patience", "100000000"], "--patience: 100000000 is out of range"),
        (["--augment-copies", "100000"], "--augment-copies: 100000 is out of range"),
        (["--train-limit", "100000000"], "--train-limit: 100000000 is out of range"),
        (["--threads", "100000"], "--threads: 100000 is out of range"),
    ],
)
def test_absurd_sizes_are_refused_before_any_data_is_loaded(
    flags: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a data folder that does not exist: reaching the data would be exit 3, not 2
    argv = [*flags, "--train-limit", "100", "--data-dir", str(tmp_path / "none")]
    if "--train-limit" in flags:
        argv = [*flags, "--data-dir", str(tmp_path / "none")]
    with pytest.raises(SystemExit) as ended:
        main([*argv, "--models-dir", str(tmp_path / "m")])
    assert ended.value.code == EXIT_USAGE
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert expected in line
    assert "loading" not in line


def test_absurd_sizes_in_a_config_file_are_refused_too(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(f"hidden_layers = [{MAX_LAYER_SIZE + 1}]\nepochs = 3\n")
    code, err = run_main(["--config", str(path)], capsys)
    assert code == EXIT_USAGE
    assert f"layer size {MAX_LAYER_SIZE + 1} is out of range" in assert_one_line_no_traceback(err)


def test_every_unbounded_count_has_an_upper_bound() -> None:
    counts = [s for s in BY_NAME.values() if s.range is not None and s.type in (int, int | None)]
    assert counts
    for setting in counts:
        assert setting.range is not None and setting.range.high is not None, setting.name
    layers = BY_NAME["hidden_layers"].range
    assert layers is not None and layers.high == MAX_LAYER_SIZE


# -- sweep: unknown flags are named first ---------------------------------------------------------


@pytest.mark.parametrize("argv", [["sweep", "--bogus"], ["sweep", "--out", "x", "--bogus"]])
def test_sweep_names_an_unknown_flag_before_a_missing_one(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main(argv)
    assert ended.value.code == EXIT_USAGE
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert "unrecognized arguments: --bogus" in line
    assert "required" not in line


# -- the progress bar never outlives the run -----------------------------------------------------


def test_an_aborted_bar_leaves_no_line_behind() -> None:
    err = io.StringIO()
    bar = BarReporter(err=err)
    bar.start(10, "adam/relu [8]")
    bar.abort()
    visible = err.getvalue().split("\r")[-1].strip()
    assert visible == ""
    assert bar._bar is None


def test_ctrl_c_during_a_live_bar_ends_with_one_line_and_publishes_nothing(
    mnist_data_dir: Any, tmp_path: Path
) -> None:
    process = train_process(
        "--hidden-layers", "16", "--epochs", "10000", "--train-limit", "2000",
        "--progress", "bar", "--data-dir", str(mnist_data_dir), "--models-dir", str(tmp_path),
        start_new_session=True,  # its own process group: SIGINT is not ignored
    )  # fmt: skip
    assert process.stderr is not None
    seen = ""
    deadline = time.monotonic() + 120
    while "epoch/s" not in seen and time.monotonic() < deadline:  # the bar has advanced
        ready, _, _ = select.select([process.stderr], [], [], 1.0)
        if ready:
            seen += os.read(process.stderr.fileno(), 4096).decode(errors="replace")
    assert "epoch/s" in seen, seen
    process.send_signal(signal.SIGINT)
    _, rest = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED
    assert "Traceback" not in rest
    after = rest.replace("\r", "\n").strip().splitlines()
    assert after[-1] == "mnist-train: interrupted; nothing was published", rest
    # nothing of the bar is printed again after the last line
    assert rest.rstrip().endswith("nothing was published")
    assert_nothing_published(tmp_path)
