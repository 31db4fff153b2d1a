"""Every way ``mnist-train`` can end is one line and a documented exit code, never a traceback,
and nothing half-published: what the data cannot support, a folder it cannot write, a full disk,
Ctrl-C and SIGTERM, a serve-only install; plus the final JSON record of ``--progress json``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from service.model.repository import ModelRepository
from training.cli import main
from training.pipeline import (
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_TERMINATED,
    EXIT_USAGE,
    EXIT_WRITE,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def train_process(*argv: str, **kwargs: Any) -> subprocess.Popen[str]:
    """``python -m training ARGV`` in a child process, as a user runs it."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    env.pop("MNIST_TRAIN_TRACEBACK", None)
    return subprocess.Popen(
        [sys.executable, "-m", "training", *argv],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_ctrl_c_as_in_a_terminal,
        **kwargs,
    )


def _ctrl_c_as_in_a_terminal() -> None:
    """In the child: SIGINT back to its default disposition. A parent that ignores it (a
    background job, CI) would otherwise pass that on, and Python then never raises
    KeyboardInterrupt."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def run_train(*argv: str, timeout: float = 300) -> tuple[int, str, str]:
    process = train_process(*argv)
    out, err = process.communicate(timeout=timeout)
    return process.returncode, out, err


def assert_one_line_no_traceback(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def assert_nothing_published(models_dir: Path) -> None:
    assert ModelRepository(models_dir).versions() == []
    model_dir = models_dir / "mnist"
    if model_dir.is_dir():
        assert [p.name for p in model_dir.iterdir() if p.name.startswith(".staging")] == []


# -- the case: a small --train-limit (../shared/cases/train-small-limit, its input copied) -------


@pytest.mark.parametrize("limit", [50, 15])
def test_a_small_train_limit_names_the_flag_and_a_limit_that_works(
    limit: Any, mnist_data_dir: Any, tmp_path: Path
) -> None:
    models = tmp_path / f"m{limit}"
    common = ["--hidden-layers", "16", "--epochs", "2", "--min-accuracy", "0"]
    code, _, err = run_train(
        *common,
        "--train-limit",
        str(limit),
        "--progress",
        "none",
        "--data-dir",
        str(mnist_data_dir),
        "--models-dir",
        str(models),
    )
    line = assert_one_line_no_traceback(err)
    assert code == EXIT_USAGE
    assert line.startswith(f"mnist-train: configuration error: --train-limit {limit} with ")
    assert_nothing_published(models)
    # the limit the message names does work
    suggested = int(line.split("use --train-limit ")[1].split()[0])
    assert suggested > limit
    assert (
        main(
            [
                *common,
                "--train-limit",
                str(suggested),
                "--progress",
                "none",
                "--data-dir",
                str(mnist_data_dir),
                "--models-dir",
                str(models),
            ]
        )
        == EXIT_OK
    )


def test_lbfgs_on_images_that_lack_digits_names_them(
    mnist_data_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the first 15 training images hold no 7 and no 8
    argv = ["--solver", "lbfgs", "--hidden-layers", "8", "--epochs", "5", "--train-limit", "15"]
    argv += ["--validation-fraction", "0", "--progress", "none"]
    argv += ["--data-dir", str(mnist_data_dir), "--models-dir", str(tmp_path)]
    assert main(argv) == EXIT_USAGE
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert "--solver lbfgs: --train-limit 15 leaves digit(s) 7, 8 out" in line
    assert "use --train-limit" in line and "--solver adam" in line
    assert_nothing_published(tmp_path)


# -- folders it cannot write, a full disk ---------------------------------------------------------


def test_a_models_dir_that_is_a_file_fails_before_training(
    mnist_data_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("")
    for models_dir in (not_a_folder, not_a_folder / "below"):
        argv = ["--train-limit", "500", "--epochs", "1", "--progress", "none"]
        argv += ["--data-dir", str(mnist_data_dir), "--models-dir", str(models_dir)]
        started = time.perf_counter()
        assert main(argv) == EXIT_WRITE
        assert time.perf_counter() - started < 10  # refused before loading or training
        line = assert_one_line_no_traceback(capsys.readouterr().err)
        assert line.startswith(f"mnist-train: cannot write the model repository {models_dir}")
        assert "--models-dir" in line


@pytest.fixture
def full_disk(tmp_path: Path) -> Any:
    """A 64 KiB tmpfs: room for the folders, not for a model (needs root to mount)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (root needed): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


def test_a_full_disk_is_exit_6_and_leaves_no_half_version(
    mnist_data_dir: Any, full_disk: Any
) -> None:
    code, _, err = run_train(
        "--hidden-layers",
        "8",
        "--epochs",
        "1",
        "--train-limit",
        "500",
        "--progress",
        "none",
        "--data-dir",
        str(mnist_data_dir),
        "--models-dir",
        str(full_disk),
    )
    line = assert_one_line_no_traceback(err)
    assert code == EXIT_WRITE
    assert "No space left on device" in line and "nothing was published" in line
    assert_nothing_published(full_disk)


