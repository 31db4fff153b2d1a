"""``mnist-train`` whose reader goes away (``| true``, ``| head -c 1``, ``2>&1 | head``): the exit
code always agrees with what was published. A reader gone before publishing stops the run with
141 and nothing published; a reader gone after publishing does not turn the publish into a
failure code. Real processes and real pipes, a tiny run into a copy of the committed models."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from service.command_line import EXIT_BROKEN_PIPE
from service.model.repository import ModelRepository
from tests.conftest import COMMITTED_VERSION, _fill_with_committed_model
from tests.training.test_cli_endings import assert_one_line_no_traceback, train_process
from training.pipeline import EXIT_CODES, EXIT_NOT_PROMOTED

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """A copy of the committed model repository (stable = the committed version)."""
    root = tmp_path / "models"
    _fill_with_committed_model(root)
    return root


def tiny_run(data_dir: Path, models_dir: Path, *more: str) -> list[str]:
    return [
        "--train-limit",
        "500",
        "--epochs",
        "1",
        "--hidden-layers",
        "16",
        "--min-accuracy",
        "0",
        "--data-dir",
        str(data_dir),
        "--models-dir",
        str(models_dir),
        *more,
    ]


def versions(models_dir: Path) -> list[int]:
    return [v.version for v in ModelRepository(models_dir).versions()]


def assert_no_staging(models_dir: Path) -> None:
    assert not [p for p in (models_dir / "mnist").iterdir() if p.name.startswith(".staging")]


def test_stdout_closed_before_anything_is_written_stops_before_publishing(
    mnist_data_dir: Path, models_dir: Path
) -> None:
    # `mnist-train --progress none ... | true`: nothing is written to stdout until the end
    process = train_process(*tiny_run(mnist_data_dir, models_dir, "--progress", "none"))
    assert process.stdout is not None
    process.stdout.close()  # the reader is gone at once, as `true` is
    _, err = process.communicate(timeout=300)
    assert process.returncode == EXIT_BROKEN_PIPE == 141
    line = assert_one_line_no_traceback(err)
    assert line == "mnist-train: output closed early (its reader went away); nothing was published"
    assert versions(models_dir) == [COMMITTED_VERSION]
    assert_no_staging(models_dir)


def test_json_reader_gone_after_one_byte_publishes_nothing(
    mnist_data_dir: Path, models_dir: Path
) -> None:
    # `mnist-train --progress json ... | head -c 1`
    process = train_process(*tiny_run(mnist_data_dir, models_dir, "--progress", "json"))
    assert process.stdout is not None and process.stderr is not None
    assert process.stdout.read(1) == "{"
    process.stdout.close()
    _, err = process.communicate(timeout=300)
    assert process.returncode == 141
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        "mnist-train: output closed early (its reader went away); nothing was published"
    )
    assert versions(models_dir) == [COMMITTED_VERSION]
    assert_no_staging(models_dir)


def test_stderr_closed_stops_before_publishing(mnist_data_dir: Path, models_dir: Path) -> None:
    # `mnist-train ... 2>&1 | head -c 0`: the bar's reader is gone
    process = train_process(*tiny_run(mnist_data_dir, models_dir, "--progress", "bar"))
    assert process.stderr is not None
    process.stderr.close()
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 141
    assert out == ""  # the "published ..." lines never came
    assert versions(models_dir) == [COMMITTED_VERSION]


def test_stdout_closed_after_publishing_keeps_the_code_that_says_published(
    mnist_data_dir: Path, models_dir: Path
) -> None:
    # --promote runs `mnist-models promote` (seconds) between the "published" line on stderr and
    # the JSON end record on stdout: the reader leaves in between, the version is published
    argv = tiny_run(mnist_data_dir, models_dir, "--progress", "json", "--promote")
    process = train_process(*argv, bufsize=1)
    assert process.stdout is not None and process.stderr is not None
    seen = []
    for line in process.stderr:
        seen.append(line)
        if line.startswith("published "):
            break
    else:
        pytest.fail(f"no 'published' line: {''.join(seen)}")
    process.stdout.close()
    with process.stderr:
        rest = process.stderr.read()
    process.wait(timeout=300)
    # the tiny model is far worse than the committed one: published, refused by the promote gate
    assert process.returncode == EXIT_NOT_PROMOTED == 7, rest
    new = versions(models_dir)[-1]
    assert versions(models_dir) == [COMMITTED_VERSION, new] and new > COMMITTED_VERSION
    assert "Traceback" not in rest
    assert (
        rest.strip().splitlines()[-1].startswith(f"mnist-train: version {new} stays a candidate: ")
    )
    assert ModelRepository(models_dir).read_state().stable == COMMITTED_VERSION


def test_the_closed_output_ending_is_documented() -> None:
    meaning = EXIT_CODES[EXIT_BROKEN_PIPE]
    assert "nothing was published" in meaning
    help_text = subprocess.run(
        [str(REPO_ROOT / ".venv" / "bin" / "mnist-train"), "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "141 standard output or error closed early" in " ".join(help_text.split())
    for doc in ("README.md", "docs/training.md"):
        text = " ".join((REPO_ROOT / doc).read_text().split())
        assert "`141` standard output or error closed early" in text, doc
        assert "before publishing" in text.split("`141` standard output or error closed early")[1]
