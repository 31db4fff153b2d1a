"""mnist-models refuses bad values while parsing, never forces past validation, ends quietly on a
closed pipe, and every failure is one line with its documented exit code."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from service.errors import ModelUnavailable
from service.model.cli import main
from service.model.repository import ModelRepository, RepositoryError, ServingState
from service.model.testset import MnistUnavailable, load_test_set
from tests.conftest import COMMITTED_MODELS, REPO_ROOT
from tests.service.conftest import publish_copy
from tests.training.test_data import GZIP_DAMAGE, damage_gzip


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """The committed repository (1 stable) plus 2: model.onnx with bytes appended, 3: card.json
    is ``null``, 4: an equal copy of 1 (passes the gate)."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(COMMITTED_MODELS, root)
    with (publish_copy(root).path / "model.onnx").open("ab") as onnx_file:
        onnx_file.write(b"appended bytes")
    (publish_copy(root).path / "card.json").write_text("null")
    publish_copy(root)
    return root


def models(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "STORE": "off"}
    return subprocess.run(
        [sys.executable, "-m", "service.model.cli", "--models-dir", str(root), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def state(root: Path) -> ServingState:
    return ModelRepository(root).read_state()


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["promote", "4", "--tolerance", "nan"], "--tolerance"),
        (["promote", "4", "--tolerance", "-0.01"], "--tolerance"),
        (["promote", "4", "--tolerance", "inf"], "--tolerance"),
        (["canary", "4", "--percent", "20", "--tolerance", "nan"], "--tolerance"),
        (["canary", "4", "--percent", "150", "--force"], "--percent"),
        (["canary", "4", "--percent", "nan"], "--percent"),
        (["canary", "4", "--percent", "0"], "--percent"),
        (["shadow", "4", "--sample", "2"], "--sample"),
        (["shadow", "4", "--sample=-inf"], "--sample"),
        (["prune", "--keep", "-1"], "--keep"),
        (["show", "0"], "version"),
    ],
)
def test_values_out_of_range_are_usage_errors_of_one_line(
    repo: Path, args: list[str], flag: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        main(["--models-dir", str(repo), *args])
    assert ended.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"argument {flag}: '" in err, err
    assert state(repo) == ServingState(stable=1)  # nothing changed
    assert [v.version for v in ModelRepository(repo).versions()] == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("args", "why"),
    [
        (["promote", "2", "--force"], "model.onnx sha256"),
        (["promote", "3", "--force"], "card.json is not a JSON object"),
        (["canary", "2", "--percent", "20", "--force"], "model.onnx sha256"),
        (["shadow", "3", "--sample", "0.5", "--force"], "card.json is not a JSON object"),
    ],
)
def test_force_never_passes_validation(
    repo: Path,
    args: list[str],
    why: str,
    mnist_data_dir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["--models-dir", str(repo), "--data-dir", str(mnist_data_dir), *args]) == 4
    err = capsys.readouterr().err
    assert err.startswith(f"mnist-models: version {args[1]} fails validation: ") and why in err
    assert len(err.strip().splitlines()) == 1
    assert state(repo) == ServingState(stable=1)