# -- interrupted ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signum", "code", "word"),
    [
        (signal.SIGINT, EXIT_INTERRUPTED, "interrupted"),
        (signal.SIGTERM, EXIT_TERMINATED, "terminated"),
    ],
)
def test_a_signal_during_training_ends_with_one_line(
    signum: Any, code: Any, word: Any, mnist_data_dir: Any, tmp_path: Path
) -> None:
    process = train_process(
        "--hidden-layers",
        "64",
        "--epochs",
        "200",
        "--train-limit",
        "20000",
        "--progress",
        "json",
        "--data-dir",
        str(mnist_data_dir),
        "--models-dir",
        str(tmp_path),
        start_new_session=True,  # a child of a background job would ignore SIGINT otherwise
    )
    assert process.stdout is not None
    first = process.stdout.readline()  # the first epoch's JSON line: training is under way
    assert json.loads(first)["event"] == "epoch"
    process.send_signal(signum)
    out, err = process.communicate(timeout=60)
    assert process.returncode == code
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == f"mnist-train: {word}; nothing was published"
    end = json.loads(out.strip().splitlines()[-1])
    assert end["event"] == "end" and end["exit_code"] == code and end["published"] is False
    assert_nothing_published(tmp_path)


# -- the final JSON record -----------------------------------------------------------------------


def test_progress_json_ends_with_one_record_of_the_outcome(
    mnist_data_dir: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--hidden-layers", "8", "--epochs", "2", "--train-limit", "1000"]
    argv += ["--progress", "json", "--data-dir", str(mnist_data_dir), "--models-dir", str(tmp_path)]
    assert main(argv) == EXIT_OK
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["event"] for line in lines] == ["epoch", "epoch", "end"]
    end = lines[-1]
    version = ModelRepository(tmp_path).latest()
    assert version is not None
    assert end["exit_code"] == 0 and end["published"] is True
    assert end["version"] == version.version == 1 and end["path"] == str(version.path)
    assert end["test_accuracy"] == version.read_card()["metrics"]["test_accuracy"]
    assert end["seconds"] > 0 and end["error"] is None

    assert main([*argv, "--min-accuracy", "0.999"]) == 4
    end = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert end["exit_code"] == 4 and end["published"] is False and end["version"] is None
    assert "under the minimum" in end["error"]


# -- a serve-only install -------------------------------------------------------------------------

_WITHOUT_SKLEARN = """
import sys
class Missing:
    # the import system as a serve-only install sees it: no scikit-learn
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "sklearn":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None
sys.meta_path.insert(0, Missing())
from training.cli import main
raise SystemExit(main(["--epochs", "1"]))
"""


def test_a_serve_only_install_names_the_extra_to_install() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", _WITHOUT_SKLEARN], capture_output=True, text=True, env=env
    )
    line = assert_one_line_no_traceback(result.stderr)
    assert result.returncode == EXIT_USAGE
    assert "sklearn is not installed" in line and "pip install 'mnist-service[train]'" in line


def test_every_exit_code_is_documented_in_help_and_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    help_text = " ".join(
        subprocess.run(
            [sys.executable, "-m", "training", "--help"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
        ).stdout.split()
    )
    for code in EXIT_CODES:
        assert f"{code} " in help_text
        assert f"`{code}`" in readme, code


# -- bad settings are refused before any work: one line, exit 2 -----------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("flag", ["--alpha", "--learning-rate-init", "--tol", "--min-accuracy"])
def test_nan_and_infinite_numbers_are_refused_while_parsing(
    flag: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main([f"{flag}={value}", "--models-dir", "/nonexistent/never-made"])
    assert ended.value.code == EXIT_USAGE
    line = assert_one_line_no_traceback(capsys.readouterr().err)
    assert line.startswith(
        f"mnist-train: error: argument {flag}: {flag}: must be a finite number, got {value}"
    )


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("bogus://x", "--feedback='bogus://x': the store speaks postgresql and sqlite only"),
        ("mysql://u:secret@h/db", "--feedback='mysql://u:***@h/db': the store speaks"),
    ],
)
def test_a_feedback_url_nothing_here_speaks_is_a_configuration_error(
    url: str, words: str, tmp_path: Path
) -> None:
    code, _, err = run_train("--feedback", url, "--models-dir", str(tmp_path / "m"), timeout=60)
    assert code == EXIT_USAGE
    line = assert_one_line_no_traceback(err)
    assert line.startswith("mnist-train: configuration error: ") and words in line, line
    assert "secret" not in line and not (tmp_path / "m").exists()


@pytest.mark.parametrize("out", ["/etc/passwd", "{tmp}/a-file/results"])
def test_a_sweep_checks_its_out_folder_before_any_run(out: str, tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    out = out.format(tmp=tmp_path)
    started = time.monotonic()
    code, stdout, err = run_train(
        *("sweep", "--activations", "relu,tanh", "--solvers", "adam,sgd", "--epochs", "3"),
        *("--out", out, "--models-dir", str(tmp_path / "m")),
        timeout=60,
    )
    assert code == EXIT_USAGE and stdout == ""
    line = assert_one_line_no_traceback(err)  # no "sweep: 4 runs" line: nothing ran
    assert line.startswith(f"mnist-train sweep: --out {out}: "), line
    assert time.monotonic() - started < 30