def test_exit_codes_of_refused_requests(repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--models-dir", str(repo), "rollback"]) == 7  # nothing to roll back to
    assert main(["--models-dir", str(repo), "canary", "1", "--percent", "5"]) == 7  # stable
    assert main(["--models-dir", str(repo), "diff", "1", "3"]) == 4  # fails validation
    assert main(["--models-dir", str(repo), "show", "9"]) == 2  # no such version
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["mnist-models"] * 4


def test_a_closed_standard_output_ends_quietly(repo: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "STORE": "off"}
    listing = subprocess.Popen(
        [sys.executable, "-m", "service.model.cli", "--models-dir", str(repo), "list"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert listing.stdout is not None and listing.stderr is not None
    listing.stdout.close()  # like `| head -0`: the reader is gone before anything is written
    with listing.stderr:
        assert listing.wait(timeout=60) == 141
        assert listing.stderr.read() == b""


def test_every_exit_code_is_documented() -> None:
    from service.model import cli

    doc = (REPO_ROOT / "docs" / "lifecycle.md").read_text()
    help_text = cli.build_parser().format_help()
    for code in (2, 3, 4, 5, 6, 7, 141):
        assert f"{code} " in help_text.split("exit codes:")[1]
        assert f"{code} " in doc.split("Exit codes:")[1].split("\n\n")[0]


def hostile_labels(root: Path) -> None:
    """labels.json as arrays nested 100,000 deep: valid JSON that Python's parser cannot read."""
    (root / "mnist" / "labels.json").write_text("[" * 100_000 + "]" * 100_000)


def test_a_hostile_labels_json_is_one_line_and_exit_5(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile_labels(repo)
    assert main(["--models-dir", str(repo), "list"]) == 5
    assert main(["--models-dir", str(repo), "rollback"]) == 5
    lines = capsys.readouterr().err.strip().splitlines()
    unreadable = "labels.json is unreadable: JSON nested too deeply to read"
    assert lines == [
        f"mnist-models: repository error: {unreadable}",
        f"mnist-models: cannot read the serving state: {unreadable}",
    ]


def test_a_worker_with_a_hostile_labels_json_is_live_not_ready_and_says_why(
    model_repo: Path, make_predictor: Any
) -> None:
    hostile_labels(model_repo)
    predictor = make_predictor()
    with pytest.raises(
        ModelUnavailable, match=r"labels\.json is unreadable: JSON nested too deeply"
    ):
        predictor.load()
    (model_repo / "mnist" / "labels.json").write_text('{"stable": 1}')  # repaired: it serves
    assert predictor.load().version == 1


#: labels.json as a hand edit saved in Latin-1 could leave it: valid JSON, not UTF-8
NOT_UTF8_LABELS = b'{"stable": 1, "note": "caf\xe9"}'


def test_a_labels_json_that_is_not_utf8_is_one_line_and_exit_5(
    repo: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (repo / "mnist" / "labels.json").write_bytes(NOT_UTF8_LABELS)
    assert main(["--models-dir", str(repo), "list"]) == 5
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "unreadable labels.json" in lines[0], lines
    assert "utf-8" in lines[0]


def test_a_worker_with_a_labels_json_that_is_not_utf8_is_live_not_ready_and_says_why(
    model_repo: Path, make_predictor: Any
) -> None:
    (model_repo / "mnist" / "labels.json").write_bytes(NOT_UTF8_LABELS)
    predictor = make_predictor()
    with pytest.raises(ModelUnavailable, match=r"unreadable labels\.json: 'utf-8' codec"):
        predictor.load()
    (model_repo / "mnist" / "labels.json").write_text('{"stable": 1}')  # repaired: it serves
    assert predictor.load().version == 1


def test_a_config_pbtxt_that_is_not_utf8_is_rewritten_by_a_change_of_state(repo: Path) -> None:
    config = repo / "mnist" / "config.pbtxt"
    config.write_bytes(b"# caf\xe9\n")
    with ModelRepository(repo).changing_state() as change:
        change.state = dataclasses.replace(change.state, stable=4, history=(1,))
    assert config.read_text(encoding="utf-8").startswith('name: "mnist"')


def test_a_hostile_card_or_selftest_is_a_validation_failure(repo: Path) -> None:
    from service.model.contract import CardError, parse_card

    with pytest.raises(CardError, match="nested too deeply"):
        parse_card("{" + '"a":{' * 100_000 + "}" * 100_001)
    card = repo / "mnist" / "3" / "card.json"
    card.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RepositoryError, match=r"unreadable card\.json"):
        ModelRepository(repo).get(3).read_card()


def test_the_lifecycle_refuses_shares_and_tolerances_out_of_range(repo: Path) -> None:
    from service.config import ServiceConfig
    from service.model import lifecycle

    repository, settings = ModelRepository(repo), ServiceConfig()
    with pytest.raises(lifecycle.OutOfRange, match=r"percent must be in \(0, 100\], not 150$"):
        lifecycle.start_trial(repository, "canary", 4, 1.5, settings, None)
    with pytest.raises(lifecycle.OutOfRange, match="sample must be in"):
        lifecycle.start_trial(repository, "shadow", 4, float("nan"), settings, None)
    for tolerance in (float("nan"), float("inf"), -0.1):
        with pytest.raises(lifecycle.OutOfRange, match="tolerance must be between 0 and 1"):
            lifecycle.promote(repository, 4, settings, None, tolerance=tolerance)
    assert lifecycle.OutOfRange.exit_code == 2
    assert state(repo) == ServingState(stable=1)


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("postgresql+asyncpg://u:secret@h/db", "no driver 'asyncpg' installed"),
        ("postgresql://u:secret@h:port/db", "DATABASE_URL: not a database URL"),
        ("nourl", "DATABASE_URL 'nourl' is not a URL"),
    ],
)
def test_a_store_url_nothing_here_speaks_is_exit_6_for_diff_and_a_warning_for_promote(
    repo: Path,
    url: str,
    words: str,
    mnist_data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    monkeypatch.delenv("STORE", raising=False)
    common = ["--models-dir", str(repo), "--data-dir", str(mnist_data_dir)]
    assert main([*common, "diff", "1", "4"]) == 6
    err = capsys.readouterr().err
    assert err.startswith("mnist-models: the feedback store cannot be read: ") and words in err
    assert len(err.strip().splitlines()) == 1 and "secret" not in err
    assert main([*common, "promote", "4"]) == 0  # promoted: the store's figures only report
    err = capsys.readouterr().err
    assert err.startswith("mnist-models: warning: no held-out feedback figures: ") and words in err
    assert state(repo) == ServingState(stable=4, history=(1,))


@pytest.fixture
def test_files(tmp_path: Path, mnist_data_dir: Path) -> Path:
    """A folder with copies of the two MNIST test files."""
    folder = tmp_path / "mnist-test"
    folder.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (folder / name).write_bytes((mnist_data_dir / name).read_bytes())
    return folder


@pytest.mark.parametrize("kind", list(GZIP_DAMAGE))
def test_a_damaged_gzip_test_file_is_exit_3_for_diff_naming_it(
    kind: str, repo: Path, test_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = test_files / "t10k-labels-idx1-ubyte.gz"
    damage_gzip(labels, kind)
    with pytest.raises(MnistUnavailable, match=f"cannot read the MNIST test file {labels}: "):
        load_test_set(test_files)
    code = main(["--models-dir", str(repo), "--data-dir", str(test_files), "diff", "1", "4"])
    assert code == 3
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"mnist-models: cannot read the MNIST test file {labels}: ")


def test_promote_with_a_damaged_test_file_compares_the_cards_and_says_why(
    repo: Path, test_files: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    labels = test_files / "t10k-labels-idx1-ubyte.gz"
    damage_gzip(labels, "compressed data")
    assert main(["--models-dir", str(repo), "--data-dir", str(test_files), "promote", "4"]) == 0
    captured = capsys.readouterr()
    assert captured.err.startswith(f"mnist-models: note: cannot read the MNIST test file {labels}")
    assert len(captured.err.strip().splitlines()) == 1
    assert "from the cards" in captured.out
    assert state(repo).stable == 4


@pytest.mark.parametrize("flag", ["--models-dir", "--data-dir"])
def test_an_empty_folder_is_a_usage_error(
    flag: str, repo: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(repo)  # "" would have meant this folder
    for argv in ([flag, "", "list"], ["list", flag, ""]):
        with pytest.raises(SystemExit) as ended:
            main(argv)
        assert ended.value.code == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1
        assert f"argument {flag}: expected a folder, got an empty value" in err
